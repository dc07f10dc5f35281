"""Planned, journaled, recoverable file moves (the ``ops`` / ``journal`` tables).

Every move is journaled before it happens and never overwrites; an op killed at any instant is
finished by :func:`recover` (roll forward, each row decided from the filesystem); :func:`undo_last`
reverts one op at a time, as a journaled op itself. The journal knows no kinds: a row's ``kind``
names a :class:`Kind` that the module owning those files registers on import (refresh: ``thumb``,
dupes.quarantine: ``original``); whoever recovers or undoes imports the modules of the kinds it may
meet. A kind nobody registered is refused before anything moves; ``recover(kinds=...)`` finishes
only the ops it can handle. How and why: docs/design.md, "refresh".
"""
from __future__ import annotations

import errno
import filecmp
import os
import posixpath
import shutil
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from nearsort.errors import RefreshError
from nearsort.fsio import fsync_dir
from nearsort.store import queries
from nearsort.store.catalog import Catalog

Progress = Optional[Callable[[int, int], None]]

MARK_EVERY = 512        # journal marks per transaction while applying
MARK_SECONDS = 1.0
ACTIVE_STATES = ("planned", "applying")


def _resolve_default(cat: Catalog, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(cat.root, path)


@dataclass(frozen=True)
class Kind:
    """How journal rows of one ``journal.kind`` are handled.

    ``resolve(cat, path)``: journal path -> filesystem path. ``moved(cat, ref_id, path)``: update
    the catalog now that the item lives at ``path`` (called inside a transaction, idempotent).
    ``cleanup(cat, vacated_paths)``: after the op finished (e.g. remove folders left empty).
    ``check(guard, src)``: just before a row moves, when the op's params hold a guard for its
    ref_id (``params["guards"][str(ref_id)]``): a reason not to move it, or None.
    ``before_undo(cat)``: bring the catalog up to date with where the files are now, before an
    undo plans its reverse moves.
    """

    resolve: Callable[[Catalog, str], str] = _resolve_default
    moved: Optional[Callable[[Catalog, Optional[int], str], None]] = None
    cleanup: Optional[Callable[[Catalog, list], None]] = None
    check: Optional[Callable[[list, str], Optional[str]]] = None
    before_undo: Optional[Callable[[Catalog], None]] = None


KINDS: dict[str, Kind] = {}


def register_kind(name: str, resolve=None, moved=None, cleanup=None, check=None, before_undo=None) -> None:
    """Register the handling of journal rows of kind ``name``. The module that owns those files
    calls it on import (refresh: 'thumb', dupes.quarantine: 'original'); whoever recovers or
    undoes ops imports the modules whose kinds it may meet."""
    KINDS[name] = Kind(resolve or _resolve_default, moved, cleanup, check, before_undo)


def _kinds(cat: Catalog, op_id: int, rows: Iterable["_Row"]) -> dict[str, Kind]:
    """The Kind of every row of an op; refuses (before anything moves) a kind nobody registered."""
    out = {}
    for name in {r.kind for r in rows}:
        if name not in KINDS:
            raise RefreshError(
                f"op #{op_id} in {cat.root} moves files of kind {name!r}, which this program does not "
                "know how to handle; nothing was moved (run the nearsort command that made it)")
        out[name] = KINDS[name]
    return out


_NO_HARDLINKS = {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS,
                 errno.EMLINK, errno.EINVAL}


def _exists_error(dst: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, "destination exists (never overwritten)", dst)


def _part_path(dst: str) -> str:
    d, b = os.path.split(dst)
    return os.path.join(d, f".{b}.nearsort-part")


def _copy_move(src: str, dst: str) -> None:
    """Move across filesystems: copy to a part file, fsync, verify, rename into place, unlink src."""
    part = _part_path(dst)
    if os.path.lexists(part):
        os.unlink(part)  # left by a killed copy
    shutil.copy2(src, part, follow_symlinks=False)
    if not os.path.islink(part):
        with open(part, "rb+") as fh:
            os.fsync(fh.fileno())
        same = os.stat(src).st_size == os.stat(part).st_size and filecmp.cmp(src, part, shallow=False)
        if not same:
            os.unlink(part)
            raise OSError(errno.EIO, "copy verification failed (source left in place)", src)
    if os.path.lexists(dst):
        os.unlink(part)
        raise _exists_error(dst)
    os.rename(part, dst)
    fsync_dir(os.path.dirname(dst))
    os.unlink(src)
    fsync_dir(os.path.dirname(src))


def move_file(src: str, dst: str) -> None:
    """Move one file; never overwrites. Creates dst's folder.

    Raises FileExistsError when dst exists, FileNotFoundError when src does not. Same filesystem:
    ``os.link`` (refuses an existing dst atomically) + ``unlink`` (a kill in between leaves two
    names of one file, which recovery resolves); where hard links are unsupported, ``os.rename``
    after an existence check; across filesystems (EXDEV): copy2 + fsync + verify + unlink.
    """
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    if os.path.lexists(dst):
        raise _exists_error(dst)
    try:
        os.link(src, dst, follow_symlinks=False)
    except (FileExistsError, FileNotFoundError):
        raise
    except (OSError, NotImplementedError) as e:
        code = getattr(e, "errno", None)
        if code == errno.EXDEV:
            return _copy_move(src, dst)
        if not isinstance(e, NotImplementedError) and code not in _NO_HARDLINKS:
            raise
        if os.path.lexists(dst):
            raise _exists_error(dst)
        try:
            os.rename(src, dst)
        except OSError as e2:
            if e2.errno == errno.EXDEV:
                return _copy_move(src, dst)
            raise
        return
    os.unlink(src)


def _same_or_identical(a: str, b: str) -> bool:
    try:
        if os.path.samefile(a, b):
            return True
        sa, sb = os.stat(a), os.stat(b)
        return sa.st_size == sb.st_size and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _settle(src: str, dst: str, recovering: bool) -> str:
    """Where is this row's file? 'todo' | 'done' | 'conflict' | 'lost' (see docs/design.md, "refresh")."""
    s, d = os.path.lexists(src), os.path.lexists(dst)
    if s and not d:
        return "todo"
    if recovering:
        part = _part_path(dst)
        if os.path.lexists(part):
            os.unlink(part)
    if d and not s:
        return "done"
    if not s and not d:
        return "lost"
    if recovering and _same_or_identical(src, dst):
        os.unlink(src)  # a killed link+unlink / copy: finish it
        return "done"
    return "conflict"


def _key(p: str) -> str:
    return os.path.normcase(p).casefold()


def _jdir(p: str) -> str:
    return os.path.dirname(p) if os.path.isabs(p) else posixpath.dirname(p)


def _jjoin(d: str, name: str) -> str:
    if not d:
        return name
    return os.path.join(d, name) if os.path.isabs(d) else f"{d}/{name}"


def journal_moves(cat: Catalog, kind: str, moves: Iterable[tuple], params: dict | None = None,
                  allow_empty: bool = False) -> Optional[int]:
    """Write one op and its moves ``(row_kind, ref_id, src, dst)`` in one transaction.

    Returns the op id, or None when there is nothing to move (and not ``allow_empty``). Moves with
    src == dst are dropped. If a destination is also some source (a swap/cycle/chain), the op is
    stored as two phases through unique temporary names (``params['n1']`` = phase-1 row count).
    """
    rows = [(k, ref, str(s), str(d)) for k, ref, s, d in moves if str(s) != str(d)]
    if not rows and not allow_empty:
        return None
    srcs = {_key(r[2]) for r in rows}
    if len(srcs) != len(rows) or len({_key(r[3]) for r in rows}) != len(rows):
        raise ValueError("journal_moves: sources and destinations must be unique")
    two_phase = any(_key(r[3]) in srcs for r in rows)
    params = dict(params or {})
    with cat.tx():
        op_id = queries.add_op(cat, kind)
        if two_phase:
            tmps = [_jjoin(_jdir(s), f".nearsort-tmp-{op_id}-{i}") for i, (_, _, s, _) in enumerate(rows)]
            jrows = [(k, ref, s, t) for (k, ref, s, _), t in zip(rows, tmps)]
            jrows += [(k, ref, t, d) for (k, ref, _, d), t in zip(rows, tmps)]
            params["n1"] = len(rows)
        else:
            jrows = rows
        params["rows"] = len(jrows)
        queries.set_op_params(cat, op_id, params)
        queries.add_journal_rows(cat, op_id, jrows)
    return int(op_id)


@dataclass
class _Row:
    seq: int
    kind: str
    ref_id: Optional[int]
    src: str
    dst: str
    state: str


@dataclass
class _Op:
    id: int
    kind: str
    state: str
    params: dict
    rows: list[_Row]

    @property
    def n1(self) -> Optional[int]:
        """Rows in phase 1 of a two-phase op (None: one phase)."""
        return self.params.get("n1")


def _load_op(cat: Catalog, op_id: int) -> _Op:
    op = queries.op(cat, op_id)
    if op is None:
        raise ValueError(f"no op {op_id}")
    return _Op(op.id, op.kind, op.state, op.params, [_Row(*r) for r in queries.journal_rows(cat, op_id)])


class _Marks:
    """Batched journal marks + catalog updates, one transaction per batch."""

    def __init__(self, cat: Catalog, op_id: int, kinds: dict[str, Kind]):
        self.cat, self.op_id, self.kinds = cat, op_id, kinds
        self.buf: list[tuple[_Row, str, Optional[str]]] = []
        self.t = time.monotonic()

    def add(self, row: _Row, state: str, final: Optional[str]) -> None:
        """Mark ``row`` ``state``; ``final``: where its file now is, for the catalog (None: no update)."""
        self.buf.append((row, state, final))
        if len(self.buf) >= MARK_EVERY or time.monotonic() - self.t > MARK_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.buf:
            return
        with self.cat.tx():
            queries.mark_journal_rows(self.cat, self.op_id, [(r.seq, st) for r, st, _ in self.buf])
            for r, _, final in self.buf:
                h = self.kinds[r.kind]
                if final is not None and h.moved:
                    h.moved(self.cat, r.ref_id, final)
        self.buf = []
        self.t = time.monotonic()


_WHY = {"conflict": "destination exists (not overwritten)", "lost": "file not found"}


class _Applier:
    """Moves the planned rows of one op, phase by phase, and marks each (see the module docstring).

    ``recovering``: the op may have been interrupted mid-move (a kill left two names of one file,
    or a part file of a copy): such rows are finished rather than reported as conflicts."""

    def __init__(self, cat: Catalog, op: _Op, kinds: dict[str, Kind], recovering: bool, progress: Progress):
        self.cat, self.op, self.kinds, self.recovering, self.progress = cat, op, kinds, recovering, progress
        self.guards = op.params.get("guards") or {}
        self.marks = _Marks(cat, op.id, kinds)
        self.res = {"op_id": op.id, "kind": op.kind, "moved": 0, "already": 0, "skipped": []}

    def run(self) -> dict:
        rows, n1 = self.op.rows, self.op.n1
        phases = [rows[:n1], rows[n1:]] if n1 else [rows]
        done = 0
        try:
            for no, phase in enumerate(phases):
                final = no == len(phases) - 1
                for r in phase:
                    done += 1
                    if r.state == "planned":
                        self._row(r, final)
                    if self.progress and done % 256 == 0:
                        self.progress(done, len(rows))
                self.marks.flush()  # the barrier between phases: all phase-1 marks committed
        finally:
            try:
                self.marks.flush()
            except Exception:
                pass  # recovery re-derives everything from the filesystem
        return self.res

    def _row(self, r: _Row, final: bool) -> None:
        h = self.kinds[r.kind]
        src, dst = h.resolve(self.cat, r.src), h.resolve(self.cat, r.dst)
        status = _settle(src, dst, self.recovering)
        if status == "todo":
            why = self._guard(h, r, src)
            if why:
                return self._skip(r, why)
            status = self._move(src, dst)
        if status == "moved":
            self.res["moved"] += 1
        elif status == "done":
            self.res["already"] += 1
        elif status == "conflict" and self.op.n1 and final and self._back_from_temp(r, h, src):
            return
        else:
            return self._skip(r, _WHY[status])
        # phase-1 rows of a two-phase op land on temp names: no catalog update yet
        self.marks.add(r, "done", r.dst if final else None)

    def _guard(self, h: Kind, r: _Row, src: str) -> Optional[str]:
        guard = self.guards.get(str(r.ref_id)) if h.check else None
        return h.check(guard, src) if guard is not None else None

    def _move(self, src: str, dst: str) -> str:
        """'moved' | 'conflict' | 'lost'; any other OSError stops the op, which stays resumable."""
        try:
            move_file(src, dst)
            return "moved"
        except FileExistsError:
            return "conflict"
        except FileNotFoundError:
            return "lost" if not os.path.lexists(src) else "conflict"
        except OSError as e:  # disk full, permissions ...
            raise RefreshError(
                f"could not move {src} -> {dst}: {e.strerror or e}. Nothing was lost: fix this and "
                f"run `nearsort refresh` or `nearsort undo` on {self.cat.root} to finish or revert "
                f"the interrupted {self.op.kind} (op #{self.op.id})") from e

    def _back_from_temp(self, r: _Row, h: Kind, src: str) -> bool:
        """Phase 2 could not reach its destination: put the file back where it was before phase 1."""
        orig = self.op.rows[r.seq - self.op.n1].src
        try:
            move_file(src, h.resolve(self.cat, orig))
        except OSError:
            return False
        self.marks.add(r, "skipped", orig)
        self.res["skipped"].append({"src": orig, "dst": r.dst, "why": _WHY["conflict"]})
        return True

    def _skip(self, r: _Row, why: str) -> None:
        self.res["skipped"].append({"src": r.src, "dst": r.dst, "why": why})
        self.marks.add(r, "skipped", None)


def _finish(cat: Catalog, op: _Op, kinds: dict[str, Kind]) -> None:
    """Let each kind clean up after its done rows, then mark the op done (cleanup is idempotent,
    so a kill in between is harmless); an undo marks the op it reverted undone."""
    vacated: dict[str, list] = {}
    for _seq, kind, _ref, s, _dst, st in queries.journal_rows(cat, op.id):
        if st == "done":
            vacated.setdefault(kind, []).append(s)
    for kind, paths in vacated.items():
        if kinds[kind].cleanup:
            kinds[kind].cleanup(cat, paths)
    with cat.tx():
        queries.set_op_state(cat, op.id, "done")
        if op.kind == "undo" and op.params.get("undoes") is not None:
            queries.set_op_state(cat, op.params["undoes"], "undone")


def _apply(cat: Catalog, op: _Op, progress: Progress, recovering: bool) -> dict:
    if op.state not in ACTIVE_STATES:
        return {"op_id": op.id, "kind": op.kind, "moved": 0, "already": 0, "skipped": [], "state": op.state}
    kinds = _kinds(cat, op.id, op.rows)
    with cat.tx():
        queries.set_op_state(cat, op.id, "applying")
    res = _Applier(cat, op, kinds, recovering, progress).run()
    _finish(cat, op, kinds)
    if progress:
        progress(len(op.rows), len(op.rows))
    res["state"] = "done"
    return res


def apply_op(cat: Catalog, op_id: int, progress: Progress = None) -> dict:
    """Apply a journaled op (just written by :func:`journal_moves`, or one left ``applying``).

    Idempotent, safe to call again after a kill. Returns {"op_id", "kind", "moved", "already",
    "skipped": [{"src", "dst", "why"}], "state"}.
    """
    op = _load_op(cat, op_id)
    return _apply(cat, op, progress, recovering=op.state == "applying")


def _as_catalog(cat_or_root):
    """(catalog, opened_here) for functions that accept a Catalog or a THUMBS path."""
    if isinstance(cat_or_root, Catalog):
        return cat_or_root, False
    return Catalog.open(cat_or_root), True


def recover(cat, kinds: Optional[Iterable[str]] = None) -> dict:
    """Finish (roll forward) every op a killed process left planned/applying.

    Accepts a Catalog or a THUMBS path. With ``kinds`` (journal kinds), only the ops whose rows are
    all of those kinds; the others are left for a caller that handles them. Returns
    {"recovered": [apply_op results]}.
    """
    cat, own = _as_catalog(cat)
    try:
        only = None if kinds is None else set(kinds)
        out = []
        for pending in queries.active_ops(cat):
            op = _load_op(cat, pending.id)
            if only is None or {r.kind for r in op.rows} <= only:
                out.append(_apply(cat, op, None, recovering=True))
        return {"recovered": out}
    finally:
        if own:
            cat.close()


def _logical_moves(op: _Op) -> list[tuple]:
    """The done moves of an op as (kind, ref_id, src, final_dst), collapsing two-phase rows."""
    rows, n1 = op.rows, op.n1
    if not n1:
        return [(r.kind, r.ref_id, r.src, r.dst) for r in rows if r.state == "done"]
    return [(a.kind, a.ref_id, a.src, b.dst) for a, b in zip(rows[:n1], rows[n1:])
            if a.state == "done" and b.state == "done"]


def moves_done(cat: Catalog, op_id: int) -> int:
    """How many of an op's moves are done (a two-phase move counts once, when both phases are)."""
    return len(_logical_moves(_load_op(cat, op_id)))


def _last_done(cat: Catalog, kinds: Optional[Iterable[str]]) -> Optional[_Op]:
    """The most recent op still 'done' (not an undo), optionally only of op ``kinds``."""
    op = queries.last_done_op(cat, list(kinds) if kinds else None)
    return None if op is None else _load_op(cat, op.id)


def _revert(cat: Catalog, target: _Op, progress: Progress) -> dict:
    """Journal and apply the reverse of ``target``'s done moves as a new 'undo' op; moves whose
    file is no longer at its destination are left alone (returned in ``left``)."""
    kinds = _kinds(cat, target.id, target.rows)
    for h in kinds.values():
        if h.before_undo:
            h.before_undo(cat)
    rev, left = [], []
    for kind, ref, src, dst in reversed(_logical_moves(target)):
        if os.path.lexists(kinds[kind].resolve(cat, dst)):
            rev.append((kind, ref, dst, src))
        else:
            left.append(dst)
    op_id = journal_moves(cat, "undo", rev, {"undoes": target.id, "undoes_kind": target.kind}, allow_empty=True)
    res = apply_op(cat, op_id, progress)
    return {"undone": target.id, "undone_kind": target.kind, "op_id": op_id, "moved": res["moved"],
            "left": left, "skipped": res["skipped"], "finished_interrupted": False,
            "message": f"undid {target.kind} #{target.id}"}


def undo_last(cat, progress: Progress = None, kinds: Optional[Iterable[str]] = None) -> dict:
    """Revert the most recent op in state 'done' (optionally only of op ``kinds``).

    Finishes interrupted ops first. Returns {"undone": op id or None, "undone_kind", "op_id"
    (the undo op), "moved", "left": [paths moved/deleted since, left alone], "skipped": [...],
    "recovered", "message"}. When one of the interrupted ops is an undo (an ``undo`` that was
    killed, now retried), finishing it *is* the undo asked for: nothing else is reverted, and the
    result says so (``finished_interrupted``: True, ``undone`` = the op that undo reverted).
    """
    cat, own = _as_catalog(cat)
    try:
        rec = recover(cat)
        killed = [r for r in rec["recovered"] if r["kind"] == "undo"]
        if killed:
            u = killed[-1]
            p = _load_op(cat, u["op_id"]).params
            out = {"undone": p.get("undoes"), "undone_kind": p.get("undoes_kind"), "op_id": u["op_id"],
                   "moved": moves_done(cat, u["op_id"]), "left": [], "skipped": u["skipped"],
                   "finished_interrupted": True,
                   "message": f"finished the interrupted undo of {p.get('undoes_kind')} #{p.get('undoes')}"}
        else:
            target = _last_done(cat, kinds)
            out = _revert(cat, target, progress) if target is not None else {
                "undone": None, "undone_kind": None, "op_id": None, "moved": 0, "left": [], "skipped": [],
                "finished_interrupted": False, "message": "nothing to undo"}
        out["recovered"] = rec["recovered"]
        return out
    finally:
        if own:
            cat.close()
