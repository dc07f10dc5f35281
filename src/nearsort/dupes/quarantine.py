"""Quarantine: move the non-keepers of duplicate groups out of the library, journaled (undoable).

Files move through :mod:`nearsort.journal` (op kind ``quarantine``, journal kind ``original``,
registered here on import; ``nearsort undo`` restores them) into a folder that mirrors their
absolute paths. It never deletes, re-hashes every file to move and each keeper first, never moves
a group's last verified copy nor anything outside the library (symbolic links resolved); a
quarantine a killed process left half-done is finished by the next ``dupes --move-to``.
How and why: docs/design.md, "dupes".
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

from nearsort import journal
from nearsort.dupes.group import (DupesConfig, DupesError, DupesResult, QuarantineResult, find_duplicates,
                                  heal_statuses, human_bytes)
from nearsort.stage import Progress
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog, Thumbs, open_catalog
from nearsort.textsafe import term

# ----------------------------------------------------------------------------- journal kind 'original'
def _source_moved(cat: Catalog, ref_id: Optional[int], path: str) -> None:
    """A source file now lives at ``path``: quarantined, or ok again when back home."""
    if ref_id is None:
        return
    row = queries.source_path(cat, ref_id)
    if row is None:
        return
    home = os.fsdecode(bytes(row))
    status = "ok" if os.path.normcase(path) == os.path.normcase(home) else "quarantined"
    queries.set_sources_status(cat, [ref_id], status)


def _sources_cleanup(cat: Catalog, vacated: list) -> None:
    # the thumbnails carry their sources' status (rebuild): rewrite the ones concerned
    tids = set()
    for p in vacated:
        key = os.fsencode(p)
        for tid in queries.thumbs_of_moved_sources(cat, key):
            if tid is not None:
                tids.add(tid)
    for tid in sorted(tids):
        try:
            sync.write_thumb_meta(cat, tid)
        except (OSError, ValueError, TypeError):
            pass  # a thumbnail the user deleted: resize makes it again
    # folders the undo emptied inside the quarantine (never above its marker file)
    for p in vacated:
        d = os.path.dirname(p)
        while d and os.path.isdir(d) and not os.path.exists(os.path.join(d, MARKER)):
            try:
                os.rmdir(d)
            except OSError:
                break
            d = os.path.dirname(d)


MARKER = "NEARSORT-QUARANTINE.txt"
_MARKER_TEXT = """This folder holds photos that `nearsort dupes --move-to` moved here because they duplicate
another photo (the keeper stayed where it was). Their folders mirror the original locations.
Nothing was deleted. To put them back: nearsort undo {thumbs}
Delete this folder yourself once you have checked it.
"""

def _mirror_path(dest: Path, path: str) -> Path:
    drive, rest = os.path.splitdrive(os.path.abspath(path))
    parts = [p for p in Path(rest).parts if p not in (os.sep, "/", "\\")]
    if drive:
        parts.insert(0, drive.replace(":", "").replace("\\", "_").strip("_") or "drive")
    return dest.joinpath(*parts)


def _read_only_reason(folder: str) -> Optional[str]:
    try:
        st = os.stat(folder)
    except OSError as e:
        return f"cannot access ({e.strerror})"
    if hasattr(os, "statvfs"):
        try:
            if os.statvfs(folder).f_flag & getattr(os, "ST_RDONLY", 1):
                return "on a read-only filesystem"
        except OSError:
            pass
    if not (st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)):
        return "folder is read-only (no write permission bits)"
    if not os.access(folder, os.W_OK | os.X_OK):
        return "no write permission"
    return None


def quarantined_paths(cat: Catalog) -> dict[int, str]:
    """{source id: where its file is now} for every quarantined source (from the journal)."""
    out = {}
    for sid, _path, _size in queries.quarantined_sources(cat):
        dst = queries.quarantine_dst(cat, sid)
        if dst is not None:
            out[sid] = os.fsdecode(bytes(dst))
    return out


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _library(cat: Catalog) -> list[tuple[str, str]]:
    """(root, its real path) for every source root: the folders resize scanned (the library)."""
    return [(r, os.path.realpath(r)) for r in queries.source_roots(cat)]


def _outside_library(path: str, roots: list[tuple[str, str]]) -> Optional[str]:
    """None when ``path`` lies inside a source root both as written and once every symbolic link
    is resolved; else why not."""
    if not any(_is_within(path, r) or _is_within(path, real) for r, real in roots):
        return "is outside the library (no folder resize scanned holds it)"
    real = os.path.realpath(path)
    if not any(_is_within(real, rr) for _, rr in roots):
        return f"is outside the library once symbolic links are resolved (it leads to {real})"
    return None


def _verify_copy(path: str, content_hash: str, roots: list[tuple[str, str]]) -> Optional[str]:
    """None when the file at ``path`` is still the copy the catalog knows: a regular file, inside
    the library (symbolic links resolved), whose sha256 is ``content_hash``; else why not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "is missing (deleted or moved since the last resize)"
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    why = _outside_library(path, roots)
    if why:
        return why
    try:
        digest = _sha256(path)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if digest != content_hash:
        return "has changed since the last resize: its content is not what the catalog holds (run resize again)"
    return None


def _file_state(path: str) -> Optional[list]:
    """(device, inode, size, mtime_ns) of a file, or None: what a verified file must still be."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _guard(guard: list, src: str) -> Optional[str]:
    """Just before a quarantine move: is the keeper still the file verified at planning, and the
    file to move too? (Time passes between planning and moving -- hours when a killed quarantine is
    finished later; a keeper deleted or replaced meanwhile must stop its copies from moving.)"""
    keeper, keeper_state, src_state = guard
    if keeper_state is None or _file_state(keeper) != keeper_state:
        return f"its keeper {keeper} is gone or changed since it was verified (not moved)"
    if src_state is not None and _file_state(src) != src_state:
        return "changed since it was verified (not moved)"
    return None


journal.register_kind("original", moved=_source_moved, cleanup=_sources_cleanup, check=_guard)


def plan_quarantine(cat: Catalog, res: DupesResult, dest) -> dict:
    """Which files would move where; the refusals. Writes nothing.

    Nothing is taken on trust from the catalog: every file to move *and* each group's keeper is
    read again and its sha256 compared with ``originals.content_hash``; files must lie inside the
    library (the source roots, symbolic links resolved). A group whose keeper is missing, changed
    or outside the library is refused whole (``refused_groups``), so the last verified copy of a
    photo never moves; a member that fails is skipped (``skipped``).
    """
    dest = Path(os.path.abspath(os.fspath(dest)))
    roots = _library(cat)
    moves, skipped, refused = [], [], []
    for g in res.groups if roots else ():
        keeper = next(m for m in g["members"] if m["keeper"])
        todo = []
        for m in g["members"]:
            if m["keeper"] or m.get("relation") == "pair":  # the keeper's own RAW / camera JPEG stays
                continue
            row = queries.source_state(cat, m["source_id"])
            try:
                st = os.stat(m["path"])
            except OSError:
                skipped.append({"path": m["path"], "why": "file not found"})
                continue
            if row is None or row[2] != "ok" or st.st_size != row[0] or st.st_mtime_ns != row[1]:
                skipped.append({"path": m["path"], "why": "changed since the last resize (run resize again)"})
                continue
            dst = _mirror_path(dest, m["path"])
            if os.path.lexists(dst):
                skipped.append({"path": m["path"], "why": f"{dst} already exists (never overwritten)"})
                continue
            todo.append((m, dst))
        if not todo:
            continue
        why = _verify_copy(keeper["path"], keeper["content_hash"], roots)
        if why:  # without a verified keeper every move could take the last copy away
            refused.append({"group": g["id"], "keeper": keeper["path"], "why": f"the keeper {why}",
                            "files": len(todo)})
            continue
        keeper_state = _file_state(keeper["path"])
        for m, dst in todo:
            why = _verify_copy(m["path"], m["content_hash"], roots)
            if why is None:
                try:
                    if os.path.samefile(m["path"], keeper["path"]):
                        why = "is the keeper's own file (a link to it)"
                except OSError as e:
                    why = f"cannot be read ({e.strerror or e})"
            if why:
                skipped.append({"path": m["path"], "why": f"it {why}"})
                continue
            # the state both were verified in: re-checked just before the move (apply_op's guard)
            moves.append({"group": g["id"], "source_id": m["source_id"], "src": m["path"], "dst": str(dst),
                          "bytes": m["bytes"], "keeper": g["keeper"],
                          "guard": [keeper["path"], keeper_state, _file_state(m["path"])]})
    problems = []
    folders = sorted({os.path.dirname(mv["src"]) for mv in moves})
    for f in folders:
        why = _read_only_reason(f)
        if why:
            problems.append((f, why))
    # the quarantine must not sit inside the library (resize would scan it again) nor in THUMBS,
    # not even through a symbolic link
    real_dest = os.path.realpath(dest)
    inside = None
    for r, rr in roots + [(str(cat.root), os.path.realpath(cat.root))]:
        if _is_within(dest, r) or _is_within(real_dest, rr):
            inside = r
            break
    probe = dest
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    dest_problem = _read_only_reason(str(probe)) if probe.exists() else "no such folder"
    return {"dest": str(dest), "real_dest": real_dest, "moves": moves, "skipped": skipped,
            "refused_groups": refused, "read_only": problems, "dest_inside": inside,
            "dest_problem": dest_problem, "library": [r for r, _ in roots],
            "bytes": sum(mv["bytes"] or 0 for mv in moves)}


def _is_within(p, parent) -> bool:
    try:
        Path(os.path.abspath(p)).relative_to(os.path.abspath(parent))
        return True
    except ValueError:
        return False


def finish_interrupted(cat: Catalog) -> Optional[QuarantineResult]:
    """Finish (roll forward) what a killed process left half-done. When that was a quarantine,
    return its result (``finished_interrupted``: True, ``moved``: all the files it moved, before
    and after the kill) -- a re-run of ``dupes --move-to`` finishes it instead of planning a new
    one, so one ``undo`` still restores every file. Else None."""
    done = [r for r in journal.recover(cat, kinds=("original",))["recovered"] if r["kind"] == "quarantine"]
    if not done:
        return None
    r = done[-1]
    params = queries.op(cat, r["op_id"]).params
    return QuarantineResult(dest=params.get("dest"), skipped=r["skipped"], bytes=params.get("bytes") or 0,
                            op_id=r["op_id"], moved=journal.moves_done(cat, r["op_id"]), moved_now=r["moved"],
                            finished_interrupted=True)


def quarantine(thumbs: Thumbs, dest, found: Optional[DupesResult] = None, *, config: Optional[DupesConfig] = None,
               dry_run: bool = False, progress: Optional[Progress] = None,
               log: Optional[Callable[[str], None]] = None) -> DupesResult:
    """``nearsort dupes --move-to``: move every non-keeper of the duplicate groups of THUMBS (a path
    or an open Catalog) into ``dest`` (mirroring absolute paths), journaled: ``nearsort undo`` puts
    them back. Returns the groups with ``quarantine`` set (a :class:`QuarantineResult`: what moved,
    or with ``dry_run`` what would).

    ``found``: groups :func:`find_duplicates` found on this catalog; None: they are found here
    (with ``config``, ``progress``, ``log``). A quarantine a killed process left half-done is
    finished first, and then nothing new is planned in this call (``finished_interrupted``; the
    groups are found on the finished state); a dry run only says it would be.
    Raises DupesError (nothing moved) when a source folder or the destination is read-only, the
    destination is inside the library (symbolic links resolved), or the catalog does not know
    the library.
    """
    with open_catalog(thumbs, write=not dry_run) as cat:
        fin = None if dry_run else finish_interrupted(cat)
        res = found if found is not None else find_duplicates(cat, config, progress=progress, log=log)
        return replace(res, quarantine=fin or _quarantine(cat, res, dest, dry_run))


def _quarantine(cat: Catalog, res: DupesResult, dest, dry_run: bool) -> QuarantineResult:
    if dry_run:
        pend = (queries.active_ops(cat, "quarantine") or [None])[-1]
        if pend:
            return QuarantineResult(dest=pend.params.get("dest"), bytes=pend.params.get("bytes") or 0, dry_run=True,
                                    pending_quarantine=pend.id)
    else:
        heal_statuses(cat)
    plan = plan_quarantine(cat, res, dest)
    if not plan["library"]:
        raise DupesError(
            f"refusing to quarantine: the catalog of {cat.root} does not record which folders are the "
            "photo library (a rebuilt catalog does not), so no file can be checked to lie inside it; run "
            f"`nearsort resize SRC --out {cat.root}` once, then this command again (nothing was moved)")
    if plan["read_only"]:
        lines = "\n".join(f"  {term(f)}: {why}" for f, why in plan["read_only"][:10])
        more = f"\n  ... and {len(plan['read_only']) - 10} more" if len(plan["read_only"]) > 10 else ""
        raise DupesError(
            f"refusing to quarantine: {len(plan['read_only'])} source folder(s) are read-only, so their "
            f"duplicates cannot be moved (nothing was moved):\n{lines}{more}\n"
            "Make them writable first, or delete duplicates yourself using `nearsort dupes --json`.")
    if plan["dest_inside"]:
        linked = os.path.normcase(plan["real_dest"]) != os.path.normcase(plan["dest"])
        how = f"through a symbolic link it leads to {plan['real_dest']}, inside" if linked else "it is inside"
        raise DupesError(f"refusing to quarantine into {plan['dest']}: {how} the photo library or THUMBS "
                         f"({plan['dest_inside']}), where the next resize would pick the files up again; "
                         "choose a folder outside it (nothing was moved)")
    if plan["dest_problem"]:
        raise DupesError(f"cannot quarantine into {plan['dest']}: {plan['dest_problem']}")
    q = QuarantineResult(**plan, dry_run=dry_run)
    if dry_run or not q.moves:
        return q
    d = Path(q.dest)
    d.mkdir(parents=True, exist_ok=True)
    marker = d / MARKER
    if not marker.exists():
        marker.write_text(_MARKER_TEXT.format(thumbs=cat.root))
    op_id = journal.journal_moves(
        cat, "quarantine", (("original", mv["source_id"], mv["src"], mv["dst"]) for mv in q.moves),
        {"dest": q.dest, "groups": len({mv["group"] for mv in q.moves}), "bytes": q.bytes,
         "guards": {str(mv["source_id"]): mv["guard"] for mv in q.moves}})
    r = journal.apply_op(cat, op_id)
    q.op_id, q.moved = op_id, r["moved"]
    q.skipped += r["skipped"]
    return q


def format_quarantine(q: QuarantineResult, thumbs) -> list[str]:
    """The lines the CLI prints about a quarantine summary: what moved (or would, or was finished),
    one line per refused group, the first skipped files."""
    dest = term(q.dest or "?")
    undo = f"; undo with: nearsort undo {term(str(thumbs))}"
    if q.finished_interrupted:
        return [f"Finished an interrupted quarantine: {q.moved} files moved to {dest} "
                f"({q.moved_now} of them now){undo}",
                "Nothing new was planned: run the command again to look for more duplicates."]
    if q.pending_quarantine:
        return [f"An interrupted quarantine (op #{q.pending_quarantine}, into {dest}) would be finished "
                "first; nothing new is planned until it is (run without --dry-run)."]
    if q.dry_run:
        lines = [f"Would move {len(q.moves)} files ({human_bytes(q.bytes)}) to {dest}"]
    else:
        lines = [f"Moved {q.moved} files ({human_bytes(q.bytes)}) to {dest}" + (undo if q.moved else "")]
    for g in q.refused_groups:
        lines.append(f"  refused group {g['group']} (keeper {term(g['keeper'])}): {term(g['why'])}; "
                     f"none of its {g['files']} other files was moved")
    for s in q.skipped[:10]:
        lines.append(f"  skipped {term(s.get('path') or s.get('src'))}: {term(s['why'])}")
    if len(q.skipped) > 10:
        lines.append(f"  ... and {len(q.skipped) - 10} more skipped (--json lists them all)")
    return lines
