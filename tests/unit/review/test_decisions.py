"""Review decisions on a real library (tests/library.py photos, resized for real, a real catalog):
stored groups paged worst first, decisions that stick in ``dupes``, undo, bulk accept, apply."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nearsort
from library import make_library, sha

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def lib(tmp_path):
    """A resized library (no embeddings: exact and perceptual copies only), its groups stored."""
    paths = make_library(tmp_path / "src", with_near=False)
    thumbs = tmp_path / "thumbs"
    nearsort.resize(tmp_path / "src", thumbs, workers=1)
    return tmp_path, paths, thumbs


def _group_with(page, path) -> dict:
    return next(g for g in page.groups if any(m["path"] == str(path) for m in g["members"]))


def _keeper(res, path) -> str:
    return next(g["keeper"] for g in res.groups if any(m["path"] == str(path) for m in g["members"]))


def test_groups_are_stored_by_dupes_and_paged_worst_first(lib):
    _, p, thumbs = lib
    assert not nearsort.groups_state(thumbs).stored
    found = nearsort.find_duplicates(thumbs)
    st = nearsort.groups_state(thumbs)
    assert st.stored and not st.stale and st.kinds["copies"]["total"] == len(found.groups) >= 2
    first = nearsort.group_page(thumbs, limit=1)
    second = nearsort.group_page(thumbs, offset=1, limit=1)
    assert first.total == len(found.groups) and len(first.groups) == 1 and not first.stale
    a, b = first.groups[0], second.groups[0]
    assert a["reclaimable_bytes"] >= b["reclaimable_bytes"] and a["id"] != b["id"]
    g = _group_with(nearsort.group_page(thumbs), p["original"])
    keeper = next(m for m in g["members"] if m["keeper"])
    assert keeper["source_id"] == g["suggested_keeper_source_id"] == g["keeper_source_id"]
    assert keeper["path"] == str(p["original"]) and g["decision"] is None
    assert (Path(thumbs) / keeper["thumb"]).is_file()
    assert {"width", "height", "bytes", "format", "capture_time", "camera", "relation"} <= set(keeper)
    assert "resolution" in g["differs"] and "bytes" in g["differs"]   # the 750x500 resize is in it
    # a new photo makes the stored result stale; refresh_groups finds the groups again
    shutil.copyfile(p["darknet__dog.jpg"], p["darknet__dog.jpg"].with_name("dog again.jpg"))
    nearsort.resize(p["original"].parents[2], thumbs, workers=1)
    assert nearsort.group_page(thumbs).stale
    st = nearsort.refresh_groups(thumbs)
    assert not st.stale and st.kinds["copies"]["total"] == len(found.groups) + 1


def test_a_chosen_keeper_sticks_and_undo_reverts_it(lib):
    _, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    g = _group_with(nearsort.group_page(thumbs), p["original"])
    other = next(m for m in g["members"] if m["path"] == str(p["exact"]))
    d = nearsort.decide(thumbs, g["id"], "accept", keeper=other["source_id"])
    assert d.action == "accept" and d.keeper_source_id == other["source_id"]
    assert nearsort.group_page(thumbs).total == nearsort.groups_state(thumbs).kinds["copies"]["total"] - 1
    assert _keeper(nearsort.find_duplicates(thumbs), p["original"]) == str(p["exact"])
    # a second accept with another keeper replaces the first; undo brings the first back
    g = _group_with(nearsort.group_page(thumbs, pending_only=False), p["original"])
    small = next(m for m in g["members"] if m["path"] == str(p["resized"]))
    nearsort.decide(thumbs, g["id"], "accept", keeper=small["source_id"])
    assert _keeper(nearsort.find_duplicates(thumbs), p["original"]) == str(p["resized"])
    assert nearsort.undo_decision(thumbs).keeper_source_id is None
    assert _keeper(nearsort.find_duplicates(thumbs), p["original"]) == str(p["exact"])
    g = _group_with(nearsort.group_page(thumbs, pending_only=False), p["original"])
    assert g["keeper_source_id"] == other["source_id"] and g["decision"]["action"] == "accept"
    u = nearsort.undo_decision(thumbs)
    assert u is not None and u.undone and u.id == d.id
    assert _keeper(nearsort.find_duplicates(thumbs), p["original"]) == str(p["original"])
    g = _group_with(nearsort.group_page(thumbs), p["original"])   # pending again, the suggested keeper back
    assert g["decision"] is None and g["keeper_source_id"] == g["suggested_keeper_source_id"]
    assert nearsort.undo_decision(thumbs) is None


def test_not_duplicates_is_never_proposed_again(lib):
    _, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    g = _group_with(nearsort.group_page(thumbs), p["original"])
    small = next(m for m in g["members"] if m["path"] == str(p["resized"]))
    nearsort.decide(thumbs, g["id"], "distinct", member=small["source_id"])
    left = nearsort.get_group(thumbs, g["id"])
    assert str(p["resized"]) not in [m["path"] for m in left["members"]] and left["decision"] is None
    out = subprocess.run([sys.executable, "-m", "nearsort.cli", "dupes", str(thumbs), "--json"], capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, check=True)
    paths = [m["path"] for gr in json.loads(out.stdout)["groups"] for m in gr["members"]]
    assert str(p["resized"]) not in paths and str(p["original"]) in paths
    # the whole group of the eagle and its byte copy... is refused for one member, fine as a whole
    eagle = _group_with(nearsort.group_page(thumbs), p["darknet__eagle.jpg"])
    with pytest.raises(nearsort.BadArgument, match="byte-for-byte"):
        nearsort.decide(thumbs, eagle["id"], "distinct", member=eagle["members"][1]["source_id"])
    nearsort.decide(thumbs, eagle["id"], "distinct")
    res = nearsort.find_duplicates(thumbs)
    assert not any(m["path"] == str(p["evil_copy"]) for gr in res.groups for m in gr["members"])


def test_bad_decisions_are_refused_with_one_clear_line(lib):
    _, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    g = nearsort.group_page(thumbs).groups[0]
    with pytest.raises(nearsort.BadArgument, match="action"):
        nearsort.decide(thumbs, g["id"], "delete")
    with pytest.raises(nearsort.BadArgument, match="no group 9999"):
        nearsort.decide(thumbs, 9999, "accept")
    with pytest.raises(nearsort.BadArgument, match="not a member"):
        nearsort.decide(thumbs, g["id"], "accept", keeper=123456)
    with pytest.raises(nearsort.BadArgument, match="never accepted in bulk"):
        nearsort.accept_all(thumbs, kind="similar")
    assert nearsort.groups_state(thumbs).decisions == 0


def test_accept_all_exact_then_apply_is_one_quarantine_that_undo_reverses(lib):
    tmp, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    st = nearsort.groups_state(thumbs)
    n = nearsort.accept_all(thumbs, kind="copies", relation="exact")
    assert n >= 1 and nearsort.groups_state(thumbs).kinds["copies"]["pending"] == st.kinds["copies"]["pending"] - n
    summary = nearsort.pending_summary(thumbs)
    assert summary["files"] >= 1 and summary["bytes"] > 0
    before = {k: sha(v) for k, v in p.items() if v.is_file() and k != "broken"}
    dry = nearsort.apply_decisions(thumbs, tmp / "quarantine", dry_run=True)
    assert len(dry.moves) == summary["files"] and dry.bytes == summary["bytes"] and not (tmp / "quarantine").exists()
    q = nearsort.apply_decisions(thumbs, tmp / "quarantine")
    assert q.moved == summary["files"] and q.op_id is not None
    assert not p["evil_copy"].exists() and p["darknet__eagle.jpg"].exists()   # a copy moved, its keeper stayed
    assert p["resized"].exists()   # a perceptual group not accepted: untouched
    nearsort.undo(thumbs)
    assert {k: sha(v) for k, v in p.items() if v.is_file() and k != "broken"} == before


def test_decisions_survive_new_photos_another_model_and_rebuild(lib):
    """The keeper chosen and the "not duplicates" stick through resize of new photos, featurize
    with another model, and rebuild from the thumbnails alone (the catalog deleted)."""
    tmp, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    g = _group_with(nearsort.group_page(thumbs), p["original"])
    ids = {m["path"]: m["source_id"] for m in g["members"]}
    nearsort.decide(thumbs, g["id"], "distinct", member=ids[str(p["reencoded"])])
    nearsort.decide(thumbs, g["id"], "accept", keeper=ids[str(p["exact"])])

    def honoured() -> None:
        res = nearsort.find_duplicates(thumbs)
        assert _keeper(res, p["original"]) == str(p["exact"])
        assert not any(m["path"] == str(p["reencoded"]) for gr in res.groups for m in gr["members"])
        page = nearsort.group_page(thumbs, pending_only=False)
        decided = _group_with(page, p["original"])
        assert decided["decision"]["action"] == "accept" and decided["keeper_source_id"] != decided[
            "suggested_keeper_source_id"]
        assert not any(_group_with(page, p["original"]) is not gr and str(p["reencoded"]) in
                       [m["path"] for m in gr["members"]] for gr in page.groups)

    shutil.copyfile(p["darknet__dog.jpg"], tmp / "src" / "misc" / "new dog.jpg")
    nearsort.resize(tmp / "src", thumbs, workers=1)
    honoured()
    nearsort.featurize(thumbs, model="clip:ViT-S-32/random", device="cpu", log=lambda m: None)
    honoured()
    cat = Path(thumbs) / ".nearsort" / "catalog.sqlite"
    for side in ("", "-wal", "-shm"):
        Path(str(cat) + side).unlink(missing_ok=True)
    r = nearsort.rebuild(thumbs)
    assert r.imported > 0
    with nearsort.Catalog.open(thumbs) as c:
        assert c.execute("SELECT count(*) FROM decisions").fetchone()[0] == 2
    assert nearsort.groups_state(thumbs).stale
    nearsort.refresh_groups(thumbs)
    honoured()
    # undo after the rebuild still reverts the last decision, and the thumbnails forget it
    nearsort.undo_decision(thumbs)
    assert _keeper(nearsort.find_duplicates(thumbs), p["original"]) == str(p["original"])
    from nearsort.store import thumbmeta
    carried = [d for f in Path(thumbs).rglob("*.jpg") for d in (thumbmeta.read(f) or {}).get("decisions", [])]
    assert {d["action"] for d in carried} == {"distinct"}


def test_the_report_and_dupes_move_to_honour_the_decisions(lib):
    """A member marked "not a duplicate" is not in the report's groups and stays home when
    `dupes --move-to` quarantines the rest of its group; a group marked so is not in the report."""
    tmp, p, thumbs = lib
    nearsort.refresh_groups(thumbs)
    before = nearsort.write_report(thumbs, tmp / "before.html")
    g = _group_with(nearsort.group_page(thumbs), p["original"])
    ids = {m["path"]: m["source_id"] for m in g["members"]}
    nearsort.decide(thumbs, g["id"], "distinct", member=ids[str(p["resized"])])
    eagle = _group_with(nearsort.group_page(thumbs), p["darknet__eagle.jpg"])
    nearsort.decide(thumbs, eagle["id"], "distinct")
    after = nearsort.write_report(thumbs, tmp / "after.html")
    assert after.groups == before.groups - 1 and after.duplicates == before.duplicates - 2
    assert after.reclaimable == before.reclaimable - p["resized"].stat().st_size - p["evil_copy"].stat().st_size
    q = tmp / "quarantine"
    r = subprocess.run([sys.executable, "-m", "nearsort.cli", "dupes", str(thumbs), "--move-to", str(q)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert r.returncode == 0, r.stderr
    assert p["resized"].exists() and p["evil_copy"].exists() and p["original"].exists()
    assert not p["exact"].exists() and not p["reencoded"].exists()   # the rest of the group did move
