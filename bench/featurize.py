#!/usr/bin/env python3
"""Featurize speed: bare model forward rate vs end-to-end files -> vectors.

    PYTHONPATH=src nice .venv/bin/python bench/featurize.py [--dir THUMBS] [--n 320] [--clip]

Without --dir it makes (once, cached in --cache) a folder of --n JPEG thumbnails, longest side
256 px, from ../shared/bench/originals (or $NEARSORT_BENCH_ORIGINALS) when present -- several
crops/flips per photo -- else synthetic images.  Prints, per model:

    bare forward   images/s   (batch --batch, random uint8 input, normalisation included)
    end-to-end     images/s   (embed_files over the folder: decode + preprocess + model)
    ratio          end-to-end / bare   (goal >= 0.85)

The bare rate is measured before and after the end-to-end pass and averaged, because the
machine may be shared.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ingest import SHARED  # noqa: E402  (bench/ingest.py: where ../shared/bench is)
from nearsort.embed.embedder import bare_forward_rate, embed_files  # noqa: E402
from nearsort.embed.models import load_model  # noqa: E402

ORIGINALS = Path(os.environ.get("NEARSORT_BENCH_ORIGINALS", SHARED / "originals"))
EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def make_thumbs(out: Path, n: int, size: int = 256) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    have = sorted(out.glob("*.jpg"))
    if len(have) >= n:
        return have[:n]
    srcs = sorted(p for p in ORIGINALS.glob("*") if p.suffix.lower() in EXTS) if ORIGINALS.is_dir() else []
    rng = np.random.default_rng(0)
    made: list[Path] = []
    variants = [None, "flip", "crop_tl", "crop_br", "rot"]
    k = 0
    while len(made) < n:
        if srcs:
            src = srcs[k % len(srcs)]
            var = variants[(k // len(srcs)) % len(variants)]
            try:
                with Image.open(src) as im:
                    im.draft("RGB", (size * 2, size * 2))
                    im = ImageOps.exif_transpose(im).convert("RGB")
                    w, h = im.size
                    if var == "flip":
                        im = ImageOps.mirror(im)
                    elif var == "crop_tl":
                        im = im.crop((0, 0, max(1, int(w * 0.8)), max(1, int(h * 0.8))))
                    elif var == "crop_br":
                        im = im.crop((int(w * 0.2), int(h * 0.2), w, h))
                    elif var == "rot":
                        im = im.rotate(90, expand=True)
                    im.thumbnail((size, size), Image.LANCZOS)
                    p = out / f"{len(made):05d}_{src.stem[:40]}_{var or 'orig'}.jpg"
                    im.save(p, quality=85)
                    made.append(p)
            except Exception as e:  # unreadable original: skip it
                print(f"  (skip {src.name}: {e})", file=sys.stderr)
            k += 1
            if k > n * 3 + 10 * len(srcs):
                srcs = []
        else:
            a = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            im = Image.fromarray(a).resize((size, int(size * rng.uniform(0.6, 1.0))), Image.BICUBIC)
            p = out / f"{len(made):05d}_synthetic.jpg"
            im.save(p, quality=85)
            made.append(p)
    return made


def bench_model(name: str, files: list[Path], args, label: str = "") -> dict:
    t0 = time.perf_counter()
    model = load_model(name, device=args.device, log=lambda m: print("  " + m))
    print(f"\n== {model.name}{label}  dim={model.dim} device={model.device} load={time.perf_counter() - t0:.1f}s")
    bare1 = bare_forward_rate(model, batch=args.batch, iters=args.iters)
    errors = []
    t = time.perf_counter()
    n = 0
    for b in embed_files(model, files, batch=args.batch, workers=args.workers,
                         on_error=lambda i, p, e: errors.append((p, e))):
        n += len(b.indices)
    e2e = n / (time.perf_counter() - t)
    bare2 = bare_forward_rate(model, batch=args.batch, iters=args.iters)
    bare = (bare1 + bare2) / 2
    print(f"  bare forward : {bare:7.2f} images/s  (batch {args.batch}, random input; runs {bare1:.2f} / {bare2:.2f})")
    print(f"  end-to-end   : {e2e:7.2f} images/s  ({n} files -> vectors, workers={args.workers}, errors={len(errors)})")
    print(f"  ratio        : {e2e / bare:7.3f}  (goal >= 0.85)")
    return {"model": model.name, "bare": bare, "e2e": e2e, "ratio": e2e / bare}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, help="folder of JPEG thumbnails to use (default: generate)")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/nearsort-bench-thumbs"), help="where generated thumbnails go")
    ap.add_argument("--n", type=int, default=320, help="number of thumbnails (default 320)")
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--clip", action="store_true", help="also bench clip:ViT-B-32 with random weights (speed only)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=4, help="batches per bare-forward measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.dir:
        files = sorted(p for p in args.dir.rglob("*") if p.suffix.lower() in EXTS and ".nearsort" not in p.parts)[: args.n]
        src = f"{args.dir}"
    else:
        files = make_thumbs(args.cache, args.n)
        src = f"{args.cache} (generated from {ORIGINALS if ORIGINALS.is_dir() else 'synthetic images'})"
    sizes = [Image.open(files[i]).size for i in range(min(5, len(files)))]
    print(f"thumbnails: {len(files)} files in {src}; e.g. sizes {sizes}")
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, cpus={os.cpu_count()}")

    res = [bench_model(args.model, files, args)]
    if args.clip:
        res.append(bench_model("clip:ViT-B-32/random", files, args, label="  (random weights — speed only)"))
    print("\nsummary:")
    for r in res:
        print(f"  {r['model']:<28} bare {r['bare']:7.2f}/s  end-to-end {r['e2e']:7.2f}/s  ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
