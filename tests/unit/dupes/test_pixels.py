"""Stored pixel verdicts (dupes/pixels.py, ``VERDICT_CACHE``): a dupes run over an unchanged library
compares no pixels and gives the same groups; a thumbnail whose file changed, and verdicts made by
other rules, are compared again. On the real library of tests/library.py (resize + featurize)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from nearsort.dupes import group as D
from nearsort.dupes import pixels as P
from nearsort.store.catalog import state_dir


def _answer(res: D.DupesResult):
    d = res.to_dict()
    return [d[k] for k in ("groups", "similar", "shots", "similar_groups")]


def test_unchanged_library_compares_nothing_again(featurized, tmp_path):
    _, _, thumbs = featurized
    lib = tmp_path / "thumbs"
    shutil.copytree(thumbs, lib)  # (copy2: the files keep their mtimes)
    store = state_dir(lib) / P.VERDICT_CACHE
    store.unlink(missing_ok=True)
    first = D.find_duplicates(lib)
    assert first.summary["pixel_checks"] >= 3 and first.groups and store.is_file()
    again = D.find_duplicates(lib)
    assert again.summary["pixel_checks"] == 0
    assert _answer(again) == _answer(first)

    # a thumbnail rewritten (its file's size changes): the pairs it is in are compared again, the rest not
    member = next(m["path"] for g in first.groups for m in g["members"] if not m["keeper"])
    with D.open_catalog(lib, write=False) as cat:
        members, _, rels = D.load_members(cat)
    tid = next(m.thumb_id for m in members if m.path == member)
    thumb = lib / rels[tid]
    st = thumb.stat()
    with open(thumb, "ab") as fh:
        fh.write(b"\0")  # after the JPEG's end: the same pixels, another file
    os.utime(thumb, ns=(st.st_atime_ns, st.st_mtime_ns))
    third = D.find_duplicates(lib)
    assert 0 < third.summary["pixel_checks"] < first.summary["pixel_checks"]
    assert _answer(third) == _answer(first)

    # verdicts made by other rules (another version of the code) are not used
    with np.load(store) as z:
        kept = {k: z[k] for k in z.files}
    np.savez(store, **{**kept, "version": np.array("other rules")})
    assert D.find_duplicates(lib).summary["pixel_checks"] == first.summary["pixel_checks"]
    # a damaged file is only a cache
    store.write_bytes(b"not an npz")
    fourth = D.find_duplicates(lib)
    assert fourth.summary["pixel_checks"] == first.summary["pixel_checks"] and _answer(fourth) == _answer(first)


def test_stored_verdict_round_trips(featurized, tmp_path):
    """What is stored is the verdict itself: kind, numbers and metrics, exactly."""
    _, _, thumbs = featurized
    with D.open_catalog(thumbs, write=False) as cat:
        _, _, rels = D.load_members(cat)
    tids = sorted(rels)[:6]
    pairs = [(a, b) for i, a in enumerate(tids) for b in tids[i + 1:]]
    store = tmp_path / P.VERDICT_CACHE
    pv = P.PixelVerifier(thumbs, rels, store=store)
    want = {(a, b): pv.compare(a, b) for a, b in pairs}
    want[pairs[0]] = pv.compare(*pairs[0], 0.2)  # (already known in full: the full verdict answers)
    pv.save()
    again = P.PixelVerifier(thumbs, rels, store=store)
    got = {(a, b): again.compare(a, b) for a, b in pairs}
    assert again.compared == 0
    for k, v in want.items():
        g = got[k]
        assert (g.kind, g.diff, g.local, g.scale, g.rotation) == (v.kind, v.diff, v.local, v.scale, v.rotation)
        assert json.dumps(g.metrics, sort_keys=True, default=float) == json.dumps(v.metrics, sort_keys=True,
                                                                                   default=float)
