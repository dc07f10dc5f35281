#!/usr/bin/env python3
"""Peer tools on a labelled bench, scored exactly like bench/dupes.py (same pairs, same P/R/F1).

    make peers                                                  # installs both peers once
    nice .venv/bin/python bench/peers.py /tmp/devbench /tmp/tilesbench /tmp/shotsbench
    nice .venv/bin/python bench/peers.py /tmp/devbench --tools imagededup

    from peers import run_peers; run_peers(Path("/tmp/devbench"))  # {tool: (score dict, seconds)}

Tools, each run on the bench folder as a user would run it (ground_truth.csv is not an image; both
tools skip it):

- ``imagededup``: ``PHash().find_duplicates(image_dir=BENCH, max_distance_threshold=10,
  recursive=True)``. Its answer is a relation (file -> files within distance 10), not groups; a
  user acting on it merges what is linked, so the groups are its connected components.
  ``imagededup-pairs`` scores the relation itself (each listed pair is a two-file group), so it
  shows what the transitive merge costs; its group and keeper counts are counts of pairs.
- ``fastdup`` (2.x, in its own venv .venv-fastdup because it needs numpy < 2):
  ``fastdup.create(work_dir, input_dir=BENCH).run()`` with default settings, groups =
  ``fd.connected_components()`` (components of the similarity graph whose edges have cosine
  similarity > ``cc_threshold``, default 0.96 in fastdup 2.x; the graph itself keeps each image's
  ``nearest_neighbors_k=2`` neighbours above ``threshold=0.9``). The thresholds used are printed.
  ``fastdup-sim`` (same run) is the components of that whole similarity graph, i.e. at 0.9: what a
  user gets who merges every pair in fastdup's similarity file instead of using its components.

Neither peer names a keeper; each group's keeper is the file with the most pixels, then the most
bytes (what a user would keep by hand), so "keeper = the original" is comparable to nearsort's.
Seconds are the tool's wall time on the folder (fastdup: its whole subprocess, model load included).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dupes import fmt, load_truth, score  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FASTDUP_VENV = ROOT / ".venv-fastdup"
TOOLS = ("fastdup", "imagededup")
PHASH_DISTANCE = 10

# Runs inside .venv-fastdup (no nearsort there): argv = input_dir work_dir; prints one JSON line.
_FASTDUP_RUNNER = r"""
import json, os, sys
import fastdup
bench, work = sys.argv[1], sys.argv[2]
fd = fastdup.create(work_dir=work, input_dir=bench)
fd.run()
cc, _ = fd.connected_components()
groups = {}
for comp, f in zip(cc.get("component_id", []), cc.get("filename", [])):
    groups.setdefault(int(comp), []).append(os.path.abspath(f))  # fastdup names files relative to the cwd
sim = fd.similarity()
edges = [[os.path.abspath(a), os.path.abspath(b)] for a, b in zip(sim.get("filename_from", []), sim.get("filename_to", []))]
kw = fd.config["fastdup_kwargs"]
print("FASTDUP_JSON " + json.dumps({
    "groups": [g for g in groups.values() if len(g) > 1], "edges": edges, "version": fastdup.__version__,
    "cc_threshold": float(kw["turi_param"]["ccthreshold"]), "threshold": float(kw["threshold"]),
    "nearest_neighbors_k": int(kw["nearest_neighbors_k"]),
    "files_seen": int(len(fd.annotations(valid_only=True))), "invalid": int(len(fd.invalid_instances()))}))
"""


def ensure_fastdup() -> Path:
    """The fastdup venv's python, made on first use (python3 -m venv + pip install fastdup 'numpy<2')."""
    py = FASTDUP_VENV / "bin" / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import fastdup"], capture_output=True).returncode == 0:
        return py
    print(f"making {FASTDUP_VENV} (fastdup needs numpy < 2) ...", file=sys.stderr)
    for cmd in (["python3", "-m", "venv", str(FASTDUP_VENV)],
                ["nice", str(py), "-m", "pip", "install", "-q", "fastdup", "numpy<2"]):
        if subprocess.run(cmd).returncode:
            raise RuntimeError(f"could not make {FASTDUP_VENV} ({' '.join(cmd[:4])} failed): "
                               f"remove it and run `make peers`")
    return py


def _keeper(paths: list[str]) -> str:
    """The file a user keeps by hand: most pixels, then most bytes, then the first path."""
    from PIL import Image

    def size(p: str):
        try:
            with Image.open(p) as im:
                px = im.width * im.height
        except Exception:
            px = 0
        return (-px, -os.path.getsize(p), p)

    return min(paths, key=size)


def as_result(groups: list[list[str]]) -> dict:
    """Groups of absolute paths -> the `nearsort dupes --json` shape that dupes.score() reads."""
    groups = [sorted(set(g)) for g in groups if len(set(g)) > 1]
    return {"groups": [{"members": [{"path": p} for p in g], "keeper": _keeper(g)} for g in groups],
            "similar": []}


def components(links: dict[str, list[str]]) -> list[list[str]]:
    """Connected components (size > 1) of an undirected relation given as node -> neighbours."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, bs in links.items():
        for b in bs:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[ra] = rb
    out: dict[str, list[str]] = {}
    for x in parent:
        out.setdefault(find(x), []).append(x)
    return [g for g in out.values() if len(g) > 1]


def run_imagededup(bench: Path) -> tuple[dict, dict, float]:
    """(components result, direct-pairs result, seconds) for imagededup PHash at distance 10."""
    import logging

    try:
        from imagededup.methods import PHash
    except ImportError:
        raise RuntimeError("imagededup is not installed in this venv: run `make peers`") from None

    for name in list(logging.root.manager.loggerDict):  # each imagededup module has its own logger
        if name.startswith("imagededup"):
            logging.getLogger(name).setLevel(logging.ERROR)  # e.g. "Invalid image file ground_truth.csv"
    t0 = time.monotonic()
    dup = PHash(verbose=False).find_duplicates(image_dir=str(bench), max_distance_threshold=PHASH_DISTANCE,
                                                recursive=True)
    dt = time.monotonic() - t0
    links = {str(bench / k): [str(bench / v) for v in vs] for k, vs in dup.items()}
    pairs = {frozenset((a, b)) for a, bs in links.items() for b in bs if a != b}
    return as_result(components(links)), as_result([sorted(p) for p in pairs]), dt


def run_fastdup(bench: Path) -> tuple[dict, dict, dict, float]:
    """(components result, similarity-graph components result, run info, seconds) for fastdup with
    default settings, in its own venv."""
    py = ensure_fastdup()
    env = dict(os.environ, SENTRY_OPT_OUT="1")  # no telemetry; results are the same
    with tempfile.TemporaryDirectory(prefix="nearsort-peers-fastdup-") as work:
        t0 = time.monotonic()
        p = subprocess.run(["nice", str(py), "-c", _FASTDUP_RUNNER, str(bench), str(Path(work) / "fd")],
                           cwd=work, env=env, capture_output=True, text=True)
        dt = time.monotonic() - t0
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("FASTDUP_JSON ")), None)
    if p.returncode or line is None:
        tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"fastdup failed on {bench} (exit {p.returncode}): " + " | ".join(tail))
    info = json.loads(line[len("FASTDUP_JSON "):])
    links: dict[str, list[str]] = {}
    for a, b in info.pop("edges"):
        links.setdefault(a, []).append(b)
    return as_result(info.pop("groups")), as_result(components(links)), info, dt


def run_peers(bench: Path, tools=TOOLS) -> dict[str, tuple[dict, float]]:
    """{tool: (dupes.score() dict, seconds)} for each peer on BENCH (a folder with ground_truth.csv).

    Keys: "fastdup", "imagededup" (connected components), "fastdup-sim" (components of fastdup's
    whole similarity graph, at its graph threshold) and "imagededup-pairs" (imagededup's direct pairs);
    a variant has the same run and seconds as its tool. fastdup's score dict also carries "version", "cc_threshold", "threshold",
    "nearest_neighbors_k", "files_seen" and "invalid" from its run.
    """
    bench = Path(bench).resolve()
    truth = load_truth(bench)
    out: dict[str, tuple[dict, float]] = {}
    for tool in tools:
        if tool == "imagededup":
            cc, pairs, dt = run_imagededup(bench)
            out["imagededup"] = (score(cc, bench, truth), dt)
            out["imagededup-pairs"] = (score(pairs, bench, truth), dt)
        elif tool == "fastdup":
            cc, sim, info, dt = run_fastdup(bench)
            out["fastdup"] = ({**score(cc, bench, truth), **info}, dt)
            out["fastdup-sim"] = ({**score(sim, bench, truth), **info}, dt)
        else:
            raise ValueError(f"unknown tool {tool!r} (known: {', '.join(TOOLS)})")
    return out


def describe(tool: str, s: dict) -> str:
    if tool == "fastdup":
        return (f"fastdup {s['version']} defaults, its connected components at cc_threshold {s['cc_threshold']} "
                f"(graph: k {s['nearest_neighbors_k']}, threshold {s['threshold']}; {s['files_seen']} files "
                f"read, {s['invalid']} invalid)")
    if tool == "fastdup-sim":
        return (f"fastdup {s['version']} defaults, components of its whole similarity graph (threshold "
                f"{s['threshold']}, k {s['nearest_neighbors_k']})")
    if tool == "imagededup":
        return f"imagededup PHash distance <= {PHASH_DISTANCE}, connected components"
    return f"imagededup PHash distance <= {PHASH_DISTANCE}, direct pairs only"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, nargs="+", help="bench folder(s) with ground_truth.csv")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, from {','.join(TOOLS)}")
    a = ap.parse_args(argv)
    tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad:
        ap.error(f"unknown tool {', '.join(bad)} (known: {', '.join(TOOLS)})")
    for bench in a.bench:
        if not (bench / "ground_truth.csv").exists():
            ap.error(f"{bench}/ground_truth.csv not found (make one with ../shared/bench/make_nd_bench.py)")
    for bench in a.bench:
        print(f"{bench.resolve()} ({len(load_truth(bench.resolve()))} files)")
        try:
            res = run_peers(bench, tools)
        except RuntimeError as e:
            print(f"  {e}")
            continue
        for tool, (s, dt) in res.items():
            print(f"  {tool:<17} {fmt(s)}  [{dt:.2f} s]  {describe(tool, s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
