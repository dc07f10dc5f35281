"""``featurize`` / ``search`` / ``similar``: embeddings of every thumbnail, and queries over them.

A vector is durable in the model's store and in ``rows.bin`` before the catalog row that commits
it, so a crash never duplicates or orphans a vector (the next run continues) and a rebuilt catalog
gets every vector back; vectors belong to ``thumbs.id`` (renames and moves keep them); thumbnails
are streamed in pages (bounded memory). Protocol and search fallbacks: docs/design.md, "embed".
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

import numpy as np

from nearsort.errors import Interrupted
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog, CatalogError, DiskFull, is_disk_full, state_dir
from nearsort.vectors.rows import CARD_FILE, CARD_FORMAT, NAME_BYTES, ROWS_FILE, row_dtype

PAGE = 4096  # thumbnail ids fetched from the catalog at a time
ERROR_SAMPLES = 20

ProgressFn = Callable[..., None]  # progress(done, total)


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


def featurize(
    root: str | os.PathLike,
    model: str = "auto",
    weights: str | os.PathLike | None = None,
    device: str = "auto",
    batch: int = 32,
    progress: ProgressFn | None = None,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Embed every thumbnail of THUMBS=``root`` that has no vector for ``model`` yet (docs/design.md, "embed").

    Returns a summary dict (``model`` is the resolved name -- ``auto`` says which it picked).
    Raises :class:`Interrupted` on Ctrl-C, after keeping everything committed so far.
    """
    from nearsort.embed.embedder import embed_files
    from nearsort.vectors.index import VectorIndex
    from nearsort.embed.models import load_model

    t0 = time.monotonic()
    root = Path(root)
    cat = Catalog.open(root)  # fails fast (no catalog / locked) before loading a model
    vi = rowlog = None
    try:
        m = load_model(model, weights=weights, device=device, log=log)
        model_id = _register_model(cat, m)
        vi = VectorIndex.open(state_dir(root), m.name, m.dim, valid_rows=queries.valid_rows(cat, model_id))
        rowlog = _RowLog(vi.folder, len(vi), cat, model_id)
        _save_card(cat, model_id, vi.folder)
        total_thumbs = queries.count_thumbs(cat)
        todo = queries.count_unembedded(cat, model_id)
        summary = {
            "model": m.name, "requested": model, "kind": m.kind, "dim": m.dim, "device": str(m.device),
            "random_weights": m.random_weights, "thumbs": total_thumbs, "already": total_thumbs - todo,
            "todo": todo, "embedded": 0, "errors": 0, "error_samples": [], "seconds": 0.0,
            "images_per_second": 0.0, "status": "running",
        }
        run_id = queries.start_run(cat, "featurize")
        ids_by_pos: dict[int, int] = {}
        has_labels = m.has_labels
        summary.update(relocated=0, missing=0)
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
                            summary["relocated"] = sync.reconcile(cat)["moved"]
                            break
                        summary["missing"] += 1  # deleted: `nearsort resize` remakes it
                        last = tid
                        continue
                    last = tid
                    ids_by_pos[pos] = tid
                    pos += 1
                    yield path

        def on_error(pos, path, exc):
            ids_by_pos.pop(pos, None)
            summary["errors"] += 1
            if len(summary["error_samples"]) < ERROR_SAMPLES:
                summary["error_samples"].append({"path": os.fsdecode(path), "error": f"{type(exc).__name__}: {exc}"})

        done = 0

        def on_progress(d, _t):
            nonlocal done
            done = d
            if progress:
                progress(d, todo)

        t_run = time.monotonic()
        status = "done"
        try:
            for b in embed_files(m, todo_paths(), batch=batch, workers=workers, progress=on_progress,
                                 on_error=on_error):
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
                summary["embedded"] += len(tids)
        except KeyboardInterrupt:
            status = "interrupted"
        except BaseException as e:
            summary["status"] = "failed"
            try:
                queries.finish_run(cat, run_id, "failed", json.dumps(summary))
            except sqlite3.Error:
                pass  # a full disk or a damaged catalog: the first error is the one to report
            if is_disk_full(e, root):
                raise DiskFull(e, state_dir(root), kept=f"the {summary['embedded']} thumbnails embedded before it "
                                                       "were kept") from e
            raise
        secs = time.monotonic() - t_run
        if status == "done":
            params = vi.save()
            _update_info(cat, model_id, {**_model_info(m, params)})
            _save_card(cat, model_id, vi.folder)
            summary["index"] = params
        summary["status"] = status
        summary["seconds"] = round(time.monotonic() - t0, 3)
        summary["images_per_second"] = round(summary["embedded"] / secs, 2) if secs > 0 else 0.0
        queries.finish_run(cat, run_id, status, json.dumps(summary))
    finally:
        if rowlog is not None:
            rowlog.close()
        if vi is not None:
            vi.close()
        cat.close()
    if status == "interrupted":
        raise Interrupted(summary)
    return summary


# ------------------------------------------------------------------ results


def _sources(cat: Catalog, thumb_id: int) -> list[str]:
    rows = queries.sources_of_thumb(cat, thumb_id)
    ok = [os.fsdecode(bytes(p)) for p, st in rows if st == "ok"]
    return ok or [os.fsdecode(bytes(p)) for p, st in rows if st != "missing"]


def _results(cat: Catalog, pairs: list[tuple[int, float]]) -> list[dict]:
    out = []
    for tid, score in pairs:
        rel = queries.thumb_relpath(cat, tid)
        if rel is None:
            continue
        out.append({
            "thumb_id": int(tid), "relpath": rel, "thumb": str(cat.thumb_abspath(rel)),
            "sources": _sources(cat, tid), "score": round(float(score), 5),
        })
    return out


def _rows_to_thumbs(cat: Catalog, model_id: int, rows: np.ndarray, scores: np.ndarray,
                    exclude: set[int], k: int) -> list[tuple[int, float]]:
    pairs: list[tuple[int, float]] = []
    seen: set[int] = set()
    for r, s in zip(rows.tolist(), scores.tolist()):
        if r < 0:
            continue
        hit = queries.thumb_of_row(cat, model_id, r)
        if hit is None:  # a row a concurrent featurize has not committed yet
            continue
        tid = int(hit)
        if tid in exclude or tid in seen:
            continue
        seen.add(tid)
        pairs.append((tid, float(s)))
        if len(pairs) >= k:
            break
    return pairs


def _open_index(cat: Catalog, model_id: int, name: str, dim: int):
    from nearsort.vectors.index import VectorIndex

    return VectorIndex.open(state_dir(cat.root), name, dim, valid_rows=queries.valid_rows(cat, model_id),
                            readonly=True)


def _vector_search(cat, model_id, name, dim, q: np.ndarray, k: int, exclude: set[int]) -> list[tuple[int, float]]:
    with _open_index(cat, model_id, name, dim) as vi:
        kk = k + len(exclude) + 4
        D, I = vi.search(q.reshape(1, -1), kk)
        return _rows_to_thumbs(cat, model_id, I[0], D[0], exclude, k)


# ------------------------------------------------------------------ search


def search_text(root: str | os.PathLike, query: str, k: int = 20, model: str | None = None,
                device: str = "auto") -> dict:
    """Text search. CLIP: text tower; CNN: ImageNet label fallback (``fallback=True``)."""
    from nearsort.embed.models import label_query, class_name

    query = (query or "").strip()
    if not query:
        raise CatalogError("empty search text")
    with Catalog.open(root, write=False) as cat:
        model_id, name, dim, info = _model_row(cat, model, prefer_text=True)
        out = {"query": query, "model": name, "fallback": False, "random_weights": bool(info.get("random_weights")),
               "results": []}
        if info.get("kind") == "clip":
            m = _load_for(name, info, device)
            q = m.encode_text([query])[0]
            out["results"] = _results(cat, _vector_search(cat, model_id, name, dim, q, k, set()))
            return out
        out["fallback"] = True
        classes = label_query(query)
        out["classes"] = [{"label": i, "name": class_name(i), "weight": w} for i, w in classes[:10]]
        if not classes:
            out["message"] = (f"{name} has no text tower and {query!r} matches no ImageNet class name; "
                              "featurize with a CLIP model (--model clip:ViT-B-32) for free-text search")
            return out
        out["results"] = _results(cat, queries.label_search(cat, model_id, classes, k))
        return out


def _find_thumb(cat: Catalog, ref: str) -> int | None:
    """Thumbnail id for a relpath, absolute thumbnail path, thumbnail name, id ('#12') or source path."""
    s = str(ref)
    if s.startswith("#") and s[1:].isdigit():
        return int(s[1:]) if queries.thumb_relpath(cat, int(s[1:])) is not None else None
    p = Path(s)
    cands = [s.replace(os.sep, "/")]
    try:
        ap = p.expanduser().absolute()
        root = cat.root.absolute()
        if ap.is_relative_to(root):
            cands.append(ap.relative_to(root).as_posix())
        rp, rr = ap.resolve(), root.resolve()
        if rp.is_relative_to(rr):
            cands.append(rp.relative_to(rr).as_posix())
    except (OSError, ValueError):
        pass
    for c in cands:
        r = queries.thumb_by_relpath(cat, c)
        if r is not None:
            return int(r)
    stem = p.name.rsplit(".", 1)[0]
    for name in {stem, stem.split("_", 1)[1] if "_" in stem and stem.split("_", 1)[0].isdigit() else stem}:
        r = queries.thumb_by_name(cat, name)
        if r:
            return int(r[0])
    try:
        raw = os.fsencode(str(p.expanduser().absolute()))
        r = queries.thumb_of_source(cat, raw)
        if r is not None:
            return int(r)
    except (OSError, ValueError):
        pass
    return None


def similar(root: str | os.PathLike, path_or_thumb: str | os.PathLike, k: int = 20, model: str | None = None,
            device: str = "auto") -> dict:
    """Nearest thumbnails to a library thumbnail (its stored vector) or to any image file (embedded now)."""
    from PIL import Image

    from nearsort.embed.embedder import embed_pil

    with Catalog.open(root, write=False) as cat:
        model_id, name, dim, info = _model_row(cat, model)
        tid = _find_thumb(cat, os.fspath(path_or_thumb))
        out = {"query": os.fspath(path_or_thumb), "model": name, "in_library": tid is not None,
               "random_weights": bool(info.get("random_weights")), "results": []}
        q = None
        if tid is not None:
            out["thumb_id"] = tid
            r = queries.row_of_thumb(cat, model_id, tid)
            if r is not None:
                with _open_index(cat, model_id, name, dim) as vi:
                    if int(r) < len(vi):
                        q = vi.get([int(r)])[0]
            if q is None:  # in the library but not featurized yet: embed its thumbnail now
                rel = queries.thumb_relpath(cat, tid)
                src = cat.thumb_abspath(rel)
            exclude = {tid}
        else:
            src = Path(os.fspath(path_or_thumb)).expanduser()
            if not src.is_file():
                raise FileNotFoundError(f"{src} is neither a thumbnail of {cat.root} nor an image file")
            exclude = set()
        if q is None:
            m = _load_for(name, info, device)
            try:
                vecs, _ = embed_pil(m, [src])
            except Image.DecompressionBombError as e:
                raise CatalogError(f"{src} is too large to decode safely ({e}); use a smaller copy of it") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise CatalogError(f"cannot read {src} as an image: {e}") from e
            q = vecs[0]
        out["results"] = _results(cat, _vector_search(cat, model_id, name, dim, q, k, exclude))
        return out
