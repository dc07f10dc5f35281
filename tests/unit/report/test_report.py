"""report: a real page checked in a real headless browser (Debian ``chromium``), and the page size
of a synthetic 100 k-photo catalog."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from nearsort.report import build as R
from nearsort.store import queries
from nearsort.store.catalog import Catalog

from library import EVIL_IMG

REPO = Path(__file__).resolve().parents[3]
ARTIFACTS = REPO / "test-artifacts"
JSON_BLOCK = re.compile(r'<script type="application/json" id="([^"]+)">(.*?)</script>', re.S)


def run_chromium(exe: str, url: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="nearsort-chromium-") as prof:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={prof}", "--virtual-time-budget=8000", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


# ----------------------------------------------------------------------------- helpers
def check_json_blocks(page: str) -> dict:
    """Every data block parses; none can close its <script> early; returns {id: data}."""
    blocks = {}
    for id_, body in JSON_BLOCK.findall(page):
        assert "<" not in body and ">" not in body and "&" not in body, id_
        blocks[id_] = json.loads(body)
    # only our own <script> elements exist: the data blocks + the one program
    assert page.count("<script") == len(blocks) + 1
    assert page.count("</script>") == len(blocks) + 1
    return blocks


# ----------------------------------------------------------------------------- the real page
def test_report_in_chromium(featurized, chromium, tmp_path):  # noqa: F811  (the fixture imported above)
    from nearsort.order.analyze import analyze

    base, p, thumbs = featurized
    analyze(thumbs)
    out = tmp_path / "site" / "report.html"
    s = R.write_report(thumbs, out, inline=False)
    assert s.groups == 2 and s.errors == 2 and s.dark == 1 and s.blurry == 1 and s.mirrors == 1
    page = out.read_text(encoding="utf-8")
    blocks = check_json_blocks(page)
    assert "d-groups-0" in blocks and "d-chain-0" in blocks
    assert EVIL_IMG not in page and "alert(1)</script>" not in page  # only ever escaped
    # a copy without the Content-Security-Policy: the escaping alone must keep the names inert
    bare = out.with_name("report-nocsp.html")
    bare.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page), encoding="utf-8")

    for target in (out, bare):
        r = run_chromium(chromium, target.as_uri(), "--dump-dom")
        assert r.returncode == 0, r.stderr[-2000:]
        dom = r.stdout
        assert dom.count('class="group"') == 2
        assert "★ KEEP" in dom and "mirror image" in dom
        assert dom.count('class="c"') == s.chain > 0           # the whole (small) chain is rendered
        assert 'class="j"' in dom                                  # its biggest jumps are marked
        assert "Dark (1)" in dom and "Blurry (1)" in dom
        # hostile names are text
        assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in dom
        assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in dom
        assert '<img src="x"' not in dom and "<script>alert(1)" not in dom and "data-pwned" not in dom
        # thumbnails are referenced relative to the report, and they exist
        srcs = re.findall(r'<img[^>]* src="([^"]+)"', dom)
        assert srcs and all(not s.startswith(("/", "file:", "data:")) for s in srcs)
        from urllib.parse import unquote

        assert all((out.parent / unquote(s)).exists() for s in srcs)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    r = run_chromium(chromium, out.as_uri(), f"--screenshot={shot}", "--window-size=1280,2000")
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 50_000, r.stderr[-2000:]
    # the same page inlined (one portable file) renders the same groups
    inl = tmp_path / "inline.html"
    s2 = R.write_report(thumbs, inl, inline=True)
    assert s2.inline and s2.bytes > s.bytes
    r = run_chromium(chromium, inl.as_uri(), "--dump-dom")
    assert r.returncode == 0 and r.stdout.count('class="group"') == 2
    assert re.findall(r'<img[^>]* src="data:image/jpeg;base64,', r.stdout)
    r = run_chromium(chromium, inl.as_uri(), f"--screenshot={ARTIFACTS / 'report-full.png'}",
                     "--window-size=1280,5200")
    assert r.returncode == 0


def test_report_without_chain_or_dupes(tmp_path, chromium):
    """An empty-ish catalog still gives a clean page (sections say why they are empty)."""
    from conftest import make_photo

    from nearsort.ingest.resize import resize

    make_photo(tmp_path / "src" / "a.jpg", 1)
    make_photo(tmp_path / "src" / "b.jpg", 2)
    resize(tmp_path / "src", tmp_path / "thumbs", workers=1)
    out = tmp_path / "r.html"
    s = R.write_report(tmp_path / "thumbs", out)
    assert s.groups == 0 and s.chain == 0 and s.inline
    r = run_chromium(chromium, out.as_uri(), "--dump-dom")
    assert r.returncode == 0
    assert "No duplicates found." in r.stdout and "nearsort analyze" in r.stdout


# ----------------------------------------------------------------------------- 100 k photos
def _synthetic_catalog(root: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    with Catalog.open(root, create=True) as cat, cat.tx() as c:
        thumbs, originals, sources, ranks = [], [], [], []
        sid = oid = 0
        for tid in range(1, n + 1):
            w, h = rng.choice([(4000, 3000), (6000, 4000), (3024, 4032), (1920, 1080)])
            ph = rng.getrandbits(64)
            name = f"{w}x{h}_{ph:016x}"
            year, week = 2005 + tid % 19, 1 + tid % 52
            thumbs.append((tid, name, f"{year}/W{week:02d}/{name}.jpg", 256, 192, rng.uniform(5, 250),
                           rng.uniform(5, 90), rng.uniform(2, 5000)))
            copies = 2 if tid % 20 == 0 else 1          # 5 %: a second original with the same picture
            for k in range(copies):
                oid += 1
                originals.append((oid, f"{oid:064x}", tid, w, h, "JPEG", rng.randint(1 << 20, 8 << 20),
                                  f"{ph:016x}", f"{year}-0{1 + k}-01T10:00:00" if tid % 3 else None))
                for _ in range(2 if oid % 25 == 0 else 1):  # 4 %: byte-identical copies
                    sid += 1
                    sources.append((sid, os.fsencode(f"/photos/{year}/event {tid // 40}/IMG_{sid:06d}.JPG"),
                                    oid, 1, 1, "ok", None))
            ranks.append(("similarity:test", tid, tid, rng.random() * (3 if tid % 500 == 0 else 0.4)))
        for e in range(n // 200):
            sid += 1
            sources.append((sid, os.fsencode(f"/photos/broken/<b>{e}</b>.jpg"), None, 10, 1, "error",
                            "cannot identify image file"))
        c.executemany("INSERT INTO thumbs(id, name, relpath, tw, th, brightness, contrast, blur) VALUES(?,?,?,?,?,?,?,?)",
                      thumbs)
        c.executemany("INSERT INTO originals(id, content_hash, thumb_id, width, height, format, bytes, phash,"
                      " capture_time) VALUES(?,?,?,?,?,?,?,?,?)", originals)
        c.executemany("INSERT INTO sources(id, path, original_id, size, mtime_ns, status, error) VALUES(?,?,?,?,?,?,?)",
                      sources)
        c.executemany("INSERT INTO ranks(ordering, thumb_id, rank, jump) VALUES(?,?,?,?)", ranks)
        queries.set_meta(cat, "last_ordering", "similarity:test")


def test_report_size_at_100k_photos(tmp_path):
    n = 100_000
    root = tmp_path / "thumbs"
    _synthetic_catalog(root, n)
    out = tmp_path / "report" / "report.html"
    t0 = time.monotonic()
    s = R.write_report(root, out)
    took = time.monotonic() - t0
    assert not s.inline
    assert s.chain == n and s.groups >= n // 20
    page = out.read_text(encoding="utf-8")
    per_photo = s.bytes / n
    print(f"100k report: {s.bytes / 1e6:.1f} MB, {per_photo:.0f} bytes/photo, {s.groups} groups, {took:.1f} s")
    assert per_photo < 110, per_photo           # proportional and small (~10 MB at 100 k)
    head = page[:page.index('<script type="application/json"')]
    assert len(head) < 20_000                   # the markup itself does not grow with the library
    blocks = check_json_blocks(page)
    chain_chunks = [k for k in blocks if k.startswith("d-chain-")]
    assert len(chain_chunks) == -(-n // R.CHUNK["chain"])
    assert max(len(json.dumps(v)) for v in blocks.values() if isinstance(v, list)) < 600_000  # parsed lazily


# ----------------------------------------------------------------------------- installed package
def test_installed_wheel_makes_the_report(tmp_path):
    """The page's markup, style and script are package files: a wheel (not the source tree) must
    carry them, so a non-editable install can make a report."""
    from conftest import make_photo

    from nearsort.ingest.resize import resize

    tree, wheels, site = tmp_path / "tree", tmp_path / "wheels", tmp_path / "site"
    for name in ("pyproject.toml", "README.md"):  # a copy: the build leaves build/ and *.egg-info behind
        tree.mkdir(exist_ok=True)
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    r = subprocess.run(pip + ["wheel", str(tree), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("nearsort-*.whl")
    r = subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.name for p in (site / "nearsort" / "report").iterdir()} >= {"template.html", "report.css", "report.js"}

    make_photo(tmp_path / "src" / "a.jpg", 1)
    resize(tmp_path / "src", tmp_path / "thumbs", workers=1)
    code = ("import sys, nearsort.report.build as R; print(R.__file__); "
            "print(R.write_report(sys.argv[1], sys.argv[2]).bytes)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "thumbs"), str(tmp_path / "r.html")],
                       env=dict(os.environ, PYTHONPATH=str(site)), cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    where, size = r.stdout.split()
    assert Path(where).is_relative_to(site)                 # the installed copy, not src/
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert int(size) == len(page.encode("utf-8"))
    assert ".tile.keep{" in page and '"use strict";' in page       # style and script filled in
    assert not re.search(r"__(CSP_HASH|TITLE|CSS|DATA|SCRIPT)__", page)
    check_json_blocks(page)
