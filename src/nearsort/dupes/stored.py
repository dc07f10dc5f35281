"""The last ``dupes`` result, stored in the catalog so that ``review`` can page it, and the review
decisions ``dupes`` honours.

``find_duplicates`` stores its groups here (tables ``dupe_groups``, ``dupe_members``; the catalog
state they were found on in ``meta``): the copy groups (kind ``copies``), the similar-shot groups
(``similar``) and the RAW + camera JPEG pairs of one shot (``shot``). A group's ``key`` comes from
its members' content (the sorted sha256 of their originals), so a decision about it survives
re-running dupes, resizing new photos, another model and ``rebuild``.

:class:`Rules` is what the decisions say to the grouping: the keepers chosen, the pairs and groups
marked "not duplicates". Decisions themselves are made by :mod:`nearsort.review.decisions`.
This module imports nothing else of :mod:`nearsort.dupes` (group.py imports it).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Iterable, Optional

from nearsort.store import queries
from nearsort.store.catalog import Catalog

META_KEY = "dupe_groups"   # meta row: {"state": queries.library_state, "computed": time, "settings": ...}
KINDS = ("copies", "similar", "shot")
# the member fields review shows, in its order; ``differs`` names those that differ within a group
SHOWN = ("path", "width", "height", "bytes", "format", "capture_time", "camera", "mtime", "relation", "keeper",
         "gps", "phash_distance", "crop_distance")
COMPARED = ("resolution", "bytes", "format", "capture_time", "camera", "mtime", "folder", "name")


def group_key(hashes: Iterable[str]) -> str:
    """The stable identity of a group: sha256 of its members' sorted content hashes."""
    return hashlib.sha256("\n".join(sorted(hashes)).encode("ascii")).hexdigest()


def differs(members: list[dict]) -> list[str]:
    """Names (COMPARED) of the fields whose values are not all the same among ``members``."""
    def value(m: dict, f: str):
        if f == "resolution":
            return (m.get("width"), m.get("height"))
        if f == "folder":
            return os.path.dirname(m.get("path") or "")
        if f == "name":
            return os.path.basename(m.get("path") or "")
        return m.get(f)
    return [f for f in COMPARED if len({json.dumps(value(m, f), default=str) for m in members}) > 1]


@dataclass
class Rules:
    """What the decisions in force tell ``dupes``."""

    keepers: set = field(default_factory=set)         # paths (str) chosen as keepers
    distinct_pairs: set = field(default_factory=set)  # frozenset({hash a, hash b}): never one group
    distinct_keys: set = field(default_factory=set)   # group keys marked "not duplicates" as a whole
    count: int = 0                                    # decisions in force (not skips)

    def distinct(self, a: str, b: str) -> bool:
        return a != b and frozenset((a, b)) in self.distinct_pairs

    def __bool__(self) -> bool:
        return bool(self.keepers or self.distinct_pairs or self.distinct_keys)


def rules(cat: Catalog) -> Rules:
    r = Rules()
    chosen: dict[str, str] = {}  # group key -> the keeper of its latest accept (a later one replaces it)
    for d in queries.decisions(cat):
        r.count += d["action"] != "skip"
        if d["action"] == "accept" and d["keeper_path"] is not None:
            chosen[d["group_key"]] = os.fsdecode(bytes(d["keeper_path"]))
        elif d["action"] == "distinct":
            hs = sorted(set(d["members"]))
            if d["member_hash"]:
                r.distinct_pairs.update(frozenset((d["member_hash"], h)) for h in hs if h != d["member_hash"])
            else:
                r.distinct_keys.add(d["group_key"])
                r.distinct_pairs.update(frozenset((a, b)) for i, a in enumerate(hs) for b in hs[i + 1:])
    r.keepers = set(chosen.values())
    return r


def split_distinct(members: list, keeper, r: Rules, hash_of=lambda m: m.content_hash) -> list[tuple]:
    """A group's members, less what the decisions split off: [(keeper, members)] clusters, the
    first around ``keeper``. A member marked "not a duplicate" of the keeper leaves the keeper's
    cluster; those left form clusters of their own the same way (around their first, the best
    keeper as ``members`` is sorted best first). Clusters of one are dropped."""
    out, todo = [], [m for m in members]
    head = keeper
    while todo:
        if head not in todo:
            head = todo[0]
        cluster, rest = [head], []
        for m in todo:
            if m is head:
                continue
            (rest if any(r.distinct(hash_of(m), hash_of(c)) for c in cluster) else cluster).append(m)
        if len(cluster) > 1:
            out.append((head, cluster))
        todo, head = rest, None
    return out


def stored_meta(cat: Catalog) -> Optional[dict]:
    raw = queries.get_meta(cat, META_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def is_stale(cat: Catalog) -> bool:
    """True when no result is stored, or the catalog changed since it was found."""
    m = stored_meta(cat)
    return m is None or m.get("state") != json.loads(json.dumps(queries.library_state(cat)))


def _decision_by_key(cat: Catalog) -> dict[str, int]:
    out = {}
    for d in queries.decisions(cat):
        out[d["group_key"]] = d["id"]  # the latest decision about a key is the one in force
    return out


def store(cat: Catalog, groups: dict[str, list[dict]], state: list, settings: dict) -> int:
    """Replace the stored result with ``groups`` ({kind: [group dict as dupes gives it]}), found on
    the catalog ``state`` (queries.library_state, read before dupes read anything). Inside one
    transaction; returns the number of groups stored."""
    n = 0
    with cat.tx():
        by_key = _decision_by_key(cat)
        queries.clear_groups(cat)
        for kind in KINDS:
            for g in groups.get(kind, ()):
                ms = g["members"]
                key = group_key(m["content_hash"] for m in ms)
                keeper = next(m for m in ms if m["keeper"])
                sugg = g.get("suggested_source_id", keeper["source_id"])
                gid = queries.add_group(cat, {
                    "key": key, "kind": kind, "relation": g.get("kind") if kind == "copies" else kind,
                    "keeper_source_id": keeper["source_id"], "suggested_source_id": sugg,
                    "reclaimable_bytes": g["reclaimable_bytes"], "size": len(ms), "differs": differs(ms),
                    "decision_id": by_key.get(key)})
                queries.add_group_members(cat, (
                    (gid, pos, m["source_id"], m.get("thumb_id"), m["content_hash"],
                     {k: m.get(k) for k in SHOWN}) for pos, m in enumerate(ms)))
                n += 1
        queries.set_meta(cat, META_KEY, json.dumps({"state": state, "computed": time.time(), "settings": settings,
                                                    "groups": n}, default=str))
    return n
