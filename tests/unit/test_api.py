"""The public API: every stage a function of ``nearsort``, taking THUMBS or an open Catalog,
returning its dataclass, reporting through one progress callback; the README's snippet runs."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from dataclasses import fields, is_dataclass
from pathlib import Path

import pytest

import nearsort
from conftest import REPO, SAMPLES, make_photo
from nearsort import Catalog, CatalogError, Interrupted

MODEL = "efficientnet-lite0"
N = len(list(SAMPLES.iterdir()))
STAGES = ["resize", "rebuild", "featurize", "analyze", "refresh_names", "undo", "find_duplicates", "quarantine",
          "assess_quality", "write_report", "export", "search", "similar", "list_tags", "list_errors", "info", "run"]


def _readme_snippet() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- python-api:[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert m, "README has no Python API snippet"
    return m.group(1)


def test_readme_python_api_snippet_runs_on_the_samples(tmp_path):
    shutil.copytree(SAMPLES, tmp_path / "samples" / "photos")
    r = subprocess.run([sys.executable, "-c", _readme_snippet()], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{N} photos, {N - 1} thumbnails" in r.stdout  # the re-encoded coffee collapses by name
    assert "chain of 23 thumbnails by similarity:efficientnet-lite0" in r.stdout
    keeps = [ln for ln in r.stdout.splitlines() if ln.startswith("keep ")]
    assert any("darknet__dog.jpg" in ln and "copy-of-darknet__dog-half-size.jpg" in ln for ln in keeps), keeps
    assert "23 of 23 planned renames done, into 1 page folders" in r.stdout
    assert sorted(p.name for p in (tmp_path / "thumbs" / "p0001").iterdir())[0].startswith("01_")
    assert f"{N} rows in library.csv" in r.stdout
    assert "resize 24/24" in r.stderr and "featurize 23/23" in r.stderr  # the progress callback was heard
    rows = list(csv.DictReader(open(tmp_path / "library.csv", encoding="utf-8")))
    assert len(rows) == N and all(row["rank"] and row["rank"] == row["analyzed_rank"] for row in rows)


# ----------------------------------------------------------------------------- one library, every stage
@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """(SRC, THUMBS, {stage: [progress calls]}) after resize + featurize + analyze through the API."""
    base = tmp_path_factory.mktemp("api")
    src = base / "src"
    shutil.copytree(SAMPLES, src)
    (src / "broken.jpg").write_bytes(b"not a photo")
    thumbs = base / "thumbs"
    calls: dict[str, list] = {}

    def progress(stage, done, total):
        calls.setdefault(stage, []).append((done, total))

    assert isinstance(nearsort.resize(src, thumbs, workers=2, progress=progress), nearsort.ResizeResult)
    f = nearsort.featurize(thumbs, model=MODEL, device="cpu", progress=progress, log=lambda m: None)
    assert isinstance(f, nearsort.FeaturizeResult) and f.embedded == N - 1
    assert isinstance(nearsort.analyze(thumbs, progress=progress), nearsort.AnalyzeResult)
    return src, thumbs, calls


@pytest.fixture
def copy(lib, tmp_path):
    """A THUMBS of its own (same sources) for a test that writes."""
    dst = tmp_path / "thumbs"
    shutil.copytree(lib[1], dst)
    return dst


def _checked(res, cls):
    """``res`` is a ``cls``, a dataclass whose to_dict() has every field and is JSON."""
    assert isinstance(res, cls) and is_dataclass(res), type(res)
    d = res.to_dict()
    assert list(d) == [f.name for f in fields(res)]
    json.dumps(d, default=str)
    return res


def test_every_stage_is_exported_and_listed_in_help():
    for name in STAGES:
        fn = getattr(nearsort, name)
        assert callable(fn) and name in nearsort.__all__ and fn.__doc__, name
        assert f"``{name}(" in nearsort.__doc__, f"{name} missing from the module docstring (help(nearsort))"
    r = subprocess.run([sys.executable, "-c", "import nearsort; help(nearsort)"], capture_output=True, text=True,
                       env={"PAGER": "cat", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src")}, timeout=60)
    assert r.returncode == 0 and all(f"{name}(" in r.stdout for name in STAGES)


def test_the_first_stages_reported_progress(lib):
    _, _, calls = lib
    assert calls["resize"][-1] == (N + 1, N + 1)  # the samples and broken.jpg
    assert calls["featurize"][-1] == (N - 1, N - 1)
    assert calls["analyze"] and all(t is not None and 0 <= d <= t for d, t in calls["analyze"])


def test_read_only_stages_return_their_dataclass_from_a_path_or_an_open_catalog(lib, tmp_path):
    src, thumbs, _ = lib
    with Catalog.open(thumbs, write=False) as cat:
        for where in (thumbs, cat):
            d = _checked(nearsort.find_duplicates(where), nearsort.DupesResult)
            assert d.summary["groups"] == 2 and d.quarantine is None
            q = _checked(nearsort.assess_quality(where), nearsort.QualityResult)
            assert set(q.lists) == {"dark", "bright", "blurry"} and [e["path"] for e in q.errors] == [
                str(src / "broken.jpg")]
            e = _checked(nearsort.list_errors(where), nearsort.ErrorsResult)
            assert [x["path"] for x in e.errors] == [str(src / "broken.jpg")] and e.errors[0]["error"]
            i = _checked(nearsort.info(where), nearsort.InfoResult)
            assert (i.sources, i.sources_ok, i.errors, i.thumbs) == (N + 1, N, 1, N - 1)
            assert i.last_command.startswith("analyze")
            s = _checked(nearsort.search(where, "espresso", k=3), nearsort.SearchResult)
            assert s.fallback and "coffee" in s.results[0]["sources"][0]
            rel = s.results[0]["relpath"]
            m = _checked(nearsort.similar(where, rel, k=2), nearsort.SimilarResult)
            assert m.in_library and m.thumb_id == s.results[0]["thumb_id"] and len(m.results) == 2
            x = _checked(nearsort.export(where, csv_path=str(tmp_path / "x.csv")), nearsort.ExportResult)
            assert x.rows == N + 1 and x.csv == str(tmp_path / "x.csv")
            t = _checked(nearsort.list_tags(where), nearsort.TagsResult)
            assert t.tags == {}
        assert cat.execute("SELECT count(*) FROM thumbs").fetchone()[0] == N - 1  # still open: not ours to close
    calls = []
    r = _checked(nearsort.write_report(thumbs, tmp_path / "r.html", progress=lambda *a: calls.append(a)),
                 nearsort.ReportResult)
    assert Path(r.path).is_file() and r.groups == 2 and r.errors == 1 and r.chain == N - 1
    assert calls[-1] == ("dupes", 3, 3)


def test_writing_stages_refuse_a_read_only_catalog(lib):
    _, thumbs, _ = lib
    with Catalog.open(thumbs, write=False) as cat:
        for stage, args in (("analyze", (cat,)), ("featurize", (cat,)), ("refresh_names", (cat,)), ("undo", (cat,)),
                            ("quarantine", (cat, "/tmp/nowhere")), ("resize", (lib[0], cat))):
            with pytest.raises(CatalogError, match="open it with"):
                getattr(nearsort, stage)(*args)
    with Catalog.open(thumbs, write=False) as cat, pytest.raises(CatalogError, match="pass the THUMBS path"):
        nearsort.rebuild(cat)


def test_refresh_undo_and_export_ranks_on_one_open_catalog(copy, tmp_path):
    calls = []

    def progress(*a):
        calls.append(a)

    def ranks():
        nearsort.export(cat, csv_path=str(tmp_path / "e.csv"))
        return [(r["rank"], r["analyzed_rank"]) for r in csv.DictReader(open(tmp_path / "e.csv"))
                if r["thumb_path"]]

    with Catalog.open(copy) as cat:
        before = ranks()  # analyzed, not applied: the analyzed rank is there, the on-disk one not yet
        assert len(before) == N and all(r == "" and a for r, a in before)
        assert sorted({int(a) for _, a in before}) == list(range(1, N))
        plan = _checked(nearsort.refresh_names(cat, dry_run=True), nearsort.RefreshResult)
        assert plan.dry_run and len(plan.plan) == N - 1 and plan.op_id is None
        done = _checked(nearsort.refresh_names(cat, progress=progress), nearsort.RefreshResult)
        assert done.moved == N - 1 and done.pages == 1 and done.op_id and done.ordering == "similarity:" + MODEL
        assert calls[-1] == ("refresh", N - 1, N - 1)
        assert all(r == a for r, a in ranks())  # applied: the file names carry the analyzed ranks
        u = _checked(nearsort.undo(cat, progress=progress), nearsort.UndoResult)
        assert u.undone == done.op_id and u.undone_kind == "refresh" and u.moved == N - 1
        assert calls[-1] == ("undo", N - 1, N - 1)
        assert all(r == "" and a for r, a in ranks())
        assert _checked(nearsort.undo(cat), nearsort.UndoResult).undone is None


def test_dupes_quarantine_and_its_undo(tmp_path):
    src, thumbs = tmp_path / "src", tmp_path / "thumbs"
    shutil.copytree(SAMPLES, src)
    nearsort.resize(src, thumbs, workers=2)
    cfg = nearsort.DupesConfig(use_embeddings=False)  # exact and perceptual copies: no model needed
    found = nearsort.find_duplicates(thumbs, cfg)
    movers = {m["path"] for g in found.groups for m in g["members"] if not m["keeper"]}
    assert str(src / "copy-of-darknet__dog-half-size.jpg") in movers
    q = _checked(nearsort.quarantine(thumbs, tmp_path / "q", found, dry_run=True), nearsort.DupesResult)
    assert q.groups == found.groups and isinstance(q.quarantine, nearsort.QuarantineResult)
    assert q.quarantine.dry_run and {mv["src"] for mv in q.quarantine.moves} == movers
    assert found.quarantine is None  # the groups given are not changed
    calls = []
    res = nearsort.quarantine(thumbs, tmp_path / "q", config=cfg, progress=lambda *a: calls.append(a))
    assert res.quarantine.moved == len(movers) and res.quarantine.op_id and calls[-1] == ("dupes", 3, 3)
    assert not any(Path(p).exists() for p in movers)
    assert nearsort.undo(thumbs).undone_kind == "quarantine"
    assert all(Path(p).exists() for p in movers)


def test_rebuild_returns_its_dataclass_and_reports_progress(copy):
    calls = []
    r = _checked(nearsort.rebuild(copy, progress=lambda *a: calls.append(a)), nearsort.RebuildResult)
    assert r.imported == N - 1 and r.vectors == {MODEL: N - 1} and r.previous_catalog
    assert calls[-1] == ("rebuild", N - 1, None)


def test_interrupted_carries_the_stage_result(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        make_photo(src / f"{i}.jpg", i, size=(96, 64))

    def ctrl_c(stage, done, total):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted) as e:
        nearsort.resize(src, tmp_path / "thumbs", workers=1, progress=ctrl_c)
    assert isinstance(e.value.result, nearsort.ResizeResult) and e.value.result.status == "interrupted"
    with pytest.raises(Interrupted) as e:
        nearsort.run(src, tmp_path / "thumbs", model=MODEL, device="cpu", workers=1, progress=ctrl_c)
    run = e.value.result
    assert isinstance(run, nearsort.RunResult) and run.resize.status == "interrupted" and run.featurize is None


def test_bad_arguments_are_one_clear_error_before_anything_is_done(tmp_path):
    for call, what in ((lambda: nearsort.resize(SAMPLES, tmp_path / "t", layout="nope"), "--layout"),
                       (lambda: nearsort.resize(SAMPLES, tmp_path / "t", size=8), "--size"),
                       (lambda: nearsort.featurize(tmp_path / "t", batch=0), "--batch"),
                       (lambda: nearsort.analyze(tmp_path / "t", by="colour"), "--by"),
                       (lambda: nearsort.refresh_names(tmp_path / "t", per_page=0), "--per-page"),
                       (lambda: nearsort.search(tmp_path / "t", "  "), "empty search text")):
        with pytest.raises(nearsort.BadArgument, match=what):
            call()
    assert not (tmp_path / "t").exists()


def test_run_is_the_whole_pipeline(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SAMPLES, src)
    calls = []
    r = _checked(nearsort.run(src, tmp_path / "thumbs", model=MODEL, device="cpu", workers=2,
                              progress=lambda s, d, t: calls.append(s)), nearsort.RunResult)
    assert r.resize.processed == N and r.featurize.embedded == N - 1 and r.analyze.thumbnails == N - 1
    assert r.dupes.summary["groups"] == 2 and r.quality.photos == N - 1
    assert r.refresh.dry_run and len(r.refresh.plan) == N - 1  # a plan only: nothing renamed
    assert not any(p.name.startswith("p0") for p in (tmp_path / "thumbs").iterdir())
    assert [s for i, s in enumerate(calls) if s not in calls[:i]] == ["resize", "featurize", "analyze", "dupes"]
    again = nearsort.run(src, tmp_path / "thumbs", model=MODEL, device="cpu", dupes=False, quality=False,
                         apply=True)
    assert again.resize.unchanged == N and again.featurize.embedded == 0 and again.dupes is None
    assert again.refresh.moved == N - 1 and (tmp_path / "thumbs" / "p0001").is_dir()
