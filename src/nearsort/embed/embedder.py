"""Run a :class:`~nearsort.embed.models.Model` over many images, fast and with bounded memory.

Decoding and preprocessing run in threads while the model runs the previous batch on its backend
(``backends.py``: ONNX Runtime on the CPU, else torch); at most ``batch * (prefetch + 1)`` images are
in flight (a stream of 10^7 paths is fine); unreadable files are reported (``on_error``) and skipped.
``embed_files`` yields batches with ``indices`` (positions in the input), L2-normalised float32
``vectors`` and ImageNet ``topk`` (CNNs). docs/design.md, "Embedder".

On the ``ray`` engine (:mod:`nearsort.engine`) the same ``embed_files`` runs inside Ray actors
(:class:`RemoteEmbedder`, each loading the model once), fed the thumbnails' bytes by
:class:`RayEmbedders` in this process, which yields the same ``EmbeddedBatch`` stream.
"""
from __future__ import annotations

import io
import os
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from nearsort.embed.models import Model, TOPK
from nearsort.errors import BadArgument, EngineError
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


class _Bytes(io.BytesIO):
    """A thumbnail's bytes, named by its path in a decoder's error message (as a local run names it)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self._name = name

    def __repr__(self) -> str:
        return repr(self._name)


class ModelCard(NamedTuple):
    """What featurize records of a model loaded elsewhere (in Ray actors): the fields of ``Model`` it reads."""

    name: str
    kind: str
    dim: int
    info: dict
    has_labels: bool
    device: str


class RemoteEmbedder:
    """A Ray actor's model: loaded once, on the backend featurize would pick here (``backends.select``,
    its ONNX check on ``check``: (name, bytes) of real thumbnails); ``embed`` turns thumbnails' bytes
    into vectors with :func:`embed_files`, in the batches a local run makes."""

    def __init__(self, model: str, weights, device: str, backend: str, check: list, batch: int):
        from nearsort.embed import backends
        from nearsort.embed.models import load_model

        self.notes: list[str] = []
        self.batch = batch
        self.failure: Exception | None = None
        try:
            self.model = load_model(model, weights=weights, device=device, log=self.notes.append)
            self.runner = backends.select(self.model, backend, [_Bytes(d, n) for n, d in check],
                                          log=self.notes.append)
        except Exception as e:  # noqa: BLE001 - raised again by card(), as one line on the driver
            self.failure = e

    def card(self) -> tuple[ModelCard, str, list[str]]:
        if self.failure is not None:
            raise self.failure
        m = self.model
        return ModelCard(m.name, m.kind, m.dim, m.info, m.has_labels, str(m.device)), self.runner.name, self.notes

    def embed(self, items: list[tuple[int, str, bytes]]) -> tuple[list[EmbeddedBatch], list[tuple[int, Exception]]]:
        """(position, name, bytes) of thumbnails -> their batches (``indices``: the positions) and the
        (position, exception) of the unreadable ones."""
        errors: list[tuple[int, Exception]] = []
        out = [EmbeddedBatch([items[i][0] for i in b.indices], b.vectors, b.topk)
               for b in embed_files(self.model, [_Bytes(d, n) for _, n, d in items], batch=self.batch,
                                    on_error=lambda i, _p, e: errors.append((items[i][0], e)), backend=self.runner)]
        return out, errors


class RayEmbedders:
    """featurize's model on a Ray cluster: :class:`RemoteEmbedder` actors (``engine.start_actors``: one
    per GPU if the cluster has GPUs and ``device`` allows, else one per node), ``card`` and ``backend``
    say what they loaded; :meth:`embed` is ``embed_files`` over them. Use as a context manager (the
    actors are stopped on leaving)."""

    def __init__(self, model: str, weights, device: str, backend: str, check: list, batch: int,
                 address: str | None = None, log: Callable[[str], None] | None = None):
        from nearsort import engine

        if device == "mps":
            raise BadArgument("--engine ray runs the model on cpu or cuda (--device cpu|cuda|auto)")
        engine.connect(address)
        gpu = device.startswith("cuda") or (device == "auto" and engine.gpus() > 0)
        # a GPU actor sees its one GPU as cuda:0 (Ray sets CUDA_VISIBLE_DEVICES)
        self.actors = engine.start_actors(RemoteEmbedder, (model, None if weights is None else os.fspath(weights),
                                                           "cuda" if gpu else "cpu", backend, check, batch), gpu=gpu)
        self.batch = batch
        try:
            answers = engine.get([a.card.remote() for a in self.actors])
        except BaseException:
            engine.stop_actors(self.actors)
            raise
        loaded = sorted({(c.name, c.dim) for c, _, _ in answers})
        if len(loaded) > 1:
            engine.stop_actors(self.actors)
            raise EngineError(f"the Ray workers loaded different models for {model!r} "
                              f"({', '.join(n for n, _ in loaded)}): name one with --model, and give every "
                              "machine its weights")
        for note in dict.fromkeys(n for _, _, notes in answers for n in notes):
            (log or (lambda m: print(m, file=sys.stderr, flush=True)))(note)
        c = answers[0][0]
        n = len(self.actors)
        self.card = c._replace(device=f"{c.device} ({n} Ray actor{'s' if n != 1 else ''})")
        self.backend = "+".join(sorted({b for _, b, _ in answers}))

    def __enter__(self) -> "RayEmbedders":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        from nearsort import engine

        engine.stop_actors(self.actors)

    def embed(self, paths: Iterable, progress: ProgressFn | None = None, on_error: ErrorFn | None = None,
              chunk: int = 4) -> Iterator[EmbeddedBatch]:
        """``embed_files`` on the actors: this process reads each thumbnail (THUMBS need not be shared)
        and sends ``chunk`` batches' worth to an actor at a time, two per actor in flight."""
        from nearsort.engine import RayWorkers

        on_error = on_error or _default_on_error
        it = iter(enumerate(paths))
        size = self.batch * max(1, chunk)
        done = 0
        exhausted = False
        with RayWorkers(actors=self.actors, method="embed", depth=2) as pool:
            while True:
                while not exhausted and pool.room():
                    items = []
                    for pos, path in it:
                        try:
                            items.append((pos, os.fspath(path), Path(path).read_bytes()))
                        except OSError as e:
                            on_error(pos, path, e)
                            done += 1
                        if len(items) >= size:
                            break
                    else:
                        exhausted = True
                    if items:
                        pool.submit(items)
                if not pool.busy():
                    return
                for items, (batches, errors) in pool.results(0.5):
                    names = {pos: name for pos, name, _ in items}
                    for pos, exc in errors:
                        on_error(pos, names[pos], exc)
                    done += len(items)
                    yield from batches
                    if progress:
                        progress(done, None)


def embed_pil(model: Model, images: Sequence, batch: int = 32, topk: int = TOPK, backend=None):
    """Embed PIL images (or paths) in memory -> (vectors float32 (n, dim), topk or None).
    EXIF orientation is applied (use this for photos from outside the library).
    ``backend``: what runs the model (``backends.load``); default ``Model.forward`` (torch)."""
    forward = (backend or model).forward
    vecs, ids, probs = [], [], []
    for s in range(0, len(images), max(1, batch)):
        arr = np.stack([model.prepare(im, exif=True) for im in images[s:s + batch]])
        v, top = forward(arr, topk=topk)
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
