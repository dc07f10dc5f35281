"""``refresh`` / ``undo`` / ``tags``: name and place thumbnails in chain order, crash-safely.

Every file move is journaled and applied by :mod:`nearsort.journal` (kind ``thumb``, registered
here); an op killed at any instant is finished by the next refresh / undo; undo reverts one op
(of any kind: refresh, reset, quarantine) at a time. The user's folder names become tags before
anything moves and are never removed. How and why: docs/design.md, "refresh".
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Optional

# undo reverts (and refresh finishes) quarantines too: importing dupes.quarantine registers their journal kind
from nearsort.dupes import quarantine as _quarantine  # noqa: F401
from nearsort.errors import BadArgument, CatalogLocked, RefreshError
from nearsort.stage import Progress as StageProgress
from nearsort.stage import Result, ticker
from nearsort.ingest.thumbs import THUMB_EXT, layout_folder, name_phash, parse_thumb_filename
from nearsort.journal import apply_op, journal_moves, recover, register_kind, undo_last
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog, Thumbs, open_catalog

DEFAULT_PER_PAGE = 500


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


register_kind("thumb", moved=_thumb_moved, cleanup=_thumb_cleanup, before_undo=sync.reconcile)


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

    Uses ``nearsort.order.pages.cut_points(steps, max_per_page)`` when available (its result is
    accepted as page-start indexes, 0 and n optional, and checked: every page <= max_per_page),
    else a local greedy fallback.
    """
    n = len(steps)
    if n == 0:
        return [], "none"
    if n <= max_per_page:
        return [0], "single"
    try:
        from nearsort.order.pages import cut_points  # type: ignore[attr-defined]
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
            moves.append(Move(tid, src, posixpath.join(folder, names[tid] + THUMB_EXT), None))
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
        moves.append(Move(tid, src, posixpath.join(folder, fname), rank))
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
@dataclass
class RefreshResult(Result):
    """What ``refresh_names`` did (or, with ``dry_run``, would do: ``plan``)."""

    dry_run: bool
    kind: str                           # refresh | reset
    layout: str = ""                    # pages | flat | week | hash
    ordering: Optional[str] = None      # the ordering applied (None for a reset)
    thumbnails: int = 0
    moved: int = 0
    unchanged: int = 0
    pages: Optional[int] = None         # page folders (layout pages)
    per_page: Optional[int] = None
    cutter: Optional[str] = None        # how the pages were cut
    unranked: Optional[int] = None      # thumbnails newer than the ordering, placed at the end
    missing: int = 0                    # catalog thumbnails with no file
    unknown: int = 0                    # thumbnail-named files the catalog lacks (left alone)
    tags_added: int = 0
    skipped: list = field(default_factory=list)
    op_id: Optional[int] = None         # the journaled op (None: nothing moved, or dry run)
    recovered: list = field(default_factory=list)    # interrupted ops finished first
    pending_ops: list = field(default_factory=list)  # dry run: interrupted ops that would be finished
    plan: list = field(default_factory=list)         # dry run: [(old, new)]


def refresh_names(thumbs: Thumbs, dry_run: bool = False, reset: bool = False, layout: Optional[str] = None,
                  per_page: int = DEFAULT_PER_PAGE, ordering: Optional[str] = None,
                  progress: Optional[StageProgress] = None) -> RefreshResult:
    """``nearsort refresh``: rename/move the thumbnails of THUMBS (a path or an open Catalog) into
    chain order (see docs/design.md, "refresh"); ``progress("refresh", done, total)``.

    Returns a :class:`RefreshResult`; with ``dry_run`` its ``plan`` = [(old, new), ...] and
    nothing is written.
    """
    if per_page < 1:
        raise BadArgument("--per-page must be at least 1")
    layout = _norm_layout(layout, reset)
    with open_catalog(thumbs, write=True) as cat:
        if not reset:
            pick_ordering(cat, ordering)  # refuse before touching anything
        summary = RefreshResult(dry_run=dry_run, kind="reset" if reset else "refresh")
        if dry_run:
            summary.pending_ops = [o.id for o in queries.active_ops(cat)]  # would be finished first
            locs, missing, unknown = _locate(cat)
            summary.tags_added = harvest_tags(cat, locs, write=False)["added"]
        else:
            summary.recovered = recover(cat)["recovered"]
            run_id = queries.start_run(cat, summary.kind)
            rec = sync.reconcile(cat)
            missing, unknown = rec["missing"], rec["unknown"]
            miss = set(missing)
            locs = {tid: rel for tid, rel in queries.thumb_relpaths(cat).items() if tid not in miss}
            summary.tags_added = harvest_tags(cat, locs)["added"]
        moves, info = _plan(cat, locs, ordering=ordering, layout=layout, per_page=per_page, reset=reset)
        changing = [m for m in moves if m.src != m.dst]
        for k, v in info.items():
            setattr(summary, k, v)
        summary.thumbnails, summary.moved, summary.unchanged = len(moves), len(changing), len(moves) - len(changing)
        summary.missing, summary.unknown = len(missing), len(unknown)
        summary.per_page = per_page if layout == "pages" else None
        if dry_run:
            summary.plan = [(m.src, m.dst) for m in changing]
            return summary
        params = {"layout": summary.layout, "ordering": summary.ordering, "per_page": summary.per_page}
        op_id = journal_moves(cat, summary.kind, (("thumb", m.thumb_id, m.src, m.dst) for m in changing),
                              params)
        with cat.tx():  # unchanged thumbnails: their rank is their (unchanged) prefix
            queries.set_thumb_ranks(cat, [(m.rank, m.thumb_id) for m in moves if m.src == m.dst])
            queries.set_meta(cat, "refresh.last", json.dumps(params, sort_keys=True))
        if op_id is not None:
            res = apply_op(cat, op_id, ticker(progress, "refresh"))
            summary.op_id = op_id
            summary.moved = res["moved"]
            summary.skipped = res["skipped"]
        queries.finish_run(cat, run_id, "done",
                           json.dumps({k: v for k, v in summary.to_dict().items() if k != "plan"}, default=str))
        return summary


@dataclass
class UndoResult(Result):
    """What ``undo`` reverted (``undone`` None: nothing to undo)."""

    undone: Optional[int] = None        # the op reverted
    undone_kind: Optional[str] = None   # refresh | reset | quarantine ...
    op_id: Optional[int] = None         # the undo op
    moved: int = 0                      # files moved back
    left: list = field(default_factory=list)     # files moved or deleted since, left where they are
    skipped: list = field(default_factory=list)
    finished_interrupted: bool = False  # a killed undo was finished (nothing more reverted)
    message: str = ""
    recovered: list = field(default_factory=list)


def undo(thumbs: Thumbs, progress: Optional[StageProgress] = None) -> UndoResult:
    """Revert the last refresh/reset (or other journaled op) of THUMBS (a path or an open Catalog);
    see :func:`undo_last`. ``progress("undo", done, total)``."""
    with open_catalog(thumbs, write=True) as cat:
        return UndoResult(**undo_last(cat, ticker(progress, "undo")))


@dataclass
class TagsResult(Result):
    """``{tag: number of thumbnails}``, sorted by tag."""

    tags: dict = field(default_factory=dict)


def list_tags(thumbs: Thumbs, harvest: bool = True) -> TagsResult:
    """The tags of THUMBS (a path or an open Catalog). First harvests folder tags (reconciling
    where thumbnails are) unless the catalog is read-only here (another nearsort process holds
    it, or the Catalog given was opened with ``write=False``), then just reads."""
    if isinstance(thumbs, Catalog):
        return _tags(thumbs, harvest and thumbs.writable)
    try:
        cat = Catalog.open(thumbs)
    except CatalogLocked:
        cat, harvest = Catalog.open(thumbs, write=False), False
    with cat:
        return _tags(cat, harvest)


def _tags(cat: Catalog, harvest: bool) -> TagsResult:
    if harvest:
        rec = sync.reconcile(cat)
        miss = set(rec["missing"])
        harvest_tags(cat, {t: r for t, r in queries.thumb_relpaths(cat).items() if t not in miss})
    return TagsResult(queries.tag_counts(cat))
