"""Review pages at scale: time to the first screen of duplicate groups and to the next group, from
the groups ``dupes`` stored, on a synthetic catalog (real SQLite file, synthetic rows).

    nice .venv/bin/python bench/review.py --photos 100000 --runs 5

The catalog holds ``--photos`` originals with a thumbnail each; every 10th has 1-3 copies, so
there are photos/10 stored copy groups (kind "copies"). Measured, best of ``--runs``:

* start-up check -- ``groups_state`` (is the stored result stale? counts per kind);
* first screen -- ``group_page(limit=20)``;
* next group -- ``decide(accept)`` on the group shown (catalog + its members' real thumbnail
  files rewritten to carry the decision) and ``group_page`` of what comes next;
* the floor -- the same first page as two bare SQL queries (no JSON, no members' dicts);
* the peer -- what a page holding everything costs: every stored group with its members.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import nearsort  # noqa: E402
from nearsort.dupes import stored  # noqa: E402
from nearsort.store import queries, sync, thumbmeta  # noqa: E402
from nearsort.store.catalog import Catalog  # noqa: E402

DECIDED = 20  # groups decided in the "next group" runs get real thumbnail files


def build(root: Path, photos: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    with Catalog.open(root, create=True) as cat:
        with cat.tx() as c:
            c.executemany("INSERT INTO thumbs(id, name, relpath, tw, th, blur) VALUES(?,?,?,?,?,?)",
                          ((i, f"4000x3000_{i:016x}", f"2020/W{i % 52 + 1:02d}/4000x3000_{i:016x}.jpg", 256, 192,
                            float(rng.uniform(10, 900))) for i in range(1, photos + 1)))
            c.executemany("INSERT INTO originals(id, content_hash, thumb_id, width, height, format, bytes, phash,"
                          " capture_time, make, model) VALUES(?,?,?,?,?,?,?,?,?,?,?)",
                          ((i, f"{i:064x}", i, 4000, 3000, "JPEG", 2_000_000 + i, f"{i:016x}",
                            "2020-01-01T00:00:00", "Canon", "EOS") for i in range(1, photos + 1)))
            rows, sid = [], 0
            groups = {}
            for i in range(1, photos + 1):
                n = 1 + (int(rng.integers(1, 4)) if i % 10 == 0 else 0)
                for k in range(n):
                    sid += 1
                    rows.append((sid, os.fsencode(f"/photos/{i % 97}/{i}_{k}.jpg"), i, 2_000_000 + i, 10**18 + i))
                    groups.setdefault(i, []).append(sid) if n > 1 else None
            c.executemany("INSERT INTO sources(id, path, original_id, size, mtime_ns, status) VALUES(?,?,?,?,?,'ok')",
                          rows)
        state = queries.library_state(cat)
        out = []
        for i, sids in groups.items():
            ms = [{"path": f"/photos/{i % 97}/{i}_{k}.jpg", "source_id": s, "keeper": k == 0,
                   "relation": "keeper" if k == 0 else "exact", "thumb_id": i, "width": 4000, "height": 3000,
                   "bytes": 2_000_000 + i, "format": "JPEG", "capture_time": "2020-01-01T00:00:00",
                   "camera": "Canon EOS", "content_hash": f"{i:064x}"} for k, s in enumerate(sids)]
            out.append({"kind": "exact", "members": ms, "reclaimable_bytes": sum(m["bytes"] for m in ms[1:])})
        stored.store(cat, {"copies": out}, state, {})
        # real thumbnail files for the groups the "next group" runs decide (worst first)
        for g in queries.groups_page(cat, "copies", 0, DECIDED * 10, True):
            tid = queries.group_members(cat, [g["id"]])[g["id"]][0]["thumb_id"]
            path = root / queries.thumb_relpath(cat, tid)
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (256, 192), (tid % 255, 80, 120)).save(path, quality=85)
            thumbmeta.rewrite(path, sync.thumb_meta(cat, tid))
        return len(out)


def best(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nearsort-review-bench-") as tmp:
        root = Path(tmp) / "thumbs"
        root.mkdir()
        t0 = time.perf_counter()
        n_groups = build(root, a.photos)
        built = time.perf_counter() - t0
        with Catalog.open(root, write=False) as cat:
            def floor():
                rows = cat.execute("SELECT id FROM dupe_groups WHERE kind='copies' AND decision_id IS NULL"
                                   " ORDER BY reclaimable_bytes DESC, id LIMIT 20").fetchall()
                ids = [r[0] for r in rows]
                cat.execute(f"SELECT * FROM dupe_members WHERE group_id IN ({','.join('?' * len(ids))})", ids).fetchall()

            def everything():
                ids = queries.group_ids(cat, "copies")
                return queries.group_members(cat, ids)

            t_floor = best(floor, a.runs)
            t_all = best(everything, max(1, a.runs // 2))
        t_state = best(lambda: nearsort.groups_state(root), a.runs)
        t_first = best(lambda: nearsort.group_page(root, limit=20), a.runs)
        nexts = []
        for _ in range(min(a.runs, DECIDED)):
            g = nearsort.group_page(root, limit=1).groups[0]
            t0 = time.perf_counter()
            nearsort.decide(root, g["id"], "accept")
            nearsort.group_page(root, limit=20)
            nexts.append(time.perf_counter() - t0)
        print(json.dumps({
            "photos": a.photos, "stored_groups": n_groups, "build_s": round(built, 1),
            "startup_check_ms": round(t_state * 1e3, 1), "first_screen_ms": round(t_first * 1e3, 1),
            "next_group_ms": round(min(nexts) * 1e3, 1), "floor_bare_sql_ms": round(t_floor * 1e3, 2),
            "peer_all_groups_ms": round(t_all * 1e3, 1),
            "first_screen_vs_floor": round(t_first / t_floor, 1), "all_groups_vs_first_screen": round(t_all / t_first, 1),
        }, indent=1))


if __name__ == "__main__":
    main()
