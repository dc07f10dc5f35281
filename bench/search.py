"""Search benchmark for nearsort.vectors.index.VectorIndex on synthetic clustered vectors.

For each size it builds a real store + index on disk (temp folder) through the public API
(append in chunks, then save() = index build), then measures:

* build: seconds for save() (training + adding; appends are timed separately),
* load: seconds to reopen and load the saved index (what a `nearsort search` pays),
* single-query search latency p50 / p95 (end to end: normalise, FAISS, exact re-rank),
* recall@k against exact brute force on held-out queries,
* peak RSS of the process that did all that (each size runs in its own subprocess),
* optionally (--knn) the full k-NN graph time and its recall on a sample of rows.

Data: ``--clusters`` (1000) Gaussian clusters, each spread along its own random rank-8
subspace plus isotropic noise, L2-normalised 512-d -- neighbours are meaningful (mean top-1
cosine ~0.9, 10th ~0.8, random pairs ~0), unlike isotropic blobs where k-NN is a coin toss.

    nice .venv/bin/python bench/search.py                      # 10k, 100k, 1M with the size rule
    nice .venv/bin/python bench/search.py --sizes 10000,100000 --kind auto,hnsw --nprobe 8,16,32,64

Measured figures (tables with their commands, date and machine): docs/benchmarks.md, "Vector search".
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from nearsort.vectors.index import IndexPolicy, VectorIndex  # noqa: E402

MODEL = "bench:synthetic"


class Generator:
    """Clustered unit vectors: centre + rank-r within-cluster variation + isotropic noise."""

    def __init__(self, dim: int, clusters: int, rank: int = 8, seed: int = 12345, spread: float = 1.0):
        r = np.random.default_rng(seed)
        self.dim, self.rank = dim, rank
        c = r.standard_normal((clusters, dim)).astype(np.float32)
        self.centres = c / np.linalg.norm(c, axis=1, keepdims=True)
        self.bases = (r.standard_normal((clusters, rank, dim)) / np.sqrt(dim)).astype(np.float32)
        self.scale = (r.uniform(0.25, 0.6, clusters) * spread).astype(np.float32)
        self.noise = 0.25

    def sample(self, n: int, seed: int) -> np.ndarray:
        g = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, 8192):
            m = min(8192, n - s)
            lab = g.integers(0, len(self.centres), m)
            z = g.standard_normal((m, self.rank), dtype=np.float32) * self.scale[lab, None]
            x = self.centres[lab] + np.einsum("nr,nrd->nd", z, self.bases[lab])
            x += self.noise / np.sqrt(self.dim) * g.standard_normal((m, self.dim), dtype=np.float32)
            out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / k for a, b in zip(found, truth)]))


def latency(vi: VectorIndex, q: np.ndarray, k: int, **kw) -> tuple[float, float]:
    for i in range(min(20, len(q))):  # warm-up (page cache, lazy GPU clone...)
        vi.search(q[i : i + 1], k, **kw)
    ts = []
    for i in range(len(q)):
        t0 = time.perf_counter()
        vi.search(q[i : i + 1], k, **kw)
        ts.append(time.perf_counter() - t0)
    ts = np.array(ts) * 1e3
    return float(np.percentile(ts, 50)), float(np.percentile(ts, 95))


def run_one(a) -> dict:
    n, kind = a.size, a.kind
    gen = Generator(a.dim, a.clusters, spread=a.spread)
    work = Path(tempfile.mkdtemp(prefix="nearsort-bench-", dir=a.workdir))
    policy = IndexPolicy(kind=kind, **({"flat_max": a.flat_max} if a.flat_max else {}))
    res: dict = {"size": n, "kind_asked": kind}
    try:
        vi = VectorIndex.open(work, MODEL, a.dim, 0, policy=policy)
        t0 = time.perf_counter()
        chunk = 50_000
        for s in range(0, n, chunk):
            vi.append(gen.sample(min(chunk, n - s), seed=1000 + s // chunk))
        res["append_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        params = vi.save()
        res["build_s"] = time.perf_counter() - t0
        res["kind"], res["params"] = params["kind"], params["params"]
        res["disk_mb"] = sum(p.stat().st_size for p in vi.folder.iterdir()) / 2**20
        vi.close()

        q = gen.sample(a.queries, seed=7)
        t0 = time.perf_counter()
        vi = VectorIndex.open(work, MODEL, a.dim, n, policy=policy, readonly=True)
        vi.search(q[:1], a.k)
        res["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        De, Ie = vi.exact_search(q, a.k)
        res["exact_batch_s"] = time.perf_counter() - t0
        res["top1_cos"], res["topk_cos"] = float(De[:, 0].mean()), float(De[:, -1].mean())

        sweeps: list[tuple[str, dict]] = [("default", {})]
        if res["kind"] == "ivf":
            sweeps += [(f"nprobe={p}", {"nprobe": p}) for p in a.nprobe]
        if res["kind"] == "hnsw":
            sweeps += [(f"ef={e}", {"ef": e}) for e in a.ef]
        res["runs"] = []
        for label, kw in sweeps:
            p50, p95 = latency(vi, q, a.k, **kw)
            _, I = vi.search(q, a.k, **kw)
            res["runs"].append({"setting": label, "p50_ms": p50, "p95_ms": p95, "recall": recall(I, Ie)})

        if a.knn and n <= a.knn_max:
            t0 = time.perf_counter()
            _, Ik = vi.knn(a.k)
            res["knn_s"] = time.perf_counter() - t0
            sample = np.random.default_rng(3).choice(n, min(200, n), replace=False)
            _, It = vi.exact_search(vi.get(sample), a.k + 1)
            truth = np.array([[r for r in row if r != s][: a.k] for row, s in zip(It, sample)])
            res["knn_recall"] = recall(Ik[sample], truth)
        vi.close()
        res["peak_rss_mb"] = peak_rss_mb()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def fmt_params(p: dict) -> str:
    keep = ("nlist", "nprobe", "encoding", "refine", "M", "efConstruction", "efSearch")
    return ",".join(f"{k}={p[k]}" for k in keep if k in p) or "-"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated vector counts")
    ap.add_argument("--kind", default="auto", help="comma-separated: auto (the size rule), flat, ivf, hnsw")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--spread", type=float, default=1.0,
                    help="within-cluster spread multiplier; 2 = much harder data for any ANN index")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--flat-max", type=int, default=0, help="override IndexPolicy.flat_max")
    ap.add_argument("--nprobe", default="", help="IVF: extra nprobe values to sweep, e.g. 8,16,64")
    ap.add_argument("--ef", default="", help="HNSW: extra efSearch values to sweep")
    ap.add_argument("--knn", action="store_true", help="also time the full k-NN graph (sizes <= --knn-max)")
    ap.add_argument("--knn-max", type=int, default=100_000)
    ap.add_argument("--workdir", default=None, help="where the temporary stores go (default: $TMPDIR)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.nprobe = [int(v) for v in a.nprobe.split(",") if v]
    a.ef = [int(v) for v in a.ef.split(",") if v]

    if a.one:
        print("RESULT " + json.dumps(run_one(a)), flush=True)
        return 0

    import faiss

    print(
        f"nearsort bench/search: d={a.dim}, {a.clusters} clusters (spread {a.spread}), "
        f"{a.queries} queries, k={a.k}, "
        f"faiss {faiss.__version__}, {os.cpu_count()} cpus, omp threads {faiss.omp_get_max_threads()}, "
        f"gpus {faiss.get_num_gpus()}, loadavg {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    for n in [int(s) for s in a.sizes.split(",") if s]:
        for kind in [k for k in a.kind.split(",") if k]:
            cmd = [sys.executable, __file__, "--one", "--size", str(n), "--kind", kind]
            for opt in ("dim", "clusters", "queries", "spread", "k", "flat_max", "knn_max", "workdir"):
                v = getattr(a, opt)
                if v not in (None, 0):
                    cmd += [f"--{opt.replace('_', '-')}", str(v)]
            if a.nprobe:
                cmd += ["--nprobe", ",".join(map(str, a.nprobe))]
            if a.ef:
                cmd += ["--ef", ",".join(map(str, a.ef))]
            if a.knn:
                cmd.append("--knn")
            t0 = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            lines = [l for l in p.stdout.splitlines() if l.startswith("RESULT ")]
            if p.returncode != 0 or not lines:
                print(f"size {n} kind {kind}: FAILED (rc {p.returncode})\n{p.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(lines[-1][7:])
            r["wall_s"] = time.time() - t0
            results.append(r)
            print(
                f"  done {n:>9,} {r['kind']:<5} in {r['wall_s']:.0f}s (loadavg {os.getloadavg()[0]:.1f})",
                flush=True,
            )

    hdr = (
        f"{'vectors':>9} {'kind':<5} {'params':<40} {'setting':<10} {'build s':>8} {'load s':>7} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'R@' + str(a.k):>6} {'RSS MB':>7} {'disk MB':>8} {'top1/topk cos':>13}"
    )
    print()
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        for j, run in enumerate(r["runs"]):
            first = j == 0
            print(
                f"{r['size']:>9,} {r['kind']:<5} {fmt_params(r['params']) if first else '':<40} {run['setting']:<10} "
                + (f"{r['build_s']:>8.1f} {r['load_s']:>7.2f} " if first else f"{'':>8} {'':>7} ")
                + f"{run['p50_ms']:>7.2f} {run['p95_ms']:>7.2f} {run['recall']:>6.3f} "
                + (
                    f"{r['peak_rss_mb']:>7.0f} {r['disk_mb']:>8.0f} {r['top1_cos']:>6.3f}/{r['topk_cos']:.3f}"
                    if first
                    else ""
                )
            )
    knn = [r for r in results if "knn_s" in r]
    if knn:
        print()
        for r in knn:
            print(
                f"knn graph k={a.k}: {r['size']:,} vectors ({r['kind']}) in {r['knn_s']:.1f}s, "
                f"recall@{a.k} vs exact {r['knn_recall']:.3f}"
            )
    print("\n(build = save(): train + add; appends not included. load = reopen + load index + 1st query. "
          "Latency: one query per call, end to end.)")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
