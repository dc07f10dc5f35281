"""Names leaving nearsort: safe on a terminal, valid UTF-8 in files, inert in spreadsheets.

File names may hold anything a POSIX name can (escape sequences, bidi overrides, bytes that are not
UTF-8, ``=HYPERLINK(...)``); every place that writes one goes through here: ``term`` for terminal
lines (display only, not reversible; ``markup`` for a line printed with rich markup),
``encode_path`` / ``decode_path`` (reversible UTF-8 text: ``\\\\`` and ``\\xNN`` escapes),
``csv_cell`` / ``csv_uncell`` (a leading apostrophe against formula injection, reversible).
Exact rules: docs/design.md, "textsafe".
"""
from __future__ import annotations

import os
import re

_TERM_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _term_escape(m: re.Match) -> str:
    o = ord(m.group())
    if 0xDC80 <= o <= 0xDCFF:  # os.fsdecode's surrogateescape: one undecodable byte
        return f"\\x{o - 0xDC00:02x}"
    if o <= 0x9F:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}"


def term(s) -> str:
    """``s`` (str, bytes or path; None -> '') with everything that could act on a terminal escaped."""
    if s is None:
        return ""
    if isinstance(s, (bytes, os.PathLike)):
        s = os.fsdecode(s)
    return _TERM_UNSAFE.sub(_term_escape, str(s))


def markup(s) -> str:
    """``term(s)`` for a rich markup line: also markup-escaped, so ``[bold]`` in a name is text."""
    from rich.markup import escape

    return escape(term(s))


def encode_path(p) -> str:
    """Reversible, valid UTF-8 text for a path (str from ``os.fsdecode``, bytes, or PathLike)."""
    try:
        b = os.fsencode(p)
    except UnicodeEncodeError:  # a lone surrogate not made by os.fsdecode (never from a real path)
        b = p.encode("utf-8", "surrogatepass")
    return b.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_UNESCAPE = re.compile(rb"\\(\\|x[0-9a-fA-F]{2})")


def decode_path(text: str) -> str:
    """The path ``encode_path`` was given (as an ``os.fsdecode`` str)."""
    def one(m: re.Match) -> bytes:
        e = m.group(1)
        return b"\\" if e == b"\\" else bytes([int(e[1:], 16)])

    return os.fsdecode(_UNESCAPE.sub(one, text.encode("utf-8")))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(v):
    """A CSV cell value: text that a spreadsheet would evaluate gets a leading apostrophe."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return v


def csv_uncell(s: str) -> str:
    """The value ``csv_cell`` was given (for text cells read back from the CSV)."""
    return s[1:] if s.startswith("'") else s
