"""Tests for nearsort.order.chain (pure algorithms; small synthetic data, fast)."""
from __future__ import annotations

import numpy as np
import pytest

from nearsort.order.chain import (
    ChainResult,
    _start_point,
    hamming_chain,
    key_order,
    name_order,
    natural_key,
    similarity_chain,
)
from nearsort.order.pages import cut_points


# ----------------------------------------------------------------------------- helpers

def clustered(n_clusters=12, per=40, d=32, seed=0, dup_groups=15):
    """Unit vectors in clusters plus tight near-duplicate groups of 2..5.
    Returns X (shuffled) and the groups as lists of row indices."""
    rng = np.random.default_rng(seed)
    rows, gid = [], []
    for _ in range(n_clusters):
        centre = rng.standard_normal(d)
        centre /= np.linalg.norm(centre)
        pts = centre + 0.5 * rng.standard_normal((per, d)) / np.sqrt(d)
        rows.append(pts)
        gid += [-1] * per
    for g in range(dup_groups):
        base = rows[g % n_clusters][rng.integers(per)] + 0.3 * rng.standard_normal(d) / np.sqrt(d)
        m = int(rng.integers(2, 6))
        rows.append(base + 0.005 * rng.standard_normal((m, d)) / np.sqrt(d))
        gid += [g] * m
    X = np.concatenate(rows).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    gid = np.asarray(gid)
    p = rng.permutation(len(X))
    X, gid = X[p], gid[p]
    groups = [np.flatnonzero(gid == g) for g in range(dup_groups)]
    return X, groups


def naive_greedy(X, start):
    n = len(X)
    vis = np.zeros(n, dtype=bool)
    order = [start]
    vis[start] = True
    cur = start
    for _ in range(n - 1):
        s = X @ X[cur]
        s[vis] = -np.inf
        cur = int(np.argmax(s))
        vis[cur] = True
        order.append(cur)
    return np.asarray(order)


def chain_length(X, order):
    if len(order) < 2:
        return 0.0
    return float(np.maximum(0, 1 - np.einsum("ij,ij->i", X[order[:-1]], X[order[1:]])).sum())


def is_perm(order, n):
    return order.dtype == np.int64 and len(order) == n and np.array_equal(np.sort(order), np.arange(n))


def adjacent_share(order, groups):
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    return np.mean([np.ptp(pos[g]) == len(g) - 1 for g in groups])


# ----------------------------------------------------------------------------- similarity

def test_exact_greedy_equals_naive():
    X, _ = clustered(seed=1)
    r = similarity_chain(X, improve=False, k=8)
    assert r.stats["exact"] and r.stats["fallbacks"] > 0  # the fallback path is exercised
    assert is_perm(r.order, len(X))
    ref = naive_greedy(X, _start_point(X))
    assert np.array_equal(r.order, ref)
    assert r.length == pytest.approx(chain_length(X, ref), rel=1e-5)
    assert r.steps[0] == 0 and r.steps.dtype == np.float32


def test_improved_chain_no_longer_than_greedy_and_at_least_mst():
    X, _ = clustered(seed=2)
    g = similarity_chain(X, improve=False)
    r = similarity_chain(X)
    assert is_perm(r.order, len(X))
    assert r.length <= g.length + 1e-6
    assert r.length < g.length  # it does find improvements on clustered data
    assert r.length <= chain_length(X, naive_greedy(X, _start_point(X))) + 1e-5
    assert r.length == pytest.approx(chain_length(X, r.order), rel=1e-5)
    assert r.mst_weight is not None and r.length >= r.mst_weight - 1e-6
    assert r.stats["improve"]["after"] == pytest.approx(r.length, rel=1e-6)
    assert np.allclose(r.steps[1:], np.maximum(0, 1 - np.einsum(
        "ij,ij->i", X[r.order[:-1]], X[r.order[1:]])), atol=1e-5)


def test_deterministic_and_input_order_independent_start():
    X, _ = clustered(seed=3)
    a = similarity_chain(X)
    b = similarity_chain(X.copy())
    assert np.array_equal(a.order, b.order)
    assert np.array_equal(a.steps, b.steps)
    f1 = similarity_chain(X, fast=True)
    f2 = similarity_chain(X, fast=True)
    assert np.array_equal(f1.order, f2.order)
    # the start does not depend on the row order
    p = np.random.default_rng(0).permutation(len(X))
    assert p[_start_point(X[p])] == _start_point(X)


def test_near_duplicates_adjacent():
    X, groups = clustered(seed=4, dup_groups=25)
    for fast in (False, True):
        r = similarity_chain(X, fast=fast)
        assert adjacent_share(r.order, groups) == 1.0


def test_approximate_path_valid_and_close_to_exact():
    X, groups = clustered(n_clusters=40, per=60, seed=5, dup_groups=30)
    e = similarity_chain(X)
    a = similarity_chain(X, fast=True)
    assert not a.stats["exact"] and a.stats["nlist"] > 1
    assert is_perm(a.order, len(X))
    assert a.length >= a.mst_weight - 1e-6
    assert a.length <= 1.1 * e.length
    assert adjacent_share(a.order, groups) >= 0.95
    # above exact_limit the approximate path is taken automatically
    b = similarity_chain(X, exact_limit=100, improve=False)
    assert not b.stats["exact"] and is_perm(b.order, len(X))


def _edges(order):
    return {frozenset(e) for e in zip(order[:-1].tolist(), order[1:].tolist())}


def test_unnormalised_and_float64_input():
    X, _ = clustered(seed=6)
    a = similarity_chain(X)
    b = similarity_chain((X * 3.0).astype(np.float64))
    # renormalising moves values by an ulp, and copies in a near-duplicate group differ by
    # less than that: the chain may swap two copies (and the local search then take another
    # path), nothing more
    assert b.length == pytest.approx(a.length, rel=1e-3)
    assert len(_edges(a.order) & _edges(b.order)) >= 0.97 * (len(X) - 1)
    assert similarity_chain((X * 3.0).astype(np.float64), improve=False).length == pytest.approx(
        similarity_chain(X, improve=False).length, rel=1e-4)


def test_float16_input_is_used_without_float32_copy():
    X, groups = clustered(seed=9)
    H = X.astype(np.float16)
    for fast in (False, True):
        r = similarity_chain(H, fast=fast)
        assert is_perm(r.order, len(X))
        assert adjacent_share(r.order, groups) == 1.0
        assert r.length == pytest.approx(similarity_chain(X, fast=fast).length, rel=0.02)


def test_float16_gives_the_chain_of_its_float32_copy():
    """analyze hands the stored float16 vectors to the chain (half the memory): the chain is the
    one their float32 copies give, exact and through the IVF partition."""
    X, _ = clustered(seed=4)
    H = X.astype(np.float16)
    for fast in (False, True):
        a, b = similarity_chain(H.astype(np.float32), fast=fast), similarity_chain(H, fast=fast)
        np.testing.assert_array_equal(a.order, b.order)
        np.testing.assert_array_equal(a.steps, b.steps)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_tiny_inputs(n):
    X = np.random.default_rng(n).standard_normal((n, 8)).astype(np.float32)
    r = similarity_chain(X)
    assert isinstance(r, ChainResult)
    assert is_perm(r.order, n)
    assert len(r.steps) == n and r.long_jumps >= 0
    if n:
        assert r.steps[0] == 0
    if n == 2:
        assert r.length == pytest.approx(chain_length(X / np.linalg.norm(X, axis=1, keepdims=True), r.order), abs=1e-6)


def test_identical_vectors():
    rng = np.random.default_rng(7)
    v = rng.standard_normal(16).astype(np.float32)
    X = np.tile(v, (30, 1))
    r = similarity_chain(X)
    assert is_perm(r.order, 30)
    assert r.length == pytest.approx(0.0, abs=1e-4)
    # many exact copies mixed with other points: copies stay together, zero steps inside
    Y = np.concatenate([X, rng.standard_normal((60, 16)).astype(np.float32)])
    r = similarity_chain(Y, k=4)
    pos = np.empty(len(Y), dtype=np.int64)
    pos[r.order] = np.arange(len(Y))
    assert np.ptp(pos[:30]) == 29
    assert r.length >= r.mst_weight - 1e-6
    r2 = similarity_chain(Y, k=4, fast=True)
    assert is_perm(r2.order, len(Y))


def test_zero_vectors_do_not_crash():
    X = np.zeros((5, 4), dtype=np.float32)
    X[0, 0] = 1
    r = similarity_chain(X)
    assert is_perm(r.order, 5)


def test_progress_monotone():
    X, _ = clustered(seed=8)
    seen = []
    similarity_chain(X, progress=lambda d, t: seen.append((d, t)))
    assert seen and seen[-1][0] == seen[-1][1]
    done = [d for d, _ in seen]
    assert done == sorted(done)


def test_bad_shape():
    with pytest.raises(ValueError):
        similarity_chain(np.zeros(5, dtype=np.float32))


# ----------------------------------------------------------------------------- hamming

def _hash_groups(n_groups=300, seed=0, flips=2):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=n_groups, dtype=np.int64).astype(np.uint64)
    sizes = rng.integers(1, 5, size=n_groups)
    h, gid = [], []
    for g, (b, m) in enumerate(zip(base, sizes)):
        for _ in range(m):
            x = b
            for _ in range(int(rng.integers(0, flips + 1))):
                x ^= np.uint64(1) << np.uint64(rng.integers(64))
            h.append(x)
            gid.append(g)
    h = np.asarray(h, dtype=np.uint64)
    gid = np.asarray(gid)
    p = rng.permutation(len(h))
    h, gid = h[p], gid[p]
    groups = [np.flatnonzero(gid == g) for g in range(n_groups) if (gid == g).sum() > 1]
    return h, groups


@pytest.mark.parametrize("fast", [False, True])
def test_hamming_chain_groups_near_hashes(fast):
    h, groups = _hash_groups(seed=1)
    r = hamming_chain(h, fast=fast)
    assert is_perm(r.order, len(h))
    assert adjacent_share(r.order, groups) >= (1.0 if not fast else 0.97)
    d = np.bitwise_count(h[r.order[1:]] ^ h[r.order[:-1]])
    assert np.array_equal(r.steps[1:], d.astype(np.float32))
    assert r.length >= r.mst_weight
    r2 = hamming_chain(h, fast=fast)
    assert np.array_equal(r.order, r2.order)


def test_hamming_exact_equals_naive():
    h, _ = _hash_groups(n_groups=150, seed=2, flips=6)
    r = hamming_chain(h, k=4, mst=False)
    n = len(h)
    vis = np.zeros(n, dtype=bool)
    cur = r.order[0]
    vis[cur] = True
    ref = [cur]
    for _ in range(n - 1):
        d = np.bitwise_count(h ^ h[cur]).astype(np.int64)
        d[vis] = 999
        cur = int(np.argmin(d))
        vis[cur] = True
        ref.append(cur)
    assert np.array_equal(r.order, np.asarray(ref))


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_hamming_tiny_and_equal(n):
    h = np.full(n, 0xDEADBEEF, dtype=np.uint64)
    r = hamming_chain(h)
    assert is_perm(r.order, n) and r.length == 0
    r = hamming_chain(np.arange(n, dtype=np.int64))  # signed input is accepted
    assert is_perm(r.order, n)


# ----------------------------------------------------------------------------- keys / names

def test_key_order_stable_ties_and_missing():
    keys = [3, 1, None, 2, 1, float("nan"), 3]
    assert key_order(keys).tolist() == [1, 4, 3, 0, 6, 2, 5]
    assert key_order(keys, reverse=True).tolist() == [0, 6, 3, 1, 4, 2, 5]
    arr = np.array([3, 1, np.nan, 2, 1, np.nan, 3])
    assert key_order(arr).tolist() == [1, 4, 3, 0, 6, 2, 5]
    assert key_order(arr, reverse=True).tolist() == [0, 6, 3, 1, 4, 2, 5]
    assert key_order(np.array([5, 5, 1, 9])).tolist() == [2, 0, 1, 3]
    assert key_order(np.array([5, 5, 1, 9]), reverse=True).tolist() == [3, 0, 1, 2]
    assert key_order([(1920, 1080), (640, 480), (1920, 1080)]).tolist() == [1, 0, 2]
    assert key_order([]).tolist() == []


def test_name_order_natural():
    names = ["IMG_10.jpg", "img_2.JPG", "IMG_0001.jpg", "x/y/IMG_3.png", "DSC-1.jpg",
             "dsc_1.jpg", "zeta", "Äpfel.jpg", "apfel.jpg"]
    got = [names[i] for i in name_order(names)]
    assert got == ["apfel.jpg", "Äpfel.jpg", "DSC-1.jpg", "dsc_1.jpg", "IMG_0001.jpg",
                   "img_2.JPG", "x/y/IMG_3.png", "IMG_10.jpg", "zeta"]
    assert natural_key("a2") < natural_key("a10")
    assert name_order([]).tolist() == []
    assert name_order(["b", "a", "a"]).tolist() == [1, 2, 0]


# ----------------------------------------------------------------------------- cut points

def _pages(cuts, n):
    b = [0] + list(cuts) + [n]
    return np.diff(b)


def test_cut_points_prefers_largest_jumps():
    rng = np.random.default_rng(0)
    st = rng.random(2000) * 0.1
    st[0] = 0
    big = [300, 650, 1000, 1450, 1800]
    st[big] = 5.0
    cuts = cut_points(st, 500)
    assert cuts == big
    # forced cut inside a long stretch goes to its largest step
    st2 = rng.random(1200) * 0.1
    st2[[400, 700]] = [0.5, 0.4]
    cuts = cut_points(st2, 500)
    assert 400 in cuts and all(p <= 500 for p in _pages(cuts, 1200))


@pytest.mark.parametrize("n,M", [(0, 500), (1, 500), (500, 500), (501, 500), (1200, 500),
                                 (10_000, 500), (999, 10), (50, 1), (7, 2)])
def test_cut_points_respects_limits(n, M):
    st = np.random.default_rng(n).random(n)
    cuts = cut_points(st, M)
    assert cuts == sorted(set(cuts)) and all(0 < c < n for c in cuts)
    pages = _pages(cuts, n) if n else []
    assert all(p <= M for p in pages)
    if n > M:
        assert min(pages) >= max(1, M // 5)
    if n <= M:
        assert cuts == []


def test_cut_points_flat_chain_uses_few_pages():
    cuts = cut_points(np.zeros(1200), 500)
    assert len(cuts) == 2
