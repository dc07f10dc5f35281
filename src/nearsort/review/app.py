"""``nearsort review``: the local web app over THUMBS (Starlette on uvicorn; no hand-written HTTP).

One page (``static/index.html``, ``review.css``, ``review.js``: no build step, no CDN) and a JSON API
that pages everything from the catalog: duplicate groups and similar shots (``decisions``), the
chain, search, "more like this", quality lists. What a decision, an apply or an undo changes is the
library's own functions; this module only checks who asks and what is served.

Security (it is a server): a random token per run is in the printed URL; the page that URL opens
sets it as a cookie (HttpOnly, SameSite=Strict) and every request needs that cookie. A state-changing
request is a POST that must also carry the token in the ``X-Nearsort-Token`` header (the page reads
it from its own markup, which another site cannot read), and a POST whose ``Origin`` is another site
is refused. Bound to a loopback address, a request whose ``Host`` is not a loopback name is refused
(DNS rebinding). Only thumbnails the catalog knows, as regular files inside THUMBS (symbolic links
resolved), are served: never an original, never ``.nearsort``.
"""
from __future__ import annotations

import hmac
import html
import ipaddress
import os
import secrets
import socket
import stat
import sys
import threading
import traceback
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import quote, unquote_to_bytes

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nearsort.errors import BadArgument, NearsortError
from nearsort.quality import QualityResult
from nearsort.review import decisions as D
from nearsort.store import queries
from nearsort.store.catalog import STATE_DIR, Catalog, Thumbs

COOKIE = "nearsort_review"
HEADER = "x-nearsort-token"
THUMB_PREFIX = "/thumb/"
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
PAGE_MAX = 500           # the most items one JSON page holds
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",       # the token in the first URL never leaves in a Referer
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC = {"review.css": "text/css; charset=utf-8", "review.js": "text/javascript; charset=utf-8"}


def is_loopback(host: str) -> bool:
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    return resources.files(__package__).joinpath("static", name).read_text(encoding="utf-8")


def thumb_url(relpath: Optional[str]) -> Optional[str]:
    """The URL a thumbnail is served at: its relpath's exact bytes, percent-encoded."""
    if not relpath:
        return None
    return THUMB_PREFIX + quote(os.fsencode(relpath), safe="/")


def _sources(path) -> Optional[str]:
    return None if path is None else os.fsdecode(bytes(path))


class Review:
    """The app's state: THUMBS, the run's token, one lock for the requests that write."""

    def __init__(self, root: Path, token: str, *, loopback: bool = True, move_to: Optional[str] = None):
        self.root = Path(os.path.abspath(root))
        self.real_root = os.path.realpath(self.root)
        self.token = token
        self.loopback = loopback
        self.move_to = move_to
        self.writing = threading.Lock()   # one write at a time (the catalog's writer lock is per file)
        self._quality: Optional[QualityResult] = None  # the quality lists, found once (again after apply/undo)

    # ---- who asks
    def _token_ok(self, value: Optional[str]) -> bool:
        return value is not None and value != "" and hmac.compare_digest(value.encode("utf-8", "replace"),
                                                                           self.token.encode())

    def refusal(self, request: Request, post: bool, token_in_url: bool = False) -> Optional[Response]:
        """None when the request may go on, else the response that refuses it. ``token_in_url``:
        the first visit, whose URL carries the token (the cookie is set by its answer)."""
        if self.loopback and _host_name(request.headers.get("host") or "") not in LOOPBACK_NAMES:
            return _plain(403, "refused: this review server only answers on its loopback address")
        if not token_in_url and not self._token_ok(request.cookies.get(COOKIE)):
            return _plain(403, "refused: open the URL `nearsort review` printed (it carries this run's token)")
        if post:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"http://{request.headers.get('host')}":
                return _plain(403, "refused: a request from another site")
            if not self._token_ok(request.headers.get(HEADER)):
                return _plain(403, f"refused: a change needs this run's token in the {HEADER} header")
        return None

    # ---- the catalog
    def read(self) -> Catalog:
        return Catalog.open(self.root, write=False)

    # ---- thumbnails
    def thumb_file(self, rel: str) -> Optional[Path]:
        """The file of thumbnail ``rel`` when it may be served, else None: a relative path with no
        '.', '..' or empty part, not in .nearsort, a .jpg the catalog knows, a regular file inside
        THUMBS once symbolic links are resolved."""
        if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
            return None
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[0] == STATE_DIR or not rel.lower().endswith(".jpg"):
            return None
        path = self.root.joinpath(*parts)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.real_root]) != self.real_root or real == self.real_root:
            return None
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                return None
        except OSError:
            return None
        with self.read() as cat:
            if queries.thumb_by_relpath(cat, rel) is None:
                return None
        return Path(real)


def _host_name(host: str) -> str:
    """The name of a Host header without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    h = host.strip().lower()
    if h.startswith("["):
        return h[1:h.index("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _plain(code: int, text: str) -> Response:
    return Response(text + "\n", status_code=code, media_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)


def _json(obj, code: int = 200) -> JSONResponse:
    return JSONResponse(obj, status_code=code, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})


def _int(request: Request, name: str, default: int, lo: int = 0, hi: int = 1 << 62) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise BadArgument(f"{name} must be a whole number, not {raw!r}") from None
    return max(lo, min(hi, v))


def _members_with_urls(page: dict) -> dict:
    for g in page.get("groups", ()):
        for m in g.get("members", ()):
            m["thumb_url"] = thumb_url(m.get("thumb"))
    return page


def create_app(thumbs: Thumbs, token: str, *, loopback: bool = True, move_to: Optional[str] = None) -> Starlette:
    """The review app over THUMBS for one run's ``token``."""
    root = thumbs.root if isinstance(thumbs, Catalog) else Path(thumbs)
    rv = Review(root, token, loopback=loopback, move_to=move_to)

    def guarded(fn: Callable, post: bool = False) -> Callable:
        def endpoint(request: Request) -> Response:
            refused = rv.refusal(request, post)
            if refused is not None:
                return refused
            try:
                return fn(request)
            except (NearsortError, FileNotFoundError) as e:
                return _json({"error": str(e)}, 409 if not isinstance(e, BadArgument) else 400)
            except Exception as e:  # a bug: one line for the page, the traceback for the terminal
                traceback.print_exc(file=sys.stderr)
                return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        return endpoint

    async def body(request: Request) -> dict:
        try:
            data = await request.json()
        except ValueError:
            raise BadArgument("the request body is not JSON") from None
        if not isinstance(data, dict):
            raise BadArgument("the request body must be a JSON object")
        return data

    def writing(fn: Callable) -> Callable:
        """A POST endpoint: the JSON body parsed, then ``fn(data)`` under the app's write lock."""
        async def endpoint(request: Request) -> Response:
            refused = rv.refusal(request, True)
            if refused is not None:
                return refused
            try:
                data = await body(request)
            except BadArgument as e:
                return _json({"error": str(e)}, 400)
            from starlette.concurrency import run_in_threadpool

            def call():
                with rv.writing:
                    return fn(data)
            try:
                return _json(await run_in_threadpool(call))
            except (NearsortError, FileNotFoundError, ValueError, KeyError) as e:
                return _json({"error": str(e)}, 400 if isinstance(e, (BadArgument, ValueError, KeyError)) else 409)
            except Exception as e:
                traceback.print_exc(file=sys.stderr)
                return _json({"error": f"internal error: {type(e).__name__}: {e}"}, 500)
        return endpoint

    # ---- the page
    def index(request: Request) -> Response:
        refused = rv.refusal(request, False, token_in_url=rv._token_ok(request.query_params.get("token")))
        if refused is not None:
            return refused
        page = _asset("index.html").replace("__TOKEN__", token).replace(
            "__TITLE__", html.escape(f"nearsort review — {rv.root.name or rv.root}"))
        resp = HTMLResponse(page, headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/")
        return resp

    def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return _plain(404, "not found")
        return Response(_asset(name), media_type=STATIC[name], headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    def thumb(request: Request) -> Response:
        raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8", "surrogateescape")
        raw = raw.split(b"?", 1)[0]
        rel = os.fsdecode(unquote_to_bytes(raw[len(THUMB_PREFIX):]))
        path = rv.thumb_file(rel)
        if path is None:
            return _plain(404, "not a thumbnail of this library")
        st = path.stat()
        resp = FileResponse(path, media_type="image/jpeg", stat_result=st,
                            headers={**SECURITY_HEADERS, "Cache-Control": "private, max-age=3600"})
        tags = [t.strip().removeprefix("W/") for t in (request.headers.get("if-none-match") or "").split(",")]
        if resp.headers["etag"] in tags:
            return Response(status_code=304, headers={"etag": resp.headers["etag"],
                                                      "cache-control": resp.headers["cache-control"]})
        return resp

    # ---- reading
    def summary(request: Request) -> Response:
        with rv.read() as cat:
            counts = queries.counts(cat)
            ordering = queries.current_ordering(cat)
            out = {"root": str(rv.root), "name": rv.root.name, "photos": counts["sources_ok"],
                   "thumbnails": queries.count_thumbs(cat), "ordering": ordering,
                   "chain": queries.count_ranks(cat, ordering) if ordering else 0,
                   "move_to": rv.move_to or "",
                   "copies": queries.count_groups(cat, "copies", True),
                   "similar": queries.count_groups(cat, "similar", True), "pending": D.pending_summary(cat)}
        return _json(out)

    def groups(request: Request) -> Response:
        kind = request.query_params.get("kind", "copies")
        if kind not in D.KINDS:
            raise BadArgument(f"kind must be one of {', '.join(D.KINDS)}, not {kind!r}")
        pending = request.query_params.get("pending", "1") != "0"
        with rv.read() as cat:
            page = D.group_page(cat, kind=kind, offset=_int(request, "offset", 0),
                                limit=_int(request, "limit", 20, 1, PAGE_MAX), pending_only=pending).to_dict()
        return _json(_members_with_urls(page))

    def group(request: Request) -> Response:
        with rv.read() as cat:
            g = D.get_group(cat, _int(request, "id", -1))
        if g is None:
            raise BadArgument("no such group (the groups were found again since: reload the page)")
        return _json(_members_with_urls({"groups": [g]})["groups"][0])

    def chain(request: Request) -> Response:
        offset, limit = _int(request, "offset", 0), _int(request, "limit", 200, 1, PAGE_MAX)
        with rv.read() as cat:
            ordering = queries.current_ordering(cat)
            if not ordering:
                return _json({"ordering": None, "total": 0, "offset": 0, "items": [],
                              "message": f"no chain yet: run `nearsort analyze {rv.root}`"})
            items = [{"thumb_id": tid, "rank": rank, "jump": jump, "thumb": rel, "thumb_url": thumb_url(rel),
                      "path": _sources(path)} for tid, rank, jump, rel, path in
                     queries.rank_page(cat, ordering, offset, limit)]
            return _json({"ordering": ordering, "total": queries.count_ranks(cat, ordering), "offset": offset,
                          "items": items})

    def _hits(res) -> dict:
        d = res.to_dict()
        for h in d.get("results", ()):
            h["thumb_url"] = thumb_url(h.get("relpath"))
        return d

    def search(request: Request) -> Response:
        from nearsort.embed.search import search as _search

        return _json(_hits(_search(rv.root, request.query_params.get("q", ""), k=_int(request, "k", 40, 1, PAGE_MAX))))

    def similar(request: Request) -> Response:
        from nearsort.embed.search import similar as _similar

        tid = _int(request, "thumb_id", -1)
        if tid < 0:
            raise BadArgument("similar needs thumb_id")
        with rv.read() as cat:
            if queries.thumb_relpath(cat, tid) is None:  # only a thumbnail of the library, never a path
                raise BadArgument(f"no thumbnail #{tid} in this library")
        return _json(_hits(_similar(rv.root, f"#{tid}", k=_int(request, "k", 40, 1, PAGE_MAX))))

    def quality(request: Request) -> Response:
        from nearsort.quality import assess_quality

        kind = request.query_params.get("kind", "dark")
        if kind not in ("dark", "bright", "blurry", "errors"):
            raise BadArgument(f"kind must be dark, bright, blurry or errors, not {kind!r}")
        offset, limit = _int(request, "offset", 0), _int(request, "limit", 100, 1, PAGE_MAX)
        if rv._quality is None:
            rv._quality = assess_quality(rv.root)
        q = rv._quality
        items = q.errors if kind == "errors" else q.lists.get(kind, [])
        page = [dict(it, thumb_url=thumb_url(it.get("thumb"))) for it in items[offset:offset + limit]]
        return _json({"kind": kind, "total": len(items), "offset": offset, "items": page,
                      "counts": {k: len(v) for k, v in q.lists.items()} | {"errors": len(q.errors)},
                      "threshold": q.thresholds.get(kind, {}).get("value")})

    def pending(request: Request) -> Response:
        with rv.read() as cat:
            return _json(D.pending_summary(cat))

    # ---- writing (POST, token in the header, one at a time)
    def _group_out(group_id: Optional[int]) -> Optional[dict]:
        g = D.get_group(rv.root, group_id) if group_id is not None else None
        return None if g is None else _members_with_urls({"groups": [g]})["groups"][0]

    def decide(data: dict) -> dict:
        action = data.get("action")
        if action not in ("accept", "distinct", "skip"):
            raise BadArgument(f"action must be accept, distinct or skip, not {action!r}")
        gid = _opt_int(data.get("group_id"))
        if gid is None:
            raise BadArgument("decide needs group_id")
        d = D.decide(rv.root, gid, action, keeper=_opt_int(data.get("keeper")), member=_opt_int(data.get("member")))
        return {"decision": d.to_dict(), "group": _group_out(gid)}

    def undo_decision(data: dict) -> dict:
        d = D.undo_decision(rv.root)
        return {"decision": None if d is None else d.to_dict(), "group": _group_out(d.group_id) if d else None}

    def refresh_groups(data: dict) -> dict:
        return {"state": D.refresh_groups(rv.root).to_dict()}

    def accept_all(data: dict) -> dict:
        kind = data.get("kind", "copies")
        if kind != "copies":
            raise BadArgument("only copies can be accepted in bulk (similar shots are decided one by one)")
        return {"accepted": D.accept_all(rv.root, kind="copies", relation=str(data.get("relation") or "exact"))}

    def apply(data: dict) -> dict:
        dest = str(data.get("dest") or "").strip()
        if not dest:
            raise BadArgument("choose the quarantine folder the duplicates are moved to")
        if not os.path.isabs(os.path.expanduser(dest)):
            raise BadArgument(f"the quarantine folder must be an absolute path, not {dest!r}")
        q = D.apply_decisions(rv.root, os.path.expanduser(dest), dry_run=bool(data.get("dry_run")))
        rv._quality = None
        return {"quarantine": q.to_dict()}

    def undo(data: dict) -> dict:
        from nearsort.refresh import undo as _undo

        r = _undo(rv.root)
        rv._quality = None
        return {"undo": r.to_dict()}

    routes = [
        Route("/", index),
        Route("/static/{name}", guarded(static)),
        Route("/favicon.ico", guarded(lambda request: Response(status_code=204, headers=SECURITY_HEADERS))),
        Route(THUMB_PREFIX + "{rel:path}", guarded(thumb)),
        Route("/api/summary", guarded(summary)),
        Route("/api/groups", guarded(groups)),
        Route("/api/group", guarded(group)),
        Route("/api/chain", guarded(chain)),
        Route("/api/search", guarded(search)),
        Route("/api/similar", guarded(similar)),
        Route("/api/quality", guarded(quality)),
        Route("/api/pending", guarded(pending)),
        Route("/api/decide", writing(decide), methods=["POST"]),
        Route("/api/undo-decision", writing(undo_decision), methods=["POST"]),
        Route("/api/refresh-groups", writing(refresh_groups), methods=["POST"]),
        Route("/api/accept-all", writing(accept_all), methods=["POST"]),
        Route("/api/apply", writing(apply), methods=["POST"]),
        Route("/api/undo", writing(undo), methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.review = rv
    return app


def _opt_int(v) -> Optional[int]:
    return None if v is None or v == "" else int(v)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def serve(thumbs: Thumbs, *, host: str = "127.0.0.1", port: int = 0, open_browser: bool = True,
          move_to: Optional[str] = None, ready: Optional[Callable[[str], None]] = None,
          log: Optional[Callable[[str], None]] = None) -> None:
    """``nearsort review``: serve the review app for THUMBS on ``host:port`` (0: a free port) until
    Ctrl-C. ``ready(url)`` hears the URL (with this run's token) once the port is listening; the
    browser is opened on it unless ``open_browser`` is false. The stored duplicate groups are
    found first when there are none yet, or they are stale."""
    import uvicorn

    root = thumbs.root if isinstance(thumbs, Catalog) else Path(thumbs)
    with Catalog.open(root, write=False):  # a missing or damaged catalog: its one-line error, now
        pass
    state = D.groups_state(root)
    if not state.stored or state.stale:
        if log:
            log("finding the duplicate groups (" + ("the library changed since they were found" if state.stored
                else "once: the next start reuses them") + ") ...")
        D.refresh_groups(root)
    token = secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family)
    except OSError as e:
        raise BadArgument(f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port "
                          "(0: a free one) or --host") from None
    # every answer goes out at once: without this a response written in two parts (headers, then
    # body) waits ~40 ms for the client's delayed ACK (Nagle), on every request (accepted sockets inherit it)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    url = f"http://{_url_host(host)}:{sock.getsockname()[1]}/?token={token}"
    app = create_app(root, token, loopback=is_loopback(host), move_to=move_to)
    if ready:
        ready(url)
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
