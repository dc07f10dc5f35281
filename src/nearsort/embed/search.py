"""``search`` / ``similar``: queries over the embeddings ``featurize`` stored; read-only.

Text search uses a CLIP model's text tower, or -- a CNN has none -- ImageNet label search over the
top-5 classes kept at featurize time (``fallback``); similar takes a thumbnail's stored vector, or
embeds an image from outside the library on the fly. Details: docs/design.md, "search and similar".
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from nearsort.embed.featurize import _load_for, _model_row
from nearsort.stage import Result
from nearsort.errors import BadArgument
from nearsort.store import queries
from nearsort.store.catalog import Catalog, CatalogError, Thumbs, open_catalog, state_dir


@dataclass
class Hits(Result):
    query: str
    model: str                   # the featurized model searched
    random_weights: bool = False  # then the results are meaningless (a speed-test model)
    results: list = field(default_factory=list)  # [{"thumb_id", "relpath", "thumb", "sources", "score"}], best first


@dataclass
class SearchResult(Hits):
    """Thumbnails matching a text, best first."""

    fallback: bool = False           # no text tower (a CNN): ImageNet label search
    classes: Optional[list] = None   # fallback: the classes the text matched [{"label", "name", "weight"}]
    message: Optional[str] = None    # fallback: why nothing could be searched


@dataclass
class SimilarResult(Hits):
    """Thumbnails most similar to an image, best first."""

    in_library: bool = False         # the image is a thumbnail (or source) of this library
    thumb_id: Optional[int] = None   # ... that one (left out of the results)


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


def search(thumbs: Thumbs, text: str, k: int = 20, model: str | None = None, device: str = "auto") -> SearchResult:
    """``nearsort search``: the ``k`` thumbnails of THUMBS (a path or an open Catalog) that best match
    ``text``; read-only. CLIP: its text tower; a CNN: ImageNet label search (``fallback``)."""
    from nearsort.embed.models import label_query, class_name

    query = (text or "").strip()
    if not query:
        raise BadArgument("empty search text")
    if k < 1:
        raise BadArgument("-k must be >= 1")
    with open_catalog(thumbs, write=False) as cat:
        model_id, name, dim, info = _model_row(cat, model, prefer_text=True)
        out = SearchResult(query=query, model=name, random_weights=bool(info.get("random_weights")))
        if info.get("kind") == "clip":
            m = _load_for(name, info, device)
            q = m.encode_text([query])[0]
            out.results = _results(cat, _vector_search(cat, model_id, name, dim, q, k, set()))
            return out
        out.fallback = True
        classes = label_query(query)
        out.classes = [{"label": i, "name": class_name(i), "weight": w} for i, w in classes[:10]]
        if not classes:
            out.message = (f"{name} has no text tower and {query!r} matches no ImageNet class name; "
                              "featurize with a CLIP model (--model clip:ViT-B-32) for free-text search")
            return out
        out.results = _results(cat, queries.label_search(cat, model_id, classes, k))
        return out


def _runner_for(name: str, info: dict, device: str, image):
    """(model, backend) for a query image, through the backend layer featurize uses (backends.load):
    the cached ONNX graph without torch when there is one, so the query lands where the library's
    vectors are (their graphs agree with torch to cosine >= backends.MIN_COSINE)."""
    from nearsort.embed import backends

    w = info.get("weights_file")
    return backends.load(name, weights=w if w and os.path.isfile(w) else None, device=device,
                         images=[image], log=lambda s: None, export=False)


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


def similar(thumbs: Thumbs, image: str | os.PathLike, k: int = 20, model: str | None = None,
            device: str = "auto") -> SimilarResult:
    """``nearsort similar``: the ``k`` thumbnails of THUMBS (a path or an open Catalog) nearest to
    ``image`` -- a thumbnail of the library (relpath, path, name, ``#id``) or source photo (its
    stored vector), or any image file (embedded now); read-only."""
    from PIL import Image

    from nearsort.embed.embedder import embed_pil

    if k < 1:
        raise BadArgument("-k must be >= 1")
    with open_catalog(thumbs, write=False) as cat:
        model_id, name, dim, info = _model_row(cat, model)
        tid = _find_thumb(cat, os.fspath(image))
        out = SimilarResult(query=os.fspath(image), model=name, in_library=tid is not None,
                            random_weights=bool(info.get("random_weights")))
        q = None
        if tid is not None:
            out.thumb_id = tid
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
            src = Path(os.fspath(image)).expanduser()
            if not src.is_file():
                raise FileNotFoundError(f"{src} is neither a thumbnail of {cat.root} nor an image file")
            exclude = set()
        if q is None:
            m, runner = _runner_for(name, info, device, src)
            try:
                with warnings.catch_warnings():  # Pillow's about the file ("Corrupt EXIF data") name no file
                    warnings.simplefilter("ignore", UserWarning)
                    vecs, _ = embed_pil(m, [src], backend=runner)
            except Image.DecompressionBombError as e:
                raise CatalogError(f"{src} is too large to decode safely ({e}); use a smaller copy of it") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise CatalogError(f"cannot read {src} as an image: {e}") from e
            q = vecs[0]
        out.results = _results(cat, _vector_search(cat, model_id, name, dim, q, k, exclude))
        return out
