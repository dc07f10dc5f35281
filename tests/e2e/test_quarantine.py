"""Quarantine that trusts nothing (issue 8): keepers and movers re-hashed, the library = the
folders resize scanned (symbolic links resolved), the last copy never moved, interrupted
quarantines and undos finished exactly once; sources gone from SRC marked 'missing'.

Real files, real resize/rebuild, real CLI subprocesses, real SIGKILL."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import PY, make_photo, tree_snapshot
from nearsort.dupes import group as D
from nearsort.dupes import quarantine as DQ
from nearsort import rebuild
from nearsort.store import queries, thumbmeta
from nearsort.store.catalog import Catalog
from nearsort import Interrupted, resize

CFG = D.DupesConfig(use_embeddings=False)
T0 = 1_500_000_000


def _copy(src: Path, dst: Path, t: float) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.utime(dst, (t, t))
    return dst


def _group(src: Path, g: int, copies: int) -> list[Path]:
    """[original (oldest: the keeper), byte-identical copies...] of one distinct photo."""
    orig = make_photo(src / f"g{g}" / "orig.jpg", seed=100 + g, size=(160, 120))
    os.utime(orig, (T0, T0))
    return [orig] + [_copy(orig, src / f"copies{c}" / f"g{g}_copy.jpg", T0 + 86400 * (c + 1))
                     for c in range(copies)]


def _lib(base: Path, groups: int = 2, copies: int = 3):
    src = base / "src"
    paths = [_group(src, g, copies) for g in range(groups)]
    make_photo(src / "misc" / "alone.jpg", seed=7, size=(160, 120))
    thumbs = base / "thumbs"
    resize(src, thumbs, workers=1)
    return src, thumbs, paths


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _group_id(res: D.DupesResult, path: Path) -> int:
    return next(g["id"] for g in res.groups if str(path) in {m["path"] for m in g["members"]})


def _statuses(thumbs: Path) -> dict[str, str]:
    with Catalog.open(thumbs, write=False) as cat:
        return {os.fsdecode(bytes(p)): s for p, s in cat.execute("SELECT path, status FROM sources")}


def _ops(thumbs: Path) -> list[tuple[str, str]]:
    with Catalog.open(thumbs, write=False) as cat:
        return [tuple(r) for r in cat.execute("SELECT kind, state FROM ops ORDER BY id")]


def _in_q(q: Path, p: Path) -> Path:
    return q / str(p).lstrip(os.sep)


def _edit_keeping_stat(p: Path) -> None:
    """Change one byte in the middle; size and mtime stay what the catalog recorded."""
    st = p.stat()
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert p.stat().st_size == st.st_size and p.stat().st_mtime_ns == st.st_mtime_ns


# ----------------------------------------------------------------------------- keeper checks
def test_deleted_keeper_refuses_its_group_with_one_cli_line(tmp_path):
    src, thumbs, P = _lib(tmp_path)
    gid = _group_id(D.find_duplicates(thumbs, CFG), P[0][1])
    P[0][0].unlink()                               # the keeper, after the last resize
    q = tmp_path / "q"
    r = _cli("dupes", thumbs, "--move-to", q)
    assert r.returncode == 0, r.stderr
    refused = [ln for ln in r.stdout.splitlines() if "refused group" in ln]
    assert len(refused) == 1, r.stdout
    assert f"refused group {gid} " in refused[0] and str(P[0][0]) in refused[0] and "missing" in refused[0]
    assert all(p.exists() for p in P[0][1:])       # the last existing copies stay
    assert all(not p.exists() and _in_q(q, p).exists() for p in P[1][1:])  # the other group moved
    assert "Moved 3 files" in r.stdout
    # the summary says so per group, too
    res = DQ.quarantine(thumbs, q, config=CFG, dry_run=True)
    s = res.quarantine
    assert [(g["group"], g["keeper"]) for g in s.refused_groups] == [(_group_id(res, P[0][1]), str(P[0][0]))]
    assert "missing" in s.refused_groups[0]["why"] and s.moves == []


def test_every_copy_gone_but_one_nothing_moves(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=1)
    P[0][0].unlink()                               # the keeper gone: only the copy is left
    res = DQ.quarantine(thumbs, tmp_path / "q", config=CFG)
    s = res.quarantine
    assert s.moved == 0 and len(s.refused_groups) == 1 and P[0][1].exists()


def test_keeper_with_changed_content_but_same_size_and_mtime_is_refused(tmp_path):
    src, thumbs, P = _lib(tmp_path)
    _edit_keeping_stat(P[0][0])
    before = tree_snapshot(src)
    res = DQ.quarantine(thumbs, tmp_path / "q", config=CFG)
    s = res.quarantine
    assert [g["keeper"] for g in s.refused_groups] == [str(P[0][0])]
    assert "changed" in s.refused_groups[0]["why"]
    assert {mv["src"] for mv in s.moves} == {str(p) for p in P[1][1:]}
    now = tree_snapshot(src)
    for p in P[0]:
        k = str(p.relative_to(src))
        assert now[k] == before[k]                 # not one file of the refused group touched


def test_member_with_changed_content_is_not_moved(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=3)
    changed = P[0][2]
    _edit_keeping_stat(changed)
    q = tmp_path / "q"
    res = DQ.quarantine(thumbs, q, config=CFG)
    s = res.quarantine
    assert s.moved == 2 and not s.refused_groups
    assert changed.exists() and not _in_q(q, changed).exists()
    assert [x["path"] for x in s.skipped] == [str(changed)] and "changed" in s.skipped[0]["why"]
    for p in (P[0][1], P[0][3]):
        assert _in_q(q, p).read_bytes() == P[0][0].read_bytes()
    assert _statuses(thumbs)[str(changed)] == "ok"


# ----------------------------------------------------------------------------- where things may go
def test_quarantine_through_a_symlink_into_src_is_refused_with_one_line(tmp_path):
    src, thumbs, P = _lib(tmp_path)
    link = tmp_path / "looks-outside"
    link.symlink_to(src / "copies0", target_is_directory=True)
    before = tree_snapshot(src)
    r = _cli("dupes", thumbs, "--move-to", link / "q")
    assert r.returncode == 2, r.stdout
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: refusing to quarantine into"), r.stderr
    assert "symbolic link" in lines[0] and str(src) in lines[0] and "Traceback" not in r.stderr
    assert tree_snapshot(src) == before
    # the direct path and a symlink to THUMBS are refused the same way
    with pytest.raises(D.DupesError, match="inside"):
        DQ.quarantine(thumbs, src / "copies0" / "q", config=CFG)
    (tmp_path / "th-link").symlink_to(thumbs, target_is_directory=True)
    with pytest.raises(D.DupesError, match="symbolic link"):
        DQ.quarantine(thumbs, tmp_path / "th-link" / "q", config=CFG)


def test_edited_metadata_cannot_make_quarantine_move_files_outside_the_library(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=2)
    elsewhere = tmp_path / "elsewhere"           # not a library folder: resize never scanned it
    twin = _copy(P[0][0], elsewhere / "twin.jpg", T0 + 30 * 86400)      # same bytes, outside
    other = make_photo(elsewhere / "unrelated.jpg", seed=55, size=(160, 120))
    os.utime(other, (T0 + 30 * 86400,) * 2)
    # someone edits the keeper's thumbnail metadata to claim both as more copies
    with Catalog.open(thumbs, write=False) as cat:
        rel = cat.execute("SELECT t.relpath FROM sources s JOIN originals o ON o.id=s.original_id "
                          "JOIN thumbs t ON t.id=o.thumb_id WHERE s.path=?",
                          (os.fsencode(str(P[0][0])),)).fetchone()[0]
    meta = thumbmeta.read(thumbs / rel)
    for f in (twin, other):
        st = f.stat()
        meta["originals"][0]["sources"].append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                "status": "ok"})
    thumbmeta.rewrite(thumbs / rel, meta)
    rebuild(thumbs)
    g = D.find_duplicates(thumbs, CFG).groups[0]
    assert {str(twin), str(other)} <= {m["path"] for m in g["members"]}   # the catalog believes it
    q = tmp_path / "q"
    # a rebuilt catalog does not know the library: nothing can be checked, nothing moves
    with pytest.raises(D.DupesError, match="does not record which folders"):
        DQ.quarantine(thumbs, q, config=CFG)
    resize(src, thumbs, workers=1)                 # now it knows: src is the library
    with Catalog.open(thumbs, write=False) as cat:
        assert queries.source_roots(cat) == [str(src)]
    res = DQ.quarantine(thumbs, q, config=CFG)
    s = res.quarantine
    assert {mv["src"] for mv in s.moves} == {str(p) for p in P[0][1:]}
    why = {x["path"]: x["why"] for x in s.skipped}
    assert "outside the library" in why[str(twin)] and "outside the library" in why[str(other)]
    assert twin.exists() and other.exists() and not _in_q(q, other).exists() and not _in_q(q, twin).exists()


def test_a_symlinked_file_leading_out_of_the_library_is_not_moved(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=1)
    outside = _copy(P[0][0], tmp_path / "elsewhere" / "real.jpg", T0 + 5 * 86400)
    link = src / "links" / "copy-link.jpg"
    link.parent.mkdir()
    link.symlink_to(outside)
    resize(src, thumbs, workers=1)
    q = tmp_path / "q"
    res = DQ.quarantine(thumbs, q, config=CFG)
    s = res.quarantine
    why = {x["path"]: x["why"] for x in s.skipped}
    assert "symbolic links are resolved" in why[str(link)] and str(outside) in why[str(link)]
    assert link.is_symlink() and outside.exists() and [mv["src"] for mv in s.moves] == [str(P[0][1])]


# ----------------------------------------------------------------------------- kill -9
KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    import nearsort.journal as r
    marker, stop_at = sys.argv[1], int(sys.argv[2])
    r.MARK_EVERY = 2            # some marks committed, the latest ones lost
    real = r.move_file
    n = 0
    def move(src, dst):
        global n
        n += 1
        if n == stop_at:        # killed between link and unlink: both names exist
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.link(src, dst)
            open(marker, "w").close()
            time.sleep(600)
        return real(src, dst)
    r.move_file = move
    from nearsort.cli import main
    sys.argv = ["nearsort"] + sys.argv[3:]
    main()
""")


def _killed(tmp: Path, stop_at: int, *args) -> None:
    """Run ``nearsort ARGS`` in a real process; SIGKILL it inside its ``stop_at``-th file move."""
    marker = tmp / f"marker-{stop_at}-{args[0]}"
    p = subprocess.Popen([PY, "-c", KILL_SCRIPT, str(marker), str(stop_at), *map(str, args)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if p.poll() is not None:
            raise AssertionError(p.stdout.read().decode())
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    p.stdout.close()


def test_sigkill_mid_quarantine_rerun_finishes_it_and_one_undo_restores_all(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=2, copies=5)
    movers = [p for g in P for p in g[1:]]
    before = tree_snapshot(src)
    q = tmp_path / "q"
    _killed(tmp_path, 6, "dupes", thumbs, "--move-to", q)
    gone = [p for p in movers if not p.exists()]
    assert 5 <= len(gone) < len(movers)          # really killed half-way (the 6th: two names)
    assert _ops(thumbs) == [("quarantine", "applying")]
    half = tree_snapshot(src)
    r = _cli("dupes", thumbs, "--move-to", q, "--dry-run")   # says so, changes nothing
    assert r.returncode == 0 and "interrupted quarantine (op #1" in r.stdout and "would be finished" in r.stdout
    assert tree_snapshot(src) == half and _ops(thumbs) == [("quarantine", "applying")]

    r = _cli("dupes", thumbs, "--move-to", q)
    assert r.returncode == 0, r.stderr
    assert "Finished an interrupted quarantine: 10 files moved" in r.stdout, r.stdout
    assert "Moved 0 files" not in r.stdout
    assert _ops(thumbs) == [("quarantine", "done")]   # no new quarantine planned
    assert all(not p.exists() and _in_q(q, p).exists() for p in movers)
    st = _statuses(thumbs)
    assert {k for k, v in st.items() if v == "quarantined"} == {str(p) for p in movers}

    r = _cli("undo", thumbs)
    assert r.returncode == 0, r.stderr
    assert tree_snapshot(src) == before            # every file back, byte-identical, same mtime
    assert sorted(os.listdir(q)) == [DQ.MARKER]
    assert _ops(thumbs) == [("quarantine", "undone"), ("undo", "done")]
    assert set(_statuses(thumbs).values()) == {"ok"}


def test_killed_undo_retried_reverts_exactly_one_operation(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=4)
    q = tmp_path / "q"
    assert DQ.quarantine(thumbs, q, config=CFG).quarantine.moved == 4          # quarantine #1
    B = _group(src, 9, 4)
    resize(src, thumbs, workers=1)
    assert DQ.quarantine(thumbs, q, config=CFG).quarantine.moved == 4          # quarantine #2
    b_bytes = B[0].read_bytes()

    _killed(tmp_path, 3, "undo", thumbs)           # undo of #2, killed at its 3rd move
    assert sum(p.exists() for p in B[1:]) == 3   # 2 moved back, the 3rd linked: both names exist
    r = _cli("undo", thumbs)
    assert r.returncode == 0, r.stderr
    assert "Finished the interrupted undo: quarantine #2 is undone (4 files moved back)" in r.stdout, r.stdout
    assert all(p.read_bytes() == b_bytes for p in B[1:])              # #2 fully reverted ...
    assert all(not p.exists() and _in_q(q, p).exists() for p in P[0][1:])  # ... and #1 not touched
    assert _ops(thumbs) == [("quarantine", "done"), ("quarantine", "undone"), ("undo", "done")]

    r = _cli("undo", thumbs)                       # the next undo reverts the one before
    assert "Undone: quarantine #1 (4 files moved back)" in r.stdout, r.stdout
    assert all(p.exists() for p in P[0][1:])


# ----------------------------------------------------------------------------- sources gone from SRC
def test_deleted_source_is_marked_missing_never_keeper_and_ok_when_back(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=2)
    keeper = P[0][0]
    saved = tmp_path / "saved.jpg"
    shutil.move(keeper, saved)
    # an interrupted scan marks nothing
    make_photo(src / "misc" / "new.jpg", seed=8, size=(160, 120))

    def ctrl_c(*_):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        resize(src, thumbs, workers=1, progress=ctrl_c)
    assert _statuses(thumbs)[str(keeper)] == "ok"

    s = resize(src, thumbs, workers=1)
    assert s.missing == 1 and _statuses(thumbs)[str(keeper)] == "missing"
    with Catalog.open(thumbs, write=False) as cat:
        assert queries.counts(cat)["missing"] == 1
        rel = cat.execute("SELECT t.relpath FROM sources s JOIN originals o ON o.id=s.original_id "
                          "JOIN thumbs t ON t.id=o.thumb_id WHERE s.path=?", (os.fsencode(str(keeper)),)).fetchone()[0]
    carried = {x["path"]: x["status"] for o in thumbmeta.read(thumbs / rel)["originals"] for x in o["sources"]}
    assert carried[str(keeper)] == "missing"       # the thumbnail says so too (rebuild keeps it)
    res = D.find_duplicates(thumbs, CFG)
    g = next(g for g in res.groups if str(P[0][1]) in {m["path"] for m in g["members"]})
    assert g["keeper"] != str(keeper) and str(keeper) not in {m["path"] for m in g["members"]}
    assert res.summary["sources"] == 4             # 2 copies + alone + new: the gone file is no photo
    # another SRC's resize does not touch it; the file coming back makes it ok again
    other = tmp_path / "other"
    make_photo(other / "x.jpg", seed=9, size=(160, 120))
    resize(other, thumbs, workers=1)
    assert _statuses(thumbs)[str(keeper)] == "missing"
    shutil.move(saved, keeper)
    s = resize(src, thumbs, workers=1)
    assert s.missing == 0 and _statuses(thumbs)[str(keeper)] == "ok"
    assert D.find_duplicates(thumbs, CFG).groups[0]["keeper"] == str(keeper)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a folder this user cannot list")
def test_files_in_a_folder_the_scan_could_not_list_are_not_marked_missing(tmp_path):
    src, thumbs, P = _lib(tmp_path, groups=1, copies=2)
    locked = P[0][1].parent
    locked.chmod(0)
    try:
        s = resize(src, thumbs, workers=1)
        assert s.missing == 0 and _statuses(thumbs)[str(P[0][1])] == "ok"
    finally:
        locked.chmod(0o755)



def test_keeper_gone_after_planning_stops_its_copies_even_when_a_killed_quarantine_is_finished(tmp_path, monkeypatch):
    """The moves of a quarantine are journaled with the state of the verified keeper; a keeper
    deleted before the move (here: after a 'kill' right after journaling) keeps its copies home."""
    from nearsort import journal

    src, thumbs, paths = _lib(tmp_path, groups=2, copies=2)
    q = tmp_path / "q"
    res = D.find_duplicates(thumbs, CFG)
    with Catalog.open(thumbs) as cat:
        monkeypatch.setattr(journal, "apply_op", lambda cat, op_id, **kw: {"moved": 0, "skipped": []})
        DQ.quarantine(cat, q, res)  # journaled, nothing moved: as if killed at once
    monkeypatch.undo()
    keeper_gone = paths[0][0]
    keeper_gone.unlink()
    with Catalog.open(thumbs) as cat:
        fin = DQ.finish_interrupted(cat)
    assert fin and fin.finished_interrupted
    for p in paths[0][1:]:
        assert p.exists() and not _in_q(q, p).exists(), "a copy moved although its keeper is gone"
    assert any("keeper" in s["why"] for s in fin.skipped)
    for p in paths[1][1:]:  # the other group's keeper is still there: its copies moved
        assert not p.exists() and _in_q(q, p).exists()
