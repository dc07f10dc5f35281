#!/usr/bin/env python3
"""Model input side vs neighbour quality: efficientnet-lite0 at 224 and smaller (``efficientnet-lite0@S``).

    PYTHONPATH=src nice .venv/bin/python bench/inputsize.py /tmp/devbench [--sizes 224,192,160,128]

On one labelled bench (ground_truth.csv: group_id per file) resized once into --thumbs, each model
is featurized (the default backend) and its vectors scored, with the ONNX bare forward rate of each
measured in the same run (alternating, best of 3, batch 32, random input):

    similar hits   for every thumbnail of a group with more than one thumbnail, the share of its
                   group's other thumbnails among its nearest neighbours (as many as it has mates):
                   what ``nearsort similar`` shows first; mean over thumbnails
    top-10 agree   share of each thumbnail's 10 nearest neighbours that the 224 model also has
    forward        ONNX Runtime images/s, and the ratio to 224

Duplicate P/R and adjacency of the same models: ``bench/dupes.py BENCH --model M`` and
``bench/adjacency.py --dir BENCH --model M``.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def vectors(thumbs: Path, name: str) -> tuple[list[int], np.ndarray]:
    from nearsort.store import queries
    from nearsort.store.catalog import Catalog, state_dir
    from nearsort.vectors.index import VectorIndex

    with Catalog.open(thumbs, write=False) as cat:
        row = queries.model(cat, name)
        pairs = queries.embeddings(cat, row.id)
    with VectorIndex.open(state_dir(thumbs), name, row.dim, readonly=True) as vi:
        v = vi.get([r for _, r in pairs]).astype(np.float32)
    return [t for t, _ in pairs], v / np.linalg.norm(v, axis=1, keepdims=True)


def groups_of(thumbs: Path, bench: Path) -> dict[int, str]:
    """thumb id -> ground-truth group of the files it shows (files collapsed into one thumbnail)."""
    from nearsort.store.catalog import Catalog

    gt = {str(bench / r["file"]): r["group_id"] for r in csv.DictReader(open(bench / "ground_truth.csv"))}
    with Catalog.open(thumbs, write=False) as cat:
        rows = cat.execute("SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id=s.original_id").fetchall()
    return {tid: gt[os.fsdecode(bytes(p))] for p, tid in rows if os.fsdecode(bytes(p)) in gt}


def forward_rates(names: list[str], rounds: int = 3) -> dict[str, float]:
    from nearsort.embed import backends
    from nearsort.embed.embedder import bare_forward_rate

    runners = {n: backends.load(n, device="cpu", log=lambda s: None) for n in names}
    best = dict.fromkeys(names, 0.0)
    for _ in range(rounds):
        for n, (m, be) in runners.items():
            best[n] = max(best[n], bare_forward_rate(m, 32, 4, backend=be))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path)
    ap.add_argument("--thumbs", type=Path, default=None, help="default /tmp/nearsort-bench-inputsize/<bench name>")
    ap.add_argument("--sizes", default="224,192,160,128")
    a = ap.parse_args()
    from nearsort.embed.featurize import featurize
    from nearsort.embed.models import lite0_name
    from nearsort.ingest.resize import resize

    bench = a.bench.resolve()
    thumbs = (a.thumbs or Path("/tmp/nearsort-bench-inputsize") / bench.name).resolve()
    resize(bench, thumbs)
    names = [lite0_name(int(s)) for s in a.sizes.split(",")]
    for n in names:
        featurize(thumbs, model=n, device="cpu", log=lambda s: None)
    group = groups_of(thumbs, bench)
    members = defaultdict(set)
    for t, g in group.items():
        members[g].add(t)
    ref_nn = None
    t0 = time.monotonic()
    rates = forward_rates(names)
    print(f"{bench} ({len(group)} thumbnails), load {os.getloadavg()[0]:.1f}, forward measured in {time.monotonic() - t0:.0f} s")
    for n in names:
        tids, v = vectors(thumbs, n)
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        order = np.argsort(-sims, axis=1)
        pos = {t: i for i, t in enumerate(tids)}
        hits = []
        for i, t in enumerate(tids):
            mates = members.get(group.get(t), set()) - {t}
            if mates:
                got = {tids[j] for j in order[i, :len(mates)]}
                hits.append(len(got & mates) / len(mates))
        nn = {tids[i]: {tids[j] for j in order[i, :10]} for i in range(len(tids))}
        if ref_nn is None:
            ref_nn = nn
        agree = np.mean([len(nn[t] & ref_nn[t]) / 10 for t in nn if t in ref_nn and t in pos])
        print(f"  {n:<24} similar hits {np.mean(hits):.4f} ({len(hits)} thumbnails)  top-10 agree with "
              f"{names[0]} {agree:.3f}  forward {rates[n]:6.1f} images/s ({rates[n] / rates[names[0]]:.2f}x)")


if __name__ == "__main__":
    main()
