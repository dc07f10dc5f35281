#!/usr/bin/env python3
"""Benchmark of the `nearsort review` server at scale: time to the first screen and to the next group.

    nice python bench/review_server.py                   # 100 000 photos, 5 rounds
    nice python bench/review_server.py --n 20000 --rounds 3 --browser

The synthetic catalog is bench/review.py's (``build``: N photos, every 10th with 1-3 byte copies, the
groups stored as dupes stores them; that bench times the library calls behind the pages), plus real
thumbnail files for the first groups' members. No pixels are compared (that is dupes' cost, paid once
before review, measured by bench/dupes.py).

The real server is started as `nearsort review THUMBS --no-browser --port 0` (a subprocess) and
driven over HTTP (httpx, one keep-alive connection, like a browser tab):

* first screen: GET the page (token URL), its script and style, /api/summary, the first group page
  (/api/groups, 20 groups), the first group's thumbnails;
* next group: POST /api/decide (accept the group on screen: the page then shows the next group from
  the page it holds), and GET the next group page (what the page fetches when it runs low);
* the floor, in the same run: the server's round trip for a request that does nothing (favicon.ico).

Best of ``--rounds`` each (each round's decision is undone). ``--browser``: also the time from
navigation to the first group drawn, thumbnails loaded, in real headless Chromium (Playwright,
the system chromium).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from PIL import Image  # noqa: E402

from review import build  # noqa: E402  (bench/review.py: the synthetic catalog)

from nearsort.store import queries  # noqa: E402
from nearsort.store.catalog import Catalog  # noqa: E402

WRITTEN_GROUPS = 60  # groups whose members' thumbnails are written as files (the first screens show them)


def make_catalog(root: Path, n: int) -> dict:
    t0 = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    groups = build(root, n)
    with Catalog.open(root, write=False) as cat:
        first = queries.groups_page(cat, "copies", 0, WRITTEN_GROUPS, True)
        rels = {m["thumb"] for ms in queries.group_members(cat, [g["id"] for g in first]).values() for m in ms}
    for k, rel in enumerate(sorted(rels)):
        p = root / rel
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (256, 192), (k % 255, 120, 80)).save(p, quality=85)
    return {"photos": n, "copies": groups, "made_s": time.monotonic() - t0}


def _best(xs):
    return min(xs) * 1000.0


def bench_http(url: str, rounds: int) -> dict:
    import httpx

    base = url.split("/?", 1)[0]
    token = url.split("token=", 1)[1]
    floor, first, decide, nextpage = [], [], [], []
    with httpx.Client(base_url=base, timeout=60) as c:
        assert c.get(url).status_code == 200        # the cookie
        for _ in range(rounds):
            t = time.perf_counter()
            assert c.get("/favicon.ico").status_code == 204
            floor.append(time.perf_counter() - t)

            t = time.perf_counter()
            page = c.get(url)
            assert page.status_code == 200
            for asset in ("/static/review.js", "/static/review.css", "/api/summary"):
                assert c.get(asset).status_code == 200
            g = c.get("/api/groups", params={"kind": "copies", "offset": 0, "limit": 20, "pending": 1})
            groups = g.json()["groups"]
            for u in dict.fromkeys(m["thumb_url"] for m in groups[0]["members"]):
                assert c.get(u).status_code == 200, u
            first.append(time.perf_counter() - t)

            t = time.perf_counter()
            r = c.post("/api/decide", json={"group_id": groups[0]["id"], "action": "accept"},
                       headers={"x-nearsort-token": token})
            assert r.status_code == 200, r.text
            decide.append(time.perf_counter() - t)

            t = time.perf_counter()
            assert c.get("/api/groups", params={"kind": "copies", "offset": 19, "limit": 20, "pending": 1}).status_code == 200
            nextpage.append(time.perf_counter() - t)
            assert c.post("/api/undo-decision", json={}, headers={"x-nearsort-token": token}).status_code == 200
    return {"floor_ms": _best(floor), "first_screen_ms": _best(first), "decide_ms": _best(decide),
            "next_page_ms": _best(nextpage)}


def bench_browser(url: str, rounds: int) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    exe = shutil.which("chromium")
    if not exe:
        return None
    times = []
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        for _ in range(rounds):
            ctx = b.new_context()
            page = ctx.new_page()
            t = time.perf_counter()
            page.goto(url)
            page.wait_for_function("() => { const a = document.querySelector('#view-copies article.group');"
                                   " return a && [...a.querySelectorAll('img')].every(i => i.complete && i.naturalWidth); }")
            times.append(time.perf_counter() - t)
            ctx.close()
        b.close()
    return _best(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--browser", action="store_true", help="also time the first group drawn in headless Chromium")
    ap.add_argument("--keep", type=Path, help="make the catalog here and keep it, or reuse the one there "
                    "(default: a temporary folder)")
    args = ap.parse_args()
    tmp = None
    if args.keep:
        root = args.keep
    else:
        tmp = tempfile.mkdtemp(prefix="nearsort-review-bench-")
        root = Path(tmp) / "thumbs"
    try:
        if (root / ".nearsort" / "catalog.sqlite").exists():
            print(f"catalog: reusing {root} (made by an earlier --keep run)", flush=True)
        else:
            made = make_catalog(root, args.n)
            print(f"catalog: {made['photos']} photos, {made['copies']} copy groups (made in {made['made_s']:.1f} s)",
                  flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "nearsort.cli", "review", str(root), "--no-browser", "--port", "0"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            m = re.search(r"http://\S+", line)
            if not m:
                sys.exit(f"the server printed no URL: {line!r} {p.stderr.read()[-2000:]}")
            url = m.group(0)
            started = time.perf_counter() - t
            res = bench_http(url, args.rounds)
            res["start_s"] = started
            if args.browser:
                res["browser_first_group_ms"] = bench_browser(url, args.rounds)
        finally:
            p.terminate()
            p.wait(timeout=30)
        f = res["floor_ms"]
        print(f"server start (process start to URL printed): {res['start_s']:.2f} s")
        print(f"floor (a request that does nothing): {f:.1f} ms")
        print(f"first screen (page + script + style + summary + 20 groups + the first group's thumbnails): "
              f"{res['first_screen_ms']:.1f} ms ({res['first_screen_ms'] / f:.0f}x the floor)")
        print(f"next group: decide POST {res['decide_ms']:.1f} ms; the next page of groups {res['next_page_ms']:.1f} ms "
              f"({res['decide_ms'] / f:.0f}x / {res['next_page_ms'] / f:.0f}x the floor)")
        if args.browser:
            b = res.get("browser_first_group_ms")
            print("headless Chromium, navigation to the first group drawn (thumbnails loaded): "
                  + (f"{b:.0f} ms" if b else "not measured (no playwright or chromium)"))
        print(json.dumps({"n": args.n, **res}))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
