"""Run a :class:`~nearsort.embed.models.Model` over many images, fast and with bounded memory.

Decoding and preprocessing run in threads while the model runs the previous batch on its backend
(``backends.py``: ONNX Runtime on the CPU, else torch); at most ``batch * (prefetch + 1)`` images are
in flight (a stream of 10^7 paths is fine); unreadable files are reported (``on_error``) and skipped.
``embed_files`` yields batches with ``indices`` (positions in the input), L2-normalised float32
``vectors`` and ImageNet ``topk`` (CNNs). docs/design.md, "Embedder".
"""
from __future__ import annotations

import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from nearsort.embed.models import Model, TOPK
from nearsort.textsafe import term

ProgressFn = Callable[[int, "int | None"], None]      # (done, total or None)
ErrorFn = Callable[[int, object, BaseException], None]  # (index, path, exception)


class EmbeddedBatch(NamedTuple):
    indices: list[int]
    vectors: np.ndarray
    topk: "tuple[np.ndarray, np.ndarray] | None"


def _default_on_error(index: int, path, exc: BaseException) -> None:
    print(f"skipped unreadable image {term(path)}: "
          f"{term(f'{type(exc).__name__}: {exc}')}", file=sys.stderr, flush=True)


def default_workers(model: Model) -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    if model.device.type == "cpu":
        return max(1, min(2, n))   # the model already uses every core; decode is a small share
    return max(2, min(8, n))       # accelerators: decode is the bottleneck


def _prepare(model: Model, item):
    try:
        return model.prepare(item), None
    except Exception as e:  # noqa: BLE001 -- any decoder failure means "unreadable"
        return None, e


def embed_files(
    model: Model,
    paths: Iterable,
    batch: int = 32,
    workers: int | None = 2,
    progress: ProgressFn | None = None,
    on_error: ErrorFn | None = None,
    prefetch: int = 2,
    topk: int = TOPK,
    backend=None,
) -> Iterator[EmbeddedBatch]:
    """Embed image files (paths, or anything ``Model.prepare`` takes) in batches (see the module docstring).

    ``backend``: what runs the model (``backends.select``); default ``Model.forward`` (torch).

    ``progress(done, total)`` is called after every batch (``total`` is None for a plain iterator).
    ``on_error(index, path, exc)`` is called for each unreadable file (default: one line on stderr).
    """
    batch = max(1, int(batch))
    forward = (backend or model).forward
    workers = default_workers(model) if not workers else max(1, int(workers))
    on_error = on_error or _default_on_error
    total = len(paths) if hasattr(paths, "__len__") else None  # type: ignore[arg-type]
    it = iter(enumerate(paths))
    window = batch * (max(0, prefetch) + 1)
    done = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nearsort-decode") as pool:
        pending: deque = deque()
        exhausted = False

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and len(pending) < window:
                try:
                    idx, p = next(it)
                except StopIteration:
                    exhausted = True
                    return
                pending.append((idx, p, pool.submit(_prepare, model, p)))

        try:
            while True:
                fill()
                if not pending:
                    break
                idxs: list[int] = []
                arrays: list[np.ndarray] = []
                while pending and len(arrays) < batch:
                    idx, p, fut = pending.popleft()
                    arr, err = fut.result()
                    done += 1
                    if err is not None:
                        on_error(idx, p, err)
                    else:
                        idxs.append(idx)
                        arrays.append(arr)
                    if len(pending) < window - batch:
                        fill()  # keep the workers busy while this batch is collected
                if arrays:
                    vecs, top = forward(np.stack(arrays), topk=topk)
                    if progress:
                        progress(done, total)
                    yield EmbeddedBatch(idxs, vecs, top)
                elif progress:
                    progress(done, total)
        finally:
            for _, _, fut in pending:
                fut.cancel()


def embed_pil(model: Model, images: Sequence, batch: int = 32, topk: int = TOPK):
    """Embed PIL images (or paths) in memory -> (vectors float32 (n, dim), topk or None).
    EXIF orientation is applied (use this for photos from outside the library)."""
    vecs, ids, probs = [], [], []
    for s in range(0, len(images), max(1, batch)):
        arr = np.stack([model.prepare(im, exif=True) for im in images[s:s + batch]])
        v, top = model.forward(arr, topk=topk)
        vecs.append(v)
        if top is not None:
            ids.append(top[0])
            probs.append(top[1])
    if not vecs:
        return np.zeros((0, model.dim), np.float32), None
    return np.concatenate(vecs), ((np.concatenate(ids), np.concatenate(probs)) if ids else None)


def embed_text(model: Model, texts: Sequence[str]) -> np.ndarray:
    """CLIP text tower: texts -> float32 (n, dim), L2-normalised, same space as the image vectors."""
    return model.encode_text(texts)


def bare_forward_rate(model: Model, batch: int = 32, iters: int = 4, warmup: int = 1, backend=None) -> float:
    """Images/s of the model alone on random uint8 input (incl. normalisation), for benchmarks."""
    import time

    forward = (backend or model).forward
    s = model.preprocess.size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(batch, s, s, 3), dtype=np.uint8)
    for _ in range(warmup):
        forward(x)
    t = time.perf_counter()
    for _ in range(iters):
        forward(x)
    return batch * iters / (time.perf_counter() - t)
