"""``analyze``: order every thumbnail into one chain and store each one's rank in the catalog.

Orderings (``by``): ``similarity`` (default; the chain over one model's embeddings), ``phash``
(Hamming chain, no model), ``date``, ``size``, ``name``. Ranks go to ``ranks`` under
``similarity:<model>`` or the plain ``by`` name, and ``meta.last_ordering`` names the latest, which
``refresh`` uses by default. Same input -> same order; a similarity order whose input (thumbnails,
vector rows, ordering code) is unchanged is kept, not recomputed. Details: docs/design.md, "analyze".
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from nearsort.order import chain as orders
from nearsort.stage import Progress, Result, ticker
from nearsort.errors import BadArgument
from nearsort.store import queries
from nearsort.store.catalog import Catalog, CatalogError, Thumbs, open_catalog
from nearsort.ingest.thumbs import name_phash

BY = ("similarity", "date", "size", "phash", "name")


def _thumb_ids(cat: Catalog) -> np.ndarray:
    return np.array(queries.thumb_ids(cat), dtype=np.int64)


def pick_model(cat: Catalog, model: str | None) -> tuple[int, str, int]:
    """(model_id, name, dim) of the named model, or of the most recently featurized one."""
    row = queries.find_model(cat, model)
    if row is None:
        raise CatalogError(f"no embeddings yet: run `nearsort featurize {cat.root}` first "
                           "(or use --by phash, which needs no model)")
    return row.id, row.name, row.dim


def load_vectors(cat: Catalog, model_id: int, name: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(thumb_ids, float16 vectors) of every thumbnail that has a vector for this model: the stored
    values, half the memory of float32 (5.1 GB -> 2.6 GB at 10^6 x 1280); the chain reads them in
    float32 blocks, so the order is the same as from float32 copies of them."""
    from nearsort.vectors.index import VectorIndex

    rows = queries.embeddings(cat, model_id)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    rownums = np.fromiter((r[1] for r in rows), dtype=np.int64, count=len(rows))
    del rows
    valid = queries.valid_rows(cat, model_id)  # read after the rows: it covers every one of them
    with VectorIndex.open(cat.root / ".nearsort", name, dim, valid_rows=valid) as vi:
        vecs = vi.get(rownums, np.float16) if len(rownums) else np.zeros((0, dim), np.float16)
    return ids, vecs


def _date_keys(cat: Catalog, ids: np.ndarray) -> list:
    best: dict[int, str] = {}
    for tid, ct, mt in queries.thumb_dates(cat):
        if ct:
            best[tid] = ct
        elif mt:
            best[tid] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mt / 1e9))
    return [best.get(int(t), "9999") for t in ids]


def _size_keys(cat: Catalog, ids: np.ndarray) -> list:
    px = {tid: (w or 0) * (h or 0) for tid, w, h in queries.thumb_sizes(cat)}
    return [-px.get(int(t), 0) for t in ids]


def _names(cat: Catalog, ids: np.ndarray) -> list[str]:
    first: dict[int, str] = {}
    for tid, p in queries.thumb_first_paths(cat):
        first[tid] = os.path.basename(os.fsdecode(bytes(p)))
    return [first.get(int(t), "") for t in ids]


def _phashes(cat: Catalog, ids: np.ndarray) -> np.ndarray:
    names = queries.thumb_names(cat)
    return np.array([int(name_phash(names[int(t)]), 16) for t in ids], dtype=np.uint64)


@dataclass
class AnalyzeResult(Result):
    """The ordering ``analyze`` stored, and the chain's quality (similarity and phash orderings)."""

    by: str
    fast: bool
    ordering: str = ""                 # the name the ranks are stored under (``similarity:<model>``, ``date`` ...)
    thumbnails: int = 0
    seconds: float = 0.0
    model: str | None = None           # by similarity: the embeddings used
    without_vector: int | None = None  # by similarity: thumbnails with no vector (placed at the end)
    chain_length: float | None = None  # sum of the steps (similarity, phash)
    mst_weight: float | None = None    # minimum-spanning-tree weight: a lower bound on any chain
    mst_ratio: float | None = None     # chain_length / mst_weight
    long_jumps: int | None = None
    stats: dict | None = None
    unchanged: bool = False            # the stored order was kept: its input had not changed


def analyze(
    thumbs: Thumbs,
    *,
    by: str = "similarity",
    model: str | None = None,
    fast: bool = False,
    progress: Progress | None = None,
) -> AnalyzeResult:
    """Order the thumbnails of THUMBS (a path or an open Catalog); store the ranks; return the
    :class:`AnalyzeResult` with the chain's quality. ``progress("analyze", done, total)``."""
    if by not in BY:
        raise BadArgument(f"--by must be one of: {', '.join(BY)}")
    t0 = time.monotonic()
    with open_catalog(thumbs, write=True) as cat:
        run_id = queries.start_run(cat, f"analyze --by {by}")
        summary = AnalyzeResult(by=by, fast=fast)
        all_ids = _thumb_ids(cat)
        if by == "similarity":
            model_id, name, dim = pick_model(cat, model)
            ordering = f"similarity:{name}"
            digest = _input_digest(cat, ordering, model_id, fast)
            kept = _unchanged(cat, ordering, digest)
            if kept is not None:  # same thumbnails, same vectors, same code: the stored order stands
                with cat.tx():
                    queries.set_meta(cat, "last_ordering", ordering)
                kept.unchanged, kept.seconds = True, round(time.monotonic() - t0, 3)
                queries.finish_run(cat, run_id, "done", json.dumps(kept.to_dict()))
                return kept
            ids, vecs = load_vectors(cat, model_id, name, dim)
            summary.model = name
            res = orders.similarity_chain(vecs, fast=fast, progress=ticker(progress, "analyze"))
            chain_ids = ids[res.order]
            steps = res.steps
            missing = np.setdiff1d(all_ids, ids)
            summary.without_vector = int(len(missing))
            if len(missing):  # keep them, at the end, so no thumbnail loses its place
                chain_ids = np.concatenate([chain_ids, missing])
                steps = np.concatenate([steps, np.full(len(missing), np.nan, np.float32)])
            _quality(summary, res)
        elif by == "phash":
            ordering = "phash"
            res = orders.hamming_chain(_phashes(cat, all_ids))
            chain_ids, steps = all_ids[res.order], res.steps
            _quality(summary, res)
        else:
            ordering = by
            if by == "date":
                perm = orders.key_order(_date_keys(cat, all_ids))
            elif by == "size":
                perm = orders.key_order(_size_keys(cat, all_ids))
            else:
                perm = orders.name_order(_names(cat, all_ids))
            chain_ids = all_ids[np.asarray(perm, dtype=np.int64)]
            steps = np.full(len(chain_ids), np.nan, np.float32)
        with cat.tx():
            queries.replace_ranks(cat, ordering, ((int(t), i, None if not np.isfinite(s) else float(s))
                                                  for i, (t, s) in enumerate(zip(chain_ids, steps))))
            queries.set_meta(cat, "last_ordering", ordering)
            summary.ordering = ordering
            summary.thumbnails = int(len(chain_ids))
            summary.seconds = round(time.monotonic() - t0, 3)
            if by == "similarity":
                queries.set_meta(cat, f"analyzed:{ordering}",
                                 json.dumps({"input": digest, "summary": summary.to_dict()}))
        queries.finish_run(cat, run_id, "done", json.dumps(summary.to_dict()))
    return summary


def _input_digest(cat: Catalog, ordering: str, model_id: int, fast: bool) -> str:
    """What a similarity order is a function of, by SQL aggregates (no vector is read): the
    thumbnails, the committed vector rows (append-only: a row never changes), ``fast`` and the
    ordering code itself."""
    import hashlib

    h = hashlib.sha256(repr((ordering, fast, queries.embeddings_digest(cat, model_id))).encode())
    pkg = Path(__file__).resolve().parents[1]
    for src in sorted([*(pkg / "order").glob("*.py"), *(pkg / "vectors").glob("*.py")]):
        h.update(src.read_bytes())
    return h.hexdigest()


def _unchanged(cat: Catalog, ordering: str, digest: str) -> AnalyzeResult | None:
    """The result of the stored order when it was made from the same input and is still complete."""
    try:
        kept = json.loads(queries.get_meta(cat, f"analyzed:{ordering}") or "null")
    except ValueError:
        return None
    if not kept or kept.get("input") != digest:
        return None
    if queries.count_ranks(cat, ordering) != queries.count_thumbs(cat):
        return None
    known = {f.name for f in fields(AnalyzeResult)}
    return AnalyzeResult(**{k: v for k, v in kept["summary"].items() if k in known})


def _quality(summary: AnalyzeResult, res) -> None:
    summary.chain_length = round(float(res.length), 4)
    summary.mst_weight = None if res.mst_weight is None else round(float(res.mst_weight), 4)
    summary.mst_ratio = None if res.mst_ratio is None else round(float(res.mst_ratio), 4)
    summary.long_jumps = int(res.long_jumps)
    summary.stats = {k: v for k, v in res.stats.items() if isinstance(v, (int, float, str, bool))}
