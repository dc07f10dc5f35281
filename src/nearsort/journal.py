"""Planned, journaled, recoverable file moves (the ``ops`` / ``journal`` tables).

Every move is journaled before it happens and never overwrites; an op killed at any instant is
finished by :func:`recover` (roll forward, each row decided from the filesystem); :func:`undo_last`
reverts one op at a time, as a journaled op itself. The journal knows no kinds: a row's ``kind``
names a :class:`Kind` that the module owning those files registers on import (refresh: ``thumb``,
dupes.quarantine: ``original``). How and why: docs/design.md, "refresh".
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
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog

Progress = Optional[Callable[[int, int], None]]

MARK_EVERY = 512        # journal marks per transaction while applying
MARK_SECONDS = 1.0
ACTIVE_STATES = ("planned", "applying")


def _resolve_default(cat: Catalog, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(cat.root, path)


@dataclass
class Kind:
    """How journal rows of one ``journal.kind`` are handled.

    ``resolve(cat, path)``: journal path -> filesystem path. ``moved(cat, ref_id, path)``: update
    the catalog now that the item lives at ``path`` (called inside a transaction, idempotent).
    ``cleanup(cat, vacated_paths)``: after the op finished (e.g. remove folders left empty).
    ``check(guard, src)``: just before a row moves, when the op's params hold a guard for its
    ref_id (``params["guards"][str(ref_id)]``): a reason not to move it, or None.
    """

    resolve: Callable[[Catalog, str], str] = _resolve_default
    moved: Optional[Callable[[Catalog, Optional[int], str], None]] = None
    cleanup: Optional[Callable[[Catalog, list], None]] = None
    check: Optional[Callable[[list, str], Optional[str]]] = None


KINDS: dict[str, Kind] = {}


def register_kind(name: str, resolve=None, moved=None, cleanup=None, check=None) -> None:
    """Register the handling of journal rows of kind ``name`` (e.g. quarantine's 'original')."""
    KINDS[name] = Kind(resolve or _resolve_default, moved, cleanup, check)


def _kind(name: str) -> Kind:
    if name not in KINDS and name == "original":
        from nearsort.dupes import group as dupes  # noqa: F401  registers quarantine's journal kind
    return KINDS.get(name) or Kind()


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


class _Marks:
    """Batched journal marks + catalog updates, one transaction per batch."""

    def __init__(self, cat: Catalog, op_id: int):
        self.cat, self.op_id = cat, op_id
        self.buf: list[tuple[int, str, str, Optional[int], Optional[str]]] = []
        self.t = time.monotonic()

    def add(self, seq: int, state: str, kind: str, ref_id, final: Optional[str]) -> None:
        self.buf.append((seq, state, kind, ref_id, final))
        if len(self.buf) >= MARK_EVERY or time.monotonic() - self.t > MARK_SECONDS:
            self.flush()

    def write(self) -> None:  # inside the caller's transaction
        queries.mark_journal_rows(self.cat, self.op_id, [(seq, st) for seq, st, _, _, _ in self.buf])
        for _, _, kind, ref_id, final in self.buf:
            h = _kind(kind)
            if final is not None and h.moved:
                h.moved(self.cat, ref_id, final)
        self.buf = []
        self.t = time.monotonic()

    def flush(self) -> None:
        if self.buf:
            with self.cat.tx():
                self.write()


def _load_rows(cat: Catalog, op_id: int) -> list[_Row]:
    return [_Row(*r) for r in queries.journal_rows(cat, op_id)]


def apply_op(cat: Catalog, op_id: int, progress: Progress = None, _recovering: bool | None = None) -> dict:
    """Apply (or finish applying) a journaled op; idempotent, safe to call again after a kill.

    Returns {"op_id", "kind", "moved", "already", "skipped": [{"src", "dst", "why"}]}.
    """
    op = queries.op(cat, op_id)
    if op is None:
        raise ValueError(f"no op {op_id}")
    res = {"op_id": op_id, "kind": op.kind, "moved": 0, "already": 0, "skipped": []}
    if op.state not in ACTIVE_STATES:
        res["state"] = op.state
        return res
    recovering = op.state == "applying" if _recovering is None else _recovering
    params = op.params
    guards = params.get("guards") or {}
    rows = _load_rows(cat, op_id)
    with cat.tx():
        queries.set_op_state(cat, op_id, "applying")
    n1 = params.get("n1")
    phases = [rows[:n1], rows[n1:]] if n1 else [rows]
    marks = _Marks(cat, op_id)
    done_n, total = 0, len(rows)
    try:
        for phase_no, phase in enumerate(phases):
            final_phase = phase_no == len(phases) - 1
            for r in phase:
                done_n += 1
                if r.state != "planned":
                    continue
                h = _kind(r.kind)
                src, dst = h.resolve(cat, r.src), h.resolve(cat, r.dst)
                status = _settle(src, dst, recovering)
                guard = guards.get(str(r.ref_id)) if h.check else None
                if status == "todo" and guard is not None:
                    why = h.check(guard, src)
                    if why:
                        res["skipped"].append({"src": r.src, "dst": r.dst, "why": why})
                        marks.add(r.seq, "skipped", r.kind, r.ref_id, None)
                        continue
                if status == "todo":
                    try:
                        move_file(src, dst)
                        status = "moved"
                    except FileExistsError:
                        status = "conflict"
                    except FileNotFoundError:
                        status = "lost" if not os.path.lexists(src) else "conflict"
                    except OSError as e:  # disk full, permissions ...: stop; the op stays resumable
                        raise RefreshError(
                            f"could not move {src} -> {dst}: {e.strerror or e}. Nothing was lost: fix this and "
                            f"run `nearsort refresh` or `nearsort undo` on {cat.root} to finish or revert "
                            f"the interrupted {op.kind} (op #{op_id})") from e
                if status == "moved":
                    res["moved"] += 1
                elif status == "done":
                    res["already"] += 1
                else:
                    why = "destination exists (not overwritten)" if status == "conflict" else "file not found"
                    if n1 and final_phase and status == "conflict":
                        # phase 2 could not reach dst: bring the file back from its temp name
                        orig = rows[r.seq - n1].src
                        try:
                            move_file(src, h.resolve(cat, orig))
                            final_rel = orig
                        except OSError:
                            final_rel = None
                        if final_rel is not None:
                            marks.add(r.seq, "skipped", r.kind, r.ref_id, final_rel)
                            res["skipped"].append({"src": orig, "dst": r.dst, "why": why})
                            continue
                    res["skipped"].append({"src": r.src, "dst": r.dst, "why": why})
                    marks.add(r.seq, "skipped", r.kind, r.ref_id, None)
                    continue
                # phase-1 rows of a two-phase op land on temp names: no catalog update yet
                marks.add(r.seq, "done", r.kind, r.ref_id, r.dst if final_phase else None)
                if progress and done_n % 256 == 0:
                    progress(done_n, total)
            marks.flush()  # the barrier between phases: all phase-1 marks committed
    finally:
        try:
            marks.flush()
        except Exception:
            pass  # recovery re-derives everything from the filesystem
    # finish: clean up, then mark done (cleanup is idempotent, so a kill here is harmless)
    vacated: dict[str, list] = {}
    for _seq, kind, _ref, s, _dst, st in queries.journal_rows(cat, op_id):
        if st == "done":
            vacated.setdefault(kind, []).append(s)
    for kind, paths in vacated.items():
        h = _kind(kind)
        if h.cleanup:
            h.cleanup(cat, paths)
    with cat.tx():
        queries.set_op_state(cat, op_id, "done")
        if op.kind == "undo" and params.get("undoes") is not None:
            queries.set_op_state(cat, params["undoes"], "undone")
    if progress:
        progress(total, total)
    res["state"] = "done"
    return res


def _as_catalog(cat_or_root):
    """(catalog, opened_here) for functions that accept a Catalog or a THUMBS path."""
    if isinstance(cat_or_root, Catalog):
        return cat_or_root, False
    return Catalog.open(cat_or_root), True


def recover(cat) -> dict:
    """Finish (roll forward) every op a killed process left planned/applying.

    Accepts a Catalog or a THUMBS path. Returns {"recovered": [apply_op results]}.
    """
    cat, own = _as_catalog(cat)
    try:
        ids = [o.id for o in queries.active_ops(cat)]
        return {"recovered": [apply_op(cat, i, _recovering=True) for i in ids]}
    finally:
        if own:
            cat.close()


def _logical_moves(rows: list[_Row], n1: Optional[int]) -> list[tuple]:
    """The done moves of an op as (kind, ref_id, src, final_dst), collapsing two-phase rows."""
    if not n1:
        return [(r.kind, r.ref_id, r.src, r.dst) for r in rows if r.state == "done"]
    out = []
    for a, b in zip(rows[:n1], rows[n1:]):
        if a.state == "done" and b.state == "done":
            out.append((a.kind, a.ref_id, a.src, b.dst))
    return out


def moves_done(cat: Catalog, op_id: int) -> int:
    """How many of an op's moves are done (a two-phase move counts once, when both phases are)."""
    row = queries.op(cat, op_id)
    n1 = row.params.get("n1") if row else None
    return len(_logical_moves(_load_rows(cat, op_id), n1))


def undo_last(cat, progress: Progress = None, kinds: Optional[Iterable[str]] = None) -> dict:
    """Revert the most recent op in state 'done' (optionally only of ``kinds``).

    Finishes interrupted ops first. Returns {"undone": op id or None, "undone_kind", "op_id"
    (the undo op), "moved", "left": [paths moved/deleted since, left alone], "skipped": [...]}.
    When one of the interrupted ops is an undo (an ``undo`` that was killed, now retried),
    finishing it *is* the undo asked for: nothing else is reverted, and the result says so
    (``finished_interrupted``: True, ``undone`` = the op that undo reverted).
    """
    cat, own = _as_catalog(cat)
    try:
        rec = recover(cat)
        killed = [r for r in rec["recovered"] if r["kind"] == "undo"]
        if killed:
            u = killed[-1]
            p = queries.op(cat, u["op_id"]).params
            return {"undone": p.get("undoes"), "undone_kind": p.get("undoes_kind"), "op_id": u["op_id"],
                    "moved": moves_done(cat, u["op_id"]), "left": [], "skipped": u["skipped"],
                    "finished_interrupted": True, "recovered": rec["recovered"],
                    "message": f"finished the interrupted undo of {p.get('undoes_kind')} #{p.get('undoes')}"}
        target = queries.last_done_op(cat, list(kinds) if kinds else None)
        if target is None:
            return {"undone": None, "undone_kind": None, "op_id": None, "moved": 0, "left": [], "skipped": [],
                    "finished_interrupted": False, "message": "nothing to undo", "recovered": rec["recovered"]}
        tparams = target.params
        rows = _load_rows(cat, target.id)
        if any(r.kind == "thumb" for r in rows):
            sync.reconcile(cat)
        rev, left = [], []
        for kind, ref, src, dst in reversed(_logical_moves(rows, tparams.get("n1"))):
            if os.path.lexists(_kind(kind).resolve(cat, dst)):
                rev.append((kind, ref, dst, src))
            else:
                left.append(dst)
        op_id = journal_moves(cat, "undo", rev, {"undoes": target.id, "undoes_kind": target.kind},
                              allow_empty=True)
        res = apply_op(cat, op_id, progress, _recovering=False)
        return {"undone": target.id, "undone_kind": target.kind, "op_id": op_id,
                "moved": res["moved"], "left": left, "skipped": res["skipped"], "finished_interrupted": False,
                "message": f"undid {target.kind} #{target.id}", "recovered": rec["recovered"]}
    finally:
        if own:
            cat.close()
