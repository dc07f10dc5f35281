#!/usr/bin/env python3
"""Hard cases for duplicate finding: look-alike *distinct* pictures, labelled like make_nd_bench.py.

    python bench/make_hard_bench.py tiles  ../shared/bench/originals /tmp/tilesbench
    python bench/make_hard_bench.py shots  ../shared/bench/originals /tmp/shotsbench
    python bench/make_hard_bench.py crops  ../shared/bench/originals /tmp/crops20k --n 20000
    python bench/make_hard_bench.py realshots ../shared/bench/originals /tmp/realshots --data DATA

tiles
    Cuts every original into non-overlapping 480x360 tiles (tiles of one photo are different
    pictures that look alike: walls, skies, bokeh, paper, dark corners), then runs
    ../shared/bench/make_nd_bench.py on the tiles (``--k-min 1 --k-max 3 --distractor-frac 0.7``):
    a few tiles get labelled copies/variants, most are hard negatives for each other.
shots
    Different shots of one scene, each its own group (never a copy of another): a burst of an
    object moving across a photo background, the same scene with an object added, moved or
    removed, a simulated stereo pair (background and foreground shifted by different amounts:
    parallax), a flat-field sequence (uniform frames of one size, slightly different tone), dark
    "pocket shots" (near-black frames with faint different content), plus labelled true copies
    (re-encode, downscale, grey) of some of the shots and 160 unrelated pictures.
    ground_truth.csv has make_nd_bench.py's columns plus ``scene``: two files with one scene and
    different group_id are different shots of one scene; they must never share a copy group.
realshots
    Real different shots from Debian's opencv-doc examples (a stereo pair, consecutive video and
    optical-flow frames, viewpoint and exposure pairs, a 13-pose calibration sequence and its
    stereo partners; see REAL_SETS), some with labelled true copies, among 160 unrelated pictures.
crops
    N random 30-90 % crops (side length, random position) of the originals, 400 px long side,
    JPEG q90; ground_truth.csv names the source photo of each. Crops of one photo may overlap (they
    may or may not be grouped); a group that holds crops of two different photos is *mixed*: wrong.

Deterministic for a seed. Only Pillow and numpy.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ingest import SHARED  # noqa: E402  (bench/ingest.py: where ../shared/bench is)

ND_BENCH = SHARED / "make_nd_bench.py"
IMG_EXT = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
COLS = ["file", "group_id", "transform", "relation", "params", "source", "width", "height", "has_exif", "sha1",
        "scene"]


def originals(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix.lower() in IMG_EXT)


def load_rgb(p: Path, long_side: int | None = None) -> Image.Image:
    with Image.open(p) as im:
        if long_side:
            im.draft("RGB", (long_side, long_side))
        im = ImageOps.exif_transpose(im).convert("RGB")
    if long_side and max(im.size) > long_side:
        im.thumbnail((long_side, long_side), Image.BICUBIC)
    return im


def jpeg(im: Image.Image, q: int = 90) -> bytes:
    b = io.BytesIO()
    im.save(b, "JPEG", quality=q)
    return b.getvalue()


class Writer:
    """Random non-revealing names in nested folders, and the ground-truth rows."""

    def __init__(self, out: Path, rng: random.Random):
        self.out, self.rng, self.rows = out, rng, []
        out.mkdir(parents=True, exist_ok=True)

    def emit(self, data: bytes, ext: str, group: str, relation: str, transform: str, source: str,
             size: tuple[int, int], scene: str = "") -> None:
        folder = "/".join(f"{self.rng.getrandbits(16):04x}"[:2] for _ in range(2))
        rel = f"{folder}/{self.rng.getrandbits(48):012x}{ext}"
        (self.out / folder).mkdir(parents=True, exist_ok=True)
        (self.out / rel).write_bytes(data)
        self.rows.append(dict(file=rel, group_id=group, transform=transform, relation=relation, params="",
                              source=source, width=size[0], height=size[1], has_exif=0,
                              sha1=hashlib.sha1(data).hexdigest(), scene=scene))

    def close(self) -> None:
        with open(self.out / "ground_truth.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, COLS)
            w.writeheader()
            w.writerows(self.rows)
        print(f"{self.out}: {len(self.rows)} files, {len({r['group_id'] for r in self.rows})} groups")


# ----------------------------------------------------------------------------- tiles
def add_unrelated(w, photos, gid: int, n: int = 160) -> int:
    """``n`` distractors: the top-left and bottom-right quarter of each of ``photos`` in turn
    (pictures unrelated to a bench's scenes), groups u{gid+1:04d}...; returns the last gid."""
    made = 0
    for p in photos:
        im = load_rgb(p, 1600)
        for box in ((0, 0, im.width // 2, im.height // 2), (im.width // 2, im.height // 2, im.width, im.height)):
            if made >= n:
                return gid
            t = im.crop(box)
            gid += 1
            w.emit(jpeg(t, 90), ".jpg", f"u{gid:04d}", "distractor", "tile", p.name, t.size, "")
            made += 1
    return gid


def make_tiles(src: Path, out: Path, seed: int, tw: int = 480, th: int = 360) -> None:
    tiles = out.with_name(out.name + "-tiles")
    tiles.mkdir(parents=True, exist_ok=True)
    n = 0
    for p in originals(src):
        try:
            im = load_rgb(p)
        except Exception as e:  # noqa: BLE001
            print(f"skip {p.name}: {e}", file=sys.stderr)
            continue
        for y in range(0, im.height - th + 1, th):
            for x in range(0, im.width - tw + 1, tw):
                im.crop((x, y, x + tw, y + th)).save(tiles / f"{p.stem}__{y // th:02d}_{x // tw:02d}.jpg",
                                                     quality=92)
                n += 1
    print(f"{tiles}: {n} tiles")
    subprocess.run([sys.executable, str(ND_BENCH), str(tiles), str(out), "--seed", str(seed), "--k-min", "1",
                    "--k-max", "3", "--distractor-frac", "0.7", "--force"], check=True)


# ----------------------------------------------------------------------------- shots
def _blob(rng: random.Random, donor: Image.Image, r: int) -> tuple[Image.Image, Image.Image]:
    """A round object cut from a donor photo, and its soft mask."""
    x = rng.randrange(0, donor.width - 2 * r)
    y = rng.randrange(0, donor.height - 2 * r)
    obj = donor.crop((x, y, x + 2 * r, y + 2 * r))
    mask = Image.new("L", obj.size, 0)
    ImageDraw.Draw(mask).ellipse((2, 2, 2 * r - 2, 2 * r - 2), fill=255)
    return obj, mask.filter(ImageFilter.GaussianBlur(2))


def _paste(bg: Image.Image, obj, mask, xy) -> Image.Image:
    im = bg.copy()
    im.paste(obj, (int(xy[0]), int(xy[1])), mask)
    return im


def make_shots(src: Path, out: Path, seed: int) -> None:
    rng = random.Random(seed)
    w = Writer(out, rng)
    paths = originals(src)
    rng.shuffle(paths)
    scenes, unrelated = paths[:40], paths[40:]
    W, H = 640, 480
    gid = 0

    def shot(im: Image.Image, scene: str, kind: str, copies: bool) -> None:
        nonlocal gid
        gid += 1
        g = f"s{gid:04d}"
        w.emit(jpeg(im, 92), ".jpg", g, "original", kind, scene, im.size, scene)
        if copies:  # true copies of this shot: these pairs *are* duplicates
            t = rng.choice(["jpeg_q40", "downscale_50", "grey", "png"])
            if t == "jpeg_q40":
                w.emit(jpeg(im, 40), ".jpg", g, "near_duplicate", t, scene, im.size, scene)
            elif t == "downscale_50":
                s = im.resize((im.width // 2, im.height // 2), Image.BICUBIC)
                w.emit(jpeg(s, 85), ".jpg", g, "near_duplicate", t, scene, s.size, scene)
            elif t == "grey":
                w.emit(jpeg(im.convert("L").convert("RGB"), 88), ".jpg", g, "near_duplicate", t, scene, im.size,
                       scene)
            else:
                b = io.BytesIO()
                im.save(b, "PNG")
                w.emit(b.getvalue(), ".png", g, "near_duplicate", t, scene, im.size, scene)

    for si, p in enumerate(scenes):
        scene = f"scene{si:03d}"
        big = load_rgb(p, 1600)
        bg = ImageOps.fit(big, (W, H), Image.BICUBIC)
        donor = load_rgb(scenes[(si + 7) % len(scenes)], 800)
        kind = si % 4
        if kind == 0:  # burst: an object moving across the frame, 5 frames
            obj, mask = _blob(rng, donor, rng.randint(45, 70))
            x0, y0 = rng.randint(20, 120), rng.randint(60, 300)
            dx, dy = rng.choice([-1, 1]) * rng.randint(35, 60), rng.randint(-12, 12)
            if dx < 0:
                x0 = W - obj.width - x0
            for f in range(5):
                shot(_paste(bg, obj, mask, (x0 + f * dx, y0 + f * dy)), scene, "burst", f == 2)
        elif kind == 1:  # object added / moved / removed
            obj, mask = _blob(rng, donor, rng.randint(50, 80))
            a = (rng.randint(20, 200), rng.randint(20, 260))
            b = (rng.randint(360, 480), rng.randint(20, 260))
            shot(bg, scene, "empty", True)
            shot(_paste(bg, obj, mask, a), scene, "added", False)
            shot(_paste(bg, obj, mask, b), scene, "moved", True)
        elif kind == 2:  # stereo-like pair: parallax between foreground and background
            obj, mask = _blob(rng, donor, rng.randint(55, 85))
            big_bg = ImageOps.fit(big, (W + 80, H), Image.BICUBIC)
            ox, oy = rng.randint(150, 350), rng.randint(80, 250)
            for k, (sb, sf) in enumerate(((0, 0), (12, 48))):  # background shifts 12 px, object 48 px
                view = big_bg.crop((40 + sb, 0, 40 + sb + W, H))
                shot(_paste(view, obj, mask, (ox + sf, oy)), scene, f"stereo{k}", k == 0)
        else:  # same framing, a person walks through: two frames with different objects
            o1, m1 = _blob(rng, donor, rng.randint(50, 70))
            o2, m2 = _blob(rng, load_rgb(scenes[(si + 13) % len(scenes)], 800), rng.randint(50, 70))
            pos = (rng.randint(100, 450), rng.randint(60, 300))
            shot(_paste(bg, o1, m1, pos), scene, "swap_a", False)
            shot(_paste(bg, o2, m2, pos), scene, "swap_b", False)
    # flat fields: uniform frames of one size, slightly different tones (distinct pictures)
    for k, tone in enumerate([(0, 0, 0), (255, 255, 255), (128, 128, 128), (140, 140, 140), (120, 130, 200),
                              (200, 60, 40), (30, 30, 34)]):
        shot(Image.new("RGB", (300, 200), tone), "flat", f"flat{k}", False)
    # gradients of one size (skies): distinct pictures with near-identical hashes
    for k in range(6):
        a = np.linspace(0, 1, 240)[:, None, None]
        top = np.array([60 + 10 * k, 110 + 8 * k, 200 - 5 * k])
        bot = np.array([190 - 6 * k, 210 - 4 * k, 235 - 3 * k])
        arr = (top * (1 - a) + bot * a) * np.ones((1, 320, 1))
        shot(Image.fromarray(arr.astype(np.uint8)), "sky", f"sky{k}", k == 0)
    # dark pocket shots: near-black frames with faint, different content
    for k in range(6):
        p = unrelated[k]
        im = ImageOps.fit(load_rgb(p, 800), (400, 300), Image.BICUBIC)
        dark = Image.eval(im, lambda v: v // 12)
        shot(dark, "pocket", f"pocket{k}", k == 0)
    add_unrelated(w, unrelated, gid)  # 160 unrelated pictures: tiles of other originals
    w.close()


# ----------------------------------------------------------------------------- real shots
REAL_SETS = {  # real different shots of one scene, in Debian's opencv-doc (examples/data)
    "aero": ["aero1.jpg", "aero3.jpg"],                       # viewpoint change
    "aloe": ["aloeL.jpg", "aloeR.jpg"],                       # stereo pair
    "basketball": ["basketball1.png", "basketball2.png"],     # consecutive video frames
    "graf": ["graf1.png", "graf3.png"],                       # viewpoint change
    "leuven": ["leuvenA.jpg", "leuvenB.jpg"],                 # exposure change
    "rubberwhale": ["rubberwhale1.png", "rubberwhale2.png"],  # optical-flow frame pair
    "calib-left": [f"left{i:02d}.jpg" for i in (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14)],  # calibration board poses
    "calib-stereo": ["left01.jpg", "right01.jpg", "left02.jpg", "right02.jpg", "left03.jpg", "right03.jpg"],
}


def make_realshots(data: Path, unrelated_src: Path, out: Path, seed: int) -> None:
    """Real different shots (REAL_SETS, from opencv-doc's examples/data: ``apt-get download
    opencv-doc && dpkg-deb -x opencv-doc_*.deb x``, then DATA = x/usr/share/doc/opencv-doc/examples/data)
    + labelled true copies of some (re-encode, half size, grey) + 160 unrelated pictures."""
    rng = random.Random(seed)
    w = Writer(out, rng)
    done: dict[str, str] = {}
    gid = 0
    for scene, files in REAL_SETS.items():
        for k, name in enumerate(files):
            if name in done:  # left01..03 are in two sets: one picture, one group
                continue
            im = load_rgb(data / name)
            gid += 1
            g = f"r{gid:04d}"
            done[name] = g
            w.emit((data / name).read_bytes(), (data / name).suffix, g, "original", name, scene, im.size, scene)
            if k == 0 or rng.random() < 0.3:
                t = rng.choice(["jpeg_q40", "downscale_50", "grey"])
                c = im.resize((im.width // 2, im.height // 2), Image.BICUBIC) if t == "downscale_50" else \
                    im.convert("L").convert("RGB") if t == "grey" else im
                w.emit(jpeg(c, 40 if t == "jpeg_q40" else 88), ".jpg", g, "near_duplicate", t, scene, c.size, scene)
    add_unrelated(w, originals(unrelated_src), gid)
    w.close()


# ----------------------------------------------------------------------------- crops
def make_crops(src: Path, out: Path, seed: int, n: int) -> None:
    rng = random.Random(seed)
    w = Writer(out, rng)
    ims = []
    for p in originals(src):
        try:
            ims.append((p.name, load_rgb(p, 1400)))
        except Exception as e:  # noqa: BLE001
            print(f"skip {p.name}: {e}", file=sys.stderr)
    for i in range(n):
        name, im = ims[rng.randrange(len(ims))]
        fw, fh = rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9)
        cw, ch = max(16, int(im.width * fw)), max(16, int(im.height * fh))
        x, y = rng.randrange(0, im.width - cw + 1), rng.randrange(0, im.height - ch + 1)
        c = im.crop((x, y, x + cw, y + ch))
        c.thumbnail((400, 400), Image.BICUBIC)
        w.emit(jpeg(c, 90), ".jpg", f"c{i:06d}", "crop", f"{x},{y},{cw},{ch}", name, c.size)
        if (i + 1) % 5000 == 0:
            print(f"  {i + 1} crops", file=sys.stderr)
    w.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["tiles", "shots", "realshots", "crops"])
    ap.add_argument("src", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=20000, help="crops: how many")
    ap.add_argument("--data", type=Path, help="realshots: opencv-doc's examples/data folder")
    a = ap.parse_args(argv)
    if a.out.exists() and any(a.out.iterdir()):
        ap.error(f"{a.out} exists and is not empty")
    if a.kind == "tiles":
        make_tiles(a.src, a.out, a.seed)
    elif a.kind == "shots":
        make_shots(a.src, a.out, a.seed)
    elif a.kind == "realshots":
        if not a.data:
            ap.error("realshots needs --data (opencv-doc's examples/data folder)")
        make_realshots(a.data, a.src, a.out, a.seed)
    else:
        make_crops(a.src, a.out, a.seed, a.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
