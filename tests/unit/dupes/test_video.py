"""Consecutive video frames are never copies, even where the motion between them is a fraction of a
pixel at thumbnail size (a subject drifting, a slow pan with parallax): the pair the thumbnails
call a copy is measured again on the originals, decoded larger. Copies of a frame (re-encoded,
black and white) stay copies, and resize gives each frame its own thumbnail. Frames generated here
(a subject drifting by 2 px in a 768x576 frame: a third of a pixel at thumbnail size) and, when
installed, the real frames of opencv-doc's videos (decoded with OpenCV, the bench extra)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from conftest import SAMPLES
from nearsort.dupes.group import DupesConfig, find_duplicates
from nearsort.dupes import pixels
from nearsort.dupes.pixels import MAX_MOTION, MAX_MOTION_RESCALED, PixelVerifier, compare_files
from nearsort.ingest.thumbs import process_file
from nearsort.store.catalog import Catalog

SIZE = (768, 576)  # a PAL video frame: its 256-px thumbnail is 3x smaller, its 128-px motion image 6x


def _noise(im: Image.Image, seed: int) -> Image.Image:
    a = np.asarray(im, np.float32) + np.random.default_rng(seed).normal(0, 2.0, (im.height, im.width, 3))
    return Image.fromarray(a.clip(0, 255).astype(np.uint8))


def _frame(dx: float, seed: int) -> Image.Image:
    """A scene with a subject drifted right by dx px (drawn 4x larger, then reduced: sub-pixel)."""
    k = 4
    bg = Image.open(SAMPLES / "python3-sklearn__china.jpg").convert("RGB").resize((SIZE[0] * k, SIZE[1] * k),
                                                                                   Image.BICUBIC)
    sub = Image.open(SAMPLES / "darknet__dog.jpg").convert("RGB")
    sub = sub.resize((sub.width // 2, sub.height // 2), Image.LANCZOS).crop((40, 40, 340, 300))
    sub = sub.resize((sub.width * k, sub.height * k), Image.BICUBIC)
    mask = Image.new("L", sub.size, 0)
    ImageDraw.Draw(mask).ellipse((8, 8, sub.width - 8, sub.height - 8), fill=255)
    bg.paste(sub, (int((200 + dx) * k), 150 * k), mask.filter(ImageFilter.GaussianBlur(6)))
    return _noise(bg.resize(SIZE, Image.LANCZOS), seed)


def _library(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    f0 = _frame(0, 1)
    # frame1 at another quality: its encoding differs, so only motion tells it (frames.recoded_change aside)
    ims = {"frame0": (f0, 92), "frame1": (_frame(2.0, 2), 91), "frame0-q40": (f0, 40),
           "frame0-grey": (f0.convert("L").convert("RGB"), 88)}
    out = {}
    for name, (im, q) in ims.items():
        out[name] = d / f"{name}.jpg"
        im.save(out[name], quality=q)
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    files = _library(d / "library")
    names = list(files)
    rel, sources = {}, {}
    for i, name in enumerate(names):
        r = process_file(str(files[name]))
        assert r.error is None, r.error
        (d / f"t-{name}.jpg").write_bytes(r.jpeg)
        rel[i], sources[i] = f"t-{name}.jpg", ((r.width, r.height), [str(files[name])])
    return d, names, rel, sources


def test_thumbnails_alone_cannot_see_a_drift_of_a_third_of_a_pixel(generated):
    d, names, rel, _ = generated
    v = compare_files(d / rel[0], d / rel[1])  # the blind spot the originals are checked for
    assert v.kind == "copy" and v.metrics["motion"] <= MAX_MOTION, v


def test_on_the_originals_two_frames_are_a_shot_and_copies_stay_copies(generated):
    d, names, rel, sources = generated
    pv = PixelVerifier(d, rel, sources=sources)
    v = pv.compare(0, 1)
    assert v.kind == "shot" and v.metrics["motion_original"] > MAX_MOTION, v
    for copy in ("frame0-q40", "frame0-grey"):
        assert pv.compare(0, names.index(copy)).kind == "copy", copy
    # the other frame is not a copy of the first one's copies either
    assert pv.compare(1, names.index("frame0-q40")).kind == "shot"
    assert pv.original_checks() == (2, 0)  # only the frame pairs moved on the thumbnails


def test_originals_of_two_sizes_a_half_size_copy_is_a_copy_of_its_frame_only(tmp_path, monkeypatch):
    """A half-size copy maps onto a frame only through the thumbnails' alignment; the pair is measured
    on both originals with it, against MAX_MOTION_RESCALED (a rotated crop of a real photo measures
    up to ~0.8 there): the copy stays a copy of its own frame, and a frame whose subject moved by
    5 px (1.7 px at thumbnail size) is a shot, not a copy of it. The thumbnails see that move since
    their faint pictures have a texture floor of their own (frames.MOTION_TEXTURE_LOW); without it
    they are blind to it and the originals decide."""
    f0 = _frame(0, 1)
    ims = {"frame0": f0, "frame0-half": f0.resize((SIZE[0] // 2, SIZE[1] // 2), Image.LANCZOS),
           "frame5": _frame(5.0, 3)}
    rel, sources = {}, {}
    for i, (name, im) in enumerate(ims.items()):
        im.save(tmp_path / f"{name}.jpg", quality=92)
        r = process_file(str(tmp_path / f"{name}.jpg"))
        (tmp_path / f"t-{name}.jpg").write_bytes(r.jpeg)
        rel[i], sources[i] = f"t-{name}.jpg", ((r.width, r.height), [str(tmp_path / f"{name}.jpg")])
    pv = PixelVerifier(tmp_path, rel, sources=sources)
    assert pv.compare(0, 1).kind == "copy"
    v = pv.compare(2, 1)
    assert v.kind == "shot" and v.metrics["motion"] > MAX_MOTION and "motion_original" not in v.metrics, v
    monkeypatch.setattr(pixels, "MOTION_TEXTURE_LOW", None)  # thumbnails blind to it: the originals decide
    pv = PixelVerifier(tmp_path, rel, sources=sources)
    assert pv.compare(0, 1).kind == "copy"
    v = pv.compare(2, 1)
    assert v.kind == "shot" and v.metrics["motion"] <= MAX_MOTION, v  # the 128-px check saw nothing
    assert v.metrics["motion_original"] > MAX_MOTION_RESCALED, v


def test_without_the_originals_the_verdict_stands_and_is_counted(generated, tmp_path):
    d, names, rel, sources = generated
    gone = {t: (wh, [str(tmp_path / "gone.jpg")]) for t, (wh, _) in sources.items()}
    pv = PixelVerifier(d, rel, sources=gone)
    v = pv.compare(0, 1)
    assert v.kind == "copy" and v.metrics["unconfirmed"], v
    assert pv.original_checks() == (0, 1)


def test_resize_and_dupes_keep_the_frames_apart_and_group_the_copies(tmp_path):
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    files = _library(tmp_path / "library")
    thumbs = tmp_path / "thumbs"
    resize(tmp_path / "library", thumbs)
    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id, t.name FROM sources s JOIN originals o ON o.id = s.original_id "
                           "JOIN thumbs t ON t.id = o.thumb_id").fetchall()
    thumb = {os.path.basename(os.fsdecode(bytes(p))): (t, n) for p, t, n in rows}
    # one size and phash, prints agree, still at thumbnail size: only the originals tell them apart
    assert thumb["frame1.jpg"][1].split("_")[1] == thumb["frame0.jpg"][1].split("_")[1]
    assert thumb["frame1.jpg"][0] != thumb["frame0.jpg"][0]
    assert thumb["frame0-q40.jpg"][0] == thumb["frame0.jpg"][0] or thumb["frame0-q40.jpg"][1] != thumb["frame0.jpg"][1]
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    groups = [sorted(os.path.basename(m["path"]) for m in g["members"]) for g in res.groups]
    assert groups == [["frame0-grey.jpg", "frame0-q40.jpg", "frame0.jpg"]], groups
    assert any({"frame1.jpg"} & {os.path.basename(p) for p in s["a"] + s["b"]}
               for s in res.similar if s["relation"] == "shot"), res.similar
    assert res.summary["originals_unreadable"] == 0
    assert {p.name for p in files.values()} <= {os.path.basename(os.fsdecode(bytes(p))) for p, _, _ in rows}


# --------------------------------------------------------------------------- real frames
def _video_frames() -> dict[str, list[Image.Image]] | None:
    """{video: frames B, B+1, B+2, B+5, B+10} of opencv-doc's videos (NEARSORT_OPENCV_DATA or the
    installed package), decoded with OpenCV; None when either is missing."""
    try:
        import cv2
    except ImportError:
        return None
    for d in (os.environ.get("NEARSORT_OPENCV_DATA"), "/usr/share/doc/opencv-doc/examples/data"):
        if d and (Path(d) / "vtest.avi").is_file() and (Path(d) / "Megamind.avi").is_file():
            break
    else:
        return None
    out = {}
    for video, base in (("vtest.avi", 120), ("Megamind.avi", 150)):
        cap = cv2.VideoCapture(str(Path(d) / video))
        frames, i = [], 0
        while i <= base + 10:
            ok, f = cap.read()
            if not ok:
                return None
            if i - base in (0, 1, 2, 5, 10):
                frames.append(Image.fromarray(cv2.cvtColor(f, cv2.COLOR_BGR2RGB)))
            i += 1
        cap.release()
        out[video] = frames
    return out


@pytest.mark.parametrize("video", ["vtest.avi", "Megamind.avi"])  # people walking; a subject drifting
def test_real_consecutive_video_frames_are_never_copies(tmp_path, video):
    frames = _video_frames()
    if frames is None:
        pytest.skip("opencv-doc's videos (NEARSORT_OPENCV_DATA) or OpenCV (the bench extra) are not installed")
    files = []
    for k, im in enumerate(frames[video]):
        files.append(tmp_path / f"f{k}.jpg")
        im.save(files[-1], quality=92)
    frames[video][0].save(tmp_path / "f0-q40.jpg", quality=40)
    files.append(tmp_path / "f0-q40.jpg")
    rel, sources = {}, {}
    for i, f in enumerate(files):
        r = process_file(str(f))
        (tmp_path / f"t{i}.jpg").write_bytes(r.jpeg)
        rel[i], sources[i] = f"t{i}.jpg", ((r.width, r.height), [str(f)])
    pv = PixelVerifier(tmp_path, rel, sources=sources)
    for a in range(5):
        for b in range(a + 1, 5):
            assert not pv.compare(a, b).copy, (a, b, pv.compare(a, b))
    assert pv.compare(0, 5).copy  # the frame and its re-encode


def test_a_half_size_copy_of_a_frame_goes_with_its_own_frame(tmp_path):
    """Two frames 2 px apart and a half-size copy of each: a half-size copy of either frame passes
    as a copy of the other one (the drift is a pixel on it, within the two-size limit), so the
    first keeper met would take both. Each copy is closer to its own frame (less motion at
    thumbnail size) and goes with it: two groups, one frame each."""
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    lib = tmp_path / "library"
    lib.mkdir()
    for name, dx, seed in (("frame0", 0, 1), ("frame1", 2.0, 2)):
        f = _frame(dx, seed)
        f.save(lib / f"{name}.jpg", quality=92)
        f.resize((SIZE[0] // 2, SIZE[1] // 2), Image.LANCZOS).save(lib / f"{name}-half.jpg", quality=90)
    thumbs = tmp_path / "thumbs"
    resize(lib, thumbs)
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    groups = sorted(sorted(os.path.basename(m["path"]) for m in g["members"]) for g in res.groups)
    assert groups == [["frame0-half.jpg", "frame0.jpg"], ["frame1-half.jpg", "frame1.jpg"]], groups


def test_two_still_frames_of_one_encoder_are_two_pictures(tmp_path):
    """Two frames of a still scene (the subject drifts by half a pixel, the sensor noise is new): no
    motion check can see them apart, but both are JPEGs of one encoding (size, tables), and their
    blocks changed beyond what saving one of them again changes (frames.recoded_change). resize gives
    each its own thumbnail and dupes never groups them; a re-save of a frame with its own tables,
    an EXIF-stripped copy and a re-encode at another quality stay copies of it."""
    from nearsort.embed.featurize import featurize
    from nearsort.frames import RECODE_SHARE, recoded_change
    from nearsort.ingest.resize import resize

    lib = tmp_path / "library"
    lib.mkdir()
    f0 = _frame(0, 1)
    f0.save(lib / "frame0.jpg", quality=92)
    _frame(0.5, 2).save(lib / "frame1.jpg", quality=92)
    with Image.open(lib / "frame0.jpg") as im:
        again = im.convert("RGB")
        again.save(lib / "frame0-again.jpg", qtables=im.quantization, subsampling=2)
    f0.save(lib / "frame0-q60.jpg", quality=60)
    raw = (lib / "frame0.jpg").read_bytes()
    stripped = raw[:2] + b"\xff\xfe\x00\x05abc" + raw[2:]  # a comment segment: the same compressed data
    (lib / "frame0-comment.jpg").write_bytes(stripped)
    b = {p.stem: p.read_bytes() for p in lib.iterdir()}
    assert recoded_change(b["frame0"], b["frame1"]) > RECODE_SHARE
    assert recoded_change(b["frame0"], b["frame0-again"]) <= RECODE_SHARE
    assert recoded_change(b["frame0"], b["frame0-comment"]) == 0.0
    assert recoded_change(b["frame0"], b["frame0-q60"]) is None  # other tables: not one encoding
    thumbs = tmp_path / "thumbs"
    resize(lib, thumbs)
    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id = s.original_id").fetchall()
    thumb = {os.path.basename(os.fsdecode(bytes(p))): t for p, t in rows}
    assert thumb["frame1.jpg"] != thumb["frame0.jpg"]
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    groups = [sorted(os.path.basename(m["path"]) for m in g["members"]) for g in res.groups]
    assert not any("frame1.jpg" in g for g in groups), groups
    assert any({"frame0.jpg", "frame0-again.jpg", "frame0-comment.jpg"} <= set(g) for g in groups), groups


def test_pictures_too_big_to_compare_whole_are_left_to_the_motion_checks(tmp_path, monkeypatch):
    """The re-save check decodes both JPEGs whole: beyond RECODE_MAX_PIXELS it is not asked (None)."""
    from nearsort import frames

    _frame(0, 1).save(tmp_path / "a.jpg", quality=92)
    _frame(0.5, 2).save(tmp_path / "b.jpg", quality=92)
    a, b = (tmp_path / "a.jpg").read_bytes(), (tmp_path / "b.jpg").read_bytes()
    assert frames.recoded_change(a, b) > frames.RECODE_SHARE
    monkeypatch.setattr(frames, "RECODE_MAX_PIXELS", SIZE[0] * SIZE[1] - 1)
    assert frames.recoded_change(a, b) is None
    assert frames.recoded_files([tmp_path / "a.jpg"], [tmp_path / "b.jpg"]) is None


def test_a_crop_of_a_still_frame_goes_with_its_own_frame_only(tmp_path):
    """A crop saved without resampling (92 % of a frame, cut off the 8-px grid, another quality) is,
    pixel for pixel, a window of its own frame: of the next frame of a still scene it is not, though
    no motion check sees the half-pixel drift (frames.native_crop_change). It stays a copy of its
    own frame, and so do a bordered copy (a window the other way) and a copy rotated by a degree
    (resampled: not one pixel scale, so the check does not apply and it stays the motion checks')."""
    from nearsort.frames import RECODE_SHARE, crop_offset, native_crop_change

    f0, f1 = _frame(0, 1), _frame(0.5, 2)
    box = (29, 21, 29 + 707, 21 + 530)
    files = {"frame0": (f0, 92), "frame1": (f1, 92), "crop": (f0.crop(box), 88),
             "border": (Image.new("RGB", (SIZE[0] + 30, SIZE[1] + 30), (0, 0, 0)), 90),
             "rotated": (f0.rotate(1.0, Image.BICUBIC).crop(box), 90)}
    files["border"][0].paste(f0, (15, 15))
    paths = {}
    for name, (im, q) in files.items():
        paths[name] = tmp_path / f"{name}.jpg"
        im.save(paths[name], quality=q)
    dec = {n: Image.open(p).convert("RGB") for n, p in paths.items()}
    g = np.asarray(dec["frame0"].convert("L"))
    assert crop_offset(g, g[21:551, 29:736]) == (21, 29)
    assert native_crop_change(dec["frame0"], dec["crop"]) <= RECODE_SHARE
    assert native_crop_change(dec["frame1"], dec["crop"]) > RECODE_SHARE
    assert native_crop_change(dec["frame0"], dec["rotated"]) is None  # not found as one piece
    names = list(paths)
    rel, sources = {}, {}
    for i, n in enumerate(names):
        r = process_file(str(paths[n]))
        (tmp_path / f"t{i}.jpg").write_bytes(r.jpeg)
        rel[i], sources[i] = f"t{i}.jpg", ((r.width, r.height), [str(paths[n])])
    pv = PixelVerifier(tmp_path, rel, sources=sources)
    i = {n: k for k, n in enumerate(names)}
    assert pv.compare(i["crop"], i["frame0"]).copy
    v = pv.compare(i["crop"], i["frame1"])
    assert not v.copy and v.metrics["native"] > RECODE_SHARE, v
    assert pv.compare(i["border"], i["frame0"]).copy
    assert pv.compare(i["rotated"], i["frame0"]).copy
