#!/usr/bin/env python3
"""Do near-duplicates end up side by side? The real pipeline on the labeled dev bench.

    python bench/adjacency.py                       # dev bench (seed 1), efficientnet-lite0
    python bench/adjacency.py --by phash --fast

Runs resize -> featurize -> analyze on the bench (THUMBS cached in /tmp, reused when present),
then reports, for every ground-truth group with variants (original + exact + near-duplicate +
flipped copies), whether its thumbnails occupy consecutive ranks (exact copies share one
thumbnail). Also prints the chain length / MST bound from analyze.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import DEFAULT_BENCH, ensure_devbench  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="bench folder with ground_truth.csv (default: dev bench seed 1)")
    ap.add_argument("--thumbs", type=Path, help="THUMBS folder to use (default: a cached one in /tmp)")
    ap.add_argument("--by", default="similarity")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--fast", action="store_true")
    a = ap.parse_args()

    from nearsort import Catalog, resize
    from nearsort.order.analyze import analyze
    from nearsort.embed.featurize import featurize

    src = a.dir or ensure_devbench(DEFAULT_BENCH)
    thumbs = a.thumbs or Path(tempfile.gettempdir()) / f"nearsort-adjacency-{src.name}"
    t = time.perf_counter()
    resize(src, thumbs, workers=2)
    t_resize = time.perf_counter() - t
    t = time.perf_counter()
    if a.by == "similarity":
        featurize(thumbs, model=a.model)
    t_feat = time.perf_counter() - t
    s = analyze(thumbs, by=a.by, model=a.model if a.by == "similarity" else None, fast=a.fast)
    gt = list(csv.DictReader(open(src / "ground_truth.csv")))
    with Catalog.open(thumbs, write=False) as cat:
        thumb_of = {os.fsdecode(bytes(p)): tid for p, tid in cat.execute(
            "SELECT s.path, o.thumb_id FROM sources s JOIN originals o ON o.id=s.original_id")}
        rank = dict(cat.execute("SELECT thumb_id, rank FROM ranks WHERE ordering=?", (s.ordering,)).fetchall())
    groups: dict[str, set[int]] = defaultdict(set)
    for r in gt:
        tid = thumb_of.get(str(src / r["file"]))
        if tid is not None:
            groups[r["group_id"]].add(tid)
    with_variants = {g for g in groups if sum(1 for r in gt if r["group_id"] == g) > 1}
    adjacent = []
    for g in sorted(with_variants):
        rk = sorted(rank[t] for t in groups[g])
        ok = rk[-1] - rk[0] + 1 == len(rk)
        adjacent.append(ok)
        if not ok and os.environ.get("VERBOSE"):
            print("not adjacent:", g, rk)
    share = sum(adjacent) / len(adjacent)
    print(f"bench {src} ({len(gt)} files), THUMBS {thumbs}")
    print(f"ordering {s.ordering}  fast={a.fast}  analyze {s.seconds} s  "
          f"(resize {t_resize:.1f} s, featurize {t_feat:.1f} s; cached steps are ~0)")
    if s.chain_length is not None:
        print(f"chain length {s.chain_length:.3f}  MST bound {s.mst_weight}  ratio {s.mst_ratio}  "
              f"long jumps {s.long_jumps}")
    print(f"groups with variants whose thumbnails occupy consecutive ranks: {sum(adjacent)}/{len(adjacent)} "
          f"= {share:.3f}   (goal >= 0.95)")


if __name__ == "__main__":
    main()
