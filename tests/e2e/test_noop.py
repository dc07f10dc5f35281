"""Nothing to do costs nothing: featurize, analyze, dupes and run on an up-to-date library decide
from the catalog that there is no work, import no torch / ONNX Runtime / Ray and stay small (also
with ``--engine ray``: no cluster is contacted). The real
CLI runs in a subprocess under a tiny wrapper that reports what the process imported and its peak
RSS (VmHWM); no timed assertions."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SAMPLES, make_photo
from nearsort.embed import models as M

RSS_LIMIT_MB = 300  # measured 60-100 MB; torch alone is ~400 MB

WRAPPER = """
import atexit, json, os, resource, sys
def _report():
    try:
        kb = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with open(os.environ["NEARSORT_NOOP_REPORT"], "w") as f:
        json.dump({"torch": "torch" in sys.modules, "onnxruntime": "onnxruntime" in sys.modules,
                   "open_clip": "open_clip" in sys.modules, "ray": "ray" in sys.modules, "rss_mb": kb / 1024}, f)
atexit.register(_report)
sys.argv = ["nearsort"] + sys.argv[1:]
from nearsort.cli import main
main()
"""


def nearsort(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    report.unlink(missing_ok=True)
    env = {**os.environ, "NEARSORT_NOOP_REPORT": str(report),
           "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, args)], env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr
    return p, json.loads(report.read_text())


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """samples/photos (copied: photos are added below) made into an up-to-date library by `nearsort run`
    with every default (model auto, backend auto)."""
    base = tmp_path_factory.mktemp("noop")
    src = base / "src"
    shutil.copytree(SAMPLES, src)
    thumbs = base / "thumbs"
    p, rep = nearsort(base, "run", src, "--out", thumbs)
    assert rep["onnxruntime"] and "new vectors" in p.stdout  # (torch too, unless the graph was checked before)
    return base, src, thumbs


@pytest.mark.parametrize("cmd", ["featurize", "analyze", "dupes", "run", "featurize-ray"])
def test_nothing_to_do_imports_no_torch(library, cmd):
    base, src, thumbs = library
    args = ["run", src, "--out", thumbs] if cmd == "run" else [cmd, thumbs]
    if cmd == "featurize-ray":  # nothing listens at that address: it is never contacted
        args = ["featurize", thumbs, "--engine", "ray", "--address", "127.0.0.1:1"]
    p, rep = nearsort(base, *args)
    assert not rep["torch"] and not rep["onnxruntime"] and not rep["open_clip"] and not rep["ray"], (cmd, rep)
    assert rep["rss_mb"] < RSS_LIMIT_MB, (cmd, rep)
    if cmd.startswith("featurize"):
        assert "0 thumbnails embedded" in p.stdout and "nothing to embed" in p.stdout
    if cmd == "run":
        assert "0 new vectors" in p.stdout and "0 processed" in p.stdout


def test_analyze_keeps_an_unchanged_order_and_redoes_a_changed_one(library, tmp_path):
    base, src, thumbs = library
    first = json.loads(nearsort(base, "analyze", thumbs, "--json")[0].stdout)
    assert first["unchanged"] is True  # `run` made it; nothing changed since
    make_photo(src / "new-photo.jpg", 4242, size=(640, 480))
    nearsort(base, "resize", src, "--out", thumbs)
    # a thumbnail without a vector changes the input: the order is made again (the new one at the end)
    again = json.loads(nearsort(base, "analyze", thumbs, "--json")[0].stdout)
    assert not again.get("unchanged") and again["thumbnails"] == first["thumbnails"] + 1
    assert again["without_vector"] == 1


def test_work_to_do_is_done(library):
    """The no-op path does not hide work: a new photo gets its thumbnail and its vector, from the ONNX
    graph checked when the library was made: ONNX Runtime runs it, torch is not even imported."""
    base, src, thumbs = library
    make_photo(src / "another-photo.jpg", 777, size=(800, 600))
    p, rep = nearsort(base, "run", src, "--out", thumbs)
    assert "1 processed" in p.stdout
    assert "new vectors" in p.stdout and "0 new vectors" not in p.stdout
    assert rep["onnxruntime"] and not rep["torch"], rep
    p, rep = nearsort(base, "featurize", thumbs)
    assert not rep["torch"] and "0 thumbnails embedded" in p.stdout


def test_torch_backend_loads_torch(library):
    base, src, thumbs = library
    make_photo(src / "third-photo.jpg", 4711, size=(640, 480))
    nearsort(base, "resize", src, "--out", thumbs)
    p, rep = nearsort(base, "featurize", thumbs, "--backend", "torch", "--json")
    assert rep["torch"] and json.loads(p.stdout)["embedded"] == 1 and json.loads(p.stdout)["backend"] == "torch"


def test_similar_embeds_a_query_image_on_the_cached_graph(library, tmp_path):
    """similar with a photo from outside the library: the same backend layer as featurize, no torch."""
    base, src, thumbs = library
    query = tmp_path / "query.jpg"
    shutil.copy(sorted(SAMPLES.glob("*.jpg"))[0], query)
    p, rep = nearsort(base, "similar", query, thumbs, "-k", "3", "--json")
    hits = json.loads(p.stdout)["results"]
    assert len(hits) == 3 and hits[0]["score"] > 0.9  # its own thumbnail in the library, found through ONNX
    assert rep["onnxruntime"] and not rep["torch"], rep


def test_known_name_is_what_loading_gives(tmp_path):
    """The name featurize checks the catalog with, before loading anything, is the loaded model's name."""
    import timm
    import torch

    timm_file = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), timm_file)
    lite0_file = tmp_path / "lite0.pth"
    shutil.copy(M.lite0_weights_path(), lite0_file)
    for name, weights in [("efficientnet-lite0", None), ("efficientnet-lite0", lite0_file),
                          ("clip:ViT-S-32/random", None), ("timm:resnet18", timm_file)]:
        got = M.known_name(name, weights)
        assert got is not None and got == M.load_model(name, weights, device="cpu", log=lambda s: None).name
    assert M.known_name("resnet18") is None       # a bare name: only timm / torchvision can tell
    assert M.known_name("clip:ViT-B-32") is None   # its default tag comes from open_clip


def test_auto_is_known_until_the_weight_caches_change(monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    hub = tmp_path / "hub"
    hub.mkdir()
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HOME", str(tmp_path))  # ~/.cache/clip
    monkeypatch.setenv("NEARSORT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(M.ENV_CLIP_WEIGHTS, raising=False)
    assert M.known_name("auto") is None  # never looked: unknown without open_clip
    assert M.find_local_clip() is None   # the full look, kept
    assert M.known_name("auto") == M.lite0_name(M.AUTO_CNN_SIZE)
    # CLIP weights are downloaded into the hub: the kept answer no longer holds
    snap = hub / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("a" * 40)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    assert M.known_name("auto") is None
    assert M.find_local_clip() == ("clip:ViT-B-32/laion2b_s34b_b79k", None)
    assert M.known_name("auto") == "clip:ViT-B-32/laion2b_s34b_b79k"
