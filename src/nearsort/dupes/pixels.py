"""Pixel verification: do two thumbnails show the *same picture*, or two pictures that look alike?

Hashes and embeddings only propose pairs; every pair that would join a copy group is confirmed
here, on the thumbnails' pixels, member to keeper, and answered with a :class:`Verdict`: ``copy``,
``shot`` (the same framing with a local change: never a copy), or not the same picture, with the
reason. A blank (clipped uniform) frame is never a copy here: only byte-identical files are.
Steps and thresholds: docs/design.md, "Pixel verification".
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from nearsort.frames import (LOW_INFO, LOW_INFO_TONE, MAX_MOTION, MOTION_BLOCK, MOTION_TEXTURE_LOW, ORIGINAL_DECODE,
                             ORIGINAL_SCREEN, ORIGINAL_SIDE, RECODE_SHARE, native_luma, native_luma_change, recoded_files,
                             UNIFORM_STD, global_affine, local_motion, normalise as _norm, fine_motion,
                             residual_std as _residual_std, scaled_affine, trim_box)
from nearsort.dupes.dsu import DSU
from nearsort.store.thumbmeta import parse_thumb_filename

SIDE = 64                  # alignment resolution
FINE = 128                 # structure check resolution
SCALES = tuple(round(1.0 - 0.02 * k, 2) for k in range(13))   # 1.00 .. 0.76
ROTATIONS = (-3.0, -2.0, -1.0, 1.0, 2.0, 3.0)
ROTATION_PROBE = (-2.0, -1.0, 1.0, 2.0)  # tried first, at the best scale
ROTATION_GAIN = 0.02       # the whole rotation search runs where a probe lowers the difference by this share
MAX_SHIFT = 0.035          # of the side, for phase correlation (imperfect border trims)
CONTENT_CROP = 0.92        # uniformity and detail are measured on this centre crop of the trimmed frame
CLIPPED = 10.0             # a uniform frame within this of black or white in every channel is blank
MAX_DIFF = 0.25            # mean tolerant difference of normalised images (128 px)
MAX_LOCAL = 0.2            # worst block minus 90th-percentile block
CHROMA_ABS, CHROMA_REL, GREY = 3.0, 0.3, 3.0
STRONG_DIFF = 0.05         # a copy this close stands on its pixels alone (hashes may disagree)
STRONG_SCREEN = 0.12       # coarse difference (64 px, before the rotation search) above which a pair
#                            cannot be a strong copy: the 822 strong copy verdicts of the dev, tiles, shots,
#                            real-shots, video and 5 000-crop benches reach 0.086 there (a crop rotated by
#                            3 degrees), the screened pairs that became strong 0.035 (docs/design.md)
COARSE_SCREEN = 0.2        # the same screen on the coarse scales alone (every 4th of SCALES), before the
#                            fine ones: the strong copies of those six benches reach 0.117 there (a crop
#                            between two coarse scales), 2 888 of the 5 000 crops' 8 610 screened pairs
#                            lie above it and skip the fine scales (bench/dupes.py --coarse)
LOW_DETAIL_ONLY = -1.0     # compare() screen: answer only if the pair is compared as low-detail frames
STRONG_TONE = 1.0          # the same for low-detail frames (mean |RGB| and brightness difference)
MAX_SHAPE = 0.1            # |log| of the ratio of the two framings' aspect ratios above which two pictures
#                            are not one: every step below maps a centred crop of one uniform scale, so a
#                            copy keeps its shape (labelled copies of six benches: <= 0.019, rounding and
#                            trims of small thumbnails); what it calls a copy beyond that is a simple picture
#                            (a horizon, a gradient) stretched to fit, a different crop (docs/design.md)
PARALLEL_ABOVE = 48        # pairs above which prefetch uses worker processes (~7 ms a pair; a fork ~50 ms)
PARALLEL_CHUNK = 128       # pairs a worker job takes at most (fewer: every worker gets ~4 jobs)
ROTATE_ABOVE = 0.03        # try rotations when the best mean difference (64 px) is above this
ROTATIONS_KEPT = 8         # rotated images a picture keeps: its probe rotations serve its next pairs too
#                            (5 000 crops: 43 548 -> 20 396 rotations, peak RSS 259 -> 266 MB; 2 thrashed)
# Motion on the originals: a copy's motion is measured again at ORIGINAL_SIDE on the thumbnails
# (coarse to fine) and, above ORIGINAL_SCREEN there, on both originals decoded at ORIGINAL_DECODE px,
# where a 1-px drift of a video frame is a pixel, not a fifth of one (docs/design.md).
MAX_MOTION_RESCALED = 0.9  # the same for originals of two sizes, aligned through their thumbnails
#                            (labelled two-size copies: up to 0.76 on dev and tiles; docs/design.md)
NATIVE_SCALE_TOL = 0.03    # |log| of the size ratio under which two originals are at one pixel scale
#                            (frames.native_crop_change: a crop of a neighbouring frame is a shot)
ORIGINALS_KEPT = 64        # decoded originals kept (LRU)
NATIVE_KEPT = 8            # full-size luma of originals kept for the one-pixel-scale check (<= 2.1 MP each)
VERDICT_CACHE = "pixel-verdicts.npz"  # in THUMBS/.nearsort: verdicts of the last runs (PixelVerifier.save)


_FULL = float("inf")  # the screen of a stored full verdict


def _thumb_name(relpath: str) -> str:
    base = relpath.rsplit("/", 1)[-1]
    parsed = parse_thumb_filename(base)
    return parsed[0] if parsed else base


def rules_version() -> str:
    """Changes with the code that makes a verdict (this module and frames.py): stored verdicts of
    other rules are not used."""
    from nearsort import frames

    h = hashlib.sha256()
    for f in (__file__, frames.__file__):
        with open(f, "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()[:16]


@dataclass
class Verdict:
    kind: str                       # copy | shot | different | colour | tone | uniform | unreadable
    diff: Optional[float] = None    # mean tolerant difference (normalised units)
    local: Optional[float] = None   # worst block minus the 90th-percentile block
    scale: Optional[float] = None   # crop scale of the image that was cropped
    rotation: float = 0.0
    metrics: dict = field(default_factory=dict)

    @property
    def copy(self) -> bool:
        return self.kind == "copy"

    @property
    def strong(self) -> bool:
        """A copy so close on pixels that no hash evidence is needed (a crop or letterbox that
        moved the hashes, a faint picture whose hash is noise)."""
        if self.kind != "copy":
            return False
        if self.diff is not None:
            return self.diff <= STRONG_DIFF
        return self.metrics.get("mad", 99) <= STRONG_TONE and self.metrics.get("dmean", 99) <= STRONG_TONE


class _View:
    """One framing of a thumbnail (its border-trimmed box, or the whole frame): crops and spectra."""

    __slots__ = ("images", "_rot", "box", "shape", "_crops", "_specs")

    def __init__(self, images: dict, rot_cache: dict, box: tuple[int, int, int, int]):
        # no reference back to the picture: no cycle, so an evicted picture is freed at once.
        # images: (rgb, half) -> PIL image; a half-size grey source serves the SIDE alignment crops (4x cheaper)
        self.images, self._rot, self.box = images, rot_cache, box
        self.shape = float(np.log((box[2] - box[0]) / (box[3] - box[1])))  # log aspect ratio
        self._crops: dict = {}
        self._specs: dict = {}

    def rotated(self, rot: float, rgb: bool, half: bool):
        src = self.images[(rgb, half)]
        if not rot:
            return src
        key = (rot, rgb, half, self.box)
        if key not in self._rot:
            from PIL import Image

            if len(self._rot) >= ROTATIONS_KEPT:
                self._rot.clear()
            k = 0.5 if half else 1.0
            left, t, right, b = self.box
            self._rot[key] = src.rotate(rot, Image.BILINEAR, center=(k * (left + right) / 2, k * (t + b) / 2))
        return self._rot[key]

    def _box(self, f: float, k: float = 1.0) -> tuple[float, float, float, float]:
        left, t, right, b = self.box
        w, h = right - left, b - t
        return (k * (left + w * (1 - f) / 2), k * (t + h * (1 - f) / 2), k * (left + w * (1 + f) / 2),
                k * (t + h * (1 + f) / 2))

    def crop(self, f: float, rot: float, side: int, rgb: bool = False) -> np.ndarray:
        key = (f, rot, side, rgb)
        out = self._crops.get(key)
        if out is None:
            from PIL import Image

            half = side <= SIDE and not rgb and min(self.images[(False, False)].size) >= 2 * side
            src = self.rotated(rot, rgb, half)
            box = self._box(f, 0.5 if half else 1.0)
            out = np.asarray(src.resize((side, side), Image.BILINEAR, box=box), dtype=np.float32)
            if not rot and side == SIDE and not rgb:  # only the alignment crops are reused across pairs
                self._crops[key] = out
        return out

    def side_px(self, f: float) -> float:
        """The side, in thumbnail pixels, of the square a crop at scale f is resampled from."""
        left, t, right, b = self.box
        return f * ((right - left) * (b - t)) ** 0.5

    def spec(self, f: float, rot: float) -> tuple[np.ndarray, np.ndarray]:
        """The normalised SIDE crop and its spectrum (for phase correlation); unrotated ones cached."""
        out = self._specs.get((f, rot))
        if out is None:
            z = _norm(self.crop(f, rot, SIDE))
            out = z, _fft().rfft2(z).astype(np.complex64)
            if not rot:
                self._specs[(f, rot)] = out
        return out


class _Picture:
    """One decoded thumbnail: grey + RGB images and its framings (trimmed box first; the whole
    frame too when a border was trimmed, since a trim can eat into a dark or pale picture edge)."""

    __slots__ = ("gray", "rgb", "views", "std", "info", "blank")

    def __init__(self, src):
        """``src``: a thumbnail's path, or an image (an original decoded larger)."""
        from PIL import Image

        if isinstance(src, Image.Image):
            rgb = src.convert("RGB")
        else:
            with Image.open(src) as im:
                rgb = im.convert("RGB")
        self.rgb = rgb
        self.gray = rgb.convert("L")
        a = np.asarray(self.gray, dtype=np.float32)
        t, b, left, right = trim_box(a)
        full = (0, 0, a.shape[1], a.shape[0])
        rot: dict = {}
        images = {(True, False): rgb, (False, False): self.gray, (False, True): self.gray.reduce(2)}
        self.views = [_View(images, rot, (left, t, right, b))]
        if self.views[0].box != full:
            self.views.append(_View(images, rot, full))
        x = self.views[0].crop(CONTENT_CROP, 0.0, SIDE)  # inset: a sliver of border left by the trim is not content
        self.std = float(x.std())
        self.info = _residual_std(x)
        rgb_mean = self.views[0].crop(CONTENT_CROP, 0.0, SIDE, True).reshape(-1, 3).mean(0)
        self.blank = self.std < UNIFORM_STD and bool((rgb_mean >= 255 - CLIPPED).all() or (rgb_mean <= CLIPPED).all())


_FFT = None


def _fft():
    """scipy.fft (imported on first use: a dupes run that compares nothing never loads it): twice
    numpy.fft's speed on these 64- and 128-px transforms, in single precision."""
    global _FFT
    if _FFT is None:
        from scipy import fft

        _FFT = fft
    return _FFT


def _phase_shift(a: np.ndarray, b: np.ndarray, lim: int, fa=None, fb=None) -> tuple[int, int]:
    """Integer translation (dy, dx), |d| <= lim, that best maps b onto a (fa, fb: their rfft2)."""
    fa = _fft().rfft2(a) if fa is None else fa
    fb = _fft().rfft2(b) if fb is None else fb
    dys, dxs = _peak_shifts(fa[None], fb[None], a.shape, lim)
    return int(dys[0]), int(dxs[0])


def _peak_shifts(FA: np.ndarray, FB: np.ndarray, shape: tuple[int, int], lim: int) -> tuple[np.ndarray, np.ndarray]:
    """Phase correlation of each pair of spectra FA[i], FB[i] (rfft2 of images of ``shape``): the
    (dy, dx) arrays, |d| <= lim, of the translation that best maps the second onto the first."""
    r = FA * np.conj(FB)
    r /= np.abs(r) + 1e-6
    # irfft2 is an inverse FFT down the columns, then one along each row: only the 2 lim + 1 rows
    # of the shifts asked for go on to the second pass (the same numbers, 1.8x faster at 64 px;
    # plain FFTs, no BLAS threads)
    w = 2 * lim + 1
    iy = (np.arange(w) - lim) % shape[0]
    ix = (np.arange(w) - lim) % shape[1]
    fft = _fft()
    c = fft.irfft(fft.ifft(r, axis=1)[:, iy, :], n=shape[1], axis=2)[:, :, ix]
    best = c.reshape(len(c), -1).argmax(1)
    return best // w - lim, best % w - lim


def _overlap(a: np.ndarray, b: np.ndarray, dy: int, dx: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = a.shape[:2]
    ya, yb = (dy, 0) if dy >= 0 else (0, -dy)
    xa, xb = (dx, 0) if dx >= 0 else (0, -dx)
    hh, ww = h - abs(dy), w - abs(dx)
    return a[ya:ya + hh, xa:xa + ww], b[yb:yb + hh, xb:xb + ww]


def _aligned_diffs(pairs: list, lim: int) -> np.ndarray:
    """For each ((x, fx), (y, fy)) of normalised SIDE crops and their rfft2: the shift |d| <= lim
    that best maps y onto x (:func:`_phase_shift`), then the mean difference of the overlaps, each
    normalised (:func:`frames.normalise`): one batched FFT for all, not one per pair."""
    X = np.stack([p[0][0] for p in pairs])
    Y = np.stack([p[1][0] for p in pairs])
    dys, dxs = _peak_shifts(np.stack([p[0][1] for p in pairs]), np.stack([p[1][1] for p in pairs]), X.shape[1:], lim)
    out = np.empty(len(pairs))
    for dy, dx in set(zip(dys.tolist(), dxs.tolist())):
        sel = np.flatnonzero((dys == dy) & (dxs == dx))
        xa, yb = _overlap(X[sel].transpose(1, 2, 0), Y[sel].transpose(1, 2, 0), dy, dx)
        out[sel] = np.abs(_norm_stack(xa) - _norm_stack(yb)).mean(axis=(0, 1))
    return out


def _norm_stack(x: np.ndarray) -> np.ndarray:
    """:func:`frames.normalise` of each x[:, :, i]."""
    d = x - x.mean(axis=(0, 1))
    return d / np.maximum(np.sqrt((d * d).mean(axis=(0, 1))), 4.0)


def _tolerant_diff(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """|za - zb| where each pixel may match any of the other's 3x3 neighbours (both ways)."""
    h, w = za.shape
    pa, pb = np.pad(za, 1, mode="edge"), np.pad(zb, 1, mode="edge")
    m1 = np.full(za.shape, np.inf, np.float32)
    m2 = m1.copy()
    for y in range(3):
        for x in range(3):
            m1 = np.minimum(m1, np.abs(za - pb[y:y + h, x:x + w]))
            m2 = np.minimum(m2, np.abs(zb - pa[y:y + h, x:x + w]))
    return np.maximum(m1, m2)


def _motion(xa: np.ndarray, yb: np.ndarray, rgb, px: float, res: int = FINE, init=None, n: int = MOTION_BLOCK,
            fit: Optional[list] = None, low: Optional[float] = None) -> float:
    """:func:`local_motion` of two aligned FINE grey images, in pixels of the smaller picture when
    it has fewer than FINE (``px``: its side; an upscaled small thumbnail's resampling is not
    motion, and it cannot show a sub-pixel one). Above MAX_MOTION it is measured again with the
    more colourful side's RGB (``rgb()``: the aligned FINE RGB pair) mapped linearly onto the
    other's grey: a black-and-white copy with its own channel mix (an average, a red filter) or a
    saturation edit changes the contrast of coloured edges, which is not motion. ``fit``: receives
    the grey pair's affine flow (:func:`frames.local_motion`). ``low``: the texture floor of faint
    pictures (thumbnails: frames.MOTION_TEXTURE_LOW)."""
    k = min(1.0, px / res)
    ga, gb = _norm(xa), _norm(yb)
    ring = max(1, res // FINE)
    motion = local_motion(ga, gb, n, init, ring, fit, low) * k
    if motion > MAX_MOTION:
        xc, yc = rgb()
        if np.abs(_chroma(xc)).mean() >= np.abs(_chroma(yc)).mean():
            ga = _norm(_mix_like(xc, yb))
        else:
            gb = _norm(_mix_like(yc, xa))
        motion = min(motion, local_motion(ga, gb, n, init, ring, low=low) * k)
    return motion


def _mix_like(rgb: np.ndarray, grey: np.ndarray) -> np.ndarray:
    """The linear mix of rgb's channels (plus an offset) closest to grey (least squares)."""
    X = np.concatenate([rgb.reshape(-1, 3), np.ones((grey.size, 1), np.float32)], 1)
    w = np.linalg.lstsq(X, grey.reshape(-1), rcond=None)[0]
    return (X @ w).reshape(grey.shape).astype(np.float32)


def _blocks(d: np.ndarray, n: int) -> np.ndarray:
    h, w = d.shape
    hh, ww = h // n * n, w // n * n
    return d[:hh, :ww].reshape(hh // n, n, ww // n, n).mean(axis=(1, 3))


def _chroma(x: np.ndarray) -> np.ndarray:
    y = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return np.stack([x[..., 2] - y, x[..., 0] - y], -1)


def compare_pictures(pa: _Picture, pb: _Picture, screen: Optional[float] = None, fit: Optional[dict] = None) -> Verdict:
    """The verdict for two pictures. With ``screen``, a pair whose best coarse alignment still
    differs by more than that is answered ``different`` at once (a cheap pre-check for pairs that
    only a *strong* copy verdict could join). ``fit``: where the motion was measured, it receives
    the FINE alignment (``shift``, and ``affine``: :func:`frames.global_affine` of the aligned
    pair), which :func:`motion_at` starts from instead of finding it again."""
    if screen == LOW_DETAIL_ONLY and min(pa.info, pb.info) >= LOW_INFO:
        return Verdict("different", metrics={"screened": 0.0})  # only a low-detail match was asked for
    shape = min(abs(va.shape - vb.shape) for va in pa.views for vb in pb.views)
    if shape > MAX_SHAPE:  # 1. shape: no framing of one has the other's
        return Verdict("different", metrics={"shape": shape})
    if min(pa.std, pb.std) < UNIFORM_STD:
        if max(pa.std, pb.std) >= UNIFORM_STD or pa.blank or pb.blank:
            return Verdict("uniform", metrics={"std": min(pa.std, pb.std)})
        # two uniform frames of a real (unclipped) tone: the tone is all they show
        ca, cb = pa.views[0].crop(1.0, 0.0, SIDE, True), pb.views[0].crop(1.0, 0.0, SIDE, True)
        d = float(np.abs(ca.reshape(-1, 3).mean(0) - cb.reshape(-1, 3).mean(0)).max())
        return Verdict("copy" if d <= LOW_INFO_TONE else "tone", metrics={"mad": d, "dmean": d, "info": 0.0})
    if min(pa.info, pb.info) < LOW_INFO:  # low detail: the same pixels, in absolute terms
        # either framing, either side cropped (a crop changes a gradient's tone): the alignment
        # is chosen on the (cached) grey crops, the verdict taken on colour at that alignment
        trials = [(va, vb, fa, fb) for va in pa.views for vb in pb.views for fa, fb in
                  [(f, 1.0) for f in SCALES] + [(1.0, f) for f in SCALES[1:]]]
        va, vb, fa, fb = min(trials, key=lambda t: float(np.abs(t[0].crop(t[2], 0.0, SIDE)
                                                                - t[1].crop(t[3], 0.0, SIDE)).mean()))
        ra, rb = va.crop(fa, 0.0, SIDE, True), vb.crop(fb, 0.0, SIDE, True)
        mad, dmean = float(np.abs(ra - rb).mean()), abs(float(ra.mean() - rb.mean()))
        kind = "copy" if mad <= LOW_INFO_TONE and dmean <= LOW_INFO_TONE else "tone"
        return Verdict(kind, metrics={"mad": mad, "dmean": dmean, "info": min(pa.info, pb.info)})
    # 3. alignment at SIDE over both framings of each: (mean diff, views, cropped side, scale, rotation)
    lim = max(1, int(SIDE * MAX_SHIFT))

    def align(specs: list[tuple[_View, _View, str, float, float]], keep=None):
        """The best of these alignments (views, cropped side, scale, rotation), each scored as
        :func:`_phase_shift` + :func:`_overlap` + mean normalised difference, all at once; ``keep``:
        an earlier best, kept on a tie. Returns (mean diff, va, vb, side, scale, rotation)."""
        pairs = [(va.spec(f, rot), vb.spec(1.0, 0.0)) if side == "a" else (va.spec(1.0, 0.0), vb.spec(f, rot))
                 for va, vb, side, f, rot in specs]
        scores = _aligned_diffs(pairs, lim)
        i = int(np.argmin(scores))
        if keep is not None and keep[0] <= scores[i]:
            return keep
        return (float(scores[i]), *specs[i])

    # coarse scales first (every 4th), then the neighbours of the best: 11 trials instead of 25
    coarse = SCALES[::4]
    best = align([(va, vb, s, f, 0.0) for va in pa.views for vb in pb.views
                   for s in ("a", "b") for f in coarse if not (s == "b" and f == 1.0)])
    if screen is not None and best[0] > max(screen, COARSE_SCREEN):
        return Verdict("different", metrics={"screened": best[0]})
    k = SCALES.index(best[4])
    fine = [SCALES[i] for i in range(k - 3, k + 4) if 0 <= i < len(SCALES) and SCALES[i] not in coarse]
    more = [(best[1], best[2], best[3], f, 0.0) for f in fine]
    if best[4] >= 0.94:
        more += [(best[1], best[2], "b" if best[3] == "a" else "a", f, 0.0) for f in fine if f != 1.0]
    if more:
        best = align(more, best)
    if screen is not None and best[0] > screen:
        return Verdict("different", metrics={"screened": best[0]})
    if best[0] > ROTATE_ABOVE:
        k = SCALES.index(best[4])
        near = {SCALES[i] for i in (k - 1, k, k + 1) if 0 <= i < len(SCALES)}
        # first +-1 and +-2 degrees at the best scale; the whole search (each rotation once, for the
        # three scales: the view keeps two rotated images) only where one of them helps
        probe = align([(best[1], best[2], best[3], best[4], r) for r in ROTATION_PROBE])
        if probe[0] < best[0] * (1.0 - ROTATION_GAIN):
            best = align([(best[1], best[2], best[3], f, r) for r in ROTATIONS for f in sorted(near)], best)
    _, va, vb, side, f, rot = best
    # 4. structure at FINE on that alignment
    fa = va.crop(f, rot, FINE) if side == "a" else va.crop(1.0, 0.0, FINE)
    fb = vb.crop(f, rot, FINE) if side == "b" else vb.crop(1.0, 0.0, FINE)
    dy, dx = _phase_shift(_norm(fa), _norm(fb), max(1, int(FINE * MAX_SHIFT)))
    xa, yb = _overlap(fa, fb, dy, dx)
    d = _tolerant_diff(_norm(xa), _norm(yb))
    diff = float(d.mean())
    if screen is not None and diff > STRONG_DIFF:  # a screened pair is asked only whether it is a strong copy
        return Verdict("different", diff, metrics={"screened": best[0], "diff": diff})
    bl = _blocks(d, FINE // 8)
    local = float(bl.max() - np.percentile(bl, 90))
    # 5. colour on the same alignment (SIDE, RGB)
    ca = va.crop(f, rot, SIDE, True) if side == "a" else va.crop(1.0, 0.0, SIDE, True)
    cb = vb.crop(f, rot, SIDE, True) if side == "b" else vb.crop(1.0, 0.0, SIDE, True)
    s = SIDE / FINE
    ra, rb = _overlap(ca, cb, int(round(dy * s)), int(round(dx * s)))
    ka, kb = _chroma(ra), _chroma(rb)
    grey = min(float(np.abs(ka).mean()), float(np.abs(kb).mean()))
    chd = float(np.abs(ka - kb).mean())
    chmag = max(float(np.abs(ka).mean()), float(np.abs(kb).mean()))
    m = {"diff": diff, "local": local, "chroma": chd, "scale": f, "rotation": rot, "side": side,
         "views": (pa.views.index(va), pb.views.index(vb))}
    if diff > MAX_DIFF:
        kind = "different"
    elif local > MAX_LOCAL:
        kind = "shot"
    elif grey >= GREY and chd > CHROMA_ABS + CHROMA_REL * chmag:
        kind = "colour"
    else:
        # 4b. motion (:func:`_motion`) on the same alignment
        px = min(va.side_px(f if side == "a" else 1.0), vb.side_px(f if side == "b" else 1.0))
        affine: list = []
        m["motion"] = _motion(xa, yb, lambda: _overlap(
            va.crop(f, rot, FINE, True) if side == "a" else va.crop(1.0, 0.0, FINE, True),
            vb.crop(f, rot, FINE, True) if side == "b" else vb.crop(1.0, 0.0, FINE, True), dy, dx), px, fit=affine,
                              low=MOTION_TEXTURE_LOW)
        if fit is not None:
            fit.update(shift=(dy, dx), affine=affine[0])
        kind = "shot" if m["motion"] > MAX_MOTION else "copy"
    return Verdict(kind, diff, local, f, rot, m)


def _pair_at(va: _View, vb: _View, side: str, f: float, rot: float, res: int, rgb: bool = False):
    """The two crops of an alignment (``side``'s view cropped at scale f, rotated), at res x res."""
    return (va.crop(f, rot, res, rgb) if side == "a" else va.crop(1.0, 0.0, res, rgb),
            vb.crop(f, rot, res, rgb) if side == "b" else vb.crop(1.0, 0.0, res, rgb))


def motion_at(pa: _Picture, pb: _Picture, v: Verdict, res: int, n: int = MOTION_BLOCK,
              fit: Optional[dict] = None) -> float:
    """:func:`_motion` at ``res`` px (a multiple of FINE) of two pictures (the originals, decoded
    larger than their thumbnails) on the alignment ``v`` found for their thumbnails, refined at
    FINE first (:func:`global_affine`, scaled up: coarse to fine), in pixels of ``res`` (of the
    smaller picture when it has fewer). ``fit``: the FINE alignment :func:`compare_pictures` found
    for these two pictures (the same numbers), not found again."""
    m = v.metrics
    va = pa.views[min(m["views"][0], len(pa.views) - 1)]
    vb = pb.views[min(m["views"][1], len(pb.views) - 1)]
    side, f, rot = m["side"], m["scale"], m["rotation"]
    s = res // FINE
    if fit:
        (dy, dx), coarse = fit["shift"], fit["affine"]
    else:
        ca, cb = _pair_at(va, vb, side, f, rot, FINE)
        dy, dx = _phase_shift(_norm(ca), _norm(cb), max(1, int(FINE * MAX_SHIFT)))
        coarse = global_affine(*(_norm(z) for z in _overlap(ca, cb, dy, dx)))
    init = scaled_affine(coarse, s)
    xa, yb = _overlap(*_pair_at(va, vb, side, f, rot, res), dy * s, dx * s)
    px = min(va.side_px(f if side == "a" else 1.0), vb.side_px(f if side == "b" else 1.0))
    return _motion(xa, yb, lambda: _overlap(*_pair_at(va, vb, side, f, rot, res, True), dy * s, dx * s), px, res,
                   init, n)


def _native_scale(pa: _Picture, pb: _Picture, v: Verdict, da: tuple[int, int], db: tuple[int, int]) -> bool:
    """Does the alignment ``v`` of two thumbnails map their originals (of sizes da, db) onto each
    other at one pixel scale (within NATIVE_SCALE_TOL both ways): a crop saved without resampling, a
    border added around the picture?"""
    m = v.metrics
    va = pa.views[min(m["views"][0], len(pa.views) - 1)]
    vb = pb.views[min(m["views"][1], len(pb.views) - 1)]
    ka = max(da) / max(pa.rgb.size)  # original px per thumbnail px (a thumbnail keeps its shape)
    kb = max(db) / max(pb.rgb.size)
    fa, fb = (m["scale"], 1.0) if m["side"] == "a" else (1.0, m["scale"])
    wa, ha = (va.box[2] - va.box[0]) * ka * fa, (va.box[3] - va.box[1]) * ka * fa
    wb, hb = (vb.box[2] - vb.box[0]) * kb * fb, (vb.box[3] - vb.box[1]) * kb * fb
    return min(wa, ha, wb, hb) > 0 and max(abs(np.log(wa / wb)), abs(np.log(ha / hb))) <= NATIVE_SCALE_TOL


def _decode_original(paths):
    """The first of ``paths`` (an original's copies) that decodes, at ORIGINAL_DECODE px (a PIL
    image); None if none does (gone, unreadable: it is only read)."""
    from nearsort.ingest.decode import decode_file

    for p in paths:
        try:
            return decode_file(p, ORIGINAL_DECODE).image
        except Exception:  # noqa: BLE001 - an unreadable original proves nothing
            continue
    return None


class PixelVerifier:
    """Compares thumbnails by id; decoded pictures are kept in a bounded LRU cache and verdicts
    are remembered (both orders). With ``sources`` (thumbnail id -> ((W, H) of its original, the
    original's paths)), a copy verdict between two originals of one size is checked for motion on
    them (:meth:`_on_originals`).

    ``store`` (a file, ``VERDICT_CACHE`` in THUMBS/.nearsort): verdicts of earlier runs, kept by the
    two thumbnails' files (relpath's name, size, mtime: a rewritten or remade file is compared again)
    and ``rules_version()`` (with or without the originals' check); ``save()`` writes this run's. A
    dupes run over an unchanged library compares nothing."""

    def __init__(self, root: Path, relpaths: dict[int, str], cache: int = 128,
                 sources: Optional[Mapping[int, tuple[tuple[int, int], list[str]]]] = None,
                 store: Optional[Path] = None):
        self.root, self.relpaths, self.cap = Path(root), relpaths, cache
        self.sources = sources or {}
        self.on_originals = sources is not None
        self._originals: OrderedDict[int, object] = OrderedDict()
        self._lumas: OrderedDict[int, Optional[np.ndarray]] = OrderedDict()  # full-size luma (frames.native_luma)
        self._pics: OrderedDict[int, Optional[_Picture]] = OrderedDict()
        self._verdicts: dict[tuple[int, int], Verdict] = {}
        self._screened: dict[tuple[int, int], Verdict] = {}
        self.compared = 0
        self.store = store
        self._stored: dict[tuple[str, str, float], str] = {}  # (file a, file b, screen or _FULL) -> verdict JSON
        self._files: dict[int, Optional[str]] = {}
        self._screen_of: dict[tuple[int, int], Optional[float]] = {}  # the screen a screened verdict answered
        self._fresh: set[tuple[int, int]] = set()  # pairs compared in this run (not recalled): what save() adds
        if store is not None:
            self._load()

    def _pic(self, tid: int) -> Optional[_Picture]:
        if tid in self._pics:
            self._pics.move_to_end(tid)
            return self._pics[tid]
        try:
            p = _Picture(self.root / self.relpaths[tid])
        except Exception:  # noqa: BLE001 - an unreadable thumbnail proves nothing
            p = None
        self._pics[tid] = p
        if len(self._pics) > self.cap:
            self._pics.popitem(last=False)
        return p

    def blank(self, tid: int) -> bool:
        """A uniform frame clipped to black or white: it shows nothing of its scene, so only
        byte-identical files are copies of it (unreadable counts as not blank)."""
        p = self._pic(tid)
        return p is not None and p.blank

    # -- stored verdicts
    def _file(self, tid: int) -> Optional[str]:
        """What a stored verdict knows a thumbnail by: its name (without a rank prefix: refresh renames),
        its file's size and mtime (None: unreadable)."""
        if tid not in self._files:
            rel = self.relpaths[tid]
            try:
                st = os.stat(self.root / rel)
                self._files[tid] = f"{_thumb_name(rel)}:{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                self._files[tid] = None
        return self._files[tid]

    def version(self) -> str:
        """The rules' version, and whether copies of one size are checked on their originals."""
        return rules_version() + (":originals" if self.on_originals else ":thumbnails")

    def _load(self) -> None:
        try:
            with np.load(self.store) as z:
                if str(z["version"]) != self.version():
                    return
                self._stored = {(str(a), str(b), float(sc)): str(v)
                                for a, b, sc, v in zip(z["a"], z["b"], z["screen"], z["verdict"])}
        except Exception:  # noqa: BLE001 -- none yet, or damaged: compare again
            self._stored = {}

    def _recall(self, key: tuple[int, int], screen: Optional[float]) -> Optional[Verdict]:
        if not self._stored:
            return None
        fa, fb = self._file(key[0]), self._file(key[1])
        if fa is None or fb is None:
            return None
        raw = self._stored.get((fa, fb, _FULL if screen is None else float(screen)))
        if raw is None and screen is not None:  # a full verdict answers a screened question too
            raw = self._stored.get((fa, fb, _FULL))
        if raw is None:
            return None
        kind, diff, local, scale, rot, metrics = json.loads(raw)
        v = Verdict(kind, diff, local, scale, rot, metrics)
        self._keep(key, v, screen)
        return v

    def save(self) -> None:
        """Write the verdicts of this run and the stored ones still about these files (a cache only)."""
        if self.store is None:
            return
        rows = dict(self._stored)
        for table, screened in ((self._verdicts, False), (self._screened, True)):
            for (a, b), v in table.items():
                if (a, b) not in self._fresh:  # recalled: its row is there already
                    continue
                fa, fb = self._file(a), self._file(b)
                if fa is None or fb is None or v.kind == "unreadable":
                    continue
                sc = self._screen_of.get((a, b)) if screened else None
                if screened and sc is None:
                    continue
                sc = _FULL if sc is None else float(sc)
                rows[(fa, fb, sc)] = json.dumps([v.kind, v.diff, v.local, v.scale, v.rotation, v.metrics], default=float)
        # kept: verdicts about thumbnails still in the library whose files were not seen changed
        seen = {_thumb_name(self.relpaths[t]): f for t, f in self._files.items()}
        names = {_thumb_name(r) for r in self.relpaths.values()}

        def current(f: str) -> bool:
            name = f.rsplit(":", 2)[0]
            return name in names and seen.get(name, f) == f

        rows = {k: v for k, v in rows.items() if current(k[0]) and current(k[1])}
        if not self._fresh and len(rows) == len(self._stored):  # nothing new, nothing gone: the file is current
            return
        try:
            keys = sorted(rows)
            tmp = self.store.with_name(self.store.name + ".tmp.npz")
            np.savez(tmp, version=np.array(self.version()), a=np.array([k[0] for k in keys], dtype="U"),
                     b=np.array([k[1] for k in keys], dtype="U"), screen=np.array([k[2] for k in keys], np.float64),
                     verdict=np.array([rows[k] for k in keys], dtype="U"))
            os.replace(tmp, self.store)
        except OSError:
            pass

    def compare(self, a: int, b: int, screen: Optional[float] = None) -> Verdict:
        key = (a, b) if a < b else (b, a)
        v = self._verdicts.get(key) or (self._screened.get(key) if screen is not None else None)
        if v is None:
            v = self._recall(key, screen)
        if v is None:
            pa, pb = self._pic(key[0]), self._pic(key[1])
            fit: dict = {}
            v = Verdict("unreadable") if pa is None or pb is None else compare_pictures(pa, pb, screen, fit)
            if v.copy and self.sources and "motion" in v.metrics:
                v = self._on_originals(key, pa, pb, v, fit)
            self.compared += 1
            self._keep(key, v, screen)
            self._fresh.add(key)
        return v

    def _original(self, tid: int):
        if tid in self._originals:
            self._originals.move_to_end(tid)
            return self._originals[tid]
        p = self._originals[tid] = _decode_original(self.sources[tid][1])
        if len(self._originals) > ORIGINALS_KEPT:
            self._originals.popitem(last=False)
        return p

    def _native_luma(self, tid: int):
        """frames.native_luma of an original, kept (LRU, NATIVE_KEPT): a keeper is compared with each
        of its crops, which come together (prefetch sorts the pairs by component)."""
        if tid in self._lumas:
            self._lumas.move_to_end(tid)
            return self._lumas[tid]
        y = self._lumas[tid] = native_luma(self.sources[tid][1])
        if len(self._lumas) > NATIVE_KEPT:
            self._lumas.popitem(last=False)
        return y

    def _on_originals(self, key: tuple[int, int], pa: _Picture, pb: _Picture, v: Verdict,
                      fit: Optional[dict] = None) -> Verdict:
        """A copy verdict checked for motion at a higher resolution: on the thumbnails at
        ORIGINAL_SIDE (most copies stop here), then, above ORIGINAL_SCREEN there, on both originals. Two
        originals of one size (two frames of a video always are; a re-encode or an edit of tone often
        is) are measured as whole frames (:func:`frames.fine_motion`, as resize's name collisions),
        against MAX_MOTION. Originals of two sizes (a half-size or cropped copy) map onto each other
        only through the thumbnails' alignment (:func:`motion_at` on the decoded originals), which a
        rotated or bordered crop of a real photo leaves up to ~0.8 px off: they are held to
        MAX_MOTION_RESCALED. A part that moved on both makes the pair a ``shot``; originals that
        cannot be read leave the verdict as it is (``metrics["unconfirmed"]``)."""
        da, db = self.sources.get(key[0], ((0, 0),))[0], self.sources.get(key[1], ((-1, -1),))[0]
        m = v.metrics
        share, name = None, None
        if da == db:  # two JPEGs of one encoding: a re-save, or two frames of one encoder (frames.recoded_files)
            share, name = recoded_files(self.sources[key[0]][1], self.sources[key[1]][1]), "recoded"
        elif not v.rotation and _native_scale(pa, pb, v, da, db):  # one cut from the other, no resampling
            try:
                share, name = native_luma_change(self._native_luma(key[0]), self._native_luma(key[1])), "native"
            except Exception:  # noqa: BLE001 - pictures that cannot be compared prove nothing
                share = None
        if share is not None:
            m[name] = share
            if share > RECODE_SHARE:
                return Verdict("shot", v.diff, v.local, v.scale, v.rotation, m)
        m["motion_thumb"] = motion_at(pa, pb, v, ORIGINAL_SIDE, fit=fit)
        if m["motion_thumb"] <= ORIGINAL_SCREEN:
            return v
        oa, ob = self._original(key[0]), self._original(key[1])
        if oa is None or ob is None:
            m["unconfirmed"] = True
            return v
        if da == db:
            m["motion_original"], limit = fine_motion(oa, ob), MAX_MOTION
        else:
            m["motion_original"], limit = motion_at(_Picture(oa), _Picture(ob), v, ORIGINAL_SIDE), MAX_MOTION_RESCALED
        return Verdict("shot", v.diff, v.local, v.scale, v.rotation, m) if m["motion_original"] > limit else v

    def original_checks(self) -> tuple[int, int]:
        """(pairs measured on their originals, pairs whose originals could not be read)."""
        vs = list(self._verdicts.values()) + list(self._screened.values())
        return sum("motion_original" in v.metrics for v in vs), sum("unconfirmed" in v.metrics for v in vs)

    def _keep(self, key: tuple[int, int], v: Verdict, screen: Optional[float] = None) -> None:
        if "screened" in v.metrics:  # a screened-out answer is not the full verdict
            self._screened[key] = v
            self._screen_of[key] = screen
        else:
            self._verdicts[key] = v

    def prefetch(self, pairs: list[tuple[int, int, Optional[float]]], workers: Optional[int] = None) -> None:
        """Compare many pairs (a, b, screen) at once, in processes when there are many; later
        ``compare`` calls are answered from what this found."""
        todo = _by_component(sorted({((a, b) if a < b else (b, a), sc) for a, b, sc in pairs
                                     if ((a, b) if a < b else (b, a)) not in self._verdicts
                                     and self._recall((a, b) if a < b else (b, a), sc) is None}))
        nw = workers or os.cpu_count() or 1
        if len(todo) < PARALLEL_ABOVE or nw < 2:
            for (a, b), sc in todo:
                self.compare(a, b, sc)
            return
        from concurrent.futures import ProcessPoolExecutor

        from nearsort.workers import pool_context

        _fft()  # imported once here: forked workers inherit it instead of importing it each
        size = min(PARALLEL_CHUNK, max(8, -(-len(todo) // (4 * nw))))
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        jobs = [(str(self.root), [(a, b, self.relpaths[a], self.relpaths[b], sc) for (a, b), sc in c],
                 {t: self.sources[t] for (a, b), _ in c for t in (a, b) if t in self.sources}) for c in chunks]
        with ProcessPoolExecutor(nw, mp_context=pool_context()) as ex:
            for out in ex.map(_compare_chunk, jobs):
                for a, b, sc, v in out:
                    self.compared += 1
                    self._keep((a, b), v, sc)
                    self._fresh.add((a, b))


def _by_component(todo: list) -> list:
    """The pairs ((a, b), screen) grouped by connected component of the pair graph (each in its
    first pair's place, its own pairs in order): the pictures of a component are compared while
    they are decoded (the LRU cache, a worker's chunk), not decoded again for every pair."""
    pos: dict[int, int] = {}
    for (a, b), _ in todo:
        pos.setdefault(a, len(pos))
        pos.setdefault(b, len(pos))
    dsu = DSU(len(pos))
    for (a, b), _ in todo:
        dsu.union(pos[a], pos[b])
    first: dict[int, int] = {}
    for i, ((a, _b), _) in enumerate(todo):
        first.setdefault(dsu.find(pos[a]), i)
    return sorted(todo, key=lambda t: first[dsu.find(pos[t[0][0]])])


def _compare_chunk(job) -> list[tuple[int, int, Optional[float], Verdict]]:
    """Worker: verdicts for a chunk of pairs sorted by their first thumbnail (cache-friendly)."""
    root, items, sources = job
    rel = {}
    for a, b, ra, rb, _ in items:
        rel[a], rel[b] = ra, rb
    pv = PixelVerifier(Path(root), rel, sources=sources)
    return [(a, b, sc, pv.compare(a, b, sc)) for a, b, _, _, sc in items]


def compare_files(a, b) -> Verdict:
    """Compare two thumbnail (or any small image) files."""
    return compare_pictures(_Picture(Path(a)), _Picture(Path(b)))
