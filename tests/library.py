"""The shared test library of the dupes, quality and report tests: real sample photos and variants made
with Pillow (an exact copy, a resize, a re-encode, a crop, a letterbox, a mirror image, a dark, a blurry
and a broken file, names that try HTML injection), resized and featurized once per session."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples" / "photos"
ORIGINAL = "npm-exif__sony-alpha-6000.jpg"     # 1500x1000, camera EXIF
DISTINCT = ["darknet__dog.jpg", "darknet__eagle.jpg", "python3-skimage__chelsea.png",
            "python3-skimage__coffee.png", "python3-sklearn__flower.jpg", "darknet__giraffe.jpg"]
EVIL_IMG = "<img src=x onerror=alert(1)>.jpg"
EVIL_SCRIPT = "<script>alert(1)</script>.jpg"   # contains '/': a folder '<script>alert(1)<' + 'script>.jpg'
EVIL_PWN = '<img src=x onerror="document.body.dataset.pwned=1">.jpg'  # the dark photo's name


def _save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def _touch(path: Path, t: float) -> None:
    os.utime(path, (t, t))


def make_library(src: Path, with_near: bool = True) -> dict[str, Path]:
    """The test library; returns {role: path}."""
    src.mkdir(parents=True, exist_ok=True)
    T0 = 1_500_000_000
    orig_bytes = (SAMPLES / ORIGINAL).read_bytes()
    im = Image.open(io.BytesIO(orig_bytes))
    exif = im.info.get("exif")
    p: dict[str, Path] = {}
    p["original"] = src / "2019" / "trip" / "DSC00001.jpg"
    p["original"].parent.mkdir(parents=True)
    p["original"].write_bytes(orig_bytes)
    _touch(p["original"], T0)
    p["exact"] = src / "backup" / "DSC00001 copy.jpg"
    p["exact"].parent.mkdir(parents=True)
    p["exact"].write_bytes(orig_bytes)
    _touch(p["exact"], T0 + 86400)
    p["resized"] = _save(im.resize((750, 500), Image.LANCZOS), src / "web" / "dsc1_small.jpg", quality=85, exif=exif)
    p["reencoded"] = _save(im.convert("RGB"), src / "web" / "dsc1_q40.jpg", quality=40)
    if with_near:
        w, h = im.size
        cw, ch = int(w * 0.85), int(h * 0.85)
        crop = im.crop(((w - cw) // 2, (h - ch) // 2, (w + cw) // 2, (h + ch) // 2))
        p["crop"] = _save(crop, src / "edits" / "dsc1_crop.jpg", quality=90)
        box = Image.new("RGB", (w, w))
        box.paste(im, (0, (w - h) // 2))
        p["letterbox"] = _save(box, src / "edits" / "dsc1_square.png")
    p["flip"] = _save(ImageOps.mirror(im), src / "edits" / "dsc1_mirror.jpg", quality=92, exif=exif)
    for name in DISTINCT:
        dst = src / "misc" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SAMPLES / name, dst)
        _touch(dst, T0 + 3600)
        p[name] = dst
    p["evil_copy"] = src / "misc" / EVIL_IMG      # byte copy of the eagle
    shutil.copyfile(SAMPLES / "darknet__eagle.jpg", p["evil_copy"])
    _touch(p["evil_copy"], T0 + 5 * 86400)
    rocket = Image.open(SAMPLES / "python3-skimage__rocket.jpg").convert("RGB")
    p["dark"] = _save(Image.fromarray((np.asarray(rocket) * 0.08).astype(np.uint8)), src / "night" / EVIL_PWN,
                      quality=90)
    china = Image.open(SAMPLES / "python3-sklearn__china.jpg").convert("RGB")
    p["blurry"] = _save(china.filter(ImageFilter.GaussianBlur(7)), src / "misc" / "shaky.jpg", quality=90)
    p["broken"] = src / "misc" / "truncated.jpg"
    p["broken"].write_bytes((SAMPLES / "darknet__giraffe.jpg").read_bytes()[:3000])
    p["evil_broken"] = src / "evil" / EVIL_SCRIPT
    p["evil_broken"].parent.mkdir(parents=True)
    p["evil_broken"].write_bytes(b"this is not a photo")
    return p


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# The review tests' library: four groups of copies of real sample photos (three exact pairs, one
# with a half-size copy too) beside three photos without a copy; a name that tries HTML injection.
REVIEW_GROUPS = {  # sample -> the copies' names (folder 'copies/')
    "darknet__giraffe.jpg": ["giraffe copy " + EVIL_IMG],
    "darknet__dog.jpg": ["dog copy.jpg", "copy-of-darknet__dog-half-size.jpg"],
    "darknet__eagle.jpg": ["eagle copy.jpg"],
    "opencv-doc__fruits.jpg": ["fruits copy.jpg"],
}
REVIEW_SINGLES = ["darknet__horses.jpg", "python3-skimage__coffee.png", "python3-sklearn__china.jpg"]


def make_review_library(src: Path) -> dict[str, list[Path]]:
    """{sample: [its original, its copies...]} under ``src`` (originals in 'photos/', copies in 'copies/')."""
    out: dict[str, list[Path]] = {}
    (src / "photos").mkdir(parents=True, exist_ok=True)
    (src / "copies").mkdir(parents=True, exist_ok=True)
    for name in list(REVIEW_GROUPS) + REVIEW_SINGLES:
        orig = src / "photos" / name
        shutil.copyfile(SAMPLES / name, orig)
        _touch(orig, 1_500_000_000)
        out[name] = [orig]
        for k, copy in enumerate(REVIEW_GROUPS.get(name, [])):
            dst = src / "copies" / copy
            shutil.copyfile(SAMPLES / copy if (SAMPLES / copy).exists() else SAMPLES / name, dst)
            _touch(dst, 1_500_000_000 + 86400 * (k + 1))   # newer: the original is the suggested keeper
            out[name].append(dst)
    return out
