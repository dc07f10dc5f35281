"""refresh / undo / tags (nearsort.refresh), on real files built by nearsort.ingest.resize.resize."""
from __future__ import annotations

import errno
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nearsort import journal
from nearsort import refresh as rename
from nearsort.store import queries, thumbmeta
from nearsort.store.catalog import Catalog, catalog_path
from nearsort.ingest.resize import resize
from nearsort.store.sync import iter_thumb_files
from nearsort.ingest.thumbs import NAME_RE, parse_thumb_filename

WEEK_DIR = re.compile(r"^\d{4}/W\d{2}$")
DOUBLE_PREFIX = re.compile(r"^\d+_\d+_")


# ----------------------------------------------------------------------------- helpers
def _make_images(src: Path, n: int, seed: int, exif_every: int = 0) -> None:
    """n distinct small noise images, source mtimes spread over ~10 weeks, a few with EXIF dates."""
    src.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = time.time() - 400 * 86400
    for i in range(n):
        w, h = int(rng.integers(16, 48)), int(rng.integers(16, 48))
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        if exif_every and i % exif_every == 0:
            p = src / f"e{i:04d}.jpg"
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = f"2019:0{1 + i % 9}:1{i % 10} 10:00:00"
            img.save(p, quality=90, exif=exif)
        else:
            p = src / f"i{i:04d}.png"
            img.save(p)
        t = base + (i % 10) * 7 * 86400
        os.utime(p, (t, t))


def _write_ranks(root: Path, ordering: str = "similarity:test", seed: int = 1, big_jump_at=()) -> list[int]:
    """A random chain over all thumbnails; returns thumb ids in chain order."""
    rng = random.Random(seed)
    with Catalog.open(root) as cat:
        ids = [r[0] for r in cat.execute("SELECT id FROM thumbs ORDER BY id")]
        rng.shuffle(ids)
        rows = []
        for i, tid in enumerate(ids):
            jump = 0.0 if i == 0 else (50.0 if i in big_jump_at else rng.random())
            rows.append((ordering, tid, i, jump))
        with cat.tx() as c:
            c.execute("DELETE FROM ranks WHERE ordering=?", (ordering,))
            c.executemany("INSERT INTO ranks(ordering, thumb_id, rank, jump) VALUES(?,?,?,?)", rows)
    return ids


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """relpath -> (size, mtime_ns) of every file below root except the catalog folder."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".nearsort"]
        for f in filenames:
            p = Path(dirpath) / f
            st = p.stat()
            out[p.relative_to(root).as_posix()] = (st.st_size, st.st_mtime_ns)
    return out


def _dirs(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".nearsort"]
        for d in dirnames:
            out.add((Path(dirpath) / d).relative_to(root).as_posix())
    return out


def _catalog_rows(root: Path) -> dict[str, list]:
    conn = sqlite3.connect(catalog_path(root))
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("thumbs", "tags", "ops", "journal", "ranks")}
    finally:
        conn.close()


def _thumbs(root: Path) -> dict[int, tuple[str, str, int | None]]:
    conn = sqlite3.connect(catalog_path(root))
    try:
        return {i: (n, r, k) for i, n, r, k in conn.execute("SELECT id, name, relpath, rank FROM thumbs")}
    finally:
        conn.close()


def _check_consistent(root: Path) -> None:
    """Every catalog thumbnail exists exactly once, where the catalog says; no stacked prefixes;
    thumbs.rank == the file's prefix; no leftover part/temp files."""
    th = _thumbs(root)
    names = {}
    for rel, name, _rank in iter_thumb_files(root):
        names.setdefault(name, []).append(rel)
    for name, rel, rank in th.values():
        assert names.get(name) == [rel], (name, names.get(name), rel)
        assert parse_thumb_filename(rel.rsplit("/", 1)[-1])[1] == rank
    assert len(names) == len(th)
    for rel in _files(root):
        base = rel.rsplit("/", 1)[-1]
        assert not DOUBLE_PREFIX.match(base), rel
        assert ".nearsort-part" not in base and ".nearsort-tmp" not in base, rel
        assert NAME_RE.match(base), rel


def _chain_names(root: Path, ordering: str = "similarity:test") -> list[str]:
    conn = sqlite3.connect(catalog_path(root))
    try:
        return [r[0] for r in conn.execute(
            "SELECT t.name FROM ranks r JOIN thumbs t ON t.id=r.thumb_id WHERE r.ordering=? ORDER BY r.rank",
            (ordering,))]
    finally:
        conn.close()


def _sorted_names(root: Path, full_path: bool = False) -> list[str]:
    rels = [rel for rel, _, _ in iter_thumb_files(root)]
    rels.sort(key=(lambda r: r) if full_path else (lambda r: r.rsplit("/", 1)[-1]))
    return [parse_thumb_filename(r.rsplit("/", 1)[-1])[0] for r in rels]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("lib")
    _make_images(d / "src", 30, seed=7, exif_every=10)
    resize(d / "src", d / "thumbs", size=32, workers=2)
    return d / "thumbs"


@pytest.fixture
def lib(base_lib, tmp_path) -> Path:
    root = tmp_path / "thumbs"
    shutil.copytree(base_lib, root)
    return root


# ----------------------------------------------------------------------------- unit tests
def test_folder_tags_and_generated_dirs():
    assert rename.folder_tags("2019/W05/1x1_0000000000000000.jpg") == []
    assert rename.folder_tags("ab/cd/x.jpg") == []
    assert rename.folder_tags("p0003/x.jpg") == []
    assert rename.folder_tags("x.jpg") == []
    assert rename.folder_tags("cats/x.jpg") == ["cats"]
    assert rename.folder_tags("trips/2019 rome/x.jpg") == ["trips", "2019 rome"]
    assert rename.folder_tags("trips/2019/W05/x.jpg") == ["trips"]
    assert rename.folder_tags("p0001/ dogs /x.jpg") == ["dogs"]
    assert rename.folder_tags(".Trash/x.jpg") == []
    assert rename.folder_tags("2019/x.jpg") == ["2019"]
    assert rename.folder_tags("Cafe\u0301/x.jpg") == ["Caf\u00e9"]  # NFD (macOS) -> NFC
    for d in ("2019", "2019/W05", "ab", "ab/cd", "p0001", "p12345"):
        assert rename.is_generated_dir(d), d
    for d in ("cats", "trips/2019", "2019/W05/x", "P0001", "p01", "cats/p0001"):
        assert not rename.is_generated_dir(d), d


def test_greedy_cuts_prefer_big_jumps():
    steps = [0.0] + [0.1] * 99
    steps[37] = 9.0
    steps[70] = 5.0
    starts = rename._greedy_cuts(steps, 50)
    assert starts[:2] == [0, 37]
    bounds = starts + [100]
    assert all(0 < b - a <= 50 for a, b in zip(bounds, bounds[1:]))


def test_move_file_never_overwrites(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "sub" / "b.jpg"
    a.write_bytes(b"A")
    b.parent.mkdir()
    b.write_bytes(b"B")
    with pytest.raises(FileExistsError):
        journal.move_file(str(a), str(b))
    assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
    with pytest.raises(FileNotFoundError):
        journal.move_file(str(tmp_path / "nope"), str(tmp_path / "x"))
    journal.move_file(str(a), str(tmp_path / "new" / "dir" / "a.jpg"))
    assert not a.exists() and (tmp_path / "new" / "dir" / "a.jpg").read_bytes() == b"A"


def test_move_file_across_filesystems(tmp_path, monkeypatch):
    src = tmp_path / "orig.raw"
    data = os.urandom(200_000)
    src.write_bytes(data)
    os.utime(src, ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))
    # simulated EXDEV (link and rename both refuse, as across mounts)
    def exdev(*a, **k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")
    with monkeypatch.context() as m:
        m.setattr(os, "link", exdev)
        m.setattr(os, "rename", lambda s, d, _r=os.rename: exdev() if "nearsort-part" not in str(s) else _r(s, d))
        dst = tmp_path / "q" / "orig.raw"
        journal.move_file(str(src), str(dst))
    assert not src.exists() and dst.read_bytes() == data
    assert dst.stat().st_mtime_ns == 1_500_000_000_000_000_000
    assert [p.name for p in dst.parent.iterdir()] == ["orig.raw"]
    # a real second filesystem, when there is one
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shm.stat().st_dev != tmp_path.stat().st_dev:
        other = shm / f"nearsort-test-{os.getpid()}"
        try:
            journal.move_file(str(dst), str(other / "orig.raw"))
            assert not dst.exists() and (other / "orig.raw").read_bytes() == data
        finally:
            shutil.rmtree(other, ignore_errors=True)


def test_generic_swap_runs_in_two_phases(tmp_path):
    """A swap (dst of one move = src of another) goes through temp names; undo swaps back."""
    root = tmp_path / "t"
    with Catalog.open(root, create=True) as cat:
        a, b = tmp_path / "a.bin", tmp_path / "b.bin"
        a.write_bytes(b"A")
        b.write_bytes(b"B")
        op = journal.journal_moves(cat, "swap", [("original", 1, str(a), str(b)), ("original", 2, str(b), str(a))])
        n = cat.execute("SELECT count(*) FROM journal WHERE op_id=?", (op,)).fetchone()[0]
        assert n == 4
        res = journal.apply_op(cat, op)
        assert res["state"] == "done" and not res["skipped"]
        assert a.read_bytes() == b"B" and b.read_bytes() == b"A"
        u = journal.undo_last(cat)
        assert u["undone"] == op
        assert a.read_bytes() == b"A" and b.read_bytes() == b"B"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.bin", "t"]
        assert journal.undo_last(cat)["undone"] is None


def test_a_journal_kind_nobody_registered_is_refused_before_anything_moves(tmp_path):
    """The journal knows no kinds: rows of a kind no module registered are never moved with
    guessed handling; a recovery restricted to other kinds leaves that op for whoever knows it."""
    root = tmp_path / "t"
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A")
    with Catalog.open(root, create=True) as cat:
        op = journal.journal_moves(cat, "mystery", [("no-such-kind", None, str(a), str(b))])
        with pytest.raises(rename.RefreshError, match="no-such-kind"):
            journal.apply_op(cat, op)
        assert journal.recover(cat, kinds=("thumb", "original"))["recovered"] == []
        with pytest.raises(rename.RefreshError, match="nothing was moved"):
            journal.undo_last(cat)  # finishing every interrupted op first: refused, clearly
        assert cat.execute("SELECT state FROM ops WHERE id=?", (op,)).fetchone()[0] == "planned"
    assert a.read_bytes() == b"A" and not b.exists()


# ----------------------------------------------------------------------------- refresh
def test_refuses_without_ranks(lib):
    before = _files(lib)
    with pytest.raises(rename.RefreshError, match="nearsort analyze"):
        rename.refresh_names(lib)
    assert _files(lib) == before


def test_flat_prefix_and_sort_order(lib):
    _write_ranks(lib)
    folders = {n: r.rsplit("/", 1)[0] for n, r, _ in _thumbs(lib).values()}
    s = rename.refresh_names(lib, layout="flat")
    assert s.moved == 30 and s.ordering == "similarity:test" and not s.skipped
    _check_consistent(lib)
    assert _sorted_names(lib) == _chain_names(lib)  # plain name sort == chain order
    for name, rel, rank in _thumbs(lib).values():
        assert rel.rsplit("/", 1)[0] == folders[name]  # flat: same folder
        assert re.match(r"^\d{2}_", rel.rsplit("/", 1)[-1])  # 30 thumbnails -> 2 digits
        assert 1 <= rank <= 30
    # nothing to do the second time: no op recorded
    again = rename.refresh_names(lib, layout="flat")
    assert again.moved == 0 and again.op_id is None


def test_rerefresh_replaces_prefix_and_picks_latest_ordering(lib):
    _write_ranks(lib, "similarity:a", seed=1)
    rename.refresh_names(lib, layout="flat")
    _write_ranks(lib, "similarity:b", seed=2)  # written last -> the default
    s = rename.refresh_names(lib, layout="flat")
    assert s.ordering == "similarity:b"
    _check_consistent(lib)
    assert _sorted_names(lib) == _chain_names(lib, "similarity:b")
    s = rename.refresh_names(lib, layout="flat", ordering="a")  # explicit (short or full name)
    assert s.ordering == "similarity:a"
    _check_consistent(lib)
    assert _sorted_names(lib) == _chain_names(lib, "similarity:a")
    with pytest.raises(rename.RefreshError, match="available"):
        rename.refresh_names(lib, ordering="nope")
    _write_ranks(lib, "date", seed=3)  # not a similarity ordering: not the default ...
    assert rename.refresh_names(lib, layout="flat").ordering == "similarity:b"
    with Catalog.open(lib) as cat:  # ... unless analyze says it is the latest
        with cat.tx():
            queries.set_meta(cat, "last_ordering", "date")
    assert rename.refresh_names(lib, layout="flat").ordering == "date"
    _check_consistent(lib)
    assert _sorted_names(lib) == _chain_names(lib, "date")


def test_report_shows_the_chain_refresh_applies(lib, tmp_path):
    """One ordering rule: with no analyze record (meta.last_ordering), refresh and the report both
    take the similarity ordering written last, not the alphabetically last one."""
    from nearsort.report import build as R

    _write_ranks(lib, "similarity:zz", seed=1)
    _write_ranks(lib, "similarity:aa", seed=2)  # written last, first by name
    _write_ranks(lib, "date", seed=3)           # not a similarity ordering: never the default
    s = rename.refresh_names(lib, layout="flat")
    assert s.ordering == "similarity:aa"
    assert _sorted_names(lib) == _chain_names(lib, "similarity:aa")
    assert R.write_report(lib, tmp_path / "r1.html").ordering == "similarity:aa"
    _write_ranks(lib, "similarity:zz", seed=4)  # analyzed again: now the newest
    assert rename.refresh_names(lib, layout="flat").ordering == "similarity:zz"
    assert R.write_report(lib, tmp_path / "r2.html").ordering == "similarity:zz"
    assert R.write_report(lib, tmp_path / "r3.html", ordering="aa").ordering == "similarity:aa"


def test_pages_layout_respects_per_page_and_cuts_at_jumps(lib):
    _write_ranks(lib, big_jump_at=(6,))
    s = rename.refresh_names(lib, per_page=7)
    _check_consistent(lib)
    pages: dict[str, list[int]] = {}
    for _, rel, rank in _thumbs(lib).values():
        folder, base = rel.split("/")
        assert re.match(r"^p\d{4}$", folder)
        pages.setdefault(folder, []).append(rank)
    assert len(pages) == s.pages >= 5
    assert sorted(pages) == [f"p{i:04d}" for i in range(1, len(pages) + 1)]
    ranks_in_order = []
    for folder in sorted(pages):
        rs = sorted(pages[folder])
        assert len(rs) <= 7 and rs == list(range(rs[0], rs[-1] + 1))  # consecutive stretch
        ranks_in_order += rs
    assert ranks_in_order == list(range(1, 31))
    assert sorted(pages["p0001"]) == list(range(1, 7))  # the big jump before rank 7 starts page 2
    assert _sorted_names(lib, full_path=True) == _chain_names(lib)
    assert _dirs(lib) == set(pages)  # the emptied week folders are gone


def test_reset_restores_plain_names_and_week_layout(lib):
    before = _files(lib)
    assert all(WEEK_DIR.match(r.rsplit("/", 1)[0]) for r in before)
    _write_ranks(lib)
    rename.refresh_names(lib, per_page=8)
    s = rename.refresh_names(lib, reset=True)
    assert s.kind == "reset"
    _check_consistent(lib)
    assert set(_files(lib)) == set(before)
    assert all(r is None for _, _, r in _thumbs(lib).values())
    assert not any(d.startswith("p0") for d in _dirs(lib))
    # reset + flat: strip prefixes in place
    rename.refresh_names(lib, layout="flat")
    rename.refresh_names(lib, reset=True, layout="flat")
    assert set(_files(lib)) == set(before)


def test_dry_run_changes_nothing(lib):
    _write_ranks(lib)
    (lib / "cats").mkdir()
    first = sorted(_files(lib))[0]
    os.rename(lib / first, lib / "cats" / first.rsplit("/", 1)[-1])
    files, dirs, rows = _files(lib), _dirs(lib), _catalog_rows(lib)
    s = rename.refresh_names(lib, dry_run=True, per_page=10)
    assert s.dry_run and s.op_id is None and s.tags_added == 1
    assert len(s.plan) == 30
    assert all(new.startswith("p000") and old != new for old, new in s.plan)
    assert _files(lib) == files and _dirs(lib) == dirs and _catalog_rows(lib) == rows
    s = rename.refresh_names(lib, dry_run=True, reset=True)
    assert [old for old, _ in s.plan] == ["cats/" + first.rsplit("/", 1)[-1]]
    assert _files(lib) == files and _catalog_rows(lib) == rows


def test_user_folders_become_tags_before_moving(lib):
    _write_ranks(lib)
    rels = sorted(_files(lib))
    placed = {"cats": rels[0:3], "trips/2019 rome": rels[3:5], "trips/2019/W05": rels[5:6]}
    for folder, items in placed.items():
        (lib / folder).mkdir(parents=True, exist_ok=True)
        for r in items:
            os.rename(lib / r, lib / folder / r.rsplit("/", 1)[-1])
    s = rename.refresh_names(lib, per_page=10)
    assert s.tags_added == 3 + 2 * 2 + 1
    _check_consistent(lib)
    assert rename.list_tags(lib).tags == {"2019 rome": 2, "cats": 3, "trips": 3}
    th = {n: (rel, tid) for tid, (n, rel, _) in _thumbs(lib).items()}
    for r in placed["cats"]:
        name = parse_thumb_filename(r.rsplit("/", 1)[-1])[0]
        rel, _ = th[name]
        assert rel.startswith("p000")  # moved into a page ...
        assert thumbmeta.read(lib / rel)["tags"] == ["cats"]  # ... carrying its tag
    assert (lib / "cats").is_dir() and not any((lib / "cats").iterdir())  # a user's folder stays
    # tags are kept forever: after reset and another refresh
    rename.refresh_names(lib, reset=True)
    rename.refresh_names(lib, layout="flat")
    assert rename.list_tags(lib).tags == {"2019 rome": 2, "cats": 3, "trips": 3}
    # a folder made later shows up in `tags` without a refresh
    some = sorted(_files(lib))[-1]
    (lib / "dogs").mkdir()
    os.rename(lib / some, lib / "dogs" / some.rsplit("/", 1)[-1])
    assert rename.list_tags(lib).tags["dogs"] == 1


def test_undo_restores_exact_previous_tree(lib):
    _write_ranks(lib)
    (lib / "cats").mkdir()
    for r in sorted(_files(lib))[:4]:
        os.rename(lib / r, lib / "cats" / r.rsplit("/", 1)[-1])
    rename.list_tags(lib)  # tags (and their embedded metadata) settle before the snapshot
    files0, dirs0, th0 = _files(lib), _dirs(lib), _thumbs(lib)
    rename.refresh_names(lib, per_page=9)
    files1, th1 = _files(lib), _thumbs(lib)
    _write_ranks(lib, seed=5)
    rename.refresh_names(lib, layout="flat")
    assert _files(lib).keys() != files1.keys()
    u = rename.undo(lib)
    assert u.undone_kind == "refresh" and u.moved == 30 and not u.left
    assert _files(lib) == files1 and _thumbs(lib) == th1
    u = rename.undo(lib)
    assert _files(lib) == files0 and _dirs(lib) == dirs0 and _thumbs(lib) == th0
    assert rename.undo(lib).undone is None  # nothing left: undo is not redo
    with Catalog.open(lib) as cat:
        kinds = [tuple(r) for r in cat.execute("SELECT kind, state FROM ops ORDER BY id")]
    assert kinds == [("refresh", "undone"), ("refresh", "undone"), ("undo", "done"), ("undo", "done")]


def test_undo_leaves_files_the_user_moved_since(lib):
    _write_ranks(lib)
    files0 = _files(lib)
    rename.refresh_names(lib, per_page=10)
    moved = sorted(_files(lib))[0]
    (lib / "keep").mkdir()
    os.rename(lib / moved, lib / "keep" / moved.split("/")[-1])
    u = rename.undo(lib)
    assert u.left == [moved] and u.moved == 29
    _check_consistent(lib)
    assert len(_files(lib)) == len(files0)


def test_recovery_from_lost_marks_and_half_moves(lib):
    """An op applied by hand halfway (marks never written, one link without its unlink) is
    finished by the next refresh."""
    _write_ranks(lib)
    with Catalog.open(lib) as cat:
        moves = rename.plan_refresh(cat, per_page=10)
        op = journal.journal_moves(cat, "refresh", [("thumb", m.thumb_id, m.src, m.dst) for m in moves])
    for i, m in enumerate(moves[:12]):
        dst = lib / m.dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(lib / m.src, dst)
        if i != 11:  # the last one: killed between link and unlink
            os.unlink(lib / m.src)
    s = rename.refresh_names(lib, per_page=10)
    assert s.recovered[0]["op_id"] == op
    assert s.recovered[0]["already"] == 12 and s.recovered[0]["moved"] == 18
    assert s.moved == 0
    _check_consistent(lib)
    assert _sorted_names(lib, full_path=True) == _chain_names(lib)


# ----------------------------------------------------------------------------- kill -9
KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import nearsort.journal as j
    import nearsort.refresh as r
    root, marker, stop_at, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    j.MARK_EVERY = 25           # some marks committed, the latest ones lost
    real = j.move_file
    n = 0
    def move(src, dst):
        global n
        n += 1
        if mode == "random":
            time.sleep(0.002)
        elif n == stop_at:
            if mode == "between":      # hard link made, unlink not yet: both names exist
                os.link(src, dst)
            open(marker, "w").close()
            time.sleep(600)
        return real(src, dst)
    j.move_file = move
    if mode == "random":
        open(marker, "w").close()
    fn = r.undo if len(sys.argv) > 5 else r.refresh_names
    fn(root) if fn is r.undo else fn(root, per_page=40)
""")


@pytest.fixture(scope="module")
def big_lib(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("big")
    _make_images(d / "src", 300, seed=11)
    resize(d / "src", d / "thumbs", size=24, workers=2)
    _write_ranks(d / "thumbs", big_jump_at=(37, 150, 151))
    return d / "thumbs"


def _spawn(root: Path, tmp: Path, stop_at: int, mode: str, undo: bool = False) -> subprocess.Popen:
    marker = tmp / f"marker-{mode}-{stop_at}-{undo}"
    args = [sys.executable, "-c", KILL_SCRIPT, str(root), str(marker), str(stop_at), mode] + (["undo"] if undo else [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not marker.exists():
        if p.poll() is not None:
            raise AssertionError(p.stdout.read().decode())
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.01)
    return p


def _kill(p: subprocess.Popen) -> None:
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    p.stdout.close()


@pytest.mark.parametrize("mode,stop_at,then", [("before", 140, "refresh"), ("between", 90, "undo"),
                                               ("random", 0, "refresh")])
def test_sigkill_mid_refresh_then_recover(big_lib, tmp_path, mode, stop_at, then):
    root = tmp_path / "thumbs"
    shutil.copytree(big_lib, root)
    files0, dirs0, th0 = _files(root), _dirs(root), _thumbs(root)
    p = _spawn(root, tmp_path, stop_at, mode)
    if mode == "random":
        time.sleep(random.Random(stop_at).uniform(0.1, 0.6))  # anywhere: import, plan, journal, moves
    _kill(p)
    if mode != "random":
        assert _files(root) != files0  # really killed half-way
        assert any(r.startswith("p0") for r in _files(root))
    if then == "refresh":
        rename.refresh_names(root, per_page=40)
        _check_consistent(root)
        assert _sorted_names(root, full_path=True) == _chain_names(root)
        assert all(len(r.split("/")) == 2 for _, r, _ in _thumbs(root).values())
    # undo (itself killed once, mid-way) brings back the pre-refresh tree
    p = _spawn(root, tmp_path, 60, "before", undo=True)
    _kill(p)
    u = rename.undo(root)
    _check_consistent(root)
    assert _files(root) == files0 and _dirs(root) == dirs0 and _thumbs(root) == th0
    # either the killed undo was already journaled: this call finished it (roll forward) and
    # reverted nothing more; or it was killed while still finishing the refresh: this call undid it
    assert u.undone_kind == "refresh"
    if then == "refresh":
        assert u.finished_interrupted and u.recovered[-1]["kind"] == "undo"
    else:
        assert not u.finished_interrupted and u.recovered[-1]["kind"] == "refresh"
    with Catalog.open(root) as cat:
        states = [tuple(r) for r in cat.execute("SELECT kind, state FROM ops ORDER BY id")]
    assert states == [("refresh", "undone"), ("undo", "done")]


def test_move_error_stops_cleanly_and_is_resumable(lib, monkeypatch):
    _write_ranks(lib)
    files0 = _files(lib)
    real, n = journal.move_file, [0]

    def failing(src, dst):
        n[0] += 1
        if n[0] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(journal, "move_file", failing)
    with pytest.raises(rename.RefreshError, match="Nothing was lost"):
        rename.refresh_names(lib, per_page=10)
    monkeypatch.setattr(journal, "move_file", real)
    u = rename.undo(lib)  # finishes the interrupted refresh, then reverts it
    assert u.recovered[0]["moved"] == 21 and u.undone_kind == "refresh"
    assert _files(lib) == files0
