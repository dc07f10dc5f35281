#!/usr/bin/env python3
"""Accelerator featurize speed: bare forward vs end to end, per model, precision, batch and decode workers.

    PYTHONPATH=src .venv/bin/python bench/gpu.py [--device auto] [--n 4096] [--batch 64,128,256]
        [--workers 8,16] [--models efficientnet-lite0,clip:ViT-B-32/random] [--rounds 2] [--json FILE]

On CUDA the torch backend runs (``auto`` picks it off the CPU): uint8 NHWC batches are copied
through pinned memory (``non_blocking``) and normalised on the device, fp16 autocast unless
``NEARSORT_FP32=1`` (both are measured). Per (model, precision, batch):

    bare   images/s  Model.forward on random uint8 input already in host memory (H2D copy,
                     normalisation, model, D2H of the vectors included), best of --rounds
    e2e    images/s  embed_files over --n JPEG thumbnails (decode + preprocess in --workers
                     threads, prefetch 2 batches), per worker count; ratio e2e / bare

plus the host->device copy of one batch: pageable vs pinned-per-batch (what Model.forward does)
vs a pre-pinned buffer, to see whether pinning is worth it. Thumbnails: --dir, else generated
once into --cache by bench/featurize.py's make_thumbs (real photos when /work/shared/bench/originals
exists, else synthetic -- those decode faster than real thumbnails; say so when quoting e2e).
Also runs on the CPU (--device cpu) with tiny counts, to check the script itself.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from featurize import EXTS, make_thumbs  # noqa: E402  (bench/featurize.py)

from nearsort.embed.embedder import bare_forward_rate, default_workers, embed_files  # noqa: E402
from nearsort.embed.models import load_model  # noqa: E402


def ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def e2e_rate(model, files, batch: int, workers: int) -> float:
    t = time.perf_counter()
    n = sum(len(b.indices) for b in embed_files(model, files, batch=batch, workers=workers,
                                                on_error=lambda *a: None))
    return n / (time.perf_counter() - t)


def h2d(model, batch: int, iters: int = 10) -> dict:
    """Host->device copy of one uint8 batch, GB/s: pageable, pinned per batch, pre-pinned."""
    import numpy as np
    import torch

    s = model.preprocess.size
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, s, s, 3), dtype=np.uint8))
    pinned = x.pin_memory()
    out = {}
    for name, fn in (("pageable", lambda: x.to(model.device)),
                     ("pin_per_batch", lambda: x.pin_memory().to(model.device, non_blocking=True)),
                     ("prepinned", lambda: pinned.to(model.device, non_blocking=True))):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        out[name] = round(x.numel() * iters / (time.perf_counter() - t) / 1e9, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="efficientnet-lite0,clip:ViT-B-32/random")
    ap.add_argument("--n", type=int, default=4096, help="thumbnails for end to end")
    ap.add_argument("--dir", type=Path, help="folder of JPEG thumbnails (default: generate into --cache)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nearsort-bench-thumbs"))
    ap.add_argument("--batch", type=ints, default=ints("64,128,256"))
    ap.add_argument("--workers", type=ints, default=None, help="decode threads (default: the embedder's, and 2x)")
    ap.add_argument("--iters", type=int, default=8, help="batches per bare-forward measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()

    import torch

    if args.dir:
        files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in EXTS)[: args.n]
    else:
        files = make_thumbs(args.cache, args.n)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, cuda {torch.version.cuda}, gpu {gpu}, cpus {os.cpu_count()}, "
          f"{len(files)} thumbnails")
    results = []
    for name in [m for m in args.models.split(",") if m]:
        model = load_model(name, device=args.device, log=lambda m: print("  " + m))
        cuda = model.device.type == "cuda"
        workers = args.workers or sorted({default_workers(model), 2 * default_workers(model)})
        print(f"\n== {model.name} on {model.device} (dim {model.dim}); decode workers {workers}")
        if cuda:
            print(f"  H2D copy of a batch of {max(args.batch)}, GB/s: {h2d(model, max(args.batch))}")
        for precision in (["fp16", "fp32"] if cuda else ["fp32"]):
            os.environ["NEARSORT_FP32"] = "1" if precision == "fp32" else "0"
            for batch in args.batch:
                bare = max(bare_forward_rate(model, batch=batch, iters=args.iters) for _ in range(args.rounds))
                row = {"model": model.name, "device": str(model.device), "precision": precision, "batch": batch,
                       "bare": round(bare, 1)}
                for w in workers:
                    e2e = max(e2e_rate(model, files, batch, w) for _ in range(args.rounds))
                    row[f"e2e_w{w}"] = round(e2e, 1)
                    print(f"  {precision} batch {batch:4d}  bare {bare:9.1f}/s  workers {w:3d}  e2e {e2e:9.1f}/s  "
                          f"ratio {e2e / bare:5.2f}")
                results.append(row)
        os.environ.pop("NEARSORT_FP32", None)
        del model
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
