"""Pixel measures shared by several stages (numpy / PIL only; imports nothing of nearsort).

* :func:`trim_box`: the uniform borders (letterbox, frames) of a grey image (dupes).
* low-detail frames (uniform, or only a smooth gradient: a clear sky, blank paper) show only
  their tone: two of them are the same picture only within ``LOW_INFO_TONE`` levels.
* :func:`local_motion`: how far a part of one aligned image moved against the other once a
  global affine map is taken out (dupes' pixel check: a different shot, never a copy).
* :func:`same_pixels`: two originals share a thumbnail name only when their thumbnails' pixels
  agree (resize, rebuild), with dupes' low-detail tolerance, and no part moved (:func:`still`),
  so a name never merges pictures that ``dupes`` would call different.
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
MOTION_SIDE = 128          # px: local motion is measured on images of this side (dupes.pixels.FINE)
MAX_MOTION = 0.42          # px (MOTION_SIDE): the most a part of a copy may seem to move on its own
MOTION_BLOCK = 8           # block side (MOTION_SIDE px) of the local-motion check
MOTION_TEXTURE = 0.02      # structure tensor eigenvalue (per px, normalised image): a block pins a shift down
# Thumbnails only (MOTION_SIDE): where fewer than 6 blocks reach MOTION_TEXTURE, the blocks above this
# floor are measured instead. A bright sky and a dark trunk set a frame's contrast and its leaves fall
# below the floor (tree.avi: 2 blocks of 225), so the check answered "still" for every such pair.
# bench/dupes.py --texture; video bench 42 -> 38 different-frame pairs grouped (35 on fresh
# thumbnails), tiles R 0.924 -> 0.917 (4 copy pairs of faint tiles now measured moving), dev, shots
# and real shots unchanged. Not on the originals (ORIGINAL_SIDE): there it costs dev-bench copies.
MOTION_TEXTURE_LOW = 0.005
MOTION_EDGE = 0.03         # ... or, for its larger eigenvalue only, the shift across its edge
MOTION_DAMP = 0.0005       # added to the flow's normal equations: a direction without structure stays put
ORIGINAL_SIDE = 256        # px: motion measured again on the originals at this side (dupes.pixels too)
ORIGINAL_DECODE = 320      # long side (px) the originals are decoded to for it
ORIGINAL_SCREEN = 0.25     # px (ORIGINAL_SIDE): thumbnails moving more than this are measured on their originals
MOTION_ROBUST = 0.3        # px: Cauchy scale of the robust affine fit (blocks that move alone barely pull it)
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


def normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (the std floored at 4 levels: a flat frame's noise is not structure)."""
    d = x - x.mean()
    return d / max(float(np.sqrt((d * d).mean())), 4.0)  # = x.std(), one pass fewer


def _smooth(x: np.ndarray) -> np.ndarray:
    """5-tap binomial blur (sigma 1 px), edges repeated: JPEG noise out, sub-pixel shifts kept."""
    k = np.array([1, 4, 6, 4, 1], np.float32) / 16
    p = np.pad(x, 2, mode="edge")
    y = sum(k[i] * p[:, i:i + x.shape[1]] for i in range(5))
    return sum(k[i] * y[i:i + x.shape[0], :] for i in range(5))


def _block_flow(a: np.ndarray, b: np.ndarray, n: int) -> dict:
    """Lucas-Kanade in n x n blocks with a gain and an offset per block (a local tone change is
    not motion): b(x) ~ (1 + g) a(x + d) + c, linearised; a 2-px margin is left out. Returns per
    block the flow d = (u, v) such that b(x) ~ a(x + d) (damped: along an edge it stays ~0), the
    eigenvalues (ascending) and eigenvectors of the structure tensor per pixel (how well the
    block pins a shift down, and in which direction), the normal equations A sol = r, sum(it^2)
    and the block centres."""
    m = (a + b) / 2  # the mean's gradient: symmetric, a contrast inverted between the two cancels
    gy, gx = np.gradient(m)
    e = slice(2, -2)
    m, it = m[e, e], (b - a)[e, e]
    h, w = m.shape[0] // n * n, m.shape[1] // n * n
    bh, bw = h // n, w // n
    # the 5 features of every block, laid out (bh, bw, 5, n*n): each written once, in place
    f = np.empty((bh, bw, 5, n, n), np.float32)
    for k, x in enumerate((gx[e, e], gy[e, e], m - m.mean(), None, it)):
        f[:, :, k] = 1.0 if x is None else x[:h, :w].reshape(bh, n, bw, n).transpose(0, 2, 1, 3)
    f = f.reshape(bh, bw, 5, n * n)
    # every product of the 4 features and the difference, summed per block: (bh, bw, 5, 5)
    P = (f @ f.transpose(0, 1, 3, 2)).astype(np.float64)
    A = P[..., :4, :4] + np.diag([MOTION_DAMP, MOTION_DAMP, 1e-6, 1e-6]) * (n * n)
    r, it2 = P[..., :4, 4], P[..., 4, 4]
    vals, vecs = _eigh2(P[..., 0, 0] / (n * n), P[..., 0, 1] / (n * n), P[..., 1, 1] / (n * n))
    sol = np.linalg.solve(A, r[..., None])[..., 0]
    cy = 2 + (np.arange(h // n) + 0.5) * n
    cx = 2 + (np.arange(w // n) + 0.5) * n
    return {"flow": sol[..., :2], "vals": vals, "vecs": vecs, "A": A, "r": r, "it2": it2, "sol": sol,
            "xy": np.stack(np.broadcast_arrays(cx[None, :], cy[:, None]), -1)}


def _eigh2(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh`` of the symmetric 2x2 matrices [[a, b], [b, c]] (arrays), in closed form:
    eigenvalues ascending (..., 2) and eigenvectors as columns (..., 2, 2), each up to its sign (as
    LAPACK's). A fifth of the time of the batched LAPACK call on the flow blocks."""
    mean, half = (a + c) / 2, (a - c) / 2
    d = np.hypot(half, b)
    vals = np.stack([mean - d, mean + d], -1)
    # the larger eigenvalue's vector: (l2 - c, b) when a >= c, else (b, l2 - a): the better conditioned one
    big = np.where((a >= c)[..., None], np.stack([half + d, b], -1), np.stack([b, d - half], -1))
    norm = np.linalg.norm(big, axis=-1, keepdims=True)
    v2 = np.where(norm > 0, big / np.maximum(norm, np.finfo(float).tiny), [1.0, 0.0])  # isotropic: any
    v1 = np.stack([-v2[..., 1], v2[..., 0]], -1)
    return vals, np.stack([v1, v2], -1)


def _affine_fit(flow: np.ndarray, X: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The affine flow field (coefficients for X = [1, x - cx, y - cy]) that best explains the
    block flows, robustly (iteratively reweighted, Cauchy): what a crop, a resize or a slight
    rotation leaves after the coarse alignment; a part that moved on its own barely pulls it.
    Each weighted least-squares step is solved by its 3x3 normal equations, or by ``lstsq`` (the
    minimum-norm answer) where they are ill-conditioned: textured blocks all on one line."""
    X, U, w0 = X.reshape(-1, 3), flow.reshape(-1, 2), weight.reshape(-1)
    w = w0
    for _ in range(5):
        xw = X.T * w
        normal = xw @ X
        diag = normal[0, 0] * normal[1, 1] * normal[2, 2]
        if diag > 0 and np.linalg.det(normal) > 1e-9 * diag:  # (Hadamard: det <= the diagonal's product)
            coef = np.linalg.solve(normal, xw @ U)
        else:
            sw = np.sqrt(w)[:, None]
            coef = np.linalg.lstsq(X * sw, U * sw, rcond=None)[0]
        w = w0 / (1 + (np.linalg.norm(U - X @ coef, axis=1) / MOTION_ROBUST) ** 2)
    return coef


def _warp(z: np.ndarray, coef: np.ndarray, ctr: np.ndarray) -> np.ndarray:
    """z resampled (bilinear) at x + the affine flow ``coef`` (pixel indices); PIL's affine map
    works on pixel-centre coordinates (index + 0.5)."""
    from PIL import Image

    (u0, v0), (ux, vx), (uy, vy) = coef
    cx, cy = ctr[0] + 0.5, ctr[1] + 0.5
    im = Image.fromarray(np.ascontiguousarray(z, dtype=np.float32))
    data = (1 + ux, uy, u0 - ux * cx - uy * cy, vx, 1 + vy, v0 - vx * cx - vy * cy)
    return np.asarray(im.transform(im.size, Image.AFFINE, data, Image.BILINEAR))


def _flows(a: np.ndarray, bb: np.ndarray, n: int, ctr: np.ndarray, ring: int = 1, low: float | None = None):
    """Block flows of a and bb, the blocks that count (not the outer ``ring`` rings), and their
    robust affine fit (None when fewer than 6 blocks have 2-D texture: above MOTION_TEXTURE, or,
    where fewer reach it, above ``low``)."""
    f = _block_flow(a, bb, n)
    inner = np.zeros(f["vals"].shape[:2], bool)
    inner[ring:-ring, ring:-ring] = True
    textured = inner & (f["vals"][..., 0] > MOTION_TEXTURE)
    if low is not None and textured.sum() < 6:
        textured = inner & (f["vals"][..., 0] > low)
    X = np.concatenate([np.ones(inner.shape + (1,)), f["xy"] - ctr], -1)
    w = np.minimum(f["vals"][..., 0], 0.2) * textured
    return f, inner, textured, X, (_affine_fit(f["flow"], X, w) if textured.sum() >= 6 else None)


def global_affine(za: np.ndarray, zb: np.ndarray, n: int = MOTION_BLOCK) -> np.ndarray | None:
    """The affine flow (:func:`_affine_fit` coefficients, about the centre) that maps zb onto za,
    in two passes as :func:`local_motion` finds it; None without enough texture. Scaled up, it
    aligns the same pair at a higher resolution (:func:`local_motion`'s ``init``)."""
    a, b = _smooth(za), _smooth(zb)
    ctr = np.array([a.shape[1] / 2, a.shape[0] / 2])
    coef = _flows(a, b, n, ctr)[4]
    if coef is None:
        return None
    more = _flows(a, _warp(b, -coef, ctr), n, ctr)[4]
    return coef if more is None else coef + more


def local_motion(za: np.ndarray, zb: np.ndarray, n: int = MOTION_BLOCK, init: np.ndarray | None = None,
                 ring: int = 1, fit: list | None = None, low: float | None = None) -> float:
    """How far (pixels) some part of the picture moved on its own between two aligned images.

    Block flows (:func:`_block_flow`) of the blocks with 2-D texture are fitted with one affine
    map (:func:`_affine_fit`: what a crop, a resize or a slight rotation leaves after the coarse
    alignment), b is warped by it and the flows are measured again (the linearised flow is exact
    only for small shifts). A block's evidence is the flow the second fit leaves over (on an edge
    without 2-D texture: its part across the edge, the only one an edge shows), times the share
    of the block's difference that this local motion explains: JPEG noise, resampling and
    aliasing differ from a shift and are explained by little of it, an object that moved by most.
    The outer ``ring`` rings of blocks are left out (a border trim or a crop's edge is not motion:
    measured at k times MOTION_SIDE, leave k rings out). 0 when
    fewer than 6 blocks have 2-D texture. ``init``: an affine flow (:func:`global_affine`, in
    za's pixels) b is warped by first, so that a pair measured at a high resolution, where a
    small misalignment is many pixels, starts aligned. ``fit``: a list the affine flow of the two
    passes is appended to (with ``ring`` 1 and no ``init``, :func:`global_affine` of the same pair).
    ``low``: the texture floor of pictures with too few blocks above MOTION_TEXTURE (:func:`_flows`;
    thumbnails: MOTION_TEXTURE_LOW)."""
    a, b = _smooth(za), _smooth(zb)
    ctr = np.array([a.shape[1] / 2, a.shape[0] / 2])
    if init is not None:
        b = _warp(b, -init, ctr)
    f, inner, textured, X, coef = _flows(a, b, n, ctr, ring, low)
    if coef is None:
        if fit is not None:
            fit.append(None)
        return 0.0
    first = coef
    f, inner, textured, X, coef = _flows(a, _warp(b, -coef, ctr), n, ctr, ring, low)  # b(x) ~ a(x + d): b at x - d lies on a
    if fit is not None:
        fit.append(first if coef is None else first + coef)
    if coef is None:
        return 0.0
    pred = X @ coef
    left = f["flow"] - pred
    across = np.abs((f["vecs"][..., :, 1] * left).sum(-1))  # along the eigenvector of the larger eigenvalue
    moved = np.where(textured, np.linalg.norm(left, axis=-1), np.where(f["vals"][..., 1] > MOTION_EDGE, across, 0.0))
    # each block's residual energy with its own flow (rf) and with the fitted affine flow (rc)
    A, r = f["A"], f["r"]
    rf = f["it2"] - (f["sol"] * r).sum(-1)
    e2 = f["it2"] - 2 * (pred * r[..., :2]).sum(-1) + np.einsum("...i,...ij,...j->...", pred, A[..., :2, :2], pred)
    r2 = r[..., 2:] - np.einsum("...ij,...j->...i", A[..., 2:, :2], pred)
    rc = e2 - (np.linalg.solve(A[..., 2:, 2:], r2[..., None])[..., 0] * r2).sum(-1)
    explained = np.clip((rc - rf) / np.maximum(rc, 1e-9), 0, 1)
    return float((moved * explained)[inner].max())


def _square(im: Image.Image, side: int) -> np.ndarray:
    """A whole frame, grey, resampled to side x side and normalised."""
    return normalise(np.asarray(im.convert("L").resize((side, side), Image.BILINEAR), np.float32))


def frame_motion(a: Image.Image, b: Image.Image, fit: list | None = None) -> float:
    """:func:`local_motion` of two thumbnails of one original size whose prints agree (resize's
    name collisions: same size, phash and print, so no crop, shift or colour change to look
    for), whole frames at MOTION_SIDE, in pixels of the smaller one when it has fewer. ``fit``
    receives the pair's affine flow at MOTION_SIDE (:func:`fine_motion`'s ``affine``)."""
    px = min((a.width * a.height) ** 0.5, (b.width * b.height) ** 0.5)
    return (local_motion(_square(a, MOTION_SIDE), _square(b, MOTION_SIDE), fit=fit, low=MOTION_TEXTURE_LOW)
            * min(1.0, px / MOTION_SIDE))


def scaled_affine(coef: np.ndarray | None, s: float) -> np.ndarray | None:
    """An affine flow (:func:`global_affine`) for the same pair s times larger: the translation
    scales, the linear part does not."""
    return None if coef is None else coef * np.array([[s], [1.0], [1.0]])


def fine_motion(a: Image.Image, b: Image.Image, affine: list | None = None) -> float:
    """:func:`local_motion` of two whole frames of one picture size (two thumbnails, or two
    originals decoded at ORIGINAL_DECODE) aligned at MOTION_SIDE, then measured at ORIGINAL_SIDE,
    where a video frame's 1-px drift (a fifth of a pixel at MOTION_SIDE) shows; in pixels of the
    smaller one when it has fewer. A pair is a different shot only when its thumbnails move by more
    than ORIGINAL_SCREEN here *and* its originals by more than MAX_MOTION: on the originals alone,
    the fine grain of a noisy floor that a WebP copy smoothed away looks like motion (2.5 px, a
    tiles-bench pair whose thumbnails move 0.17), while consecutive frames move on both (vtest,
    Megamind: thumbnails 0.4-1, originals more). ``affine``: the pair's alignment at MOTION_SIDE
    already found (:func:`frame_motion`'s ``fit``: the same numbers), not found again."""
    coarse = affine[0] if affine else global_affine(_square(a, MOTION_SIDE), _square(b, MOTION_SIDE))
    init = scaled_affine(coarse, ORIGINAL_SIDE / MOTION_SIDE)
    px = min((a.width * a.height) ** 0.5, (b.width * b.height) ** 0.5)
    return local_motion(_square(a, ORIGINAL_SIDE), _square(b, ORIGINAL_SIDE), init=init,
                        ring=ORIGINAL_SIDE // MOTION_SIDE) * min(1.0, px / ORIGINAL_SIDE)


def still(jpeg_a: bytes, jpeg_b: bytes) -> bool:
    """For two thumbnails whose prints agree: did no part of the picture move (:func:`frame_motion`
    <= MAX_MOTION, dupes' rule)? Consecutive video frames and a burst where a small object moved a
    pixel or two share size, phash and print, and are still different shots. Two full decodes and a
    flow field: a few milliseconds, paid only when the prints agree."""
    with Image.open(io.BytesIO(jpeg_a)) as a, Image.open(io.BytesIO(jpeg_b)) as b:
        return frame_motion(a, b) <= MAX_MOTION


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
    """Do two thumbnails show the same picture (within JPEG re-encoding noise, nothing moved)?"""
    return prints_agree(pixel_print(jpeg_a), pixel_print(jpeg_b)) and still(jpeg_a, jpeg_b)


# Two JPEGs of one encoding (size, quantisation tables, chroma subsampling: what a re-save that keeps
# the tables writes, and what one encoder writes for every frame of a video) whose decoded luma, once
# a tone curve is fitted, differs in more than RECODE_SHARE of the 8x8 blocks by more than
# RECODE_LEVELS (the block's mean): the second is not the first saved again. A re-save of decoded
# pixels with the same tables is nearly idempotent (the 94 JPEG originals of the bench saved again with
# their own tables: <= 0.00063), while two frames of one clip change more blocks than that, however
# still (video bench: >= 0.011, Megamind's near-still frames 0.012; their motion is ~0.01 px). A
# tone curve is taken out (brightness 0.8: 0, gamma 0.9: 0.001); what it cannot take out, an edit
# saved with the original's tables (contrast 1.2 up to 0.047, saturation 1.3 up to 0.013, sharpen,
# blur), reads as a change too: such an edit is a similar shot, not a copy (the safe side: none of
# the labelled copies of the dev, tiles, shots, real-shots and video benches is one).
RECODE_LEVELS = 8.0
RECODE_SHARE = 0.005
RECODE_MAX_PIXELS = 64_000_000  # larger pictures are not compared (~10 bytes a pixel while it runs)


def jpeg_encoding(data: bytes):
    """(size, quantisation tables, subsampling, offset of the first table) of a baseline or
    progressive JPEG, read from its header (nothing decoded); None for anything else."""
    from PIL import JpegImagePlugin

    if data[:2] != b"\xff\xd8":
        return None
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "JPEG":
                return None
            q = tuple((k, tuple(v)) for k, v in sorted(im.quantization.items()))
            key = (im.size, im.mode, q, JpegImagePlugin.get_sampling(im))
    except Exception:  # noqa: BLE001 - not a readable JPEG: no encoding to share
        return None
    return key, data.find(b"\xff\xdb")


def _luma(data: bytes) -> np.ndarray:
    """The decoder's own luma (uint8), no colour conversion."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("RGB", "YCbCr"):
            im.draft("YCbCr", im.size)
        y = np.asarray(im)
    return y[..., 0] if y.ndim == 3 else y


def _recode_shares(ya: np.ndarray, yb: np.ndarray) -> tuple[float, float]:
    """The share of 8x8 blocks whose mean |b - curve(a)| exceeds RECODE_LEVELS, curve(a) the mean of
    b at each level of a (a tone curve), and the same the other way, from one joint histogram: the
    residual of every (a, b) pair of levels is looked up, not computed per pixel."""
    joint = ya.astype(np.int32) * 256 + yb
    hist = np.bincount(joint.ravel(), minlength=65536).reshape(256, 256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    na, nb = hist.sum(1), hist.sum(0)
    curve_ab = np.where(na > 0, hist @ levels / np.maximum(na, 1), levels)  # b's mean at each level of a
    curve_ba = np.where(nb > 0, levels @ hist / np.maximum(nb, 1), levels)  # a's mean at each level of b
    h, w = ya.shape[0] // 8 * 8, ya.shape[1] // 8 * 8
    out = []
    for table in (np.abs(levels[None, :] - curve_ab[:, None]), np.abs(levels[:, None] - curve_ba[None, :])):
        r = table.astype(np.float32).ravel()[joint[:h, :w]]
        blocks = r.reshape(h // 8, 8, w // 8, 8).mean(axis=(1, 3))
        out.append(float((blocks > RECODE_LEVELS).mean()) if blocks.size else 0.0)
    return out[0], out[1]


def recoded_change(a: bytes, b: bytes) -> float | None:
    """The share of 8x8 luma blocks that changed between two JPEGs of one encoding beyond what a
    re-save and a tone curve explain (both ways, the larger), or None when they are not JPEGs of
    one encoding. Compressed data that is the same byte for byte (an EXIF-stripped copy) is 0
    without decoding."""
    ea, eb = jpeg_encoding(a), jpeg_encoding(b)
    if ea is None or eb is None or ea[0] != eb[0]:
        return None
    (w, h), *_ = ea[0]
    if w * h > RECODE_MAX_PIXELS:
        return None
    if ea[1] >= 0 and eb[1] >= 0 and a[ea[1]:] == b[eb[1]:]:
        return 0.0
    ya, yb = _luma(a), _luma(b)
    if ya.shape != yb.shape:
        return None
    if np.array_equal(ya, yb):
        return 0.0
    return max(_recode_shares(ya, yb))


_HEAD = 1 << 17  # bytes of a file read first: a JPEG's header (tables, size) is in them


def recoded_files(paths_a, paths_b) -> float | None:
    """:func:`recoded_change` of the first readable file of each list of paths (an original and
    its copies), or None (not two JPEGs of one encoding, unreadable). Only their headers are read
    unless both are JPEGs whose encodings may match."""
    def head(paths):
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    return p, fh.read(_HEAD)
            except OSError:
                continue
        return None, b""

    (pa, ha), (pb, hb) = head(paths_a), head(paths_b)
    if pa is None or pb is None or ha[:2] != b"\xff\xd8" or hb[:2] != b"\xff\xd8":
        return None
    ea, eb = jpeg_encoding(ha), jpeg_encoding(hb)
    if ea is not None and eb is not None and ea[0] != eb[0]:
        return None  # both headers read, and they differ
    if ea is not None and ea[0][0][0] * ea[0][0][1] > RECODE_MAX_PIXELS:
        return None  # not compared: not read whole either
    try:
        with open(pa, "rb") as fa, open(pb, "rb") as fb:
            return recoded_change(fa.read(), fb.read())
    except Exception:  # noqa: BLE001 - an unreadable or damaged file proves nothing
        return None


# One picture cut from another at its own pixel scale (a crop saved without resampling, a border
# added around a picture): the smaller one is, pixel for pixel, a window of the larger, so the
# re-save measure above applies at the window's offset. A crop of a neighbouring video frame
# matches its own frame there to 0 blocks in 10 000 and the frames 1-10 on by 1.1 % of its blocks or
# more (video bench, bench/native.py): the local-motion checks, which allow for a
# resampled copy's misfit, cannot see tree.avi's near-still leaves. Applied only where both are
# finely encoded (NATIVE_MAX_QUANT: a heavy JPEG re-save changes blocks too) and small enough to be
# decoded whole (NATIVE_MAX_PIXELS).
NATIVE_MAX_PIXELS = 2_100_000  # the larger picture (a 1080p frame); above it the motion checks alone decide
NATIVE_MAX_QUANT = 20.0        # mean luma quantiser of a JPEG (libjpeg quality ~83); PNG, TIFF, BMP: lossless
NATIVE_SIDE = 384              # px: the most textured patch is chosen at about this long side
NATIVE_PATCH = 256             # px: the patch whose correlation finds the window, at full size
LOSSLESS = ("PNG", "TIFF", "BMP", "PPM")


def fine_encoding(im: Image.Image) -> bool:
    """Is an opened image encoded finely enough for :func:`native_crop_change` (lossless, or a JPEG
    whose mean luma quantiser is at most NATIVE_MAX_QUANT)?"""
    if im.format in LOSSLESS:
        return True
    q = getattr(im, "quantization", None) if im.format in ("JPEG", "MPO") else None
    return bool(q) and float(np.mean(q[min(q)])) <= NATIVE_MAX_QUANT


def _window_sums(x: np.ndarray, h: int, w: int) -> np.ndarray:
    c = np.zeros((x.shape[0] + 1, x.shape[1] + 1))
    c[1:, 1:] = x.cumsum(0).cumsum(1)
    return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]


def _reduced(x: np.ndarray, f: int) -> np.ndarray:
    return np.asarray(Image.fromarray(x).reduce(f), np.float32) if f > 1 else x.astype(np.float32)


def _ncc(big: np.ndarray, small: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation (-1..1) of ``small`` at every offset where it lies inside ``big`` (FFT)."""
    from scipy import fft

    h, w = small.shape
    z = small - small.mean()
    corr = fft.irfft2(fft.rfft2(big) * np.conj(fft.rfft2(z, big.shape)), big.shape)
    s1, s2 = _window_sums(big, h, w), _window_sums(big * big, h, w)
    den = np.sqrt(np.maximum(s2 - s1 * s1 / (h * w), 1e-6) * max(float((z * z).sum()), 1e-6))
    return corr[:s1.shape[0], :s1.shape[1]] / den


def crop_offset(big: np.ndarray, small: np.ndarray) -> tuple[int, int] | None:
    """(y, x): where ``small`` (grey) lies in ``big`` (grey, at least as large both ways) at one pixel
    scale, or None when it does not lie there as one piece. Each quarter of ``small`` gives its most
    textured patch (the structure tensor's smaller eigenvalue, at ~NATIVE_SIDE px: texture both
    ways, since a motion-blurred rail or a smooth sky pins no shift along it). One patch is found
    where it can lie in ``big`` by normalised cross-correlation (FFT; at ~NATIVE_SIDE px, then within
    a coarse step at full size); the others are looked for within 3 px of its answer, and at one
    pixel scale at least two of them name exactly that offset (what moved between two frames may
    carry one off), while a copy rotated by half a degree spreads them by 1-3 px. A second patch is
    tried as the first when the first sat on a part that moved; no more (each costs a search of the
    whole picture): None is the safe answer, the motion checks still decide."""
    H, W = big.shape
    h, w = small.shape
    p = min(NATIVE_PATCH, h // 2, w // 2)
    k = 1
    while max(h, w) / k > NATIVE_SIDE and p / k >= 16:
        k *= 2
    ss = _reduced(small, k).astype(np.float64)
    gy, gx = np.gradient(ss)
    pk = max(1, p // k)
    a, b, c = (_window_sums(g, pk, pk) for g in (gx * gx, gx * gy, gy * gy))
    tex = (a + c) / 2 - np.sqrt(((a - c) / 2) ** 2 + b * b)  # tex[i, j]: the patch at (i, j) k-px
    th, tw = tex.shape
    patches = []
    for qy in range(2):
        for qx in range(2):
            part = tex[qy * th // 2:(qy + 1) * th // 2 or th, qx * tw // 2:(qx + 1) * tw // 2 or tw]
            if part.size:
                ty, tx = np.unravel_index(int(np.argmax(part)), part.shape)
                patches.append((min((int(ty) + qy * th // 2) * k, h - p), min((int(tx) + qx * tw // 2) * k, w - p)))

    def best_at(py: int, px: int, y0: int, y1: int, x0: int, x1: int) -> tuple[int, int]:
        """The offset in [y0, y1] x [x0, x1] (clipped to where ``small`` fits) whose window best
        correlates with the patch at (py, px) of ``small``."""
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(H - h, y1), min(W - w, x1)
        region = big[py + y0:py + y1 + p, px + x0:px + x1 + p].astype(np.float64)
        patch = small[py:py + p, px:px + p].astype(np.float64)
        if (y1 - y0 + 1) * (x1 - x0 + 1) <= 64:  # a few offsets: their correlations directly, no FFT
            z = patch - patch.mean()
            wins = np.lib.stride_tricks.sliding_window_view(region, (p, p))
            s1, s2 = _window_sums(region, p, p), _window_sums(region * region, p, p)
            den = np.sqrt(np.maximum(s2 - s1 * s1 / (p * p), 1e-6))
            cc = np.einsum("ijkl,kl->ij", wins, z) / den
        else:
            cc = _ncc(region, patch)
        dy, dx = np.unravel_index(int(np.argmax(cc)), cc.shape)
        return y0 + int(dy), x0 + int(dx)

    bk = _reduced(big, k).astype(np.float64) if k > 1 else None

    def anywhere(py: int, px: int) -> tuple[int, int]:
        """best_at over every offset: at ~NATIVE_SIDE px first (the patch reduced as ``small`` was),
        then at full size within a coarse step of that."""
        if bk is None or (H - h + 1) * (W - w + 1) <= 64:
            return best_at(py, px, 0, H - h, 0, W - w)
        ry, rx = py // k, px // k
        region = bk[ry:ry + (H - h) // k + pk, rx:rx + (W - w) // k + pk]
        patch = ss[ry:ry + pk, rx:rx + pk]
        if region.shape[0] < patch.shape[0] or region.shape[1] < patch.shape[1] or min(patch.shape) < 8:
            return best_at(py, px, 0, H - h, 0, W - w)
        cy, cx = np.unravel_index(int(np.argmax(_ncc(region, patch))), (region.shape[0] - patch.shape[0] + 1,
                                                                        region.shape[1] - patch.shape[1] + 1))
        y, x = int(cy) * k, int(cx) * k
        return best_at(py, px, y - k - 1, y + k + 1, x - k - 1, x + k + 1)

    # one patch found anywhere, the others only near its answer (the same offset, or a step or two
    # off for a rotated copy); the second tried as the first where the first sat on a part that moved
    for i, (py, px) in enumerate(patches):
        y, x = anywhere(py, px)
        agree = 1 + sum(best_at(qy, qx, y - 3, y + 3, x - 3, x + 3) == (y, x)
                        for j, (qy, qx) in enumerate(patches) if j != i)
        if agree >= 3:
            return y, x
        if i >= len(patches) - 3:  # two anchors at most: each costs a search of the whole picture
            break
    return None


def native_crop_change(big: Image.Image, small: Image.Image) -> float | None:
    """:func:`native_luma_change` of two pictures' luma."""
    return native_luma_change(np.asarray(big.convert("L")), np.asarray(small.convert("L")))


def native_luma_change(gb: np.ndarray | None, gs: np.ndarray | None) -> float | None:
    """The share of 8x8 blocks of the smaller luma (uint8) that differ from the window of the larger
    it would have been cut from (:func:`crop_offset`) beyond what a re-save and a tone curve explain
    (both ways, the larger; :func:`recoded_change`'s measure), or None when either is None, the
    smaller does not fit inside the larger, or is not found there at one pixel scale."""
    if gb is None or gs is None:
        return None
    if gs.size > gb.size:
        gb, gs = gs, gb
    if gs.shape[0] > gb.shape[0] or gs.shape[1] > gb.shape[1] or min(gs.shape) < 16:
        return None
    t, b, left, right = trim_box(gs.astype(np.float32))  # a border added after the cut is not the picture's
    gs = gs[t:b, left:right]
    if min(gs.shape) < 16:
        return None
    at = crop_offset(gb, gs)
    if at is None:
        return None
    y, x = at
    return max(_recode_shares(gs, gb[y:y + gs.shape[0], x:x + gs.shape[1]]))


def native_luma(paths) -> np.ndarray | None:
    """The upright full-size luma (uint8) of the first file of ``paths`` (an original and its copies)
    that opens, for :func:`native_luma_change`; None when it is not finely encoded
    (:func:`fine_encoding`), is above NATIVE_MAX_PIXELS or cannot be read."""
    from PIL import ImageOps

    for p in paths:
        try:
            im = Image.open(p)
        except Exception:  # noqa: BLE001 - gone or unreadable: try its next copy
            continue
        try:
            with im:
                if not fine_encoding(im) or im.width * im.height > NATIVE_MAX_PIXELS:
                    return None
                if im.format in ("JPEG", "MPO") and im.mode in ("RGB", "YCbCr"):
                    im.draft("L", im.size)  # luma only, at full size: no colour conversion
                up = ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im
                return np.asarray(up.convert("L"))
        except Exception:  # noqa: BLE001 - a damaged file proves nothing
            return None
    return None
