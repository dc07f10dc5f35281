"""nearsort.vectors.index: float16 vector store + FAISS index, crash consistency, search and knn.

Real FAISS, real files in tmp_path, small dimensions so the whole file runs in seconds.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from nearsort.vectors.index import INDEX_META, IndexPolicy, VectorIndex
from nearsort.vectors.store import STORE_FILE, VectorStoreError

D = 32
MODEL = "clip:ViT-B-32/laion2b_s34b_b79k"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rand(n: int, seed: int, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def clustered(n: int, seed: int, d: int = D, clusters: int = 40) -> np.ndarray:
    r = np.random.default_rng(1234)
    centres = unit(r.standard_normal((clusters, d)))
    g = np.random.default_rng(seed)
    return unit(centres[g.integers(0, clusters, n)] + 0.35 * g.standard_normal((n, d)) / np.sqrt(d) * 3)


def brute(db: np.ndarray, q: np.ndarray, k: int):
    s = unit(q) @ db.T
    idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, idx, axis=1), idx


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def open_vi(tmp_path, valid_rows=None, model=MODEL, dim=D, **kw) -> VectorIndex:
    return VectorIndex.open(tmp_path, model, dim, valid_rows, **kw)


def index_meta(vi: VectorIndex) -> dict | None:
    p = vi.folder / INDEX_META
    return json.loads(p.read_text()) if p.exists() else None


# --------------------------------------------------------------------------- basics


def test_get_many_rows_reads_the_file_and_gives_the_stored_values(tmp_path):
    """More than CHUNK_ROWS rows are read from the file in blocks (not gathered through the memmap,
    whose pages would count as resident memory on top of the copy): the same values, in the order
    asked, float16 as stored or float32, contiguous runs and scattered rows alike."""
    from nearsort.vectors.store import CHUNK_ROWS

    n, d = CHUNK_ROWS * 2 + 123, 4
    x = np.random.default_rng(5).standard_normal((n, d)).astype(np.float32)
    with VectorIndex.open(tmp_path, MODEL, d, 0) as vi:
        vi.append(x)
        mm = np.asarray(vi.store.view())
        rng = np.random.default_rng(6)
        for rows in (np.arange(n), rng.permutation(n), rng.choice(n, CHUNK_ROWS + 7, replace=True),
                     np.concatenate([np.arange(10), np.arange(n - CHUNK_ROWS, n)])):
            h = vi.get(rows, np.float16)
            assert h.dtype == np.float16 and h.shape == (len(rows), d)
            np.testing.assert_array_equal(h, mm[rows])
            np.testing.assert_array_equal(vi.get(rows), mm[rows].astype(np.float32))


def test_append_search_round_trip_matches_numpy(tmp_path):
    x = rand(600, 1)
    with open_vi(tmp_path, 0) as vi:
        assert len(vi) == 0 and vi.dim == D
        rows = np.concatenate([vi.append(x[:250]), vi.append(x[250:251]), vi.append(x[251:])])
        assert rows.tolist() == list(range(600))
        assert len(vi) == 600
        stored = vi.get(np.arange(600))
        assert stored.dtype == np.float32 and stored.shape == (600, D)
        np.testing.assert_allclose(stored, unit(x), atol=2e-3)  # float16 rounding only
        np.testing.assert_allclose(vi.get([5, 3]), stored[[5, 3]])

        q = rand(20, 2) * 7.0  # queries get normalised too
        S, I = vi.search(q, 10)
        Se, Ie = brute(stored, q, 10)
        assert S.dtype == np.float32 and I.dtype == np.int64 and S.shape == I.shape == (20, 10)
        np.testing.assert_array_equal(I, Ie)
        np.testing.assert_allclose(S, Se, atol=1e-5)
        assert np.all(np.diff(S, axis=1) <= 1e-6)  # best first

        S1, I1 = vi.search(q[0], 3)  # a single 1-D query works too
        np.testing.assert_array_equal(I1, Ie[:1, :3])
        np.testing.assert_array_equal(vi.exact_search(q, 10)[1], Ie)
        assert vi.params()["kind"] == "flat"


def test_padding_empty_and_bad_input(tmp_path):
    with open_vi(tmp_path, 0) as vi:
        S, I = vi.search(rand(2, 1), 4)
        assert (I == -1).all() and np.isneginf(S).all()
        assert vi.knn(3)[1].shape == (0, 3)
        vi.append(rand(3, 2))
        S, I = vi.search(rand(1, 3), 5)
        assert sorted(I[0, :3].tolist()) == [0, 1, 2]
        assert (I[0, 3:] == -1).all() and np.isneginf(S[0, 3:]).all()
        with pytest.raises(ValueError):
            vi.append(np.full((1, D), np.nan, np.float32))
        with pytest.raises(ValueError):
            vi.append(np.ones((2, D + 1), np.float32))
        with pytest.raises(IndexError):
            vi.get([3])
        assert len(vi) == 3  # failed appends wrote nothing
        assert (vi.folder / STORE_FILE).stat().st_size == 3 * D * 2


# --------------------------------------------------------------------------- persistence


def test_persistence_across_reopen(tmp_path, caplog):
    x = rand(400, 3)
    q = rand(10, 4)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x)
        p = vi.save()
        assert p["ntotal"] == 400 and p["rows"] == 400
        S0, I0 = vi.search(q, 7)
        meta0 = index_meta(vi)
    assert meta0["ntotal"] == 400 and (vi.folder / meta0["file"]).exists()

    caplog.set_level(logging.INFO, logger="nearsort.vectors.index")
    with open_vi(tmp_path, 400) as vi:
        assert len(vi) == 400
        np.testing.assert_allclose(vi.get(np.arange(400)), unit(x), atol=2e-3)
        S1, I1 = vi.search(q, 7)
        np.testing.assert_array_equal(I0, I1)
        np.testing.assert_allclose(S0, S1)
        vi.save()  # nothing changed: no rewrite
        assert index_meta(vi)["file"] == meta0["file"]
    assert "built" not in caplog.text and "rebuild" not in caplog.text  # loaded, not rebuilt


def test_incremental_add_visible_and_saved(tmp_path):
    x = rand(500, 5)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x[:300])
        vi.save()
    with open_vi(tmp_path, 300) as vi:
        vi.search(x[:1], 1)  # index loaded, then appended to incrementally
        rows = vi.append(x[300:])
        assert rows[0] == 300
        _, I = vi.search(x[300:], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(300, 500))
        assert vi.save()["ntotal"] == 500
    with open_vi(tmp_path, 500) as vi:
        assert index_meta(vi)["ntotal"] == 500
        _, I = vi.search(x[450:460], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(450, 460))
    assert len(list(vi.folder.glob("index-*"))) == 1  # old index files cleaned up


def test_orphan_tail_truncated(tmp_path):
    x = rand(130, 6)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x[:100])  # committed in the catalog
        vi.save()
        vi.append(x[100:120])  # written, then "crash" before the catalog commit...
        vi.save()  # ...even with an index that already covers them
    with open(vi.folder / STORE_FILE, "ab") as f:
        f.write(b"\x01" * 7)  # and a torn partial row
    with open_vi(tmp_path, 100) as vi:
        assert len(vi) == 100
        assert (vi.folder / STORE_FILE).stat().st_size == 100 * D * 2
        assert index_meta(vi) is None  # the index that covered the orphans was invalidated
        _, I = vi.search(x[100:120], 5)
        assert I.max() < 100  # orphans are gone
        rows = vi.append(x[120:130])
        assert rows.tolist() == list(range(100, 110))  # their row numbers are reused
        _, I = vi.search(x[120:130], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(100, 110))
        assert vi.save()["ntotal"] == 110
    with open_vi(tmp_path, 110) as vi:
        np.testing.assert_allclose(vi.get(np.arange(100, 110)), unit(x[120:130]), atol=2e-3)
        S, I = vi.search(vi.get(np.arange(110)), 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(110))  # no duplicate, no stale row


def test_torn_partial_row_without_valid_rows(tmp_path):
    with open_vi(tmp_path, 0) as vi:
        vi.append(rand(10, 7))
    with open(vi.folder / STORE_FILE, "ab") as f:
        f.write(b"\x00" * (D * 2 - 1))
    with open_vi(tmp_path) as vi:
        assert len(vi) == 10
        assert (vi.folder / STORE_FILE).stat().st_size == 10 * D * 2


def test_index_behind_store_is_caught_up(tmp_path, caplog):
    x = rand(300, 8)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x[:200])
        vi.save()
        vi.append(x[200:])  # durable in the store, index not saved (crash after the commit)
    caplog.set_level(logging.INFO, logger="nearsort.vectors.index")
    with open_vi(tmp_path, 300) as vi:
        _, I = vi.search(x[250:260], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(250, 260))
        assert "behind the store by 100 rows" in caplog.text
        assert "built" not in caplog.text  # caught up, not rebuilt
        assert vi.save()["ntotal"] == 300
    assert index_meta(vi)["ntotal"] == 300


def test_index_not_matching_store_is_rebuilt(tmp_path, caplog):
    x, y = rand(200, 9), rand(200, 10)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x)
        vi.save()
    with open(vi.folder / STORE_FILE, "r+b") as f:  # store replaced behind the index's back
        f.write(unit(y).astype("<f2").tobytes())
    caplog.set_level(logging.INFO, logger="nearsort.vectors.index")
    with open_vi(tmp_path, 200) as vi:
        _, I = vi.search(y[:20], 1)
        np.testing.assert_array_equal(I[:, 0], np.arange(20))
        assert "does not match the stored vectors" in caplog.text


def test_catalog_ahead_of_store_is_an_error(tmp_path):
    with open_vi(tmp_path, 0) as vi:
        vi.append(rand(5, 11))
    with pytest.raises(VectorStoreError, match="holds only 5"):
        open_vi(tmp_path, 6)


def test_readonly_sees_only_committed_rows_and_writes_nothing(tmp_path):
    x = rand(120, 12)
    with open_vi(tmp_path, 0) as vi:
        vi.append(x)
        vi.save()  # index covers 120 rows, the catalog only 100 (writer mid-batch)
    folder = vi.folder
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    with open_vi(tmp_path, 100, readonly=True) as ro:
        assert len(ro) == 100
        _, I = ro.search(x[100:], 3)
        assert 0 <= I.min() and I.max() < 100
        _, I = ro.knn(3)
        assert I.shape == (100, 3) and I.max() < 100
        with pytest.raises(VectorStoreError):
            ro.append(x[:1])
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before
    with open_vi(tmp_path / "elsewhere", None, readonly=True) as ro:  # no store at all
        assert len(ro) == 0 and (ro.search(x[:1], 2)[1] == -1).all()
    assert not (tmp_path / "elsewhere").exists()


# --------------------------------------------------------------------------- index kinds


def test_flat_below_threshold_ivf_above_with_good_recall(tmp_path):
    policy = IndexPolicy(flat_max=1000)
    x = clustered(4000, 13)
    q = clustered(200, 14)
    with open_vi(tmp_path, 0, policy=policy) as vi:
        vi.append(x[:800])
        p = vi.save()
        assert p["kind"] == "flat"
        vi.append(x[800:])
        p = vi.save()  # crossed flat_max: rebuilt as IVF
        assert p["kind"] == "ivf" and p["ntotal"] == 4000
        assert p["params"]["nlist"] == IndexPolicy.nlist_for(4000) and p["params"]["nprobe"] >= 1
        assert p["params"]["encoding"] == "SQ8"
        json.dumps(p)  # ready for models.info
        meta = index_meta(vi)
        assert meta["kind"] == "ivf" and meta["params"] == p["params"] and meta["built_rows"] == 4000
    with open_vi(tmp_path, 4000, policy=policy) as vi:
        assert vi.params()["kind"] == "ivf"
        S, I = vi.search(q, 10)
        Se, Ie = brute(vi.get(np.arange(4000)), q, 10)
        assert recall(I, Ie) >= 0.9
        hit = I[:, 0] == Ie[:, 0]
        np.testing.assert_allclose(S[hit, 0], Se[hit, 0], atol=1e-5)  # exact re-ranked scores
        assert recall(vi.search(q, 10, nprobe=10_000)[1], Ie) >= 0.99  # all lists: ~exact
        for i in range(0, 200, 25):  # one query at a time (FAISS coarse step) == batched (numpy)
            Si, Ii = vi.search(q[i], 10)
            np.testing.assert_array_equal(Ii[0], I[i])
            np.testing.assert_allclose(Si[0], S[i], atol=1e-5)


def test_ivf_retrained_when_outgrown(tmp_path):
    policy = IndexPolicy(flat_max=1000, rebuild_growth=2.0)
    x = clustered(5000, 15)
    with open_vi(tmp_path, 0, policy=policy) as vi:
        vi.append(x[:2000])
        assert vi.save()["built_rows"] == 2000
        vi.append(x[2000:3000])
        assert vi.save()["built_rows"] == 2000  # 1.5x: incremental add only
        vi.append(x[3000:])
        p = vi.save()  # 2.5x: retrained
        assert p["built_rows"] == 5000 and p["ntotal"] == 5000


def test_hnsw_on_request(tmp_path):
    x = clustered(1500, 16)
    q = clustered(100, 17)
    with open_vi(tmp_path, 0, policy=IndexPolicy(kind="hnsw")) as vi:
        vi.append(x)
        p = vi.save()
        assert p["kind"] == "hnsw" and p["params"]["M"] == 32
    with open_vi(tmp_path, 1500, policy=IndexPolicy(kind="hnsw")) as vi:
        _, I = vi.search(q, 10, ef=128)
        assert recall(I, brute(vi.get(np.arange(1500)), q, 10)[1]) >= 0.9


# --------------------------------------------------------------------------- knn


def test_knn_excludes_self_and_matches_numpy(tmp_path):
    x = rand(300, 18)
    x[7] = x[3]  # an exact duplicate: it must show up as the other's neighbour, never as itself
    with open_vi(tmp_path, 0) as vi:
        vi.append(x)
        stored = vi.get(np.arange(300))
        S, I = vi.knn(5)
        sims = stored @ stored.T
        np.fill_diagonal(sims, -np.inf)
        Ie = np.argsort(-sims, axis=1, kind="stable")[:, :5]
        assert I.shape == (300, 5)
        assert not (I == np.arange(300)[:, None]).any()
        assert I[3, 0] == 7 and I[7, 0] == 3 and S[3, 0] > 0.999
        np.testing.assert_allclose(S, np.take_along_axis(sims, Ie, axis=1), atol=1e-5)
        np.testing.assert_allclose(S, np.take_along_axis(sims, I, axis=1), atol=1e-5)
        untied = ~np.isin(np.arange(300), [3, 7]) & ~np.isin(Ie, [3, 7]).any(axis=1)
        np.testing.assert_array_equal(I[untied], Ie[untied])  # (3 and 7 tie as neighbours)

        _, I3 = vi.knn(400)  # k >= n: padded
        assert (I3[:, 299:] == -1).all() and (I3[:, :299] >= 0).all()


def test_knn_approximate_through_ivf(tmp_path):
    x = clustered(3000, 19)
    with open_vi(tmp_path, 0, policy=IndexPolicy(flat_max=1000)) as vi:
        vi.append(x)
        vi.save()
        done = []
        S, I = vi.knn(10, progress=lambda a, b: done.append((a, b)))  # N >= flat_max: ANN
        assert done[-1] == (3000, 3000)
        assert not (I == np.arange(3000)[:, None]).any()
        Se, Ie = vi.knn(10, exact=True)  # brute force over the store, chunked
        assert not (Ie == np.arange(3000)[:, None]).any()
        stored = vi.get(np.arange(3000))
        sims = stored[:100] @ stored.T
        sims[np.arange(100), np.arange(100)] = -np.inf
        np.testing.assert_array_equal(Ie[:100], np.argsort(-sims, axis=1, kind="stable")[:, :10])
        assert recall(I, Ie) >= 0.9


def test_knn_graph_from_the_saved_index_lists_without_loading_its_codes(tmp_path):
    """A reader that only wants the k-NN graph (dupes, analyze) takes the saved IVF index's lists
    from a memory-mapped read and the rows by positional reads: the same graph as through the
    loaded index, and the index's codes never read into memory."""
    x = clustered(3000, 23)
    policy = IndexPolicy(flat_max=1000)
    with open_vi(tmp_path, 0, policy=policy) as vi:
        vi.append(x)
        vi.save()
        vi.search(x[:1], 1)  # the index is loaded in this one
        S_loaded, I_loaded = vi.knn(10)
        rows = np.array([2999, 0, 17, 17, 1500])
        np.testing.assert_array_equal(vi.store.gather(rows), np.asarray(vi.store.view()[rows]))
        with pytest.raises(IndexError):
            vi.store.gather([3000])
    with open_vi(tmp_path, 3000, policy=policy, readonly=True) as vi:
        S, I = vi.knn(10)
        assert vi._index is None  # the lists came from the mapped file
        np.testing.assert_array_equal(I, I_loaded)
        np.testing.assert_array_equal(S, S_loaded)
        Sq, Iq = vi.search(x[:5], 3)  # a later search still loads and uses the index
        assert (Iq[:, 0] == np.arange(5)).all()


# --------------------------------------------------------------------------- models


def test_two_models_coexist_and_never_mix(tmp_path):
    a, b = "clip:ViT-B-32/laion2b_s34b_b79k", "efficientnet-lite0"
    xa, xb = rand(50, 20, 32), rand(70, 21, 48)
    with VectorIndex.open(tmp_path, a, 32, 0) as va, VectorIndex.open(tmp_path, b, 48, 0) as vb:
        va.append(xa)
        vb.append(xb)
        va.save()
        vb.save()
        assert va.folder != vb.folder and va.folder.parent == vb.folder.parent == tmp_path / "vectors"
        for f in (va.folder, vb.folder):
            assert all(c.isalnum() or c in "-._" for c in f.name)
    with VectorIndex.open(tmp_path, a, 32, 50) as va, VectorIndex.open(tmp_path, b, 48, 70) as vb:
        assert (len(va), len(vb)) == (50, 70)
        np.testing.assert_allclose(va.get(np.arange(50)), unit(xa), atol=2e-3)
        np.testing.assert_allclose(vb.get(np.arange(70)), unit(xb), atol=2e-3)
        assert va.params()["store"] != vb.params()["store"]
    # names that slug alike still get their own folders
    assert VectorIndex.folder_for(tmp_path, "m/a") != VectorIndex.folder_for(tmp_path, "m:a")
    with pytest.raises(VectorStoreError, match="dimension"):
        VectorIndex.open(tmp_path, a, 48, 50)
