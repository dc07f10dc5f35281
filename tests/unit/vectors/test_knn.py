"""nearsort.vectors.knn: k-NN graphs, partition, k-means, exact search, Hamming search (real FAISS)."""
from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from nearsort.vectors import knn


def clustered(n, d=24, clusters=30, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((clusters, d))
    x = c[rng.integers(clusters, size=n)] + 0.4 * rng.standard_normal((n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def brute(x, k):
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    ids = np.broadcast_to(np.arange(len(x)), s.shape)
    o = np.lexsort((ids, -s), axis=1)[:, :k]  # score descending, ties -> lower id
    return np.take_along_axis(s, o, 1), o


def test_exact_graph_is_brute_force_with_ties_to_the_lower_id():
    x = clustered(700)
    x[10] = x[20] = x[5]  # three equal points: each other's nearest, lower id first, never itself
    S, I = knn.knn_graph(x, 6, exact=True)
    Se, Ie = brute(x, 6)
    assert I.dtype == np.int32 and S.dtype == np.float32
    assert not (I == np.arange(700)[:, None]).any()
    assert I[5, :2].tolist() == [10, 20] and I[10, :2].tolist() == [5, 20] and I[20, :2].tolist() == [5, 10]
    np.testing.assert_allclose(S, Se, atol=1e-5)
    close = np.abs(np.diff(Se, axis=1)).min(axis=1) > 1e-5  # rows without near-ties
    np.testing.assert_array_equal(I[close], Ie[close])
    # float16 input (a memmap of the store) gives the graph of the float16-rounded vectors
    h = x.astype(np.float16)
    S16, I16 = knn.knn_graph(h, 6, exact=True)
    np.testing.assert_allclose(S16, brute(h.astype(np.float32), 6)[0], atol=1e-5)


def test_graph_pads_when_there_are_fewer_points_than_k():
    x = clustered(5)
    S, I = knn.knn_graph(x, 8)
    assert I.shape == (5, 8) and (I[:, :4] >= 0).all() and (I[:, 4:] == -1).all()
    assert np.isneginf(S[:, 4:]).all()
    assert knn.knn_graph(x[:0], 3)[1].shape == (0, 3)


def test_approximate_graph_through_the_partition():
    x = clustered(6000, seed=1)
    part = knn.partition(x)
    assert part.nlist == knn.nlist_for(6000)
    sizes = np.diff(part.offsets)
    assert sizes.sum() == 6000 and np.array_equal(np.sort(part.perm), np.arange(6000))
    assert np.array_equal(part.assign[part.members(3)], np.full(sizes[3], 3))
    np.testing.assert_allclose(np.linalg.norm(part.centroids, axis=1), 1.0, atol=1e-4)
    # the radius bounds every member's angle to its centroid
    cos = np.einsum("ij,ij->i", x, part.centroids[part.assign])
    assert (np.arccos(np.clip(cos, -1, 1)) <= part.radius[part.assign]).all()
    done = []
    S, I = knn.knn_graph(x, 10, exact=False, part=part, progress=lambda a, b: done.append((a, b)))
    assert done[-1] == (6000, 6000)
    assert not (I == np.arange(6000)[:, None]).any() and (I >= 0).all()
    _, Ie = knn.knn_graph(x, 10, exact=True)
    rec = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)])
    assert rec >= 0.95
    S2, I2 = knn.knn_graph(x, 10, exact=False)  # builds the same partition itself: same graph
    np.testing.assert_array_equal(I2, I)


def test_search_exact_over_blocks_and_kmeans():
    x = clustered(3000, seed=2)
    q = clustered(50, seed=3)
    blocks = [(s, x[s:s + 700]) for s in range(0, 3000, 700)]
    S, I = knn.search_exact(q, blocks, 7)
    s = q @ x.T
    np.testing.assert_allclose(S, -np.sort(-s, axis=1)[:, :7], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(s, I, 1), S, atol=1e-5)
    C = knn.spherical_kmeans(x, 30, seed=0)
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(C, knn.spherical_kmeans(x, 30, seed=0))  # deterministic
    sims, lists = knn.assign(x, C, 2)
    assert (lists[:, 0] == np.argmax(x @ C.T, axis=1)).mean() > 0.999 and (sims[:, 0] >= sims[:, 1]).all()


def test_hamming_knn_is_exact_with_ties_to_the_lower_id():
    rng = np.random.default_rng(4)
    h = rng.integers(0, 2**63, 900, dtype=np.int64).astype(np.uint64)
    h[100:300] = h[:200] ^ (np.uint64(1) << rng.integers(0, 64, 200).astype(np.uint64))
    D, I = knn.hamming_knn(h, 5)
    d = knn.popcount(h[:, None] ^ h[None, :]).astype(np.int64)
    np.fill_diagonal(d, 999)
    key = d * len(h) + np.arange(len(h))  # distance, then id
    Ie = np.sort(key, axis=1)[:, :5] % len(h)
    np.testing.assert_array_equal(I, Ie)
    np.testing.assert_array_equal(D, np.take_along_axis(d, Ie, 1).astype(np.float32))


def test_popcount_and_signed_hashes():
    x = np.array([0, 1, 0xFF, 2**64 - 1, 0x8000000000000001], dtype=np.uint64)
    assert knn.popcount(x).tolist() == [0, 1, 8, 64, 2]
    assert knn.as_u64(np.array([-1], dtype=np.int64))[0] == np.uint64(2**64 - 1)
    with pytest.raises(ValueError):
        knn.as_u64(np.zeros((2, 2), np.uint64))


def test_drop_self_when_absent_drops_the_worst():
    S = np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]], np.float32)
    I = np.array([[4, 0, 5], [6, 7, 8]])
    S2, I2 = knn.drop_self(S, I, np.array([0, 1]), 2)
    assert I2.tolist() == [[4, 5], [6, 7]]
    np.testing.assert_allclose(S2, [[0.9, 0.7], [0.9, 0.8]])


def test_threads_are_set_once_to_the_usable_cores():
    n = knn.threads()
    assert n == len(os.sched_getaffinity(0)) and faiss.omp_get_max_threads() == n
    if "OMP_WAIT_POLICY" not in os.environ:  # pragma: no cover - set by nearsort.vectors on import
        pytest.fail("nearsort.vectors must set OMP_WAIT_POLICY before FAISS loads")
    get, set_ = knn.blas_threads._find()
    if get is None:
        pytest.skip("numpy's OpenBLAS symbols not found")
    before = get()
    with knn.blas_threads(1):
        assert get() == 1
        assert faiss.omp_get_max_threads() == n  # numpy's BLAS only, not FAISS' threads
    assert get() == before
