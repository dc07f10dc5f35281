"""Two frames of a burst are two pictures, even where their pixels are the same (a burst of a still
scene): the camera's EXIF says when each was taken (DateTimeOriginal, SubSecTimeOriginal). Copies
keep their original's moment (a re-encode, a copy that lost only the sub-second), so they stay
copies. Real JPEG files with real EXIF, through resize, featurize and dupes."""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

from conftest import SAMPLES, camera_exif
from nearsort.dupes.group import DupesConfig, find_duplicates
from nearsort.ingest.decode import exposure_moment, other_moments
from nearsort.store.catalog import Catalog


def _library(d: Path) -> None:
    d.mkdir()
    im = Image.open(SAMPLES / "python3-sklearn__china.jpg").convert("RGB")
    # one still scene, shot twice a tenth of a second apart: the same pixels, two exposures
    im.save(d / "burst-1.jpg", quality=92, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", "120"))
    im.save(d / "burst-2.jpg", quality=92, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", "220"))
    # copies of the first frame
    im.save(d / "burst-1-q75.jpg", quality=75, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", "120"))
    im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(
        d / "burst-1-small.jpg", quality=90, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", None))


def test_moments_of_one_camera():
    tags = {"Make": "Canon", "Model": "EOS R6", "DateTimeOriginal": "2024:05:01 10:00:00"}
    cam = ("Canon", "EOS R6")

    def at(**kw):
        return [(*cam, exposure_moment({**tags, **kw}))]

    assert exposure_moment({**tags, "SubSecTimeOriginal": "120"}) == exposure_moment({**tags, "SubSecTimeOriginal": "12"})
    assert other_moments(at(SubSecTimeOriginal="12"), at(SubSecTimeOriginal="22"))  # two frames of one second
    assert not other_moments(at(SubSecTimeOriginal="12"), at())  # a copy that lost only the sub-second
    assert other_moments(at(), at(DateTimeOriginal="2024:05:01 10:00:01"))
    assert not other_moments(at(SubSecTimeOriginal="12"), [(*cam, None)])  # no EXIF moment: nothing to say
    assert exposure_moment({"DateTimeOriginal": "2024:05:01 10:00:00"}) is None  # no camera
    assert not other_moments(at(), [("Nikon", "Z6", exposure_moment({**tags, "Make": "Nikon",
                                                                      "DateTimeOriginal": "2024:05:01 11:00:00"}))])
    # one of the second picture's originals may be the same exposure
    assert not other_moments(at(SubSecTimeOriginal="12"), at(SubSecTimeOriginal="22") + at(SubSecTimeOriginal="12"))


def test_a_burst_of_a_still_scene_is_two_pictures_and_its_copies_stay_copies(tmp_path):
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    _library(tmp_path / "library")
    thumbs = tmp_path / "thumbs"
    resize(tmp_path / "library", thumbs)
    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id = s.original_id").fetchall()
    thumb = {os.path.basename(os.fsdecode(bytes(p))): t for p, t in rows}
    assert thumb["burst-1.jpg"] != thumb["burst-2.jpg"]  # the same pixels, two names
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    groups = [sorted(os.path.basename(m["path"]) for m in g["members"]) for g in res.groups]
    assert groups == [["burst-1-q75.jpg", "burst-1-small.jpg", "burst-1.jpg"]], groups
    assert any("burst-2.jpg" in {os.path.basename(p) for p in s["a"] + s["b"]}
               for s in res.similar if s["relation"] == "shot"), res.similar
    assert res.summary["moment_pairs"] >= 1
