#!/usr/bin/env python3
"""Backends: torch vs ONNX Runtime bare forward, featurize end to end, and a no-op featurize / run.

    PYTHONPATH=src nice .venv/bin/python bench/backends.py [--n 320] [--rounds 3] [--clip] [--model A,B]

One run, on the same thumbnails (bench/featurize.py's generated set: --n JPEG thumbnails of
/work/shared/bench/originals, or synthetic), alternating and keeping the best of --rounds:

    torch bare      images/s   Model.forward (BN folded, channels_last), batch --batch, random uint8,
                               as many images as end to end
    onnx bare       images/s   the ONNX Runtime session over the same model, same input
    featurize e2e   images/s   the real featurize() with the default backend (auto) on a fresh copy
                               of a THUMBS library made by resize (decode + model + store + catalog)
    targets         e2e >= 0.85 x onnx bare, e2e >= 1.5 x torch bare

for each --model (default efficientnet-lite0 at 224 and at 160, the one auto runs), then the last
model's e2e over the first's torch bare forward (224 on torch: the default before this backend),
then the CLI on that library once it is up to date (subprocesses, best wall of --rounds, peak RSS
of the process itself, whether torch was imported):  featurize THUMBS  and  run SRC --out THUMBS.
Wall times depend on the machine's load: CPU seconds are printed too.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from featurize import make_thumbs  # noqa: E402  (bench/featurize.py)

from nearsort.embed import backends  # noqa: E402
from nearsort.embed.embedder import bare_forward_rate  # noqa: E402
from nearsort.embed.featurize import featurize  # noqa: E402
from nearsort.embed.models import load_model  # noqa: E402

# runs the real CLI, then reports (to the file $NEARSORT_NOOP_REPORT) what it imported and its peak RSS
# (VmHWM: ru_maxrss would count the parent's pages of a vfork'ed child)
WRAPPER = """
import atexit, json, os, resource, sys
def _report():
    try:
        kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["NEARSORT_NOOP_REPORT"], "w") as f:
        json.dump({"torch": "torch" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules, "maxrss_kb": kb}, f)
atexit.register(_report)
sys.argv = ["nearsort"] + sys.argv[1:]
from nearsort.cli import main
main()
"""


def cli_noop(args: list[str], env: dict) -> dict:
    """One CLI call: wall s, CPU s, peak RSS MB, torch imported?"""
    import resource

    with tempfile.NamedTemporaryFile(suffix=".json") as rep:
        env = {**env, "NEARSORT_NOOP_REPORT": rep.name}
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", WRAPPER, *args], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"nearsort {' '.join(args)} failed:\n{p.stderr}")
        r = json.loads(Path(rep.name).read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "rss_mb": r["maxrss_kb"] / 1024, "torch": r["torch"], "ort": r["onnxruntime"]}


def make_library(files: list[Path], work: Path) -> tuple[Path, Path]:
    """SRC (the thumbnails as photos) -> a resized THUMBS without vectors, kept as the pristine copy."""
    from nearsort.ingest.resize import resize

    src = work / "src"
    src.mkdir(parents=True)
    for f in files:
        os.link(f, src / f.name) if f.stat().st_dev == src.stat().st_dev else shutil.copy2(f, src / f.name)
    pristine = work / "pristine"
    resize(src, pristine)
    return src, pristine


def bench(name: str, files: list[Path], src: Path, pristine: Path, work: Path, args) -> dict:
    model = load_model(name, device="cpu", log=lambda m: print("  " + m))
    onnx = backends.select(model, "onnx", files[:backends.CHECK_IMAGES], log=lambda m: print("  " + m))
    torch_be = backends.TorchBackend(model)
    best = {"torch": 0.0, "onnx": 0.0, "e2e": 0.0}
    lib = work / "thumbs"
    for r in range(args.rounds):
        best["torch"] = max(best["torch"], bare_forward_rate(model, args.batch, args.iters, backend=torch_be))
        best["onnx"] = max(best["onnx"], bare_forward_rate(model, args.batch, args.iters, backend=onnx))
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(pristine, lib)
        s = featurize(lib, model=name, device="cpu", batch=args.batch, log=lambda m: None)
        assert s.embedded == len(files) and s.backend == "onnx", s
        best["e2e"] = max(best["e2e"], s.images_per_second)
        print(f"  round {r + 1}: torch bare {best['torch']:6.1f}  onnx bare {best['onnx']:6.1f}  "
              f"featurize e2e {s.images_per_second:6.1f} images/s (best so far)")
    print(f"== {model.name}: best of {args.rounds}, batch {args.batch}, {backends.cpu_threads()} CPU threads")
    print(f"  torch bare forward   {best['torch']:7.1f} images/s")
    print(f"  onnx bare forward    {best['onnx']:7.1f} images/s")
    print(f"  featurize e2e (auto) {best['e2e']:7.1f} images/s  ({len(files)} thumbnails)")
    print(f"  e2e / onnx bare      {best['e2e'] / best['onnx']:7.3f}  (target >= 0.85)")
    print(f"  e2e / torch bare     {best['e2e'] / best['torch']:7.3f}  (target >= 1.5)")
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=320, help="thumbnails (default 320)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nearsort-bench-thumbs"), help="generated thumbnails")
    ap.add_argument("--model", default="efficientnet-lite0,efficientnet-lite0@160",
                    help="comma-separated (default: lite0 at 224, and at 160: what auto runs)")
    ap.add_argument("--clip", action="store_true", help="also clip:ViT-B-32/random (speed only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iters", type=int, default=None,
                    help="batches per bare-forward measurement (default: as many images as end to end, "
                         "so both take as long and see the same machine load)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    files = make_thumbs(args.cache, args.n)
    args.iters = args.iters or max(1, len(files) // args.batch)
    import onnxruntime
    import torch

    print(f"{len(files)} thumbnails in {args.cache}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"onnxruntime {onnxruntime.__version__}, cpus {backends.cpu_threads()}, "
          f"load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="nearsort-bench-backends-") as tmp:
        work = Path(tmp)
        src, pristine = make_library(files, work)
        names = [n.strip() for n in args.model.split(",") if n.strip()]
        got = {name: bench(name, files, src, pristine, work, args)
               for name in names + (["clip:ViT-B-32/random"] if args.clip else [])}
        if len(names) > 1:
            first, last = names[0], names[-1]
            print(f"== {last} featurize e2e / {first} torch bare forward (before ONNX Runtime and the smaller "
                  f"input): {got[last]['e2e'] / got[first]['torch']:.2f}x  (same run)")
        # an up-to-date library (featurize with the default model, analyze): nothing to do must cost nothing
        lib = work / "thumbs"
        shutil.rmtree(lib, ignore_errors=True)
        shutil.copytree(pristine, lib)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cli_noop(["featurize", str(lib)], env)
        cli_noop(["analyze", str(lib)], env)
        print("== nothing to do (CLI subprocess, best wall of rounds; target < 1 s, < 200 MB, no torch)")
        for cmd in (["featurize", str(lib)], ["analyze", str(lib)], ["dupes", str(lib)],
                    ["run", str(src), "--out", str(lib)]):
            runs = [cli_noop(cmd, env) for _ in range(args.rounds)]
            b = min(runs, key=lambda r: r["wall"])
            print(f"  {cmd[0]:<10} {b['wall']:5.2f} s wall  {min(r['cpu'] for r in runs):5.2f} s CPU  "
                  f"{max(r['rss_mb'] for r in runs):6.1f} MB peak RSS  torch imported: "
                  f"{any(r['torch'] for r in runs)}  onnxruntime imported: {any(r['ort'] for r in runs)}")


if __name__ == "__main__":
    main()
