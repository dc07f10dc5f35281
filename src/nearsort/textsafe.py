"""Names leaving nearsort: safe on a terminal, valid UTF-8 in files, inert in spreadsheets.

File names are chosen by whoever filled the library, so they may hold anything a POSIX file
name can: terminal escape sequences (``\\x1b[31m``), newlines, bidi overrides, bytes that are
not UTF-8 (``os.fsdecode`` turns them into lone surrogates), or text a spreadsheet evaluates
(``=HYPERLINK(...)``). Every place that writes a name goes through this module:

``term(s)``
    For terminal output (every human-readable line the CLI prints). Escapes C0 controls, DEL
    and C1 controls as ``\\xNN``, undecodable bytes as ``\\xNN`` (the byte), bidi controls
    (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069), line/paragraph separators and other
    lone surrogates as ``\\uNNNN``. For display only: not reversible (``--json`` is for machines).

``encode_path(p)`` / ``decode_path(text)``
    Reversible UTF-8 text for a path (used by ``export``, CSV and JSON). A backslash becomes
    ``\\\\`` and every byte that is not valid UTF-8 becomes ``\\xNN`` (two lowercase hex
    digits); everything else is unchanged. ``decode_path`` undoes it exactly and returns the
    path as ``os.fsdecode`` would (usable with ``open``); ``os.fsencode`` of it gives the bytes.

``csv_cell(v)`` / ``csv_uncell(s)``
    Spreadsheet formula injection (OWASP "CSV injection"): a text cell starting with ``=``,
    ``+``, ``-``, ``@``, tab or CR gets a leading apostrophe, so spreadsheets show it as text.
    A cell that already starts with an apostrophe gets one too, so ``csv_uncell`` (strip one
    leading apostrophe) restores every cell exactly. Numbers are left alone.
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
