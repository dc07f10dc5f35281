#!/usr/bin/env python3
"""Which container for thumbnails? Encode time, decode time and bytes for 256 px thumbnails.

    python bench/thumbformat.py [--dir PHOTOS] [--n 150]

Decides the thumbnail format (README, "Thumbnail format"): the thumbnails are written once
and read by featurize, the report and every file browser, so encode + decode time and size
all matter, and so does metadata capacity (JPEG COM segments chained without limit, WebP
XMP chunk, PNG iTXt).
"""
from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image  # noqa: E402

from ingest import DEFAULT_BENCH, ensure_devbench, list_images  # noqa: E402
from nearsort.ingest.decode import decode_bytes  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path)
    ap.add_argument("--n", type=int, default=150)
    a = ap.parse_args()
    files = list_images(a.dir or ensure_devbench(DEFAULT_BENCH))[: a.n]
    thumbs = []
    for f in files:
        try:
            thumbs.append(decode_bytes(open(f, "rb").read(), f, 256).image)
        except Exception:
            pass
    formats = {
        "JPEG q85": ("JPEG", dict(quality=85)),
        "JPEG q85 optimize": ("JPEG", dict(quality=85, optimize=True)),
        "WEBP q80 method 4": ("WEBP", dict(quality=80, method=4)),
        "WEBP q80 method 0": ("WEBP", dict(quality=80, method=0)),
        "PNG": ("PNG", dict(compress_level=6)),
    }
    print(f"{len(thumbs)} thumbnails (long side 256 px)")
    print(f"{'format':<20}{'encode ms':>10}{'decode ms':>10}{'KiB avg':>9}")
    for label, (fmt, kw) in formats.items():
        blobs = []
        t = time.perf_counter()
        for im in thumbs:
            b = io.BytesIO()
            im.save(b, fmt, **kw)
            blobs.append(b.getvalue())
        enc = (time.perf_counter() - t) / len(thumbs) * 1e3
        t = time.perf_counter()
        for b in blobs:
            Image.open(io.BytesIO(b)).load()
        dec = (time.perf_counter() - t) / len(thumbs) * 1e3
        kib = sum(map(len, blobs)) / len(blobs) / 1024
        print(f"{label:<20}{enc:>10.2f}{dec:>10.2f}{kib:>9.1f}")


if __name__ == "__main__":
    main()
