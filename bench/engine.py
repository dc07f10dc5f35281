#!/usr/bin/env python3
"""The ray engine's overhead on one machine: resize and featurize of the same input, run as a user
runs them (the CLI in a subprocess), with ``--engine local`` and with ``--engine ray`` on a local
2-CPU Ray head started here (nearsort.engine.local_head), alternating, best of ``--rounds``.

    nice .venv/bin/python bench/engine.py [--src ../shared/bench/originals] [--rounds 3] [--batch 32]

Prints, per stage: wall seconds of the command (best, and every run), the stage's own ``seconds``
(--json; on Ray it includes connecting and starting the workers or actors), and ray / local. Each
resize writes a new THUMBS; each featurize embeds a fresh copy of one resized library.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import SHARED  # noqa: E402  (bench/ingest.py: where ../shared/bench is)
from nearsort.engine import local_head  # noqa: E402


def cli(env: dict, *args) -> tuple[float, dict]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "nearsort.cli", *map(str, args), "--json"], env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{p.stderr[-3000:]}")
    return wall, json.loads(p.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=SHARED / "originals")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray head")
    args = ap.parse_args()
    if not args.src.is_dir():
        sys.exit(f"no {args.src}: give --src FOLDER of photos")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src") + os.pathsep
           + os.environ.get("PYTHONPATH", "")}
    work = Path(tempfile.mkdtemp(prefix="nsengine"))
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        with local_head(args.cpus, env) as (address, ray_env):
            engines = {"local": [], "ray": ["--engine", "ray", "--address", address]}
            base = None
            for r in range(args.rounds):
                for name, flags in engines.items():  # alternating: local, ray, local, ray ...
                    out = work / f"resize-{name}-{r}"
                    wall, s = cli(ray_env, "resize", args.src, "--out", out, *flags)
                    times.setdefault(("resize", name), []).append((wall, s["seconds"]))
                    n_files = s["processed"]
                    if base is None:
                        base = out
            shutil.rmtree(base / ".nearsort" / "vectors", ignore_errors=True)
            for r in range(args.rounds):
                for name, flags in engines.items():
                    out = work / f"featurize-{name}-{r}"
                    shutil.copytree(base, out)
                    wall, s = cli(ray_env, "featurize", out, "--batch", args.batch, *flags)
                    times.setdefault(("featurize", name), []).append((wall, s["seconds"]))
                    n_thumbs = s["embedded"]
                    shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.src}: {n_files} photos, {n_thumbs} thumbnails; local Ray head with {args.cpus} CPUs; "
          f"best of {args.rounds}, alternating; load average {os.getloadavg()[0]:.1f}")
    print(f"{'stage':10} {'engine':6} {'wall best s':>11} {'stage s':>8}  every run (wall)")
    for stage in ("resize", "featurize"):
        best = {}
        for name in ("local", "ray"):
            runs = times[(stage, name)]
            wall, own = min(runs)
            best[name] = wall
            print(f"{stage:10} {name:6} {wall:11.2f} {own:8.2f}  {' '.join(f'{w:.2f}' for w, _ in runs)}")
        print(f"{stage:10} ray / local: {best['ray'] / best['local']:.2f}x (+{best['ray'] - best['local']:.2f} s)")


if __name__ == "__main__":
    main()
