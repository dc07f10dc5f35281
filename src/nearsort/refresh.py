"""``refresh`` / ``undo`` / ``tags``: name and place thumbnails in chain order, crash-safely.

Every file move is journaled (``ops`` / ``journal``) before it happens and never overwrites; an op
killed at any instant is finished by the next refresh / undo (roll forward, each row decided from
the filesystem); undo is itself a journaled op and reverts one op at a time. The user's folder
names become tags before anything moves and are never removed. How and why: docs/design.md,
"refresh".
"""
from __future__ import annotations

import errno
import filecmp
import json
import math
import os
import posixpath
import re
import shutil
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from nearsort.errors import CatalogLocked, RefreshError
from nearsort.fsio import fsync_dir
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog
from nearsort.ingest.thumbs import THUMB_EXT, layout_folder, name_phash, parse_thumb_filename

Progress = Optional[Callable[[int, int], None]]

MARK_EVERY = 512        # journal marks per transaction while applying
MARK_SECONDS = 1.0
DEFAULT_PER_PAGE = 500
ACTIVE_STATES = ("planned", "applying")


# ===================================================================== folder names and tags
_YEAR = re.compile(r"^\d{4}$")
_WEEK = re.compile(r"^W\d{2}$")
_HEX2 = re.compile(r"^[0-9a-f]{2}$")
_PAGE = re.compile(r"^p\d{4,}$")


def is_generated_dir(reldir: str) -> bool:
    """True for folders nearsort makes below THUMBS: ``YYYY[/Www]``, ``ab[/cd]``, ``pNNNN``."""
    parts = [p for p in reldir.split("/") if p]
    if len(parts) == 1:
        return bool(_YEAR.match(parts[0]) or _HEX2.match(parts[0]) or _PAGE.match(parts[0]))
    if len(parts) == 2:
        return bool((_YEAR.match(parts[0]) and _WEEK.match(parts[1]))
                    or (_HEX2.match(parts[0]) and _HEX2.match(parts[1])))
    return False


def _clean_tag(component: str) -> str | None:
    if not component or component.startswith("."):
        return None
    # undecodable bytes (lone surrogates from os.fsdecode) cannot go into SQLite TEXT
    text = os.fsencode(component).decode("utf-8", "backslashreplace")
    text = unicodedata.normalize("NFC", text).strip()
    return text or None


def folder_tags(relpath: str) -> list[str]:
    """Tags a thumbnail gets from the user folders it sits in (see docs/design.md, "refresh")."""
    parts = relpath.split("/")[:-1]
    tags: list[str] = []
    i = 0
    while i < len(parts):
        c = parts[i]
        if i + 1 < len(parts) and ((_YEAR.match(c) and _WEEK.match(parts[i + 1]))
                                   or (_HEX2.match(c) and _HEX2.match(parts[i + 1]))):
            i += 2
            continue
        if _PAGE.match(c):
            i += 1
            continue
        t = _clean_tag(c)
        if t and t not in tags:
            tags.append(t)
        i += 1
    return tags


# ===================================================================== generic journaled moves
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


def _thumb_moved(cat: Catalog, ref_id: Optional[int], path: str) -> None:
    if ref_id is None:
        return
    parsed = parse_thumb_filename(posixpath.basename(path))
    queries.set_thumb_place(cat, ref_id, path, parsed[1] if parsed else None)


def _thumb_cleanup(cat: Catalog, vacated: list) -> None:
    """Remove generated folders (never a user's) that the moves left empty."""
    dirs = {posixpath.dirname(p) for p in vacated if not os.path.isabs(p)}
    for d in sorted(dirs, key=lambda x: -x.count("/")):
        while d and is_generated_dir(d):
            try:
                os.rmdir(os.path.join(cat.root, d))
            except OSError:
                break  # not empty (or gone): stop climbing
            d = posixpath.dirname(d)


register_kind("thumb", moved=_thumb_moved, cleanup=_thumb_cleanup)

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


# ===================================================================== refresh planning
@dataclass(slots=True)
class Move:
    """One planned thumbnail rename/move (relpaths below THUMBS, '/'-separated)."""

    thumb_id: int
    src: str
    dst: str
    rank: Optional[int]  # new prefix (None = plain name)


def _locate(cat: Catalog) -> tuple[dict[int, str], list[int], list[str]]:
    """Where each catalog thumbnail is now, like sync.reconcile but without writing anything."""
    known = {name: (tid, rel) for tid, name, rel in queries.thumbs(cat)}
    found: dict[str, str] = {}
    unknown = []
    for relpath, name, _rank in sync.iter_thumb_files(cat.root):
        if name in known:
            if name not in found or relpath == known[name][1]:
                found[name] = relpath
        else:
            unknown.append(relpath)
    locs, missing = {}, []
    for name, (tid, _rel) in known.items():
        if name in found:
            locs[tid] = found[name]
        else:
            missing.append(tid)
    return locs, missing, unknown


def pick_ordering(cat: Catalog, ordering: Optional[str] = None) -> str:
    """The ordering to apply, by the one rule (:func:`queries.current_ordering`): ``ordering``
    (exact, or 'similarity:'+ordering); else the one the last ``analyze`` stored
    (``meta.last_ordering``); else the most recently written ``similarity:*`` one. Raises
    RefreshError with a clear message."""
    names = queries.ordering_names(cat)
    if not names:
        raise RefreshError(f"no ranks in the catalog yet: run `nearsort analyze {cat.root}` first")
    chosen = queries.current_ordering(cat, ordering)
    if chosen:
        return chosen
    if ordering:
        raise RefreshError(f"no ordering {ordering!r} in the catalog; available: {', '.join(names)}")
    raise RefreshError(
        f"no similarity ordering yet: run `nearsort analyze {cat.root}` first "
        f"(or pass --by one of: {', '.join(names)})")


def _greedy_cuts(steps, max_per_page: int) -> list[int]:
    """Fallback page cutter: page starts; each page ``max_per_page//3 .. max_per_page`` long
    (the last may be shorter), each cut at the largest jump of its window."""
    n = len(steps)
    lo = max(1, max_per_page // 3)
    starts, s = [0], 0
    while n - s > max_per_page:
        a, b = s + lo, s + max_per_page  # the next page may start at a..b
        best = max(range(a, b + 1), key=lambda i: (steps[i], i))
        starts.append(best)
        s = best
    return starts


def page_starts(steps: list[float], max_per_page: int) -> tuple[list[int], str]:
    """Indexes where pages start (always 0 first) and which cutter made them.

    Uses ``nearsort.order.chain.cut_points(steps, max_per_page)`` when available (its result is
    accepted as page-start indexes, 0 and n optional, and checked: every page <= max_per_page),
    else a local greedy fallback.
    """
    n = len(steps)
    if n == 0:
        return [], "none"
    if n <= max_per_page:
        return [0], "single"
    try:
        from nearsort.order.chain import cut_points  # type: ignore[attr-defined]
    except (ImportError, AttributeError):
        cut_points = None
    if cut_points is not None:
        import numpy as np

        try:
            raw = cut_points(np.asarray(steps, dtype=np.float64), max_per_page)
            starts = sorted({int(x) for x in raw if 0 < int(x) < n} | {0})
            bounds = starts + [n]
            if all(0 < bounds[i + 1] - bounds[i] <= max_per_page for i in range(len(starts))):
                return starts, "order.cut_points"
        except (TypeError, ValueError):
            pass
    return _greedy_cuts(steps, max_per_page), "fallback"


def _reset_folders(cat: Catalog, locs: dict[int, str], layout: str, names: dict[int, str]) -> dict[int, str]:
    """Default-layout folder of each thumbnail, computed the way ``resize`` placed it: from the
    first original's capture time, else its first source's mtime, else the thumbnail's mtime
    (which resize set to the source's mtime)."""
    info = {tid: (ct, mt) for tid, ct, mt in queries.first_original_dates(cat)}
    out = {}
    for tid, rel in locs.items():
        ct, mt = info.get(tid, (None, None))
        if not ct and mt is None:
            try:
                mt = os.stat(os.path.join(cat.root, rel)).st_mtime_ns
            except OSError:
                mt = time.time_ns()
        phash = name_phash(names[tid])
        out[tid] = layout_folder(layout, phash, ct, mt or 0)
    return out


def _norm_layout(layout: Optional[str], reset: bool) -> str:
    if reset:
        layout = layout or "week"
        if layout == "pages":  # --reset with the refresh default means "the default layout"
            layout = "week"
        if layout not in ("week", "hash", "flat"):
            raise RefreshError("with --reset, --layout must be week (default), hash or flat")
    else:
        layout = layout or "pages"
        if layout not in ("pages", "flat"):
            raise RefreshError("--layout must be 'pages' or 'flat'")
    return layout


def _plan(cat: Catalog, locs: dict[int, str], *, ordering: Optional[str], layout: str, per_page: int,
          reset: bool) -> tuple[list[Move], dict]:
    """All thumbnails' moves (including unchanged ones, src == dst) and plan facts."""
    names = queries.thumb_names(cat)
    info: dict = {"layout": layout}
    moves: list[Move] = []
    if reset:
        folders = _reset_folders(cat, locs, layout, names) if layout != "flat" else {}
        for tid in sorted(locs, key=lambda t: names[t]):
            src = locs[tid]
            folder = folders[tid] if layout != "flat" else posixpath.dirname(src)
            moves.append(Move(tid, src, _jjoin(folder, names[tid] + THUMB_EXT), None))
        return moves, info
    if per_page < 1:
        raise RefreshError("--per-page must be at least 1")
    ordname = pick_ordering(cat, ordering)
    info["ordering"] = ordname
    chain, steps, seen = [], [], set()
    for tid, _rank, jump in queries.ranks(cat, ordname):
        if tid in locs and tid not in seen:
            seen.add(tid)
            chain.append(tid)
            steps.append(float(jump) if jump is not None else float("nan"))
    unranked = sorted((t for t in locs if t not in seen), key=lambda t: names[t])
    info["unranked"] = len(unranked)
    finite = [x for x in steps if math.isfinite(x)]
    big = (max(finite) if finite else 0.0) * 2 + 1.0
    steps = [x if math.isfinite(x) else big for x in steps]  # unknown distance: a good place to cut
    for i, tid in enumerate(unranked):
        chain.append(tid)
        steps.append(big if i == 0 and len(chain) > 1 else 0.0)  # prefer a cut before the tail
    if steps:
        steps[0] = 0.0
    width = len(str(len(chain))) if chain else 1
    if layout == "pages":
        starts, cutter = page_starts(steps, per_page)
        info["cutter"] = cutter
        info["pages"] = len(starts)
        pw = max(4, len(str(len(starts))))
        page_of = [0] * len(chain)
        for p, s in enumerate(starts):
            end = starts[p + 1] if p + 1 < len(starts) else len(chain)
            for i in range(s, end):
                page_of[i] = p
    for i, tid in enumerate(chain):
        rank = i + 1
        fname = f"{rank:0{width}d}_{names[tid]}{THUMB_EXT}"
        src = locs[tid]
        folder = f"p{page_of[i] + 1:0{pw}d}" if layout == "pages" else posixpath.dirname(src)
        moves.append(Move(tid, src, _jjoin(folder, fname), rank))
    return moves, info


def plan_refresh(cat: Catalog, ordering: Optional[str] = None, layout: Optional[str] = None,
                 per_page: int = DEFAULT_PER_PAGE, reset: bool = False,
                 locations: Optional[dict[int, str]] = None) -> list[Move]:
    """The moves a refresh would make (only those that change a path). Writes nothing.

    ``locations`` ({thumb id: relpath}) defaults to where the files are found now.
    """
    layout = _norm_layout(layout, reset)
    if locations is None:
        locations = _locate(cat)[0]
    moves, _ = _plan(cat, locations, ordering=ordering, layout=layout, per_page=per_page, reset=reset)
    return [m for m in moves if m.src != m.dst]


def harvest_tags(cat: Catalog, locations: dict[int, str], write: bool = True) -> dict:
    """Record the user-folder tags of every thumbnail (and embed them in the thumbnail).

    Returns {"added": n new (thumb, tag) pairs, "thumbs": n thumbnails that got a new tag,
    "tags": {tag: n new}}. With ``write=False`` only reports what it would add.
    """
    existing: dict[int, set] = {}
    for tid, tag in queries.tags(cat):
        existing.setdefault(tid, set()).add(tag)
    new: list[tuple[int, str]] = []
    for tid, rel in locations.items():
        for t in folder_tags(rel):
            if t not in existing.get(tid, ()):
                new.append((tid, t))
    counts: dict[str, int] = {}
    for _, t in new:
        counts[t] = counts.get(t, 0) + 1
    changed = sorted({tid for tid, _ in new})
    if write and new:
        # files are rewritten inside the transaction: a kill rolls the tags back and the next run
        # redoes both (a thumbnail carrying a tag the catalog lacks is harmless)
        with cat.tx():
            queries.add_tags(cat, new)
            for tid in changed:
                sync.write_thumb_meta(cat, tid)
    return {"added": len(new), "thumbs": len(changed), "tags": counts}


# ===================================================================== public entry points
def refresh(root, dry_run: bool = False, reset: bool = False, layout: Optional[str] = None,
            per_page: int = DEFAULT_PER_PAGE, ordering: Optional[str] = None,
            progress: Progress = None) -> dict:
    """Rename/move the thumbnails below ``root`` into chain order (see docs/design.md, "refresh").

    Returns a summary dict: op_id (None when nothing moved or dry run), kind, layout, ordering,
    thumbnails, moved, unchanged, pages, unranked, missing (catalog thumbnails with no file),
    unknown (thumbnail-named files the catalog lacks, left alone), tags_added, skipped,
    recovered; with ``dry_run`` also ``plan`` = [(old, new), ...] and nothing is written.
    """
    layout = _norm_layout(layout, reset)
    with Catalog.open(root) as cat:
        if not reset:
            pick_ordering(cat, ordering)  # refuse before touching anything
        summary: dict = {"dry_run": dry_run, "kind": "reset" if reset else "refresh"}
        if dry_run:
            pending = [o.id for o in queries.active_ops(cat)]
            summary["pending_ops"] = pending  # would be finished first
            locs, missing, unknown = _locate(cat)
            summary["tags_added"] = harvest_tags(cat, locs, write=False)["added"]
        else:
            summary["recovered"] = recover(cat)["recovered"]
            run_id = queries.start_run(cat, summary["kind"])
            rec = sync.reconcile(cat)
            missing, unknown = rec["missing"], rec["unknown"]
            miss = set(missing)
            locs = {tid: rel for tid, rel in queries.thumb_relpaths(cat).items() if tid not in miss}
            summary["tags_added"] = harvest_tags(cat, locs)["added"]
        moves, info = _plan(cat, locs, ordering=ordering, layout=layout, per_page=per_page, reset=reset)
        changing = [m for m in moves if m.src != m.dst]
        summary.update(info)
        summary.update(thumbnails=len(moves), moved=len(changing), unchanged=len(moves) - len(changing),
                       missing=len(missing), unknown=len(unknown), skipped=[], op_id=None,
                       per_page=per_page if layout == "pages" else None)
        if dry_run:
            summary["plan"] = [(m.src, m.dst) for m in changing]
            return summary
        params = {k: summary.get(k) for k in ("layout", "ordering", "per_page")}
        op_id = journal_moves(cat, summary["kind"], (("thumb", m.thumb_id, m.src, m.dst) for m in changing),
                              params)
        with cat.tx():  # unchanged thumbnails: their rank is their (unchanged) prefix
            queries.set_thumb_ranks(cat, [(m.rank, m.thumb_id) for m in moves if m.src == m.dst])
            queries.set_meta(cat, "refresh.last", json.dumps(params, sort_keys=True))
        if op_id is not None:
            res = apply_op(cat, op_id, progress, _recovering=False)
            summary["op_id"] = op_id
            summary["moved"] = res["moved"]
            summary["skipped"] = res["skipped"]
        queries.finish_run(cat, run_id, "done", json.dumps({k: v for k, v in summary.items() if k != "plan"},
                                                           default=str))
        return summary


def undo(root, progress: Progress = None) -> dict:
    """Revert the last refresh/reset (or other journaled op) below ``root``; see :func:`undo_last`."""
    with Catalog.open(root) as cat:
        return undo_last(cat, progress)


def list_tags(root, harvest: bool = True) -> dict[str, int]:
    """{tag: number of thumbnails}, sorted by tag. First harvests folder tags (reconciling where
    thumbnails are) unless another nearsort process holds the catalog, then just reads."""
    try:
        cat = Catalog.open(root)
    except CatalogLocked:
        cat, harvest = Catalog.open(root, write=False), False
    try:
        if harvest:
            rec = sync.reconcile(cat)
            miss = set(rec["missing"])
            harvest_tags(cat, {t: r for t, r in queries.thumb_relpaths(cat).items() if t not in miss})
        return queries.tag_counts(cat)
    finally:
        cat.close()
