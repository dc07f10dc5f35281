#!/usr/bin/env python3
"""Benchmark of the similarity chain (nearsort.order.chain) on synthetic clustered vectors.

    nice python bench/analyze.py                       # 100k and 1M (the 1M run takes minutes)
    nice python bench/analyze.py --sizes 20000,100000 --naive 5000

Synthetic data (512-d, L2-normalised, rows shuffled so the input order carries no
information):

* "subjects": clusters with log-normal sizes (median ~120), centres grouped into themes
  (so clusters are at varying distances), points spread over a low-dimensional (3..12)
  random subspace around the centre plus isotropic noise - like photo embeddings, which
  vary along a few factors (pose, light, framing);
* near-duplicate groups: ~10 % of the points come in tight groups of 2..5 (bursts,
  re-saves): a base point plus ~0.02 noise.

Each size runs in a fresh subprocess so that the peak RSS (``resource.getrusage``) is
that size's own; it includes the input vectors themselves (n x 512 x 4 bytes).

Columns: seconds of ``similarity_chain`` (excl. data generation), peak RSS of the
process, chain length (sum of 1-cos of consecutive photos) and MST weight (over the kNN
graph + chain edges, see docs/design.md "order"), ratio, the same ratio for the raw greedy chain,
long jumps (steps > 99th percentile of the distance to the 16th neighbour) after/before
improvement vs the MST's own edges above that threshold (a floor for any chain in that
graph), subject changes (consecutive photos from different synthetic subjects; the
minimum is #subjects - 1), and the share of near-duplicate groups whose members sit at
consecutive positions. Measured figures: docs/benchmarks.md, "Similarity chain".
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def make_clustered(n: int, d: int = 512, seed: int = 0, dup_frac: float = 0.10):
    """Return (X float32 (n,d) unit rows, groups: list of index arrays of near-dup groups,
    labels: int32 (n,) subject (cluster) of each row)."""
    rng = np.random.default_rng(seed)
    X = np.empty((n, d), dtype=np.float32)
    labels = np.empty(n, dtype=np.int32)
    nclu = 0
    perm = rng.permutation(n)  # row j of the generated stream goes to X[perm[j]]
    n_dup_target = int(n * dup_frac)
    groups = []
    pos = 0
    n_themes = max(1, n // 4000)
    themes = rng.standard_normal((n_themes, d)).astype(np.float32)
    themes /= np.linalg.norm(themes, axis=1, keepdims=True)
    dup_done = 0
    while pos < n:
        size = int(min(n - pos, max(1, round(rng.lognormal(np.log(120), 0.9)))))
        theme = themes[rng.integers(n_themes)]
        c = theme + rng.standard_normal(d).astype(np.float32) * (1.1 / np.sqrt(d))
        c /= np.linalg.norm(c)
        r = int(rng.integers(3, 13))
        B, _ = np.linalg.qr(rng.standard_normal((d, r)))
        B = B.T.astype(np.float32)  # (r, d)
        spread = float(rng.uniform(0.35, 0.8))
        noise = float(rng.uniform(0.05, 0.12))
        # number of distinct "shots" in this subject; some shots get near-dup copies
        rows = np.empty((size, d), dtype=np.float32)
        i = 0
        while i < size:
            z = rng.standard_normal(r).astype(np.float32) * (spread / np.sqrt(r))
            base = c + z @ B + rng.standard_normal(d).astype(np.float32) * (noise / np.sqrt(d))
            g = 1
            if dup_done < n_dup_target and size - i >= 2 and rng.random() < dup_frac / 3:
                g = int(min(size - i, rng.integers(2, 6)))
            for m in range(g):
                v = base + rng.standard_normal(d).astype(np.float32) * (0.02 / np.sqrt(d)) if g > 1 else base
                rows[i + m] = v
            if g > 1:
                groups.append(perm[pos + i: pos + i + g].copy())
                dup_done += g
            i += g
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        X[perm[pos:pos + size]] = rows
        labels[perm[pos:pos + size]] = nclu
        nclu += 1
        pos += size
    return X, groups, labels


def naive_greedy(X: np.ndarray, start: int) -> np.ndarray:
    """O(n^2) reference: from ``start`` always step to the nearest unvisited point."""
    n = len(X)
    vis = np.zeros(n, dtype=bool)
    order = np.empty(n, dtype=np.int64)
    cur = start
    for t in range(n):
        order[t] = cur
        vis[cur] = True
        if t == n - 1:
            break
        s = X @ X[cur]
        s[vis] = -np.inf
        cur = int(np.argmax(s))
    return order


def dup_adjacent_share(order: np.ndarray, groups) -> float:
    if not groups:
        return float("nan")
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    ok = 0
    for g in groups:
        p = pos[g]
        ok += int(p.max() - p.min() == len(g) - 1)
    return ok / len(groups)


def run_one(n: int, fast: bool, improve: bool, seed: int) -> dict:
    from nearsort.order.chain import similarity_chain

    t = time.perf_counter()
    X, groups, labels = make_clustered(n, seed=seed)
    t_gen = time.perf_counter() - t
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    res = similarity_chain(X, fast=fast, improve=improve)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    st = res.stats
    out = {
        "n": n, "seconds": secs, "gen_seconds": t_gen, "peak_rss_mb": peak,
        "rss_after_gen_mb": rss_data, "length": res.length, "mst": res.mst_weight,
        "ratio": res.mst_ratio, "long_jumps": res.long_jumps,
        "mst_long_edges": st.get("mst_long_edges"),
        "greedy_length": st["greedy"]["length"],
        "greedy_ratio": st["greedy"]["length"] / res.mst_weight if res.mst_weight else None,
        "greedy_long_jumps": st["greedy"]["long_jumps"],
        "dup_groups": len(groups),
        "subjects": int(labels.max() + 1),
        "subject_changes": int((labels[res.order[1:]] != labels[res.order[:-1]]).sum()),
        "dup_adjacent": dup_adjacent_share(res.order, groups),
        "stats": {k: v for k, v in st.items() if k != "greedy"},
    }
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated sizes")
    ap.add_argument("--fast", action="store_true", help="approximate kNN even below exact_limit")
    ap.add_argument("--no-improve", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--naive", type=int, default=5000,
                    help="measure naive O(n^2) greedy on this many points and extrapolate (0: skip)")
    ap.add_argument("--json", help="also write the results as JSON here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.one:
        print(json.dumps(run_one(a.one, a.fast, not a.no_improve, a.seed)))
        return 0

    sizes = [int(float(s)) for s in a.sizes.split(",") if s.strip()]
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--one", str(n), "--seed", str(a.seed)]
        if a.fast:
            cmd.append("--fast")
        if a.no_improve:
            cmd.append("--no-improve")
        print(f"... n={n:,}", file=sys.stderr, flush=True)
        p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            print(f"n={n}: failed (rc={p.returncode})", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        rows.append(r)
        print(f"    {json.dumps(r['stats'])}", file=sys.stderr, flush=True)

    hdr = (f"{'n':>10} {'secs':>7} {'peakMB':>7} {'dataMB':>7} {'length':>10} {'MST':>10} {'ratio':>6} "
           f"{'greedy':>6} {'jumps':>6} {'g.jumps':>7} {'mstJ':>5} {'subjCh':>13} {'dupAdj':>6}  mode")
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        st = r["stats"]
        mode = "exact" if st.get("exact") else f"ivf{st.get('nlist', '')}/p{st.get('nprobe', '')}"
        print(f"{r['n']:>10,} {r['seconds']:>7.1f} {r['peak_rss_mb']:>7.0f} {r['rss_after_gen_mb']:>7.0f} {r['length']:>10.1f} "
              f"{r['mst']:>10.1f} {r['ratio']:>6.3f} {r['greedy_ratio']:>6.3f} {r['long_jumps']:>6} "
              f"{r['greedy_long_jumps']:>7} {r['mst_long_edges']:>5} "
              f"{str(r['subject_changes']) + '/' + str(r['subjects'] - 1):>13} {r['dup_adjacent']:>6.1%}  {mode}")
    print("ratio = chain length / MST weight (after improvement); greedy = same before improvement;")
    print("jumps / g.jumps = steps > jump threshold after / before improvement; mstJ = MST edges above it;")
    print("subjCh = subject changes along the chain / minimum possible; peakMB = peak RSS incl. the input")
    print("vectors; dataMB = RSS after generating them. secs excludes data generation.")

    if a.naive:
        from nearsort.order.chain import _start_point
        from nearsort.vectors.knn import blas_threads
        m = a.naive
        X, _, _ = make_clustered(m, seed=a.seed + 1)
        with blas_threads(1):  # a GEMV per step: BLAS threads only add overhead
            t = time.perf_counter()
            naive_greedy(X, _start_point(X))
            tn = time.perf_counter() - t
        print(f"\nnaive O(n^2) greedy: {m:,} points in {tn:.1f} s -> "
              + ", ".join(f"{n:,}: ~{tn * (n / m) ** 2 / 3600:.1f} h" for n in sizes))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
