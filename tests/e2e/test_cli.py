"""Every CLI command end to end: the real ``python -m nearsort.cli`` on a copy of samples/photos.

(``resize`` and ``dupes`` have many more in test_resize / test_trust_*; here each command gets at
least one run whose output and effect are checked.)"""
from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PY, SAMPLES

MODEL = "efficientnet-lite0"
N = len(list(SAMPLES.iterdir()))  # 24 photos; the re-encoded coffee collapses into 23 thumbnails


def cli(*args, code: int = 0) -> subprocess.CompletedProcess:
    r = subprocess.run([PY, "-m", "nearsort.cli", *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == code, (args, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


def _thumb_files(thumbs: Path) -> list[str]:
    return sorted(p.relative_to(thumbs).as_posix() for p in thumbs.rglob("*.jpg") if ".nearsort" not in p.parts)


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    """(SRC, THUMBS): the samples and one broken file, resized and featurized by the CLI."""
    base = tmp_path_factory.mktemp("e2e")
    src = base / "src"
    shutil.copytree(SAMPLES, src)
    (src / "broken.jpg").write_bytes(b"not a photo")
    thumbs = base / "thumbs"
    s = json.loads(cli("resize", src, "--out", thumbs, "-j", "2", "--json").stdout)
    assert s["processed"] == N and s["errors"] == 1 and s["new_thumbnails"] == N - 1 and s["status"] == "done"
    again = json.loads(cli("resize", src, "--out", thumbs, "--json").stdout)
    assert again["unchanged"] == N and again["errors"] == 1  # a failed file is always tried again
    f = json.loads(cli("featurize", thumbs, "--model", MODEL, "--device", "cpu", "--json").stdout)
    assert f["model"] == MODEL and f["embedded"] == N - 1 and f["status"] == "done" and f["index"]
    return src, thumbs


@pytest.fixture
def copy(lib, tmp_path):
    dst = tmp_path / "thumbs"
    shutil.copytree(lib[1], dst)
    return dst


def test_featurize_again_embeds_nothing(lib):
    text = cli("featurize", lib[1], "--model", MODEL, "--device", "cpu").stdout
    assert "0 thumbnails embedded" in text and f"{N - 1} already had a vector" in text
    one_line_error(cli("featurize", lib[1], "--batch", "0", code=2), "--batch")


def test_analyze_refresh_undo(copy):
    r = cli("analyze", copy)
    assert f"Ordered {N - 1} thumbnails by similarity:{MODEL}" in r.stdout and "nearsort refresh" in r.stdout
    a = json.loads(cli("analyze", copy, "--json").stdout)
    assert a["ordering"] == f"similarity:{MODEL}" and a["thumbnails"] == N - 1 and a["mst_ratio"] >= 1.0
    one_line_error(cli("analyze", copy, "--by", "colour", code=2), "--by must be one of")
    before = _thumb_files(copy)
    plan = cli("refresh", copy, "--dry-run")
    assert plan.stdout.count(" → p0001/") == N - 1 and "nothing was changed" in plan.stderr
    assert _thumb_files(copy) == before
    s = json.loads(cli("refresh", copy, "--json").stdout)
    assert s["moved"] == N - 1 and s["pages"] == 1 and s["op_id"] and s["plan"] == []
    after = _thumb_files(copy)
    assert len(after) == N - 1 and all(p.startswith("p0001/") for p in after)
    assert sorted(p.split("/")[1][:3] for p in after) == [f"{i:02d}_" for i in range(1, N)]
    exported = list(csv.DictReader(io.StringIO(cli("export", copy, "--csv", "-").stdout)))
    assert all(r["rank"] == r["analyzed_rank"] != "" for r in exported if r["thumb_path"])
    u = cli("undo", copy)
    assert f"Undone: refresh #{s['op_id']} ({N - 1} files moved back)" in u.stdout
    assert _thumb_files(copy) == before
    assert json.loads(cli("undo", copy, "--json").stdout)["undone"] is None


def test_dupes_quality_report(lib, tmp_path):
    d = json.loads(cli("dupes", lib[1], "--json").stdout)
    assert d["summary"]["groups"] == 2 and d["quarantine"] is None
    assert any(m["path"].endswith("copy-of-darknet__dog-half-size.jpg") for g in d["groups"] for m in g["members"])
    q = json.loads(cli("quality", lib[1], "--json").stdout)
    assert set(q["lists"]) == {"dark", "bright", "blurry"} and q["photos"] == N - 1
    assert [e["path"] for e in q["errors"]] == [str(lib[0] / "broken.jpg")]
    assert "Unreadable files: 1" in cli("quality", lib[1]).stdout
    r = cli("report", lib[1], "-o", tmp_path / "r.html")
    assert "2 duplicate groups" in r.stdout and "1 unreadable files" in r.stdout
    assert (tmp_path / "r.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_export_errors_info_tags(lib, copy):
    src, thumbs = lib
    rows = list(csv.DictReader(io.StringIO(cli("export", thumbs, "--csv", "-").stdout)))
    assert len(rows) == N + 1 and "analyzed_rank" in rows[0] and "rank" in rows[0]
    errs = json.loads(cli("errors", thumbs, "--json").stdout)
    assert [e["path"] for e in errs] == [str(src / "broken.jpg")] and errs[0]["error"]
    r = cli("errors", thumbs)
    assert r.stdout.startswith(f"{src / 'broken.jpg'}\t") and "1 errors" in r.stderr
    info = cli("info", thumbs).stdout
    assert f"sources: {N + 1}" in info and f"thumbs: {N - 1}" in info and "last run:" in info
    js = json.loads(cli("info", thumbs, "--json").stdout)
    assert js["sources"] == N + 1 and js["thumbs"] == N - 1 and js["last_command"]
    assert json.loads(cli("tags", copy, "--json").stdout) == {}
    first = _thumb_files(copy)[0]
    (copy / "cats").mkdir()
    shutil.move(copy / first, copy / "cats" / Path(first).name)
    assert json.loads(cli("tags", copy, "--json").stdout) == {"cats": 1}
    assert "cats" in cli("tags", copy).stdout


def test_search_by_labels_offline_and_similar(lib):
    thumbs = lib[1]
    r = json.loads(cli("search", "espresso", thumbs, "-k", "3", "--json").stdout)
    assert r["fallback"] and r["model"] == MODEL and "coffee" in r["results"][0]["sources"][0]
    text = cli("search", "espresso", thumbs, "-k", "3")
    assert "ImageNet label search" in text.stderr and "coffee" in text.stdout.splitlines()[0]
    # a text no class name matches: says what would search free text (CLIP), not a traceback
    none = cli("search", "qqqzzz", thumbs)
    assert "no text tower" in none.stderr and "CLIP" in none.stderr and "no results" in none.stderr
    one_line_error(cli("search", "dog", thumbs, "--model", "clip:ViT-B-32/laion2b_s34b_b79k", code=2),
                   "no embeddings for model", "nearsort featurize")
    top = r["results"][0]
    s = json.loads(cli("similar", thumbs / top["relpath"], thumbs, "-k", "2", "--json").stdout)
    assert s["in_library"] and s["thumb_id"] == top["thumb_id"] and len(s["results"]) == 2
    one_line_error(cli("similar", thumbs / "nope.jpg", thumbs, code=2), "nope.jpg")


def test_rebuild(copy):
    r = cli("rebuild", copy)
    assert f"Rebuilt the catalog from {N - 1} thumbnails" in r.stdout
    assert f"Kept the vectors of {N - 1} thumbnails for model {MODEL}" in r.stdout
    assert "previous catalog was kept" in r.stdout


def test_run_plans_then_applies(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(SAMPLES, src)
    thumbs = tmp_path / "thumbs"
    r = cli("run", src, "--out", thumbs, "--model", MODEL)
    for line in (f"resize: {N} processed", f"featurize: model {MODEL}, {N - 1} new vectors",
                 f"Ordered {N - 1} thumbnails", "dupes: 2 duplicate groups", "quality: ",
                 f"refresh (dry run): {N - 1} thumbnails would be renamed"):
        assert line in r.stdout, (line, r.stdout)
    assert not (thumbs / "p0001").exists()
    r = cli("run", src, "--out", thumbs, "--model", MODEL, "--apply", "--no-dupes", "--no-quality")
    assert f"resize: 0 processed, {N} unchanged" in r.stdout and "dupes:" not in r.stdout
    assert f"refresh: {N - 1} thumbnails renamed into 1 page folders" in r.stdout
    assert len(list((thumbs / "p0001").iterdir())) == N - 1
