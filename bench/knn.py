#!/usr/bin/env python3
"""nearsort.vectors.knn against its alternatives, side by side in one run (same data, same threads).

    nice .venv/bin/python bench/knn.py                          # all parts, default sizes (~10 min)
    nice .venv/bin/python bench/knn.py --parts exact,ivf --exact-n 40000 --ivf-n 200000
    nice .venv/bin/python bench/knn.py --torch                  # the same with torch loaded and run first

Parts (each row: seconds, and recall or objective where it applies):

* ``exact``  k-NN graph (k=16) of ``--exact-n`` 512-d vectors: knn.knn_graph (FAISS, exact) vs a
  numpy peer (blocked GEMM + knn's row top-k on a few Python threads, numpy's BLAS on one thread
  each -- what order.py did before).
* ``ivf``    approximate k-NN graph of ``--ivf-n`` vectors on one partition: knn's list-major
  search (a list's points against the members of its 8 nearest lists, one numpy GEMM) vs the
  same with faiss.knn per list, and faiss.IndexIVFFlat.search (nprobe 8 and 16, queries in list
  order); recall@16 against exact on 500 rows.
* ``kmeans`` spherical k-means (2 sqrt(n) lists, 10 iterations) on ``--kmeans-n`` vectors:
  knn.spherical_kmeans (faiss.Kmeans) vs a numpy peer; mean cosine to the nearest centroid.
* ``pairs``  all pairs within Hamming 8 of ``--pairs-n`` 64-bit hashes (the dupes phash search):
  knn.hamming_pairs (multi-index hashing in numpy) vs faiss.IndexBinaryFlat.range_search and
  faiss.IndexBinaryMultiHash(3 x 21 bits, 2 flips; exact) -- pairs counted over distinct hashes.
* ``hknn``   exact Hamming k-NN graph (k=16) of ``--hknn-n`` hashes: knn.hamming_knn
  (IndexBinaryFlat) vs a numpy XOR/popcount peer; approximate: knn.hamming_knn_sorted (bit-permuted
  sorted orders) on ``--hknn-approx-n`` hashes vs faiss.IndexBinaryHNSW, recall@16 on 500 rows.

Vectors: bench/analyze.py's clustered synthetic data. Hashes: random 64-bit codes in groups of
1..8 with 0..12 bits flipped (a photo library's copies and near copies).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from nearsort.vectors import knn  # noqa: E402  (sets the FAISS thread policy before faiss loads)

import faiss  # noqa: E402

from analyze import make_clustered  # noqa: E402


def timed(fn, *a, **kw):
    t = time.perf_counter()
    out = fn(*a, **kw)
    return time.perf_counter() - t, out


def recall(I: np.ndarray, truth: list, rows: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(I[r][:k].tolist()) & t) / k for r, t in zip(rows, truth)]))


def exact_truth(X: np.ndarray, rows: np.ndarray, k: int) -> list:
    S, I = knn.search_exact(X[rows], [(0, X)], k + 1)
    return [set(i.tolist()) - {r} for i, r in zip(I, rows)]


# --------------------------------------------------------------------------- numpy peers


def _workers() -> int:
    return max(1, min(8, len(os.sched_getaffinity(0))))


def numpy_knn_exact(X: np.ndarray, k: int) -> np.ndarray:
    """Query blocks against all points, numpy GEMM + knn's row top-k, blocks on Python threads
    with numpy's BLAS on one thread each (order.py's exact graph before)."""
    n = len(X)
    I = np.empty((n, k), np.int64)
    chunk = int(max(64, min(2048, (1 << 23) // max(1, n))))

    def job(s):
        J, V = knn._topk_rows(X[s:s + chunk] @ X.T, k + 1)
        I[s:s + chunk] = knn.drop_self(V, J, np.arange(s, min(n, s + chunk)), k)[1]

    with knn.blas_threads(1):
        knn._parallel(job, list(range(0, n, chunk)), None, n)
    return I


def faiss_knn_by_lists(X: np.ndarray, k: int, part, nprobe: int = 8) -> np.ndarray:
    """knn's list-major candidates, but each list searched with faiss.knn (FAISS BLAS + heap)."""
    n = len(X)
    I = np.empty((n, k), np.int64)
    sizes = np.diff(part.offsets)
    nb = knn._list_neighbours(part, nprobe * 3)
    for lst in range(part.nlist):
        qi = part.members(lst)
        if not len(qi):
            continue
        ci = np.concatenate([part.members(m) for m in nb[lst][:nprobe] if sizes[m]])
        D, J = faiss.knn(knn.f32(X[qi]), knn.f32(X[ci]), k + 1, metric=faiss.METRIC_INNER_PRODUCT)
        I[qi] = knn.drop_self(D, ci[J], qi, k)[1]
    return I


def numpy_kmeans(x: np.ndarray, k: int, niter: int, seed: int = 0) -> np.ndarray:
    """Spherical k-means with BLAS assignment (what order.py and index.py did before)."""
    rng = np.random.default_rng(seed)
    C = x[np.sort(rng.choice(len(x), k, replace=False))].copy()
    with knn.blas_threads(1), ThreadPoolExecutor(_workers()) as ex:
        for _ in range(niter):
            a = np.empty(len(x), np.int64)

            def job(s, a=a, C=C):
                a[s:s + 8192] = np.argmax(x[s:s + 8192] @ C.T, axis=1)

            list(ex.map(job, range(0, len(x), 8192)))
            sums = np.zeros_like(C)
            np.add.at(sums, a, x)
            empty = np.flatnonzero(np.bincount(a, minlength=k) == 0)
            sums[empty] = x[rng.choice(len(x), len(empty), replace=False)]
            C = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return C.astype(np.float32)


def numpy_hamming_knn(h: np.ndarray, k: int) -> np.ndarray:
    """XOR + popcount against everything in query blocks, (distance, id) top-k."""
    n = len(h)
    I = np.empty((n, k), np.int64)
    chunk = int(max(16, min(4096, (1 << 23) // max(1, n))))

    def job(s):
        d = knn.popcount(h[s:s + chunk, None] ^ h[None, :]).astype(np.int64)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = 999
        key = d * n + np.arange(n)
        I[s:s + chunk] = np.sort(np.partition(key, k, axis=1)[:, :k], axis=1) % n

    with ThreadPoolExecutor(_workers()) as ex:
        list(ex.map(job, range(0, n, chunk)))
    return I


# --------------------------------------------------------------------------- data


def hashes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 9, n)
    base = rng.integers(0, 2**63, len(sizes), dtype=np.int64).astype(np.uint64) * np.uint64(2)
    h = np.repeat(base, sizes)[:n]
    flips = rng.integers(0, 13, n)
    for f in range(12):
        m = flips > f
        h[m] ^= np.uint64(1) << rng.integers(0, 64, int(m.sum())).astype(np.uint64)
    return h[rng.permutation(n)]


# --------------------------------------------------------------------------- parts


def part_exact(a, rows_out):
    X, _, _ = make_clustered(a.exact_n, seed=1)
    k = 16
    t1, (S, I) = timed(knn.knn_graph, X, k, exact=True)
    t2, I2 = timed(numpy_knn_exact, X, k)
    agree = float(np.mean(np.sort(I, 1) == np.sort(I2, 1)))
    rows_out.append(("exact", f"n={a.exact_n:,}", "knn.knn_graph (faiss, exact)", t1, ""))
    rows_out.append(("exact", "", "numpy GEMM peer", t2, f"same ids {agree:.4f}"))


def part_ivf(a, rows_out):
    X, _, _ = make_clustered(a.ivf_n, seed=1)
    k = 16
    rows = np.random.default_rng(5).choice(len(X), 500, replace=False)
    truth = exact_truth(X, rows, k)
    tp, part = timed(knn.partition, X)
    t1, (S, I) = timed(knn.knn_graph, X, k, exact=False, part=part)
    rows_out.append(("ivf", f"n={a.ivf_n:,}", f"knn.partition (nlist {part.nlist})", tp, ""))
    rows_out.append(("ivf", "", "knn list-major (numpy GEMM), nprobe 8", t1, f"recall {recall(I, truth, rows, k):.4f}"))
    t2, I2 = timed(faiss_knn_by_lists, X, k, part)
    rows_out.append(("ivf", "", "same lists, faiss.knn per list", t2, f"recall {recall(I2, truth, rows, k):.4f}"))
    q = faiss.IndexFlatIP(X.shape[1])
    q.add(part.centroids)
    ivf = faiss.IndexIVFFlat(q, X.shape[1], part.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    ta, _ = timed(ivf.add, X)
    for npb in (8, 16):
        ivf.nprobe = npb
        ts, (D, J) = timed(ivf.search, X[part.perm], k + 1)
        J2 = np.empty_like(J)
        J2[part.perm] = J
        got = [set(J2[r].tolist()) - {r} for r in rows]
        rc = float(np.mean([len(g & t) / k for g, t in zip(got, truth)]))
        rows_out.append(("ivf", "", f"faiss IndexIVFFlat.search nprobe {npb} (+add {ta:.1f}s)", ts, f"recall {rc:.4f}"))


def part_kmeans(a, rows_out):
    X, _, _ = make_clustered(a.kmeans_n, seed=2)
    nl = knn.nlist_for(a.kmeans_n)

    def obj(C):
        return float(knn.assign(X, C)[0].mean())

    t1, C1 = timed(knn.spherical_kmeans, X, nl, niter=10)
    t2, C2 = timed(numpy_kmeans, X, nl, 10)
    rows_out.append(("kmeans", f"n={a.kmeans_n:,} k={nl}", "knn.spherical_kmeans (faiss.Kmeans)", t1, f"mean cos {obj(C1):.4f}"))
    rows_out.append(("kmeans", "", "numpy peer", t2, f"mean cos {obj(C2):.4f}"))


def part_pairs(a, rows_out):
    h = hashes(a.pairs_n)
    u = np.unique(h)
    r = 8
    t1, (i, j, d) = timed(knn.hamming_pairs, u, r)
    rows_out.append(("pairs", f"n={a.pairs_n:,} r={r}", "knn.hamming_pairs (MIH, numpy)", t1, f"pairs {len(i)}"))
    codes = knn._codes(u)

    def faiss_pairs(index):
        index.add(codes)
        lims, D, I = index.range_search(codes, r + 1)
        q = np.repeat(np.arange(len(u)), np.diff(lims).astype(np.int64))
        return int((q < I).sum())

    mh = faiss.IndexBinaryMultiHash(64, 3, 21)
    mh.nflip = 2
    for name, index in (("faiss IndexBinaryFlat.range_search", faiss.IndexBinaryFlat(64)),
                        ("faiss IndexBinaryMultiHash 3x21 nflip 2", mh)):
        t, cnt = timed(faiss_pairs, index)
        rows_out.append(("pairs", "", name, t, f"pairs {cnt}"))


def part_hknn(a, rows_out):
    k = 16
    h = hashes(a.hknn_n, seed=1)
    t1, (D, I) = timed(knn.hamming_knn, h, k)
    t2, I2 = timed(numpy_hamming_knn, h, k)
    dd = knn.popcount(h[:, None][:2000] ^ h[I2[:2000]]).astype(np.float32)
    rows_out.append(("hknn", f"n={a.hknn_n:,}", "knn.hamming_knn (IndexBinaryFlat)", t1, ""))
    rows_out.append(("hknn", "", "numpy XOR/popcount peer", t2, f"same distances {np.mean(dd == D[:2000]):.4f}"))
    h = hashes(a.hknn_approx_n, seed=2)
    rows = np.random.default_rng(5).choice(len(h), 500, replace=False)
    codes = knn._codes(h)
    flat = faiss.IndexBinaryFlat(64)
    flat.add(codes)
    Dt, It = flat.search(codes[rows], k + 1)
    kth = Dt[:, k]  # distance of the true k-th neighbour (self is at 0)

    def dist_recall(J):  # share of rows' neighbours within the true k-th distance (ties count)
        d = knn.popcount(h[rows][:, None] ^ h[np.maximum(J[rows], 0)])
        return float(np.mean((d <= kth[:, None]) & (J[rows] >= 0)))

    t1, (Ds, Is, _) = timed(knn.hamming_knn_sorted, h, k, 16, 8, 0, None)
    rows_out.append(("hknn", f"n={a.hknn_approx_n:,}", "knn.hamming_knn_sorted (16 perms, window 8)", t1,
                     f"recall {dist_recall(Is):.4f}"))
    hn = faiss.IndexBinaryHNSW(64, 16)
    t2, _ = timed(hn.add, codes)
    hn.hnsw.efSearch = 64
    t3, (Dh, Ih) = timed(hn.search, codes, k + 1)
    _, Ih = knn.drop_self(-Dh.astype(np.float32), Ih, np.arange(len(h)), k)
    rows_out.append(("hknn", "", "faiss IndexBinaryHNSW M=16 ef=64 (build+search)", t2 + t3,
                     f"recall {dist_recall(Ih):.4f}"))


PARTS = {"exact": part_exact, "ivf": part_ivf, "kmeans": part_kmeans, "pairs": part_pairs, "hknn": part_hknn}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--exact-n", type=int, default=20_000)
    ap.add_argument("--ivf-n", type=int, default=100_000)
    ap.add_argument("--kmeans-n", type=int, default=50_000)
    ap.add_argument("--pairs-n", type=int, default=200_000)
    ap.add_argument("--hknn-n", type=int, default=20_000)
    ap.add_argument("--hknn-approx-n", type=int, default=200_000)
    ap.add_argument("--torch", action="store_true", help="import torch and run a matmul first")
    a = ap.parse_args(argv)
    if a.torch:
        import torch

        m = torch.randn(1024, 1024)
        (m @ m).sum().item()
    knn.threads()
    print(f"faiss {faiss.__version__}, omp threads {faiss.omp_get_max_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, torch loaded: {'torch' in sys.modules}, "
          f"loadavg {os.getloadavg()[0]:.1f}", flush=True)
    rows: list = []
    for p in a.parts.split(","):
        PARTS[p](a, rows)
        print(f"  {p} done (loadavg {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\n{'part':<7} {'data':<18} {'method':<52} {'seconds':>8}  result")
    for part, data, method, secs, res in rows:
        print(f"{part:<7} {data:<18} {method:<52} {secs:>8.2f}  {res}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
