"""`nearsort review` for real: the server a subprocess (`--no-browser --port 0`, its printed URL
parsed), the page driven in real headless Chromium (Playwright on Debian's chromium) by the
keyboard: decide groups, mark one "not duplicates", undo one, reload (decisions still there),
apply (the originals move into the quarantine), undo (they are back)."""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from nearsort.store import queries
from nearsort.store.catalog import Catalog

from library import EVIL_IMG, REVIEW_GROUPS, make_review_library

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
URL = re.compile(r"(http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]+)")


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def browser(chromium):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        except Exception as e:  # a chromium Playwright cannot drive here
            pytest.skip(f"playwright cannot start {chromium}: {str(e).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def served(tmp_path):
    """The review library resized and ordered; `nearsort review` on it, a real subprocess."""
    src, thumbs, quarantine = tmp_path / "src", tmp_path / "thumbs", tmp_path / "quarantine"
    files = make_review_library(src)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    for cmd in (["resize", str(src), "--out", str(thumbs)], ["analyze", str(thumbs), "--by", "phash"]):
        r = subprocess.run([sys.executable, "-m", "nearsort.cli", *cmd], env=env, capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    p = subprocess.Popen([sys.executable, "-m", "nearsort.cli", "review", str(thumbs), "--no-browser", "--port", "0",
                          "--move-to", str(quarantine)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()
    try:
        line = p.stdout.readline()       # the server prints its URL once it listens
        m = URL.search(line)
        assert m, f"no URL in {line!r}; stderr: {''.join(err)[-2000:]}"
        yield m.group(1), files, quarantine, thumbs
    finally:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    assert p.returncode in (0, -15), "".join(err)[-3000:]
    assert "Traceback" not in "".join(err), "".join(err)[-3000:]


def _group(page) -> dict:
    """The group on screen: id, decision, and its members' paths (in their 1..n order) and keeper."""
    return page.eval_on_selector("#view-copies article.group", """a => ({
        id: a.dataset.id, decision: a.dataset.decision,
        paths: [...a.querySelectorAll('figure.member')].map(f => f.querySelector('td[title]').title),
        keeper: [...a.querySelectorAll('figure.member')].findIndex(f => f.classList.contains('keeper')) })""")


def _next_group(page, old_id: str) -> dict:
    page.wait_for_function("id => document.querySelector('#view-copies article.group').dataset.id !== id", arg=old_id)
    return _group(page)


def test_review_flow_in_chromium(served, browser):
    url, files, quarantine, thumbs = served
    all_files = [p for ps in files.values() for p in ps]
    before = {p: _digest(p) for p in all_files}
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#view-copies article.group")
    assert "token=" not in page.url                       # the token left the address bar (it is a cookie now)
    assert page.is_visible("#cheat") and "not duplicates" in page.inner_text("#cheat")   # the visible cheat sheet
    assert page.inner_text("#n-copies") == str(len(REVIEW_GROUPS))

    # 1: choose member 2 as the keeper, accept
    g1 = _group(page)
    assert g1["decision"] == "pending" and g1["keeper"] == 0   # the suggested keeper: the original
    page.keyboard.press("2")
    assert _group(page)["keeper"] == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "review-groups.png"))
    page.keyboard.press("a")
    g2 = _next_group(page, g1["id"])
    # 2 (the dog: original, exact copy, half-size copy): split the half-size copy off (shift+digit),
    # then accept the suggested keeper (Enter)
    half = next(i for i, p in enumerate(g2["paths"]) if "half-size" in p)
    page.keyboard.press(f"Shift+Digit{half + 1}")
    page.wait_for_function("n => document.querySelectorAll('#view-copies figure.member').length === n",
                           arg=len(g2["paths"]) - 1)
    g2 = _group(page)
    assert not any("half-size" in p for p in g2["paths"]) and g2["decision"] == "pending"
    page.keyboard.press("Enter")
    g3 = _next_group(page, g2["id"])
    # 3: not duplicates
    page.keyboard.press("n")
    g4 = _next_group(page, g3["id"])
    # 4: accept, then undo it: it is pending again, on screen
    page.keyboard.press("a")
    page.wait_for_function("() => document.querySelector('#view-copies article.group').dataset.decision === 'accept'")
    page.keyboard.press("u")
    page.wait_for_function("id => { const a = document.querySelector('#view-copies article.group');"
                           " return a.dataset.id === id && a.dataset.decision === 'pending'; }", arg=g4["id"])
    # k goes back to the group marked "not duplicates"
    page.keyboard.press("k")
    page.wait_for_function("id => document.querySelector('#view-copies article.group').dataset.id === id", arg=g3["id"])
    assert _group(page) == {**g3, "decision": "distinct"}
    # the help sheet
    page.keyboard.press("?")
    assert page.is_visible("#help")
    page.keyboard.press("Escape")
    assert not page.is_visible("#help")
    # hostile names are text, never markup
    assert EVIL_IMG in "".join(g["paths"][i] for g in (g1, g2, g3, g4) for i in range(len(g["paths"])))
    assert page.evaluate("document.body.dataset.pwned") is None
    assert page.evaluate("[...document.images].some(i => i.getAttribute('src') === 'x')") is False

    # reload: the three decisions are still there
    page.reload()
    page.wait_for_selector("#view-copies article.group")
    page.wait_for_function("() => document.querySelector('#n-copies').textContent === '1'")
    assert _group(page)["id"] == g4["id"]                  # the one group still pending
    page.check("#view-copies .show-decided")
    page.wait_for_function("() => document.querySelector('#view-copies .pos').textContent.includes('in all')")
    seen = {}
    for _ in range(len(REVIEW_GROUPS)):
        g = _group(page)
        seen[g["id"]] = (g["decision"], g["keeper"])
        page.keyboard.press("j")
        if len(seen) < len(REVIEW_GROUPS):
            _next_group(page, g["id"])
    assert seen[g1["id"]] == ("accept", 1) and seen[g2["id"]] == ("accept", 0)
    assert seen[g3["id"]][0] == "distinct" and seen[g4["id"]][0] == "pending"

    # the chain page
    page.click("#tabs [data-tab=chain]")
    page.wait_for_selector("#chain-grid .tile img")
    page.wait_for_function("() => [...document.querySelectorAll('#chain-grid img')].every(i => i.complete && i.naturalWidth > 0)")
    with Catalog.open(thumbs, write=False) as cat:
        assert page.locator("#chain-grid .tile").count() == queries.count_thumbs(cat) >= len(files)
    page.screenshot(path=str(ARTIFACTS / "review-chain.png"))

    # apply: confirmation with the count, then the journaled quarantine
    page.click("#tabs [data-tab=apply]")
    moving = [Path(g1["paths"][0])] + [Path(p) for p in g2["paths"][1:]]
    staying = [p for p in all_files if p not in moving]
    page.wait_for_function("n => document.querySelector('#apply-summary').textContent.startsWith(n + ' files')",
                           arg=len(moving))
    assert page.input_value("#apply-dest") == str(quarantine)
    page.click("#apply-go")
    assert f"Move {len(moving)} duplicate originals" in page.inner_text("#confirm .msg")
    page.click("#confirm .yes")
    page.wait_for_selector("#apply-result .done")
    assert page.inner_text("#apply-result .done").startswith(f"Moved {len(moving)} files")
    for p in moving:
        assert not p.exists(), p
        moved = quarantine / Path(os.path.abspath(p)).relative_to("/")
        assert _digest(moved) == before[p]
    for p in staying:                                       # keepers and the "not duplicates" group stay
        assert _digest(p) == before[p], p
    assert Path(g1["paths"][1]).exists()                    # the keeper chosen by number

    # undo: every file is back
    page.click("#apply-undo")
    page.click("#confirm .yes")
    page.wait_for_function("() => document.querySelector('#apply-result .done')?.textContent.startsWith('Undone')")
    for p in all_files:
        assert _digest(p) == before[p], p
    assert not errors, errors


def _library(tmp_path) -> Path:
    thumbs = tmp_path / "thumbs"
    make_review_library(tmp_path / "src")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run([sys.executable, "-m", "nearsort.cli", "resize", str(tmp_path / "src"), "--out", str(thumbs)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return thumbs


def test_review_cli_refusals_are_one_line(tmp_path):
    """A port in use, a folder without a catalog: one line each, no traceback; a host that is not
    loopback is served with a warning."""
    import socket

    thumbs = _library(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "nearsort.cli", "review"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = subprocess.run(cmd + [str(thumbs), "--no-browser", "--port", str(port)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "--port" in r.stderr
    r = subprocess.run(cmd + [str(tmp_path / "src"), "--no-browser"], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "no nearsort catalog" in r.stderr and "Traceback" not in r.stderr

    p = subprocess.Popen(cmd + [str(thumbs), "--no-browser", "--port", "0", "--host", "0.0.0.0"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert URL.search(line), line
    finally:
        p.terminate()
        _, err = p.communicate(timeout=20)
    assert "warning: --host 0.0.0.0 is not a loopback address" in " ".join(err.split())


def test_bulk_accept_of_exact_copies_in_chromium(served, browser):
    """One confirmation accepts every pending group of byte-identical copies (never the group with
    a resized copy, never similar shots); one `u` undoes the whole bulk accept."""
    url, files, quarantine, thumbs = served
    page = browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("#view-copies article.group")
    exact = sum(1 for copies in REVIEW_GROUPS.values() if not any("half-size" in c for c in copies))
    page.click("#bulk-exact")
    assert "exact copies" in page.inner_text("#confirm .msg")
    page.click("#confirm .no")                                 # cancelled: nothing decided
    assert page.inner_text("#n-copies") == str(len(REVIEW_GROUPS))
    page.click("#bulk-exact")
    page.click("#confirm .yes")
    page.wait_for_function("n => document.querySelector('#n-copies').textContent === String(n)",
                           arg=len(REVIEW_GROUPS) - exact)
    g = _group(page)
    assert any("half-size" in p for p in g["paths"]) and g["decision"] == "pending"   # the one left
    page.wait_for_function("n => document.querySelector('#n-apply').textContent.startsWith(n + ' ·')", arg=exact)
    page.keyboard.press("u")
    page.wait_for_function("n => document.querySelector('#n-copies').textContent === String(n)",
                           arg=len(REVIEW_GROUPS))
    assert page.inner_text("#n-apply") == ""
    assert not errors, errors
