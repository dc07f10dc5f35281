"""A duplicate group is one picture: look-alike distinct photos (tiles of one photo, dark sky,
uniform frames, gradients) and different shots of one scene (a burst, an object added) are never
copies of each other, while real copies of them still are. Real resize + featurize + dupes on
images cut and composed from the bundled samples."""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import SAMPLES, disc_object
from nearsort.dupes.group import DupesConfig, find_duplicates
from nearsort.dupes.pixels import compare_files


def _tiles(src: Path, tw: int, th: int, limit: int) -> list[Image.Image]:
    im = Image.open(src).convert("RGB")
    out = []
    for y in range(0, im.height - th + 1, th):
        for x in range(0, im.width - tw + 1, tw):
            out.append(im.crop((x, y, x + tw, y + th)))
    return out[:limit]


@pytest.fixture(scope="module")
def hard_library(tmp_path_factory):
    """{path: picture label}; files of one label are one picture (copies), different labels are
    different pictures however alike. resize + featurize once."""
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    base = tmp_path_factory.mktemp("hard")
    lib = base / "library"
    lib.mkdir()
    label: dict[str, str] = {}

    def save(im: Image.Image, name: str, pic: str, **kw) -> Path:
        p = lib / name
        im.save(p, **kw)
        label[str(p)] = pic
        return p

    # tiles of one photo and of a dark sky: distinct pictures that look alike
    tiles = _tiles(SAMPLES / "npm-exif__sony-alpha-6000.jpg", 250, 200, 30)
    tiles += _tiles(SAMPLES / "python3-skimage__hubble_deep_field.jpg", 250, 218, 16)
    for i, t in enumerate(tiles):
        save(t, f"tile{i:02d}.jpg", f"tile{i}", quality=92)
    # real copies of some tiles: re-encoded, half size, PNG
    save(tiles[35], "tile35-q40.jpg", "tile35", quality=40)
    save(tiles[7].resize((125, 100), Image.BICUBIC), "tile07-half.jpg", "tile7", quality=88)
    save(tiles[32], "tile32.png", "tile32")
    # a burst: an object moving over one background, 4 frames; frame 2 also re-encoded
    bg = Image.open(SAMPLES / "python3-skimage__chelsea.png").convert("RGB")
    obj, mask = disc_object(SAMPLES / "opencv-doc__orange.jpg", 40)
    for f in range(4):
        frame = bg.copy()
        frame.paste(obj, (60 + 45 * f, 110), mask)
        save(frame, f"burst{f}.jpg", f"burst{f}", quality=92)
        if f == 2:
            save(frame, "burst2-q50.jpg", "burst2", quality=50)
    # the same scene with an object added
    china = Image.open(SAMPLES / "python3-sklearn__china.jpg").convert("RGB")
    save(china, "scene-empty.jpg", "empty", quality=92)
    with_obj = china.copy()
    with_obj.paste(obj, (420, 60), mask)
    save(with_obj, "scene-added.jpg", "added", quality=92)
    # uniform frames of one size, and one byte-identical copy
    for tone in (0, 255, 128, 140):
        save(Image.new("RGB", (300, 200), (tone,) * 3), f"flat{tone}.png", f"flat{tone}")
    (lib / "flat0-copy.png").write_bytes((lib / "flat0.png").read_bytes())
    label[str(lib / "flat0-copy.png")] = "flat0"
    # two skies: smooth gradients of one size, different colours
    for k, (top, bot) in enumerate((((70, 120, 200), (190, 210, 235)), ((90, 130, 190), (200, 205, 225)))):
        a = np.linspace(0, 1, 240)[:, None, None]
        arr = (np.array(top) * (1 - a) + np.array(bot) * a) * np.ones((1, 320, 1))
        save(Image.fromarray(arr.astype(np.uint8)), f"sky{k}.png", f"sky{k}")
    thumbs = base / "thumbs"
    resize(lib, thumbs)
    featurize(thumbs, model="efficientnet-lite0", device="cpu", log=lambda m: None)
    return lib, thumbs, label


def _groups(res) -> list[list[str]]:
    return [[m["path"] for m in g["members"]] for g in res.groups]


def test_no_group_holds_two_pictures(hard_library):
    lib, thumbs, label = hard_library
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    for members in _groups(res):
        pics = {label[p] for p in members}
        assert len(pics) == 1, f"a copy group mixes different pictures: {sorted(os.path.basename(p) for p in members)}"


def test_real_copies_of_look_alikes_are_still_found(hard_library):
    lib, thumbs, label = hard_library
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    together = defaultdict(set)
    for members in _groups(res):
        for p in members:
            together[os.path.basename(p)] |= {os.path.basename(q) for q in members}
    assert "tile35-q40.jpg" in together["tile35.jpg"]
    assert "tile07-half.jpg" in together["tile07.jpg"]
    assert "tile32.png" in together["tile32.jpg"]
    assert "burst2-q50.jpg" in together["burst2.jpg"]
    assert "flat0-copy.png" in together["flat0.png"]  # byte-identical uniform frames: exact copies


def test_different_shots_are_similar_not_copies(hard_library):
    lib, thumbs, label = hard_library
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    shots = {"burst0", "burst1", "burst2", "burst3", "empty", "added"}
    for members in _groups(res):
        assert len({label[p] for p in members} & shots) <= 1
    shot_pairs = [s for s in res.similar if s["relation"] == "shot"]
    assert shot_pairs, "the burst frames should be reported as similar shots"
    for s in shot_pairs:
        assert {label[p] for p in s["a"] + s["b"]} <= shots
    assert res.summary["similar_shots"] == len(shot_pairs)


def test_uniform_frames_keep_their_own_thumbnails_and_are_never_copies(hard_library):
    lib, thumbs, label = hard_library
    from nearsort.store.catalog import Catalog

    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id = s.original_id").fetchall()
    thumb_of = {os.fsdecode(bytes(p)): t for p, t in rows}
    flats = [str(lib / f"flat{t}.png") for t in (0, 255, 128, 140)]
    assert len({thumb_of[p] for p in flats}) == 4, "different uniform frames must not share a thumbnail"
    res = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0"))
    for members in _groups(res):
        assert len({label[p] for p in members if "flat" in label[p] or "sky" in label[p]}) <= 1


def test_pixel_verdicts_on_real_pairs(tmp_path):
    src = Image.open(SAMPLES / "python3-sklearn__flower.jpg").convert("RGB")
    w, h = src.size
    a = tmp_path / "a.jpg"
    src.save(a, quality=90)
    crop = src.crop((int(w * 0.08), int(h * 0.08), int(w * 0.92), int(h * 0.92)))
    b = tmp_path / "b.jpg"
    ImageOps.expand(crop, border=20, fill=(0, 0, 0)).save(b, quality=60)  # crop + letterbox + re-encode
    c = tmp_path / "c.jpg"
    src.rotate(2, Image.BICUBIC).crop((int(w * 0.05), int(h * 0.05), int(w * 0.95), int(h * 0.95))).save(c, quality=80)
    obj, mask = disc_object(SAMPLES / "opencv-doc__orange.jpg", 45)
    moved = src.copy()
    moved.paste(obj, (150, 140), mask)
    d = tmp_path / "d.jpg"
    moved.save(d, quality=90)
    hue = tmp_path / "e.jpg"
    r, g, bl = src.split()
    Image.merge("RGB", (bl, g, r)).save(hue, quality=90)  # same structure, other colours
    assert compare_files(a, b).kind == "copy"
    assert compare_files(a, c).kind == "copy"
    assert compare_files(a, d).kind == "shot"
    assert compare_files(a, hue).kind in ("colour", "different")
    assert compare_files(a, a).strong


def test_dupes_json_carries_similar_shots(hard_library, tmp_path):
    import subprocess
    import sys

    lib, thumbs, label = hard_library
    out = subprocess.run([sys.executable, "-m", "nearsort.cli", "dupes", str(thumbs), "--json"],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and "No such option" in out.stderr:
        pytest.skip("dupes has no --json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert any(s["relation"] == "shot" for s in data["similar"])
    assert "similar shots" in subprocess.run([sys.executable, "-m", "nearsort.cli", "dupes", str(thumbs)],
                                             capture_output=True, text=True, timeout=300).stdout


def test_pixel_checks_in_worker_processes_give_the_same_groups(hard_library, monkeypatch):
    import nearsort.dupes.pixels as pixels

    lib, thumbs, label = hard_library
    # cache=False: every verdict computed here, none read from an earlier run's stored verdicts
    serial = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0", workers=1, cache=False))
    monkeypatch.setattr(pixels, "PARALLEL_ABOVE", 1)
    monkeypatch.setattr(pixels, "PARALLEL_CHUNK", 7)
    parallel = find_duplicates(thumbs, DupesConfig(model="efficientnet-lite0", workers=2, cache=False))
    assert sorted(map(sorted, _groups(serial))) == sorted(map(sorted, _groups(parallel)))
    assert parallel.summary["pixel_checks"] >= serial.summary["pixel_checks"] > 0
    assert [s["relation"] for s in serial.similar] == [s["relation"] for s in parallel.similar]


def test_uniform_frames_a_few_levels_apart_are_not_copies(tmp_path):
    """Grey 100 and grey 103 are two pictures (dupes allows 1.5 levels for frames that show only
    their tone); a re-encode of grey 100 is a copy of it. Names and groups agree on that."""
    from nearsort.ingest.resize import resize

    lib = tmp_path / "lib"
    lib.mkdir()
    Image.new("RGB", (300, 200), (100,) * 3).save(lib / "grey100.jpg", quality=90)
    Image.new("RGB", (300, 200), (103,) * 3).save(lib / "grey103.jpg", quality=90)
    Image.new("RGB", (300, 200), (100,) * 3).save(lib / "grey100-q50.jpg", quality=50)
    resize(lib, tmp_path / "thumbs", workers=1)
    res = find_duplicates(tmp_path / "thumbs", DupesConfig(use_embeddings=False))
    groups = [sorted(os.path.basename(p) for p in g) for g in _groups(res)]
    assert groups == [["grey100-q50.jpg", "grey100.jpg"]]


def test_a_library_script_without_a_main_guard_can_run_dupes_in_processes(hard_library, tmp_path):
    import subprocess
    import sys

    lib, thumbs, label = hard_library
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import nearsort.dupes.pixels as px\n"
        "from nearsort.dupes.group import DupesConfig, find_duplicates\n"
        "px.PARALLEL_ABOVE = 1\n"
        f"res = find_duplicates({str(thumbs)!r}, DupesConfig(model='efficientnet-lite0', workers=2, cache=False))\n"
        "print('groups', len(res.groups), 'checks', res.summary['pixel_checks'])\n")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "groups" in out.stdout and "Traceback" not in out.stderr
    assert int(out.stdout.split("checks")[1]) > 0  # the checks really ran (in processes)


def test_crops_of_one_picture_in_two_shapes_are_not_copies(tmp_path):
    """Every alignment the pixel check tries maps a centred crop of one uniform scale, so a copy
    keeps its shape: two crops of a simple picture (an orange on a plain ground) in two shapes
    were once called copies, stretched to fit. A copy resized to an odd size, and one
    letterboxed to another shape (the bars are trimmed), keep their verdicts."""
    from nearsort.dupes.pixels import MAX_SHAPE

    im = Image.open(SAMPLES / "opencv-doc__orange.jpg").convert("RGB")
    w, h = im.size

    def save(pic: Image.Image, name: str) -> Path:
        pic = pic.copy()
        pic.thumbnail((256, 256))
        pic.save(tmp_path / name, quality=90)
        return tmp_path / name

    wide = save(im.crop((w // 10, int(h * 0.3), w - w // 10, int(h * 0.7))), "wide.jpg")
    tall = save(im.crop((w // 10, int(h * 0.2), w - w // 10, int(h * 0.8))), "tall.jpg")
    v = compare_files(wide, tall)
    assert v.kind == "different" and v.metrics["shape"] > MAX_SHAPE, v
    whole = save(im, "whole.jpg")
    odd = tmp_path / "odd.jpg"
    im.resize((157, round(157 * h / w)), Image.BICUBIC).save(odd, quality=85)
    assert compare_files(whole, odd).copy
    boxed = tmp_path / "boxed.jpg"
    canvas = Image.new("RGB", (w, w), (0, 0, 0))
    canvas.paste(im, (0, (w - h) // 2))
    canvas.resize((240, 240), Image.BICUBIC).save(boxed, quality=88)
    assert compare_files(whole, boxed).copy
