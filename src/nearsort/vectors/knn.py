"""Nearest-neighbour maths in one place: k-NN graphs (cosine), IVF partitions, spherical k-means,
exact top-k, Hamming search on 64-bit hashes, popcount.

FAISS does exact search, k-means, coarse assignment and the exact Hamming graph; numpy does what
bench/knn.py measures faster side by side: the list-major IVF graph, Hamming pairs within a
radius (multi-index hashing) and the approximate Hamming graph (bit-permuted sorted orders).

Invariants: vectors are unit rows, float32 or float16 (float16 is read in float32 blocks, never
copied whole); similarity = inner product; every result row is best first, ties -> lower id,
padded with id -1 / score -inf; a k-NN graph row never holds its own point. FAISS gets every
usable core (:func:`threads`, set once) and is never called from several Python threads at
once; numpy loops on Python threads run with numpy's BLAS on one thread (:class:`blas_threads`).
Same input, same machine -> same result (fixed seeds).
"""
from __future__ import annotations

import math
import os
from itertools import combinations
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import faiss
import numpy as np

Progress = Optional[Callable[[int, int], None]]

EXACT_MAX = 50_000  # k-NN graph: exact below this many points, through an IVF partition at/above
# IVF lists: ``nlist_for(n, per_sqrt)`` = per_sqrt * sqrt(n). A search index (trained once, many
# queries) wants fine lists: 4 (recall per scanned row); a k-NN graph's own partition coarse ones:
# 2 (its k-means costs ~ nlist^2 each time). A graph searches each list among the nearest lists
# holding ~4 sqrt(n) rows (``graph_nprobe``): 8 of 2 sqrt(n) lists, 16 of 4 sqrt(n).
INDEX_LISTS = 4
GRAPH_LISTS = 2
GRAPH_CANDIDATES = 4
TRAIN_PER_LIST = 32  # k-means training points per list of a graph's partition
KMEANS_NITER = 8

_Q_ROWS = 4096  # exact search: query rows per FAISS call
_DB_ROWS = 131072  # exact search: database rows converted to float32 at a time (256 MiB at d=512)

_threads: Optional[int] = None


def threads() -> int:
    """Number of OpenMP threads FAISS uses: every core this process may run on. Set once."""
    global _threads
    if _threads is None:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            n = os.cpu_count() or 1
        faiss.omp_set_num_threads(max(1, n))
        _threads = max(1, n)
    return _threads


class blas_threads:
    """Context manager: numpy's OpenBLAS on ``n`` threads (no-op when its symbols cannot be
    found). For code that runs many small products from one thread (the chain walk and local
    search): waking BLAS threads for each costs more than it gives, most of all on a busy
    machine. FAISS has its own BLAS and OpenMP threads and is not affected."""

    _fns = None

    @classmethod
    def _find(cls):
        if cls._fns is not None:
            return cls._fns
        cls._fns = (None, None)
        try:
            import ctypes

            with open("/proc/self/maps") as f:
                libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and "/" in ln
                               and "faiss" not in ln})
            for path in libs:
                lib = ctypes.CDLL(path)
                for pre in ("scipy_openblas_", "openblas_"):
                    for suf in ("64_", ""):
                        get, set_ = f"{pre}get_num_threads{suf}", f"{pre}set_num_threads{suf}"
                        if hasattr(lib, get) and hasattr(lib, set_):
                            cls._fns = (getattr(lib, get), getattr(lib, set_))
                            return cls._fns
        except Exception:  # pragma: no cover - best effort only
            pass
        return cls._fns

    def __init__(self, n: int = 1):
        self.n = n
        self.old = None

    def __enter__(self):
        get, set_ = self._find()
        if get is not None:
            try:
                self.old = int(get())
                set_(int(self.n))
            except Exception:  # pragma: no cover
                self.old = None
        return self

    def __exit__(self, *exc):
        get, set_ = self._find()
        if self.old is not None and set_ is not None:
            set_(self.old)
        return False


def idx_dtype(n: int):
    """Compact dtype for point ids of n points (int32 while it fits)."""
    return np.int32 if n < 2**31 - 1 else np.int64


def f32(a: np.ndarray) -> np.ndarray:
    """C-contiguous float32 view or copy (what FAISS takes)."""
    return np.ascontiguousarray(a, dtype=np.float32)


def nlist_for(n: int, per_sqrt: float = GRAPH_LISTS) -> int:
    """IVF lists for n points: ``per_sqrt`` * sqrt(n) (GRAPH_LISTS: 632 at 100 k, 2000 at 1 M;
    INDEX_LISTS: twice that), at most n / 39 so every list gets enough k-means points."""
    return int(max(1, min(n // 39, round(per_sqrt * math.sqrt(max(n, 1))))))


def graph_nprobe(n: int, nlist: int) -> int:
    """Lists a k-NN graph searches each list among: enough for ~GRAPH_CANDIDATES * sqrt(n) rows."""
    return int(max(1, min(nlist, round(GRAPH_CANDIDATES * math.sqrt(max(n, 1)) * nlist / max(n, 1)))))


# --------------------------------------------------------------------------- row conventions


def pad(m: int, k: int, ids_dtype=np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Empty results: scores -inf, ids -1."""
    return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, ids_dtype)


def sort_rows(S: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row by score descending, ties -> lower id, padding (-1) last."""
    key_id = np.where(I < 0, np.iinfo(np.int64).max, I.astype(np.int64))
    o = np.lexsort((key_id, -S.astype(np.float64)), axis=-1)
    return np.take_along_axis(S, o, -1), np.take_along_axis(I, o, -1)


def drop_self(S: np.ndarray, I: np.ndarray, qids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id from its results (the worst column when it is absent),
    keep the best k, pad to k."""
    m = len(qids)
    own = I == np.asarray(qids)[:, None]
    absent = ~own.any(axis=1)
    own[absent, -1] = True
    first = np.argmax(own, axis=1)
    keep = np.ones(I.shape, dtype=bool)
    keep[np.arange(m), first] = False
    w = I.shape[1] - 1
    S, I = S[keep].reshape(m, w), I[keep].reshape(m, w)
    if w >= k:
        return np.ascontiguousarray(S[:, :k]), np.ascontiguousarray(I[:, :k])
    ps, pi = pad(m, k - w, I.dtype)
    return np.hstack([S, ps]), np.hstack([I, pi])


def clean(S: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS results -> float32 scores with -inf wherever the id is -1 (padding)."""
    S = np.ascontiguousarray(S, dtype=np.float32)
    S[I < 0] = -np.inf
    return S, I


# --------------------------------------------------------------------------- exact search


def search_exact(queries: np.ndarray, blocks: Iterable[tuple[int, np.ndarray]], k: int):
    """Exact top-k by inner product of ``queries`` over database ``blocks`` ((first id, rows)
    pairs, e.g. chunks of a memmap): (scores float32 (m,k), ids int64 (m,k))."""
    threads()
    q = f32(queries)
    m = len(q)
    if m == 0 or k <= 0:
        return pad(m, max(k, 0))
    heap = faiss.ResultHeap(m, k, keep_max=True)
    for start, x in blocks:
        if len(x) == 0:
            continue
        D, I = faiss.knn(q, f32(x), min(k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
        I = np.where(I >= 0, I + start, -1)
        if D.shape[1] < k:
            ps, pi = pad(m, k - D.shape[1])
            D, I = np.hstack([D, ps]), np.hstack([I, pi])
        heap.add_result(np.ascontiguousarray(D), np.ascontiguousarray(I))
    heap.finalize()
    S, I = clean(heap.D, heap.I)
    return sort_rows(S, I)


def _blocks(X: np.ndarray, start: int, stop: int, size: int) -> Iterable[tuple[int, np.ndarray]]:
    for s in range(start, stop, size):
        yield s, X[s:min(stop, s + size)]


def _knn_exact(X: np.ndarray, k: int, progress: Progress):
    """Exact k-NN graph: query blocks against the whole set, as database blocks (memory stays
    bounded at any n; one block, i.e. one IndexFlatIP scan, up to _DB_ROWS points)."""
    n = len(X)
    S = np.empty((n, k), np.float32)
    I = np.empty((n, k), idx_dtype(n))
    kq = min(k + 1, n)
    for s in range(0, n, _Q_ROWS):
        e = min(n, s + _Q_ROWS)
        D, J = search_exact(X[s:e], _blocks(X, 0, n, _DB_ROWS), kq)
        D, J = drop_self(D, J, np.arange(s, e), k)
        S[s:e], I[s:e] = sort_rows(D, J)
        if progress:
            progress(e, n)
    return S, I


# --------------------------------------------------------------------------- k-means / IVF


def spherical_kmeans(x: np.ndarray, k: int, *, niter: int = KMEANS_NITER, seed: int = 0) -> np.ndarray:
    """Unit-norm centroids (k, d) maximising inner product (faiss.Kmeans, spherical)."""
    threads()
    x = f32(x)
    km = faiss.Kmeans(x.shape[1], int(k), niter=int(niter), spherical=True, seed=int(seed),
                      max_points_per_centroid=1 << 30, min_points_per_centroid=1, verbose=False)
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(X: np.ndarray, C: np.ndarray, p: int = 1, block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """The ``p`` most similar centroids of each row: (scores (n,p) float32, lists (n,p) int64)."""
    threads()
    n = len(X)
    index = faiss.IndexFlatIP(C.shape[1])
    index.add(f32(C))
    S = np.empty((n, p), np.float32)
    L = np.empty((n, p), np.int64)
    for s in range(0, n, block):
        S[s:s + block], L[s:s + block] = index.search(f32(X[s:s + block]), p)
    return S, L


@dataclass
class Partition:
    """Points filed into IVF lists by nearest centroid (the coarse level of an IVF index)."""

    centroids: np.ndarray  # (nlist, d) float32 unit rows
    perm: np.ndarray       # point ids sorted by list
    offsets: np.ndarray    # list l = perm[offsets[l]:offsets[l+1]]
    assign: np.ndarray     # (n,) list of each point
    radius: Optional[np.ndarray]  # (nlist,) largest angle (radians) of a member from its centroid

    @property
    def nlist(self) -> int:
        return len(self.centroids)

    @classmethod
    def from_lists(cls, centroids: np.ndarray, members: list, n: int) -> "Partition":
        """From an IVF index's lists (point ids per list); no radius (only the walk needs it)."""
        sizes = np.array([len(m) for m in members], dtype=np.int64)
        perm = (np.concatenate(members) if len(members) else np.empty(0)).astype(idx_dtype(n))
        lst = np.repeat(np.arange(len(members)), sizes).astype(idx_dtype(len(members)))
        assign = np.empty(n, lst.dtype)
        assign[perm] = lst
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(f32(centroids), perm, offsets, assign, None)

    def members(self, lst: int) -> np.ndarray:
        return self.perm[self.offsets[lst]:self.offsets[lst + 1]]


def partition(X: np.ndarray, nlist: Optional[int] = None, *, seed: int = 0,
              centroids: Optional[np.ndarray] = None) -> Partition:
    """Spherical k-means on a fixed sample (``TRAIN_PER_LIST`` points per list), then every
    point filed under its nearest centroid. ``centroids``: use these instead of training."""
    n = len(X)
    if centroids is None:
        nlist = max(1, min(nlist or nlist_for(n), n))
        ns = min(n, nlist * TRAIN_PER_LIST)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, ns, replace=False)) if ns < n else np.arange(n)
        centroids = spherical_kmeans(X[sample], nlist, seed=seed)
    C = f32(centroids)
    nlist = len(C)
    sim, lst = assign(X, C)
    sim, lst = sim[:, 0], lst[:, 0]
    perm = np.argsort(lst, kind="stable").astype(idx_dtype(n))
    offsets = np.searchsorted(lst[perm], np.arange(nlist + 1)).astype(np.int64)
    mincos = np.ones(nlist, dtype=np.float64)
    np.minimum.at(mincos, lst, sim.astype(np.float64))
    radius = np.arccos(np.clip(mincos - 1e-5, -1.0, 1.0)) + 1e-4  # float-rounding margin
    return Partition(C, perm, offsets, lst.astype(idx_dtype(nlist)), radius)


def _list_neighbours(part: Partition, nprobe: int) -> np.ndarray:
    """For each list, the ``nprobe`` lists whose centroids are nearest (itself first)."""
    return assign(part.centroids, part.centroids, min(nprobe, part.nlist))[1]


def _workers() -> int:
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):  # pragma: no cover
        return 1


def _parallel(fn, tasks, progress: Progress, total: int, weight=lambda t: 1) -> None:
    """``fn(task)`` for all tasks on a few Python threads (numpy's GEMMs release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    done = 0
    nw = _workers()
    if nw == 1 or len(tasks) < 2:
        results = map(fn, tasks)
    else:
        ex = ThreadPoolExecutor(max_workers=nw)
        results = ex.map(fn, tasks)
    try:
        for t, _ in zip(tasks, results):
            done += weight(t)
            if progress:
                progress(done, total)
    finally:
        if nw > 1 and len(tasks) >= 2:
            ex.shutdown()


def _topk_rows(S: np.ndarray, kk: int):
    """Column indices and values of the ``kk`` largest entries of each row of ``S``, by value
    descending then column. Cheaper than argpartition on wide rows: the kk-th largest maximum of
    4*kk interleaved column groups is <= the kk-th largest value and leaves few candidates."""
    m, c = S.shape
    kk = min(kk, c)
    if c <= 8 * kk:
        J = np.argsort(-S, axis=1, kind="stable")[:, :kk]
        return J, np.take_along_axis(S, J, 1)
    g = 4 * kk
    w = c // g
    cm = S[:, :g * w].reshape(m, w, g).max(axis=1)  # group j = columns j, j+g, j+2g, ...
    th = np.partition(cm, g - kk, axis=1)[:, g - kk]
    r, j = np.nonzero(S >= th[:, None])
    v = S[r, j]
    key = r * 4.0 + (1.0 - v.astype(np.float64))  # row, then value descending
    o = np.argsort(key, kind="stable")            # ties keep column order
    r, j, v = r[o], j[o], v[o]
    cnt = np.bincount(r, minlength=m)
    start = np.cumsum(cnt) - cnt
    keep = (np.arange(len(r)) - start[r]) < kk
    return j[keep].reshape(m, kk), v[keep].reshape(m, kk)


def _knn_ivf(X: np.ndarray, k: int, part: Partition, nprobe: int, progress: Progress,
             fetch: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """Approximate k-NN graph, list-major: the points of one list are searched together, one
    numpy GEMM + row top-k, among the members of the ``nprobe`` lists nearest to its centroid.
    Lists run on a few Python threads with numpy's BLAS on one thread each (measured faster
    than faiss.knn per list and than IndexIVFFlat.search: bench/knn.py)."""
    n = len(X)
    S = np.empty((n, k), np.float32)
    I = np.empty((n, k), idx_dtype(n))
    sizes = np.diff(part.offsets)
    nb = _list_neighbours(part, nprobe * 3)

    def job(lst):
        qi = part.members(lst)
        lists, tot = [], 0
        for j, m in enumerate(nb[lst]):
            if j >= nprobe and tot >= k + 1:
                break
            if sizes[m]:
                lists.append(part.members(m))
                tot += int(sizes[m])
        ci = np.concatenate(lists) if tot >= k + 1 else part.perm  # tiny data: everything
        rows = (lambda r: X[r]) if fetch is None else fetch
        J, V = _topk_rows(f32(rows(qi)) @ f32(rows(ci)).T, k + 1)
        D, J = drop_self(V, ci[J], qi, k)
        S[qi], I[qi] = sort_rows(D, J)

    tasks = [lst for lst in range(part.nlist) if sizes[lst]]
    with blas_threads(1):
        _parallel(job, tasks, progress, n, weight=lambda lst: int(sizes[lst]))
    return S, I


def knn_graph(X: np.ndarray, k: int, *, exact: Optional[bool] = None, part: Optional[Partition] = None,
              nprobe: Optional[int] = None, seed: int = 0, progress: Progress = None,
              fetch: Optional[Callable[[np.ndarray], np.ndarray]] = None):
    """k-NN graph of the unit rows X: (scores float32 (n,k), ids (n,k) int32 while n fits),
    best first, ties -> lower id, never the point itself, padded when n - 1 < k.

    ``exact=None``: exact when n < EXACT_MAX. Approximate: through ``part`` (built when not
    given: :func:`partition`), each list searched among its ``nprobe`` nearest (default
    :func:`graph_nprobe`), see :func:`_knn_ivf`; ``fetch(rows)``: X's rows, read another way than
    X[rows] (:meth:`VectorStore.gather`: a memmap's scattered rows held resident otherwise)."""
    threads()
    n = len(X)
    k = int(k)
    if n == 0 or k <= 0:
        return pad(n, max(k, 0), idx_dtype(n))
    if exact is None:
        exact = n < EXACT_MAX
    if exact or n <= k + 1:
        return _knn_exact(X, k, progress)
    if part is None:
        part = partition(X, seed=seed)
    return _knn_ivf(X, k, part, nprobe or graph_nprobe(n, part.nlist), progress, fetch)


# --------------------------------------------------------------------------- 64-bit hashes

if hasattr(np, "bitwise_count"):
    def popcount(x) -> np.ndarray:
        """Set bits of each uint64 (uint8)."""
        return np.bitwise_count(np.asarray(x, dtype=np.uint64))
else:  # pragma: no cover - numpy < 2
    def popcount(x) -> np.ndarray:
        """Set bits of each uint64 (uint8)."""
        x = np.asarray(x, dtype=np.uint64)
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return ((x * np.uint64(0x0101010101010101)) >> np.uint64(56)).astype(np.uint8)


def as_u64(hashes) -> np.ndarray:
    """1-D uint64 array (signed input is reinterpreted, not converted)."""
    h = np.asarray(hashes)
    if h.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {h.shape}")
    if h.dtype.kind == "i":
        h = h.astype(np.int64).view(np.uint64)
    return np.ascontiguousarray(h, dtype=np.uint64)


def _codes(h: np.ndarray) -> np.ndarray:
    """uint64 hashes -> the (n, 8) uint8 codes FAISS binary indexes take (bit i = bit i)."""
    return np.ascontiguousarray(h.astype("<u8").view(np.uint8).reshape(len(h), 8))


def hamming_knn(h: np.ndarray, k: int, progress: Progress = None, block: int = 4096):
    """Exact k-NN graph by Hamming distance of uint64 hashes (IndexBinaryFlat): (distances
    float32 (n,k), ids (n,k)), nearest first, ties -> lower id, never the point itself."""
    threads()
    n = len(h)
    k = int(k)
    D = np.empty((n, k), np.float32)
    I = np.empty((n, k), idx_dtype(n))
    codes = _codes(h)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    kq = min(k + 1, n)
    for s in range(0, n, block):
        e = min(n, s + block)
        Dd, J = index.search(codes[s:e], kq)
        S, J = drop_self(-Dd.astype(np.float32), J, np.arange(s, e), k)
        S, J = sort_rows(S, J)
        D[s:e], I[s:e] = -S, J
        if progress:
            progress(e, n)
    return D, I


def _bit_perms(nperm: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    perms = [np.arange(64)]
    while len(perms) < nperm:
        perms.append(rng.permutation(64))
    return perms


def _permute_bits(h: np.ndarray, perm: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Key whose bit 63-i is bit perm[i] of h (so sorting by it sorts by the permuted bits)."""
    out = np.zeros(len(h), dtype=np.uint64)
    one = np.uint64(1)
    for s in range(0, len(h), chunk):
        x = h[s:s + chunk]
        o = np.zeros(len(x), dtype=np.uint64)
        for i, b in enumerate(perm.tolist()):
            o |= ((x >> np.uint64(b)) & one) << np.uint64(63 - i)
        out[s:s + chunk] = o
    return out


def hamming_knn_sorted(h: np.ndarray, k: int, nperm: int, window: int, seed: int,
                        progress: Progress):
    """Approximate k-NN by Hamming distance: sort the hashes by ``nperm`` random bit
    permutations; the ``window`` neighbours on each side in every sorted order are the
    candidates (codes sharing a long prefix of permuted bits are close). Close pairs are
    found with high probability (a pair at distance d shares the first 16 permuted bits
    with probability ~(1-16/64)^d per permutation). Returns (distances float32 (n,k), ids (n,k),
    the first 4 sorted orders); rows nearest first, ties -> lower id, padded with -1 if short."""
    n = len(h)
    BIG = np.int64(1 << 40)
    key = np.full((n, k), BIG * n, dtype=np.int64)  # running top-k as dist * n + id
    ids = np.arange(n, dtype=np.int64)
    perms = _bit_perms(nperm, seed)
    orders = []
    for pi, perm in enumerate(perms):
        pk = _permute_bits(h, perm)
        order = np.lexsort((ids, pk))
        del pk
        if pi < 4:
            orders.append(order)
        cand = np.full((n, 2 * window), BIG * n, dtype=np.int64)
        for o in range(1, window + 1):
            a = order[:-o]
            b = order[o:]
            d = popcount(h[a] ^ h[b]).astype(np.int64)
            cand[a, o - 1] = d * n + b
            cand[b, window + o - 1] = d * n + a
        allk = np.concatenate([key, cand], axis=1)
        allk.sort(axis=1)
        dup = np.zeros_like(allk, dtype=bool)
        dup[:, 1:] = allk[:, 1:] == allk[:, :-1]
        allk[dup] = BIG * n
        allk.sort(axis=1)
        key = np.ascontiguousarray(allk[:, :k])
        del allk, cand, dup
        if progress:
            progress(pi + 1, len(perms))
    valid = key < BIG * n
    I = np.where(valid, key % n, -1).astype(idx_dtype(n))
    D = np.where(valid, key // n, 0).astype(np.float32)
    return D, I, orders


def _mih_plan(n: int, radius: int) -> tuple[list[tuple[int, int]], int]:
    """Chunks [(shift, bits)] and flips per chunk for an exact radius search over n hashes."""
    best = None
    for m in range(3, 9):
        r = max(0, math.ceil((radius + 1) / m) - 1)
        widths = [64 // m + (1 if i < 64 % m else 0) for i in range(m)]
        if max(widths) > 22:
            continue
        probes = sum(sum(math.comb(w, i) for i in range(r + 1)) for w in widths)
        est = probes * n + probes * n * n / float(2 ** min(widths))
        if best is None or est < best[0]:
            best = (est, widths, r)
    _, widths, r = best
    chunks, shift = [], 0
    for w in widths:
        chunks.append((shift, w))
        shift += w
    return chunks, r


def _flip_masks(bits: int, r: int) -> np.ndarray:
    masks = [0]
    for k in range(1, r + 1):
        for c in combinations(range(bits), k):
            v = 0
            for b in c:
                v |= 1 << b
            masks.append(v)
    return np.array(masks, dtype=np.int64)


def hamming_pairs(hashes: np.ndarray, radius: int, batch: int = 1 << 22) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes within Hamming ``radius``: (i, j, distance) int64 arrays.

    Multi-index hashing, exact: the 64 bits are cut into m chunks of <= 22 bits, each looked up in
    a direct-address table with every flip pattern of up to r bits, m*(r+1) > radius (so a pair
    within ``radius`` agrees on some chunk up to r flips). Equal hashes are collapsed first; a
    group of equal hashes is returned as a star (first index to each other), which is all that
    connected components need.
    """
    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    out_i, out_j, out_d = [], [], []
    if n < 2:
        z = np.zeros(0, np.int64)
        return z, z, z
    uniq, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.ravel()
    # stars over equal hashes
    dup = np.nonzero(first[inv] != np.arange(n))[0]
    if len(dup):
        out_i.append(first[inv[dup]].astype(np.int64))
        out_j.append(dup.astype(np.int64))
        out_d.append(np.zeros(len(dup), np.int64))
    u = len(uniq)
    if u >= 2 and radius > 0:
        chunks, r = _mih_plan(u, radius)
        found_a, found_b = [], []
        for shift, bits in chunks:
            key = ((uniq >> np.uint64(shift)) & np.uint64((1 << bits) - 1)).astype(np.int64)
            order = np.argsort(key, kind="stable")
            counts = np.bincount(key, minlength=1 << bits)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            for f in _flip_masks(bits, r):
                q = key ^ f
                cnt = counts[q]
                nz = np.nonzero(cnt)[0]
                if not len(nz):
                    continue
                # process the queries in slices so the expansion stays bounded
                csum = np.cumsum(cnt[nz])
                lo = 0
                while lo < len(nz):
                    base = csum[lo - 1] if lo else 0
                    hi = int(np.searchsorted(csum, base + batch, side="right"))
                    hi = max(hi, lo + 1)
                    qs = nz[lo:hi]
                    c = cnt[qs]
                    tot = int(c.sum())
                    qi = np.repeat(qs, c)
                    offs = np.arange(tot, dtype=np.int64) - np.repeat(np.cumsum(c) - c, c)
                    qj = order[np.repeat(starts[q[qs]], c) + offs]
                    keep = qi < qj
                    qi, qj = qi[keep], qj[keep]
                    if len(qi):
                        d = popcount(uniq[qi] ^ uniq[qj])
                        ok = d <= radius
                        found_a.append(qi[ok])
                        found_b.append(qj[ok])
                    lo = hi
        if found_a:
            a = np.concatenate(found_a)
            b = np.concatenate(found_b)
            code = np.unique(a * u + b)
            a, b = code // u, code % u
            out_i.append(first[a].astype(np.int64))
            out_j.append(first[b].astype(np.int64))
            out_d.append(popcount(uniq[a] ^ uniq[b]).astype(np.int64))
    if not out_i:
        z = np.zeros(0, np.int64)
        return z, z, z
    i, j, d = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    sw = i > j
    i[sw], j[sw] = j[sw], i[sw].copy()
    return i, j, d
