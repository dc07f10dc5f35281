"""No command hangs or ends in a traceback: special files, killed runs, damaged catalogs, full
disks, a THUMBS that is a file, decompression bombs, SRC/THUMBS overlap. Real FIFOs and sockets,
real SIGKILL of a real resize, real damaged SQLite files, a real full filesystem (tmpfs, as root)."""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import PY, make_photo
from nearsort import Catalog, resize
from nearsort.ingest.thumbs import process_file
from nearsort.store import queries

TIMEOUT = 180  # seconds: a regression that hangs fails instead of blocking the suite


def cli(*args, env=None, timeout=TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed with exit code 2 and exactly one clear line on stderr."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def _photos(lib: Path, n: int, size=(320, 240)) -> list[Path]:
    return [make_photo(lib / f"p{i:03d}.jpg", i, size=size) for i in range(n)]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name or p.name.endswith(".new")]


# ------------------------------------------------------------------ special files


def test_fifo_and_socket_among_photos_are_skipped_unopened_and_listed(tmp_path):
    lib = tmp_path / "lib"
    _photos(lib, 3)
    os.mkfifo(lib / "x.jpg")  # opening it for reading would block until someone writes
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(lib / "y.jpg"))
    out = tmp_path / "thumbs"
    try:
        r = cli("resize", lib, "--out", out, "-j", "2", "--json")
    finally:
        sock.close()
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["processed"] == 3 and s["errors"] == 2
    listed = {os.path.basename(e["path"]): e["error"] for e in json.loads(cli("errors", out, "--json").stdout)}
    assert "FIFO" in listed["x.jpg"] and "without opening" in listed["x.jpg"]
    assert "socket" in listed["y.jpg"]
    with Catalog.open(out, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == 3
        for (rel,) in cat.execute("SELECT relpath FROM thumbs"):
            assert (out / rel).is_file()
    # a second run does not hang either, and the good files are unchanged
    s2 = json.loads(cli("resize", lib, "--out", out, "--json").stdout)
    assert s2["unchanged"] == 3 and s2["processed"] == 0


def test_damaged_files_are_listed_by_name_with_no_decoder_warning_on_the_terminal(tmp_path):
    """A TIFF whose directory is garbage makes Pillow warn "Corrupt EXIF data", and rawpy warns once
    per forked worker; neither names a file. Each bad file is one error line naming it, nothing else."""
    lib = tmp_path / "lib"
    _photos(lib, 2)
    rng = np.random.default_rng(3)
    (lib / "scan.tif").write_bytes(b"II*\x00" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes())
    (lib / "camera.cr2").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    out = tmp_path / "thumbs"
    r = cli("resize", lib, "--out", out, "-j", "2")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    bad = [ln for ln in r.stdout.splitlines() if "✗" in ln]
    assert sorted(ln.split(": ", 1)[0].rsplit("/", 1)[-1] for ln in bad) == ["camera.cr2", "scan.tif"], r.stdout
    listed = {os.path.basename(e["path"]) for e in json.loads(cli("errors", out, "--json").stdout)}
    assert listed == {"camera.cr2", "scan.tif"}


def test_worker_refuses_a_fifo_without_blocking(tmp_path):
    """A file swapped for a FIFO after the scan reaches the worker: it answers, never blocks."""
    fifo = tmp_path / "late.jpg"
    os.mkfifo(fifo)
    r = subprocess.run([PY, "-c", "import sys; from nearsort.ingest.thumbs import process_file; "
                        "print(process_file(sys.argv[1]).error)", str(fifo)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "FIFO" in r.stdout, r
    assert process_file(str(tmp_path)).error == "is a directory"


# ------------------------------------------------------------------ SIGKILL / lock


def _proc_state(pid: int) -> str | None:
    """Process state letter from /proc (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                kids.append(int(d))
    return kids


def _alive(pid: int) -> bool:
    return _proc_state(pid) not in (None, "Z", "X")


def _openers(path: Path) -> list[int]:
    """Live pids with ``path`` open (scans /proc/*/fd)."""
    target = os.stat(path)
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{d}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{d}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino) and _alive(int(d)):
                pids.append(int(d))
                break
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_sigkill_of_resize_leaves_no_worker_and_no_lock(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    one = make_photo(tmp_path / "one.jpg", 1, size=(2000, 1500), quality=95)
    n = 300
    for i in range(n):  # every path costs a read + hash + decode, and (COMMIT_EVERY=1) a commit
        os.link(one, lib / f"p{i:03d}.jpg")
    out = tmp_path / "thumbs"
    env = dict(os.environ, NEARSORT_COMMIT_EVERY="1")
    proc = subprocess.Popen([PY, "-m", "nearsort.cli", "resize", str(lib), "--out", str(out), "-j", "2", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    db = out / ".nearsort" / "catalog.sqlite"
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        workers = _children(proc.pid)
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
                if c.execute("SELECT count(*) FROM sources").fetchone()[0] >= 3 and workers:
                    break
        except sqlite3.Error:
            pass
    assert proc.poll() is None and workers, "resize ended before it could be killed mid-run"
    assert _openers(out / ".nearsort" / "lock") == [proc.pid]  # the workers did not inherit the lock
    proc.kill()
    proc.communicate(timeout=60)
    gone_by = time.monotonic() + 15
    while time.monotonic() < gone_by and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not [w for w in workers if _alive(w)], "decoder workers outlived their killed parent"
    assert _openers(out / ".nearsort" / "lock") == []  # nobody keeps THUMBS locked
    # the next run takes over and finishes what the killed one left
    r = cli("resize", lib, "--out", out, "-j", "2", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "done" and 0 < s["processed"] < n and s["unchanged"] + s["processed"] == n
    with Catalog.open(out, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == n


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_a_busy_worker_dies_with_its_killed_parent(tmp_path):
    """A worker in the middle of a long task (a slow NAS read, a huge decode: here a sleep) ends
    when its parent is killed with SIGKILL, instead of running on as an orphan."""
    parent = subprocess.Popen([PY, "-c", (
        "import time\n"
        "from nearsort.workers import Workers\n"
        "with Workers(1, time.sleep) as pool:\n"
        "    pool.submit(600)\n"
        "    print('busy', flush=True)\n"
        "    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "busy"
        (worker,) = _children(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    gone_by = time.monotonic() + 15
    while time.monotonic() < gone_by and _alive(worker):
        time.sleep(0.1)
    alive = _alive(worker)
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the worker outlived its killed parent"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs Linux /proc")
def test_lock_naming_a_dead_pid_is_taken_over_or_names_the_real_holder(tmp_path):
    lib = tmp_path / "lib"
    _photos(lib, 2)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    lock = out / ".nearsort" / "lock"
    dead = subprocess.run([PY, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    # a dead pid in the file and nobody holding the lock: simply taken over
    lock.write_text(f"{dead}\n")
    r = cli("resize", lib, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    # a live process holds the lock (as an orphaned worker would), the file names a dead pid
    holder = subprocess.Popen([PY, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate(); "
                               "f.write(sys.argv[2] + '\\n'); f.flush(); print('held', flush=True); time.sleep(600)",
                               str(lock), dead], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(cli("resize", lib, "--out", out), f"pid {holder.pid}", "no longer running")
        assert f"pid {dead} " not in line.replace(f"nearsort pid {dead}", "")  # the dead pid is not called the holder
    finally:
        holder.kill()
        holder.wait()
    assert cli("resize", lib, "--out", out).returncode == 0


# ------------------------------------------------------------------ damaged catalogs


def _damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    rng = np.random.default_rng(7)
    if how == "zero-bytes":
        db.write_bytes(b"")
    elif how == "garbage":
        db.write_bytes(rng.integers(0, 256, len(data), dtype=np.uint8).tobytes())
    elif how == "truncated":
        db.write_bytes(data[: len(data) // 2])
    elif how == "garbage-pages":  # a sound header, pages after it overwritten
        junk = rng.integers(0, 256, len(data) - 8192, dtype=np.uint8).tobytes()
        db.write_bytes(data[:8192] + junk)


@pytest.mark.parametrize("how", ["zero-bytes", "garbage", "truncated", "garbage-pages"])
def test_damaged_catalog_is_one_line_everywhere_and_rebuild_recovers(tmp_path, how):
    lib = tmp_path / "lib"
    _photos(lib, 3)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    db = out / ".nearsort" / "catalog.sqlite"
    _damage(db, how)
    Path(str(db) + "-shm").write_bytes(b"\0" * 100)  # stray side files travel with it
    for args in (["info", out], ["errors", out], ["resize", lib, "--out", out], ["dupes", out],
                 ["export", out, "--csv", "-"]):
        one_line_error(cli(*args), "is damaged", f"nearsort rebuild {out}")
    r = cli("rebuild", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    names = {p.name for p in db.parent.iterdir()}
    (kept,) = [n for n in names if n.startswith("catalog.sqlite.damaged-") and not n.endswith("-shm")]
    assert f"kept as {db.parent / kept}" in r.stdout.replace("\n", "")
    shm = Path(str(db) + "-shm")
    assert not shm.exists() or shm.read_bytes() != b"\0" * 100  # the stray -shm is not the new catalog's
    if how != "garbage-pages":  # (SQLite itself drops the -shm of a file it can open)
        assert kept + "-shm" in names
    with Catalog.open(out, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == 3
    assert cli("resize", lib, "--out", out).returncode == 0


# ------------------------------------------------------------------ full disk


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB filesystem (tmpfs); needs root and mount(8)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_during_resize_keeps_a_consistent_catalog_and_resumes(tmp_path, small_fs):
    lib = tmp_path / "lib"
    _photos(lib, 90, size=(480, 360))  # ~90 noisy thumbnails: more than 1 MiB
    r = cli("resize", lib, "--out", small_fs, "-j", "2", env=dict(os.environ, NEARSORT_COMMIT_EVERY="8"))
    one_line_error(r, "no space left", "were kept", "run the same command again")
    assert _temp_files(small_fs) == []  # no half-written thumbnail or catalog left behind
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)  # "free some space"
    with Catalog.open(small_fs, write=False) as cat:
        assert cat.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = queries.counts(cat)["sources_ok"]
        for (rel,) in cat.execute("SELECT relpath FROM thumbs"):  # every committed thumbnail exists
            assert (small_fs / rel).is_file()
    r = cli("resize", lib, "--out", small_fs, "-j", "2", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["unchanged"] == kept and s["processed"] == 90 - kept
    with Catalog.open(small_fs, write=False) as cat:
        assert queries.counts(cat)["sources_ok"] == 90
        assert cat.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert _temp_files(small_fs) == []


def test_temp_files_of_a_killed_write_are_removed_by_the_next_run(tmp_path):
    lib = tmp_path / "lib"
    _photos(lib, 2)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    thumb = next(p for p in out.rglob("*.jpg") if ".nearsort" not in p.parts)
    stale = thumb.with_name(f".{thumb.name}.99999.tmp")  # what write_atomic leaves when killed mid-write
    stale.write_bytes(thumb.read_bytes()[:100])
    mine = out / "notes.tmp"  # not ours: left alone
    mine.write_text("x")
    resize(lib, out, workers=1)
    assert not stale.exists() and mine.exists()


# ------------------------------------------------------------------ bad THUMBS / SRC


def test_thumbs_that_is_a_regular_file_is_one_line(tmp_path):
    lib = tmp_path / "lib"
    _photos(lib, 1)
    f = tmp_path / "thumbs"
    f.write_text("not a folder")
    for args in (["resize", lib, "--out", f], ["info", f], ["rebuild", f], ["export", f, "--csv", "-"]):
        r = cli(*args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and str(f.name) in r.stderr and "not a folder" in r.stderr
    assert f.read_text() == "not a folder"


def test_src_and_thumbs_must_be_apart_but_thumbs_inside_src_is_skipped(tmp_path):
    lib = tmp_path / "lib"
    _photos(lib, 3)
    before = sorted(p.name for p in lib.iterdir())
    one_line_error(cli("resize", lib, "--out", lib), "same folder")
    assert sorted(p.name for p in lib.iterdir()) == before  # nothing written into SRC
    one_line_error(cli("resize", lib, "--out", tmp_path / "lib" / "." ), "same folder")
    # SRC inside THUMBS
    one_line_error(cli("resize", lib, "--out", tmp_path), "inside THUMBS")
    # THUMBS inside SRC (e.g. ~/Pictures/thumbs): its own thumbnails are never ingested
    inner = lib / "thumbs"
    for _ in range(2):
        r = cli("resize", lib, "--out", inner, "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert s["scanned"] == 3 and s["errors"] == 0
    assert s["unchanged"] == 3 and s["processed"] == 0
    with Catalog.open(inner, write=False) as cat:
        paths = [os.fsdecode(bytes(p)) for (p,) in cat.execute("SELECT path FROM sources")]
    assert len(paths) == 3 and not any(str(inner) in p for p in paths)


# ------------------------------------------------------------------ similar on a bomb


def _png_header_only(path: Path, w: int, h: int) -> None:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def test_similar_on_a_decompression_bomb_is_one_line(tmp_path):
    from nearsort.embed.featurize import featurize

    lib = tmp_path / "lib"
    _photos(lib, 3)
    out = tmp_path / "thumbs"
    resize(lib, out, workers=1)
    featurize(out, model="efficientnet-lite0", device="cpu", log=lambda s: None)
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 40000, 40000)  # 1.6 gigapixels claimed in 57 bytes
    one_line_error(cli("similar", bomb, out, "--device", "cpu"), str(bomb), "too large to decode safely")
    scan = tmp_path / "scan.tif"  # a garbage TIFF directory: Pillow warns "Corrupt EXIF data", naming no file
    scan.write_bytes(b"II*\x00" + np.random.default_rng(3).integers(0, 256, 200, dtype=np.uint8).tobytes())
    one_line_error(cli("similar", scan, out, "--device", "cpu"), str(scan), "cannot read")
