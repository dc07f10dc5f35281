"""Two different shots of one scene are never copies, even when only a pixel or two at thumbnail
size tells them apart (consecutive video frames, an optical-flow pair, a burst where a small
object moved): such pairs are similar shots. Real copies of the same frames (re-encoded, halved,
cropped, slightly rotated, made black and white) stay copies. Real thumbnails (thumbs.process_file)
of pictures composed from the bundled samples, real resize + featurize + dupes, and the real
opencv-doc frames when they are installed."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLES, disc_object
from nearsort import frames
from nearsort.dupes import pixels
from nearsort.dupes.group import DupesConfig, find_duplicates
from nearsort.dupes.pixels import MAX_DIFF, MAX_LOCAL, MAX_MOTION, compare_files
from nearsort.ingest.thumbs import process_file
from nearsort.store.catalog import Catalog

# 600 x 400 background: its 256-px thumbnail is 2.34 x smaller, so 4-5 px here are ~2 px there
BACKGROUND = SAMPLES / "python3-skimage__coffee.png"


def _sensor_noise(im: Image.Image, seed: int) -> Image.Image:
    """Two frames are never pixel-identical, even where nothing moved."""
    a = np.asarray(im, np.float32) + np.random.default_rng(seed).normal(0, 2.0, (im.height, im.width, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def _frames() -> dict[str, Image.Image]:
    """A frame, two different shots of it (a small object moved by ~2 px at thumbnail size; a
    part of the scene moved by ~1.7 px) and copies of the frame."""
    bg = Image.open(BACKGROUND).convert("RGB")
    obj, mask = disc_object(SAMPLES / "opencv-doc__orange.jpg", 40)
    at = (330, 120)
    scene = bg.copy()
    scene.paste(obj, at, mask)
    frame = _sensor_noise(scene, 1)
    moved = bg.copy()
    moved.paste(obj, (at[0] + 5, at[1]), mask)
    box = (90, 180, 270, 340)  # a part of the scene (a cup, the table) moved a little
    part = scene.copy()
    part.paste(scene.crop(box), (box[0] + 4, box[1] + 2))
    w, h = frame.size
    inset = (int(w * .04), int(h * .04), int(w * .96), int(h * .96))
    avg = np.asarray(frame, np.float32).mean(-1)
    return {
        "frame": frame,
        "shot-moved": _sensor_noise(moved, 2),
        "shot-part": _sensor_noise(part, 3),
        "copy-q40": frame,
        "copy-half": frame.resize((w // 2, h // 2), Image.LANCZOS),
        "copy-crop": frame.crop(inset),
        "copy-rotated": frame.rotate(1.5, Image.BICUBIC).crop(inset),
        "copy-grey": frame.convert("L").convert("RGB"),
        "copy-grey-average": Image.fromarray(avg.astype(np.uint8)).convert("RGB"),
    }


QUALITY = {"copy-q40": 40}


@pytest.fixture(scope="module")
def thumbs_of(tmp_path_factory) -> dict[str, Path]:
    """{name: its real 256-px thumbnail file} (and the source files next to them)."""
    d = tmp_path_factory.mktemp("shot-thumbs")
    out = {}
    for name, im in _frames().items():
        src = d / f"{name}.jpg"
        im.save(src, quality=QUALITY.get(name, 92))
        r = process_file(str(src))
        assert r.error is None, r.error
        out[name] = d / f"thumb-{name}.jpg"
        out[name].write_bytes(r.jpeg)
    return out


COPIES = ["copy-q40", "copy-half", "copy-crop", "copy-rotated", "copy-grey", "copy-grey-average"]
SHOTS = ["shot-moved", "shot-part"]


def test_motion_is_measured_where_its_threshold_was():
    assert frames.MOTION_SIDE == pixels.FINE  # MAX_MOTION is in pixels of the structure check's images


@pytest.mark.parametrize("copy", COPIES)
def test_copies_of_a_frame_stay_copies(thumbs_of, copy):
    v = compare_files(thumbs_of["frame"], thumbs_of[copy])
    assert v.kind == "copy", (copy, v)


@pytest.mark.parametrize("shot", SHOTS)
def test_a_shot_that_moved_by_two_thumbnail_pixels_is_not_a_copy(thumbs_of, shot):
    v = compare_files(thumbs_of["frame"], thumbs_of[shot])
    # the same picture for the coarser checks: only the motion tells them apart
    assert v.diff <= MAX_DIFF and v.local <= MAX_LOCAL, v
    assert v.kind == "shot", v
    assert v.metrics["motion"] > MAX_MOTION
    for copy in ("copy-q40", "copy-half", "copy-grey"):  # nor is it a copy of the frame's copies
        assert compare_files(thumbs_of[copy], thumbs_of[shot]).kind == "shot", copy


def test_dupes_groups_the_copies_and_shows_the_shots_beside_them(tmp_path):
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    lib = tmp_path / "library"
    lib.mkdir()
    for name, im in _frames().items():
        im.save(lib / f"{name}.jpg", quality=QUALITY.get(name, 92))
    _frames()["shot-moved"].save(lib / "shot-moved-q50.jpg", quality=50)  # a copy of a shot: its own group
    thumbs = tmp_path / "thumbs"
    resize(lib, thumbs)
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id = s.original_id").fetchall()
    thumb_of = {os.path.basename(os.fsdecode(bytes(p))): t for p, t in rows}
    assert thumb_of["copy-q40.jpg"] == thumb_of["frame.jpg"]  # a re-encode still shares the thumbnail
    assert thumb_of["shot-moved.jpg"] != thumb_of["frame.jpg"]  # same size, phash and print: moved all the same
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    groups = [sorted(os.path.basename(m["path"]) for m in g["members"]) for g in res.groups]
    frame_group = next(g for g in groups if "frame.jpg" in g)
    assert frame_group == sorted(["frame.jpg"] + [f"{c}.jpg" for c in COPIES])
    assert ["shot-moved-q50.jpg", "shot-moved.jpg"] in groups
    for g in groups:
        assert len({n.split(".")[0].replace("-q50", "") for n in g if n.startswith("shot")}) <= 1
        assert not ({"shot-moved.jpg", "shot-part.jpg"} & set(g) and "frame.jpg" in g)
    # each shot is shown beside the frame's group as a similar shot
    shots = [s for s in res.similar if s["relation"] == "shot"]
    linked = [{os.path.basename(p) for p in s["a"] + s["b"]} for s in shots]
    for shot in ("shot-moved.jpg", "shot-part.jpg"):
        assert any(shot in names and names & set(frame_group) for names in linked), (shot, linked)


# --------------------------------------------------------------------------- real frames
def _opencv_data() -> Path | None:
    """Debian's opencv-doc examples (``apt-get install opencv-doc``, or an extracted package
    named by NEARSORT_OPENCV_DATA)."""
    for d in (os.environ.get("NEARSORT_OPENCV_DATA"), "/usr/share/doc/opencv-doc/examples/data"):
        if d and (Path(d) / "rubberwhale2.png").is_file() and (Path(d) / "basketball2.png").is_file():
            return Path(d)
    return None


@pytest.mark.parametrize("scene", ["rubberwhale", "basketball"])  # optical-flow pair, video frames
def test_real_consecutive_frames_are_shots_and_their_copies_copies(tmp_path, scene):
    data = _opencv_data()
    if data is None:
        pytest.skip("opencv-doc's examples/data is not installed (set NEARSORT_OPENCV_DATA to it)")
    one = Image.open(data / f"{scene}1.png").convert("RGB")
    files = {"1": data / f"{scene}1.png", "2": data / f"{scene}2.png"}
    one.save(tmp_path / "1-q40.jpg", quality=40)
    one.resize((one.width // 2, one.height // 2), Image.LANCZOS).save(tmp_path / "1-half.jpg", quality=85)
    files.update({"1-q40": tmp_path / "1-q40.jpg", "1-half": tmp_path / "1-half.jpg"})
    th = {}
    for k, p in files.items():
        th[k] = tmp_path / f"thumb-{k}.jpg"
        th[k].write_bytes(process_file(str(p)).jpeg)
    assert compare_files(th["1"], th["2"]).kind == "shot"
    for copy in ("1-q40", "1-half"):
        assert compare_files(th["1"], th[copy]).kind == "copy", copy
        assert compare_files(th[copy], th["2"]).kind == "shot", copy
