"""resize: real files in, thumbnails + catalog out; originals never touched; bad input never fatal."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

from conftest import PY, SAMPLES, make_photo, tree_snapshot
from nearsort import Catalog, CatalogLocked, rebuild, resize
from nearsort.store import queries, thumbmeta
from nearsort.export import export
from nearsort.textsafe import csv_uncell, decode_path
from nearsort.ingest.thumbs import NAME_RE, process_file

NAME = NAME_RE


def all_thumbs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.jpg") if ".nearsort" not in p.parts)


def cli(*args, check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"nearsort {args} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_samples_get_named_sharded_thumbnails_with_metadata(samples_copy, tmp_path):
    before = tree_snapshot(samples_copy)
    out = tmp_path / "thumbs"
    s = resize(samples_copy, out, workers=2)
    n = len(list(SAMPLES.iterdir()))
    assert s.processed == n and s.errors == 0
    thumbs = all_thumbs(out)
    # the re-encoded coffee copy has the same size and perceptual hash: it collapses by name
    assert len(thumbs) == n - 1
    coffee = [thumbmeta.read(t) for t in thumbs if any(
        "coffee" in s["path"] for o in thumbmeta.read(t)["originals"] for s in o["sources"])]
    assert len(coffee) == 1 and len(coffee[0]["originals"]) == 2
    for t in thumbs:
        assert NAME.match(t.name), t.name
        assert t.parent != out, "thumbnails must be in sharded folders, never THUMBS itself"
        with Image.open(t) as im:
            assert max(im.size) <= 256 and im.format == "JPEG"
        meta = thumbmeta.read(t)
        assert meta["name"] == t.stem
        o = meta["originals"][0]
        w, h = t.stem.split("_")[0].split("x")
        assert (o["width"], o["height"]) == (int(w), int(h))
        assert o["phash"] == t.stem.split("_")[1]
        assert len(o["content_hash"]) == 64 and o["sources"][0]["path"].startswith(str(samples_copy))
    # week layout: YYYY/Www
    assert all(t.parent.name.startswith("W") and t.parent.parent.name.isdigit() for t in thumbs)
    # originals only ever read
    assert tree_snapshot(samples_copy) == before
    # EXIF survives into the catalog: the Sony sample has a capture time and a camera
    with Catalog.open(out, write=False) as cat:
        r = cat.execute("SELECT capture_time, make, model FROM originals WHERE make LIKE 'SONY%'").fetchone()
        assert r is not None and r["capture_time"].startswith("20") and r["model"]


def test_rerun_is_incremental_and_changes_are_picked_up(tmp_path):
    lib = tmp_path / "lib"
    for i in range(5):
        make_photo(lib / f"p{i}.jpg", i)
    out = tmp_path / "thumbs"
    assert resize(lib, out, workers=1).processed == 5
    s = resize(lib, out, workers=1)
    assert s.processed == 0 and s.unchanged == 5
    make_photo(lib / "p0.jpg", 100)  # content changed
    os.utime(lib / "p0.jpg", ns=(1, 1_000_000_000))
    make_photo(lib / "new.png", 7, fmt="PNG")
    (lib / "p4.jpg").unlink()
    s = resize(lib, out, workers=1)
    assert s.processed == 2 and s.unchanged == 3 and s.missing == 1
    with Catalog.open(out, write=False) as cat:
        st = dict(cat.execute("SELECT status, count(*) FROM sources GROUP BY status").fetchall())
    assert st == {"ok": 5, "missing": 1}


def test_exact_copies_collapse_and_catalog_keeps_every_path(tmp_path):
    lib = tmp_path / "lib"
    a = make_photo(lib / "a" / "one.jpg", 1, size=(1200, 800))
    (lib / "b" / "c").mkdir(parents=True)
    shutil.copy2(a, lib / "b" / "c" / "copy of one.jpg")
    shutil.copy2(a, lib / "b" / "again.JPG")
    make_photo(lib / "other.jpg", 2)
    out = tmp_path / "thumbs"
    s = resize(lib, out, workers=2)
    assert s.processed == 4 and s.new_thumbnails == 2
    thumbs = all_thumbs(out)
    assert len(thumbs) == 2
    big = [t for t in thumbs if t.name.startswith("1200x800_")][0]
    meta = thumbmeta.read(big)
    assert len(meta["originals"]) == 1
    paths = sorted(s["path"] for s in meta["originals"][0]["sources"])
    assert paths == sorted(str(p) for p in [lib / "a/one.jpg", lib / "b/c/copy of one.jpg", lib / "b/again.JPG"])


def test_same_name_from_different_bytes_shares_the_thumbnail(tmp_path):
    """EXIF-stripped / re-saved copy at the same size and phash: one thumbnail, two originals."""
    lib = tmp_path / "lib"
    a = make_photo(lib / "a.png", 3, fmt="PNG")
    Image.open(a).save(lib / "b.png", compress_level=1)  # same pixels, other bytes
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    thumbs = all_thumbs(out)
    assert len(thumbs) == 1
    meta = thumbmeta.read(thumbs[0])
    assert len(meta["originals"]) == 2


def test_rebuild_from_thumbnails_reproduces_the_export(samples_copy, tmp_path):
    lib = samples_copy
    shutil.copy2(lib / "darknet__dog.jpg", lib / "dog copy.jpg")
    out = tmp_path / "thumbs"
    resize(lib, out, workers=2)
    export(out, csv_path=str(tmp_path / "a.csv"), json_path=str(tmp_path / "a.json"))
    (out / ".nearsort" / "catalog.sqlite").unlink()
    for side in ("catalog.sqlite-wal", "catalog.sqlite-shm"):
        (out / ".nearsort" / side).unlink(missing_ok=True)
    s = rebuild(out)
    assert s.imported == len(all_thumbs(out))
    export(out, csv_path=str(tmp_path / "b.csv"), json_path=str(tmp_path / "b.json"))
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    rows = (tmp_path / "a.csv").read_text().splitlines()
    assert len(rows) == 1 + len(list(lib.iterdir()))


def test_rebuild_keeps_old_catalog_aside(tmp_path):
    lib = tmp_path / "lib"
    make_photo(lib / "x.jpg", 1)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    s = rebuild(out)
    assert s.previous_catalog and Path(s.previous_catalog).exists()
    assert s.sources == 1


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_bad_inputs_are_recorded_and_never_stop_the_run(tmp_path):
    lib = tmp_path / "lib"
    for i in range(3):
        make_photo(lib / f"good{i}.jpg", i)
    (lib / "empty.jpg").write_bytes(b"")
    (lib / "notes.jpg").write_text("this is a text file, not a photo\n")
    full = make_photo(tmp_path / "full.jpg", 9, size=(800, 600)).read_bytes()
    (lib / "truncated.jpg").write_bytes(full[: len(full) // 3])
    _png_header_only(lib / "bomb.png", 40000, 40000)  # 1.6 gigapixel claim
    (lib / "broken-link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (lib / "loop").symlink_to(lib)  # symlink loop
    long_name = "x" * 240 + ".jpg"
    make_photo(lib / long_name, 11)
    weird = os.fsencode(str(lib)) + b"/caf\xe9-\xff.jpg"  # not UTF-8
    shutil.copy(make_photo(tmp_path / "w.jpg", 12), weird)
    (lib / "readme.txt").write_text("not an image extension: skipped silently")
    out = tmp_path / "thumbs"
    s = resize(lib, out, workers=2)
    assert s.processed == 5, s  # 3 good + long name + non-UTF-8 name
    errs = {os.path.basename(e["path"]): e["error"] for e in s.error_samples}
    assert "empty" in errs["empty.jpg"]
    assert "not an image" in errs["notes.jpg"]
    assert "truncated" in errs["truncated.jpg"] or "corrupt" in errs["truncated.jpg"]
    assert "bomb" in errs["bomb.png"]
    assert "broken symbolic link" in errs["broken-link.jpg"]
    assert s.errors == 5
    assert s.skipped_other_files == 1
    # the loop was not followed: each good file appears once
    with Catalog.open(out, write=False) as cat:
        paths = [bytes(r[0]) for r in cat.execute("SELECT path FROM sources")]
        assert len(paths) == len(set(paths)) == 10
        assert weird in paths
    # `nearsort errors` lists them with reasons
    r = cli("errors", out, "--json")
    listed = {os.path.basename(e["path"]) for e in json.loads(r.stdout)}
    assert {"empty.jpg", "notes.jpg", "truncated.jpg", "bomb.png", "broken-link.jpg"} <= listed
    # export with a non-UTF-8 name: valid UTF-8, and the exact bytes come back (textsafe.decode_path)
    export(out, csv_path=str(tmp_path / "e.csv"))
    with open(tmp_path / "e.csv", encoding="utf-8", newline="") as fh:
        exported = [os.fsencode(decode_path(csv_uncell(r["source_path"]))) for r in csv.DictReader(fh)]
    assert weird in exported


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file; permission errors cannot be provoked")
def test_unreadable_file_is_reported(tmp_path):
    lib = tmp_path / "lib"
    p = make_photo(lib / "secret.jpg", 1)
    p.chmod(0)
    try:
        s = resize(lib, tmp_path / "thumbs", workers=1)
    finally:
        p.chmod(0o644)
    assert s.errors == 1 and "permission" in s.error_samples[0]["error"]


def test_vanished_file_is_reported(tmp_path):
    r = process_file(str(tmp_path / "gone.jpg"))
    assert r.error == "vanished during the scan"


def test_exif_orientation_is_applied(tmp_path):
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 CW to display
    p = make_photo(tmp_path / "rot.jpg", 5, size=(600, 400), exif=ex)
    r = process_file(str(p))
    assert (r.width, r.height) == (400, 600)
    assert r.th > r.tw  # the thumbnail is upright (portrait)


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, monkeypatch):
    p = make_photo(tmp_path / "big.jpg", 6, size=(4000, 3000), quality=90)
    seen = {}
    orig_load = Image.Image.load

    def spy(self):
        if getattr(self, "format", None) == "JPEG":
            seen["size"] = self.size
        return orig_load(self)

    monkeypatch.setattr(Image.Image, "load", spy)
    r = process_file(str(p))
    assert (r.width, r.height) == (4000, 3000) and max(r.tw, r.th) == 256
    assert seen["size"][0] <= 4000 // 8, f"decoded at {seen['size']}, expected 1/8 scale"


def test_formats_png_webp_tiff_bmp_gif_heic(tmp_path):
    lib = tmp_path / "lib"
    make_photo(lib / "a.png", 1, fmt="PNG")
    make_photo(lib / "b.webp", 2, fmt="WEBP")
    make_photo(lib / "c.tiff", 3, fmt="TIFF")
    make_photo(lib / "d.bmp", 4, fmt="BMP")
    g = make_photo(tmp_path / "g.png", 5, fmt="PNG")
    Image.open(g).convert("P").save(lib / "e.gif", save_all=True,
                                     append_images=[Image.new("P", (640, 480))], duration=100)
    expected = 5
    try:
        import pillow_heif  # noqa: F401

        make_photo(lib / "f.heic", 6, fmt="HEIF")
        expected += 1
    except Exception:
        pass
    s = resize(lib, tmp_path / "thumbs", workers=2)
    assert s.errors == 0, s.error_samples
    assert s.processed == expected


def test_special_files_from_shared_bench(shared_bench, tmp_path):
    """Real CR2 RAW, truncated HEICs, AVIF, EXIF-only JPEG stubs."""
    s = resize(shared_bench / "special", tmp_path / "thumbs", workers=2)
    errs = {os.path.basename(e["path"]): e["error"] for e in s.error_samples}
    assert "golang-go4-dev__park.heic" in errs and "golang-go4-dev__rotate.heic" in errs
    assert not any(k.endswith(".CR2") for k in errs), errs
    assert not any(k.endswith(".avif") for k in errs), errs
    with Catalog.open(tmp_path / "thumbs", write=False) as cat:
        raw = cat.execute("SELECT width, height, format FROM originals WHERE format='RAW'").fetchone()
    assert raw is not None and max(raw[0], raw[1]) >= 3000
    stubs = [k for k in errs if "goexif" in k]
    assert len(stubs) == 4


def test_user_moved_and_deleted_thumbnails_are_found_or_remade(tmp_path):
    lib = tmp_path / "lib"
    for i in range(3):
        make_photo(lib / f"p{i}.jpg", i)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    t0, t1 = all_thumbs(out)[:2]
    (out / "cats").mkdir()
    moved = out / "cats" / t0.name
    t0.rename(moved)
    t1.unlink()
    s = resize(lib, out, workers=1)
    assert s.new_thumbnails == 0
    assert moved.exists() and not t0.exists()
    assert t1.exists(), "a deleted thumbnail is made again"
    with Catalog.open(out, write=False) as cat:
        rel = cat.execute("SELECT relpath FROM thumbs WHERE name=?", (moved.stem,)).fetchone()[0]
    assert rel == f"cats/{moved.name}"


def test_hash_layout(tmp_path):
    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", 1)
    out = tmp_path / "thumbs"
    resize(lib, out, layout="hash", workers=1)
    (t,) = all_thumbs(out)
    ph = t.stem.split("_")[1]
    assert t.parent.relative_to(out).as_posix() == f"{ph[:2]}/{ph[2:4]}"


def test_second_writer_is_refused(tmp_path):
    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", 1)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    with Catalog.open(out):
        with pytest.raises(CatalogLocked):
            Catalog.open(out)
        r = cli("resize", lib, "--out", out, check=False)
        assert r.returncode == 2 and "another nearsort process" in r.stderr


def test_metadata_segments_carry_any_size_and_any_name(tmp_path):
    p = make_photo(tmp_path / "t.jpg", 1, size=(64, 64))
    paths = [os.fsdecode(b"/nas/\xff\xfe/" + str(i).encode() * 50) for i in range(2000)]
    meta = {"v": 1, "name": "x", "originals": [{"sources": [{"path": q} for q in paths]}]}
    data = thumbmeta.embed(p.read_bytes(), meta)
    assert len(data) > 100_000  # several COM segments
    (tmp_path / "m.jpg").write_bytes(data)
    back = thumbmeta.read(tmp_path / "m.jpg")
    assert back == meta
    assert os.fsencode(back["originals"][0]["sources"][0]["path"]).startswith(b"/nas/\xff\xfe/")
    with Image.open(tmp_path / "m.jpg") as im:  # still a valid JPEG
        im.load()
    # replacing keeps exactly one copy
    again = thumbmeta.embed(data, {"v": 1, "name": "y"})
    assert thumbmeta.extract(again) == {"v": 1, "name": "y"} and len(again) < 10_000


def test_ctrl_c_keeps_work_and_next_run_continues(tmp_path):
    lib = tmp_path / "lib"
    one = make_photo(tmp_path / "one.jpg", 1, size=(2000, 1500), quality=95)
    n = 200
    for i in range(n):  # byte-identical copies still cost a read + hash + decode each
        os.link(one, lib / f"p{i:03d}.jpg") if i else (lib.mkdir(), os.link(one, lib / "p000.jpg"))
    out = tmp_path / "thumbs"
    env = dict(os.environ, NEARSORT_COMMIT_EVERY="1")
    proc = subprocess.Popen([PY, "-m", "nearsort.cli", "resize", str(lib), "--out", str(out), "-j", "1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    db = out / ".nearsort" / "catalog.sqlite"
    deadline = time.time() + 60
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            with sqlite3.connect(db) as c:
                if c.execute("SELECT count(*) FROM sources").fetchone()[0] >= 3:
                    break
        except sqlite3.Error:
            pass
    proc.send_signal(signal.SIGINT)
    so, se = proc.communicate(timeout=60)
    assert proc.returncode == 130, se
    s = json.loads(so)
    assert s["status"] == "interrupted" and 0 < s["processed"] < n
    with Catalog.open(out) as cat:
        assert cat.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for (rel,) in cat.execute("SELECT relpath FROM thumbs"):
            assert (out / rel).exists()
    s2 = resize(lib, out, workers=2)
    assert s2.unchanged == s["processed"] and s2.processed == n - s["processed"]
    assert len(all_thumbs(out)) == 1
    with Catalog.open(out, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == n


def test_cli_json_summary_and_export(tmp_path):
    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", 1)
    out = tmp_path / "thumbs"
    r = cli("resize", lib, "--out", out, "--json")
    s = json.loads(r.stdout)
    assert s["processed"] == 1 and s["new_thumbnails"] == 1
    r = cli("export", out, "--csv", "-")
    header, row = r.stdout.strip().splitlines()
    assert header.startswith("source_path,thumb_path,width,height,content_hash,phash,capture_time")
    assert row.startswith(str(lib / "a.jpg"))


def test_missing_source_folder_is_a_clear_error(tmp_path):
    r = cli("resize", tmp_path / "nope", "--out", tmp_path / "t", check=False)
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli("export", tmp_path / "t2", "--csv", "-", check=False)
    assert r.returncode == 2 and "no nearsort catalog" in r.stderr


def test_truncated_heic_is_reported_not_fatal(tmp_path):
    pytest.importorskip("pillow_heif")
    lib = tmp_path / "lib"
    full = make_photo(tmp_path / "full.heic", 1, fmt="HEIF").read_bytes()
    lib.mkdir()
    (lib / "cut.heic").write_bytes(full[: len(full) // 2])
    make_photo(lib / "ok.jpg", 2)
    s = resize(lib, tmp_path / "thumbs", workers=1)
    assert s.processed == 1 and s.errors == 1
    assert s.error_samples[0]["path"].endswith("cut.heic")


def test_catalog_schema_version_and_refusal_of_newer(tmp_path):
    from nearsort.store.catalog import SCHEMA_VERSION, CatalogError

    lib = tmp_path / "lib"
    make_photo(lib / "a.jpg", 1)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    db = out / ".nearsort" / "catalog.sqlite"
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(CatalogError, match="newer"):
        Catalog.open(out)
