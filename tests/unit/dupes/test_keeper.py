"""A keeper that understands shots, on real files: a RAW and its camera JPEG are one shot (never
offered for deletion against each other), an original (HEIC, RAW, camera JPEG) beats a larger
converted or re-encoded copy, an edited version of the same capture is a similar shot."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageEnhance

import nearsort
from conftest import SAMPLES

ORIGINAL = SAMPLES / "npm-exif__sony-alpha-6000.jpg"   # 1500x1000, Sony EXIF


def _dupes(src: Path, thumbs: Path):
    nearsort.resize(src, thumbs, workers=1)
    return nearsort.find_duplicates(thumbs)


def _members(res) -> dict[str, dict]:
    return {Path(m["path"]).name: m for g in res.groups for m in g["members"]}


@pytest.fixture
def raw_shot(shared_bench, tmp_path):
    """The bench's CR2 and the camera JPEG of the same shot (its embedded JPEG, with the camera's
    EXIF), named alike as a camera names them."""
    rawpy = pytest.importorskip("rawpy")
    cr2 = shared_bench / "special" / "rawtran-doc__IMG_5952.CR2"
    if not cr2.is_file():
        pytest.skip("the bench's CR2 is not present")
    src = tmp_path / "src" / "DCIM"
    src.mkdir(parents=True)
    shutil.copyfile(cr2, src / "IMG_5952.CR2")
    with rawpy.imread(str(cr2)) as raw:
        (src / "IMG_5952.JPG").write_bytes(raw.extract_thumb().data)
    return tmp_path, src


def test_a_raw_and_its_camera_jpeg_are_one_shot_never_offered_for_deletion(raw_shot):
    tmp, src = raw_shot
    res = _dupes(tmp / "src", tmp / "thumbs")
    assert res.groups == []                      # nothing to delete
    assert len(res.shots) == 1 and res.summary["shot_groups"] == 1
    pair = {Path(m["path"]).name: m for m in res.shots[0]["members"]}
    assert pair["IMG_5952.CR2"]["keeper"] and pair["IMG_5952.JPG"]["relation"] == "pair"
    assert res.shots[0]["reclaimable_bytes"] == 0
    page = nearsort.group_page(tmp / "thumbs", kind="shot")
    assert page.total == 1 and len(page.groups[0]["members"]) == 2
    assert nearsort.pending_summary(tmp / "thumbs")["files"] == 0


def test_a_copy_of_the_shot_goes_its_raw_and_camera_jpeg_stay(raw_shot):
    tmp, src = raw_shot
    cam = Image.open(src / "IMG_5952.JPG")
    backup = tmp / "src" / "backup"
    backup.mkdir()
    cam.save(backup / "holiday.jpg", quality=97)   # a re-encode, larger than the camera JPEG, EXIF gone
    assert (backup / "holiday.jpg").stat().st_size > (src / "IMG_5952.JPG").stat().st_size
    res = _dupes(tmp / "src", tmp / "thumbs")
    assert len(res.groups) == 1
    m = _members(res)
    assert m["IMG_5952.CR2"]["keeper"] and m["IMG_5952.JPG"]["relation"] == "pair"
    assert not m["holiday.jpg"]["keeper"] and m["holiday.jpg"]["relation"] in ("perceptual", "near")
    assert res.groups[0]["reclaimable_bytes"] == m["holiday.jpg"]["bytes"]
    q = nearsort.quarantine(tmp / "thumbs", tmp / "quarantine", found=res, dry_run=True).quarantine
    assert [Path(mv["src"]).name for mv in q.moves] == ["holiday.jpg"]


@pytest.mark.parametrize("keep_exif", [False, True], ids=["exif-stripped", "exif-kept"])
def test_a_heic_beats_its_larger_jpeg_conversion(tmp_path, keep_exif):
    pytest.importorskip("pillow_heif")
    im = Image.open(ORIGINAL)
    exif = im.info["exif"]
    src = tmp_path / "src"
    (src / "phone").mkdir(parents=True)
    (src / "converted").mkdir()
    heic = src / "phone" / "IMG_0042.HEIC"
    buf = io.BytesIO()
    im.save(buf, format="HEIF", quality=70, exif=exif)
    heic.write_bytes(buf.getvalue())
    conv = src / "converted" / "IMG_0042.jpg"
    Image.open(heic).convert("RGB").save(conv, quality=98, **({"exif": exif} if keep_exif else {}))
    assert conv.stat().st_size > heic.stat().st_size       # the conversion is the larger file
    res = _dupes(src, tmp_path / "thumbs")
    m = _members(res)
    assert m["IMG_0042.HEIC"]["keeper"] and not m["IMG_0042.jpg"]["keeper"], res.groups


def test_a_camera_jpeg_beats_a_larger_re_encode(tmp_path):
    src = tmp_path / "src"
    (src / "camera").mkdir(parents=True)
    (src / "web").mkdir()
    shutil.copyfile(ORIGINAL, src / "camera" / "DSC00001.JPG")
    Image.open(ORIGINAL).save(src / "web" / "DSC00001_hq.jpg", quality=99)
    assert (src / "web" / "DSC00001_hq.jpg").stat().st_size > ORIGINAL.stat().st_size
    m = _members(_dupes(src, tmp_path / "thumbs"))
    assert m["DSC00001.JPG"]["keeper"] and not m["DSC00001_hq.jpg"]["keeper"]


def test_an_edited_version_of_the_same_capture_is_a_similar_shot_not_a_copy(tmp_path):
    im = Image.open(ORIGINAL)
    src = tmp_path / "src"
    (src / "camera").mkdir(parents=True)
    (src / "edits").mkdir()
    shutil.copyfile(ORIGINAL, src / "camera" / "DSC00001.JPG")
    vivid = ImageEnhance.Color(ImageEnhance.Contrast(im).enhance(1.6)).enhance(1.8)   # visibly different
    vivid.save(src / "edits" / "DSC00001 vivid.jpg", quality=92, exif=im.info["exif"])  # same capture time
    thumbs = tmp_path / "thumbs"
    res = _dupes(src, thumbs)
    assert res.groups == []                                   # not a copy: never offered as one
    assert [s["relation"] for s in res.similar] == ["shot"]
    assert len(res.similar_groups) == 1
    names = sorted(Path(m["path"]).name for m in res.similar_groups[0]["members"])
    assert names == ["DSC00001 vivid.jpg", "DSC00001.JPG"]
    page = nearsort.group_page(thumbs, kind="similar")
    assert page.total == 1 and nearsort.group_page(thumbs, kind="copies").total == 0
    # "not duplicates" on the similar group: it is never proposed again
    nearsort.decide(thumbs, page.groups[0]["id"], "distinct")
    again = nearsort.find_duplicates(thumbs)
    assert again.similar == [] and again.similar_groups == []
