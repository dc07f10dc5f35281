#!/usr/bin/env python3
"""When do two originals share a thumbnail? Measures frames.same_pixels on real photos.

    python bench/names.py [--dir PHOTOS]      (default: ../shared/bench/originals)

Two originals share a thumbnail only when their thumbnails' pixels agree (frames.same_pixels:
both reduced to 32x32 RGB, mean absolute difference <= SAME_MEAN and its 99th percentile
<= SAME_P99), not merely their W x H and phash. This prints, for every photo, the two numbers
between its thumbnail and the thumbnail of a copy that must collapse (re-encoded JPEG at
quality 30/50/75/95, EXIF/ICC segments stripped, PNG conversion), and for pictures that must
not (uniform frames of other levels; 480x360 tiles of one photo whose phash collides).
"""
from __future__ import annotations

import argparse
import io
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import SHARED  # noqa: E402  (bench/ingest.py: where ../shared/bench is)
from nearsort.frames import SAME_MEAN, SAME_P99, pixel_print, same_pixels  # noqa: E402
from nearsort.ingest.thumbs import process_bytes  # noqa: E402


def thumb(data: bytes, name: str) -> tuple[str, bytes]:
    r = process_bytes(data, name)
    return f"{r['width']}x{r['height']}_{r['phash']}", r["jpeg"]


def diff(a: bytes, b: bytes) -> tuple[float, float]:
    d = np.abs(pixel_print(a).astype(np.float32) - pixel_print(b))
    return float(d.mean()), float(np.percentile(d, 99))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def strip_segments(data: bytes) -> bytes | None:
    """The JPEG without its APP1 (EXIF/XMP), APP2 (ICC) and APP13 segments; None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i, out = 2, bytearray(b"\xff\xd8")
    while i + 4 <= len(data):
        marker = data[i + 1]
        if marker == 0xDA:
            return bytes(out + data[i:])
        n = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker not in (0xE1, 0xE2, 0xED):
            out += data[i : i + 2 + n]
        i += 2 + n
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=SHARED / "originals")
    a = ap.parse_args()
    same, t_print = [], []
    for f in sorted(p for p in a.dir.iterdir() if p.is_file()):
        data = f.read_bytes()
        try:
            im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
            name, jpeg = thumb(data, f.name)
        except Exception:
            continue
        t0 = time.perf_counter()
        pixel_print(jpeg)
        t_print.append(time.perf_counter() - t0)
        copies = {f"q{q}": (encode(im, "JPEG", quality=q), ".jpg") for q in (30, 50, 75, 95)}
        copies["png"] = (encode(im, "PNG", compress_level=1), ".png")
        s = strip_segments(data)
        if s is not None and s != data:
            copies["stripped"] = (s, ".jpg")
        for kind, (b, ext) in copies.items():
            n2, j2 = thumb(b, "copy" + ext)
            if n2 == name:  # only a name collision asks same_pixels
                same.append((f.name, kind, *diff(jpeg, j2), same_pixels(jpeg, j2)))
    print(f"{len(same)} copies with the original's name (re-encode q30-95, stripped, PNG):")
    for k, label in ((2, "mean"), (3, "p99")):
        v = np.array([s[k] for s in same])
        print(f"  {label}: median {np.median(v):.2f}, max {v.max():.2f}")
    worst = sorted(same, key=lambda s: -(s[2] / SAME_MEAN + s[3] / SAME_P99))[:5]
    for s in worst:
        print(f"    {s[0]} {s[1]}: mean {s[2]:.2f} p99 {s[3]:.1f}")
    print(f"  collapse (frames.same_pixels: mean <= {SAME_MEAN}, p99 <= {SAME_P99}; uniform/smooth frames "
          f"within frames.LOW_INFO_TONE per channel): {sum(s[4] for s in same)}/{len(same)}")
    print(f"  pixel_print of a 256 px thumbnail: {1000 * np.median(t_print):.2f} ms median")

    print("uniform 300x200 frames (level pairs):")
    for x, y in ((0, 255), (8, 255), (100, 110), (100, 104), (128, 130)):
        nx, jx = thumb(encode(Image.new("RGB", (300, 200), (x,) * 3), "PNG"), "u.png")
        ny, jy = thumb(encode(Image.new("RGB", (300, 200), (y,) * 3), "PNG"), "u.png")
        m, p = diff(jx, jy)
        print(f"  {x} vs {y}: same name {nx == ny}, mean {m:.2f} p99 {p:.1f}, "
              f"shared: {nx == ny and same_pixels(jx, jy)}")

    print("480x360 tiles of one photo whose names collide, pixels differ:")
    n_pairs = n_shared = 0
    for f in sorted(p for p in a.dir.iterdir() if p.is_file()):
        try:
            im = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
        except Exception:
            continue
        by_name: dict[str, list] = {}
        for y in range(0, im.height - 359, 180):
            for x in range(0, im.width - 479, 240):
                n, j = thumb(encode(im.crop((x, y, x + 480, y + 360)), "PNG", compress_level=1), "t.png")
                by_name.setdefault(n, []).append(((x, y), j))
        for tiles in by_name.values():
            for (pa, ja), (pb, jb) in itertools.combinations(tiles, 2):
                m, p = diff(ja, jb)
                if p <= 3:  # saturated white both: the same picture (JPEG round-off only)
                    continue
                n_pairs += 1
                shared = same_pixels(ja, jb)
                n_shared += shared
                print(f"  {f.name} {pa} {pb}: mean {m:.2f} p99 {p:.1f}{'  SHARED' if shared else ''}")
    print(f"  {n_shared}/{n_pairs} different tile pairs would share a thumbnail")


if __name__ == "__main__":
    main()
