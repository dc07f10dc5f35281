"""Metadata carried inside each thumbnail, so the catalog can be rebuilt from thumbnails alone.

One JSON document in JPEG COM segments (magic ``nearsort-meta/1``, split over as many segments as
it needs, so any number of source paths fits); every JPEG reader ignores them. Non-UTF-8 paths
round-trip exactly. The document: docs/design.md, "Thumbnail metadata".

File names: ``[{rank}_]{W}x{H}_{phash}[_{n}].jpg`` (:func:`thumb_name`, :func:`parse_thumb_filename`).
"""
from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path

MAGIC = b"nearsort-meta/1 "
_SEG_MAX = 65533 - len(MAGIC) - 4  # 2-byte length field includes itself; 4 bytes for index/count


THUMB_EXT = ".jpg"
# optional '{rank}_' prefix (refresh), then the name, with its optional '_{n}' collision suffix
NAME_RE = re.compile(r"^(?:(?P<rank>\d+)_)?(?P<name>\d+x\d+_[0-9a-f]{16}(?:_[1-9]\d*)?)\.jpg$")


def thumb_name(width: int, height: int, phash: str, n: int = 1) -> str:
    """``'{W}x{H}_{phash}'``, or ``'{W}x{H}_{phash}_{n}'`` for the n-th distinct picture (n >= 2)."""
    base = f"{width}x{height}_{phash}"
    return base if n <= 1 else f"{base}_{n}"


def name_phash(name: str) -> str:
    """The 16-hex-digit phash in a thumbnail name (with or without its '_n' suffix)."""
    return name.split("_")[1]


def parse_thumb_filename(filename: str) -> tuple[str, int | None] | None:
    """``'000123_4000x3000_abcd....jpg'`` -> ``('4000x3000_abcd...', 123)``; None if not ours."""
    m = NAME_RE.match(filename)
    if not m:
        return None
    rank = m.group("rank")
    return m.group("name"), (int(rank) if rank is not None else None)


class NotAThumbnail(ValueError):
    pass


def _segments(jpeg: bytes):
    """Yield (marker, start, end) of header segments up to SOS. start..end spans the whole segment."""
    if jpeg[:2] != b"\xff\xd8":
        raise NotAThumbnail("not a JPEG file")
    i, n = 2, len(jpeg)
    while i + 4 <= n:
        if jpeg[i] != 0xFF:
            raise NotAThumbnail("corrupt JPEG header")
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            yield marker, i, i + 2
            i += 2
            continue
        (length,) = struct.unpack(">H", jpeg[i + 2 : i + 4])
        end = i + 2 + length
        yield marker, i, end
        if marker == 0xDA:  # start of scan: header is over
            return
        i = end


def encode_segments(meta: dict) -> bytes:
    payload = json.dumps(meta, ensure_ascii=True, separators=(",", ":"), sort_keys=True).encode("ascii")
    chunks = [payload[i : i + _SEG_MAX] for i in range(0, len(payload), _SEG_MAX)] or [b""]
    if len(chunks) > 0xFFFF:
        raise ValueError("metadata too large")
    out = bytearray()
    for k, chunk in enumerate(chunks):
        body = MAGIC + struct.pack(">HH", k, len(chunks)) + chunk
        out += b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body
    return bytes(out)


def embed(jpeg: bytes, meta: dict) -> bytes:
    """Return ``jpeg`` with its nearsort metadata replaced by ``meta``."""
    keep = []
    insert_at = 2
    for marker, s, e in _segments(jpeg):
        if marker == 0xFE and jpeg[s + 4 : s + 4 + len(MAGIC)] == MAGIC:
            keep.append((s, e, False))
            continue
        if marker in (0xE0, 0xE1) and insert_at == s:  # after JFIF/EXIF headers
            insert_at = e
        keep.append((s, e, True))
    out = bytearray(jpeg[:2])
    pos = 2
    segs = encode_segments(meta)
    inserted = False
    for s, e, keep_it in keep:
        if not inserted and s >= insert_at:
            out += segs
            inserted = True
        if keep_it:
            out += jpeg[s:e]
        pos = e
    if not inserted:
        out += segs
    out += jpeg[pos:]
    return bytes(out)


def extract(jpeg: bytes) -> dict | None:
    """The nearsort metadata in ``jpeg``, or None if it has none."""
    parts: dict[int, bytes] = {}
    count = None
    for marker, s, e in _segments(jpeg):
        if marker == 0xFE and jpeg[s + 4 : s + 4 + len(MAGIC)] == MAGIC:
            body = jpeg[s + 4 + len(MAGIC) : e]
            k, n = struct.unpack(">HH", body[:4])
            parts[k] = body[4:]
            count = n
    if count is None:
        return None
    if len(parts) != count:
        raise NotAThumbnail(f"metadata incomplete ({len(parts)} of {count} parts)")
    return json.loads(b"".join(parts[k] for k in range(count)))


def read(path: str | os.PathLike) -> dict | None:
    """Read the metadata of a thumbnail file (reads only the header bytes it needs)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
        try:
            return extract(head)
        except (struct.error, NotAThumbnail, json.JSONDecodeError, KeyError):
            pass
        fh.seek(0)
        return extract(fh.read())


# write_atomic's temp files for thumbnails: '.{name}.jpg.{pid}.tmp'
TEMP_RE = re.compile(r"^\..+\.jpg\.\d+\.tmp$")


def write_atomic(path: Path, data: bytes, mtime_ns: int | None = None) -> None:
    """Write ``data`` to ``path`` via a temp file + rename: a crash never leaves half a thumbnail.

    On an error (a full disk) the temp file is removed; one left by a kill is removed by the next
    writing run (``sync.reconcile``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        if mtime_ns is not None:
            os.utime(tmp, ns=(mtime_ns, mtime_ns))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def rewrite(path: Path, meta: dict) -> None:
    """Replace the metadata of an existing thumbnail, keeping its pixels and mtime."""
    path = Path(path)
    st = path.stat()
    data = path.read_bytes()
    write_atomic(path, embed(data, meta), mtime_ns=st.st_mtime_ns)
