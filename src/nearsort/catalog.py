"""The catalog: one SQLite file inside THUMBS, the single source of truth for state.

Layout inside THUMBS::

    THUMBS/.nearsort/catalog.sqlite   the catalog (WAL mode)
    THUMBS/.nearsort/lock             held (flock) by the one process that writes
    THUMBS/.nearsort/...              vectors, indexes (see index.py)

Everything the catalog knows about *sources* is also written into the thumbnails
themselves (see thumbmeta.py), so ``nearsort rebuild`` can recreate it.

Schema (version 1):

* ``originals``  one row per distinct original *content* (byte-identical files share it)
* ``sources``    one row per source path seen under SRC (ok / error / missing / quarantined)
* ``thumbs``     one row per thumbnail file; several originals may share one thumbnail
                 when they have the same ``{W}x{H}_{phash}`` name ("copies collapse by name")
* ``models`` / ``embeddings`` / ``labels``   vectors live outside SQLite (index.py); these map them
* ``ranks``      per-order rank of each thumbnail (analyze)
* ``tags``       user folder names harvested as tags (refresh)
* ``ops`` / ``journal``   planned-then-applied file moves (refresh, quarantine), for undo/recovery
* ``runs``       one row per command run, with its JSON summary
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STATE_DIR = ".nearsort"
CATALOG_NAME = "catalog.sqlite"
LOCK_NAME = "lock"


class CatalogError(RuntimeError):
    """A problem a user must see as a clear message (not a traceback)."""


class CatalogLocked(CatalogError):
    pass


# Each migration brings the schema from version i to i+1. Append, never edit.
MIGRATIONS: list[str] = [
    # ---- v1
    """
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);

    CREATE TABLE thumbs(
        id          INTEGER PRIMARY KEY,
        name        TEXT NOT NULL UNIQUE,      -- '{W}x{H}_{phash}' (no rank prefix, no extension)
        relpath     TEXT NOT NULL,             -- where it is now, relative to THUMBS, '/'-separated
        tw          INTEGER, th INTEGER,       -- thumbnail pixel size
        brightness  REAL,                      -- mean luma 0..255
        contrast    REAL,                      -- std of luma
        blur        REAL,                      -- variance of Laplacian (low = blurry)
        rank        INTEGER,                   -- position in the last applied order (refresh)
        created_ns  INTEGER
    );
    CREATE INDEX thumbs_relpath ON thumbs(relpath);

    CREATE TABLE originals(
        id            INTEGER PRIMARY KEY,
        content_hash  TEXT NOT NULL UNIQUE,    -- sha256 hex of the file bytes
        thumb_id      INTEGER REFERENCES thumbs(id),
        width         INTEGER, height INTEGER, -- pixel size of the original (after EXIF rotation)
        format        TEXT,
        bytes         INTEGER,
        phash         TEXT,                    -- 64-bit DCT perceptual hash, 16 hex digits
        capture_time  TEXT,                    -- EXIF DateTimeOriginal, ISO 8601, or NULL
        make          TEXT, model TEXT,
        gps_lat       REAL, gps_lon REAL,
        exif_json     TEXT                     -- selected EXIF tags as JSON
    );
    CREATE INDEX originals_thumb ON originals(thumb_id);

    CREATE TABLE sources(
        id           INTEGER PRIMARY KEY,
        path         BLOB NOT NULL UNIQUE,     -- absolute path, raw OS bytes (any encoding)
        original_id  INTEGER REFERENCES originals(id),
        size         INTEGER,
        mtime_ns     INTEGER,
        status       TEXT NOT NULL,            -- ok | error | missing | quarantined
        error        TEXT,                     -- reason, when status = error
        last_run     INTEGER
    );
    CREATE INDEX sources_original ON sources(original_id);
    CREATE INDEX sources_status ON sources(status);

    CREATE TABLE runs(
        id        INTEGER PRIMARY KEY,
        command   TEXT NOT NULL,
        started   REAL NOT NULL,
        finished  REAL,
        status    TEXT NOT NULL DEFAULT 'running',   -- running | done | interrupted | failed
        summary   TEXT
    );

    CREATE TABLE models(
        id    INTEGER PRIMARY KEY,
        name  TEXT NOT NULL UNIQUE,   -- registry name, e.g. 'efficientnet-lite0' or 'clip:ViT-B-32/laion2b_s34b_b79k'
        dim   INTEGER NOT NULL,
        info  TEXT                    -- JSON: weights file/hash, preprocessing, index parameters
    );
    CREATE TABLE embeddings(
        model_id  INTEGER NOT NULL REFERENCES models(id),
        thumb_id  INTEGER NOT NULL REFERENCES thumbs(id),
        row       INTEGER NOT NULL,   -- row in the model's vector store file
        PRIMARY KEY(model_id, thumb_id)
    );
    CREATE UNIQUE INDEX embeddings_row ON embeddings(model_id, row);
    CREATE TABLE labels(              -- top ImageNet classes per thumbnail (CNN label search)
        model_id  INTEGER NOT NULL REFERENCES models(id),
        thumb_id  INTEGER NOT NULL REFERENCES thumbs(id),
        label     INTEGER NOT NULL,
        prob      REAL NOT NULL,
        PRIMARY KEY(model_id, thumb_id, label)
    );
    CREATE INDEX labels_label ON labels(model_id, label, prob);

    CREATE TABLE ranks(
        ordering  TEXT NOT NULL,      -- e.g. 'similarity:efficientnet-lite0', 'date', 'phash'
        thumb_id  INTEGER NOT NULL REFERENCES thumbs(id),
        rank      INTEGER NOT NULL,
        jump      REAL,               -- distance from the previous thumbnail in the chain
        PRIMARY KEY(ordering, thumb_id)
    );
    CREATE INDEX ranks_rank ON ranks(ordering, rank);

    CREATE TABLE tags(
        thumb_id  INTEGER NOT NULL REFERENCES thumbs(id),
        tag       TEXT NOT NULL,
        origin    TEXT NOT NULL DEFAULT 'folder',
        PRIMARY KEY(thumb_id, tag)
    );

    CREATE TABLE ops(
        id        INTEGER PRIMARY KEY,
        kind      TEXT NOT NULL,      -- refresh | reset | quarantine | undo
        state     TEXT NOT NULL,      -- planned | applying | done | rolled_back | undone
        created   REAL NOT NULL,
        params    TEXT
    );
    CREATE TABLE journal(
        op_id     INTEGER NOT NULL REFERENCES ops(id),
        seq       INTEGER NOT NULL,
        kind      TEXT NOT NULL,      -- thumb | original
        ref_id    INTEGER,            -- thumbs.id or sources.id
        src       BLOB NOT NULL,
        dst       BLOB NOT NULL,
        state     TEXT NOT NULL,      -- planned | done
        PRIMARY KEY(op_id, seq)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def state_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR


def catalog_path(root: Path) -> Path:
    return state_dir(root) / CATALOG_NAME


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; return the version found before."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > SCHEMA_VERSION:
        raise CatalogError(
            f"this catalog has schema version {found}, newer than this nearsort understands "
            f"({SCHEMA_VERSION}); upgrade nearsort"
        )
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _split_sql(MIGRATIONS[version]):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def _split_sql(script: str) -> list[str]:
    out, buf = [], []
    for line in script.splitlines():
        line = line.split("--", 1)[0]
        buf.append(line)
        joined = "\n".join(buf)
        if sqlite3.complete_statement(joined):
            if joined.strip():
                out.append(joined.strip())
            buf = []
    rest = "\n".join(buf).strip()
    if rest:
        out.append(rest)
    return out


class _Lock:
    """An exclusive advisory lock on THUMBS/.nearsort/lock (released by the OS if we die)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def acquire(self) -> None:
        self.fh = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            try:
                msvcrt.locking(self.fh.fileno(), msvcrt.LK_NBLCK, 1)
            except OSError:
                self._refuse()
        except OSError:
            self._refuse()
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"{os.getpid()}\n")
        self.fh.flush()

    def _refuse(self) -> None:
        self.fh.seek(0)
        holder = self.fh.read().strip() or "?"
        self.fh.close()
        self.fh = None
        raise CatalogLocked(
            f"another nearsort process (pid {holder}) is working on {self.path.parent.parent}; "
            "wait for it to finish (only one writer at a time keeps the catalog safe)"
        )

    def release(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None


class Catalog:
    """Thin wrapper over the sqlite connection. Use ``Catalog.open(root)`` as a context manager.

    ``write=True`` (default) takes the exclusive lock; readers (search, export) pass
    ``write=False`` and can run beside a writer thanks to WAL.
    """

    def __init__(self, root: Path, conn: sqlite3.Connection, lock: _Lock | None):
        self.root = Path(root)
        self.conn = conn
        self._lock = lock

    # -- opening
    @classmethod
    def open(cls, root: str | os.PathLike, *, write: bool = True, create: bool = False) -> "Catalog":
        root = Path(root)
        sdir = state_dir(root)
        cpath = sdir / CATALOG_NAME
        if not cpath.exists() and not create:
            raise CatalogError(
                f"{root} has no nearsort catalog ({cpath} not found); run `nearsort resize SRC --out {root}` "
                f"first, or `nearsort rebuild {root}` if it holds thumbnails"
            )
        lock = None
        if write or create:
            sdir.mkdir(parents=True, exist_ok=True)
            lock = _Lock(sdir / LOCK_NAME)
            lock.acquire()
        try:
            conn = _connect(cpath)
            if write or create:
                migrate(conn)
            else:
                v = conn.execute("PRAGMA user_version").fetchone()[0]
                if v != SCHEMA_VERSION:
                    raise CatalogError(
                        f"catalog schema is version {v}, expected {SCHEMA_VERSION}; "
                        "run any writing command (e.g. `nearsort resize`) once to migrate it"
                    )
        except BaseException:
            if lock:
                lock.release()
            raise
        return cls(root, conn, lock)

    def close(self) -> None:
        try:
            self.conn.close()
        finally:
            if self._lock:
                self._lock.release()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- transactions
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``with cat.tx() as c: ...`` -- one IMMEDIATE transaction, rolled back on any error."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        return self.conn.execute(sql, params)

    # -- meta
    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    # -- runs
    def start_run(self, command: str) -> int:
        cur = self.conn.execute("INSERT INTO runs(command, started) VALUES(?, ?)", (command, time.time()))
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, summary: str | None = None) -> None:
        self.conn.execute(
            "UPDATE runs SET finished=?, status=?, summary=? WHERE id=?", (time.time(), status, summary, run_id)
        )

    # -- common lookups used across modules
    def thumb_abspath(self, relpath: str) -> Path:
        return self.root / relpath

    def find_model(self, name: str | None = None):
        """``models`` row (id, name, dim, info) of ``name``, or of the newest model that has
        embeddings when ``name`` is None (then None if there is none). Unknown names raise."""
        if name:
            row = self.conn.execute("SELECT id, name, dim, info FROM models WHERE name=?", (name,)).fetchone()
            if row is None:
                known = [r[0] for r in self.conn.execute("SELECT name FROM models")]
                raise CatalogError(f"no embeddings for model {name!r} (have: {', '.join(known) or 'none'}); "
                                   f"run `nearsort featurize {self.root} --model {name}`")
            return row
        return self.conn.execute(
            "SELECT m.id, m.name, m.dim, m.info FROM models m WHERE EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.model_id=m.id) ORDER BY m.id DESC LIMIT 1").fetchone()

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        return {
            "sources": q("SELECT count(*) FROM sources").fetchone()[0],
            "sources_ok": q("SELECT count(*) FROM sources WHERE status='ok'").fetchone()[0],
            "errors": q("SELECT count(*) FROM sources WHERE status='error'").fetchone()[0],
            "originals": q("SELECT count(*) FROM originals").fetchone()[0],
            "thumbs": q("SELECT count(*) FROM thumbs").fetchone()[0],
        }
