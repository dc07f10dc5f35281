#!/usr/bin/env python3
"""End to end against fastdup: nearsort resize + featurize + dupes vs fastdup's whole run, same folder.

    nice .venv/bin/python bench/e2e.py /tmp/devbench [/tmp/crops5k] [--rounds 2] [--also main=../main/src]

    python bench/make_hard_bench.py crops ../shared/bench/originals /tmp/crops5k --n 5000   # the 5 000-file bench

Per bench and round, the two tools run one after the other, alternating which goes first, each on a
fresh work folder, each under ``nice``:

- nearsort: the real CLI in subprocesses, ``resize BENCH --out T``, ``featurize T``, ``dupes T --json``
  (a fresh THUMBS each round; the ONNX graph cache in ~/.cache/nearsort is warm, as on a user's
  second library: its one-off export is not counted);
- fastdup: bench/peers.py's run (``fastdup.create(work, input_dir=BENCH).run()`` at its defaults,
  its connected components), its whole subprocess timed (model load included, as nearsort's).

Prints the best wall time of --rounds for each tool, images/s (files in ground_truth.csv / seconds),
the ratio nearsort / fastdup (also per CPU second: user + system of the tool's processes, steadier
than wall time on a loaded machine), and both tools' P/R scored like bench/dupes.py (same pairs).
``--also LABEL=SRC`` times another nearsort checkout in the same rounds (before / after a change). On a crops
bench (every crop its own group) precision and recall have no positives to count: read "false pairs
across photos" and "mixed groups" (groups holding crops of two different photos), which must be 0.
The machine's load average is printed with each round: on a shared machine read the ratio.
"""
from __future__ import annotations

import argparse
import json
import resource
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from dupes import fmt, load_truth, score  # noqa: E402
from peers import run_fastdup  # noqa: E402

CLI = "import sys; sys.argv[0] = 'nearsort'; from nearsort.cli import main; main()"
STAGES = ("resize", "featurize", "dupes")


def child_cpu() -> float:
    """CPU seconds (user + system) of the children waited for so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def nearsort_env(src: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_nearsort(bench: Path, src: Path = REPO / "src") -> tuple[dict, dict, float]:
    """(`dupes --json` result, {stage: seconds, stage_cpu: CPU seconds}, CPU seconds) for the three CLI
    calls on a fresh THUMBS, with the nearsort package found in ``src``."""
    env = nearsort_env(src)
    secs: dict[str, float] = {}
    cpu = child_cpu()
    with tempfile.TemporaryDirectory(prefix="nearsort-bench-e2e-") as tmp:
        thumbs = Path(tmp) / "thumbs"
        for stage, args in (("resize", ["resize", str(bench), "--out", str(thumbs), "--json"]),
                            ("featurize", ["featurize", str(thumbs), "--json"]),
                            ("dupes", ["dupes", str(thumbs), "--json"])):
            t, c = time.monotonic(), child_cpu()
            p = subprocess.run(["nice", sys.executable, "-c", CLI, *args], env=env,
                               capture_output=True, text=True)
            secs[stage] = time.monotonic() - t
            secs[stage + "_cpu"] = child_cpu() - c
            if p.returncode:
                raise SystemExit(f"nearsort {' '.join(args)} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
        return json.loads(p.stdout), secs, child_cpu() - cpu


def bench_one(bench: Path, rounds: int, fastdup: bool, others: dict[str, Path]) -> dict:
    truth = load_truth(bench)
    n = len(truth)
    print(f"== {bench} ({n} files, {os.cpu_count()} cores)", flush=True)
    best: dict[str, tuple[float, dict, dict, float]] = {}
    tools = ["nearsort", *others, "fastdup"] if fastdup else ["nearsort", *others]
    for r in range(rounds):
        order = tools if r % 2 == 0 else tools[::-1]
        for tool in order:
            load = os.getloadavg()[0]
            if tool != "fastdup":
                res, secs, cpu = run_nearsort(bench, others.get(tool, REPO / "src"))
                total = sum(secs[k] for k in STAGES)
                s = score(res, bench, truth)
                detail = " + ".join(f"{k} {secs[k]:.1f} (CPU {secs[k + '_cpu']:.1f})" for k in STAGES)
            else:
                cpu = child_cpu()
                cc, _sim, info, total = run_fastdup(bench)
                cpu = child_cpu() - cpu
                s = {**score(cc, bench, truth), **info}
                secs, detail = {}, "its whole run"
            print(f"  round {r + 1} {tool:<10} {total:6.1f} s ({detail})  {n / total:6.1f} images/s  "
                  f"CPU {cpu:6.1f} s  load {load:.1f}", flush=True)
            if tool not in best or total < best[tool][0]:
                best[tool] = (total, s, secs, cpu)
    out = {"bench": str(bench), "files": n}
    for tool, (total, s, secs, cpu) in best.items():
        out[tool] = {"seconds": round(total, 2), "images_per_second": round(n / total, 1), "cpu_seconds": round(cpu, 2),
                     "stages": {k: round(v, 2) for k, v in secs.items()}, "score": s}
        print(f"  {tool:<10} best of {rounds}: {total:6.1f} s  {n / total:6.1f} images/s  (CPU {cpu:.1f} s)  {fmt(s)}")
    for tool in best:
        if tool != "fastdup" and "fastdup" in best:
            ratio, cpu_ratio = best["fastdup"][0] / best[tool][0], best["fastdup"][3] / best[tool][3]
            out[tool]["ratio"], out[tool]["cpu_ratio"] = round(ratio, 3), round(cpu_ratio, 3)
            print(f"  {tool} / fastdup images/s: {ratio:.2f}x  (target >= 1.2x); per CPU second: {cpu_ratio:.2f}x")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, nargs="+", help="bench folder(s) with ground_truth.csv")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per bench, best kept (default 2)")
    ap.add_argument("--no-fastdup", action="store_true", help="nearsort only")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--also", action="append", default=[], metavar="LABEL=SRC",
                    help="also time the nearsort package in SRC (e.g. main=/work/main/src: before and after in one run)")
    a = ap.parse_args(argv)
    for b in a.bench:
        if not (b / "ground_truth.csv").exists():
            ap.error(f"{b}/ground_truth.csv not found (bench/make_hard_bench.py, ../shared/bench/make_nd_bench.py)")
    if not shutil.which("nice"):
        ap.error("needs `nice`")
    others = {}
    for spec in a.also:
        label, _, src = spec.partition("=")
        if not src or not (Path(src) / "nearsort" / "cli.py").is_file():
            ap.error(f"--also {spec}: expected LABEL=SRC with SRC/nearsort/cli.py")
        others[label] = Path(src).resolve()
    results = [bench_one(b.resolve(), max(1, a.rounds), not a.no_fastdup, others) for b in a.bench]
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
