"""Pixel measures shared by several stages (numpy / PIL only; imports nothing of nearsort).

* :func:`trim_box`: the uniform borders (letterbox, frames) of a grey image (dupes).
* low-detail frames (uniform, or only a smooth gradient: a clear sky, blank paper) show only
  their tone: two of them are the same picture only within ``LOW_INFO_TONE`` levels.
* :func:`same_pixels`: two originals share a thumbnail name only when their thumbnails' pixels
  agree (resize, rebuild), with dupes' low-detail tolerance, so a name never merges pictures
  that ``dupes`` would call different.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

UNIFORM_STD = 1.0          # luma std (0..255) below which a frame is uniform
LOW_INFO = 1.2             # residual std of a quadratic fit below which a frame is "low detail"
LOW_INFO_TONE = 1.5        # low-detail frames: mean |RGB| and mean-luma difference allowed
# same_pixels: both thumbnails reduced to PRINT_SIDE x PRINT_SIDE RGB; they agree when the mean
# absolute difference is <= SAME_MEAN and its 99th percentile <= SAME_P99 (0..255 levels).
# Measured by bench/names.py on the 124 bench photos: a re-encode at quality 30..95, an
# EXIF-stripped copy or a PNG conversion that keeps the name stays within mean 3.1 / p99 13 (610
# of 610 collapse); the 15 pairs of visibly different 480x360 tiles of one photo whose names
# collide (near-white, over-exposed) differ by p99 >= 17 (mean as low as 0.5): 0 collapse.
# Uniform and smooth frames collapse only within LOW_INFO_TONE levels per channel.
PRINT_SIDE = 32
SAME_MEAN = 4.0
SAME_P99 = 16.0


def trim_box(g: np.ndarray, tol_std: float = 3.0, tol_mean: float = 5.0, max_frac: float = 0.45):
    """(top, bottom, left, right) after removing uniform edge rows/columns (letterbox, frames).
    The tolerances are tight (row std < 3, mean within 5 levels of the edge): a real border is
    flat, while the edge rows of a faint picture (a sky, a pale wall) drift slowly -- looser ones
    (6 / 10) trimmed faint pictures down to a strip, so their copies misaligned and a bordered copy
    looked bigger than the original (tiles bench R 0.898 -> 0.924, dev bench unchanged)."""
    h, w = g.shape

    def side(lines_mean, lines_std, limit):
        ref = lines_mean[0]
        k = 0
        while k < limit and lines_std[k] < tol_std and abs(lines_mean[k] - ref) < tol_mean:
            k += 1
        return k

    rm, rs = g.mean(axis=1), g.std(axis=1)
    t = side(rm, rs, int(h * max_frac))
    b = h - side(rm[::-1], rs[::-1], int(h * max_frac))
    sub = g[t:b] if b - t >= 1 else g
    cm, cs = sub.mean(axis=0), sub.std(axis=0)
    left = side(cm, cs, int(w * max_frac))
    right = w - side(cm[::-1], cs[::-1], int(w * max_frac))
    if b - t < 8 or right - left < 8:  # (nearly) uniform image: keep it whole
        return 0, h, 0, w
    return t, b, left, right


def _quadratic_basis(side: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:side, 0:side]
    yy, xx = yy / side - 0.5, xx / side - 0.5
    basis = np.stack([np.ones_like(xx), xx, yy, xx * xx, yy * yy, xx * yy], -1).reshape(-1, 6)
    return basis, np.linalg.pinv(basis)


_BASES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def residual_std(x: np.ndarray) -> float:
    """Std of what a quadratic surface does not explain: ~0 for flat frames and smooth gradients."""
    side = x.shape[0]
    if side not in _BASES:
        _BASES[side] = _quadratic_basis(side)
    basis, pinv = _BASES[side]
    v = x.ravel().astype(np.float64)
    return float((v - basis @ (pinv @ v)).std())


def low_detail_print(rgb: np.ndarray) -> bool:
    """A square RGB print (e.g. pixel_print) of a frame that is uniform or only a smooth
    gradient: such frames are the same picture only within LOW_INFO_TONE levels."""
    g = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return float(g.std()) < UNIFORM_STD or residual_std(g) < LOW_INFO


def pixel_print(jpeg: bytes) -> np.ndarray:
    """A thumbnail's pixels reduced to PRINT_SIDE x PRINT_SIDE RGB (uint8, 3 KiB), for ``same_pixels``.
    Full decode (about a millisecond): libjpeg's reduced-scale decode adds enough error to
    double the worst difference between a photo and its re-encoded copy."""
    with Image.open(io.BytesIO(jpeg)) as im:
        small = im.convert("RGB").resize((PRINT_SIDE, PRINT_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def prints_agree(a: np.ndarray, b: np.ndarray) -> bool:
    """Same picture within JPEG noise. Uniform or smooth frames (a grey card, a clear sky) show
    only their tone: for them the tolerance is dupes' (LOW_INFO_TONE per channel), so a
    thumbnail never merges two frames that `dupes` would call different pictures."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32))
    if not (d.mean() <= SAME_MEAN and np.percentile(d, 99) <= SAME_P99):
        return False
    return not (low_detail_print(a) or low_detail_print(b)) or bool(d.reshape(-1, 3).mean(0).max() <= LOW_INFO_TONE)


def same_pixels(jpeg_a: bytes, jpeg_b: bytes) -> bool:
    """Do two thumbnails show the same picture (within JPEG re-encoding noise)?"""
    return prints_agree(pixel_print(jpeg_a), pixel_print(jpeg_b))
