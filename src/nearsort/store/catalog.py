"""The catalog: one SQLite file inside THUMBS (``.nearsort/catalog.sqlite``, WAL), the single source
of truth for state.

This module owns the schema, migrations, connection, lock and transactions; every query of the
data is a named function in ``queries.py``. One writer at a time (``flock`` on ``.nearsort/lock``);
the schema only grows by appending to ``MIGRATIONS``; everything the catalog knows about sources is
also carried by the thumbnails (thumbmeta), so ``nearsort rebuild`` can recreate it. Tables and
state values: docs/design.md, "store".
"""
from __future__ import annotations

import errno
import os
import sqlite3
import struct
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from nearsort.errors import CatalogDamaged, CatalogError, CatalogLocked, DiskFull  # noqa: F401  (DiskFull re-exported)

STATE_DIR = ".nearsort"
CATALOG_NAME = "catalog.sqlite"
LOCK_NAME = "lock"


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
        state     TEXT NOT NULL,      -- planned | applying | done | undone
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
        state     TEXT NOT NULL,      -- planned | done | skipped
        PRIMARY KEY(op_id, seq)
    );
    """,
    # ---- v2: review decisions, and the stored result of the last dupes (the groups review pages)
    """
    CREATE TABLE decisions(
        id          INTEGER PRIMARY KEY,
        uid         TEXT NOT NULL UNIQUE,     -- random id: the same decision read back from thumbnails (rebuild)
        batch       INTEGER NOT NULL,         -- decisions made together (accept_all): one undo
        group_key   TEXT NOT NULL,            -- dupe_groups.key of the group decided on
        kind        TEXT NOT NULL,            -- copies | similar | shot
        action      TEXT NOT NULL,            -- accept | distinct | skip
        members     TEXT NOT NULL,            -- JSON: the group's sorted content hashes, when decided
        keeper_hash TEXT,                     -- accept: the keeper's content hash ...
        keeper_path BLOB,                     -- ... and path (raw OS bytes: byte-identical copies differ by path)
        member_hash TEXT,                     -- distinct with one member split off: its content hash
        member_path BLOB,
        created     REAL NOT NULL
    );
    CREATE INDEX decisions_key ON decisions(group_key);
    CREATE TABLE decision_members(           -- which originals a decision is about (thumbnails carry it)
        content_hash  TEXT NOT NULL,
        decision_id   INTEGER NOT NULL REFERENCES decisions(id) ON DELETE CASCADE,
        PRIMARY KEY(content_hash, decision_id)
    );

    CREATE TABLE dupe_groups(
        id                INTEGER PRIMARY KEY,
        key               TEXT NOT NULL,      -- sha256 of the members' sorted content hashes
        kind              TEXT NOT NULL,      -- copies | similar | shot
        relation          TEXT,               -- copies: exact | perceptual | near (dupes' kind); similar: shot
        keeper_source_id  INTEGER,            -- the keeper in force (a decision's, else the suggested one)
        suggested_source_id INTEGER,          -- the keeper dupes suggests
        reclaimable_bytes INTEGER NOT NULL,
        size              INTEGER NOT NULL,
        differs           TEXT,               -- JSON: member fields that differ
        decision_id       INTEGER             -- decisions.id in force on this group, or NULL (pending)
    );
    CREATE INDEX dupe_groups_page ON dupe_groups(kind, reclaimable_bytes DESC, id);
    CREATE INDEX dupe_groups_key ON dupe_groups(key);

    CREATE TABLE dupe_members(
        group_id      INTEGER NOT NULL REFERENCES dupe_groups(id),
        pos           INTEGER NOT NULL,       -- keeper first, then in keeper order
        source_id     INTEGER NOT NULL,
        thumb_id      INTEGER,
        content_hash  TEXT NOT NULL,
        info          TEXT NOT NULL,          -- JSON: path, width, height, bytes, format, dates, camera, relation
        split_by      INTEGER,                -- decisions.id that split this member off the group, or NULL
        PRIMARY KEY(group_id, pos)
    );
    CREATE INDEX dupe_members_source ON dupe_members(source_id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def state_dir(root: Path) -> Path:
    return Path(root) / STATE_DIR


def catalog_path(root: Path) -> Path:
    return state_dir(root) / CATALOG_NAME


_SQLITE_HEADER = b"SQLite format 3\x00"
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


def is_disk_full(exc: BaseException, where=None) -> bool:
    """True for 'no space left' from the OS (ENOSPC, EDQUOT) or from SQLite (SQLITE_FULL; and an
    SQLite I/O error while the disk holding ``where`` is full: SQLite reports a -shm or -wal it
    cannot grow that way)."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if (code == _SQLITE_FULL) if code is not None else "database or disk is full" in str(exc):
            return True
        io_error = (code & 0xFF) == _SQLITE_IOERR if code is not None else "disk I/O error" in str(exc)
        return io_error and where is not None and _nearly_full(where)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _nearly_full(where) -> bool:
    try:
        st = os.statvfs(where)
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < 1 << 20


def is_damage(exc: BaseException) -> bool:
    """True for SQLite errors that mean the database file itself is corrupt or not a database."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    msg = str(exc)
    return "malformed" in msg or "not a database" in msg


def file_damage(cpath: Path) -> str | None:
    """Why the catalog file at ``cpath`` cannot be a healthy catalog (cheap checks only), or None.

    Zero bytes, a header that is not SQLite's, or a file shorter than its header says (truncated).
    With a non-empty -wal beside it the newest pages may live there, so size is not judged."""
    try:
        size = cpath.stat().st_size
        with open(cpath, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    try:
        wal = Path(str(cpath) + "-wal").stat().st_size
    except OSError:
        wal = 0
    if size == 0:
        return None if wal else "empty file (0 bytes)"
    if not head.startswith(_SQLITE_HEADER[: len(head)]) or len(head) < 100:
        return "not an SQLite database: unexpected bytes in its header" if len(head) >= 16 else \
            f"truncated to {size} bytes"
    page_size = struct.unpack(">H", head[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    change, pages, valid_for = (struct.unpack(">I", head[i : i + 4])[0] for i in (24, 28, 92))
    if not wal and pages and change == valid_for and size < pages * page_size:
        return f"truncated: {size} of {pages * page_size} bytes"
    return None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def check_thumbs_folder(root: Path) -> None:
    """Refuse a THUMBS that exists but is not a folder (one clear line instead of an OS error)."""
    if os.path.lexists(root) and not os.path.isdir(root):
        raise CatalogError(f"THUMBS {root} is a file, not a folder: give the folder that holds (or will hold) "
                           "the thumbnails")


def _connect_checked(root: Path, cpath: Path) -> sqlite3.Connection:
    try:
        return _connect(cpath)
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            raise CatalogDamaged(root, str(e), cpath) from None
        raise


def _create(cpath: Path) -> None:
    """A new catalog, made whole under a temporary name and then renamed into place, so a kill
    (or a full disk) never leaves an empty or half-made catalog.sqlite behind."""
    tmp = cpath.with_name(cpath.name + ".new")
    for leftover in (tmp, Path(str(tmp) + "-journal")):
        if leftover.exists():
            leftover.unlink()
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        migrate(conn)
        conn.close()
        for orphan in ("-wal", "-shm"):  # of a catalog file that is gone: SQLite must not apply it to this one
            if os.path.lexists(str(cpath) + orphan):
                os.unlink(str(cpath) + orphan)
        os.replace(tmp, cpath)
    except BaseException:
        conn.close()
        for leftover in (tmp, Path(str(tmp) + "-journal")):
            if leftover.exists():
                leftover.unlink()
        raise


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


_HELD_LOCKS: "weakref.WeakSet[_Lock]" = weakref.WeakSet()


def _drop_inherited_locks() -> None:
    """In a forked child: close its copy of every lock fd. flock belongs to the open file, so a
    child holding a copy (a decoder worker) would keep THUMBS locked after its parent was killed;
    closing the copy (never LOCK_UN, which would unlock the parent too) leaves the parent's lock."""
    for lock in list(_HELD_LOCKS):
        fh, lock.fh = lock.fh, None
        if fh is not None:
            try:
                fh.close()
            except OSError:
                pass
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def _lock_holders(path: Path) -> list[int]:
    """Pids of live processes that have ``path`` open (Linux /proc; [] elsewhere)."""
    out = []
    try:
        target = os.stat(path)
        procs = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return out
    for pid in procs:
        if int(pid) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                out.append(int(pid))
                break
    return out


class _Lock:
    """An exclusive advisory lock (flock) on THUMBS/.nearsort/lock, which also names the holder's pid.

    The kernel releases it when the holder dies, so a lock left by a killed run is simply taken
    over; forked children never keep it (``_drop_inherited_locks``)."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def acquire(self) -> None:
        self.fh = open(self.path, "a+")
        _HELD_LOCKS.add(self)
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
        named = self.fh.read().strip()
        self.release()
        where = self.path.parent.parent
        pid = int(named) if named.isdigit() else None
        if pid is not None and _pid_alive(pid):
            raise CatalogLocked(
                f"another nearsort process (pid {pid}) is working on {where}; "
                "wait for it to finish (only one writer at a time keeps the catalog safe)"
            )
        # the pid in the file is gone: the lock is held by a process that inherited it
        holders = [h for h in _lock_holders(self.path) if h != pid]
        who = f"pid {', '.join(map(str, holders))}" if holders else "a process that inherited it"
        raise CatalogLocked(
            f"{self.path} is held by {who}, left over from nearsort pid {named or '?'} which is no longer "
            f"running; stop {'it (kill ' + ' '.join(map(str, holders)) + ')' if holders else 'that process'} "
            f"and run the command again"
        )

    def release(self) -> None:
        _HELD_LOCKS.discard(self)
        if self.fh is not None:
            self.fh.close()
            self.fh = None


@contextmanager
def writer_lock(root: Path) -> Iterator[_Lock]:
    """Hold THUMBS' writer lock without opening the catalog (which may be damaged): rebuild."""
    check_thumbs_folder(Path(root))
    sdir = state_dir(Path(root))
    sdir.mkdir(parents=True, exist_ok=True)
    lock = _Lock(sdir / LOCK_NAME)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def damage(cpath: Path) -> str | None:
    """Why the catalog file is damaged, or None if SQLite finds it sound (reads all of it: rebuild)."""
    why = file_damage(cpath)
    if why or not cpath.exists():
        return why
    try:
        conn = sqlite3.connect(str(cpath), timeout=30.0)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
                return "no nearsort tables in it"
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        if is_damage(e):
            return str(e)
        raise
    return None if rows == ["ok"] else "; ".join(rows)


class Catalog:
    """Thin wrapper over the sqlite connection. Use ``Catalog.open(root)`` as a context manager.

    ``write=True`` (default) takes the exclusive lock; readers (search, export) pass
    ``write=False`` and can run beside a writer thanks to WAL.
    """

    last_root: Path | None = None  # THUMBS of the latest open(), to name it in error messages

    def __init__(self, root: Path, conn: sqlite3.Connection, lock: _Lock | None, writable: bool = True):
        self.root = Path(root)
        self.conn = conn
        self._lock = lock
        self.writable = writable  # opened to write (holds the writer lock, or the caller's)

    # -- opening
    @classmethod
    def open(cls, root: str | os.PathLike, *, write: bool = True, create: bool = False,
             lock: _Lock | None = None) -> "Catalog":
        """Open THUMBS' catalog. ``lock``: an already held ``_Lock`` to use (and not release)."""
        root = Path(root)
        Catalog.last_root = root
        check_thumbs_folder(root)
        sdir = state_dir(root)
        cpath = sdir / CATALOG_NAME
        if not cpath.exists() and not create:
            raise CatalogError(
                f"{root} has no nearsort catalog ({cpath} not found); run `nearsort resize SRC --out {root}` "
                f"first, or `nearsort rebuild {root}` if it holds thumbnails"
            )
        own = None
        if (write or create) and lock is None:
            sdir.mkdir(parents=True, exist_ok=True)
            own = _Lock(sdir / LOCK_NAME)
            own.acquire()
        try:
            why = file_damage(cpath)
            if why:
                raise CatalogDamaged(root, why, cpath)
            if not cpath.exists():
                _create(cpath)
            conn = _connect_checked(root, cpath)
            try:
                v = conn.execute("PRAGMA user_version").fetchone()[0]
                if v == 0:  # _create() never leaves a catalog without its schema
                    raise CatalogDamaged(root, "no nearsort tables in it", cpath)
                if write or create:
                    migrate(conn)
                elif v != SCHEMA_VERSION:
                    raise CatalogError(
                        f"catalog schema is version {v}, expected {SCHEMA_VERSION}; "
                        "run any writing command (e.g. `nearsort resize`) once to migrate it"
                    )
            except sqlite3.DatabaseError as e:
                conn.close()
                if is_damage(e):
                    raise CatalogDamaged(root, str(e), cpath) from None
                raise
            except BaseException:
                conn.close()
                raise
        except BaseException:
            if own:
                own.release()
            raise
        return cls(root, conn, own, writable=write or create)

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
    def begin(self) -> None:
        """Open one IMMEDIATE (writing) transaction; end it with :meth:`commit` or :meth:`rollback`.
        For writers that commit in batches of their own making (resize); others use :meth:`tx`."""
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.execute("ROLLBACK")

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """``with cat.tx() as c: ...`` -- one IMMEDIATE transaction, rolled back on any error."""
        self.begin()
        try:
            yield self.conn
        except BaseException:
            self.rollback()
            raise
        else:
            self.commit()

    def execute(self, sql: str, params=()) -> sqlite3.Cursor:
        """Raw SQL, for tests and benches; the library's own queries are in ``store/queries.py``."""
        return self.conn.execute(sql, params)

    def thumb_abspath(self, relpath: str) -> Path:
        return self.root / relpath


Thumbs = Union[Catalog, str, os.PathLike]  # a stage's THUMBS argument: the folder, or an open Catalog


@contextmanager
def open_catalog(thumbs: Thumbs, *, write: bool) -> Iterator[Catalog]:
    """The catalog of ``thumbs``: a Catalog is used as it is and left open; a THUMBS path is opened
    here (``write``: with the writer lock) and closed. A stage that writes refuses a Catalog
    opened with ``write=False`` (it does not hold the lock)."""
    if isinstance(thumbs, Catalog):
        if write and not thumbs.writable:
            raise CatalogError(f"this stage writes to the catalog of {thumbs.root}: open it with "
                               "Catalog.open(THUMBS) (write=True, the default), or pass the THUMBS path")
        yield thumbs
        return
    with Catalog.open(thumbs, write=write) as cat:
        yield cat
