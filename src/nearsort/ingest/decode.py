"""Decode any supported photo into a small RGB image, cheaply, plus its metadata.

* JPEG: decoded at reduced scale by libjpeg (Pillow ``draft``): a 24 MP photo is decoded
  at 1/8 scale for a 256 px thumbnail, never at full size.
* PNG, WEBP, TIFF, BMP, GIF (first frame), AVIF: Pillow; HEIC/HEIF: pillow-heif.
* Camera RAW: rawpy; the embedded JPEG preview when it is large enough, else a half-size
  demosaic.
* EXIF orientation is applied; the reported width/height are those of the upright original.
"""
from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from PIL import Image, ImageFile

try:  # HEIC/HEIF (and AVIF on older Pillow)
    import pillow_heif

    pillow_heif.register_heif_opener()
    _HAVE_HEIF = True
except Exception:  # pragma: no cover
    _HAVE_HEIF = False

ImageFile.LOAD_TRUNCATED_IMAGES = False

IMAGE_EXTS = {
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif",
    ".heic", ".heif", ".hif", ".avif",
}
RAW_EXTS = {
    ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".dng", ".raf", ".orf",
    ".rw2", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".rwl",
}
SUPPORTED_EXTS = IMAGE_EXTS | RAW_EXTS

# EXIF tag ids
_ORIENTATION = 0x0112
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_EXIF_TAGS = {
    0x9003: "DateTimeOriginal", 0x9004: "DateTimeDigitized", 0x9011: "OffsetTimeOriginal",
    0x9291: "SubSecTimeOriginal",
    0x829A: "ExposureTime", 0x829D: "FNumber", 0x8827: "ISO", 0x920A: "FocalLength",
    0xA434: "LensModel", 0xA002: "PixelXDimension", 0xA003: "PixelYDimension",
}
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


class DecodeError(Exception):
    """The file cannot be made into a thumbnail; ``str()`` is the reason shown to the user."""


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright, long side <= requested size (roughly; caller finishes)
    width: int  # upright size of the original
    height: int
    format: str
    exif: dict = field(default_factory=dict)
    capture_time: str | None = None
    make: str | None = None
    model: str | None = None
    gps: tuple[float, float] | None = None


def _clean(v):
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if isinstance(v, str):
        return v.replace("\x00", "").strip() or None
    if isinstance(v, tuple):
        return [_clean(x) for x in v]
    try:
        f = float(v)
        return int(f) if f.is_integer() else round(f, 6)
    except (TypeError, ValueError):
        return str(v)


def _exif_time(s) -> str | None:
    if not isinstance(s, str):
        return None
    s = s.strip().replace("\x00", "")
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y:%m:%d %H:%M", "%Y:%m:%d"):
        try:
            dt = datetime.strptime(s[: len(datetime(2000, 1, 1).strftime(fmt))], fmt)
        except ValueError:
            continue
        if 1826 <= dt.year <= 2200:  # "0000:00:00 00:00:00" and garbage are not dates
            return dt.isoformat()
    return None


def exposure_moment(exif: dict | None) -> int | None:
    """When the camera took the picture, from EXIF: DateTimeOriginal and, where the camera wrote
    it, SubSecTimeOriginal, as ``(milliseconds << 1) | fraction-known`` (one int: at 10^6 photos a
    tuple per photo would cost ~100 MB); None without a DateTimeOriginal and a camera make or model
    (a scan, a download, a copy stripped of its EXIF: nothing to say). Copies (re-encodes, resizes,
    crops, edits) keep their original's moment; two frames of a burst each have their own."""
    if not exif or not (exif.get("Make") or exif.get("Model")):
        return None
    t = _exif_time(exif.get("DateTimeOriginal"))
    if t is None:
        return None
    secs = int((datetime.fromisoformat(t) - datetime(1970, 1, 1)).total_seconds())
    digits = "".join(ch for ch in str(exif.get("SubSecTimeOriginal") or "") if ch.isdigit())[:3]
    if not digits:
        return (secs * 1000) << 1
    return ((secs * 1000 + int(digits.ljust(3, "0"))) << 1) | 1


def other_moments(a: list[tuple], b: list[tuple]) -> bool:
    """Are these the originals of two different exposures? ``a`` and ``b``: (make, model, moment)
    of each original of two pictures (moment: :func:`exposure_moment`). Only when all are of one
    camera, every one has a moment and none of ``a`` could be one of ``b``: another second, or,
    where both record the fraction, another fraction of the same second (a copy that lost
    SubSecTimeOriginal but kept DateTimeOriginal is still its original's)."""
    if not a or not b or len({x[:2] for x in a + b}) != 1 or any(x[2] is None for x in a + b):
        return False

    def same(x: int, y: int) -> bool:
        if (x >> 1) // 1000 != (y >> 1) // 1000:
            return False
        return not (x & 1 and y & 1) or x >> 1 == y >> 1

    return not any(same(x[2], y[2]) for x in a for y in b)


def _gps(gps_ifd) -> tuple[float, float] | None:
    try:
        def deg(v, ref):
            d, m, s = (float(x) for x in v)
            x = d + m / 60.0 + s / 3600.0
            return -x if ref in ("S", "W", b"S", b"W") else x

        lat = deg(gps_ifd[2], gps_ifd.get(1, "N"))
        lon = deg(gps_ifd[4], gps_ifd.get(3, "E"))
        if -90 <= lat <= 90 and -180 <= lon <= 180 and (lat, lon) != (0.0, 0.0):
            return round(lat, 7), round(lon, 7)
    except Exception:
        pass
    return None


def read_exif(img: Image.Image) -> tuple[dict, int]:
    """Selected EXIF tags as a JSON-able dict, and the orientation (1 if none)."""
    try:
        ex = img.getexif()
    except Exception:
        return {}, 1
    out: dict = {}
    orientation = 1
    try:
        o = int(ex.get(_ORIENTATION, 1))
        orientation = o if 1 <= o <= 8 else 1
    except Exception:
        pass
    for tag, name in ((_MAKE, "Make"), (_MODEL, "Model"), (_DATETIME, "DateTime")):
        if tag in ex:
            out[name] = _clean(ex[tag])
    try:
        sub = ex.get_ifd(_EXIF_IFD)
        for tag, name in _EXIF_TAGS.items():
            if tag in sub:
                out[name] = _clean(sub[tag])
    except Exception:
        pass
    try:
        g = ex.get_ifd(_GPS_IFD)
        pos = _gps(g) if g else None
        if pos:
            out["GPS"] = list(pos)
    except Exception:
        pass
    if orientation != 1:
        out["Orientation"] = orientation
    return {k: v for k, v in out.items() if v is not None}, orientation


def _decoded(img: Image.Image, full_w: int, full_h: int, fmt: str, exif: dict) -> Decoded:
    def text(key):
        v = exif.get(key)
        return v if isinstance(v, str) else None

    return Decoded(
        image=img, width=full_w, height=full_h, format=fmt, exif=exif,
        capture_time=_exif_time(exif.get("DateTimeOriginal")) or _exif_time(exif.get("DateTime")),
        make=text("Make"), model=text("Model"),
        gps=tuple(exif["GPS"]) if "GPS" in exif else None,
    )


def _finish(img: Image.Image, fmt: str, full_w: int, full_h: int, size: int) -> Decoded:
    exif, orientation = read_exif(img)
    img = _to_rgb(img)
    if max(img.size) > size:
        img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    if orientation in _TRANSPOSE:
        img = img.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            full_w, full_h = full_h, full_w
    return _decoded(img, full_w, full_h, fmt, exif)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        import numpy as np

        a = np.asarray(img, dtype=np.float32)
        hi = float(a.max()) or 1.0
        img = Image.fromarray((a * (255.0 / max(hi, 255.0))).clip(0, 255).astype("uint8"), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    return img.convert("RGB")


def decode_file(path: str | bytes | os.PathLike, size: int = 256) -> Decoded:
    """:func:`decode_bytes` of the file at ``path`` (read only; OSError if it cannot be read)."""
    with open(path, "rb") as fh:
        return decode_bytes(fh.read(), os.fsdecode(path), size)


def decode_bytes(data: bytes, name: str, size: int = 256) -> Decoded:
    """Decode ``data`` (the bytes of file ``name``) to an upright RGB image of long side ~``size``.

    Pillow's warnings about the file (a corrupt EXIF block, a damaged TIFF directory) are not
    printed: they name no file, and a file that cannot be decoded is reported as a DecodeError.
    Nor is rawpy's note that it runs in a forked process (OpenMP after fork may deadlock): resize's
    workers are forked, and one stuck on a file is killed after ``--timeout`` and that file reported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", "rawpy is being used in a process created by multiprocessing",
                                RuntimeWarning)
        return _decode_bytes(data, name, size)


def _decode_bytes(data: bytes, name: str, size: int) -> Decoded:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    ext = Path(name).suffix.lower()
    if ext in RAW_EXTS:
        return _decode_raw(data, size)
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or ext.lstrip(".").upper()
        full_w, full_h = img.size
        if fmt in ("JPEG", "MPO"):
            img.draft("RGB", (size, size))
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
    except Image.DecompressionBombError as e:
        raise DecodeError(f"refused by the decompression-bomb guard: {e}") from None
    except Image.UnidentifiedImageError:
        raise DecodeError("not an image (unrecognised file contents)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
            ZeroDivisionError, struct.error) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise DecodeError(f"truncated or corrupt image data ({msg})") from None
        raise DecodeError(f"cannot decode image data ({msg})") from None
    except RuntimeError as e:  # pillow-heif reports broken HEIC pixel data this way
        raise DecodeError(f"cannot decode image data ({e})") from None
    if full_w <= 0 or full_h <= 0:
        raise DecodeError("image has no pixels")
    return _finish(img, fmt, full_w, full_h, size)


def _decode_raw(data: bytes, size: int) -> Decoded:
    try:
        import rawpy
    except ImportError:  # pragma: no cover
        raise DecodeError("camera RAW support needs rawpy (pip install rawpy)") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            s = raw.sizes
            full_w, full_h = s.width, s.height
            flip = s.flip
            preview = None
            try:
                thumb = raw.extract_thumb()
                if thumb.format == rawpy.ThumbFormat.JPEG:
                    preview = Image.open(io.BytesIO(thumb.data))
                    if max(preview.size) < size:
                        preview = None
                    else:
                        preview.draft("RGB", (size, size))
                        preview.load()
            except Exception:
                preview = None
            if preview is None:
                rgb = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, no_auto_bright=False)
                preview = Image.fromarray(rgb)
                flip = 0  # postprocess already applies the camera orientation
    except Exception as e:
        raise DecodeError(f"cannot decode camera RAW ({type(e).__name__}: {e})") from None
    # rawpy flip: 3 = 180, 5 = 90 CCW, 6 = 90 CW
    exif, _ = read_exif(preview)
    exif.pop("Orientation", None)
    img = _to_rgb(preview)
    img.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
    if flip == 3:
        img = img.transpose(Image.Transpose.ROTATE_180)
    elif flip == 5:
        img = img.transpose(Image.Transpose.ROTATE_90)
    elif flip == 6:
        img = img.transpose(Image.Transpose.ROTATE_270)
    if flip in (5, 6) or (flip == 0 and (img.width > img.height) != (full_w > full_h) and full_w != full_h):
        full_w, full_h = full_h, full_w
    return _decoded(img, full_w, full_h, "RAW", exif)
