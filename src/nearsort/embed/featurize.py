"""``featurize``: an embedding of every thumbnail (the queries over them: :mod:`nearsort.embed.search`).

A vector is durable in the model's store and in ``rows.bin`` before the catalog row that commits
it, so a crash never duplicates or orphans a vector (the next run continues) and a rebuilt catalog
gets every vector back; vectors belong to ``thumbs.id`` (renames and moves keep them); thumbnails
are streamed in pages (bounded memory). Protocol: docs/design.md, "featurize".
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from nearsort import engine as engines
from nearsort.errors import BadArgument, Interrupted
from nearsort.stage import Progress, Result
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog, CatalogError, DiskFull, Thumbs, is_disk_full, open_catalog, state_dir
from nearsort.vectors.rows import CARD_FILE, CARD_FORMAT, NAME_BYTES, ROWS_FILE, row_dtype

PAGE = 4096  # thumbnail ids fetched from the catalog at a time
ERROR_SAMPLES = 20
PAUSE_HOOK = "NEARSORT_TEST_FEATURIZE_PAUSE"  # tests only: seconds to wait after each committed batch, so a
#                                              Ctrl-C sent from another process lands mid-run on any machine


@dataclass
class FeaturizeResult(Result):
    """What ``featurize`` did (``status``: done | interrupted | failed)."""

    model: str                 # the resolved model name (``auto`` says which it picked)
    requested: str
    kind: str | None
    dim: int
    device: str | None         # None: nothing to embed, no model was loaded
    random_weights: bool
    thumbs: int                # thumbnails in the catalog
    already: int               # ... that had a vector for the model
    todo: int
    backend: str | None = None  # onnx | torch (None: no model was loaded)
    embedded: int = 0
    errors: int = 0            # unreadable thumbnails
    error_samples: list = field(default_factory=list)
    relocated: int = 0         # thumbnails found in the folders they were moved to
    missing: int = 0           # thumbnails with no file below THUMBS
    seconds: float = 0.0
    images_per_second: float = 0.0
    status: str = "running"
    index: dict | None = None  # the FAISS index parameters (when done)


# ------------------------------------------------------------------ models table


def _register_model(cat: Catalog, model) -> int:
    row = queries.model(cat, model.name)
    if row is not None:
        if row.dim != model.dim:
            raise CatalogError(
                f"the catalog has model {model.name!r} with dimension {row.dim}, but it now gives "
                f"{model.dim}; the weights changed -- featurize under another --model name"
            )
        return row.id
    with cat.tx():
        return queries.add_model(cat, model.name, model.dim, _model_info(model))


def _model_info(model, index_params: dict | None = None) -> dict:
    info = {k: v for k, v in model.info.items() if k != "auto"}
    info["kind"] = model.kind
    info["name"] = model.name
    if index_params is not None:
        info["index"] = index_params
    return info


def _update_info(cat: Catalog, model_id: int, extra: dict) -> None:
    row = queries.model(cat, id=model_id)
    info = dict(row.info) if row else {}
    info.update(extra)
    with cat.tx():
        queries.set_model_info(cat, model_id, info)


def _model_row(cat: Catalog, model: str | None, *, prefer_text: bool = False):
    """(id, name, dim, info dict) of the named model, else the newest one with embeddings
    (for text queries a CLIP model with real weights is preferred)."""
    row = queries.find_model(cat, model, prefer_text=prefer_text)
    if row is None:
        raise CatalogError(f"no embeddings yet: run `nearsort featurize {cat.root}` first")
    return row.id, row.name, row.dim, row.info


def _load_for(name: str, info: dict, device: str, log=None):
    from nearsort.embed.models import load_model

    w = info.get("weights_file")
    return load_model(name, weights=w if w and os.path.isfile(w) else None, device=device,
                      log=log or (lambda s: None))


def _auto_keeps(cat: Catalog, model: str, weights, log) -> str:
    """``auto`` in a library whose newest vectors are efficientnet-lite0's at 224 (what ``auto`` chose
    before it ran lite0 at ``AUTO_CNN_SIZE``) goes on with that model: nothing is embedded twice and
    dupes / analyze keep one model's vectors. Any other request is returned as it is."""
    from nearsort.embed.models import AUTO_CNN_SIZE, DEFAULT_CNN, _stderr, find_local_clip, lite0_name

    if (model or "auto").strip().lower() != "auto" or weights is not None:
        return model
    if queries.model(cat, lite0_name(AUTO_CNN_SIZE)) or find_local_clip() is not None:  # (kept: no import)
        return model
    newest = queries.find_model(cat)
    if newest is None or newest.name != DEFAULT_CNN:
        return model
    (log or _stderr)(f"model auto -> {DEFAULT_CNN} (this library's vectors are of it)")
    return DEFAULT_CNN


# ------------------------------------------------------------------ what each vector row embeds (rebuild)

def _row_keys(cat: Catalog, tids: list[int]) -> dict[int, tuple[str, str | None]]:
    """thumb id -> (name, content_hash of its first original): what rows.bin records of a thumbnail."""
    return queries.row_keys(cat, tids)


class _RowLog:
    """``rows.bin``: record i says which thumbnail vector row i embeds, by what a rebuild keeps
    (thumb ids it does not): the sha256 of one of its originals -- a thumbnail shows the picture of
    each of its originals, whatever its name is after a rebuild -- and its name (used alone only
    when it had no original); with its top-k labels (label -1: none).

    Written (fdatasync) after the vectors and before the catalog commit. On open it is made exactly
    as long as the rows the catalog has committed: records past them (a crash before the commit)
    are cut, missing ones (a store made before rows.bin existed) are filled in from the catalog."""

    def __init__(self, folder: Path, n: int, cat: Catalog, model_id: int):
        self.dtype = row_dtype()
        self.rec = self.dtype.itemsize
        self.path = folder / ROWS_FILE
        self.fh = open(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), "r+b", buffering=0)
        have = os.fstat(self.fh.fileno()).st_size // self.rec
        if have * self.rec != os.fstat(self.fh.fileno()).st_size or have > n:
            have = min(have, n)
            self.fh.truncate(have * self.rec)
        for start in range(have, n, PAGE):
            self._backfill(cat, model_id, start, min(n, start + PAGE))
        os.fsync(self.fh.fileno())

    def _records(self, keys: list[tuple[str, str | None]], topk) -> np.ndarray:
        out = np.zeros(len(keys), self.dtype)
        out["label"] = -1
        out["name"] = [nm.encode("ascii") if len(nm) <= NAME_BYTES else b"" for nm, _ in keys]
        for i, (_, h) in enumerate(keys):
            if h:
                out["original"][i] = np.frombuffer(bytes.fromhex(h), np.uint8)
        if topk is not None:
            ids, probs = (np.asarray(a) for a in topk)
            k = min(ids.shape[1], out["label"].shape[1])
            out["label"][:, :k] = ids[:, :k]
            out["prob"][:, :k] = probs[:, :k]
        return out

    def _put(self, start: int, recs: np.ndarray) -> None:
        self.fh.seek(start * self.rec)
        view = memoryview(recs.tobytes())
        while view:
            view = view[self.fh.write(view):]

    def _backfill(self, cat: Catalog, model_id: int, start: int, stop: int) -> None:
        tids: dict[int, int] = {}
        labels: dict[int, list[tuple[int, float]]] = {}
        for row, tid, label, prob in queries.embeddings_with_labels(cat, model_id, start, stop):
            tids[row - start] = tid
            if label is not None:
                labels.setdefault(row - start, []).append((int(label), float(prob)))
        keys = _row_keys(cat, sorted(set(tids.values())))
        recs = self._records([keys.get(tids.get(i), ("", None)) for i in range(stop - start)], None)
        for i, lp in labels.items():
            lp = lp[: recs["label"].shape[1]]
            recs["label"][i, : len(lp)] = [l for l, _ in lp]
            recs["prob"][i, : len(lp)] = [p for _, p in lp]
        self._put(start, recs)

    def write(self, rows: np.ndarray, keys: list[tuple[str, str | None]], topk=None) -> None:
        """Records for ``rows`` (consecutive, as ``VectorIndex.append`` returns them); durable on return."""
        if len(rows):
            self._put(int(rows[0]), self._records(keys, topk))
            (getattr(os, "fdatasync", None) or os.fsync)(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _save_card(cat: Catalog, model_id: int, folder: Path) -> None:
    """Keep the model's catalog row beside its vectors (atomic), for ``store.sync.reattach_vectors``."""
    from nearsort.vectors.store import _atomic_write_text

    m = queries.model(cat, id=model_id)
    card = {"format": CARD_FORMAT, "version": 1, "name": m.name, "dim": m.dim, "info": m.info}
    _atomic_write_text(folder / CARD_FILE, json.dumps(card, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------ featurize


def _check_images(cat: Catalog, model_id: int, n: int = 32) -> list[Path]:
    """The first thumbnails to embed (that exist): real images for the backend's first check."""
    return [p for p in (cat.thumb_abspath(rel) for _, rel in queries.unembedded_page(cat, model_id, -1, n))
            if p.is_file()]


def featurize(
    thumbs: Thumbs,
    model: str = "auto",
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    batch: int = 32,
    progress: Progress | None = None,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    backend: str = "auto",
    engine: str = "local",
    address: str | None = None,
) -> FeaturizeResult:
    """Embed every thumbnail of THUMBS (a path or an open Catalog) that has no vector for
    ``model`` yet (docs/design.md, "embed"). ``progress("featurize", done, todo)``; ``log(line)``
    hears what model loading says.

    ``backend``: ``auto`` (ONNX Runtime on the CPU, else torch), ``onnx`` or ``torch`` (backends.py).
    When the model's name is known without loading it (``models.known_name``) and every thumbnail
    has a vector for it, nothing is loaded: no torch, no model (``device`` and ``backend`` None).
    Returns a :class:`FeaturizeResult` (``model`` is the resolved name -- ``auto`` says which it
    picked). Raises :class:`~nearsort.errors.Interrupted` on Ctrl-C, after keeping everything
    committed so far.

    ``engine``: ``local`` (the model here) or ``ray`` (the model in Ray actors on the cluster at
    ``address``, on its GPUs if it has any, fed the thumbnails by this process, which writes every
    vector as a local run does): see :mod:`nearsort.engine`.
    """
    from nearsort.embed.backends import BACKENDS

    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise BadArgument("--device must be auto, cpu, cuda or mps")
    if batch < 1:
        raise BadArgument("--batch must be >= 1")
    engine = engines.check(engine, address)
    backend = (backend or "auto").lower()
    if backend not in BACKENDS:
        raise BadArgument(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
    if backend == "onnx" and device == "auto":
        device = "cpu"  # ONNX Runtime runs on the CPU here
    t0 = time.monotonic()
    with open_catalog(thumbs, write=True) as cat:  # fails fast (no catalog / locked) before loading a model
        return _featurize(cat, t0, model, weights, device, batch, progress, workers, log, backend, engine, address)


def _featurize(cat: Catalog, t0: float, model, weights, device, batch, progress, workers, log,
               backend, engine="local", address=None) -> FeaturizeResult:
    from nearsort.embed.embedder import embed_files
    from nearsort.embed.models import known_name
    from nearsort.vectors.index import VectorIndex

    root = cat.root
    vi = rowlog = remote = None
    try:
        m = None
        requested, model = model, _auto_keeps(cat, model, weights, log)
        qname = known_name(model, weights)
        known = queries.model(cat, qname) if qname else None
        runner = None
        if known is None or queries.count_unembedded(cat, known.id) > 0:
            from nearsort.embed import backends

            if engine == "ray":  # the model is loaded in the actors: this process gets its card
                from nearsort.embed.embedder import RayEmbedders

                # the first thumbnails to embed (all are, for a model the catalog does not know) for the
                # actors' ONNX check, as their bytes: THUMBS need not be shared with the workers
                check = [(os.fspath(p), p.read_bytes()) for p in _check_images(cat, known.id if known else -1, 16)]
                remote = RayEmbedders(model, weights, device, backend, check, batch, address, log)
                m = remote.card
            elif (got := backends.cached(model, weights, device, backend, log=log)) is not None:
                m, runner = got  # a graph checked before: ONNX Runtime, no torch
            else:
                from nearsort.embed.models import load_model

                m = load_model(model, weights=weights, device=device, log=log)
            model_id, name, dim = _register_model(cat, m), m.name, m.dim
            info = _model_info(m)
        else:  # nothing to embed: no model is loaded
            model_id, name, dim, info = known.id, known.name, known.dim, known.info
        vi = VectorIndex.open(state_dir(root), name, dim, valid_rows=queries.valid_rows(cat, model_id))
        rowlog = _RowLog(vi.folder, len(vi), cat, model_id)
        _save_card(cat, model_id, vi.folder)
        total_thumbs = queries.count_thumbs(cat)
        todo = queries.count_unembedded(cat, model_id)
        summary = FeaturizeResult(
            model=name, requested=requested, kind=info.get("kind"), dim=dim, device=str(m.device) if m else None,
            random_weights=bool(info.get("random_weights")), thumbs=total_thumbs, already=total_thumbs - todo,
            todo=todo)
        run_id = queries.start_run(cat, "featurize")
        ids_by_pos: dict[int, int] = {}
        has_labels = m is not None and m.has_labels
        located = False  # sync.reconcile ran (at most once, on the first thumbnail not at its relpath)

        def todo_paths():
            nonlocal located
            last, pos = -1, 0
            while True:
                page = queries.unembedded_page(cat, model_id, last, PAGE)
                if not page:
                    return
                for tid, rel in page:
                    path = cat.thumb_abspath(rel)
                    if not path.exists():
                        if not located:
                            # the user moved thumbnails into their own folders: find every one where
                            # it is now (relpaths updated), then re-read this page
                            located = True
                            summary.relocated = sync.reconcile(cat)["moved"]
                            break
                        summary.missing += 1  # deleted: `nearsort resize` remakes it
                        last = tid
                        continue
                    last = tid
                    ids_by_pos[pos] = tid
                    pos += 1
                    yield path

        def on_error(pos, path, exc):
            ids_by_pos.pop(pos, None)
            summary.errors += 1
            if len(summary.error_samples) < ERROR_SAMPLES:
                summary.error_samples.append({"path": os.fsdecode(path), "error": f"{type(exc).__name__}: {exc}"})

        done = 0

        def on_progress(d, _t):
            nonlocal done
            done = d
            if progress:
                progress("featurize", d, todo)

        status = "done"
        t_run = time.monotonic()
        pause = float(os.environ.get(PAUSE_HOOK) or 0)
        try:
            batches: Iterable = ()
            if remote is not None and todo:
                summary.backend = remote.backend
                batches = remote.embed(todo_paths(), progress=on_progress, on_error=on_error)
            elif m is not None and todo:
                if runner is None:
                    runner = backends.select(m, backend, _check_images(cat, model_id), log=log)
                    backends.remember(model, weights, m, runner)
                summary.backend = runner.name
                batches = embed_files(m, todo_paths(), batch=batch, workers=workers, progress=on_progress,
                                      on_error=on_error, backend=runner)
            t_run = time.monotonic()  # images/s: embedding only (not loading, exporting, checking)
            for b in batches:
                tids = [ids_by_pos.pop(p) for p in b.indices]
                rows = vi.append(b.vectors)  # durable before the catalog references it
                keys = _row_keys(cat, tids)
                rowlog.write(rows, [keys[t] for t in tids], b.topk if has_labels else None)  # durable too
                with cat.tx():
                    queries.add_embeddings(cat, model_id, zip(tids, rows))
                    if has_labels and b.topk is not None:
                        ids, probs = b.topk
                        queries.replace_labels(cat, model_id, tids, [
                            (t, l, p) for t, li, pi in zip(tids, ids, probs) for l, p in zip(li, pi)])
                summary.embedded += len(tids)
                if pause:
                    time.sleep(pause)
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException as e:
            summary.status = "failed"
            try:
                queries.finish_run(cat, run_id, "failed", json.dumps(summary.to_dict()))
            except sqlite3.Error:
                pass  # a full disk or a damaged catalog: the first error is the one to report
            if is_disk_full(e, root):
                raise DiskFull(e, state_dir(root), kept=f"the {summary.embedded} thumbnails embedded before it "
                                                       "were kept") from e
            raise
        secs = time.monotonic() - t_run
        if status == "done":
            params = vi.save()
            _update_info(cat, model_id, _model_info(m, params) if m is not None else {"index": params})
            _save_card(cat, model_id, vi.folder)
            summary.index = params
        summary.status = status
        summary.seconds = round(time.monotonic() - t0, 3)
        summary.images_per_second = round(summary.embedded / secs, 2) if secs > 0 else 0.0
        queries.finish_run(cat, run_id, status, json.dumps(summary.to_dict()))
    finally:
        if remote is not None:
            remote.close()  # the actors end
        if rowlog is not None:
            rowlog.close()
        if vi is not None:
            vi.close()
    if status == "interrupted":
        raise Interrupted(summary)
    return summary
