"""Trust at scale: a thumbnail name never merges different pictures; rebuild keeps what it can.

Names are ``{W}x{H}_{phash}`` plus ``_{n}`` when a different picture already has that size and
phash: two originals share a thumbnail only when their thumbnails' pixels agree.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from conftest import SAMPLES, camera_exif, make_photo
from nearsort import rebuild, resize
from nearsort.store import thumbmeta
from nearsort.store.catalog import Catalog
from nearsort.export import export
from nearsort.ingest.thumbs import name_phash, parse_thumb_filename, process_bytes, thumb_name

UNIFORM = "300x200_8000000000000000"  # what every non-black uniform 300x200 frame is named without a suffix


def all_thumbs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg") if ".nearsort" not in p.parts)


def uniform(path: Path, level: int, size=(300, 200), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (level,) * 3).save(path, fmt)
    return path


def name_of(path: Path) -> str:
    r = process_bytes(path.read_bytes(), str(path))
    return thumb_name(r["width"], r["height"], r["phash"])


def thumbs_by_source(out: Path) -> dict[str, tuple[str, Path]]:
    """{source path: (thumbnail name, thumbnail file)} from the thumbnails' own metadata."""
    res = {}
    for t in all_thumbs(out):
        meta = thumbmeta.read(t)
        assert parse_thumb_filename(t.name)[0] == meta["name"]
        for o in meta["originals"]:
            for s in o["sources"]:
                res[s["path"]] = (meta["name"], t)
    return res


def level(thumb: Path) -> float:
    return float(np.asarray(Image.open(thumb).convert("L"), np.float32).mean())


# ----------------------------------------------------------------------------- names


def test_names_with_suffix_and_rank_parse_to_their_phash():
    assert thumb_name(300, 200, "8000000000000000") == UNIFORM
    assert thumb_name(300, 200, "8000000000000000", 2) == UNIFORM + "_2"
    assert parse_thumb_filename(f"{UNIFORM}_2.jpg") == (UNIFORM + "_2", None)
    assert parse_thumb_filename(f"000123_{UNIFORM}_12.jpg") == (UNIFORM + "_12", 123)
    assert parse_thumb_filename(f"000123_{UNIFORM}.jpg") == (UNIFORM, 123)
    for bad in (f"{UNIFORM}_0.jpg", f"{UNIFORM}_.jpg", f"{UNIFORM}_02.jpg", f"{UNIFORM}_2_3.jpg"):
        assert parse_thumb_filename(bad) is None, bad
    assert name_phash(UNIFORM + "_7") == name_phash(UNIFORM) == "8000000000000000"


def test_uniform_frames_of_one_size_never_share_a_thumbnail(tmp_path):
    lib = tmp_path / "lib"
    frames = {"near-black": 8, "white": 255, "grey90": 90, "grey160": 160}
    paths = {k: uniform(lib / f"{k}.png", v) for k, v in frames.items()}
    assert len({name_of(p) for p in paths.values()}) == 1, "precondition: all four collide in name"
    shutil.copy2(paths["white"], lib / "white copy.png")  # byte-identical: one original
    Image.open(paths["grey90"]).save(lib / "grey90.jpg", quality=90)  # same picture, other bytes
    out = tmp_path / "thumbs"
    s = resize(lib, out, workers=1)
    assert s.new_thumbnails == 4 and s.processed == 6
    names = sorted(t.stem for t in all_thumbs(out))
    assert names == [UNIFORM, UNIFORM + "_2", UNIFORM + "_3", UNIFORM + "_4"]
    by_src = thumbs_by_source(out)
    for k, v in frames.items():
        assert abs(level(by_src[str(paths[k])][1]) - v) < 2, f"{k}'s thumbnail shows another picture"
    assert by_src[str(lib / "white copy.png")] == by_src[str(paths["white"])]
    assert by_src[str(lib / "grey90.jpg")] == by_src[str(paths["grey90"])]
    white = thumbmeta.read(by_src[str(paths["white"])][1])
    assert len(white["originals"]) == 1 and len(white["originals"][0]["sources"]) == 2
    assert len(thumbmeta.read(by_src[str(paths["grey90"])][1])["originals"]) == 2

    # a later run compares against the thumbnail files on disk
    uniform(lib / "later" / "grey200.png", 200)
    Image.open(paths["grey160"]).save(lib / "later" / "grey160.webp", lossless=True)
    s2 = resize(lib, out, workers=1)
    assert s2.new_thumbnails == 1 and s2.unchanged == 6
    by_src2 = thumbs_by_source(out)
    assert by_src2[str(lib / "later" / "grey200.png")][0] == UNIFORM + "_5"
    assert by_src2[str(lib / "later" / "grey160.webp")] == by_src2[str(paths["grey160"])]

    # rebuild reproduces every name and every link
    export(out, json_path=str(tmp_path / "a.json"))
    (out / ".nearsort" / "catalog.sqlite").unlink()
    rebuild(out)
    export(out, json_path=str(tmp_path / "b.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert resize(lib, out, workers=1).new_thumbnails == 0


def test_suffixed_names_work_in_analyze_refresh_and_hash_layout(tmp_path):
    from nearsort.order.analyze import analyze
    from nearsort import refresh_names as refresh

    lib = tmp_path / "lib"
    for v in (20, 120, 220):
        uniform(lib / f"u{v}.png", v)
    make_photo(lib / "photo.jpg", 5, size=(300, 200))
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1, layout="hash")
    rels = sorted(t.relative_to(out).as_posix() for t in all_thumbs(out))
    assert [r for r in rels if UNIFORM in r] == [f"80/00/{UNIFORM}{x}.jpg" for x in ("", "_2", "_3")]
    a = analyze(out, by="phash")
    assert a.by == "phash"
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT count(*) FROM ranks").fetchone()[0] == 4
    r = refresh(out)
    assert r.moved == 4
    after = all_thumbs(out)
    assert sorted(parse_thumb_filename(t.name)[0] for t in after) == sorted(Path(x).stem for x in rels)
    assert all(parse_thumb_filename(t.name)[1] is not None for t in after)
    # back to the hash layout: the folder comes from the phash inside the suffixed name
    refresh(out, reset=True, layout="hash")
    assert sorted(t.relative_to(out).as_posix() for t in all_thumbs(out)) == rels


def test_unknown_thumbnail_file_with_the_next_name_is_compared_not_merged(tmp_path):
    """A thumbnail the catalog does not know, sitting where the next '_n' name would go."""
    other = tmp_path / "other"
    uniform(other / "a.png", 250)
    uniform(other / "b.png", 120)
    foreign_out = tmp_path / "foreign"
    resize(other, foreign_out, workers=1, layout="hash")
    by_src = thumbs_by_source(foreign_out)
    foreign = by_src[str(other / "b.png")][1]
    assert foreign.name == f"{UNIFORM}_2.jpg"

    lib = tmp_path / "lib"
    uniform(lib / "first.png", 30)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1, layout="hash")
    shutil.copy2(foreign, out / "80" / "00" / foreign.name)  # the catalog has no row for it
    uniform(lib / "second.png", 200)  # neither 30 nor 120: must get a name of its own
    Image.open(other / "b.png").save(lib / "b again.jpg", quality=80)  # the foreign one's picture
    resize(lib, out, workers=1, layout="hash")
    got = thumbs_by_source(out)
    assert got[str(lib / "first.png")][0] == UNIFORM
    assert got[str(other / "b.png")][0] == UNIFORM + "_2", "the unknown thumbnail's metadata is kept"
    assert got[str(lib / "b again.jpg")][0] == UNIFORM + "_2", "same pixels: shares it"
    assert got[str(lib / "second.png")][0] == UNIFORM + "_3"
    assert abs(level(got[str(lib / "second.png")][1]) - 200) < 2


def test_rebuild_refuses_a_different_picture_carrying_a_taken_name(tmp_path):
    lib_a, lib_b = tmp_path / "a", tmp_path / "b"
    uniform(lib_a / "white.png", 255)
    uniform(lib_b / "grey.png", 100)
    out_a, out_b = tmp_path / "ta", tmp_path / "tb"
    resize(lib_a, out_a, workers=1)
    resize(lib_b, out_b, workers=1)
    (ta,), (tb,) = all_thumbs(out_a), all_thumbs(out_b)
    assert ta.name == tb.name == UNIFORM + ".jpg"
    (out_a / "merged in").mkdir()
    shutil.copy2(tb, out_a / "merged in" / tb.name)  # a thumbnail from another THUMBS, same name
    shutil.copy2(ta, out_a / "merged in" / ("000001_" + ta.name))  # a copy of our own: fine
    s = rebuild(out_a)
    assert s.imported == 2
    assert [p[0] for p in s.problems] == [f"merged in/{tb.name}"]
    assert "different picture" in s.problems[0][1]
    by_src = thumbs_by_source(out_a)  # (from files: both are there)
    with Catalog.open(out_a, write=False) as cat:
        paths = [bytes(p).decode() for (p,) in cat.execute("SELECT path FROM sources")]
    assert paths == [str(lib_a / "white.png")], "the grey picture's source is not linked to the white thumbnail"
    assert str(lib_b / "grey.png") in by_src


# ----------------------------------------------------------------------------- real photos

TILE_PHOTO = "npm-exif__short-ascii-II.jpg"  # an over-exposed hand: near-white regions share a phash
# 480x360 tiles with one name each group, pixels visibly different (bench/names.py lists all pairs);
# the second pair is the closest different pair of the bench (mean 0.6, p99 17 against SAME_P99 16)
TILES = [[(1680, 1980), (2400, 2340), (960, 1620), (2640, 2520)], [(1920, 180), (2400, 2160)]]
REAL = ["golang-golang-x-image-dev__video-001.lossy.webp", "npm-exif__test3.jpg", "darknet__giraffe.jpg",
        "opencv-doc__butterfly.png", "mate-backgrounds__FreshFlower.jpg", "python3-skimage__coffee.png",
        "npm-exif__sony-alpha-6000.jpg", "opencv-doc__home.jpg"]


def _strip_app_segments(data: bytes) -> bytes:
    """The JPEG without APP1 (EXIF/XMP), APP2 (ICC), APP13 -- an 'EXIF-stripped copy'."""
    i, out = 2, bytearray(data[:2])
    while True:
        marker, n = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:
            return bytes(out + data[i:])
        if marker not in (0xE1, 0xE2, 0xED):
            out += data[i:i + 2 + n]
        i += 2 + n


def test_reencoded_stripped_and_png_copies_of_real_photos_still_collapse(tmp_path, shared_bench):
    lib = tmp_path / "lib"
    lib.mkdir()
    expect: dict[str, str] = {}  # copy -> its original, for copies whose name equals the original's
    for f in REAL:
        src = shared_bench / "originals" / f
        orig = lib / f
        shutil.copy2(src, orig)
        im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
        copies = []
        for q in (30, 60, 95):
            copies.append(lib / f"{orig.stem} q{q}.jpg")
            im.save(copies[-1], quality=q)
        copies.append(lib / f"{orig.stem} converted.png")
        im.save(copies[-1], compress_level=1)
        if src.suffix.lower() == ".jpg":
            stripped = _strip_app_segments(src.read_bytes())
            if stripped != src.read_bytes():
                copies.append(lib / f"{orig.stem} stripped.jpg")
                copies[-1].write_bytes(stripped)
        base = name_of(orig)
        expect.update({str(c): str(orig) for c in copies if name_of(c) == base})
    assert len(expect) >= 24, "precondition: most copies keep the original's size and phash"
    kinds = {Path(c).stem.rsplit(" ", 1)[1] for c in expect}
    assert {"q30", "q60", "q95", "converted", "stripped"} <= kinds
    out = tmp_path / "thumbs"
    resize(lib, out, workers=2)
    by_src = thumbs_by_source(out)
    split = [c for c, o in expect.items() if by_src[c][0] != by_src[o][0]]
    assert split == [], f"copies of one picture got their own thumbnail: {split}"
    assert not any(n.count("_") > 1 for n, _ in by_src.values())


def test_low_texture_tiles_with_one_name_stay_apart(tmp_path, shared_bench):
    """Visibly different near-white tiles of one photo: same size, same phash, other pixels."""
    im = ImageOps.exif_transpose(Image.open(shared_bench / "originals" / TILE_PHOTO)).convert("RGB")
    lib = tmp_path / "lib"
    lib.mkdir()
    tiles = []
    for group in TILES:
        first = len(tiles)
        for x, y in group:
            tiles.append(lib / f"tile {x} {y}.png")
            im.crop((x, y, x + 480, y + 360)).save(tiles[-1], compress_level=1)
        assert len({name_of(t) for t in tiles[first:]}) == 1, "precondition: the tiles collide in name"
    # the same tiles resized to another identical size, as JPEG: still six pictures
    for t in tiles:
        Image.open(t).resize((400, 300), Image.Resampling.LANCZOS).save(lib / f"{t.stem} small.jpg", quality=85)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    by_src = thumbs_by_source(out)
    assert len({by_src[str(t)][0] for t in tiles}) == 6
    assert sorted(n.count("_") for n in {by_src[str(t)][0] for t in tiles}) == [1, 1, 2, 2, 2, 2]
    assert len({by_src[str(lib / f"{t.stem} small.jpg")][0] for t in tiles}) == 6


# ----------------------------------------------------------------------------- rebuild keeps vectors

QUIET = {"log": lambda s: None}
LITE0 = "efficientnet-lite0"


def _drop_catalog(out: Path) -> None:
    for side in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (out / ".nearsort" / side).unlink(missing_ok=True)


def _queries(out: Path) -> dict:
    """What a user sees from search and similar (by relpath, ids change with a rebuild)."""
    from nearsort.embed import search as S
    from nearsort.embed.models import class_name

    with Catalog.open(out, write=False) as cat:
        label = cat.execute("SELECT label FROM labels ORDER BY prob DESC LIMIT 1").fetchone()[0]
        rels = [r for (r,) in cat.execute("SELECT relpath FROM thumbs ORDER BY relpath")]
    text = S.search(out, class_name(label), k=3)
    assert text.results, "precondition: the top label of some thumbnail finds it"
    res = {"text": [(x["relpath"], x["score"]) for x in text.results]}
    for rel in rels:
        res[rel] = [(x["relpath"], x["score"]) for x in S.similar(out, rel, k=3).results]
    return res


def _library_with_error(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    for i in range(6):
        make_photo(src / f"p{i}.jpg", 100 + i, size=(480, 360))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "thumbs"
    s = resize(src, out, workers=1)
    assert s.errors == 1 and s.new_thumbnails == 6
    return src, out


def test_rebuild_reattaches_vectors_and_labels_and_resize_refinds_errors(tmp_path):
    from nearsort.embed import featurize as F

    src, out = _library_with_error(tmp_path)
    assert F.featurize(out, model=LITE0, device="cpu", batch=4, **QUIET).embedded == 6
    before = _queries(out)
    with Catalog.open(out, write=False) as cat:
        n_labels = cat.execute("SELECT count(*) FROM labels").fetchone()[0]
        info = cat.execute("SELECT info FROM models").fetchone()[0]
    _drop_catalog(out)
    s = rebuild(out)
    assert s.vectors == {LITE0: 6} and s.imported == 6
    assert _queries(out) == before
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT count(*) FROM labels").fetchone()[0] == n_labels
        assert json.loads(cat.execute("SELECT info FROM models").fetchone()[0]) == json.loads(info)
        assert cat.execute("SELECT count(*) FROM sources WHERE status='error'").fetchone()[0] == 0
    again = F.featurize(out, model=LITE0, device="cpu", **QUIET)
    assert again.embedded == 0 and again.already == 6
    # the error record is not in any thumbnail: the next resize finds it again
    r = resize(src, out, workers=1)
    assert r.errors == 1 and r.new_thumbnails == 0 and r.unchanged == 6
    assert r.error_samples[0]["path"] == str(src / "broken.jpg")
    # resize on a THUMBS without a catalog imports the thumbnails, and their vectors too
    _drop_catalog(out)
    resize(src, out, workers=1)
    assert _queries(out) == before
    assert F.featurize(out, model=LITE0, device="cpu", **QUIET).embedded == 0


def test_vector_row_records_follow_the_committed_rows(tmp_path):
    """rows.bin is cut back to the committed rows, and filled in for a store made before it."""
    from nearsort.embed import featurize as F
    from nearsort.store.catalog import state_dir
    from nearsort.vectors.index import VectorIndex
    from nearsort.vectors.rows import ROWS_FILE, row_dtype

    src, out = _library_with_error(tmp_path)
    F.featurize(out, model=LITE0, device="cpu", batch=4, **QUIET)
    rows_bin = VectorIndex.folder_for(state_dir(out), LITE0) / ROWS_FILE
    size = rows_bin.stat().st_size
    assert size == 6 * row_dtype().itemsize
    with open(rows_bin, "ab") as fh:  # a record written before a crash, never committed
        fh.write(b"\x00" * row_dtype().itemsize + b"torn")
    F.featurize(out, model=LITE0, device="cpu", **QUIET)
    assert rows_bin.stat().st_size == size
    good = rows_bin.read_bytes()
    rows_bin.unlink()  # a vector store made before rows.bin existed
    assert F.featurize(out, model=LITE0, device="cpu", **QUIET).embedded == 0
    assert rows_bin.read_bytes() == good, "filled in from the catalog: the same records"
    before = _queries(out)
    _drop_catalog(out)
    assert rebuild(out).vectors == {LITE0: 6}
    assert _queries(out) == before


def test_reattached_vector_follows_the_picture_not_a_reused_name(tmp_path):
    """Thumbnails and catalog lost, the vectors kept: the picture that now gets the name another
    picture had must get its own vector back, not the other one's."""
    from nearsort.embed import featurize as F

    lib = tmp_path / "lib"
    uniform(lib / "a.png", 250)
    uniform(lib / "b.png", 60)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    F.featurize(out, model=LITE0, device="cpu", **QUIET)
    row_of, name_of_src = {}, {}
    with Catalog.open(out, write=False) as cat:
        for p, name, row in cat.execute(
                "SELECT s.path, t.name, e.row FROM sources s JOIN originals o ON o.id=s.original_id "
                "JOIN thumbs t ON t.id=o.thumb_id JOIN embeddings e ON e.thumb_id=t.id"):
            row_of[bytes(p).decode()], name_of_src[bytes(p).decode()] = row, name
    assert sorted(name_of_src.values()) == [UNIFORM, UNIFORM + "_2"]
    second = next(p for p, n in name_of_src.items() if n == UNIFORM + "_2")
    first = next(p for p in name_of_src if p != second)
    for t in all_thumbs(out):
        t.unlink()
    _drop_catalog(out)
    Path(first).unlink()
    resize(lib, out, workers=1)  # the second picture is alone now: it is named UNIFORM
    assert [t.stem for t in all_thumbs(out)] == [UNIFORM]
    _drop_catalog(out)
    assert rebuild(out).vectors == {LITE0: 1}
    with Catalog.open(out, write=False) as cat:
        (row,) = cat.execute("SELECT row FROM embeddings").fetchone()
    assert row == row_of[second] != row_of[first]


def test_names_do_not_depend_on_the_number_of_workers_or_their_timing(tmp_path):
    """Which '_n' name a uniform frame gets depends on the frames of its size met before it: results
    are applied in the scan's order, so one worker and three (one held up by a slow first file)
    give every file the same thumbnail name."""
    lib = tmp_path / "lib"
    rng = np.random.default_rng(0)
    # sorted first and slow to decode: its worker's queued frames finish after the other workers'
    Image.fromarray(rng.integers(0, 256, (2400, 2400, 3), dtype=np.uint8)).save(lib.mkdir() or lib / "a_slow.png")
    for i, v in enumerate(range(10, 250, 20)):
        uniform(lib / f"f{i:02d}.png", v)
        if i % 3 == 0:  # a copy of the frame (other bytes), which must join its own frame's name
            uniform(lib / f"f{i:02d}_copy.jpg", v)
    names = []
    for workers in (1, 3):
        out = tmp_path / f"thumbs{workers}"
        resize(lib, out, workers=workers)
        names.append({Path(src).name: name for src, (name, _) in thumbs_by_source(out).items()})
    assert names[0] == names[1]
    assert len({n for n in names[0].values() if n.startswith(UNIFORM)}) == 12
    assert all(names[0][f"f{i:02d}_copy.jpg"] == names[0][f"f{i:02d}.png"] for i in range(0, 12, 3))


def test_a_copy_joins_its_own_frame_not_the_nearly_identical_one_found_first(tmp_path):
    """Two frames of a burst a tenth of a second apart (their EXIF says so: two names) differ by a
    part of the scene that moved a pixel; a coarse, EXIF-stripped re-encode of the second frame
    agrees with both frames' thumbnails. It is a copy of the second, the one it moves least from,
    not of the first, which the scan found first (issue 8: a q40 copy of a video frame had joined
    the frame two before it, and dupes then grouped two different frames as copies)."""
    lib = tmp_path / "lib"
    lib.mkdir()
    im = Image.open(SAMPLES / "darknet__dog.jpg").convert("RGB")
    w, h = im.size
    box = (w * 3 // 8, h * 3 // 8, w * 5 // 8, h * 5 // 8)
    second = im.copy()  # a centre part of the scene one pixel to the right
    second.paste(im.transform(im.size, Image.AFFINE, (1, 0, -1, 0, 1, 0), Image.BICUBIC).crop(box), box[:2])
    im.save(lib / "a_burst-1.jpg", quality=92, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", "120"))
    second.save(lib / "b_burst-2.jpg", quality=92, exif=camera_exif("EOS R6", "2024:05:01 10:00:00", "220"))
    second.save(lib / "c_burst-2-copy.jpg", quality=50)  # no EXIF: nothing but pixels to go by
    out = tmp_path / "thumbs"
    resize(lib, out)
    names = {Path(src).name: name for src, (name, _) in thumbs_by_source(out).items()}
    assert names["a_burst-1.jpg"] != names["b_burst-2.jpg"]
    assert names["c_burst-2-copy.jpg"] == names["b_burst-2.jpg"]
