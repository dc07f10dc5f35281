"""Every query of the catalog's data, each a thin named function: the only SQL outside catalog.py.

catalog.py owns the schema, migrations, connection, lock and transactions; this module owns what
is read and written. Each function takes ``db`` -- a :class:`Catalog` or a bare
``sqlite3.Connection`` (resize's scanner thread has its own) -- and returns plain values, rows
or small dataclasses. No function here begins, commits or rolls back: a writer calls them inside
the caller's ``with cat.tx():`` (or resize's batch), so the commit points stay the caller's.
Paths of ``sources.path`` and ``journal.src/dst`` are raw OS bytes (BLOB), returned as stored.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

from nearsort.store.catalog import CatalogError

if TYPE_CHECKING:
    from nearsort.store.catalog import Catalog

Db = Union["Catalog", sqlite3.Connection]

CHUNK = 500  # keys per ``IN (...)`` (SQLite's default limit on parameters is 999)


def _c(db: Db) -> sqlite3.Connection:
    return db if isinstance(db, sqlite3.Connection) else db.conn


def _one(db: Db, sql: str, params: Sequence = ()):
    """The first column of the first row, or None."""
    row = _c(db).execute(sql, params).fetchone()
    return None if row is None else row[0]


def _in_chunks(db: Db, sql: str, keys: Iterable, extra: Sequence = ()) -> list:
    """Rows of ``sql`` (one ``IN (%s)``, then the ``extra`` parameters) over ``keys``, CHUNK at a time."""
    keys, out = list(keys), []
    for i in range(0, len(keys), CHUNK):
        part = keys[i:i + CHUNK]
        out += _c(db).execute(sql % ",".join("?" * len(part)), [*part, *extra]).fetchall()
    return out


# ============================================================================ meta, runs, counts
def get_meta(db: Db, key: str, default: Optional[str] = None) -> Optional[str]:
    row = _c(db).execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else default


def set_meta(db: Db, key: str, value: str) -> None:
    _c(db).execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                   (key, value))


def start_run(db: Db, command: str) -> int:
    """A new ``runs`` row (status 'running'); its id."""
    return int(_c(db).execute("INSERT INTO runs(command, started) VALUES(?, ?)", (command, time.time())).lastrowid)


def finish_run(db: Db, run_id: int, status: str, summary: Optional[str] = None) -> None:
    _c(db).execute("UPDATE runs SET finished=?, status=?, summary=? WHERE id=?",
                   (time.time(), status, summary, run_id))


def last_run(db: Db):
    """(command, status, summary) of the newest run, or None."""
    return _c(db).execute("SELECT command, status, summary FROM runs ORDER BY id DESC LIMIT 1").fetchone()


def source_roots(db: Db) -> list[str]:
    """The library: the SRC folders ``resize`` scanned into this catalog (absolute paths, first
    scanned first). Every resize run that completed or was interrupted records its ``src`` in its
    ``runs.summary``; a rebuilt catalog knows none until the next resize."""
    roots: list[str] = []
    for (summary,) in _c(db).execute(
            "SELECT summary FROM runs WHERE command='resize' AND status IN ('done', 'interrupted') "
            "AND summary IS NOT NULL ORDER BY id"):
        try:
            src = json.loads(summary).get("src")
        except (ValueError, AttributeError):
            continue
        if isinstance(src, str) and src and src not in roots:
            roots.append(src)
    return roots


def count_sources(db: Db, status: Optional[str] = None) -> int:
    """Sources of one status (ok | error | missing | quarantined), or all of them."""
    if status is None:
        return _one(db, "SELECT count(*) FROM sources")
    return _one(db, "SELECT count(*) FROM sources WHERE status=?", (status,))


def counts(db: Db) -> dict[str, int]:
    """What the catalog holds: sources (all, ok, error, missing: gone from SRC), originals, thumbs."""
    return {
        "sources": count_sources(db),
        "sources_ok": count_sources(db, "ok"),
        "errors": count_sources(db, "error"),
        "missing": count_sources(db, "missing"),
        "originals": _one(db, "SELECT count(*) FROM originals"),
        "thumbs": count_thumbs(db),
    }


def count_thumbs(db: Db) -> int:
    return _one(db, "SELECT count(*) FROM thumbs")


# ============================================================================ thumbs
def thumbs(db: Db) -> list[tuple[int, str, str]]:
    """(id, name, relpath) of every thumbnail."""
    return [tuple(r) for r in _c(db).execute("SELECT id, name, relpath FROM thumbs")]


def thumb_ids(db: Db) -> list[int]:
    return [r[0] for r in _c(db).execute("SELECT id FROM thumbs ORDER BY id")]


def thumb_names(db: Db) -> dict[int, str]:
    return dict(_c(db).execute("SELECT id, name FROM thumbs").fetchall())


def thumb_relpaths(db: Db) -> dict[int, str]:
    return dict(_c(db).execute("SELECT id, relpath FROM thumbs").fetchall())


def thumb_row(db: Db, thumb_id: int) -> Optional[sqlite3.Row]:
    """Every column of one thumbnail, or None."""
    return _c(db).execute("SELECT * FROM thumbs WHERE id=?", (thumb_id,)).fetchone()


def thumb_relpath(db: Db, thumb_id: int) -> Optional[str]:
    """Where the thumbnail is (relative to THUMBS), or None when there is no such thumbnail."""
    return _one(db, "SELECT relpath FROM thumbs WHERE id=?", (thumb_id,))


def thumb_by_name(db: Db, name: str) -> Optional[tuple[int, str]]:
    """(id, relpath) of the thumbnail named ``name`` ('{W}x{H}_{phash}'), or None."""
    row = _c(db).execute("SELECT id, relpath FROM thumbs WHERE name=?", (name,)).fetchone()
    return None if row is None else (row[0], row[1])


def thumb_by_relpath(db: Db, relpath: str) -> Optional[int]:
    return _one(db, "SELECT id FROM thumbs WHERE relpath=?", (relpath,))


def thumbs_named_like(db: Db, name: str) -> list[tuple[int, str]]:
    """(id, name) of the thumbnails called ``name`` or ``name_<n>`` (same size and phash), oldest first."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT id, name FROM thumbs WHERE name=? OR name GLOB ? ORDER BY id", (name, name + "_*"))]


def thumb_quality(db: Db) -> list[tuple]:
    """(id, relpath, brightness, contrast, blur, tw, th) of every thumbnail, by id."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT id, relpath, brightness, contrast, blur, tw, th FROM thumbs ORDER BY id")]


def thumb_blur(db: Db) -> list[tuple[int, Optional[float]]]:
    """(id, blur) of every thumbnail (variance of the Laplacian, from resize)."""
    return [tuple(r) for r in _c(db).execute("SELECT id, blur FROM thumbs")]


def add_thumb(db: Db, name: str, relpath: str, tw, th, brightness, contrast, blur,
              rank: Optional[int] = None) -> int:
    """A new thumbnail row; its id."""
    return int(_c(db).execute(
        "INSERT INTO thumbs(name, relpath, tw, th, brightness, contrast, blur, rank, created_ns)"
        " VALUES(?,?,?,?,?,?,?,?,?)",
        (name, relpath, tw, th, brightness, contrast, blur, rank, time.time_ns())).lastrowid)


def set_thumb_relpath(db: Db, thumb_id: int, relpath: str) -> None:
    _c(db).execute("UPDATE thumbs SET relpath=? WHERE id=?", (relpath, thumb_id))


def set_thumb_place(db: Db, thumb_id: int, relpath: str, rank: Optional[int]) -> None:
    """Where a thumbnail is now and the rank its file name carries (None: no prefix)."""
    _c(db).execute("UPDATE thumbs SET relpath=?, rank=? WHERE id=?", (relpath, rank, thumb_id))


def set_thumb_ranks(db: Db, ranks: Iterable[tuple[Optional[int], int]]) -> None:
    """``ranks``: (rank, thumb id) pairs."""
    _c(db).executemany("UPDATE thumbs SET rank=? WHERE id=?", ranks)


# ============================================================================ originals
def original_by_hash(db: Db, content_hash: str) -> Optional[tuple[int, Optional[int]]]:
    """(id, thumb_id) of the original with these bytes (sha256 hex), or None."""
    row = _c(db).execute("SELECT id, thumb_id FROM originals WHERE content_hash=?", (content_hash,)).fetchone()
    return None if row is None else (row[0], row[1])


def add_original(db: Db, content_hash: str, thumb_id: int, width, height, format, nbytes, phash,
                 capture_time, make, model, gps_lat, gps_lon, exif_json: str) -> int:
    """A new original row; its id."""
    return int(_c(db).execute(
        "INSERT INTO originals(content_hash, thumb_id, width, height, format, bytes, phash, capture_time, make,"
        " model, gps_lat, gps_lon, exif_json) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (content_hash, thumb_id, width, height, format, nbytes, phash, capture_time, make, model, gps_lat,
         gps_lon, exif_json)).lastrowid)


def originals_of_thumb(db: Db, thumb_id: int) -> list[sqlite3.Row]:
    """Every column of the originals a thumbnail shows, by content hash."""
    return _c(db).execute("SELECT * FROM originals WHERE thumb_id=? ORDER BY content_hash", (thumb_id,)).fetchall()


def thumbs_of_originals(db: Db, original_ids: Iterable[int]) -> set[int]:
    return {t for (t,) in _in_chunks(
        db, "SELECT DISTINCT thumb_id FROM originals WHERE id IN (%s) AND thumb_id IS NOT NULL", original_ids)}


def thumbs_by_hash(db: Db, hashes: Iterable[str]) -> dict[str, int]:
    """{content hash: thumb id} of the originals with these hashes."""
    return dict(_in_chunks(db, "SELECT content_hash, thumb_id FROM originals WHERE content_hash IN (%s)",
                           sorted(set(hashes))))


def thumbs_by_name(db: Db, names: Iterable[str]) -> dict[str, int]:
    """{name: thumb id} of the thumbnails with these names."""
    return dict(_in_chunks(db, "SELECT name, id FROM thumbs WHERE name IN (%s)", sorted(set(names))))


def row_keys(db: Db, thumb_ids: Sequence[int]) -> dict[int, tuple[str, Optional[str]]]:
    """thumb id -> (name, content_hash of its first original, or None)."""
    return {tid: (name, h) for tid, name, h in _in_chunks(
        db, "SELECT t.id, t.name, (SELECT o.content_hash FROM originals o WHERE o.thumb_id=t.id ORDER BY o.id LIMIT 1)"
            " FROM thumbs t WHERE t.id IN (%s)", thumb_ids)}


def first_original_dates(db: Db) -> list[tuple[int, Optional[str], Optional[int]]]:
    """(thumb id, capture time, mtime_ns of its first source) of each thumbnail's first original:
    what resize chose its folder by."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT o.thumb_id, o.capture_time,"
        " (SELECT s.mtime_ns FROM sources s WHERE s.original_id=o.id ORDER BY s.id LIMIT 1)"
        " FROM originals o JOIN (SELECT thumb_id, min(id) AS mid FROM originals GROUP BY thumb_id) f"
        " ON o.id = f.mid")]


def thumb_dates(db: Db) -> list[tuple[int, Optional[str], Optional[int]]]:
    """(thumb id, earliest capture time, earliest source mtime_ns) over all its originals."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT o.thumb_id, min(o.capture_time), min(s.mtime_ns) FROM originals o "
        "LEFT JOIN sources s ON s.original_id=o.id GROUP BY o.thumb_id")]


def thumb_sizes(db: Db) -> list[tuple[int, Optional[int], Optional[int]]]:
    """(thumb id, largest width, largest height) over its originals."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT thumb_id, max(width), max(height) FROM originals GROUP BY thumb_id")]


def thumb_first_paths(db: Db) -> list[tuple[int, bytes]]:
    """(thumb id, the smallest of its sources' paths)."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT o.thumb_id, min(s.path) FROM originals o JOIN sources s ON s.original_id=o.id GROUP BY o.thumb_id")]


# ============================================================================ sources
def known_sources(db: Db, paths: Sequence[bytes]) -> dict[bytes, tuple]:
    """{path: (source id, size, mtime_ns, status, thumb id)} of the sources among ``paths``."""
    return {bytes(p): (sid, size, mtime, status, tid) for p, sid, size, mtime, status, tid in _in_chunks(
        db, "SELECT s.path, s.id, s.size, s.mtime_ns, s.status, o.thumb_id FROM sources s "
            "LEFT JOIN originals o ON o.id = s.original_id WHERE s.path IN (%s)", paths)}


def source_by_path(db: Db, path: bytes) -> Optional[tuple[int, Optional[int]]]:
    """(source id, thumb id or None) of the source at ``path``, or None."""
    row = _c(db).execute("SELECT s.id, o.thumb_id FROM sources s LEFT JOIN originals o ON o.id=s.original_id "
                         "WHERE s.path=?", (path,)).fetchone()
    return None if row is None else (row[0], row[1])


def source_path(db: Db, source_id: int) -> Optional[bytes]:
    return _one(db, "SELECT path FROM sources WHERE id=?", (source_id,))


def source_state(db: Db, source_id: int) -> Optional[tuple]:
    """(size, mtime_ns, status) of one source, or None."""
    row = _c(db).execute("SELECT size, mtime_ns, status FROM sources WHERE id=?", (source_id,)).fetchone()
    return None if row is None else tuple(row)


def record_source_ok(db: Db, path: bytes, original_id: int, size, mtime_ns, run_id: int) -> None:
    """The file at ``path`` is (now) the original ``original_id``: status 'ok', seen in ``run_id``."""
    _c(db).execute(
        "INSERT INTO sources(path, original_id, size, mtime_ns, status, error, last_run) VALUES(?,?,?,?,?,?,?)"
        " ON CONFLICT(path) DO UPDATE SET original_id=excluded.original_id, size=excluded.size,"
        " mtime_ns=excluded.mtime_ns, status='ok', error=NULL, last_run=excluded.last_run",
        (path, original_id, size, mtime_ns, "ok", None, run_id))


def record_source_error(db: Db, path: bytes, size, mtime_ns, error: str, run_id: int) -> None:
    """The file at ``path`` could not be made into a thumbnail: status 'error' with the reason."""
    _c(db).execute(
        "INSERT INTO sources(path, original_id, size, mtime_ns, status, error, last_run) VALUES(?,?,?,?,?,?,?)"
        " ON CONFLICT(path) DO UPDATE SET original_id=NULL, size=excluded.size, mtime_ns=excluded.mtime_ns,"
        " status='error', error=excluded.error, last_run=excluded.last_run",
        (path, None, size, mtime_ns, "error", error, run_id))


def import_source(db: Db, path: bytes, original_id: int, size, mtime_ns, status: str,
                  run_id: Optional[int]) -> None:
    """A source from a thumbnail's metadata (rebuild); a path the catalog has already is left alone."""
    _c(db).execute(
        "INSERT INTO sources(path, original_id, size, mtime_ns, status, last_run) VALUES(?,?,?,?,?,?)"
        " ON CONFLICT(path) DO NOTHING", (path, original_id, size, mtime_ns, status, run_id))


def mark_sources_seen(db: Db, run_id: int, source_ids: Sequence[int]) -> None:
    """Unchanged sources met by this run's scan: 'ok', last seen in ``run_id``."""
    _c(db).executemany("UPDATE sources SET last_run=?, status='ok' WHERE id=?", [(run_id, i) for i in source_ids])


def unseen_sources(db: Db, lo: bytes, hi: bytes, run_id: int) -> list[tuple[int, bytes, Optional[int]]]:
    """(id, path, original id) of the ok/error sources with ``lo <= path < hi`` that run ``run_id`` did not see."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT id, path, original_id FROM sources WHERE path >= ? AND path < ? AND last_run IS NOT ? "
        "AND status IN ('ok', 'error')", (lo, hi, run_id))]


def set_sources_status(db: Db, source_ids: Iterable[int], status: str) -> None:
    _c(db).executemany("UPDATE sources SET status=? WHERE id=?", [(status, i) for i in source_ids])


def sources_of_original(db: Db, original_id: int) -> list[sqlite3.Row]:
    """(path, size, mtime_ns, status) of an original's sources, by path."""
    return _c(db).execute("SELECT path, size, mtime_ns, status FROM sources WHERE original_id=? ORDER BY path",
                          (original_id,)).fetchall()


def sources_of_thumb(db: Db, thumb_id: int) -> list[tuple[bytes, str]]:
    """(path, status) of every source a thumbnail shows, by path."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT s.path, s.status FROM sources s JOIN originals o ON s.original_id=o.id "
        "WHERE o.thumb_id=? ORDER BY s.path", (thumb_id,))]


def thumb_of_source(db: Db, path: bytes) -> Optional[int]:
    """The thumbnail showing the source at ``path``, or None."""
    return _one(db, "SELECT o.thumb_id FROM sources s JOIN originals o ON s.original_id=o.id WHERE s.path=?",
                (path,))


def ok_source_sizes(db: Db) -> list[tuple[int, bytes, Optional[int], Optional[int]]]:
    """(thumb id, path, width, height) of every ok source that has a thumbnail, by path."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT o.thumb_id, s.path, o.width, o.height FROM sources s JOIN originals o ON o.id=s.original_id"
        " WHERE s.status='ok' AND o.thumb_id IS NOT NULL ORDER BY s.path")]


def source_errors(db: Db) -> list[tuple[bytes, Optional[str], Optional[int]]]:
    """(path, error, size) of every source that could not be made into a thumbnail, by path."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT path, error, size FROM sources WHERE status='error' ORDER BY path")]


def quarantined_sources(db: Db) -> list[tuple[int, bytes, Optional[int]]]:
    """(id, path, size) of every quarantined source."""
    return [tuple(r) for r in _c(db).execute("SELECT id, path, size FROM sources WHERE status='quarantined'")]


def member_rows(db: Db) -> list[tuple]:
    """Every ok or quarantined source that has a thumbnail, with its original's facts, by source id:
    (source id, path, size, mtime_ns, original id, thumb id, content_hash, width, height, bytes,
    format, capture_time, make, model, gps_lat, exif_json, status)."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT s.id, s.path, s.size, s.mtime_ns, o.id, o.thumb_id, o.content_hash, o.width, o.height,"
        " o.bytes, o.format, o.capture_time, o.make, o.model, o.gps_lat, o.exif_json, s.status"
        " FROM sources s JOIN originals o ON o.id = s.original_id"
        " WHERE s.status IN ('ok', 'quarantined') AND o.thumb_id IS NOT NULL ORDER BY s.id")]


def export_rows(db: Db, ordering: Optional[str] = None) -> Iterable[sqlite3.Row]:
    """One row per source, by path: path, status, error, its original's content_hash, width, height,
    phash, capture_time, and its thumbnail's tid, relpath, brightness, contrast, blur, rank, and
    ``analyzed`` (its 0-based rank in ``ordering``) (NULL where there is none)."""
    return _c(db).execute(
        "SELECT s.path, s.status, s.error, o.content_hash, o.width, o.height, o.phash, o.capture_time,"
        " t.id AS tid, t.relpath, t.brightness, t.contrast, t.blur, t.rank, r.rank AS analyzed"
        " FROM sources s LEFT JOIN originals o ON o.id = s.original_id LEFT JOIN thumbs t ON t.id = o.thumb_id"
        " LEFT JOIN ranks r ON r.thumb_id = t.id AND r.ordering = ?"
        " ORDER BY s.path", (ordering,))


# ============================================================================ tags
def tags(db: Db) -> list[tuple[int, str]]:
    """(thumb id, tag) of every tag, by tag."""
    return [tuple(r) for r in _c(db).execute("SELECT thumb_id, tag FROM tags ORDER BY tag")]


def tags_of_thumb(db: Db, thumb_id: int) -> list[str]:
    return [r[0] for r in _c(db).execute("SELECT tag FROM tags WHERE thumb_id=? ORDER BY tag", (thumb_id,))]


def add_tags(db: Db, pairs: Iterable[tuple[int, str]]) -> None:
    """Folder tags ``(thumb id, tag)``; pairs already there are left alone."""
    _c(db).executemany("INSERT OR IGNORE INTO tags(thumb_id, tag, origin) VALUES(?, ?, 'folder')", pairs)


def tag_counts(db: Db) -> dict[str, int]:
    """{tag: number of thumbnails}, by tag."""
    return dict(_c(db).execute("SELECT tag, count(*) FROM tags GROUP BY tag ORDER BY tag").fetchall())


# ============================================================================ models, embeddings, labels
@dataclass(frozen=True)
class Model:
    """One ``models`` row; ``info`` parsed (weights file, kind, index parameters ...)."""

    id: int
    name: str
    dim: int
    info: dict


def _model(row) -> Model:
    return Model(int(row[0]), row[1], int(row[2]), json.loads(row[3] or "{}"))


def model(db: Db, name: Optional[str] = None, *, id: Optional[int] = None) -> Optional[Model]:
    """The model row with this registry ``name`` (or this ``id``), or None. The one lookup of a model row."""
    if id is not None:
        row = _c(db).execute("SELECT id, name, dim, info FROM models WHERE id=?", (id,)).fetchone()
    else:
        row = _c(db).execute("SELECT id, name, dim, info FROM models WHERE name=?", (name,)).fetchone()
    return None if row is None else _model(row)


def find_model(cat: "Catalog", name: Optional[str] = None, *, prefer_text: bool = False) -> Optional[Model]:
    """The model to use: the one named ``name`` (an unknown name raises CatalogError, naming the
    known ones and the featurize command to run); without a name the newest model that has
    embeddings (for text queries, ``prefer_text``: the newest CLIP model with real weights, if
    any), None when there is none."""
    if name:
        found = model(cat, name)
        if found is None:
            known = [r[0] for r in _c(cat).execute("SELECT name FROM models")]
            raise CatalogError(f"no embeddings for model {name!r} (have: {', '.join(known) or 'none'}); "
                               f"run `nearsort featurize {cat.root} --model {name}`")
        return found
    rows = [_model(r) for r in _c(cat).execute(
        "SELECT m.id, m.name, m.dim, m.info FROM models m WHERE EXISTS "
        "(SELECT 1 FROM embeddings e WHERE e.model_id=m.id) ORDER BY m.id DESC")]
    if prefer_text:
        for m in rows:
            if m.info.get("kind") == "clip" and not m.info.get("random_weights"):
                return m
    return rows[0] if rows else None


def add_model(db: Db, name: str, dim: int, info: dict) -> int:
    """A new model row; its id."""
    return int(_c(db).execute("INSERT INTO models(name, dim, info) VALUES(?, ?, ?)",
                              (name, int(dim), json.dumps(info))).lastrowid)


def set_model_info(db: Db, model_id: int, info: dict) -> None:
    _c(db).execute("UPDATE models SET info=? WHERE id=?", (json.dumps(info), model_id))


def valid_rows(db: Db, model_id: int) -> int:
    """How many rows of the model's vector store the catalog has committed (max(row) + 1, 0 without
    any): pass it to ``VectorIndex.open(valid_rows=...)``, which cuts rows past it (a crash
    between the vectors' append and the catalog commit)."""
    return int(_one(db, "SELECT coalesce(max(row) + 1, 0) FROM embeddings WHERE model_id=?", (model_id,)))


def embeddings(db: Db, model_id: int) -> list[tuple[int, int]]:
    """(thumb id, vector row) of every thumbnail that has a vector for the model, by thumb id."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT thumb_id, row FROM embeddings WHERE model_id=? ORDER BY thumb_id", (model_id,))]


def count_embeddings(db: Db, model_id: int) -> int:
    return _one(db, "SELECT count(*) FROM embeddings WHERE model_id=?", (model_id,))


def count_unembedded(db: Db, model_id: int) -> int:
    """Thumbnails without a vector for the model."""
    return _one(db, "SELECT count(*) FROM thumbs t WHERE NOT EXISTS "
                    "(SELECT 1 FROM embeddings e WHERE e.model_id=? AND e.thumb_id=t.id)", (model_id,))


def unembedded_page(db: Db, model_id: int, after: int, limit: int) -> list[tuple[int, str]]:
    """(id, relpath) of up to ``limit`` thumbnails with an id above ``after`` that have no vector
    for the model, by id."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT t.id, t.relpath FROM thumbs t WHERE t.id > ? AND NOT EXISTS "
        "(SELECT 1 FROM embeddings e WHERE e.model_id=? AND e.thumb_id=t.id) ORDER BY t.id LIMIT ?",
        (after, model_id, limit))]


def embeddings_digest(db: Db, model_id: int) -> tuple:
    """Aggregates of the thumbnails and of the model's (thumb id, vector row) pairs, without reading
    them into Python: a thumbnail added, removed or embedded again changes them."""
    c = _c(db)
    return (tuple(c.execute("SELECT count(*), total(id), max(id) FROM thumbs").fetchone()),
            tuple(c.execute("SELECT count(*), total(thumb_id), total(row), max(row), total(thumb_id * row) "
                            "FROM embeddings WHERE model_id=?", (model_id,)).fetchone()))


def add_embeddings(db: Db, model_id: int, pairs: Iterable[tuple[int, int]], *, replace: bool = False) -> None:
    """``pairs``: (thumb id, vector row). ``replace``: a thumbnail's earlier row is replaced (rebuild)."""
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    _c(db).executemany(f"{verb} INTO embeddings(model_id, thumb_id, row) VALUES(?, ?, ?)",
                       [(model_id, int(t), int(r)) for t, r in pairs])


def thumb_of_row(db: Db, model_id: int, row: int) -> Optional[int]:
    """The thumbnail whose vector is ``row`` of the model's store, or None (not committed yet)."""
    return _one(db, "SELECT thumb_id FROM embeddings WHERE model_id=? AND row=?", (model_id, int(row)))


def row_of_thumb(db: Db, model_id: int, thumb_id: int) -> Optional[int]:
    return _one(db, "SELECT row FROM embeddings WHERE model_id=? AND thumb_id=?", (model_id, thumb_id))


def embeddings_with_labels(db: Db, model_id: int, start: int, stop: int) -> list[tuple]:
    """(row, thumb id, label or None, prob or None) of the model's rows ``start <= row < stop``,
    by row, each row's labels most probable first."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT e.row, e.thumb_id, l.label, l.prob FROM embeddings e "
        "LEFT JOIN labels l ON l.model_id=e.model_id AND l.thumb_id=e.thumb_id "
        "WHERE e.model_id=? AND e.row>=? AND e.row<? ORDER BY e.row, l.prob DESC", (model_id, start, stop))]


def replace_labels(db: Db, model_id: int, thumb_ids: Iterable[int],
                   labels: Iterable[tuple[int, int, float]]) -> None:
    """The thumbnails' top classes become ``labels``: (thumb id, ImageNet class, probability)."""
    c = _c(db)
    c.executemany("DELETE FROM labels WHERE model_id=? AND thumb_id=?", [(model_id, t) for t in thumb_ids])
    c.executemany("INSERT OR REPLACE INTO labels(model_id, thumb_id, label, prob) VALUES(?, ?, ?, ?)",
                  [(model_id, t, int(l), float(p)) for t, l, p in labels])


def label_search(db: Db, model_id: int, classes: Sequence[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    """(thumb id, score) of the ``k`` best thumbnails for weighted ImageNet ``classes`` (class, weight):
    score = sum(weight * probability) over the thumbnail's stored top classes."""
    values = ",".join("(?, ?)" for _ in classes)
    params: list = [x for i, w in classes for x in (int(i), float(w))]
    return [(int(t), float(s)) for t, s in _c(db).execute(
        f"WITH q(label, w) AS (VALUES {values}) "
        "SELECT l.thumb_id, SUM(l.prob * q.w) AS s FROM labels l JOIN q ON l.label = q.label "
        "WHERE l.model_id = ? GROUP BY l.thumb_id ORDER BY s DESC, l.thumb_id LIMIT ?", params + [model_id, int(k)])]


# ============================================================================ ranks (orderings)
def ordering_names(db: Db) -> list[str]:
    """Every ordering the ``ranks`` table holds, by name."""
    return [r[0] for r in _c(db).execute("SELECT DISTINCT ordering FROM ranks ORDER BY ordering")]


def current_ordering(db: Db, wanted: Optional[str] = None) -> Optional[str]:
    """The ordering to show or apply; the one rule (refresh, report):

    ``wanted`` (exact, else ``'similarity:' + wanted``; None when neither has ranks); without it the
    one the last ``analyze`` stored (``meta.last_ordering``), else the ``similarity:*`` ordering
    written most recently (the highest ``ranks`` rowid: analyze replaces an ordering's rows
    whole); None when there is none of those."""
    c = _c(db)
    if wanted:
        for cand in (wanted, f"similarity:{wanted}"):
            if c.execute("SELECT 1 FROM ranks WHERE ordering=? LIMIT 1", (cand,)).fetchone():
                return cand
        return None
    last = get_meta(db, "last_ordering")
    if last and c.execute("SELECT 1 FROM ranks WHERE ordering=? LIMIT 1", (last,)).fetchone():
        return last
    return _one(db, "SELECT ordering FROM ranks WHERE ordering GLOB 'similarity:*' "
                    "GROUP BY ordering ORDER BY max(rowid) DESC LIMIT 1")


def ranks(db: Db, ordering: str) -> list[tuple[int, int, Optional[float]]]:
    """(thumb id, rank, jump) of an ordering in chain order (rank, then thumb id)."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT thumb_id, rank, jump FROM ranks WHERE ordering=? ORDER BY rank, thumb_id", (ordering,))]


def count_ranks(db: Db, ordering: str) -> int:
    return _one(db, "SELECT count(*) FROM ranks WHERE ordering=?", (ordering,))


def rank_page(db: Db, ordering: str, offset: int, limit: int) -> list[tuple[int, int, Optional[float], str, Optional[bytes]]]:
    """One page of an ordering in chain order: (thumb id, rank, jump, thumbnail relpath, the smallest
    of its ok sources' paths or None). The page is cut on the ``ranks_rank`` index first (ranks are
    unique positions), so only its own rows are joined: a few ms anywhere in a chain of 10^5."""
    return [tuple(r) for r in _c(db).execute(
        "SELECT r.thumb_id, r.rank, r.jump, t.relpath, (SELECT min(s.path) FROM originals o JOIN sources s "
        "ON s.original_id=o.id WHERE o.thumb_id=t.id AND +s.status='ok') "
        "FROM (SELECT thumb_id, rank, jump FROM ranks WHERE ordering=? ORDER BY rank LIMIT ? OFFSET ?) r "
        "JOIN thumbs t ON t.id=r.thumb_id ORDER BY r.rank", (ordering, int(limit), int(offset)))]


def replace_ranks(db: Db, ordering: str, rows: Iterable[tuple[int, int, Optional[float]]]) -> None:
    """The ordering's ranks become ``rows``: (thumb id, rank, jump)."""
    c = _c(db)
    c.execute("DELETE FROM ranks WHERE ordering=?", (ordering,))
    c.executemany("INSERT INTO ranks(ordering, thumb_id, rank, jump) VALUES(?,?,?,?)",
                  ((ordering, t, r, j) for t, r, j in rows))


# ============================================================================ ops and journal (journaled moves)
@dataclass(frozen=True)
class Op:
    """One ``ops`` row; ``params`` parsed."""

    id: int
    kind: str
    state: str
    params: dict


def _op(row) -> Op:
    return Op(int(row[0]), row[1], row[2], json.loads(row[3] or "{}"))


def op(db: Db, op_id: int) -> Optional[Op]:
    row = _c(db).execute("SELECT id, kind, state, params FROM ops WHERE id=?", (op_id,)).fetchone()
    return None if row is None else _op(row)


def active_ops(db: Db, kind: Optional[str] = None) -> list[Op]:
    """Ops still planned or applying (left by a killed process), oldest first; only ``kind`` if given."""
    sql, args = "SELECT id, kind, state, params FROM ops WHERE state IN ('planned', 'applying')", []
    if kind is not None:
        sql, args = sql + " AND kind=?", [kind]
    return [_op(r) for r in _c(db).execute(sql + " ORDER BY id", args)]


def last_done_op(db: Db, kinds: Optional[Sequence[str]] = None) -> Optional[Op]:
    """The newest op in state 'done' that is not an undo (of one of ``kinds`` unless None), or None."""
    sql, args = "SELECT id, kind, state, params FROM ops WHERE state='done' AND kind != 'undo'", []
    if kinds is not None:
        sql += " AND kind IN (%s)" % ",".join("?" * len(kinds))
        args = list(kinds)
    row = _c(db).execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
    return None if row is None else _op(row)


def add_op(db: Db, kind: str) -> int:
    """A new op in state 'planned' (params '{}'); its id."""
    return int(_c(db).execute("INSERT INTO ops(kind, state, created, params) VALUES(?, 'planned', ?, ?)",
                              (kind, time.time(), "{}")).lastrowid)


def set_op_params(db: Db, op_id: int, params: dict) -> None:
    _c(db).execute("UPDATE ops SET params=? WHERE id=?", (json.dumps(params, sort_keys=True), op_id))


def set_op_state(db: Db, op_id: int, state: str) -> None:
    _c(db).execute("UPDATE ops SET state=? WHERE id=?", (state, op_id))


def add_journal_rows(db: Db, op_id: int, rows: Iterable[tuple]) -> None:
    """The op's moves ``(kind, ref_id, src, dst)`` as journal rows 0, 1, ... in state 'planned'
    (paths stored as raw OS bytes)."""
    _c(db).executemany(
        "INSERT INTO journal(op_id, seq, kind, ref_id, src, dst, state) VALUES(?,?,?,?,?,?, 'planned')",
        ((op_id, i, k, ref, os.fsencode(s), os.fsencode(d)) for i, (k, ref, s, d) in enumerate(rows)))


def journal_rows(db: Db, op_id: int) -> list[tuple[int, str, Optional[int], str, str, str]]:
    """(seq, kind, ref_id, src, dst, state) of the op's journal rows, by seq (paths decoded)."""
    return [(seq, kind, ref, os.fsdecode(bytes(s)), os.fsdecode(bytes(d)), st) for seq, kind, ref, s, d, st in
            _c(db).execute("SELECT seq, kind, ref_id, src, dst, state FROM journal WHERE op_id=? ORDER BY seq",
                           (op_id,))]


def mark_journal_rows(db: Db, op_id: int, marks: Iterable[tuple[int, str]]) -> None:
    """``marks``: (seq, new state) of the op's rows."""
    _c(db).executemany("UPDATE journal SET state=? WHERE op_id=? AND seq=?", [(st, op_id, seq) for seq, st in marks])


def thumbs_of_moved_sources(db: Db, path: bytes) -> list[Optional[int]]:
    """Thumb ids of the source at ``path`` and of the sources an 'original' journal row moved from or to it."""
    return [r[0] for r in _c(db).execute(
        "SELECT o.thumb_id FROM sources s JOIN originals o ON o.id=s.original_id "
        "WHERE s.path=? OR s.id IN (SELECT ref_id FROM journal WHERE kind='original' AND (src=? OR dst=?))",
        (path, path, path))]


def quarantine_dst(db: Db, source_id: int) -> Optional[bytes]:
    """Where the latest done quarantine move of a source put its file, or None."""
    return _one(db, "SELECT j.dst FROM journal j JOIN ops o ON o.id=j.op_id WHERE j.kind='original' AND j.ref_id=? "
                    "AND j.state='done' AND o.kind='quarantine' ORDER BY j.op_id DESC LIMIT 1", (source_id,))


# ============================================================================ review decisions
DECISION_COLS = ("id, uid, batch, group_key, kind, action, members, keeper_hash, keeper_path, member_hash,"
                 " member_path, created")


def add_decision(db: Db, d: dict) -> int:
    """Insert one decision (keys: DECISION_COLS but id) and its members; an ``uid`` already there
    (read back from a thumbnail) is left alone. Returns its id."""
    c = _c(db)
    cur = c.execute(
        "INSERT OR IGNORE INTO decisions(uid, batch, group_key, kind, action, members, keeper_hash, keeper_path,"
        " member_hash, member_path, created) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
        (d["uid"], d["batch"], d["group_key"], d["kind"], d["action"], json.dumps(sorted(d["members"])),
         d.get("keeper_hash"), d.get("keeper_path"), d.get("member_hash"), d.get("member_path"), d["created"]))
    if not cur.rowcount:
        return int(_one(db, "SELECT id FROM decisions WHERE uid=?", (d["uid"],)))
    did = int(cur.lastrowid)
    c.executemany("INSERT OR IGNORE INTO decision_members(content_hash, decision_id) VALUES(?, ?)",
                  ((h, did) for h in set(d["members"])))
    return did


def _decision(row) -> dict:
    d = dict(zip([x.strip() for x in DECISION_COLS.split(",")], tuple(row)))
    d["members"] = json.loads(d["members"])
    return d


def decisions(db: Db, action: Optional[str] = None) -> list[dict]:
    """Every decision in force (of one action), oldest first, as dicts (paths raw bytes)."""
    where, args = ("WHERE action=?", (action,)) if action else ("", ())
    return [_decision(r) for r in _c(db).execute(f"SELECT {DECISION_COLS} FROM decisions {where} ORDER BY id", args)]


def decision(db: Db, decision_id: int) -> Optional[dict]:
    row = _c(db).execute(f"SELECT {DECISION_COLS} FROM decisions WHERE id=?", (decision_id,)).fetchone()
    return _decision(row) if row else None


def decisions_of_hashes(db: Db, hashes: Iterable[str], *, kept_only: bool = True) -> list[dict]:
    """Decisions about any of these originals (by content hash), oldest first; ``kept_only``:
    those a thumbnail carries (not 'skip')."""
    ids = {r[0] for r in _in_chunks(db, "SELECT decision_id FROM decision_members WHERE content_hash IN (%s)",
                                    hashes)}
    out = [_decision(r) for r in _in_chunks(db, f"SELECT {DECISION_COLS} FROM decisions WHERE id IN (%s)", ids)]
    return sorted((d for d in out if not kept_only or d["action"] != "skip"), key=lambda d: d["id"])


def last_decision_batch(db: Db) -> list[dict]:
    """The decisions of the latest batch (what one undo reverts), or []."""
    b = _one(db, "SELECT batch FROM decisions ORDER BY id DESC LIMIT 1")
    if b is None:
        return []
    return [_decision(r) for r in _c(db).execute(
        f"SELECT {DECISION_COLS} FROM decisions WHERE batch=? ORDER BY id", (b,))]


def next_decision_batch(db: Db) -> int:
    return int(_one(db, "SELECT coalesce(max(batch), 0) + 1 FROM decisions"))


def delete_decisions(db: Db, ids: Sequence[int]) -> None:
    _c(db).executemany("DELETE FROM decision_members WHERE decision_id=?", ((i,) for i in ids))
    _c(db).executemany("DELETE FROM decisions WHERE id=?", ((i,) for i in ids))


def count_decisions(db: Db) -> int:
    return _one(db, "SELECT count(*) FROM decisions")


def thumbs_of_hashes(db: Db, hashes: Iterable[str]) -> set[int]:
    """Thumbnail ids of the originals with these content hashes."""
    return {r[0] for r in _in_chunks(db, "SELECT thumb_id FROM originals WHERE content_hash IN (%s)", hashes)
            if r[0] is not None}


# ============================================================================ stored dupes groups (review pages them)
def library_state(db: Db) -> list:
    """A cheap fingerprint of what dupes reads (sources and their status, originals, thumbnails,
    embeddings): the stored groups are stale when it changed. Plain lists (JSON). Decisions are
    not in it: deciding updates the stored groups in place."""
    c = _c(db)
    sqls = ["SELECT count(*), coalesce(max(id), 0), coalesce(sum(size), 0), coalesce(sum(mtime_ns % 1000000007), 0)"
            " FROM sources WHERE status IN ('ok', 'quarantined')",
            "SELECT status, count(*) FROM sources GROUP BY status ORDER BY status",
            "SELECT count(*), coalesce(max(id), 0) FROM originals",
            "SELECT count(*), coalesce(max(id), 0) FROM thumbs",
            "SELECT model_id, count(*), coalesce(max(row), 0) FROM embeddings GROUP BY model_id ORDER BY model_id"]
    return [[list(r) for r in c.execute(q).fetchall()] for q in sqls]


def clear_groups(db: Db) -> None:
    _c(db).execute("DELETE FROM dupe_members")
    _c(db).execute("DELETE FROM dupe_groups")


def add_group(db: Db, g: dict) -> int:
    """One stored group (keys: key, kind, relation, keeper_source_id, suggested_source_id,
    reclaimable_bytes, size, differs, decision_id); its id."""
    cur = _c(db).execute(
        "INSERT INTO dupe_groups(key, kind, relation, keeper_source_id, suggested_source_id, reclaimable_bytes,"
        " size, differs, decision_id) VALUES(?,?,?,?,?,?,?,?,?)",
        (g["key"], g["kind"], g.get("relation"), g["keeper_source_id"], g["suggested_source_id"],
         g["reclaimable_bytes"], g["size"], json.dumps(g.get("differs") or []), g.get("decision_id")))
    return int(cur.lastrowid)


def add_group_members(db: Db, rows: Iterable[tuple]) -> None:
    """(group id, pos, source id, thumb id, content hash, info dict) rows."""
    _c(db).executemany(
        "INSERT INTO dupe_members(group_id, pos, source_id, thumb_id, content_hash, info) VALUES(?,?,?,?,?,?)",
        ((g, p, s, t, h, json.dumps(info, sort_keys=True)) for g, p, s, t, h, info in rows))


GROUP_COLS = ("id, key, kind, relation, keeper_source_id, suggested_source_id, reclaimable_bytes, size, differs,"
              " decision_id")


def _group(row) -> dict:
    g = dict(zip([x.strip() for x in GROUP_COLS.split(",")], tuple(row)))
    g["differs"] = json.loads(g["differs"] or "[]")
    return g


def count_groups(db: Db, kind: Optional[str] = None, pending_only: bool = False) -> int:
    where, args = _group_where(kind, pending_only)
    return _one(db, f"SELECT count(*) FROM dupe_groups {where}", args)


def _group_where(kind: Optional[str], pending_only: bool, relation: Optional[str] = None) -> tuple[str, tuple]:
    conds, args = [], []
    if kind:
        conds.append("kind=?")
        args.append(kind)
    if relation:
        conds.append("relation=?")
        args.append(relation)
    if pending_only:
        conds.append("decision_id IS NULL")
    return ("WHERE " + " AND ".join(conds)) if conds else "", tuple(args)


def groups_page(db: Db, kind: Optional[str], offset: int, limit: int, pending_only: bool) -> list[dict]:
    """Stored groups worst first (most reclaimable bytes, then id), ``limit`` from ``offset``."""
    where, args = _group_where(kind, pending_only)
    return [_group(r) for r in _c(db).execute(
        f"SELECT {GROUP_COLS} FROM dupe_groups {where} ORDER BY reclaimable_bytes DESC, id LIMIT ? OFFSET ?",
        (*args, int(limit), int(offset)))]


def group_ids(db: Db, kind: Optional[str] = None, pending_only: bool = False,
              relation: Optional[str] = None) -> list[int]:
    where, args = _group_where(kind, pending_only, relation)
    return [r[0] for r in _c(db).execute(f"SELECT id FROM dupe_groups {where} ORDER BY reclaimable_bytes DESC, id",
                                         args)]


def stored_group(db: Db, group_id: int) -> Optional[dict]:
    row = _c(db).execute(f"SELECT {GROUP_COLS} FROM dupe_groups WHERE id=?", (group_id,)).fetchone()
    return _group(row) if row else None


def groups_by_key(db: Db, keys: Iterable[str]) -> list[dict]:
    return [_group(r) for r in _in_chunks(db, f"SELECT {GROUP_COLS} FROM dupe_groups WHERE key IN (%s)", keys)]


def groups_decided(db: Db, decision_ids: Iterable[int]) -> list[dict]:
    return [_group(r) for r in _in_chunks(db, f"SELECT {GROUP_COLS} FROM dupe_groups WHERE decision_id IN (%s)",
                                          decision_ids)]


def group_members(db: Db, group_ids: Iterable[int], *, with_split: bool = False) -> dict[int, list[dict]]:
    """{group id: its members in order}: the stored info plus source_id, thumb_id, content_hash,
    split_by, ``thumb`` (the thumbnail's relpath now) and ``status`` (the source's, now)."""
    out: dict[int, list[dict]] = {}
    split = "" if with_split else " AND m.split_by IS NULL"
    for gid, _pos, sid, tid, h, info, sb, rel, status in _in_chunks(
            db, "SELECT m.group_id, m.pos, m.source_id, m.thumb_id, m.content_hash, m.info, m.split_by, t.relpath,"
                " s.status FROM dupe_members m LEFT JOIN thumbs t ON t.id = m.thumb_id"
                " LEFT JOIN sources s ON s.id = m.source_id"
                f" WHERE m.group_id IN (%s){split} ORDER BY m.group_id, m.pos", group_ids):
        d = json.loads(info)
        d.update(source_id=sid, thumb_id=tid, content_hash=h, split_by=sb, thumb=rel, status=status)
        out.setdefault(gid, []).append(d)
    return out


def update_group(db: Db, group_id: int, **fields) -> None:
    """Set some columns of one stored group (``differs`` a list)."""
    if "differs" in fields:
        fields["differs"] = json.dumps(fields["differs"])
    cols = ", ".join(f"{k}=?" for k in fields)
    _c(db).execute(f"UPDATE dupe_groups SET {cols} WHERE id=?", (*fields.values(), group_id))


def set_groups_decision(db: Db, group_ids: Iterable[int], decision_id: Optional[int]) -> None:
    _c(db).executemany("UPDATE dupe_groups SET decision_id=? WHERE id=?", ((decision_id, g) for g in group_ids))


def set_member_split(db: Db, group_id: int, source_id: int, decision_id: Optional[int]) -> None:
    _c(db).execute("UPDATE dupe_members SET split_by=? WHERE group_id=? AND source_id=?",
                   (decision_id, group_id, source_id))


def unsplit_members(db: Db, decision_ids: Iterable[int]) -> list[int]:
    """Members split off by these decisions come back; the group ids concerned."""
    ids = list(decision_ids)
    gids = sorted({r[0] for r in _in_chunks(db, "SELECT group_id FROM dupe_members WHERE split_by IN (%s)", ids)})
    _c(db).executemany("UPDATE dupe_members SET split_by=NULL WHERE split_by=?", ((i,) for i in ids))
    return gids
