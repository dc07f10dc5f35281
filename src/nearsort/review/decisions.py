"""Review decisions: page the stored duplicate groups, decide them one by one, apply the decisions.

The groups are the last ``dupes`` result stored in the catalog (:mod:`nearsort.dupes.stored`):
``group_page`` serves them worst first by SQL (LIMIT/OFFSET), never recomputing;
``refresh_groups`` recomputes them (runs ``find_duplicates``) when none is stored or the catalog
changed since (``groups_state(...).stale``).

A decision is about a group's members by content (its ``key``), so it survives re-running dupes,
``resize`` of new photos, another model and ``rebuild`` (the decisions travel in the thumbnails'
metadata, like tags). Actions:

* ``accept`` -- these are copies; keep ``keeper`` (a source id; default the suggested keeper).
  ``dupes`` keeps that file from then on; ``apply_decisions`` quarantines the others.
* ``distinct`` -- "not duplicates": the whole group, or with ``member`` only that member. Never
  proposed again by review, ``dupes`` or the report.
* ``skip`` -- no decision: the group leaves the pending list (``dupes`` ignores skips).

``undo_decision`` reverts the last decision (a bulk ``accept_all`` as one).
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Optional

from nearsort.dupes import stored
from nearsort.dupes.group import DupesConfig, DupesResult, QuarantineResult, find_duplicates
from nearsort.dupes.quarantine import quarantine
from nearsort.errors import BadArgument
from nearsort.stage import Progress, Result
from nearsort.store import queries, sync
from nearsort.store.catalog import Catalog, Thumbs, open_catalog

ACTIONS = ("accept", "distinct", "skip")
KINDS = stored.KINDS  # copies | similar | shot
MAX_LIMIT = 500


@dataclass
class Decision(Result):
    """One decision (or, from ``undo_decision``, the one reverted: ``undone``)."""

    id: int
    group_id: Optional[int]
    key: str
    kind: str
    action: str
    keeper_source_id: Optional[int] = None
    member_source_id: Optional[int] = None
    created: float = 0.0
    batch: int = 0
    undone: bool = False
    count: int = 1        # decisions in its batch (accept_all makes many; one undo reverts them all)


@dataclass
class GroupPage(Result):
    """One page of stored groups, worst first (most reclaimable bytes)."""

    total: int = 0        # groups matching (kind, pending_only)
    offset: int = 0
    limit: int = 20
    kind: str = "copies"
    pending_only: bool = True
    groups: list = field(default_factory=list)
    stored: bool = False  # a dupes result is stored
    stale: bool = True    # ... and the catalog changed since (refresh_groups recomputes)


@dataclass
class GroupsState(Result):
    """What is stored: per kind, groups in all and still pending; stale when the catalog changed."""

    stored: bool = False
    stale: bool = True
    computed: Optional[float] = None
    kinds: dict = field(default_factory=dict)   # {kind: {"total": n, "pending": n}}
    decisions: int = 0


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise BadArgument(f"kind {kind!r}: use one of {', '.join(KINDS)}")


def _state(cat: Catalog) -> GroupsState:
    meta = stored.stored_meta(cat)
    return GroupsState(stored=meta is not None, stale=stored.is_stale(cat),
                       computed=(meta or {}).get("computed"),
                       kinds={k: {"total": queries.count_groups(cat, k), "pending": queries.count_groups(cat, k, True)}
                              for k in KINDS},
                       decisions=queries.count_decisions(cat))


def groups_state(thumbs: Thumbs) -> GroupsState:
    """Is a dupes result stored, is it stale, how many groups of each kind are pending. Cheap."""
    with open_catalog(thumbs, write=False) as cat:
        return _state(cat)


def refresh_groups(thumbs: Thumbs, config: Optional[DupesConfig] = None, *,
                   progress: Optional[Progress] = None) -> GroupsState:
    """Recompute the stored groups (``find_duplicates``, which honours the decisions and stores
    what it finds); the review app calls it at start-up when ``groups_state`` says stale."""
    with open_catalog(thumbs, write=True) as cat:
        find_duplicates(cat, config, progress=progress)
        return _state(cat)


def _member_out(m: dict, g: dict) -> dict:
    out = {k: m.get(k) for k in stored.SHOWN}
    out.update(source_id=m["source_id"], thumb_id=m["thumb_id"], thumb=m["thumb"], content_hash=m["content_hash"],
               status=m.get("status"), keeper=m["source_id"] == g["keeper_source_id"],
               suggested=m["source_id"] == g["suggested_source_id"])
    if out["keeper"]:
        out["relation"] = "keeper"
    elif m.get("relation") == "keeper":  # the keeper dupes chose, no longer the one in force
        out["relation"] = "exact" if any(x["content_hash"] == m["content_hash"] and x["source_id"] != m["source_id"]
                                         for x in g.get("_members", ())) else "copy"
    return out


def _decision_dict(d: Optional[dict], g: Optional[dict] = None) -> Optional[dict]:
    if d is None:
        return None
    return {"id": d["id"], "action": d["action"], "created": d["created"], "batch": d["batch"],
            "keeper_source_id": g["keeper_source_id"] if g and d["action"] == "accept" else None}


def _groups_out(cat: Catalog, groups: list[dict]) -> list[dict]:
    members = queries.group_members(cat, [g["id"] for g in groups])
    out = []
    for g in groups:
        ms = members.get(g["id"], [])
        g["_members"] = ms
        d = queries.decision(cat, g["decision_id"]) if g["decision_id"] else None
        out.append({"id": g["id"], "key": g["key"], "kind": g["kind"], "relation": g["relation"],
                    "keeper_source_id": g["keeper_source_id"], "suggested_keeper_source_id": g["suggested_source_id"],
                    "reclaimable_bytes": g["reclaimable_bytes"], "size": len(ms),
                    "members": [_member_out(m, g) for m in ms], "differs": g["differs"],
                    "decision": _decision_dict(d, g)})
    return out


def group_page(thumbs: Thumbs, kind: str = "copies", offset: int = 0, limit: int = 20,
               pending_only: bool = True) -> GroupPage:
    """``limit`` stored groups of ``kind`` from ``offset``, worst first; with ``pending_only`` only
    those without a decision. Served from the catalog by SQL: no dupes recomputation (``stale``
    says the catalog changed since they were found: call :func:`refresh_groups`)."""
    _check_kind(kind)
    if offset < 0 or not 1 <= limit <= MAX_LIMIT:
        raise BadArgument(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
    with open_catalog(thumbs, write=False) as cat:
        rows = queries.groups_page(cat, kind, offset, limit, pending_only)
        return GroupPage(total=queries.count_groups(cat, kind, pending_only), offset=offset, limit=limit, kind=kind,
                         pending_only=pending_only, groups=_groups_out(cat, rows),
                         stored=stored.stored_meta(cat) is not None, stale=stored.is_stale(cat))


def get_group(thumbs: Thumbs, group_id: int) -> Optional[dict]:
    """One stored group as :func:`group_page` gives it, or None."""
    with open_catalog(thumbs, write=False) as cat:
        g = queries.stored_group(cat, group_id)
        return _groups_out(cat, [g])[0] if g else None


# ----------------------------------------------------------------------------- deciding
def _group_or_fail(cat: Catalog, group_id: int) -> tuple[dict, list[dict]]:
    g = queries.stored_group(cat, group_id)
    if g is None:
        raise BadArgument(f"no group {group_id} in the stored duplicate groups of {cat.root} "
                          "(they were found again since: reload the page)")
    return g, queries.group_members(cat, [group_id]).get(group_id, [])


def _member_or_fail(members: list[dict], source_id: int, what: str, group_id: int) -> dict:
    for m in members:
        if m["source_id"] == source_id:
            return m
    raise BadArgument(f"{what} {source_id} is not a member of group {group_id} "
                      f"(its members: {', '.join(str(m['source_id']) for m in members)})")


def _reclaimable(members: list[dict], keeper_id: Optional[int]) -> int:
    return sum(m.get("bytes") or 0 for m in members if m["source_id"] != keeper_id and m.get("relation") != "pair")


def _recompute(cat: Catalog, g: dict, keeper_id: Optional[int] = None) -> None:
    """A stored group's key, size, keeper, reclaimable bytes and differs after members left or
    came back (a member split off, or its split undone)."""
    ms = queries.group_members(cat, [g["id"]]).get(g["id"], [])
    ids = {m["source_id"] for m in ms}
    if keeper_id not in ids:
        keeper_id = g["keeper_source_id"] if g["keeper_source_id"] in ids else (
            g["suggested_source_id"] if g["suggested_source_id"] in ids else (ms[0]["source_id"] if ms else None))
    queries.update_group(cat, g["id"], key=stored.group_key(m["content_hash"] for m in ms), size=len(ms),
                         keeper_source_id=keeper_id, reclaimable_bytes=_reclaimable(ms, keeper_id),
                         differs=stored.differs(ms))


def _carry(cat: Catalog, hashes) -> None:
    """Rewrite the thumbnails of these originals, so they carry the decisions about them."""
    for tid in sorted(queries.thumbs_of_hashes(cat, set(hashes))):
        try:
            sync.write_thumb_meta(cat, tid)
        except (OSError, ValueError, TypeError):
            pass  # a thumbnail the user deleted: resize makes it again (the catalog keeps the decision)


def _record(cat: Catalog, g: dict, members: list[dict], action: str, batch: int,
            keeper: Optional[dict] = None, member: Optional[dict] = None) -> dict:
    d = {"uid": uuid.uuid4().hex, "batch": batch, "group_key": g["key"], "kind": g["kind"], "action": action,
         "members": [m["content_hash"] for m in members], "created": time.time(),
         "keeper_hash": keeper["content_hash"] if keeper else None,
         "keeper_path": os.fsencode(keeper["path"]) if keeper else None,
         "member_hash": member["content_hash"] if member else None,
         "member_path": os.fsencode(member["path"]) if member else None}
    d["id"] = queries.add_decision(cat, d)
    return d


def _decide(cat: Catalog, group_id: int, action: str, keeper: Optional[int], member: Optional[int],
            batch: int) -> tuple[Decision, list[str]]:
    g, members = _group_or_fail(cat, group_id)
    if g["decision_id"] is not None and not (action == "accept" and keeper is not None):
        prev = queries.decision(cat, g["decision_id"])
        if prev is not None and prev["action"] != "skip":
            raise BadArgument(f"group {group_id} is already decided ({prev['action']}): undo that decision first")
    k = m = None
    if action == "accept":
        if member is not None:
            raise BadArgument("accept takes a keeper, not a member")
        k = _member_or_fail(members, keeper if keeper is not None else g["keeper_source_id"], "keeper", group_id)
        if k.get("relation") == "pair" and g["kind"] != "shot":
            raise BadArgument(f"source {k['source_id']} is the keeper's own RAW / camera JPEG (one shot): "
                              "choose another keeper")
        d = _record(cat, g, members, action, batch, keeper=k)
        queries.update_group(cat, group_id, decision_id=d["id"], keeper_source_id=k["source_id"],
                             reclaimable_bytes=_reclaimable(members, k["source_id"]))
    elif action == "distinct":
        if keeper is not None:
            raise BadArgument("distinct takes a member (or nothing: the whole group), not a keeper")
        if member is not None:
            m = _member_or_fail(members, member, "member", group_id)
            twin = next((x for x in members if x is not m and x["content_hash"] == m["content_hash"]), None)
            if twin is not None:
                raise BadArgument(f"{m['path']} is byte-for-byte the same file as {twin['path']} (same sha256): "
                                  "it cannot be 'not a duplicate' of it")
            d = _record(cat, g, members, action, batch, member=m)
            queries.set_member_split(cat, group_id, m["source_id"], d["id"])
            if len(members) - 1 < 2:
                queries.set_groups_decision(cat, [group_id], d["id"])
            else:
                _recompute(cat, g)
        else:
            d = _record(cat, g, members, action, batch)
            queries.set_groups_decision(cat, [group_id], d["id"])
    elif action == "skip":
        if keeper is not None or member is not None:
            raise BadArgument("skip takes no keeper and no member")
        d = _record(cat, g, members, action, batch)
        queries.set_groups_decision(cat, [group_id], d["id"])
    else:
        raise BadArgument(f"action {action!r}: use one of {', '.join(ACTIONS)}")
    res = Decision(id=d["id"], group_id=group_id, key=g["key"], kind=g["kind"], action=action,
                   keeper_source_id=k["source_id"] if k else None, member_source_id=m["source_id"] if m else None,
                   created=d["created"], batch=batch)
    return res, ([] if action == "skip" else d["members"])


def decide(thumbs: Thumbs, group_id: int, action: str, *, keeper: Optional[int] = None,
           member: Optional[int] = None) -> Decision:
    """Decide one stored group: ``accept`` (keep ``keeper``, a source id; default the keeper in
    force, i.e. the suggested one), ``distinct`` (not duplicates: the whole group, or only
    ``member``, a source id, split off), ``skip``. Stored in the catalog and carried by the
    members' thumbnails. Raises BadArgument (nothing stored) for an unknown group, action or
    member, or a group already decided (undo first; accept may change the keeper of an accepted group)."""
    if action not in ACTIONS:
        raise BadArgument(f"action {action!r}: use one of {', '.join(ACTIONS)}")
    with open_catalog(thumbs, write=True) as cat:
        with cat.tx():
            res, hashes = _decide(cat, group_id, action, keeper, member, queries.next_decision_batch(cat))
        _carry(cat, hashes)
        return res


def accept_all(thumbs: Thumbs, kind: str = "copies", relation: Optional[str] = "exact") -> int:
    """Accept every pending group of ``kind`` (``relation``: only the copy groups dupes calls
    exact / perceptual / near; None: all), each with its keeper in force; one batch (one
    ``undo_decision`` reverts it). Never touches similar shots. Returns the number accepted."""
    _check_kind(kind)
    if kind == "similar":
        raise BadArgument("similar shots are never accepted in bulk: decide them one by one")
    with open_catalog(thumbs, write=True) as cat:
        hashes: list[str] = []
        with cat.tx():
            batch = queries.next_decision_batch(cat)
            ids = queries.group_ids(cat, kind, pending_only=True, relation=relation)
            for gid in ids:
                hashes += _decide(cat, gid, "accept", None, None, batch)[1]
        _carry(cat, hashes)
        return len(ids)


def undo_decision(thumbs: Thumbs) -> Optional[Decision]:
    """Revert the last decision (all of a bulk accept); None when there is none. The groups it
    decided are pending again (a member split off is back, the keeper is the one before)."""
    with open_catalog(thumbs, write=True) as cat:
        with cat.tx():
            batch = queries.last_decision_batch(cat)
            if not batch:
                return None
            ids = [d["id"] for d in batch]
            decided = queries.groups_decided(cat, ids)
            back = queries.unsplit_members(cat, ids)
            queries.delete_decisions(cat, ids)
            latest = {d["group_key"]: d for d in queries.decisions(cat)}
            for g in decided:
                prev = latest.get(g["key"])
                keeper = g["suggested_source_id"]
                if prev is not None and prev["action"] == "accept" and prev["keeper_path"] is not None:
                    keeper = next((m["source_id"] for m in queries.group_members(cat, [g["id"]])[g["id"]]
                                   if os.fsencode(m["path"]) == bytes(prev["keeper_path"])), keeper)
                queries.update_group(cat, g["id"], decision_id=prev["id"] if prev else None)
                _recompute(cat, {**g, "keeper_source_id": keeper}, keeper)
            for gid in back:
                sg = queries.stored_group(cat, gid)
                if sg is not None:
                    if sg["decision_id"] in ids:
                        queries.update_group(cat, gid, decision_id=None)
                    _recompute(cat, sg)
        _carry(cat, [h for d in batch if d["action"] != "skip" for h in d["members"]])
        last = batch[-1]
        groups = [g["id"] for g in decided] or back
        return Decision(id=last["id"], group_id=groups[0] if len(groups) == 1 else None, key=last["group_key"],
                        kind=last["kind"], action=last["action"], created=last["created"], batch=last["batch"],
                        undone=True, count=len(batch))


# ----------------------------------------------------------------------------- applying
def _accepted(cat: Catalog) -> list[dict]:
    """The accepted stored groups, in the shape quarantine plans from (dupes' group dicts)."""
    ids = [d["id"] for d in queries.decisions(cat, "accept")]
    groups = queries.groups_decided(cat, ids)
    members = queries.group_members(cat, [g["id"] for g in groups])
    out = []
    for g in sorted(groups, key=lambda g: (-g["reclaimable_bytes"], g["id"])):
        ms = members.get(g["id"], [])
        keeper = next((m for m in ms if m["source_id"] == g["keeper_source_id"]), None)
        if keeper is None:
            continue
        rows = [{"path": m["path"], "source_id": m["source_id"], "content_hash": m["content_hash"],
                 "bytes": m.get("bytes"), "relation": "keeper" if m is keeper else m.get("relation"),
                 "keeper": m is keeper, "status": m.get("status")} for m in [keeper] + [m for m in ms if m is not keeper]]
        out.append({"id": g["id"], "kind": g["relation"], "keeper": keeper["path"], "members": rows,
                    "reclaimable_bytes": g["reclaimable_bytes"], "size": len(rows)})
    return out


def pending_summary(thumbs: Thumbs) -> dict:
    """What ``apply_decisions`` would move, from the stored decisions (for the confirmation):
    {"groups", "files", "bytes"} (files still in the library only)."""
    with open_catalog(thumbs, write=False) as cat:
        groups = _accepted(cat)
    files = [m for g in groups for m in g["members"]
             if not m["keeper"] and m["relation"] != "pair" and m["status"] == "ok"]
    return {"groups": len({g["id"] for g in groups if any(not m["keeper"] and m["relation"] != "pair"
                                                           and m["status"] == "ok" for m in g["members"])}),
            "files": len(files), "bytes": sum(m["bytes"] or 0 for m in files)}


def apply_decisions(thumbs: Thumbs, dest, dry_run: bool = False) -> QuarantineResult:
    """Quarantine the non-keepers of every accepted group into ``dest``: ONE journaled quarantine
    with every check of ``dupes --move-to`` (each file and keeper re-hashed, nothing outside the
    library, ...); ``nearsort undo`` reverses it. When the stored groups are stale they are found
    again first (the decisions are honoured). ``dry_run``: what would move."""
    with open_catalog(thumbs, write=not dry_run) as cat:
        if stored.is_stale(cat) and cat.writable:
            find_duplicates(cat)
        groups = [dict(g, members=[m for m in g["members"] if m["status"] == "ok"]) for g in _accepted(cat)]
        found = DupesResult(groups=[g for g in groups if any(m["keeper"] for m in g["members"])])
        q = quarantine(cat, dest, found=found, dry_run=dry_run).quarantine
        assert q is not None
        return q
