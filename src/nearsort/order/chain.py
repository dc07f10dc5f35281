"""Chain orderings: put every photo into one chain so that look-alikes sit side by side.

Pure algorithms on arrays (numpy/scipy; no catalog, no I/O): ``similarity_chain`` (cosine),
``hamming_chain`` (64-bit hashes), ``key_order``, ``name_order``; the local search is in
order/improve.py, page cuts in order/pages.py, every neighbour computation (k-NN graphs, IVF
partition, Hamming search) in vectors/knn.py.
Invariants: ``ChainResult.order`` is a permutation of the input; the same input (same machine /
BLAS) gives the same order (no unseeded randomness, ties broken by index, no wall-clock budget
unless asked for); ``length >= mst_weight`` whenever the bound is computed; the exact greedy
chain equals the naive O(n^2) one; float16 input (a memmap of the store) is not copied whole to
float32 above ``exact_limit``.
How and why: docs/design.md, "order".
"""
from __future__ import annotations

import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from nearsort.order.improve import improve as improve_chain
from nearsort.order.improve import pair_dist
from nearsort.vectors import knn

Progress = Optional[Callable[[int, int], None]]

__all__ = [
    "ChainResult",
    "similarity_chain",
    "hamming_chain",
    "key_order",
    "name_order",
    "natural_key",
    "chain_stats",
]


@dataclass
class ChainResult:
    """One chain through all points.

    ``order[i]`` is the input index of the i-th point of the chain, ``steps[i]`` the
    distance from ``order[i-1]`` to ``order[i]`` (``steps[0] == 0``).
    """

    order: np.ndarray
    steps: np.ndarray
    length: float
    mst_weight: Optional[float]
    long_jumps: int
    stats: dict = field(default_factory=dict)

    @property
    def mst_ratio(self) -> Optional[float]:
        if self.mst_weight is None or self.mst_weight <= 0:
            return None
        return self.length / self.mst_weight


# --------------------------------------------------------------------------------------
# small utilities
# --------------------------------------------------------------------------------------

class _Phases:
    """Maps the phases (kNN, walk, improve) onto one ``progress(done, total)`` scale."""

    def __init__(self, progress: Progress, n: int, phases: int):
        self.cb = progress
        self.n = max(1, n)
        self.total = self.n * phases
        self.base = 0
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        if self.cb is None:
            return
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        v = self.base + int(frac * self.n)
        if v != self.last:
            self.last = v
            self.cb(v, self.total)

    def next(self) -> None:
        self.base = min(self.total, self.base + self.n)
        self(0, 1)

    def finish(self) -> None:
        if self.cb is not None:
            self.cb(self.total, self.total)


def _f32(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.astype(np.float32)


def _unit_rows(vectors, chunk: int = 16384) -> np.ndarray:
    """C-contiguous, L2-normalised rows, float32 - or float16 when given float16 (half the
    memory; every computation gathers rows into float32 blocks). No copy when the input
    already is so (a read-only np.memmap works too)."""
    X = np.asarray(vectors)
    if X.ndim != 2:
        raise ValueError(f"vectors must be 2-D (n, d), got shape {X.shape}")
    dt = np.float16 if X.dtype == np.float16 else np.float32
    if X.dtype != dt or not X.flags.c_contiguous:
        X = np.ascontiguousarray(X, dtype=dt)
        owned = True
    else:
        owned = False
    tol = 1e-3 if dt == np.float32 else 4e-3
    n = X.shape[0]
    for s in range(0, n, chunk):
        blk = X[s:s + chunk]
        nrm = np.sqrt(np.einsum("ij,ij->i", blk, blk, dtype=np.float64))
        if np.all((np.abs(nrm - 1.0) < tol) | (nrm == 0)):  # zero rows stay zero
            continue
        if not owned:
            X = X.copy()
            owned = True
            blk = X[s:s + chunk]
        nrm[nrm == 0] = 1.0
        blk[...] = (blk.astype(np.float64) / nrm[:, None]).astype(dt)
    return X


START_BLOCK_BYTES = 64 << 20  # _start_point reads the vectors in blocks this big (was 262144 rows: 1.3 GB
                              # of float32 at d=1280, on top of the vectors themselves)


def _start_point(X: np.ndarray) -> int:
    """Deterministic start: the point farthest (cosine) from the mean direction.

    Ties -> lowest index. Independent of the input order, and an "end" of the data,
    so the walk does not start in the middle and strand one half for later.
    """
    n = X.shape[0]
    step = max(1024, START_BLOCK_BYTES // (8 * max(1, X.shape[1])))  # rows: a float64 block stays this small
    mean = np.zeros(X.shape[1], dtype=np.float64)
    for s in range(0, n, step):
        mean += X[s:s + step].sum(axis=0, dtype=np.float64)
    nrm = np.linalg.norm(mean)
    if nrm == 0:
        return 0
    m = (mean / nrm).astype(np.float32)
    best, best_v = 0, np.inf
    for s in range(0, n, step):
        v = _f32(X[s:s + step]) @ m
        j = int(np.argmin(v))
        if v[j] < best_v:
            best, best_v = s + j, float(v[j])
    return best


# --------------------------------------------------------------------------------------
# "nearest unvisited point" when every neighbour of the current point is visited
# --------------------------------------------------------------------------------------

class _IVFRemaining:
    """Inverted lists of the unvisited points. Lists are compacted lazily when scanned;
    empty lists are dropped from the centroid table (rebuilt when half are dead).

    * approximate (default): the unvisited 2-hop neighbours in ``graph`` if there are
      any, else scan the ``nprobe`` non-empty lists whose centroids are nearest;
    * ``exact=True``: scan lists by decreasing upper bound cos(max(0, angle(q, c) - r))
      (r = list radius) and stop as soon as no remaining list can beat the best point
      found: the exact nearest unvisited point (ties -> lowest id)."""

    def __init__(self, X: np.ndarray, vis: np.ndarray, ivf: knn.Partition, nprobe: int, exact: bool = False,
                 graph: Optional[np.ndarray] = None):
        self.X = X
        self.graph = graph  # approximate mode: try unvisited 2-hop neighbours first
        self.vis = vis
        self.exact = exact
        self.lists = [ivf.members(l) for l in range(ivf.nlist)]
        self.C = ivf.centroids
        self.R = ivf.radius
        sizes = np.diff(ivf.offsets)
        self.alive = np.flatnonzero(sizes > 0)
        self.CA = self.C[self.alive]
        self.RA = self.R[self.alive]
        self.dead = sizes == 0
        self.ndead_in_alive = 0
        self.nprobe = nprobe
        self.scans = 0
        self.scanned_points = 0
        self.scanned_lists = 0
        self.hop2 = 0

    def _rebuild(self):
        self.alive = self.alive[~self.dead[self.alive]]
        self.CA = self.C[self.alive]
        self.RA = self.R[self.alive]
        self.ndead_in_alive = 0

    def _members(self, l: int):
        mem = self.lists[l]
        mem = mem[~self.vis[mem]]
        self.lists[l] = mem
        if len(mem) == 0 and not self.dead[l]:
            self.dead[l] = True
            self.ndead_in_alive += 1
        return mem

    def nearest(self, cur: int):
        self.scans += 1
        if len(self.alive) == 0:
            raise RuntimeError("no unvisited point left")
        q = _f32(self.X[cur])
        if self.graph is not None and not self.exact:
            c2 = self.graph[self.graph[cur]].ravel()
            c2 = c2[~self.vis[c2]]
            if len(c2):
                c2 = np.unique(c2)
                self.hop2 += 1
                self.scanned_points += len(c2)
                sims = _f32(self.X[c2]) @ q
                j = int(np.argmax(sims))  # c2 sorted -> ties to the lowest id
                return int(c2[j]), max(0.0, 1.0 - float(sims[j]))
        s = self.CA @ q
        if self.exact:
            res = self._nearest_exact(q, s)
        else:
            res = self._nearest_approx(q, s)
        if self.ndead_in_alive * 2 > len(self.alive):
            self._rebuild()
        return res

    def _nearest_exact(self, q, s):
        theta = np.arccos(np.clip(s.astype(np.float64), -1.0, 1.0))
        ub = np.cos(np.maximum(0.0, theta - self.RA))
        ub[self.dead[self.alive]] = -np.inf
        order = np.argsort(-ub, kind="stable")
        best, best_id = -np.inf, -1
        for t in order:
            if ub[t] < best or ub[t] == -np.inf:
                break
            mem = self._members(int(self.alive[t]))
            if len(mem) == 0:
                continue
            self.scanned_lists += 1
            self.scanned_points += len(mem)
            sims = _f32(self.X[mem]) @ q
            m = sims.max()
            if m >= best:
                ids = mem[sims == m]
                j = int(ids.min())
                if m > best or j < best_id:
                    best, best_id = float(m), j
        if best_id < 0:
            raise RuntimeError("no unvisited point left")
        return best_id, max(0.0, 1.0 - best)

    def _nearest_approx(self, q, s):
        while True:
            s = s.copy()
            s[self.dead[self.alive]] = -np.inf
            m = min(len(s), 4 * self.nprobe)
            top = np.argpartition(-s, m - 1)[:m] if m < len(s) else np.arange(len(s))
            top = top[np.lexsort((top, -s[top]))]
            got = []
            for t in top:
                if not np.isfinite(s[t]):
                    break
                mem = self._members(int(self.alive[t]))
                if len(mem):
                    got.append(mem)
                    if len(got) >= self.nprobe:
                        break
            if got:
                break
            if not np.isfinite(s).any():
                raise RuntimeError("no unvisited point left")
        cand = np.concatenate(got) if len(got) > 1 else got[0]
        self.scanned_lists += len(got)
        self.scanned_points += len(cand)
        sims = _f32(self.X[cand]) @ q
        best = np.flatnonzero(sims == sims.max())
        j = best[np.argmin(cand[best])] if len(best) > 1 else best[0]
        return int(cand[j]), max(0.0, 1.0 - float(sims[j]))


# --------------------------------------------------------------------------------------
# the greedy walk
# --------------------------------------------------------------------------------------

def _walk(I: np.ndarray, D: np.ndarray, start: int, visited: bytearray, fallback,
          progress: Progress):
    """Greedy nearest-unvisited walk over the k-NN lists (sorted by distance, then id);
    ``fallback.nearest(cur)`` when every listed neighbour is visited."""
    n = I.shape[0]
    order = np.empty(n, dtype=np.int64)
    steps = np.zeros(n, dtype=np.float32)
    cur = int(start)
    visited[cur] = 1
    order[0] = cur
    nfb = 0
    tick = max(1, min(65536, n // 100))
    for t in range(1, n):
        nxt = -1
        row = I[cur].tolist()
        for j, c in enumerate(row):
            if c < 0:  # padding of a short list
                break
            if not visited[c]:
                nxt = c
                d = float(D[cur, j])
                break
        if nxt < 0:
            nxt, d = fallback.nearest(cur)
            nfb += 1
        visited[nxt] = 1
        order[t] = nxt
        steps[t] = d
        cur = nxt
        if progress and t % tick == 0:
            progress(t, n)
    if progress:
        progress(n, n)
    return order, steps, nfb


# --------------------------------------------------------------------------------------
# quality: MST bound, long jumps
# --------------------------------------------------------------------------------------

def _mst_weight(n: int, I: np.ndarray, D: np.ndarray, order: np.ndarray, steps: np.ndarray):
    """Weight of the minimum spanning tree of (k-NN graph + the chain's own edges).

    The chain edges make the graph connected, and the chain is itself a spanning tree of
    that graph, so ``chain length >= mst_weight`` always holds. Returns (weight,
    mst edge weights)."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    if n < 2:
        return 0.0, np.zeros(0, dtype=np.float64)
    if n > 2_000_000 and I.shape[1] > 8:  # bound memory (~1 GB per 50M edges)
        I, D = I[:, :8], D[:, :8]
    k = I.shape[1]
    a = np.concatenate([np.repeat(np.arange(n, dtype=np.int64), k), order[:-1]])
    b = np.concatenate([I.ravel().astype(np.int64), order[1:]])
    w = np.concatenate([D.ravel(), steps[1:]]).astype(np.float64)
    ok = b >= 0
    if not ok.all():
        a, b, w = a[ok], b[ok], w[ok]
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    del a, b
    key = lo * n + hi
    del lo, hi
    o = np.argsort(key, kind="stable")
    key = key[o]
    w = w[o]
    del o
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    w = np.minimum.reduceat(w, first)
    key = key[first]
    del first
    keep = (key // n) != (key % n)
    key, w = key[keep], w[keep]
    rows = key // n
    cols = key % n
    del key
    w = np.maximum(w, 1e-12)  # scipy drops explicit zeros (identical points)
    indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    G = csr_matrix((w, cols.astype(np.int32 if n < 2**31 - 1 else np.int64), indptr), shape=(n, n))
    del rows, cols, w
    T = minimum_spanning_tree(G)
    tw = T.data.astype(np.float64)
    return float(tw.sum()), tw


def _gather_groups(order: np.ndarray, I: np.ndarray, D: np.ndarray, thr: float):
    """Make near-duplicate groups contiguous. Groups = connected components of the k-NN
    edges shorter than ``thr``. The chain objective (sum of 1-cos, a squared-chord
    distance, not a metric) sometimes prefers x between two copies (d(a,x) + d(x,a') can
    beat the detour elsewhere); for a photo browser copies belong together, so members of
    a split group move right after its first member (in chain order). Returns the new
    order and the number of groups moved."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(order)
    rows, cols = np.nonzero(D <= thr)
    if len(rows) == 0:
        return order, 0
    nb = I[rows, cols].astype(np.int64)
    ok = nb >= 0
    G = csr_matrix((np.ones(int(ok.sum()), dtype=np.int8), (rows[ok], nb[ok])), shape=(n, n))
    ncomp, lab = connected_components(G, directed=True, connection="weak")
    pos = np.empty(n, dtype=np.int64)
    pos[order] = np.arange(n)
    size = np.bincount(lab, minlength=ncomp)
    lo = np.full(ncomp, n, dtype=np.int64)
    hi = np.full(ncomp, -1, dtype=np.int64)
    np.minimum.at(lo, lab, pos)
    np.maximum.at(hi, lab, pos)
    split = (size > 1) & (hi - lo + 1 != size)
    if not split.any():
        return order, 0
    key = pos.astype(np.float64)
    mem = np.flatnonzero(split[lab])
    mem = mem[np.lexsort((pos[mem], lab[mem]))]  # by group, then chain position
    g = lab[mem]
    first = np.r_[True, g[1:] != g[:-1]]
    start = np.flatnonzero(first)
    rank = np.arange(len(mem)) - np.repeat(start, np.diff(np.r_[start, len(mem)]))
    key[mem] = lo[g] + rank / (size[g] + 1.0)
    return order[np.argsort(key[order], kind="stable")], int(split.sum())


def _jump_threshold(D: np.ndarray, q: float = 99.0) -> float:
    """Default long-jump threshold: the 99th percentile, over all points, of the distance
    to the k-th nearest neighbour - a step longer than that leaves the neighbourhood of
    99 % of the photos (on the synthetic data it matches the subject changes)."""
    if D.size == 0:
        return 0.0
    return float(np.percentile(D[:, -1].astype(np.float64), q))


def _finish_chain(n, I, D, order, steps, thr, mst: bool, stats: dict, t0: float, ph,
                  integer: bool = False) -> "ChainResult":
    """MST lower bound (over the kNN graph + the chain's own edges), long jumps, timings."""
    mst_w = None
    if mst:
        t = time.perf_counter()
        mst_w, tw = _mst_weight(n, I, D, order, steps)
        if integer:
            mst_w = float(np.round(mst_w))  # Hamming weights (zero edges were stored as 1e-12)
        stats["mst_long_edges"] = int((tw > thr).sum())
        stats["t_mst"] = time.perf_counter() - t
    cs = chain_stats(steps, thr)
    stats["t_total"] = time.perf_counter() - t0
    ph.finish()
    return ChainResult(order, steps, cs["length"], mst_w, cs["long_jumps"], stats)


def chain_stats(steps: np.ndarray, threshold: float) -> dict:
    steps = np.asarray(steps, dtype=np.float64)
    body = steps[1:]
    if len(body) == 0:
        return {"length": 0.0, "long_jumps": 0, "mean_step": 0.0, "max_step": 0.0}
    return {
        "length": float(body.sum()),
        "long_jumps": int((body > threshold).sum()),
        "mean_step": float(body.mean()),
        "max_step": float(body.max()),
    }


# --------------------------------------------------------------------------------------
# public: similarity chain
# --------------------------------------------------------------------------------------

def similarity_chain(vectors, *, fast: bool = False, k: int = 16, exact_limit: int = knn.EXACT_MAX,
                     improve: bool = True, progress: Progress = None,
                     jump_threshold: Optional[float] = None, mst: bool = True,
                     nprobe: Optional[int] = None, seed: int = 0, improve_evals: float = 5.0,
                     improve_seconds: Optional[float] = None,
                     dup_threshold: Optional[float] = None) -> ChainResult:
    """Greedy nearest-unvisited chain through L2-normalised embeddings (cosine distance),
    then 2-opt/Or-opt improvement. The algorithm: docs/design.md, "order".

    vectors: (n, d) array (any float dtype; rows are normalised if they are not unit).
    fast: approximate k-NN/fallback even when ``n <= exact_limit``.
    k: neighbours per point in the k-NN graph.
    improve: run the local search (work budget ``improve_evals * n`` node examinations;
        ``improve_seconds`` adds a wall-clock cap, which makes the result timing-dependent).
    jump_threshold: cosine distance above which a step counts as a long jump (default:
        99th percentile of the distance to the k-th neighbour).
    mst: also compute the MST bound (``mst_weight``).
    dup_threshold: k-NN edges at most this long join near-duplicate groups that are kept
        contiguous (default min(0.01, median nearest-neighbour distance / 4); 0: off).
    nprobe: IVF lists each list is searched among, and the walk's fallback scans (approximate
        path; default knn.graph_nprobe: 8 of the ~2 sqrt(n) lists).
    progress: ``progress(done, total)`` over the phases kNN, walk, improve.
    """
    with knn.blas_threads(1):
        return _similarity_chain(vectors, fast=fast, k=k, exact_limit=exact_limit, improve=improve,
                                 progress=progress, jump_threshold=jump_threshold, mst=mst,
                                 nprobe=nprobe, seed=seed, improve_evals=improve_evals,
                                 improve_seconds=improve_seconds, dup_threshold=dup_threshold)


def _similarity_chain(vectors, *, fast, k, exact_limit, improve, progress, jump_threshold, mst,
                      nprobe, seed, improve_evals, improve_seconds, dup_threshold) -> ChainResult:
    t0 = time.perf_counter()
    X = _unit_rows(vectors)
    n = X.shape[0]
    stats: dict = {"n": n}
    if n <= 2:
        order = np.arange(n, dtype=np.int64)
        steps = np.zeros(n, dtype=np.float32)
        if n == 2:
            steps[1] = max(0.0, 1.0 - float(_f32(X[0]) @ _f32(X[1])))
        L = float(steps.sum())
        return ChainResult(order, steps, L, L if mst else None, 0, stats)
    k = int(max(1, min(k, n - 1)))
    exact = (not fast) and n <= exact_limit
    stats.update(k=k, exact=exact)
    ph = _Phases(progress, n, 3 if improve else 2)

    t = time.perf_counter()
    if exact:
        X = _f32(X)  # small: n <= exact_limit
        S, I = knn.knn_graph(X, k, exact=True, progress=ph)
    else:
        part = knn.partition(X, seed=seed)
        stats["t_ivf"] = time.perf_counter() - t
        nprobe = nprobe or knn.graph_nprobe(n, part.nlist)
        S, I = knn.knn_graph(X, k, exact=False, part=part, nprobe=nprobe, progress=ph)
        stats.update(nlist=part.nlist, nprobe=nprobe)
    D = np.maximum(1.0 - S, 0.0)  # cosine distance, nearest first
    del S
    stats["t_knn"] = time.perf_counter() - t
    ph.next()

    t = time.perf_counter()
    visited = bytearray(n)
    vis = np.frombuffer(visited, dtype=np.bool_)
    if exact:
        part = knn.partition(X, seed=seed)
        nprobe = nprobe or knn.graph_nprobe(n, part.nlist)
    fb = _IVFRemaining(X, vis, part, nprobe, exact=exact, graph=None if exact else I)
    start = _start_point(X)
    order, steps, nfb = _walk(I, D, start, visited, fb, ph)
    stats.update(start=start, fallbacks=nfb, t_walk=time.perf_counter() - t,
                 fallback_points_scanned=fb.scanned_points, fallback_lists_scanned=fb.scanned_lists,
                 fallback_2hop=fb.hop2)
    ph.next()
    del vis, fb

    thr = _jump_threshold(D) if jump_threshold is None else float(jump_threshold)
    stats["jump_threshold"] = thr
    stats["greedy"] = chain_stats(steps, thr)

    if improve:
        t = time.perf_counter()
        order, steps, istats = improve_chain(X, order, steps, I, D, ph, improve_seconds, run_thr=thr,
                                             max_evals=int(improve_evals * n))
        stats["improve"] = istats
        stats["t_improve"] = time.perf_counter() - t
        ph.next()

    if dup_threshold is None:
        dup_thr = min(0.01, 0.25 * float(np.median(D[:, 0])))
    else:
        dup_thr = float(dup_threshold)
    if dup_thr > 0:
        order2, ng = _gather_groups(order, I, D, dup_thr)
        stats["dup_threshold"] = dup_thr
        stats["dup_groups_regathered"] = ng
        if ng:
            steps2 = np.zeros(n, dtype=np.float32)
            steps2[1:] = pair_dist(X, order2[:-1], order2[1:])
            stats["dup_regather_cost"] = float(steps2.sum(dtype=np.float64) - steps.sum(dtype=np.float64))
            order, steps = order2, steps2

    return _finish_chain(n, I, D, order, steps, thr, mst, stats, t0, ph)


# --------------------------------------------------------------------------------------
# public: Hamming chain on 64-bit perceptual hashes
# --------------------------------------------------------------------------------------

class _HammingExactRemaining:
    """Exact nearest unvisited hash: scan a compact copy of the unvisited hashes (rebuilt
    when half of it has been visited); ties -> lowest id."""

    def __init__(self, h: np.ndarray, vis: np.ndarray):
        self.h = h
        self.vis = vis
        self.ids = np.arange(len(h))
        self.hr = h
        self.scans = 0
        self.scanned_points = 0

    def nearest(self, cur: int):
        self.scans += 1
        live = ~self.vis[self.ids]
        if int(live.sum()) * 2 < len(self.ids):
            self.ids = self.ids[live]
            self.hr = self.h[self.ids]
            live = np.ones(len(self.ids), dtype=bool)
        self.scanned_points += len(self.ids)
        d = knn.popcount(self.hr ^ self.h[cur]).astype(np.int16)
        d[~live] = 999
        j = int(np.argmin(d))
        return int(self.ids[j]), float(d[j])


class _HammingSortedRemaining:
    """Approximate nearest unvisited hash: the nearest unvisited position before and after
    ``cur`` in each of a few bit-permuted sorted orders (deletion by union-find "next
    unvisited" pointers with path compression), the closest of those candidates wins."""

    def __init__(self, h: np.ndarray, vis: np.ndarray, orders: list):
        n = len(h)
        self.h = h
        self.vis = vis
        self.orders = orders
        self.rank = []
        for o in orders:
            r = np.empty(n, dtype=np.int64)
            r[o] = np.arange(n)
            self.rank.append(r)
        # nxt[p]: some position >= p that may be unvisited (n = sentinel); prv likewise <= p (-1)
        self.nxt = [np.arange(n + 1, dtype=np.int64) for _ in orders]
        self.prv = [np.arange(-1, n, dtype=np.int64) for _ in orders]  # index p+1 -> position p
        self.scans = 0
        self.scanned_points = 0
        self.n = n

    def _find_next(self, arr, order, p):
        n = self.n
        root = p
        while root < n and self.vis[order[root]]:
            nr = int(arr[root])
            root = nr if nr != root else root + 1
        while p < root:  # path compression
            nxt = int(arr[p])
            arr[p] = root
            p = nxt if nxt != p else p + 1
        return root

    def _find_prev(self, arr, order, p):
        root = p
        while root >= 0 and self.vis[order[root]]:
            nr = int(arr[root + 1])
            root = nr if nr != root else root - 1
        while p > root:
            nxt = int(arr[p + 1])
            arr[p + 1] = root
            p = nxt if nxt != p else p - 1
        return root

    def nearest(self, cur: int):
        self.scans += 1
        cands = set()
        for o, r, nx, pv in zip(self.orders, self.rank, self.nxt, self.prv):
            p = int(r[cur])
            q = self._find_next(nx, o, p)
            if q < self.n:
                cands.add(int(o[q]))
            q = self._find_prev(pv, o, p)
            if q >= 0:
                cands.add(int(o[q]))
        if not cands:
            raise RuntimeError("no unvisited point left")
        c = np.array(sorted(cands), dtype=np.int64)
        self.scanned_points += len(c)
        d = knn.popcount(self.h[c] ^ self.h[cur])
        j = int(np.argmin(d))
        return int(c[j]), float(d[j])


def hamming_chain(hashes, *, fast: bool = False, k: int = 16, exact_limit: int = 20_000,
                  progress: Progress = None, jump_threshold: Optional[float] = None,
                  mst: bool = True, nperm: int = 16, window: int = 8,
                  seed: int = 0) -> ChainResult:
    """Greedy nearest-unvisited chain by Hamming distance of 64-bit hashes (uint64).

    Steps are Hamming distances (0..64). Exact (k-NN by brute-force XOR/popcount, exact
    nearest-unvisited fallback) for ``n <= exact_limit`` unless ``fast``; otherwise
    candidates from bit-permuted sorted orders (see :func:`knn.hamming_knn_sorted`) and an
    approximate fallback. Start: the hash farthest from the bitwise majority code (an
    "end" of the data), ties -> lowest index. ``jump_threshold``
    defaults to 10 bits (two photos more than 10 bits apart are rarely the same picture).
    """
    t0 = time.perf_counter()
    h = knn.as_u64(hashes)
    n = len(h)
    stats: dict = {"n": n}
    if n <= 2:
        order = np.arange(n, dtype=np.int64)
        steps = np.zeros(n, dtype=np.float32)
        if n == 2:
            steps[1] = float(knn.popcount(h[0:1] ^ h[1:2])[0])
        L = float(steps.sum())
        thr = 10.0 if jump_threshold is None else float(jump_threshold)
        return ChainResult(order, steps, L, L if mst else None, int((steps > thr).sum()), stats)
    k = int(max(1, min(k, n - 1)))
    exact = (not fast) and n <= exact_limit
    stats.update(k=k, exact=exact)
    ph = _Phases(progress, n, 2)
    t = time.perf_counter()
    if exact:
        D, I = knn.hamming_knn(h, k, ph)
        orders = None
    else:
        D, I, orders = knn.hamming_knn_sorted(h, k, nperm, window, seed, ph)
        stats.update(nperm=nperm, window=window)
    stats["t_knn"] = time.perf_counter() - t
    ph.next()

    t = time.perf_counter()
    visited = bytearray(n)
    vis = np.frombuffer(visited, dtype=np.bool_)
    fb = _HammingExactRemaining(h, vis) if exact else _HammingSortedRemaining(h, vis, orders)
    start = _hamming_start(h)
    order, steps, nfb = _walk(I, D, start, visited, fb, ph)
    stats.update(start=start, fallbacks=nfb, t_walk=time.perf_counter() - t,
                 fallback_points_scanned=fb.scanned_points)
    del vis, fb
    thr = 10.0 if jump_threshold is None else float(jump_threshold)
    stats["jump_threshold"] = thr
    return _finish_chain(n, I, D, order, steps, thr, mst, stats, t0, ph, integer=True)


def _hamming_start(h: np.ndarray) -> int:
    """The hash farthest (Hamming) from the bitwise majority code; ties -> lowest index."""
    n = len(h)
    counts = np.zeros(64, dtype=np.int64)
    for s in range(0, n, 1 << 20):
        x = h[s:s + (1 << 20)]
        for b in range(64):
            counts[b] += int(np.count_nonzero(x & np.uint64(1 << b)))
    maj = np.uint64(0)
    for b in range(64):
        if 2 * counts[b] > n:
            maj |= np.uint64(1 << b)
    d = knn.popcount(h ^ maj)
    return int(np.argmax(d))


# --------------------------------------------------------------------------------------
# public: key-based orders
# --------------------------------------------------------------------------------------

def key_order(keys: Sequence, *, reverse: bool = False) -> np.ndarray:
    """Stable sort by ``keys`` (dates, resolutions, any mutually comparable values or
    tuples): equal keys keep their input order (ties -> lower index first, also with
    ``reverse=True``); ``None`` and NaN keys always go last, in input order."""
    n = len(keys)
    if isinstance(keys, np.ndarray) and keys.ndim == 1 and keys.dtype.kind in "biufM":
        missing = np.isnan(keys) if keys.dtype.kind in "fM" else np.zeros(n, dtype=bool)
        idx = np.flatnonzero(~missing)
        kv = keys[idx]
        if reverse:
            _, rank = np.unique(kv, return_inverse=True)
            o = np.lexsort((idx, -rank.astype(np.int64)))
        else:
            o = np.argsort(kv, kind="stable")
        return np.concatenate([idx[o], np.flatnonzero(missing)]).astype(np.int64)
    present = []
    missing_l = []
    for i, v in enumerate(keys):
        if v is None or (isinstance(v, float) and v != v):
            missing_l.append(i)
        else:
            present.append(i)
    present.sort(key=keys.__getitem__, reverse=reverse)  # stable, also when reversed
    return np.asarray(present + missing_l, dtype=np.int64)


_NAT = re.compile(r"(\d+)")


def natural_key(name: str):
    """Sort key for file names (the directory part is ignored): Unicode-normalised without
    accents, case-folded, digit runs compared as numbers ("img2" < "img10"), separators
    " _-." around words ignored, extension compared after the stem; the original string
    breaks remaining ties."""
    s = str(name)
    base = unicodedata.normalize("NFKD", s.replace("\\", "/").rsplit("/", 1)[-1])
    base = "".join(ch for ch in base if not unicodedata.combining(ch))  # Äpfel ~ apfel
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem:
        stem, ext = base, ""
    parts = []
    for i, tok in enumerate(_NAT.split(stem.casefold())):
        if i % 2:
            parts.append((0, int(tok), len(tok)))
        elif tok:
            parts.append((1, tok.strip(" _-."), 0))
    return (tuple(parts), ext.casefold(), s)


def name_order(names: Sequence[str]) -> np.ndarray:
    """Order by file-name similarity: natural sort of the normalised names, which puts
    series (IMG_0001, IMG_0002, ..., "Copy of IMG_0001") and shared prefixes together.
    Deterministic (ties -> lower index)."""
    keys = [natural_key(n) for n in names]
    return np.asarray(sorted(range(len(keys)), key=keys.__getitem__), dtype=np.int64)
