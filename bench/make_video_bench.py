#!/usr/bin/env python3
"""Consecutive video frames (different pictures) and true copies of some, labelled like make_nd_bench.py.

    apt-get download opencv-doc && dpkg-deb -x opencv-doc_*.deb x      # Debian's opencv-doc package
    python bench/make_video_bench.py ../shared/bench/originals /tmp/vidbench \\
        --data x/usr/share/doc/opencv-doc/examples/data
    python bench/dupes.py /tmp/vidbench --motion

The videos are the samples of Debian's ``opencv-doc`` package (examples/data): ``vtest.avi``
(768x576, a fixed camera on a street, people walking), ``tree.avi`` (320x240, a camera panning
across a tree) and ``Megamind.avi`` (720x528, an animated film: a whole subject drifting, slow
zooms). They are decoded with OpenCV (``opencv-python-headless``, in the ``bench`` extra).

For every base frame B of SETS, frames B, B+1, B+2, B+5 and B+10 are written as JPEG q92, each its
own group: two different frames are **never** a copy pair, even one frame apart (only frames whose
decoded pixels are identical are one picture, and share a group). Frames B and B+5 also get
labelled true copies: a re-encode at q40, a half-size copy, a 92 % centre crop and a grey copy.
160 unrelated pictures (quarter tiles of SRC's photos) are mixed in as distractors.
``ground_truth.csv`` has make_hard_bench.py's columns: ``scene`` is the video and base frame, so
``bench/dupes.py`` counts the different frames of one scene put in one group ("different shots
paired": must be 0).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_hard_bench import Writer, add_unrelated, jpeg, originals  # noqa: E402

SETS = {"vtest.avi": [40, 120, 200, 300, 400, 500, 600, 700],
        "tree.avi": [10, 25, 40, 55],
        "Megamind.avi": [30, 90, 150, 210, 240]}
OFFSETS = (0, 1, 2, 5, 10)
COPIED = (0, 5)  # offsets whose frames get labelled true copies


def read_frames(video: Path, wanted: set[int]) -> dict[int, Image.Image]:
    """The frames of ``video`` whose index is in ``wanted`` (decoded in order: exact indices)."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"{video}: OpenCV cannot open it (is opencv-python-headless installed?)")
    out, i = {}, 0
    try:
        while i <= max(wanted):
            ok, f = cap.read()
            if not ok:
                break
            if i in wanted:
                out[i] = Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
            i += 1
    finally:
        cap.release()
    missing = sorted(wanted - set(out))
    if missing:
        raise SystemExit(f"{video}: has only {i} frames (frames {missing[:5]} asked for)")
    return out


def make(data: Path, unrelated_src: Path, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    w = Writer(out, rng)
    gid = 0
    for video, bases in SETS.items():
        frames = read_frames(data / video, {b + k for b in bases for k in OFFSETS})
        stem = video.rsplit(".", 1)[0]
        for b in bases:
            scene = f"{stem}{b}"
            groups: dict[bytes, str] = {}  # identical decoded pixels: one picture, one group
            for off in OFFSETS:
                im = frames[b + off]
                key = np.asarray(im).tobytes()
                if key not in groups:
                    gid += 1
                    groups[key] = f"v{gid:04d}"
                g = groups[key]
                w.emit(jpeg(im, 92), ".jpg", g, "original", f"frame+{off}", scene, im.size, scene)
                if off not in COPIED:
                    continue
                w.emit(jpeg(im, 40), ".jpg", g, "near_duplicate", "jpeg_q40", scene, im.size, scene)
                s = im.resize((im.width // 2, im.height // 2), Image.LANCZOS)
                w.emit(jpeg(s, 85), ".jpg", g, "near_duplicate", "downscale_50", scene, s.size, scene)
                c = im.crop((int(im.width * .04), int(im.height * .04), int(im.width * .96), int(im.height * .96)))
                w.emit(jpeg(c, 88), ".jpg", g, "near_duplicate", "crop92", scene, c.size, scene)
                grey = im.convert("L").convert("RGB")
                w.emit(jpeg(grey, 88), ".jpg", g, "near_duplicate", "grey", scene, im.size, scene)
    add_unrelated(w, originals(unrelated_src), gid)
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="photos for the unrelated distractors (../shared/bench/originals)")
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="opencv-doc's examples/data folder (holds the .avi files)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        ap.error(f"{a.out} exists and is not empty")
    missing = [v for v in SETS if not (a.data / v).is_file()]
    if missing:
        ap.error(f"{a.data}: {', '.join(missing)} not found (opencv-doc's examples/data: see the docstring)")
    make(a.data, a.src, a.out, a.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
