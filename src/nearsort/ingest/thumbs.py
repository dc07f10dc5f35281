"""Making one thumbnail: the per-file work that runs in worker processes.

``process_file(path)`` reads the file once, hashes it, decodes it at reduced scale, computes the
phash and quality signals and encodes the thumbnail; it never writes anything (the single writer
in ``ingest/resize.py`` places and records it). Names are ``{W}x{H}_{phash}`` (``_{n}`` when a
different picture has them: two originals share a thumbnail only when their pixels agree); layouts
``week`` (``YYYY/Www``) or ``hash`` (``ab/cd``). Details: docs/design.md, "One thumbnail".
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass, field
from datetime import datetime

import imagehash
import numpy as np
from PIL import Image

from nearsort.ingest.decode import DecodeError, decode_bytes
from nearsort.ingest.scan import special_file
# the names of what this module makes (imported from here by resize, refresh, dupes ...)
from nearsort.store.thumbmeta import NAME_RE, THUMB_EXT, name_phash, parse_thumb_filename, thumb_name  # noqa: F401

JPEG_QUALITY = 85


@dataclass
class FileResult:
    path: str
    size: int
    mtime_ns: int
    error: str | None = None
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    phash: str | None = None
    capture_time: str | None = None
    make: str | None = None
    model: str | None = None
    gps: tuple | None = None
    exif: dict = field(default_factory=dict)
    jpeg: bytes | None = None
    tw: int | None = None
    th: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    blur: float | None = None

    @property
    def name(self) -> str:
        return thumb_name(self.width, self.height, self.phash)


def layout_folder(layout: str, phash: str, capture_time: str | None, mtime_ns: int) -> str:
    if layout == "hash":
        return f"{phash[:2]}/{phash[2:4]}"
    if layout != "week":
        raise ValueError(f"unknown layout {layout!r} (week or hash)")
    dt = None
    if capture_time:
        try:
            dt = datetime.fromisoformat(capture_time)
        except ValueError:
            dt = None
    if dt is None:
        dt = datetime.fromtimestamp(mtime_ns / 1e9)
    year, week, _ = dt.isocalendar()
    return f"{year:04d}/W{week:02d}"


def quality_signals(img: Image.Image) -> tuple[float, float, float]:
    """(brightness, contrast, blur) of an RGB image: mean luma, luma std, variance of Laplacian."""
    g = np.asarray(img.convert("L"), dtype=np.float32)
    brightness = float(g.mean())
    contrast = float(g.std())
    if g.shape[0] >= 3 and g.shape[1] >= 3:
        lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
        blur = float(lap.var())
    else:
        blur = 0.0
    return round(brightness, 4), round(contrast, 4), round(blur, 4)


def encode_jpeg(img: Image.Image, quality: int = JPEG_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def process_bytes(data: bytes, path: str, size: int = 256, quality: int = JPEG_QUALITY) -> dict:
    """Everything about one file's bytes, as a dict of FileResult fields (minus path/size/mtime)."""
    content_hash = hashlib.sha256(data).hexdigest()
    dec = decode_bytes(data, path, size)
    img = dec.image
    ph = str(imagehash.phash(img))
    b, c, bl = quality_signals(img)
    return dict(
        content_hash=content_hash, width=dec.width, height=dec.height, format=dec.format,
        phash=ph, capture_time=dec.capture_time, make=dec.make, model=dec.model, gps=dec.gps,
        exif=dec.exif, jpeg=encode_jpeg(img, quality), tw=img.width, th=img.height,
        brightness=b, contrast=c, blur=bl,
    )


def _not_a_file(mode: int) -> str | None:
    return "is a directory" if stat.S_ISDIR(mode) else special_file(mode)


def process_file(path: str, size: int = 256, quality: int = JPEG_QUALITY) -> FileResult:
    """Read, hash, decode and thumbnail one source file. Never raises for bad input."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return FileResult(path, 0, 0, error="vanished during the scan")
    except PermissionError:
        return FileResult(path, 0, 0, error="permission denied (stat)")
    except OSError as e:
        return FileResult(path, 0, 0, error=f"cannot stat: {e.strerror or e}")
    res = FileResult(path, st.st_size, st.st_mtime_ns)
    res.error = _not_a_file(st.st_mode)
    if res.error:
        return res
    try:
        # O_NONBLOCK: a file swapped for a FIFO after the scan must not block open() forever
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with open(fd, "rb") as fh:
            fst = os.fstat(fd)
            res.error = _not_a_file(fst.st_mode)
            if res.error:
                return res
            data = fh.read()
        st2 = os.stat(path)
    except FileNotFoundError:
        res.error = "vanished during the scan"
        return res
    except PermissionError:
        res.error = "permission denied"
        return res
    except IsADirectoryError:
        res.error = "is a directory"
        return res
    except OSError as e:
        res.error = f"cannot read: {e.strerror or e}"
        return res
    if ((st2.st_size, st2.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != st.st_size
            or (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino)):
        res.error = "changed while being read (will be retried on the next run)"
        return res
    try:
        for k, v in process_bytes(data, path, size, quality).items():
            setattr(res, k, v)
    except DecodeError as e:
        res.error = str(e)
    except MemoryError:
        res.error = "out of memory while decoding"
    except Exception as e:  # a decoder bug must not stop a 10-million-photo run
        res.error = f"unexpected decoder error: {type(e).__name__}: {e}"
    return res
