#!/usr/bin/env python3
"""How far apart two originals of one size are *registered*: labelled copies vs different frames.

    nice .venv/bin/python bench/registration.py /tmp/devbench /tmp/tilesbench /tmp/shotsbench /tmp/realshots /tmp/vidbench

For every pair of originals of one size (width x height) in one ground-truth scene (``scene``
column where the bench has one, else the group), not byte-identical and not a mirror image: the two
files decoded at 320 px (``ingest.decode``, as dupes' originals check reads them), whole frames in
grey at 256 px, and measured three ways:

- ``pc``: the sub-pixel global shift found by phase correlation (Hann window, parabolic peak),
  in pixels of 256; it needs no texture (a blurred, panning frame has a peak too);
- ``shift`` / ``zoom``: the translation at the centre and the isotropic scale change of the robust
  affine map the dupes motion check fits (``frames.global_affine`` at 128, refined at 256); none
  where fewer than 6 blocks have texture;
- ``grain``: the correlation of the two decoded 320-px frames' fine detail (each minus its Gaussian
  blur, sigma 1 px): a re-encode keeps a capture's own grain and noise, a new frame of a still
  scene would not (a lower value is further apart). Printed, not used in the envelope.

Copies of one size (re-encodes, format conversions, tone edits, grey copies) are registered to a few
hundredths of a pixel (phase correlation alone can miss on a near-uniform tile). Printed per bench:
the copies' quantiles, the different frames' quantiles, and how many different-frame pairs fall
inside the envelope of the same bench's copies (pc, shift and zoom each at most the copies'
maximum): frames that registration cannot tell from a re-encode. Of those, a static camera's frames
are still told apart by local motion (dupes' motion check: a person who walked); frames that barely
pan or zoom (the video bench's tree.avi and Megamind.avi) by nothing on their pixels. Read only.
"""
from __future__ import annotations

import argparse
import collections
import csv
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nearsort.frames import _square, _warp, global_affine, scaled_affine  # noqa: E402
from nearsort.ingest.decode import decode_file  # noqa: E402


def phase_shift(a: np.ndarray, b: np.ndarray) -> float:
    """|sub-pixel translation| between two same-size grey images (phase correlation)."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    r = np.fft.fft2(a * win) * np.conj(np.fft.fft2(b * win))
    c = np.fft.ifft2(r / (np.abs(r) + 1e-9)).real
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    h, w = c.shape

    def sub(cm: float, c0: float, cp: float) -> float:
        d = cm - 2 * c0 + cp
        return 0.0 if d >= 0 else 0.5 * (cm - cp) / d

    y = (iy + sub(c[(iy - 1) % h, ix], c[iy, ix], c[(iy + 1) % h, ix]) + h / 2) % h - h / 2
    x = (ix + sub(c[iy, (ix - 1) % w], c[iy, ix], c[iy, (ix + 1) % w]) + w / 2) % w - w / 2
    return float(np.hypot(y, x))


def grain(a, b) -> float | None:
    """Correlation of the fine detail (image minus its Gaussian blur, sigma 1) of two grey frames of one size."""
    from scipy.ndimage import gaussian_filter

    x, y = (np.asarray(im.convert("L"), np.float32) for im in (a, b))
    if x.shape != y.shape:
        return None
    hx, hy = ((z - gaussian_filter(z, 1.0))[4:-4, 4:-4] for z in (x, y))
    return float((hx * hy).mean() / (hx.std() * hy.std() + 1e-9))


def measure(pa: Path, pb: Path) -> tuple[float, float | None, float | None, float | None]:
    a, b = decode_file(pa, 320).image, decode_file(pb, 320).image
    g = grain(a, b)
    a2, b2 = _square(a, 256), _square(b, 256)
    pc = phase_shift(a2, b2)
    coarse = global_affine(_square(a, 128), _square(b, 128))
    if coarse is None:
        return pc, None, None, g
    init = scaled_affine(coarse, 2)
    more = global_affine(a2, _warp(b2, -init, np.array([128.0, 128.0])))
    (u0, v0), (ux, _vx), (_uy, vy) = init + (more if more is not None else 0)
    return pc, float(np.hypot(u0, v0)), float(abs(ux + vy) / 2), g


def pairs(bench: Path):
    rows = list(csv.DictReader(open(bench / "ground_truth.csv", newline="")))
    by = collections.defaultdict(list)
    for r in rows:
        if r["relation"] not in ("similar", "distractor"):
            by[r.get("scene") or r["group_id"]].append(r)
    for scene, rs in by.items():
        for a, b in itertools.combinations(rs, 2):
            if (a["width"], a["height"]) != (b["width"], b["height"]) or (a.get("sha1") and a["sha1"] == b.get("sha1")):
                continue
            yield a["group_id"] == b["group_id"], bench / a["file"], bench / b["file"], scene.rstrip("0123456789")


def q(values: list, p=(0, 50, 95, 100)) -> str:
    v = [x for x in values if x is not None]
    return "-" if not v else " / ".join(f"{x:.3g}" for x in np.percentile(v, p))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("benches", nargs="+", type=Path)
    a = ap.parse_args(argv)
    got: dict[tuple[str, bool], list] = collections.defaultdict(list)
    for bench in a.benches:
        for same, pa, pb, scene in pairs(bench):
            try:
                got[(bench.name, same)].append((*measure(pa, pb), scene))
            except Exception as e:  # noqa: BLE001 - an unreadable file is left out, and said
                print(f"  skipped {pa.name} / {pb.name}: {e}", file=sys.stderr)
    print("pairs of originals of one size, whole frames at 256 px; quantiles min / median / p95 / max")
    print(f"{'bench':12} {'pairs':>10} {'n':>5}  {'pc shift (px)':>28}  {'affine shift (px)':>28}  {'zoom':>28}  "
          f"{'grain (min / p5 / median / max)':>32}")
    for (name, same), ms in sorted(got.items()):
        print(f"{name:12} {'copies' if same else 'different':>10} {len(ms):5}  {q([m[0] for m in ms]):>28}  "
              f"{q([m[1] for m in ms]):>28}  {q([m[2] for m in ms]):>28}  {q([m[3] for m in ms], (0, 5, 50, 100)):>32}")
    for (name, same), ms in sorted(got.items()):
        copies = got.get((name, True), [])
        if same or not copies:
            continue
        env = [max((m[k] for m in copies if m[k] is not None), default=0.0) for k in range(3)]
        inside = [m for m in ms if all(m[k] is None or m[k] <= env[k] for k in range(3))]
        by_scene = collections.Counter(m[4] for m in inside)
        print(f"  {name}: {len(inside)} of {len(ms)} different-frame pairs inside its copies' envelope "
              f"(pc <= {env[0]:.3g} px, shift <= {env[1]:.3g} px, zoom <= {env[2]:.3g}); by scene: "
              + ", ".join(f"{k} {v}" for k, v in by_scene.most_common()))
        low = min((m[3] for m in copies if m[3] is not None), default=None)
        if low is not None:
            print(f"  {name}: {sum(m[3] is not None and m[3] >= low for m in ms)} of {len(ms)} different-frame pairs "
                  f"keep as much grain as its least-correlated copy pair (grain >= {low:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
