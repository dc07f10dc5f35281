"""dupes / quality / quarantine on real files: bundled sample photos, variants made with Pillow,
real ``resize`` and (for near duplicates) real ``featurize`` with the offline default model."""
from __future__ import annotations

import io
import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from nearsort.dupes import group as D
from nearsort.dupes import quarantine as DQ
from nearsort.vectors import knn
from nearsort import quality as Q
from nearsort.store.catalog import Catalog
from nearsort.ingest.resize import resize

from library import (REPO, SAMPLES, ORIGINAL, DISTINCT, EVIL_IMG, EVIL_SCRIPT, EVIL_PWN, _save, _touch, make_library, sha)  # noqa: F401


def _group_of(res: D.DupesResult, path: Path):
    for g in res.groups:
        if str(path) in {m["path"] for m in g["members"]}:
            return g
    return None


# ----------------------------------------------------------------------------- unit-level
def test_hamming_pairs_is_exact_against_brute_force():
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**63, 1500, dtype=np.uint64)
    h[700:900] = h[:200] ^ (np.uint64(1) << rng.integers(0, 64, 200).astype(np.uint64))  # 1 bit apart
    h[900:950] = h[200:250]                                                              # equal
    h[950:1000] = h[250:300] ^ np.uint64(0xFF00FF)                                       # 16 bits apart
    for radius in (0, 3, 8, 16):
        i, j, d = knn.hamming_pairs(h, radius)
        assert (i < j).all() and (d <= radius).all()
        assert (knn.popcount(h[i] ^ h[j]) == d).all()
        full = knn.popcount(h[:, None] ^ h[None, :])
        want = {(a, b) for a, b in zip(*np.nonzero(np.triu(full <= radius, 1)))}
        # equal hashes come back as a star, so compare connected components
        def comps(pairs):
            dsu = D.DSU(len(h))
            for a, b in pairs:
                dsu.union(int(a), int(b))
            return dsu.roots()
        ra, rb = comps(zip(i, j)), comps(want)
        assert len(set(zip(ra, rb))) == len(set(ra)) == len(set(rb))


def test_keep_policy_parsing():
    assert D.parse_keep("size, oldest") == ["size", "oldest"]
    with pytest.raises(D.DupesError, match="unknown key"):
        D.parse_keep("resolution,prettiest")


def test_quality_thresholds_have_guards():
    good = np.random.default_rng(0).uniform(90, 160, 1000)
    sharp = np.random.default_rng(1).uniform(200, 3000, 1000)
    t = Q.thresholds_from(good, sharp)
    # a library of good photos: the 5th percentile is ~94, but nothing is called dark / bright / blurry
    assert t["dark"]["value"] == Q.DARK_GUARD[1] and (good < t["dark"]["value"]).sum() == 0
    assert t["bright"]["value"] == Q.BRIGHT_GUARD[0] and (good > t["bright"]["value"]).sum() == 0
    assert (sharp < t["blurry"]["value"]).sum() == 0
    night = np.concatenate([np.full(600, 8.0), good[:400]])
    t2 = Q.thresholds_from(night, sharp, Q.Thresholds(bright=200))
    assert t2["dark"]["value"] == Q.DARK_GUARD[0]      # 60 % night shots: all reported (< 20)
    assert t2["bright"] == {"value": 200.0, "how": "given"}


# ----------------------------------------------------------------------------- groups
def test_groups_keeper_and_mirror(featurized):
    base, p, thumbs = featurized
    res = D.find_duplicates(thumbs)
    assert res.summary["model"] == "efficientnet-lite0"
    g = _group_of(res, p["original"])
    assert g is not None
    members = {m["path"]: m for m in g["members"]}
    want = {str(p[k]) for k in ("original", "exact", "resized", "reencoded", "crop", "letterbox")}
    assert set(members) == want, (set(members) ^ want)
    # keeper: highest resolution (the letterbox's bars do not count), richest EXIF, then the older copy
    assert g["keeper"] == str(p["original"]) and members[str(p["original"])]["keeper"]
    assert members[str(p["exact"])]["relation"] == "exact"
    assert members[str(p["crop"])]["relation"] == "near"
    assert {"exact", "perceptual", "near"} <= set(g["evidence"])
    assert g["kind"] == "near"
    assert g["reclaimable_bytes"] == sum(m["bytes"] for m in g["members"] if not m["keeper"])
    # the mirror image is similar, not a duplicate: in no group, but listed with this group
    assert _group_of(res, p["flip"]) is None
    assert any(str(p["flip"]) in s["paths"] for s in g["similar"])
    assert any(s["group_a"] == g["id"] or s["group_b"] == g["id"] for s in res.similar)
    # the byte copy with a hostile name is an exact group with the eagle
    ge = _group_of(res, p["evil_copy"])
    assert ge is not None and ge["kind"] == "exact"
    assert {m["path"] for m in ge["members"]} == {str(p["evil_copy"]), str(p["darknet__eagle.jpg"])}
    assert ge["keeper"] == str(p["darknet__eagle.jpg"])  # same bytes: the older file
    # distinct photos, the dark and the blurry one stay alone; nothing else was grouped
    for k in DISTINCT + ["dark", "blurry"]:
        if k != "darknet__eagle.jpg":
            assert _group_of(res, p[k]) is None, k
    assert len(res.groups) == 2
    text = D.format_text(res)
    assert "★ keep" in text and "mirror" in text


def test_without_embeddings_and_other_policies(featurized):
    base, p, thumbs = featurized
    res = D.find_duplicates(thumbs, D.DupesConfig(use_embeddings=False))
    g = _group_of(res, p["original"])
    # exact + perceptual only: the crop and the letterbox need the embedding + thumbnail check
    assert {m["path"] for m in g["members"]} == {str(p[k]) for k in ("original", "exact", "resized", "reencoded")}
    res2 = D.find_duplicates(thumbs, D.DupesConfig(keep="size"))
    assert _group_of(res2, p["original"])["keeper"] == str(p["letterbox"])  # the biggest file (a PNG)
    res3 = D.find_duplicates(thumbs, D.DupesConfig(keep="newest,path"))
    assert _group_of(res3, p["original"])["keeper"] in {str(p[k]) for k in ("crop", "letterbox", "resized",
                                                                              "reencoded")}
    buf = io.StringIO()
    D.write_json(res, buf)
    assert json.loads(buf.getvalue())["summary"]["groups"] == len(res.groups)


def test_quality_lists(featurized):
    base, p, thumbs = featurized
    res = Q.assess_quality(thumbs)
    assert [it["paths"][0] for it in res.lists["dark"]] == [str(p["dark"])]
    assert [it["paths"][0] for it in res.lists["blurry"]] == [str(p["blurry"])]
    assert res.lists["bright"] == []
    errs = {e["path"]: e["error"] for e in res.errors}
    assert set(errs) == {str(p["broken"]), str(p["evil_broken"])}
    assert all(errs.values())
    assert "Dark: 1 of" in Q.format_text(res)
    only = Q.assess_quality(thumbs, kinds=["blurry"], thresholds=Q.Thresholds(blurry=1e9), limit=3)
    assert list(only.lists) == ["blurry"] and len(only.lists["blurry"]) == 3
    bl = [it["blur"] for it in only.lists["blurry"]]
    assert bl == sorted(bl)  # worst first


# ----------------------------------------------------------------------------- quarantine
@pytest.fixture
def small_lib(tmp_path):
    p = make_library(tmp_path / "src", with_near=False)
    thumbs = tmp_path / "thumbs"
    resize(tmp_path / "src", thumbs, workers=2)
    return tmp_path, p, thumbs


def _statuses(thumbs: Path) -> dict[str, str]:
    with Catalog.open(thumbs, write=False) as cat:
        return {os.fsdecode(bytes(pa)): st for pa, st in cat.execute("SELECT path, status FROM sources")}


def test_quarantine_moves_then_undo_restores(small_lib):
    from nearsort import refresh as rename

    base, p, thumbs = small_lib
    q = base / "quarantine"
    before = {k: sha(v) for k, v in p.items() if v.exists()}
    cfg = D.DupesConfig(use_embeddings=False)
    res = DQ.quarantine(thumbs, q, config=cfg, dry_run=True)
    plan = res.quarantine
    movers = {str(p[k]) for k in ("exact", "resized", "reencoded", "evil_copy")}
    assert {mv["src"] for mv in plan.moves} == movers
    assert not q.exists() and all(Path(m).exists() for m in movers)  # dry run: nothing moved

    res = DQ.quarantine(thumbs, q, config=cfg)
    summary = res.quarantine
    assert summary.moved == 4 and summary.op_id
    for k in ("exact", "resized", "reencoded", "evil_copy"):
        dst = q / str(p[k]).lstrip(os.sep)           # mirrors the absolute path
        assert not p[k].exists() and dst.exists() and sha(dst) == before[k]
    assert (q / DQ.MARKER).exists()
    for k in ("original", "darknet__eagle.jpg", "flip"):
        assert p[k].exists()                           # keepers and mirror images stay
    st = _statuses(thumbs)
    assert {k for k, v in st.items() if v == "quarantined"} == movers
    with Catalog.open(thumbs, write=False) as cat:
        qp = DQ.quarantined_paths(cat)
        srcs = {sid: os.fsdecode(bytes(pa)) for sid, pa in cat.execute("SELECT id, path FROM sources")}
    assert {srcs[s]: d for s, d in qp.items()} == {m: str(q / m.lstrip(os.sep)) for m in movers}
    # quarantined files are no longer offered as duplicates
    assert _group_of(D.find_duplicates(thumbs, cfg), p["original"]) is None

    r = rename.undo(thumbs)
    assert r.undone == summary.op_id and r.moved == 4
    after = {k: sha(v) for k, v in p.items() if v.exists()}
    assert after == before
    assert set(_statuses(thumbs).values()) <= {"ok", "error"}
    assert sorted(os.listdir(q)) == [DQ.MARKER]        # emptied folders removed, the note stays
    g = _group_of(D.find_duplicates(thumbs, cfg), p["original"])
    assert g is not None and len(g["members"]) == 4

    # again, undone by a process that only knows rename.py (like `nearsort undo`)
    res = DQ.quarantine(thumbs, q, config=cfg)
    summary = res.quarantine
    assert summary.moved == 4
    import subprocess

    r = subprocess.run([sys.executable, "-c", "import sys; from nearsort import refresh as rename; "
                        "print(rename.undo(sys.argv[1]).moved)", str(thumbs)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[-1] == "4", r.stderr
    assert {k: sha(v) for k, v in p.items() if v.exists()} == before
    g = _group_of(D.find_duplicates(thumbs, cfg), p["original"])
    assert g is not None and len(g["members"]) == 4   # restored files count again at once


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_quarantine_refuses_read_only_sources(small_lib):
    base, p, thumbs = small_lib
    folder = p["exact"].parent
    mode = folder.stat().st_mode
    folder.chmod(0o555)
    try:
        with pytest.raises(D.DupesError, match="read-only") as ei:
            DQ.quarantine(thumbs, base / "q", config=D.DupesConfig(use_embeddings=False))
        assert str(folder) in str(ei.value)
        assert not (base / "q").exists()
        assert all(v.exists() for k, v in p.items() if k in ("exact", "resized", "reencoded", "evil_copy"))
        assert "quarantined" not in _statuses(thumbs).values()
    finally:
        folder.chmod(stat.S_IMODE(mode))


def test_quarantine_refuses_inside_library_and_skips_changed_files(small_lib):
    base, p, thumbs = small_lib
    cfg = D.DupesConfig(use_embeddings=False)
    with pytest.raises(D.DupesError, match="inside"):
        DQ.quarantine(thumbs, base / "src" / "dupes", config=cfg)
    with pytest.raises(D.DupesError, match="inside"):
        DQ.quarantine(thumbs, thumbs / "q", config=cfg)
    with open(p["resized"], "ab") as fh:   # changed after the last resize
        fh.write(b"\0")
    res = DQ.quarantine(thumbs, base / "q", config=cfg, dry_run=True)
    plan = res.quarantine
    assert str(p["resized"]) in {s["path"] for s in plan.skipped}
    assert str(p["resized"]) not in {mv["src"] for mv in plan.moves}


def test_cli_dupes_json_if_wired(tmp_path):
    """`nearsort dupes --json` prints the groups."""
    import subprocess

    from nearsort import cli

    names = {c.name or (c.callback.__name__ if c.callback else None) for c in cli.app.registered_commands}
    if "dupes" not in names:
        pytest.skip("`nearsort dupes` is not in cli.py yet")
    p = make_library(tmp_path / "src", with_near=False)
    thumbs = tmp_path / "thumbs"
    resize(tmp_path / "src", thumbs, workers=2)
    out = subprocess.run([sys.executable, "-c", "from nearsort.cli import main; main()", "dupes", str(thumbs),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert _group_of(D.DupesResult(groups=data["groups"]), p["original"]) is not None


def test_crop_distances_of_many_pairs_are_those_of_each_pair():
    """dupes scores its ~10 k-NN candidates per thumbnail on arrays: the same (direct, mirrored)
    distances as pair by pair (random signatures, and pairs a few bits apart)."""
    rng = np.random.default_rng(3)
    sigs = rng.integers(0, 1 << 63, (400, 2 * len(D.SCALES) + 1), dtype=np.int64).astype(np.uint64)
    sigs[200:] = sigs[:200] ^ (rng.integers(0, 1 << 63, (200, sigs.shape[1]), dtype=np.int64).astype(np.uint64)
                               & np.uint64(0x0101010101010101))  # near pairs: a few bits apart
    a = np.concatenate([rng.integers(0, 400, 3000), np.arange(200)])
    b = np.concatenate([rng.integers(0, 400, 3000), np.arange(200, 400)])
    direct, mirror = D.crop_distances_many(sigs[a], sigs[b])
    assert [(int(x), int(y)) for x, y in zip(direct, mirror)] == [D.crop_distances(sigs[i], sigs[j]) for i, j in zip(a, b)]
    assert (direct[-200:] <= 8).all() and (direct[:3000] > 8).mean() > 0.9  # near pairs and far ones
    empty = D.crop_distances_many(sigs[:0], sigs[:0])
    assert len(empty[0]) == len(empty[1]) == 0
