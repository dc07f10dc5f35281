"""featurize / search / similar over a real catalog made by resize."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_photo
from nearsort import Interrupted
from nearsort.embed import featurize as F
from nearsort.embed import models as M
from nearsort.embed import search as S
from nearsort.store.catalog import Catalog, state_dir
from nearsort.vectors.index import VectorIndex
from nearsort.ingest.resize import resize

QUIET = {"log": lambda s: None}


def _library(tmp_path: Path, n: int = 6) -> tuple[Path, Path]:
    src = tmp_path / "src"
    for i in range(n):
        make_photo(src / f"p{i}.jpg", 100 + i, size=(480, 360))
    out = tmp_path / "thumbs"
    resize(src, out, workers=1)
    return src, out


def _check_consistent(out: Path, name: str) -> int:
    """Every thumbnail has exactly one vector; rows are unique and the store has no orphans."""
    with Catalog.open(out, write=False) as cat:
        mid, dim = cat.execute("SELECT id, dim FROM models WHERE name=?", (name,)).fetchone()
        n_thumbs = cat.execute("SELECT count(*) FROM thumbs").fetchone()[0]
        rows = [r[0] for r in cat.execute("SELECT row FROM embeddings WHERE model_id=? ORDER BY row", (mid,))]
        tids = [r[0] for r in cat.execute("SELECT thumb_id FROM embeddings WHERE model_id=?", (mid,))]
    assert len(rows) == n_thumbs == len(set(tids))
    assert rows == list(range(len(rows)))
    with VectorIndex.open(state_dir(out), name, dim, valid_rows=len(rows)) as vi:
        assert len(vi) == len(rows)
    return n_thumbs


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    return _library(tmp_path_factory.mktemp("lib"))


def test_auto_keeps_a_library_on_its_224_vectors(tmp_path, monkeypatch):
    """auto runs lite0 at 160 on a new library; one whose vectors are lite0's at 224 (made by auto
    before) goes on with 224: nothing embedded twice, one model's vectors for dupes and analyze."""
    monkeypatch.setattr(M, "find_local_clip", lambda *a, **k: None)
    src, out = _library(tmp_path / "old", 3)
    F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    make_photo(src / "new.jpg", 999, size=(480, 360))
    resize(src, out, workers=1)
    s = F.featurize(out, device="cpu", **QUIET)
    assert (s.model, s.requested, s.embedded, s.already) == ("efficientnet-lite0", "auto", 1, 3)
    _check_consistent(out, "efficientnet-lite0")
    _, fresh = _library(tmp_path / "new", 2)
    s = F.featurize(fresh, device="cpu", **QUIET)
    assert (s.model, s.embedded) == ("efficientnet-lite0@160", 2)
    _check_consistent(fresh, "efficientnet-lite0@160")


def test_featurize_lite0_then_nothing_new(lib):
    src, out = lib
    prog = []
    s = F.featurize(out, model="efficientnet-lite0", device="cpu", batch=4, progress=lambda *a: prog.append(a), **QUIET)
    assert s.model == "efficientnet-lite0" and s.status == "done"
    assert s.embedded == s.thumbs == 6 and s.errors == 0
    assert prog[-1] == ("featurize", 6, 6)
    assert s.index["ntotal"] == 6 if "ntotal" in s.index else True
    n = _check_consistent(out, "efficientnet-lite0")
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT count(*) FROM labels").fetchone()[0] == 5 * n
        info = json.loads(cat.execute("SELECT info FROM models").fetchone()[0])
        assert info["kind"] == "cnn" and info["dim"] == 1280 and "index" in info
        run = cat.execute("SELECT status FROM runs WHERE command='featurize' ORDER BY id DESC").fetchone()
        assert run[0] == "done"
    again = F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    assert again.embedded == 0 and again.already == 6
    _check_consistent(out, "efficientnet-lite0")


def test_stored_vectors_equal_direct_embedding(lib):
    from nearsort.embed.embedder import embed_pil
    from nearsort.embed.models import load_model

    _, out = lib
    F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    m = load_model("efficientnet-lite0", device="cpu", **QUIET)
    with Catalog.open(out, write=False) as cat:
        rows = cat.execute("SELECT e.row, t.relpath FROM embeddings e JOIN thumbs t ON t.id=e.thumb_id").fetchall()
    direct, _ = embed_pil(m, [out / r[1] for r in rows])
    with VectorIndex.open(state_dir(out), m.name, m.dim, readonly=True) as vi:
        stored = vi.get([r[0] for r in rows])
    assert np.abs(stored - direct).max() < 2e-3


def test_similar_library_thumb_and_outside_file(lib, tmp_path):
    src, out = lib
    F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    with Catalog.open(out, write=False) as cat:
        tid, rel = cat.execute("SELECT id, relpath FROM thumbs ORDER BY id LIMIT 1").fetchone()
        want_src = S._sources(cat, tid)
    r = S.similar(out, rel, k=3)
    assert r.in_library and r.thumb_id == tid and len(r.results) == 3
    assert all(x["thumb_id"] != tid for x in r.results)
    assert r.results[0]["score"] >= r.results[-1]["score"]
    assert all(x["sources"] and Path(x["thumb"]).is_file() for x in r.results)
    # by absolute thumbnail path and by source path: the same thumbnail
    assert S.similar(out, str(out / rel), k=3).thumb_id == tid
    assert S.similar(out, want_src[0], k=3).thumb_id == tid
    # a photo that is not in the library is embedded on the fly; its nearest is its own thumbnail
    outside = tmp_path / "outside.png"
    from PIL import Image

    Image.open(want_src[0]).resize((400, 300)).save(outside)
    r2 = S.similar(out, outside, k=2, device="cpu")
    assert not r2.in_library
    assert r2.results[0]["thumb_id"] == tid and r2.results[0]["score"] > 0.9
    with pytest.raises(FileNotFoundError):
        S.similar(out, tmp_path / "nope.jpg")


def test_label_search_fallback(lib):
    _, out = lib
    F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    r = S.search(out, "espresso", k=3)
    assert r.fallback and r.model == "efficientnet-lite0" and r.classes[0]["name"] == "espresso"
    assert len(r.results) <= 3
    r2 = S.search(out, "qqqzzz", k=3)
    assert r2.fallback and r2.results == [] and "CLIP" in r2.message


def test_interrupted_then_resumed_has_no_duplicates(tmp_path, monkeypatch):
    _, out = _library(tmp_path, n=7)
    real_append = VectorIndex.append
    calls = {"n": 0}

    def crashy_append(self, vectors):
        rows = real_append(self, vectors)  # durable in the store ...
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # ... but Ctrl-C before the catalog commit
        return rows

    monkeypatch.setattr(VectorIndex, "append", crashy_append)
    with pytest.raises(Interrupted) as ei:
        F.featurize(out, model="efficientnet-lite0", device="cpu", batch=2, **QUIET)
    s = ei.value.result
    assert s.status == "interrupted" and s.embedded == 2
    with Catalog.open(out, write=False) as cat:
        assert cat.execute("SELECT count(*) FROM embeddings").fetchone()[0] == 2
        assert cat.execute("SELECT status FROM runs WHERE command='featurize'").fetchone()[0] == "interrupted"
    monkeypatch.setattr(VectorIndex, "append", real_append)
    s2 = F.featurize(out, model="efficientnet-lite0", device="cpu", batch=2, **QUIET)
    assert s2.embedded == 5 and s2.already == 2
    assert _check_consistent(out, "efficientnet-lite0") == 7
    assert len(S.similar(out, "#1", k=10).results) == 6


def test_unreadable_thumbnail_is_reported_and_retried(tmp_path):
    _, out = _library(tmp_path, n=3)
    with Catalog.open(out, write=False) as cat:
        rel = cat.execute("SELECT relpath FROM thumbs ORDER BY id LIMIT 1").fetchone()[0]
    good = (out / rel).read_bytes()
    (out / rel).write_bytes(b"garbage")
    s = F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    assert s.embedded == 2 and s.errors == 1 and rel in s.error_samples[0]["path"]
    (out / rel).write_bytes(good)
    s2 = F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    assert s2.embedded == 1 and s2.errors == 0
    _check_consistent(out, "efficientnet-lite0")


def test_clip_random_weights_end_to_end(lib):
    src, out = lib
    s = F.featurize(out, model="clip:ViT-S-32/random", device="cpu", batch=4, **QUIET)
    assert s.model == "clip:ViT-S-32/random" and s.random_weights and s.embedded == 6
    _check_consistent(out, "clip:ViT-S-32/random")
    assert any(p.is_dir() for p in (state_dir(out) / "vectors").iterdir())
    r = S.search(out, "a photo of a cat", k=4, model="clip:ViT-S-32/random", device="cpu")
    assert not r.fallback and r.random_weights and len(r.results) == 4
    scores = [x["score"] for x in r.results]
    assert scores == sorted(scores, reverse=True)
    # the text vector really is the CLIP text tower's, compared against the stored image vectors
    from nearsort.embed.models import load_model

    m = load_model("clip:ViT-S-32/random", device="cpu", **QUIET)
    q = m.encode_text(["a photo of a cat"])[0]
    with Catalog.open(out, write=False) as cat:
        mid = cat.execute("SELECT id FROM models WHERE name=?", (m.name,)).fetchone()[0]
        row = cat.execute("SELECT row FROM embeddings WHERE model_id=? AND thumb_id=?",
                          (mid, r.results[0]["thumb_id"])).fetchone()[0]
    with VectorIndex.open(state_dir(out), m.name, m.dim, readonly=True) as vi:
        assert abs(float(vi.get([row])[0] @ q) - r.results[0]["score"]) < 1e-2
    # similar with a library thumbnail and with an outside copy of a source (re-loaded random weights are identical)
    first = sorted(src.glob("*.jpg"))[0]
    r2 = S.similar(out, first, k=3, model="clip:ViT-S-32/random")
    assert r2.in_library and len(r2.results) == 3
    # text search picks a CLIP model with real weights first, else the newest model
    assert S.search(out, "espresso", k=2).model in ("clip:ViT-S-32/random", "efficientnet-lite0")


def test_real_photos_label_search(tmp_path, shared_bench):
    names = ["gnome-control-center-data__coffee2.jpg", "gnome-control-center-data__cat.jpg",
             "darknet__dog.jpg", "gnome-control-center-data__guitar2.jpg",
             "gnome-control-center-data__hummingbird.jpg", "gnome-control-center-data__mountain.jpg"]
    src = tmp_path / "src"
    src.mkdir()
    for n in names:
        shutil.copy(shared_bench / "originals" / n, src / n)
    out = tmp_path / "thumbs"
    resize(src, out, workers=1)
    s = F.featurize(out, model="efficientnet-lite0", device="cpu", **QUIET)
    assert s.embedded == len(names)
    for q, want in [("espresso", "coffee2"), ("cat", "__cat"), ("dog", "dog"), ("guitar", "guitar2"),
                    ("coffee", "coffee2"), ("bird", "hummingbird")]:
        r = S.search(out, q, k=3)
        assert r.fallback
        assert want in r.results[0]["sources"][0], (q, r.results)
    r = S.similar(out, shared_bench / "originals" / "python3-skimage__coffee.png", k=1, device="cpu")
    assert "coffee2" in r.results[0]["sources"][0]
