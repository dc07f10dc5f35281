"""Backends (embed/backends.py): ONNX Runtime and torch give the same vectors on real images, and
the same duplicates and order downstream; the exported graph is cached and checked once; a graph
that disagrees, or a model the exporter fails on, falls back to torch with one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES, SHARED
from nearsort.embed import backends as B
from nearsort.embed import models as M
from nearsort.embed.embedder import embed_files
from nearsort.store.catalog import Catalog, state_dir
from nearsort.vectors.index import VectorIndex

EXTS = {".jpg", ".jpeg", ".png", ".webp"}


def _real_images() -> list[Path]:
    imgs = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in EXTS)
    orig = SHARED / "originals"
    if orig.is_dir():
        imgs += sorted(p for p in orig.iterdir() if p.suffix.lower() in EXTS)
    return imgs


def _embed(model, be, paths):
    vecs, tops = [], []
    for b in embed_files(model, paths, batch=8, backend=be, on_error=lambda *a: None):
        vecs.append(b.vectors)
        if b.topk is not None:
            tops.append(b.topk[0])
    return np.concatenate(vecs), (np.concatenate(tops) if tops else None)


@pytest.fixture(scope="module")
def lite0():
    return M.load_model("efficientnet-lite0", device="cpu", log=lambda s: None)


@pytest.fixture(scope="module")
def exported(lite0, tmp_path_factory):
    """lite0 exported and checked once in a cache folder of this module: (folder, backend, log lines)."""
    root = tmp_path_factory.mktemp("onnx-cache")
    msgs: list[str] = []
    return root, B.select(lite0, "auto", _real_images(), root=root, log=msgs.append), msgs


def _unchecked_copy(exported, dst: Path) -> Path:
    """A copy of the exported graph's cache folder, as it is before its first check."""
    shutil.copytree(exported[0], dst)
    info = next(dst.glob("*/check.json"))
    info.write_text(json.dumps({"model": "efficientnet-lite0", "ok": None}))
    return dst


def test_lite0_onnx_matches_torch_on_real_images(lite0, exported):
    root, be, msgs = exported
    imgs = _real_images()
    assert be.name == "onnx", msgs
    assert any("exporting efficientnet-lite0 to ONNX" in m for m in msgs)
    info = json.loads(next(root.glob("*/check.json")).read_text())
    assert info["ok"] is True and info["images"] == B.CHECK_IMAGES and info["min_cosine"] >= B.MIN_COSINE
    v_onnx, top_onnx = _embed(lite0, be, imgs)
    v_torch, top_torch = _embed(lite0, B.TorchBackend(lite0), imgs)
    assert len(v_onnx) == len(v_torch) >= 20
    cos = np.einsum("ij,ij->i", v_onnx, v_torch)
    assert cos.min() >= B.MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(v_onnx, axis=1), 1.0, atol=1e-5)
    assert (top_onnx[:, 0] == top_torch[:, 0]).all()  # the same best ImageNet class for every photo
    # cached: the next process (here: a new session) loads the checked graph, no export, no check
    B._SESSIONS.clear()
    later: list[str] = []
    again = B.select(lite0, "auto", [], root=root, log=later.append)
    assert again.name == "onnx" and later == []
    np.testing.assert_allclose(_embed(lite0, again, imgs[:4])[0], v_onnx[:4], atol=1e-6)


def test_a_checked_graph_is_served_without_torch(lite0, exported, tmp_path):
    """Once checked, the graph is found again from the model's name, weights file and this code, in a
    fresh process that imports no torch, and gives the same vectors; --backend torch, a GPU asked
    for, a damaged record or a graph no longer checked load the model instead."""
    import os
    import subprocess
    import sys

    root, be, _ = exported
    assert B.cached("efficientnet-lite0", root=root) is None  # nothing recorded yet
    B.remember("efficientnet-lite0", None, lite0, be, root=root)
    imgs = [str(p) for p in _real_images()[:6]]
    want = _embed(lite0, be, imgs)[0]
    code = (
        "import json, sys, numpy as np\n"
        "from pathlib import Path\n"
        "from nearsort.embed import backends as B\n"
        "from nearsort.embed.embedder import embed_files\n"
        "m, be = B.cached('efficientnet-lite0', None, 'auto', root=Path(sys.argv[1]), log=lambda s: None)\n"
        "v = np.concatenate([b.vectors for b in embed_files(m, sys.argv[2:], batch=4, backend=be)])\n"
        "print(json.dumps({'torch': 'torch' in sys.modules, 'name': m.name, 'dim': m.dim, 'labels': m.has_labels,"
        " 'backend': be.name, 'v': v.tolist()}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    p = subprocess.run([sys.executable, "-c", code, str(root), *imgs], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert not got["torch"] and got["backend"] == "onnx"
    assert (got["name"], got["dim"], got["labels"]) == (lite0.name, lite0.dim, True)
    np.testing.assert_allclose(np.array(got["v"]), want, atol=1e-6)
    assert B.cached("efficientnet-lite0", None, "cpu", "torch", root=root) is None
    assert B.cached("efficientnet-lite0", None, "cuda", root=root) is None
    assert B.cached("efficientnet-lite0@160", None, "cpu", root=root) is None  # another model input
    B._CACHED.clear()
    record = next((root / "sources").glob("*.json"))
    good = record.read_text()
    record.write_text("{ damaged")
    assert B.cached("efficientnet-lite0", None, "cpu", root=root) is None
    record.write_text(good)
    info = next(root.glob("*/check.json"))
    checked = info.read_text()
    info.write_text(json.dumps({**json.loads(checked), "ok": False}))
    assert B.cached("efficientnet-lite0", None, "cpu", root=root) is None
    info.write_text(checked)
    assert B.cached("efficientnet-lite0", None, "cpu", root=root)[0].name == lite0.name


def test_graph_record_key_follows_the_weights_file(tmp_path):
    """A weights file replaced in place (new size or mtime) is another model: no stale graph."""
    import os

    w = tmp_path / "lite0.pth"
    shutil.copy(M.lite0_weights_path(), w)
    first = B._source("efficientnet-lite0", w)
    assert first and first == B._source("efficientnet-lite0", w)
    st = w.stat()
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert B._source("efficientnet-lite0", w) not in (None, first)
    assert B._source("clip:ViT-B-32", None) is None  # weights only open_clip can find: load it


def test_clip_image_tower_exports_and_agrees(tmp_path):
    """CLIP with random weights (no weights here): the export is for agreement only."""
    m = M.load_model("clip:ViT-S-32/random", device="cpu", log=lambda s: None)
    be = B.select(m, "onnx", _real_images(), root=tmp_path, log=lambda s: None)
    imgs = _real_images()[:12]
    cos = np.einsum("ij,ij->i", _embed(m, be, imgs)[0], _embed(m, B.TorchBackend(m), imgs)[0])
    assert len(cos) == 12 and cos.min() >= B.MIN_COSINE


def test_disagreeing_graph_falls_back_to_torch_once(lite0, exported, tmp_path, monkeypatch):
    root = _unchecked_copy(exported, tmp_path / "cache")
    monkeypatch.setattr(B, "MIN_COSINE", 1.5)  # no graph can pass: as if it disagreed
    msgs: list[str] = []
    be = B.select(lite0, "auto", _real_images(), root=root, log=msgs.append)
    assert be.name == "torch"
    notes = [m for m in msgs if m.startswith("note:")]
    assert len(notes) == 1 and "disagrees with torch" in notes[0] and "\n" not in notes[0]
    assert json.loads(next(root.glob("*/check.json")).read_text())["ok"] is False
    # recorded: not exported or checked again; an explicit --backend onnx says why it cannot
    msgs.clear()
    assert B.select(lite0, "auto", _real_images(), root=root, log=msgs.append).name == "torch"
    assert not any("exporting" in m for m in msgs)
    with pytest.raises(M.ModelUnavailable, match="disagrees with torch"):
        B.select(lite0, "onnx", _real_images(), root=root, log=msgs.append)


def test_unchecked_graph_waits_for_a_readable_image(lite0, exported, tmp_path):
    root = _unchecked_copy(exported, tmp_path / "cache")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    msgs: list[str] = []
    assert B.select(lite0, "auto", [broken], root=root, log=msgs.append).name == "torch"
    assert len(msgs) == 1 and "not checked yet" in msgs[0]
    assert B.select(lite0, "auto", [broken, *_real_images()[:2]], root=root, log=msgs.append).name == "onnx"
    info = json.loads(next(root.glob("*/check.json")).read_text())
    assert info["ok"] is True and info["images"] == 2


def test_export_failure_is_recorded_and_falls_back(lite0, tmp_path, monkeypatch):
    calls = []

    def broken(model, out):
        calls.append(model.name)
        raise RuntimeError("unsupported operator aten::frobnicate")

    monkeypatch.setattr(B, "export", broken)
    msgs: list[str] = []
    for _ in range(2):
        assert B.select(lite0, "auto", _real_images(), root=tmp_path, log=msgs.append).name == "torch"
    assert calls == ["efficientnet-lite0"]  # tried once
    notes = [m for m in msgs if m.startswith("note:")]
    assert len(notes) == 2 and all("export failed" in n and "frobnicate" in n for n in notes)
    assert [p.name for p in next(tmp_path.iterdir()).iterdir()] == ["check.json"]  # no half-written graph


def test_unwritable_cache_falls_back(lite0, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")  # the cache cannot be made below a file (whoever runs the test)
    msgs: list[str] = []
    assert B.select(lite0, "auto", _real_images(), root=blocker / "onnx", log=msgs.append).name == "torch"
    assert len(msgs) == 1 and msgs[0].startswith("note:") and "torch" in msgs[0]
    with pytest.raises(M.ModelUnavailable, match="cannot write the ONNX cache"):
        B.select(lite0, "onnx", _real_images(), root=blocker / "onnx", log=msgs.append)


# ------------------------------------------------------------------ downstream: featurize, dupes, analyze


@pytest.fixture(scope="module")
def two_libraries(tmp_path_factory):
    """samples/photos resized twice, featurized once with each backend."""
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    base = tmp_path_factory.mktemp("backends")
    libs = {}
    for backend in ("torch", "onnx"):
        out = base / backend
        resize(SAMPLES, out, workers=1)
        s = featurize(out, model="efficientnet-lite0", device="cpu", backend=backend, log=lambda m: None)
        assert s.backend == backend and s.errors == 0 and s.embedded == s.thumbs > 20
        libs[backend] = out
    return libs


def _vectors_by_name(out: Path) -> dict[str, np.ndarray]:
    with Catalog.open(out, write=False) as cat:
        mid, dim = cat.execute("SELECT id, dim FROM models WHERE name='efficientnet-lite0'").fetchone()
        rows = cat.execute("SELECT t.name, e.row FROM embeddings e JOIN thumbs t ON t.id=e.thumb_id "
                           "WHERE e.model_id=?", (mid,)).fetchall()
    with VectorIndex.open(state_dir(out), "efficientnet-lite0", dim, readonly=True) as vi:
        vecs = vi.get([r for _, r in rows])
    return {name: v for (name, _), v in zip(rows, vecs)}


def test_stored_vectors_agree_between_backends(two_libraries):
    a, b = (_vectors_by_name(two_libraries[k]) for k in ("torch", "onnx"))
    assert a.keys() == b.keys() and len(a) > 20
    cos = np.array([float(a[k] @ b[k]) / float(np.linalg.norm(a[k]) * np.linalg.norm(b[k])) for k in a])
    assert cos.min() >= B.MIN_COSINE


def test_dupes_and_analyze_identical_from_either_backend(two_libraries):
    from nearsort.dupes.group import find_duplicates
    from nearsort.order.analyze import analyze
    from nearsort.store import queries

    def groups(out):
        res = find_duplicates(out)
        return sorted((g["kind"], g["keeper"], sorted((m["path"], m["relation"]) for m in g["members"]))
                      for g in res.groups)

    def order(out):
        analyze(out)
        with Catalog.open(out, write=False) as cat:
            names = dict(cat.execute("SELECT id, name FROM thumbs").fetchall())
            return [names[t] for t, _, _ in queries.ranks(cat, queries.current_ordering(cat))]

    g_torch, g_onnx = groups(two_libraries["torch"]), groups(two_libraries["onnx"])
    assert g_torch == g_onnx and any(k == "near" or k == "perceptual" for k, _, _ in g_torch)
    assert order(two_libraries["torch"]) == order(two_libraries["onnx"])
