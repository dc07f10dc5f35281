#!/usr/bin/env python3
"""The one-pixel-scale check (frames.native_crop_change) on the cases it must tell apart.

    python bench/native.py video /tmp/vidbench          # crop92 copies vs their own and the other frames of their clip
    python bench/native.py photos ../shared/bench/originals [--qualities 75,80,85,95,png]

``video``: every crop92 copy of the video bench (bench/make_video_bench.py) against each frame of its
clip: its own frame must stay <= frames.RECODE_SHARE, the others (a different frame) above it, or
None (not found as one piece: a panning camera; the motion checks decide those). ``photos``: a crop
of each photo (60-95 % each way, at a random offset off the 8-px grid) of the photo saved at quality
92, itself saved at each quality or as PNG: a copy, so it must stay <= RECODE_SHARE where the check
applies (frames.fine_encoding: "fine"). Prints the worst values and the CPU per check.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import sys
import time
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from nearsort import frames as F  # noqa: E402


def _load(path) -> Image.Image:
    im = Image.open(path)
    im.load()
    return im


def video(bench: Path) -> None:
    rows = list(csv.DictReader(open(bench / "ground_truth.csv")))
    own, other, none = [], [], 0
    for scene in sorted({r["scene"] for r in rows if r["transform"] == "crop92"}):
        rs = [r for r in rows if r["scene"] == scene]
        frames = {r["group_id"]: r for r in rs if r["transform"].startswith("frame")}
        for c in (r for r in rs if r["transform"] == "crop92"):
            crop = _load(bench / c["file"])
            for g, f in frames.items():
                s = F.native_crop_change(_load(bench / f["file"]), crop)
                if s is None:
                    none += g != c["group_id"]
                    continue
                (own if g == c["group_id"] else other).append((s, scene, c["transform"], f["transform"]))
    print(f"own frame ({len(own)}): max {max(own)[0]:.4f}  (copies: must be <= {F.RECODE_SHARE})")
    print(f"other frames ({len(other)} measured, {none} not found as one piece): min {min(other)[0]:.4f}"
          f"  {min(other)[1:]}; above {F.RECODE_SHARE}: {sum(s > F.RECODE_SHARE for s, *_ in other)}")


def photos(src: Path, qualities: list) -> None:
    rnd = random.Random(1)
    worst: dict = {}
    cpu, n = 0.0, 0
    for p in sorted(src.iterdir()):
        try:
            im = Image.open(p).convert("RGB")
        except Exception:  # noqa: BLE001 - not an image (SOURCES.tsv)
            continue
        while im.width * im.height > F.NATIVE_MAX_PIXELS:
            im = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=92)
        orig = _load(io.BytesIO(buf.getvalue()))
        for q in qualities:
            w, h = int(im.width * rnd.uniform(0.6, 0.95)), int(im.height * rnd.uniform(0.6, 0.95))
            x, y = rnd.randrange(0, im.width - w + 1), rnd.randrange(0, im.height - h + 1)
            out = io.BytesIO()
            orig.crop((x, y, x + w, y + h)).save(out, "PNG" if q == "png" else "JPEG", **({} if q == "png" else {"quality": int(q)}))
            crop = _load(io.BytesIO(out.getvalue()))
            t = time.process_time()
            s = F.native_crop_change(orig, crop)
            cpu += time.process_time() - t
            n += 1
            worst.setdefault(q, []).append((-1.0 if s is None else s, F.fine_encoding(crop), p.name))
    for q, v in worst.items():
        v.sort(reverse=True)
        print(f"quality {q}: {'fine' if v[0][1] else 'coarse (not checked)'}; worst {v[0][0]:.4f} ({v[0][2]}), "
              f"not found {sum(s < 0 for s, *_ in v)} of {len(v)}")
    print(f"CPU per check {cpu / max(n, 1) * 1e3:.1f} ms (pictures up to {F.NATIVE_MAX_PIXELS / 1e6:.1f} MP)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("video", "photos"))
    ap.add_argument("path", type=Path)
    ap.add_argument("--qualities", default="75,80,85,95,png")
    a = ap.parse_args(argv)
    if a.what == "video":
        video(a.path)
    else:
        photos(a.path, [q if q == "png" else int(q) for q in a.qualities.split(",")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
