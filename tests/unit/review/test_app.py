"""review app: who may ask (token URL -> cookie, POST + token header, loopback Host, same Origin) and
what may be served (only catalog thumbnails inside THUMBS), on a real library and catalog through
Starlette's TestClient; the paged JSON the page reads."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette.testclient", reason="starlette/httpx are not installed (pip install -e '.[test]')")
from starlette.testclient import TestClient  # noqa: E402

from nearsort.ingest.resize import resize  # noqa: E402
from nearsort.order.analyze import analyze  # noqa: E402
from nearsort.review import decisions as D  # noqa: E402
from nearsort.review.app import COOKIE, HEADER, create_app, thumb_url  # noqa: E402
from nearsort.store import queries  # noqa: E402
from nearsort.store.catalog import Catalog  # noqa: E402

from library import REVIEW_GROUPS, make_review_library  # noqa: E402

TOKEN = "t0ken-for-this-test"
BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The review library resized, its chain stored (by phash: no model needed), its groups stored."""
    base = tmp_path_factory.mktemp("review-lib")
    paths = make_review_library(base / "src")
    thumbs = base / "thumbs"
    resize(base / "src", thumbs, workers=2)
    analyze(thumbs, by="phash")
    D.refresh_groups(thumbs)
    return base, paths, thumbs


@pytest.fixture
def client(built):
    _, _, thumbs = built
    with TestClient(create_app(thumbs, TOKEN), base_url=BASE) as c:
        yield c


@pytest.fixture
def authed(client):
    r = client.get(f"/?token={TOKEN}")
    assert r.status_code == 200
    return client


def post(c, path, body=None, **headers):
    return c.post(path, json=body if body is not None else {}, headers={HEADER: TOKEN, **headers})


def a_thumb(thumbs: Path) -> str:
    with Catalog.open(thumbs, write=False) as cat:
        return next(iter(queries.thumb_relpaths(cat).values()))


# ----------------------------------------------------------------------------- the token
def test_every_route_needs_the_token_cookie(client):
    app = client.app
    for route in app.routes:
        path = route.path.replace("{name}", "review.js").replace("{rel:path}", "x.jpg")
        for method in sorted(route.methods or {"GET"}):
            if method == "HEAD":
                continue
            r = client.request(method, path, json={} if method == "POST" else None)
            assert r.status_code == 403, (method, path, r.status_code)
            assert "token" in r.text or "refused" in r.text
            assert COOKIE not in r.headers.get("set-cookie", "")


def test_wrong_token_is_refused_and_the_right_one_sets_a_strict_httponly_cookie(client):
    assert client.get("/?token=guess").status_code == 403
    client.cookies.set(COOKIE, "guess")
    assert client.get("/api/summary").status_code == 403
    client.cookies.clear()
    r = client.get(f"/?token={TOKEN}")
    assert r.status_code == 200
    cookie = r.headers["set-cookie"].lower()
    assert f"{COOKIE}={TOKEN}".lower() in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    # the page carries the token for its own POST header, and nothing from the library
    assert f'content="{TOKEN}"' in r.text and "giraffe" not in r.text
    # the cookie alone opens the page and the API from now on (a reload needs no token in the URL)
    assert client.get("/").status_code == 200
    assert client.get("/api/summary").json()["copies"] == len(REVIEW_GROUPS)


def test_a_post_needs_the_token_header_and_the_same_origin(authed, built):
    g = authed.get("/api/groups?kind=copies").json()["groups"][0]
    body = {"group_id": g["id"], "action": "skip"}
    # the cookie alone (what a cross-site form would send) changes nothing
    r = authed.post("/api/decide", json=body)
    assert r.status_code == 403 and HEADER in r.text
    assert post(authed, "/api/decide", body, **{HEADER: "guess"}).status_code == 403
    assert post(authed, "/api/decide", body, origin="http://evil.example").status_code == 403
    # a GET never changes anything: the state-changing routes are POST only
    assert authed.get("/api/decide").status_code == 405
    assert authed.get("/api/apply?dest=/tmp/x").status_code == 405
    assert authed.get("/api/undo").status_code == 405
    r = post(authed, "/api/decide", body, origin=BASE)
    assert r.status_code == 200 and r.json()["decision"]["action"] == "skip"
    assert post(authed, "/api/undo-decision").status_code == 200
    # similar shots are never accepted in bulk; a bad request is one line, nothing stored
    r = post(authed, "/api/accept-all", {"kind": "similar"})
    assert r.status_code == 400 and "bulk" in r.json()["error"]
    assert post(authed, "/api/decide", {"group_id": g["id"], "action": "delete"}).status_code == 400
    assert post(authed, "/api/decide", {"group_id": 10 ** 9, "action": "skip"}).status_code == 400
    assert authed.get("/api/summary").json()["pending"]["files"] == 0


def test_a_host_that_is_not_loopback_is_refused(built):
    """DNS rebinding: a page of evil.example resolved to 127.0.0.1 sends Host: evil.example."""
    _, _, thumbs = built
    with TestClient(create_app(thumbs, TOKEN), base_url="http://evil.example:8765") as c:
        r = c.get(f"/?token={TOKEN}")
        assert r.status_code == 403 and "loopback" in r.text
    for host in ("http://localhost:1", "http://[::1]:8765"):
        with TestClient(create_app(thumbs, TOKEN), base_url=host) as c:
            assert c.get(f"/?token={TOKEN}").status_code == 200, host


# ----------------------------------------------------------------------------- what is served
def test_a_thumbnail_is_served_with_caching_headers(authed, built):
    _, _, thumbs = built
    rel = a_thumb(thumbs)
    r = authed.get(thumb_url(rel))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (thumbs / rel).read_bytes()
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    again = authed.get(thumb_url(rel), headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_path_traversal_absolute_paths_and_non_thumbnails_are_refused(authed, built, tmp_path):
    base, paths, thumbs = built
    original = paths["darknet__dog.jpg"][0]
    secret = tmp_path / "secret.jpg"
    shutil.copyfile(original, secret)
    stray = thumbs / "stray.jpg"              # a JPEG in THUMBS the catalog does not know
    shutil.copyfile(original, stray)
    out_link = thumbs / "link-out.jpg"          # a symbolic link out of THUMBS
    os.symlink(secret, out_link)
    rel = a_thumb(thumbs)
    folder = Path(rel).parent
    in_link = thumbs / folder / "evil-dir"      # a folder link inside THUMBS leading out of it
    os.symlink(tmp_path, in_link)
    try:
        bad = [
            "/thumb/..%2F..%2F" + "%2F".join(Path(os.path.relpath(secret, thumbs)).parts[2:]),
            "/thumb/%2E%2E/%2E%2E/etc/passwd",
            "/thumb/" + "%2F".join(["%2E%2E"] * 12) + "%2Fetc%2Fpasswd",
            "/thumb//etc/passwd",
            "/thumb/%2Fetc%2Fpasswd",
            "/thumb/" + str(original).lstrip("/"),              # an original, by its path
            "/thumb/%2F" + "%2F".join(str(original).lstrip("/").split("/")),
            "/thumb/.nearsort/catalog.sqlite",
            "/thumb/.nearsort%2Fcatalog.sqlite",
            "/thumb/stray.jpg",
            "/thumb/link-out.jpg",
            f"/thumb/{folder.as_posix()}/evil-dir/secret.jpg",
            f"/thumb/{folder.as_posix()}/%2E/{Path(rel).name}",
            f"/thumb/{folder.as_posix()}%5C..%5C{Path(rel).name}",
            "/thumb/" + rel + "%00.jpg",
        ]
        for url in bad:
            r = authed.get(url)
            assert r.status_code == 404, (url, r.status_code)
            assert r.content != secret.read_bytes() and r.content != original.read_bytes()
        # the check itself, on the decoded paths (whatever a client or router normalises first)
        rv = authed.app.state.review
        for rel_bad in ["../" + os.path.relpath(secret, thumbs.parent), "/etc/passwd", str(original),
                        ".nearsort/catalog.sqlite", "stray.jpg", "link-out.jpg", f"{folder.as_posix()}/evil-dir/secret.jpg",
                        f"{folder.as_posix()}/./{Path(rel).name}", f"{folder.as_posix()}//{Path(rel).name}", "", "."]:
            assert rv.thumb_file(rel_bad) is None, rel_bad
        assert rv.thumb_file(rel) == (thumbs / rel).resolve()
    finally:
        for p in (stray, out_link, in_link):
            p.unlink()


def test_similar_only_takes_a_thumbnail_id_never_a_path(authed, built):
    base, paths, _ = built
    r = authed.get("/api/similar", params={"thumb_id": str(paths["darknet__dog.jpg"][0])})
    assert r.status_code == 400


# ----------------------------------------------------------------------------- paged data
def test_groups_chain_and_quality_are_paged(authed, built):
    _, _, thumbs = built
    g = authed.get("/api/groups?kind=copies&offset=0&limit=2").json()
    assert g["total"] == len(REVIEW_GROUPS) and len(g["groups"]) == 2
    rest = authed.get("/api/groups?kind=copies&offset=2&limit=20").json()["groups"]
    assert len(rest) == len(REVIEW_GROUPS) - 2
    assert not {x["id"] for x in g["groups"]} & {x["id"] for x in rest}
    sizes = [x["reclaimable_bytes"] for x in g["groups"] + rest]
    assert sizes == sorted(sizes, reverse=True)            # worst first
    for m in g["groups"][0]["members"]:
        assert authed.get(m["thumb_url"]).status_code == 200
    assert authed.get("/api/groups?limit=100000").status_code == 200   # held to the page maximum
    assert authed.get("/api/groups?offset=x").status_code == 400
    assert authed.get("/api/groups?kind=everything").status_code == 400

    c = authed.get("/api/chain?offset=0&limit=3").json()
    with Catalog.open(thumbs, write=False) as cat:
        n = queries.count_thumbs(cat)
        order = [t for t, _, _ in queries.ranks(cat, queries.current_ordering(cat))]
    assert c["total"] == n and len(c["items"]) == 3
    c2 = authed.get("/api/chain?offset=3&limit=500").json()
    assert [i["thumb_id"] for i in c["items"] + c2["items"]] == order   # the order refresh applies
    assert all(i["path"] and authed.get(i["thumb_url"]).status_code == 200 for i in c["items"])

    q = authed.get("/api/quality?kind=dark").json()
    assert set(q["counts"]) == {"dark", "bright", "blurry", "errors"} and q["offset"] == 0


def test_search_and_more_like_this(featurized):
    """Text/label search and image-to-image search over the real featurized test library."""
    from nearsort.review.app import create_app as make

    _, _, thumbs = featurized
    with TestClient(make(thumbs, TOKEN), base_url=BASE) as c:
        assert c.get(f"/?token={TOKEN}").status_code == 200
        r = c.get("/api/search", params={"q": "eagle"}).json()
        assert r["results"] and r["fallback"]                 # efficientnet: ImageNet label search
        top = r["results"][0]
        assert "eagle" in " ".join(top["sources"]).lower()
        assert c.get(top["thumb_url"]).status_code == 200
        like = c.get("/api/similar", params={"thumb_id": top["thumb_id"]}).json()
        assert like["in_library"] and like["results"]
        assert top["thumb_id"] not in {h["thumb_id"] for h in like["results"]}
        assert c.get("/api/search", params={"q": ""}).status_code == 400


def test_the_page_works_offline_and_builds_no_markup_from_data():
    """Every resource the page loads is the app's own (no CDN: it works offline), and the script
    never turns a string into markup (names go in as text)."""
    import re
    from importlib import resources

    static = resources.files("nearsort.review").joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith("/static/") for r in refs), refs
    script = static.joinpath("review.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert not re.search(r"https?://", script + static.joinpath("review.css").read_text(encoding="utf-8"))
