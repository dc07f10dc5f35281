#!/usr/bin/env python3
"""Duplicate finding on a labeled near-duplicate bench (../shared/bench/make_nd_bench.py): pairwise P/R/F1.

    nice .venv/bin/python bench/dupes.py /tmp/devbench                 # resize + featurize once, score defaults
    nice .venv/bin/python bench/dupes.py /tmp/devbench --sweep         # + threshold sweeps (justify defaults)
    nice .venv/bin/python bench/dupes.py /tmp/devbench --json out.json # score a `nearsort dupes --json` output
    nice .venv/bin/python bench/dupes.py /tmp/devbench --pipeline      # + end-to-end images/s (fresh THUMBS)
    nice .venv/bin/python bench/dupes.py /tmp/tilesbench --peers       # + fastdup, imagededup in the same run
    nice .venv/bin/python bench/dupes.py /tmp/realshots --motion       # + local motion of copies vs different shots
    nice .venv/bin/python bench/dupes.py /tmp/vidbench --originals     # + what the motion check on the originals costs
    nice .venv/bin/python bench/dupes.py /tmp/vidbench --texture       # + where the motion check cannot measure
    nice .venv/bin/python bench/dupes.py /tmp/crops5k --coarse         # + the coarse-scale screen's margin
    nice .venv/bin/python bench/dupes.py /tmp/devbench --model efficientnet-lite0@160   # another model input

Hard benches (look-alike distinct pictures, different shots, 20 000 crops): bench/make_hard_bench.py.
Extra counts: "different shots paired" (pairs of two shots of one scene in one group: must be 0),
"false pairs across photos" (tiles of two different photos), "mixed groups" (groups holding
pictures made from two different photos: must be 0).

THUMBS defaults to /tmp/nearsort-bench-dupes/<bench name>; it is made with ``resize`` and
``featurize`` (efficientnet-lite0, the offline default) when missing.

Scoring: positives are the pairs of files in one group whose relations are
original / exact / near_duplicate; pairs with a ``similar`` (flipped) file are not counted
either way; every other pair is a negative. Predicted positives are the pairs of files that
``dupes`` puts in one group (files are matched by path). Also reported: how many flips were
put into a duplicate group (should be 0) and how many were labelled as mirror images.

Peers are measured in the same run with ``--peers`` (bench/peers.py). Figures: README "Measured figures",
docs/benchmarks.md "Duplicates".
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import defaultdict
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nearsort.dupes.group import DupesConfig, find_duplicates  # noqa: E402

MODEL = "efficientnet-lite0"  # the model featurize makes and dupes uses (--model)


def load_truth(bench: Path) -> dict[str, dict]:
    with open(bench / "ground_truth.csv", newline="") as fh:
        return {r["file"]: r for r in csv.DictReader(fh)}


def truth_pairs(truth: dict[str, dict]) -> tuple[set, set]:
    """(positive pairs, ignored pairs) as frozensets of bench-relative paths."""
    by_group = defaultdict(list)
    for f, r in truth.items():
        by_group[r["group_id"]].append(f)
    pos, ign = set(), set()
    for files in by_group.values():
        for a, b in combinations(sorted(files), 2):
            if "similar" in (truth[a]["relation"], truth[b]["relation"]):
                ign.add(frozenset((a, b)))
            else:
                pos.add(frozenset((a, b)))
    return pos, ign


def score(result: dict, bench: Path, truth: dict[str, dict]) -> dict:
    pos, ign = truth_pairs(truth)
    root = os.path.abspath(bench)
    pred = set()
    flips_grouped = 0
    unknown = 0
    mixed = 0
    for g in result["groups"]:
        files = []
        for m in g["members"]:
            rel = os.path.relpath(m["path"], root).replace(os.sep, "/")
            if rel not in truth:
                unknown += 1
                continue
            files.append(rel)
            if truth[rel]["relation"] == "similar":
                flips_grouped += 1
        for a, b in combinations(sorted(files), 2):
            pred.add(frozenset((a, b)))
        mixed += len({_photo(truth[f]) for f in files}) > 1
    shot_pairs = sum(1 for p in pred if _shots(truth, *p))
    pred -= ign
    tp = len(pred & pos)
    fp = len(pred - pos)
    fn = len(pos - pred)
    p = tp / (tp + fp) if tp + fp else 1.0
    r = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    keep_ok = keep_n = 0
    for g in result["groups"]:
        rel = os.path.relpath(g["keeper"], root).replace(os.sep, "/")
        if rel in truth:
            keep_n += 1
            keep_ok += truth[rel]["relation"] in ("original", "exact")
    flips = {f for f, t in truth.items() if t["relation"] == "similar"}
    labelled = set()
    for s in result.get("similar", []):
        for side in ("a", "b"):
            for path in s[side]:
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                if rel in flips:
                    labelled.add(rel)
    return {"precision": p, "recall": r, "f1": f1, "tp": tp, "fp": fp, "fn": fn,
            "flips_in_groups": flips_grouped, "flips_labelled": len(labelled), "flips": len(flips),
            "groups": len(result["groups"]), "unknown_files": unknown, "keeper_original": keep_ok,
            "keeper_groups": keep_n, "mixed_groups": mixed, "shot_pairs": shot_pairs,
            "fp_cross_photo": sum(1 for p in pred - pos if len({_photo(truth[f]) for f in p}) > 1)}


def _photo(row: dict) -> str:
    """The photo a bench file was made from: make_hard_bench.py's tiles are named PHOTO__YY_XX.jpg."""
    return row.get("source", "").split("__")[0] if "__" in row.get("source", "") else row.get("source", "")


def _shots(truth: dict, a: str, b: str) -> bool:
    """Two different shots of one scene (make_hard_bench.py shots): never a copy pair."""
    sa, sb = truth[a].get("scene"), truth[b].get("scene")
    return bool(sa) and sa == sb and truth[a]["group_id"] != truth[b]["group_id"]


def fmt(s: dict) -> str:
    return (f"P {s['precision']:.4f}  R {s['recall']:.4f}  F1 {s['f1']:.4f}  (tp {s['tp']}, fp {s['fp']}, "
            f"fn {s['fn']}; {s['groups']} groups; flips grouped {s['flips_in_groups']}, "
            f"labelled mirror {s['flips_labelled']}/{s['flips']}; keeper = the original in "
            f"{s['keeper_original']}/{s['keeper_groups']} groups; different shots paired {s['shot_pairs']}; "
            f"false pairs across photos {s['fp_cross_photo']}; mixed groups {s['mixed_groups']})")


def prepare(bench: Path, thumbs: Path, workers: int | None = None) -> dict:
    """resize + featurize (both incremental); returns timings."""
    from nearsort.embed.featurize import featurize
    from nearsort.ingest.resize import resize

    t0 = time.monotonic()
    rs = resize(bench, thumbs, workers=workers)
    t1 = time.monotonic()
    fs = featurize(thumbs, model=MODEL, device="auto", log=lambda m: None)
    t2 = time.monotonic()
    return {"resize_s": t1 - t0, "featurize_s": t2 - t1, "processed": rs.processed, "embedded": fs.embedded}


def run(thumbs: Path, **kw) -> dict:
    cfg = DupesConfig(model=MODEL, **kw)
    return find_duplicates(thumbs, cfg).to_dict()


def labelled_pairs(thumbs: Path, bench: Path, truth: dict, one_group: bool = False):
    """(bench file -> thumbnail id, thumbnail id -> relpath, {(file a, file b, "copies" | "shots")}):
    every labelled copy pair and every pair of different shots of one scene, among the bench files
    THUMBS holds. ``one_group``: only files whose thumbnail holds originals of one labelled group
    (a thumbnail merged at resize shows one frame's pixels under two labels)."""
    from nearsort.dupes.group import load_members
    from nearsort.store.catalog import Catalog

    root = os.path.abspath(bench)
    with Catalog.open(thumbs, write=False) as cat:
        members, _, rels = load_members(cat)
    thumb = {os.path.relpath(m.path, root).replace(os.sep, "/"): m.thumb_id for m in members}
    groups_of = defaultdict(set)
    for f, t in thumb.items():
        if f in truth:
            groups_of[t].add(truth[f]["group_id"])
    by_group, by_scene = defaultdict(list), defaultdict(list)
    for f, r in truth.items():
        if f in thumb and r["relation"] not in ("distractor", "similar") and (
                not one_group or len(groups_of[thumb[f]]) == 1):
            by_group[r["group_id"]].append(f)
            if r.get("scene"):
                by_scene[r["scene"]].append(f)
    pairs = {(a, b, "copies") for fs in by_group.values() for a, b in combinations(sorted(fs), 2)}
    pairs |= {(a, b, "shots") for fs in by_scene.values() for a, b in combinations(sorted(fs), 2)
              if truth[a]["group_id"] != truth[b]["group_id"]}
    return thumb, rels, pairs


def motion_report(thumbs: Path, bench: Path, truth: dict) -> None:
    """pixels.local_motion on every labelled copy pair and every pair of different shots of one
    scene that reaches it (the pair passed the structure checks): where MAX_MOTION must sit."""
    from nearsort.dupes.pixels import MAX_MOTION, compare_files

    thumb, rels, pairs = labelled_pairs(thumbs, bench, truth)
    seen: dict[str, list] = {"copies": [], "shots": []}
    for a, b, lab in sorted(pairs):
        ta, tb = thumb[a], thumb[b]
        if ta == tb:  # one thumbnail (collapsed at resize): nothing to compare
            continue
        v = compare_files(thumbs / rels[ta], thumbs / rels[tb])
        if "motion" in v.metrics:
            seen[lab].append((v.metrics["motion"], truth[a]["transform"], truth[b]["transform"], v.kind))
    cop = sorted(seen["copies"], reverse=True)
    sho = sorted(seen["shots"])
    print(f"\n# local motion (MAX_MOTION {MAX_MOTION}); copies: {len(cop)} pairs, the most: "
          + ", ".join(f"{m:.2f} ({x} / {y})" for m, x, y, _ in cop[:4]))
    print(f"  different shots reaching it: {len(sho)} pairs, {sum(m > MAX_MOTION for m, *_ in sho)} above; the least: "
          + ", ".join(f"{m:.2f} ({x} / {y})" for m, x, y, _ in sho[:6]))


def texture_report(thumbs: Path, bench: Path, truth: dict) -> None:
    """Where the motion check is blind: for every labelled copy pair and every pair of different
    shots of one scene that reaches it (frames.local_motion answers 0 when fewer than 6 flow blocks
    have 2-D texture, frames.MOTION_TEXTURE), how many were measured, and what lowering that floor
    does to both sides. Pairs whose thumbnail holds originals of two labelled groups (merged at
    resize) are left out: their pixels are one frame's, their labels two."""
    from nearsort import frames
    from nearsort.dupes import pixels
    from nearsort.dupes.pixels import MAX_MOTION, _Picture, compare_pictures

    thumb, rels, labelled = labelled_pairs(thumbs, bench, truth, one_group=True)
    pairs = {(thumb[a], thumb[b], lab) for a, b, lab in labelled if thumb[a] != thumb[b]}
    pics: dict = {}

    def pic(t):
        if t not in pics:
            pics[t] = _Picture(thumbs / rels[t])
        return pics[t]

    floor, low = frames.MOTION_TEXTURE, pixels.MOTION_TEXTURE_LOW
    print(f"\n# the motion check's texture floor (frames.MOTION_TEXTURE {floor}, for faint thumbnails "
          f"MOTION_TEXTURE_LOW {low}; MAX_MOTION {MAX_MOTION}): {len(pairs)} thumbnail pairs of one labelled group each")
    try:  # without the faint thumbnails' floor, with it (the default), then one lower floor for all
        for level, fallback in ((floor, None), (floor, low), (floor / 2, None), (floor / 4, None)):
            frames.MOTION_TEXTURE, pixels.MOTION_TEXTURE_LOW = level, fallback
            seen = {"copies": [0, 0, 0], "shots": [0, 0, 0]}  # reached the check, measured, above MAX_MOTION
            for ta, tb, lab in sorted(pairs):
                fit: dict = {}
                v = compare_pictures(pic(ta), pic(tb), fit=fit)
                if "motion" not in v.metrics:
                    continue
                seen[lab][0] += 1
                seen[lab][1] += fit.get("affine") is not None
                seen[lab][2] += v.metrics["motion"] > MAX_MOTION
            c, s = seen["copies"], seen["shots"]
            print(f"  floor {level:<6g} then {fallback or '-':<6} copies: {c[0]} reach it, {c[1]} measured, {c[2]} above (lost); "
                  f"different shots: {s[0]} reach it, {s[1]} measured, {s[0] - s[2]} at or below (grouped)")
    finally:
        frames.MOTION_TEXTURE, pixels.MOTION_TEXTURE_LOW = floor, low


def coarse_report(thumbs: Path) -> None:
    """The screens of pairs that only a strong copy verdict may join (pixels.STRONG_SCREEN after the
    fine scales, pixels.COARSE_SCREEN after the coarse ones alone): for one dupes run (1 process, no
    stored verdicts), the best coarse-scale alignment score of every strong copy found (it must stay
    below COARSE_SCREEN with a margin) and how many screened pairs each screen stops."""
    from nearsort.dupes import pixels

    first: list[float] = []
    rows: list[tuple[float, bool, bool]] = []  # (coarse score, screened question, strong answer)
    aligned, compare = pixels._aligned_diffs, pixels.compare_pictures

    def _aligned(pairs, lim):
        out = aligned(pairs, lim)
        first.append(float(out.min()))
        return out

    def _compare(pa, pb, screen=None, fit=None):
        first.clear()
        v = compare(pa, pb, screen, fit)
        if first:
            rows.append((first[0], screen is not None, v.strong))
        return v

    pixels._aligned_diffs, pixels.compare_pictures = _aligned, _compare
    try:
        run(thumbs, workers=1, cache=False)
    finally:
        pixels._aligned_diffs, pixels.compare_pictures = aligned, compare
    strong = [c for c, _, st in rows if st]
    screened = [c for c, sc, _ in rows if sc]
    print(f"\n# coarse-scale screen (pixels.COARSE_SCREEN {pixels.COARSE_SCREEN}, STRONG_SCREEN "
          f"{pixels.STRONG_SCREEN}): {len(rows)} aligned pairs; {len(strong)} strong copies reach at most "
          f"{max(strong, default=0.0):.3f} on the coarse scales; of {len(screened)} screened pairs "
          f"{sum(c > pixels.COARSE_SCREEN for c in screened)} stop there, "
          f"{sum(pixels.STRONG_SCREEN < c <= pixels.COARSE_SCREEN for c in screened)} more may stop after the fine scales")


def originals_cost(thumbs: Path, bench: Path, truth: dict, rounds: int = 3) -> None:
    """dupes with and without the motion check on the originals (DupesConfig.originals), alternating,
    best of ``rounds`` wall and CPU seconds each, without the stored verdicts: what reading and
    measuring the originals costs."""
    best: dict[bool, tuple[float, float]] = {}
    out: dict[bool, dict] = {}
    for _ in range(rounds):
        for on in (True, False):
            t0, c0 = time.monotonic(), time.process_time()
            out[on] = run(thumbs, originals=on, workers=1, cache=False)  # compared, not recalled
            dt, dc = time.monotonic() - t0, time.process_time() - c0
            best[on] = min(best.get(on, (dt, dc)), (dt, dc))
    s = out[True]["summary"]
    print(f"\n# the motion check on the originals (1 process, best of {rounds}, alternating): "
          f"with {best[True][0]:.2f} s wall / {best[True][1]:.2f} s CPU, without {best[False][0]:.2f} s / "
          f"{best[False][1]:.2f} s -> x{best[True][1] / max(best[False][1], 1e-9):.2f} CPU; "
          f"{s['original_checks']} pairs measured on their originals of {s['pixel_checks']} pixel checks, "
          f"{s['originals_unreadable']} unreadable")
    print("  without:", fmt(score(out[False], bench, truth)))


def sweep(thumbs: Path, bench: Path, truth: dict) -> None:
    d = DupesConfig()
    print("\n# phash only (no embeddings): phash_distance d")
    for x in (0, 2, 4, 6, 8, 10, 12, 14, 16):
        print(f"  d={x:<3}", fmt(score(run(thumbs, use_embeddings=False, phash_distance=x), bench, truth)))
    print("\n# embedding cosine only (no thumbnail check, no phash): threshold T")
    for x in (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):
        print(f"  T={x:<5}", fmt(score(run(thumbs, threshold=x, crop_distance=64, mirror_margin=99,
                                           phash_distance=0), bench, truth)))
    print(f"\n# defaults, varying crop_distance (T={d.threshold}, d={d.phash_distance})")
    for x in (4, 6, 8, 10, 12, 14, 16, 18, 20, 22):
        print(f"  crop={x:<3}", fmt(score(run(thumbs, crop_distance=x), bench, truth)))
    print(f"\n# defaults, varying threshold T (crop={d.crop_distance}, d={d.phash_distance})")
    for x in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        print(f"  T={x:<4}", fmt(score(run(thumbs, threshold=x), bench, truth)))
    print(f"\n# defaults, varying phash_distance d (T={d.threshold}, crop={d.crop_distance})")
    for x in (0, 4, 6, 8, 10, 12, 14):
        print(f"  d={x:<3}", fmt(score(run(thumbs, phash_distance=x), bench, truth)))
    print("\n# defaults, varying k (neighbours per photo)")
    for x in (2, 3, 5, 10, 20):
        print(f"  k={x:<3}", fmt(score(run(thumbs, k=x), bench, truth)))
    print("\n# defaults without the mirror check (flips may join groups)")
    print("  ", fmt(score(run(thumbs, mirror_margin=99), bench, truth)))


def main(argv=None) -> int:
    global MODEL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="bench folder with ground_truth.csv")
    ap.add_argument("--thumbs", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None, help="score this `nearsort dupes --json` output instead")
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--pipeline", action="store_true", help="time resize + featurize + dupes from scratch")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--model", default=MODEL, help=f"embedding model (default {MODEL}; e.g. efficientnet-lite0@160)")
    ap.add_argument("--peers", action="store_true", help="also run fastdup and imagededup (bench/peers.py) on the bench")
    ap.add_argument("--originals", action="store_true",
                    help="also time dupes with and without the motion check on the originals (alternating, best of 3)")
    ap.add_argument("--coarse", action="store_true",
                    help="also print the coarse-scale screen's margin over the strong copies found")
    ap.add_argument("--texture", action="store_true",
                    help="also print how many pairs the motion check could measure, at its texture floor and below")
    ap.add_argument("--motion", action="store_true",
                    help="also print pixels.local_motion of the labelled copy pairs and of different shots")
    a = ap.parse_args(argv)
    MODEL = a.model
    bench = a.bench.resolve()
    if not (bench / "ground_truth.csv").exists():
        ap.error(f"{bench}/ground_truth.csv not found "
                 "(make one with ../shared/bench/make_nd_bench.py or bench/make_hard_bench.py)")
    truth = load_truth(bench)
    n_files = len(truth)
    if a.json:
        print(f"{a.json}:", fmt(score(json.loads(a.json.read_text()), bench, truth)))
        return 0
    thumbs = (a.thumbs or Path("/tmp/nearsort-bench-dupes") / bench.name).resolve()
    if a.pipeline:
        import shutil
        import tempfile

        tmp = Path(tempfile.mkdtemp(prefix="nearsort-pipeline-"))
        try:
            t = prepare(bench, tmp / "thumbs", a.workers)
            t0 = time.monotonic()
            res = find_duplicates(tmp / "thumbs", DupesConfig(model=MODEL)).to_dict()
            t["dupes_s"] = time.monotonic() - t0
            total = t["resize_s"] + t["featurize_s"] + t["dupes_s"]
            print(f"pipeline on {n_files} files ({os.cpu_count()} cores): resize {t['resize_s']:.1f} s, "
                  f"featurize {t['featurize_s']:.1f} s, dupes {t['dupes_s']:.1f} s -> "
                  f"{n_files / total:.1f} images/s end to end")
            print("  ", fmt(score(res, bench, truth)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    prepare(bench, thumbs, a.workers)
    t0 = time.monotonic()
    res = run(thumbs)
    dt = time.monotonic() - t0
    print(f"defaults {json.dumps({k: v for k, v in res['settings'].items() if k not in ('workers', 'cache')})}")
    print(f"  {fmt(score(res, bench, truth))}  [{dt:.2f} s]")
    if a.peers:
        from peers import describe, run_peers

        for tool, (s, secs) in run_peers(bench).items():
            print(f"{tool:<17} {fmt(s)}  [{secs:.2f} s]  {describe(tool, s)}")
    if a.motion:
        motion_report(thumbs, bench, truth)
    if a.texture:
        texture_report(thumbs, bench, truth)
    if a.coarse:
        coarse_report(thumbs)
    if a.originals:
        originals_cost(thumbs, bench, truth)
    if a.sweep:
        sweep(thumbs, bench, truth)
    return 0


if __name__ == "__main__":
    sys.exit(main())
