"""The ray engine: `resize` and `featurize --engine ray` on a real Ray cluster started here
(`ray start --head --num-cpus 2` in a subprocess, with its own temp dir and authentication token),
against the local engine on the same photos: the same thumbnails, the same catalog rows, vectors
within 1e-5; Ctrl-C in a Ray run keeps what was done and the next Ray run finishes it; a Ray worker
that dies on a file costs that file only. The CLI runs in subprocesses, as a user runs it."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PY, SAMPLES, make_photo
from nearsort.embed import featurize as F
from nearsort.engine import local_head
from nearsort.ingest.resize import resize
from nearsort.store.catalog import Catalog, state_dir
from nearsort.vectors.index import VectorIndex

CRASH_NAME = "ray-crash-me.jpg"  # the cluster's workers die (SIGSEGV) on a file of this name (NEARSORT_TEST_CRASH)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray head on this machine (engine.local_head); yields (address, env for the CLI that
    reaches it). Its workers die (SIGSEGV) on files named CRASH_NAME."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'nearsort[ray]'; `make test` installs it)")
    env = {**os.environ, "NEARSORT_TEST_CRASH": f"{int(signal.SIGSEGV)}:{CRASH_NAME}"}
    with local_head(2, env) as (address, head_env):
        yield address, {k: v for k, v in head_env.items() if k != "NEARSORT_TEST_CRASH"}


def nearsort(env: dict, *args, ok: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=600)
    if ok:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def state(out: Path) -> dict:
    """What a library holds, keyed by what does not depend on the order results arrived in (thumbnail
    names, content hashes, source paths): every catalog row, every thumbnail file, every vector."""
    with Catalog.open(out, write=False) as cat:
        q = lambda sql: sorted(tuple(r) for r in cat.execute(sql))  # noqa: E731
        s = {
            "thumbs": q("SELECT name, relpath, tw, th, brightness, contrast, blur, rank FROM thumbs"),
            "originals": q("SELECT o.content_hash, t.name, o.width, o.height, o.format, o.bytes, o.phash, "
                           "o.capture_time, o.make, o.model, o.gps_lat, o.gps_lon, o.exif_json "
                           "FROM originals o LEFT JOIN thumbs t ON t.id = o.thumb_id"),
            "sources": q("SELECT s.path, o.content_hash, s.size, s.mtime_ns, s.status, s.error "
                         "FROM sources s LEFT JOIN originals o ON o.id = s.original_id"),
            "models": q("SELECT name, dim FROM models"),
            "labels": q("SELECT t.name, l.label FROM labels l JOIN thumbs t ON t.id = l.thumb_id"),
            "files": {rel: (out / rel).read_bytes() for (rel,) in cat.execute("SELECT relpath FROM thumbs")},
            "vectors": {},
        }
        for mid, name, dim in cat.execute("SELECT id, name, dim FROM models"):
            rows = cat.execute("SELECT t.name, e.row FROM embeddings e JOIN thumbs t ON t.id = e.thumb_id "
                               "WHERE e.model_id = ? ORDER BY e.row", (mid,)).fetchall()
            assert [r for _, r in rows] == list(range(len(rows)))  # no duplicated or orphaned vector row
            with VectorIndex.open(state_dir(out), name, dim, readonly=True) as vi:
                assert len(vi) == len(rows)
                vecs = vi.get([r for _, r in rows])
            s["vectors"][name] = dict(zip([t for t, _ in rows], vecs))
    return s


def assert_same(a: dict, b: dict) -> None:
    for k in ("thumbs", "originals", "sources", "models", "labels", "files"):
        assert a[k] == b[k], k
    assert a["vectors"].keys() == b["vectors"].keys()
    for name, va in a["vectors"].items():
        vb = b["vectors"][name]
        assert va.keys() == vb.keys()
        assert max(float(np.abs(va[t] - vb[t]).max()) for t in va) <= 1e-5, name


def _wait_for_rows(db: Path, sql: str, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(db) as c:
                if c.execute(sql).fetchone()[0] >= n:
                    return
        except sqlite3.Error:
            pass
        time.sleep(0.05)


def _interrupted(env: dict, db: Path, sql: str, n: int, *args) -> dict:
    """Run the CLI with ``args``, press Ctrl-C once ``sql`` counts ``n`` rows in catalog ``db``: its --json."""
    proc = subprocess.Popen([PY, "-m", "nearsort.cli", *map(str, args), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    _wait_for_rows(db, sql, n, proc)
    proc.send_signal(signal.SIGINT)
    so, se = proc.communicate(timeout=120)
    assert proc.returncode == 130, se[-3000:]
    return json.loads(so)


def test_ray_engine_gives_what_the_local_engine_gives_and_a_ray_featurize_resumes_to_it(cluster, tmp_path):
    address, env = cluster
    ray = ["--engine", "ray", "--address", address]
    src = tmp_path / "src"
    shutil.copytree(SAMPLES, src)
    (src / "not-a-photo.jpg").write_text("just text")  # an error row, the same on both engines
    for i in range(60):
        make_photo(src / "more" / f"p{i:02d}.jpg", 1000 + i, size=(320, 240))
    local, remote = tmp_path / "local", tmp_path / "ray"
    resize(src, local, workers=2)
    F.featurize(local, batch=4, log=lambda s: None)

    r = json.loads(nearsort(env, "resize", src, "--out", remote, *ray, "--json").stdout)
    n_photos = len(list(SAMPLES.iterdir())) + 60
    assert r["status"] == "done" and r["processed"] == n_photos and r["errors"] == 1
    a, b = state(local), state(remote)
    for k in ("thumbs", "originals", "sources", "files"):
        assert a[k] == b[k], k

    # featurize on Ray, Ctrl-C once a batch is in, then again on Ray: what a local run stores
    first = _interrupted({**env, "NEARSORT_TEST_FEATURIZE_PAUSE": "0.5"},  # 21 batches: >= 10 s, Ctrl-C lands mid-run
                         remote / ".nearsort" / "catalog.sqlite", "SELECT count(*) FROM embeddings", 4,
                         "featurize", remote, "--batch", 4, *ray)
    assert first["status"] == "interrupted" and 0 < first["embedded"] < first["todo"]
    assert "Ray actor" in first["device"] and first["backend"] == "onnx"
    again = json.loads(nearsort(env, "featurize", remote, "--batch", 4, *ray, "--json").stdout)
    assert again["status"] == "done" and again["already"] == first["embedded"]
    assert again["embedded"] == again["thumbs"] - first["embedded"]
    assert_same(a, state(remote))


def test_ctrl_c_in_a_ray_resize_keeps_the_work_and_the_next_ray_run_finishes_it(cluster, tmp_path):
    address, env = cluster
    lib = tmp_path / "lib"
    lib.mkdir()
    one = make_photo(tmp_path / "one.jpg", 1, size=(2000, 1500), quality=95)
    n = 120
    for i in range(n):  # byte-identical copies still cost a read + hash + decode each
        os.link(one, lib / f"p{i:03d}.jpg")
    out = tmp_path / "thumbs"
    s = _interrupted({**env, "NEARSORT_COMMIT_EVERY": "1"}, out / ".nearsort" / "catalog.sqlite",
                     "SELECT count(*) FROM sources", 3, "resize", lib, "--out", out, "--engine", "ray",
                     "--address", address)
    assert s["status"] == "interrupted" and 0 < s["processed"] < n
    with Catalog.open(out) as cat:
        assert cat.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for (rel,) in cat.execute("SELECT relpath FROM thumbs"):
            assert (out / rel).exists()
    s2 = json.loads(nearsort(env, "resize", lib, "--out", out, "--engine", "ray", "--address", address,
                             "--json").stdout)
    assert s2["unchanged"] == s["processed"] and s2["processed"] == n - s["processed"]
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT count(*) FROM sources WHERE status='ok'").fetchone()[0] == n
        assert cat.execute("SELECT count(*) FROM thumbs").fetchone()[0] == 1


def test_a_file_its_ray_worker_dies_on_costs_that_file_only(cluster, tmp_path):
    address, env = cluster
    src = tmp_path / "src"
    for i in range(3):
        make_photo(src / f"p{i}.jpg", 50 + i)
    make_photo(src / CRASH_NAME, 99)
    s = json.loads(nearsort(env, "resize", src, "--out", tmp_path / "thumbs", "--engine", "ray", "--address",
                            address, "--json").stdout)
    assert s["status"] == "done" and s["processed"] == 3 and s["errors"] == 1
    (err,) = s["error_samples"]
    assert err["path"].endswith(CRASH_NAME) and "crashed (its Ray worker process died) on this file, twice" in err["error"]


def test_no_ray_or_no_cluster_is_one_clear_line(tmp_path):
    """Runs without Ray too: the line a user gets when it is missing, or when the address answers nothing."""
    src = tmp_path / "src"
    make_photo(src / "a.jpg", 1)
    out = tmp_path / "thumbs"
    no_ray = ("import sys; sys.modules['ray'] = None; sys.argv = ['nearsort'] + sys.argv[1:]; "
              "from nearsort.cli import main; main()")
    for cmd in (["resize", src, "--out", out], ["featurize", out]):
        p = subprocess.run([PY, "-c", no_ray, *map(str, cmd), "--engine", "ray"], capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "--engine ray needs Ray, which is not installed" in p.stderr and "nearsort[ray]" in p.stderr
        if cmd[0] == "resize":
            resize(src, out)  # featurize needs a library to get as far as the engine
    port = _free_port()  # nothing listens there
    p = subprocess.run([PY, "-m", "nearsort.cli", "resize", str(src), "--out", str(tmp_path / "t2"), "--engine", "ray",
                        "--address", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in p.stderr
    p = subprocess.run([PY, "-m", "nearsort.cli", "resize", str(src), "--out", str(tmp_path / "t2"),
                        "--address", "127.0.0.1:1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "--address is the address of a Ray cluster: give it with --engine ray" in p.stderr
