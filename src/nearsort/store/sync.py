"""Keeping thumbnails and catalog in step.

* ``thumb_meta(cat, thumb_id)``   the metadata document a thumbnail carries (from the catalog)
* ``import_meta(cat, relpath, meta)``   the reverse: put one thumbnail's metadata into the catalog
* ``rebuild(root)``   recreate the catalog from the thumbnails alone
* ``reattach_vectors(cat)``   the vectors saved on disk, back into a rebuilt catalog
* ``reconcile(cat)``   find every thumbnail wherever it lives below THUMBS (users move them)
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from nearsort.frames import same_pixels
from nearsort.store import queries, thumbmeta
from nearsort.stage import Progress, Result
from nearsort.store.catalog import STATE_DIR, Catalog, CatalogError, catalog_path, damage, state_dir, writer_lock
from nearsort.store.thumbmeta import parse_thumb_filename
from nearsort.vectors.rows import saved_stores

_PAGE = 4096  # vector rows re-attached per step


def _fs(path_blob: bytes) -> str:
    return os.fsdecode(bytes(path_blob))


def thumb_meta(cat: Catalog, thumb_id: int) -> dict:
    t = queries.thumb_row(cat, thumb_id)
    originals = []
    for o in queries.originals_of_thumb(cat, thumb_id):
        sources = [
            {"path": _fs(s["path"]), "size": s["size"], "mtime_ns": s["mtime_ns"], "status": s["status"]}
            for s in queries.sources_of_original(cat, o["id"])
        ]
        originals.append(
            {
                "content_hash": o["content_hash"], "width": o["width"], "height": o["height"],
                "format": o["format"], "bytes": o["bytes"], "phash": o["phash"],
                "capture_time": o["capture_time"], "make": o["make"], "model": o["model"],
                "gps": [o["gps_lat"], o["gps_lon"]] if o["gps_lat"] is not None else None,
                "exif": json.loads(o["exif_json"]) if o["exif_json"] else {},
                "sources": sources,
            }
        )
    tags = queries.tags_of_thumb(cat, thumb_id)
    meta = {
        "v": 1, "name": t["name"], "thumb": [t["tw"], t["th"]],
        "quality": {"brightness": t["brightness"], "contrast": t["contrast"], "blur": t["blur"]},
        "originals": originals, "tags": tags,
    }
    decided = queries.decisions_of_hashes(cat, [o["content_hash"] for o in originals])
    if decided:  # review decisions about its originals travel with it (rebuild reads them back)
        meta["decisions"] = [decision_doc(d) for d in decided]
    return meta


def decision_doc(d: dict) -> dict:
    """A decision as a thumbnail carries it (paths as text; os.fsencode gives the bytes back)."""
    out = {k: d[k] for k in ("uid", "batch", "group_key", "kind", "action", "members", "keeper_hash",
                             "member_hash", "created")}
    for k in ("keeper_path", "member_path"):
        out[k] = os.fsdecode(bytes(d[k])) if d[k] is not None else None
    return out


def import_decision(cat: Catalog, doc: dict) -> int:
    """A decision read back from a thumbnail into the catalog (one already there is left alone)."""
    d = dict(doc)
    for k in ("keeper_path", "member_path"):
        d[k] = os.fsencode(d[k]) if d.get(k) is not None else None
    return queries.add_decision(cat, d)


def write_thumb_meta(cat: Catalog, thumb_id: int) -> None:
    """Rewrite one thumbnail's embedded metadata from the catalog."""
    rel = queries.thumb_relpath(cat, thumb_id)
    thumbmeta.rewrite(cat.root / rel, thumb_meta(cat, thumb_id))


def import_meta(cat: Catalog, relpath: str, meta: dict, run_id: int | None = None, rank: int | None = None) -> int:
    """Insert/merge one thumbnail's metadata into the catalog (inside the caller's transaction)."""
    q = meta.get("quality") or {}
    tw, th = (meta.get("thumb") or [None, None])[:2]
    row = queries.thumb_by_name(cat, meta["name"])
    if row:
        thumb_id = row[0]
    else:
        thumb_id = queries.add_thumb(cat, meta["name"], relpath, tw, th, q.get("brightness"), q.get("contrast"),
                                     q.get("blur"), rank)
    for o in meta.get("originals", []):
        gps = o.get("gps") or [None, None]
        r = queries.original_by_hash(cat, o["content_hash"])
        if r:
            oid = r[0]
        else:
            oid = queries.add_original(
                cat, o["content_hash"], thumb_id, o.get("width"), o.get("height"), o.get("format"), o.get("bytes"),
                o.get("phash"), o.get("capture_time"), o.get("make"), o.get("model"), gps[0], gps[1],
                json.dumps(o.get("exif") or {}, sort_keys=True))
        for s in o.get("sources", []):
            queries.import_source(cat, os.fsencode(s["path"]), oid, s.get("size"), s.get("mtime_ns"),
                                  s.get("status") or "ok", run_id)
    queries.add_tags(cat, [(thumb_id, tag) for tag in meta.get("tags") or []])
    for d in meta.get("decisions") or []:
        import_decision(cat, d)
    return thumb_id


def iter_thumb_files(root: Path, on_temp: Callable[[str], None] | None = None) -> Iterator[tuple[str, str, int | None]]:
    """(relpath, name, rank) of every file below ``root`` named like a nearsort thumbnail;
    ``on_temp(path)`` is called for each temp file of ``thumbmeta.write_atomic`` met on the way."""
    root = Path(root)
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if e.name != STATE_DIR:
                    stack.append(Path(e.path))
                continue
            parsed = parse_thumb_filename(e.name)
            if parsed:
                rel = Path(e.path).relative_to(root).as_posix()
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    continue  # a folder name that is not UTF-8 cannot be stored as TEXT; leave it alone
                yield rel, parsed[0], parsed[1]
            elif on_temp is not None and thumbmeta.TEMP_RE.match(e.name):
                on_temp(e.path)


def _same_picture_files(a: Path, b: Path) -> bool:
    try:
        return same_pixels(a.read_bytes(), b.read_bytes())
    except Exception:  # unreadable or damaged: nothing proves they agree
        return False


def import_tree(cat: Catalog, run_id: int | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[int, int, list[tuple[str, str]]]:
    """Import the metadata of every thumbnail below THUMBS (inside the caller's transaction).

    Returns (thumbnail files seen, imported, [(relpath, problem)])."""
    n_files = n_thumbs = 0
    problems: list[tuple[str, str]] = []
    for relpath, name, rank in iter_thumb_files(cat.root):
        n_files += 1
        try:
            meta = thumbmeta.read(cat.root / relpath)
        except Exception as e:
            problems.append((relpath, f"unreadable metadata: {e}"))
            continue
        if not meta or meta.get("name") != name:
            problems.append((relpath, "no nearsort metadata"))
            continue
        other = queries.thumb_by_name(cat, name)
        if other and other[1] != relpath and not _same_picture_files(cat.root / other[1], cat.root / relpath):
            # a copy of a thumbnail merges; a different picture under the same name (a thumbnail
            # from another THUMBS) must not: its originals are not this name's
            problems.append((relpath, f"a different picture than {other[1]} with the same name; not imported "
                                      "(move it out of THUMBS; `nearsort resize` gives its originals their own)"))
            continue
        import_meta(cat, relpath, meta, run_id, rank)
        n_thumbs += 1
        if progress:
            progress(n_thumbs)
    return n_files, n_thumbs, problems


def reattach_vectors(cat: Catalog) -> dict[str, int]:
    """Re-create the ``models``, ``embeddings`` and ``labels`` rows of every vector store below
    THUMBS/.nearsort/vectors from what is saved beside it (``vectors.rows``), for the thumbnails
    the catalog has (the one holding the row's original; by name only for a row recorded without
    one): a rebuilt catalog keeps every vector, nothing is embedded again. For a catalog just made
    from the thumbnails (rebuild, resize's first-run import), inside the caller's transaction; a
    model the catalog already has is left alone. Returns {model name: thumbnails re-attached}."""
    out: dict[str, int] = {}
    for saved in saved_stores(state_dir(cat.root)):
        card, recs, n = saved.card, saved.records, len(saved.records)
        name = card["name"]
        if queries.model(cat, name) is not None:
            continue
        model_id = queries.add_model(cat, name, int(card["dim"]), card.get("info") or {})
        for start in range(0, n, _PAGE):
            chunk = np.array(recs[start:start + _PAGE])
            hashes = [r.tobytes().hex() if r.any() else "" for r in chunk["original"]]
            names = [x.decode("ascii", "replace") for x in chunk["name"].tolist()]
            by_hash = queries.thumbs_by_hash(cat, {h for h in hashes if h})
            by_name = queries.thumbs_by_name(cat, {nm for h, nm in zip(hashes, names) if not h and nm})
            last: dict[int, int] = {}  # thumb id -> its latest row in this chunk
            for j, (h, nm) in enumerate(zip(hashes, names)):
                tid = by_hash.get(h) if h else by_name.get(nm)
                if tid is not None:
                    last[tid] = j
            queries.add_embeddings(cat, model_id, [(t, start + j) for t, j in last.items()], replace=True)
            queries.replace_labels(cat, model_id, last, [
                (t, l, p) for t, j in last.items()
                for l, p in zip(chunk["label"][j].tolist(), chunk["prob"][j].tolist()) if l >= 0])
        del recs, saved
        out[name] = queries.count_embeddings(cat, model_id)
    return out


def _set_aside(cpath: Path, damaged: bool) -> Path:
    """Move the catalog (with its -wal/-shm) to a new name beside it; return that name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        tag = stamp if n == 1 else f"{stamp}-{n}"
        kept = cpath.with_name(f"{cpath.name}.damaged-{tag}" if damaged else f"catalog.before-rebuild.{tag}.sqlite")
        if not any(os.path.lexists(str(kept) + sfx) for sfx in ("", "-wal", "-shm")):
            break
    for suffix in ("", "-wal", "-shm"):  # a -wal left behind by a kill here is dropped by Catalog._create
        side = Path(str(cpath) + suffix)
        if side.exists():
            os.replace(side, Path(str(kept) + suffix))
    return kept


@dataclass
class RebuildResult(Result):
    """What ``rebuild`` imported (and the catalog's counts after it)."""

    thumbnail_files: int = 0
    imported: int = 0
    problems: list = field(default_factory=list)  # [(relpath, why)] thumbnails not imported
    previous_catalog: str | None = None           # where the old catalog was set aside
    vectors: dict = field(default_factory=dict)   # {model: thumbnails whose vectors were re-attached}
    sources: int = 0
    sources_ok: int = 0
    errors: int = 0
    missing: int = 0
    originals: int = 0
    thumbs: int = 0


def rebuild(thumbs: str | os.PathLike, progress: Progress | None = None) -> RebuildResult:
    """Recreate the catalog from the thumbnails below THUMBS, and re-attach the vectors already
    on disk (:func:`reattach_vectors`; ``vectors`` in the result: {model: thumbnails}).
    The old catalog is kept aside (``catalog.before-rebuild.<time>.sqlite``, or
    ``catalog.sqlite.damaged-<time>`` if it was damaged); it works whatever state the old file is in.
    Takes the THUMBS path only (an open Catalog is the file being replaced).
    ``progress("rebuild", imported, None)`` is called per thumbnail."""
    if isinstance(thumbs, Catalog):
        raise CatalogError(f"rebuild replaces the catalog of {thumbs.root}: close it and pass the THUMBS path")
    root = Path(thumbs)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    cpath = catalog_path(root)
    kept = None
    tick = (lambda n: progress("rebuild", n, None)) if progress else None
    # hold the lock throughout, so the file is never pulled from under a running process
    with writer_lock(root) as lock:
        if cpath.exists():
            kept = _set_aside(cpath, damaged=damage(cpath) is not None)
        with Catalog.open(root, create=True, lock=lock) as cat:
            run_id = queries.start_run(cat, "rebuild")
            with cat.tx():
                n_files, n_thumbs, problems = import_tree(cat, run_id, tick)
                vectors = reattach_vectors(cat)
            # error records are not in any thumbnail: the next resize retries those files and
            # records them again (a source that is not 'ok' is never skipped)
            res = RebuildResult(thumbnail_files=n_files, imported=n_thumbs, problems=problems,
                                previous_catalog=str(kept) if kept else None, vectors=vectors, **queries.counts(cat))
            queries.finish_run(cat, run_id, "done", json.dumps(res.to_dict()))
    return res


def reconcile(cat: Catalog) -> dict:
    """Update ``thumbs.relpath`` for thumbnails a user moved; return what was found.

    Returns {"moved": n, "missing": [thumb ids whose file is nowhere below THUMBS],
    "unknown": [relpaths of thumbnail files the catalog has no row for], "temps_removed": n}.
    Runs under the writer lock, so the temp files of thumbnail writes found on the way are
    leftovers of a killed or failed (disk full) run: they are removed.
    """
    known = {name: (tid, rel) for tid, name, rel in queries.thumbs(cat)}
    found: dict[str, str] = {}
    unknown = []
    temps = []

    def remove_temp(path: str) -> None:
        try:
            os.unlink(path)
            temps.append(path)
        except OSError:
            pass

    for relpath, name, _rank in iter_thumb_files(cat.root, on_temp=remove_temp):
        if name in known:
            if name not in found or relpath == known[name][1]:
                found[name] = relpath
        else:
            unknown.append(relpath)
    moved = 0
    missing = []
    with cat.tx():
        for name, (tid, rel) in known.items():
            new = found.get(name)
            if new is None:
                missing.append(tid)
            elif new != rel:
                queries.set_thumb_relpath(cat, tid, new)
                moved += 1
    return {"moved": moved, "missing": missing, "unknown": unknown, "temps_removed": len(temps)}
