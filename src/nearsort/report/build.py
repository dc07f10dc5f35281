"""``report``: one self-contained HTML page about a library.

Sections: a summary (photos, exact and near duplicate groups, reclaimable bytes, mirror images,
dark / bright / blurry photos, unreadable files), the duplicate groups side by side with the
keeper marked and each file's resolution / size / date, the similarity chain (``ranks``, the
latest ``analyze``) as a strip of thumbnails with its biggest jumps marked, the quality
galleries and the broken files.

Built to stay usable at 10^5 photos and more:

* the page is static markup + one small script; all data sits in ``<script
  type="application/json">`` blocks cut into chunks, parsed only when needed, and rendered in
  batches as the user scrolls (IntersectionObserver); images are ``loading="lazy"``;
* data is compact: thumbnails and source folders are tables referenced by index, the chain is
  two integer arrays -- about 60 bytes per photo in all (tests check a synthetic 100 k catalog);
* thumbnails are referenced by paths relative to the report's folder (move both together), or,
  for small libraries (<= ``INLINE_MAX`` thumbnails) or with ``inline=True``, inlined as
  ``data:`` URIs so the page is a single portable file.

Safety: nothing from the catalog is ever interpolated into HTML. File names travel in JSON
(with ``<``, ``>``, ``&`` escaped as ``\\u003c`` ... so no ``</script>`` can end a block early)
and are put into the page with ``textContent`` / attributes only. A Content-Security-Policy
allows just this one script (by its SHA-256), images from files / data URIs, nothing else.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import time
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from nearsort.store import queries
from nearsort.store.catalog import Catalog

INLINE_MAX = 200          # inline thumbnails as data: URIs up to this many (auto mode)
INLINE_MAX_BYTES = 8 << 20
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.~-]+$")
CHUNK = {"groups": 200, "chain": 5000, "quality": 500, "errors": 1000}


def _jsonblock(id_: str, obj) -> str:
    s = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{id_}">{s}</script>\n'


def _url_rel(target: Path, base: Path) -> str:
    try:
        rel = os.path.relpath(target, base)
    except ValueError:  # another drive (Windows)
        return target.absolute().as_uri()
    parts = rel.replace(os.sep, "/").split("/")
    return "/".join(quote(os.fsencode(p), safe="") for p in parts)


class _Tables:
    """Index tables that keep the page small: thumbnails (folder index + name) and source folders."""

    def __init__(self, root: Path, out_dir: Path, names: dict[int, str], rels: dict[int, str], inline: bool):
        self.root, self.out_dir, self.inline = root, out_dir, inline
        self.rels, self.names = rels, names
        self.tdirs: list[str] = []
        self._tdir: dict[str, int] = {}
        self.thumbs: list = []
        self._thumb: dict[int, int] = {}
        self.sdirs: list[str] = []
        self._sdir: dict[str, int] = {}

    def thumb(self, tid: Optional[int]) -> int:
        if tid is None or tid not in self.rels:
            return -1
        i = self._thumb.get(tid)
        if i is not None:
            return i
        rel = self.rels[tid]
        if self.inline:
            try:
                data = (self.root / rel).read_bytes()
                entry = [-1, "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")]
            except OSError:
                entry = [-1, ""]
        else:
            folder, _, name = rel.rpartition("/")
            k = self._tdir.get(folder)
            if k is None:  # one relpath computation per thumbnail folder, not per thumbnail
                url = _url_rel(self.root / folder if folder else self.root, self.out_dir)
                k = self._tdir[folder] = len(self.tdirs)
                self.tdirs.append("" if url == "." else url + "/")
            entry = [k, name if _SAFE_NAME.match(name) else quote(os.fsencode(name), safe="")]
        i = self._thumb[tid] = len(self.thumbs)
        self.thumbs.append(entry)
        return i

    def src(self, path: str) -> list:
        d, name = os.path.split(path)
        if d and not d.endswith(os.sep):
            d += os.sep
        k = self._sdir.get(d)
        if k is None:
            k = self._sdir[d] = len(self.sdirs)
            self.sdirs.append(d)
        return [k, name]


def _chunks(prefix: str, items: list, size: int) -> tuple[str, int]:
    out, n = [], 0
    for i in range(0, len(items), size):
        out.append(_jsonblock(f"d-{prefix}-{n}", items[i:i + size]))
        n += 1
    return "".join(out), n


def _date(s: Optional[str]) -> Optional[str]:
    if not s:
        return None
    return s.replace("T", " ")[:16]


def build(cat: Catalog, out_path: Path, *, dupes_result=None, dupes_config=None, quality_result=None,
          ordering: Optional[str] = None, inline: Optional[bool] = None, title: Optional[str] = None) -> dict:
    """Write the report for an open catalog to ``out_path``; return a summary dict."""
    from nearsort.dupes import group as D
    from nearsort import quality as Q

    out_path = Path(os.path.abspath(out_path))
    out_dir = out_path.parent
    names = queries.thumb_names(cat)
    rels = queries.thumb_relpaths(cat)
    if inline is None:
        inline = len(rels) <= INLINE_MAX and sum(_size(cat.root / r) for r in rels.values()) <= INLINE_MAX_BYTES
    T = _Tables(cat.root, out_dir, names, rels, inline)

    res = dupes_result if dupes_result is not None else D.find_duplicates(cat, dupes_config)
    qres = quality_result if quality_result is not None else Q.assess(cat)
    counts = queries.counts(cat)
    quarantined = queries.count_sources(cat, "quarantined")

    # ---- duplicate groups: [id, kind, evidence, reclaimable, members, mirrors]
    # member: [src, thumb, relation, w, h, bytes, date, camera, gps(0/1), keeper(0/1), format]
    groups = []
    for g in res.groups:
        mem = []
        for m in g["members"]:
            tid = m.get("thumb_id")
            mem.append([T.src(m["path"]), T.thumb(tid), m["relation"], m["width"], m["height"], m["bytes"],
                        _date(m["capture_time"]) or (_date(m["mtime"]) and "file " + _date(m["mtime"])),
                        m["camera"], int(bool(m["gps"])), int(m["keeper"]), m["format"]])
        mirrors = []
        for s in g["similar"]:
            tid = s.get("thumb_id")
            mirrors.append([[T.src(p) for p in s["paths"]], T.thumb(tid), s["relation"]])
        groups.append([g["id"], g["kind"], g["evidence"], g["reclaimable_bytes"], mem, mirrors])

    # ---- chain
    ordname = queries.current_ordering(cat, ordering)  # the rule refresh applies
    order, jumps = [], []
    if ordname:
        for tid, _rank, jump in queries.ranks(cat, ordname):
            if tid in rels:
                order.append(T.thumb(tid))
                jumps.append(-1 if jump is None else int(round(float(jump) * 1000)))
    marked = _biggest(jumps)

    # ---- quality and errors
    qual = {}
    for kind, items in qres.lists.items():
        qual[kind] = [[T.thumb(it["thumb_id"]), T.src(it["paths"][0]), len(it["paths"]), it["brightness"],
                       it["contrast"], it["blur"], it["width"], it["height"]] for it in items]
    errs = [[T.src(e["path"]), e["error"], e["size"]] for e in qres.errors]

    summary = {
        "photos": counts["sources_ok"], "distinct": len(rels), "sources": counts["sources"],
        "groups": res.summary["groups"], "exact_groups": res.summary["exact_groups"],
        "near_groups": res.summary["near_groups"], "duplicates": res.summary["duplicates"],
        "reclaimable": res.summary["reclaimable_bytes"], "mirrors": res.summary["mirror_pairs"],
        "shots": res.summary.get("similar_shots", 0),
        "dark": len(qual.get("dark", [])), "bright": len(qual.get("bright", [])),
        "blurry": len(qual.get("blurry", [])), "errors": len(errs), "quarantined": quarantined,
    }
    parts = []
    chunk_counts = {}
    for key, items, size in (("groups", groups, CHUNK["groups"]), ("errors", errs, CHUNK["errors"])):
        s, n = _chunks(key, items, size)
        parts.append(s)
        chunk_counts[key] = n
    for kind, items in qual.items():
        s, n = _chunks("q" + kind, items, CHUNK["quality"])
        parts.append(s)
        chunk_counts["q" + kind] = n
    s, n = _chunks("chain", order, CHUNK["chain"])
    parts.append(s)
    s2, _ = _chunks("jumps", jumps, CHUNK["chain"])
    parts.append(s2)
    chunk_counts["chain"] = n
    meta = {
        "title": title or f"nearsort report — {cat.root.name or cat.root}",
        "root": str(cat.root), "generated": time.strftime("%Y-%m-%d %H:%M"),
        "summary": summary, "sizes": {"groups": len(groups), "errors": len(errs), "chain": len(order),
                                      **{"q" + k: len(v) for k, v in qual.items()}},
        "csize": {"groups": CHUNK["groups"], "errors": CHUNK["errors"], "chain": CHUNK["chain"],
                  "jumps": CHUNK["chain"], **{"q" + k: CHUNK["quality"] for k in qual}},
        "chunks": chunk_counts, "ordering": ordname, "marked": marked,
        "model": res.summary.get("model"), "notes": res.notes,
        "thresholds": {k: v["value"] for k, v in qres.thresholds.items()},
        "dupes": {k: res.settings.get(k) for k in ("phash_distance", "threshold", "crop_distance", "keep")},
        "sep": os.sep, "inline": inline,
    }
    tables = {"tdirs": T.tdirs, "thumbs": T.thumbs, "sdirs": T.sdirs}
    script = _SCRIPT
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    page = (
        _HEAD.replace("__CSP_HASH__", digest).replace("__TITLE__", html.escape(meta["title"]))
        + _BODY
        + _jsonblock("d-meta", meta)
        + _jsonblock("d-tables", tables)
        + "".join(parts)
        + "<script>" + script + "</script>\n</body>\n</html>\n"
    )
    tmp = out_path.with_name(out_path.name + ".tmp")
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(page)
    os.replace(tmp, out_path)
    return {"path": str(out_path), "bytes": len(page.encode("utf-8")), "inline": inline, **summary,
            "chain": len(order), "ordering": ordname}


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _biggest(jumps: list[int]) -> int:
    """Jumps (in thousandths) at or above this value are marked: the top 0.5 % of the steps,
    at least 3 and at most 200 of them."""
    vals = sorted((j for j in jumps[1:] if j >= 0), reverse=True)
    if not vals:
        return 1 << 30
    k = min(len(vals), max(3, min(200, len(vals) // 200)))
    return max(1, vals[k - 1])


def report(root, out, **kw) -> dict:
    """Write the HTML report of THUMBS=``root`` to ``out`` (see :func:`build` for options)."""
    with Catalog.open(root, write=False) as cat:
        return build(cat, Path(out), **kw)


# ----------------------------------------------------------------------------- page template
_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data: file: 'self'; style-src 'unsafe-inline'; script-src 'sha256-__CSP_HASH__'">
<title>__TITLE__</title>
<style>
:root{--bg:#f3f4f7;--card:#fff;--ink:#1d2330;--mute:#6b7385;--line:#e3e6ec;--keep:#15a362;--keepbg:#e8f7ef;
--near:#d9822b;--exact:#3b6fd8;--mirror:#7a5af5;--bad:#d64545;--shadow:0 1px 2px rgba(16,24,40,.06),0 1px 3px rgba(16,24,40,.10)}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;background:var(--bg);color:var(--ink)}
header{background:#141a26;color:#fff;padding:22px 32px 18px}
header h1{margin:0;font-size:22px;font-weight:650;letter-spacing:.2px}
header .sub{color:#aab3c5;font-size:13px;margin-top:4px;word-break:break-all}
nav{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.96);backdrop-filter:blur(6px);border-bottom:1px solid var(--line);padding:0 32px;display:flex;gap:4px;flex-wrap:wrap}
nav a{color:var(--ink);text-decoration:none;padding:11px 12px;font-weight:550;border-bottom:2px solid transparent}
nav a:hover{border-bottom-color:var(--exact)}
nav a .n{color:var(--mute);font-weight:500;margin-left:4px}
main{padding:20px 32px 60px;max-width:1500px}
section{margin-top:28px}
h2{font-size:18px;margin:0 0 4px}
.hint{color:var(--mute);margin:0 0 14px;font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:12px}
.card{background:var(--card);border-radius:12px;box-shadow:var(--shadow);padding:14px 16px}
.card .v{font-size:26px;font-weight:700;letter-spacing:-.5px}
.card .l{color:var(--mute);font-size:12.5px;margin-top:2px}
.card.accent .v{color:var(--keep)} .card.warn .v{color:var(--bad)}
.group{background:var(--card);border-radius:12px;box-shadow:var(--shadow);margin-bottom:14px;overflow:hidden}
.ghead{display:flex;align-items:center;gap:10px;flex-wrap:wrap;padding:10px 16px;border-bottom:1px solid var(--line);background:#fafbfc}
.ghead .t{font-weight:650}
.chip{display:inline-block;border-radius:999px;padding:1px 9px;font-size:12px;font-weight:600;background:#eef1f6;color:#465066}
.chip.exact{background:#e7eefc;color:var(--exact)} .chip.near{background:#fcf0e3;color:var(--near)}
.chip.perceptual{background:#eef1f6;color:#465066} .chip.mirror{background:#efeafe;color:var(--mirror)}
.ghead .save{margin-left:auto;color:var(--mute);font-size:13px}
.members{display:flex;flex-wrap:wrap;gap:12px;padding:14px 16px}
.tile{flex:0 0 196px;width:196px;min-width:0;border:1px solid var(--line);border-radius:10px;padding:8px;position:relative;background:#fff}
.tile.keep{border:2px solid var(--keep);background:var(--keepbg)}
.tile.mirror{border:2px dashed var(--mirror)}
.imgbox{width:100%;height:160px;display:flex;align-items:center;justify-content:center;background:#eceff3;border-radius:6px;overflow:hidden}
.imgbox img{max-width:100%;max-height:100%;display:block}
.badge{position:absolute;top:14px;left:14px;border-radius:6px;padding:2px 7px;font-size:11.5px;font-weight:700;color:#fff;background:#5d6679;box-shadow:0 1px 2px rgba(0,0,0,.25)}
.badge.keep{background:var(--keep)} .badge.exact{background:var(--exact)} .badge.near{background:var(--near)} .badge.mirror{background:var(--mirror)}
.cap{margin-top:7px;font-size:12.5px;min-width:0;overflow:hidden}
.cap .res{font-weight:650}
.cap .m{color:var(--mute)}
.name{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:11.5px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;margin-top:3px}
.dir{color:var(--mute);font-size:11px;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;direction:rtl;text-align:left}
.chain{display:flex;flex-wrap:wrap;gap:3px;background:var(--card);border-radius:12px;box-shadow:var(--shadow);padding:12px}
.chain .c{width:68px;height:68px;background:#eceff3;border-radius:4px;overflow:hidden;display:flex;align-items:center;justify-content:center}
.chain .c img{width:100%;height:100%;object-fit:cover;display:block}
.chain .j{width:6px;height:68px;border-radius:3px;background:var(--bad);position:relative}
.chain .j::after{content:attr(data-j);position:absolute;top:-2px;left:8px;font-size:10px;color:var(--bad);font-weight:700;background:#fff;border-radius:3px;padding:0 2px;z-index:1}
.jumps{display:flex;gap:6px;flex-wrap:wrap;margin:0 0 10px}
.jumps button{border:1px solid var(--line);background:#fff;border-radius:8px;padding:3px 9px;font-size:12px;cursor:pointer;color:var(--ink)}
.jumps button:hover{border-color:var(--bad);color:var(--bad)}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:10px}
.gallery .tile{flex:none;width:auto}
.gallery .imgbox{height:120px}
table{width:100%;border-collapse:collapse;background:var(--card);border-radius:12px;overflow:hidden;box-shadow:var(--shadow)}
th,td{text-align:left;padding:8px 12px;border-bottom:1px solid var(--line);font-size:13px;vertical-align:top}
th{background:#fafbfc;color:var(--mute);font-weight:600}
td.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;word-break:break-all}
td.err{color:var(--bad)}
.empty{color:var(--mute);background:var(--card);border-radius:12px;padding:16px;box-shadow:var(--shadow)}
.sentinel{height:1px}
.more{color:var(--mute);font-size:12px;padding:6px 2px}
.subh{font-size:15px;margin:18px 0 8px}
.note{background:#fff8e6;border:1px solid #f3dca6;border-radius:10px;padding:8px 12px;margin:10px 0;color:#6d5312;font-size:13px}
</style>
</head>
<body>
"""

_BODY = """<header><h1 id="title">nearsort report</h1><div class="sub" id="subtitle"></div></header>
<nav id="nav"></nav>
<main>
<noscript><p class="note">This report needs JavaScript to show its data.</p></noscript>
<section id="summary"><h2>Summary</h2><div id="notes"></div><div class="cards" id="cards"></div></section>
<section id="dupes"><h2>Duplicate groups</h2><p class="hint" id="dupes-hint"></p><div id="groups"></div></section>
<section id="chain"><h2>Similarity chain</h2><p class="hint" id="chain-hint"></p><div class="jumps" id="jumps"></div><div class="chain" id="strip"></div></section>
<section id="quality"><h2>Quality</h2><p class="hint" id="quality-hint"></p><div id="qual"></div></section>
<section id="broken"><h2>Unreadable files</h2><p class="hint">Files that could not be made into thumbnails, with the reason.</p><div id="errors"></div></section>
</main>
"""

_SCRIPT = r"""
(function () {
"use strict";
function $(id) { return document.getElementById(id); }
function J(id) { var e = $(id); return e ? JSON.parse(e.textContent) : null; }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
var M = J("d-meta"), T = J("d-tables"), S = M.summary;
var cache = {};
function item(prefix, i) {
  var size = M.csize[prefix];
  var c = Math.floor(i / size), key = prefix + c;
  if (!(key in cache)) cache[key] = J("d-" + prefix + "-" + c) || [];
  return cache[key][i - c * size];
}
function bytes(n) {
  if (n === null || n === undefined) return "?";
  var u = ["B", "kB", "MB", "GB", "TB"], i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function num(n) { return Number(n).toLocaleString("en-US"); }
function path(s) { return T.sdirs[s[0]] + s[1]; }
function img(t, alt) {
  var box = el("div", "imgbox");
  if (t >= 0 && T.thumbs[t][1]) {
    var e = T.thumbs[t], i = document.createElement("img");
    i.loading = "lazy"; i.decoding = "async"; i.alt = alt || "";
    i.src = e[0] < 0 ? e[1] : T.tdirs[e[0]] + e[1];
    box.appendChild(i);
  } else box.appendChild(el("span", "m", "no thumbnail"));
  return box;
}
function lazy(container, total, batch, render, stag) {
  var done = 0, sentinel = el(stag || "div", "sentinel"), io = null;
  container.appendChild(sentinel);
  function more() {
    var end = Math.min(total, done + batch);
    var frag = document.createDocumentFragment();
    for (var i = done; i < end; i++) render(frag, i);
    container.insertBefore(frag, sentinel);
    done = end;
    if (done >= total && io) { io.disconnect(); sentinel.remove(); }
  }
  if ("IntersectionObserver" in window) {
    io = new IntersectionObserver(function (es) {
      for (var k = 0; k < es.length; k++) if (es[k].isIntersecting) { more(); return; }
    }, { rootMargin: "1500px 0px" });
    io.observe(sentinel);
  }
  more();
  if (!io) while (done < total) more();
  return { upTo: function (n) { while (done < Math.min(n, total)) more(); } };
}

// ---- header, nav, summary
$("title").textContent = M.title;
$("subtitle").textContent = "THUMBS " + M.root + " · generated " + M.generated +
  (M.model ? " · model " + M.model : "") + (M.ordering ? " · chain " + M.ordering : "");
var navItems = [["summary", "Summary", null], ["dupes", "Duplicates", S.groups], ["chain", "Chain", M.sizes.chain],
  ["quality", "Quality", S.dark + S.bright + S.blurry], ["broken", "Unreadable", S.errors]];
navItems.forEach(function (n) {
  var a = el("a", null, n[1]); a.href = "#" + n[0];
  if (n[2] !== null) a.appendChild(el("span", "n", num(n[2])));
  $("nav").appendChild(a);
});
(M.notes || []).forEach(function (t) { $("notes").appendChild(el("div", "note", t)); });
[[num(S.photos), "photos (" + num(S.distinct) + " distinct pictures)", ""],
 [num(S.groups), "duplicate groups", ""],
 [num(S.exact_groups) + " / " + num(S.near_groups), "exact / near groups", ""],
 [num(S.duplicates), "files that could go", ""],
 [bytes(S.reclaimable), "reclaimable", "accent"],
 [num(S.mirrors), "mirror images (kept)", ""],
 [num(S.shots || 0), "similar shots (kept)", ""],
 [num(S.dark) + " / " + num(S.bright) + " / " + num(S.blurry), "dark / bright / blurry", ""],
 [num(S.errors), "unreadable files", S.errors ? "warn" : ""],
 [num(S.quarantined), "quarantined so far", ""]].forEach(function (c) {
  var d = el("div", "card " + c[2]); d.appendChild(el("div", "v", c[0])); d.appendChild(el("div", "l", c[1]));
  $("cards").appendChild(d);
});

// ---- duplicate groups
var REL = { keeper: "KEEP", exact: "exact copy", perceptual: "same picture", near: "near duplicate" };
function tile(src, t, badge, badgeCls, lines, cls) {
  var d = el("div", "tile" + (cls ? " " + cls : ""));
  var p = path(src);
  d.title = p;
  d.appendChild(img(t, src[1]));
  if (badge) d.appendChild(el("span", "badge " + (badgeCls || ""), badge));
  var cap = el("div", "cap");
  lines.forEach(function (l) { if (l) cap.appendChild(l); });
  cap.appendChild(el("div", "name", src[1]));
  cap.appendChild(el("div", "dir", T.sdirs[src[0]]));
  d.appendChild(cap);
  return d;
}
$("dupes-hint").textContent = M.sizes.groups ?
  "Each row shows copies of one picture, largest savings first. The keeper (green) is chosen by: " +
  String(M.dupes.keep).split(",").join(" → ") + ". Mirror images are shown dashed: similar, never offered for deletion. To move the other copies " +
  "aside: nearsort dupes THUMBS --move-to FOLDER (nearsort undo THUMBS puts them back)." :
  "";
if (!M.sizes.groups) $("groups").appendChild(el("div", "empty", "No duplicates found."));
else lazy($("groups"), M.sizes.groups, 20, function (frag, i) {
  var g = item("groups", i), box = el("div", "group"), head = el("div", "ghead");
  head.appendChild(el("span", "t", "Group " + g[0]));
  head.appendChild(el("span", "chip " + g[1], g[1] === "exact" ? "exact copies" : g[1] === "near" ? "near duplicates" : "same picture"));
  g[2].forEach(function (e) { head.appendChild(el("span", "chip", "evidence: " + e)); });
  head.appendChild(el("span", "save", g[4].length + " files · " + bytes(g[3]) + " reclaimable"));
  box.appendChild(head);
  var row = el("div", "members");
  g[4].forEach(function (m) {
    var keep = m[9] === 1;
    var meta = el("div", "m", [bytes(m[5]), m[10]].filter(Boolean).join(" · "));
    var extra = [m[6] || "no date", m[7], m[8] ? "GPS" : null].filter(Boolean).join(" · ");
    row.appendChild(tile(m[0], m[1], keep ? "★ KEEP" : REL[m[2]] || m[2], keep ? "keep" : m[2],
      [el("div", "res", m[3] + " × " + m[4]), meta, el("div", "m", extra)], keep ? "keep" : ""));
  });
  g[5].forEach(function (s) {
    row.appendChild(tile(s[0][0], s[1], s[2] === "shot" ? "similar shot" : "mirror image", "mirror",
      [el("div", "m", "similar, kept" + (s[0].length > 1 ? " (+" + (s[0].length - 1) + " copies)" : ""))], "mirror"));
  });
  box.appendChild(row);
  frag.appendChild(box);
});

// ---- chain
var n = M.sizes.chain;
if (!n) {
  $("chain-hint").textContent = "";
  $("strip").replaceWith(el("div", "empty", "No similarity chain yet: run `nearsort analyze` on THUMBS, then make the report again."));
} else {
  $("chain-hint").textContent = num(n) + " pictures in chain order (" + M.ordering +
    "): neighbours look alike. Red bars mark the biggest jumps (distance ≥ " + (M.marked / 1000).toFixed(3) +
    ") — where one subject ends and the next begins.";
  var strip = lazy($("strip"), n, 600, function (frag, i) {
    var j = item("jumps", i);
    if (i > 0 && j >= M.marked) {
      var b = el("div", "j"); b.dataset.j = (j / 1000).toFixed(2); b.id = "jump-" + i;
      b.title = "jump " + (j / 1000).toFixed(3) + " before #" + (i + 1); frag.appendChild(b);
    }
    var c = el("div", "c"); c.title = "#" + (i + 1) + (j >= 0 ? " · step " + (j / 1000).toFixed(3) : "");
    var t = item("chain", i);
    if (t >= 0) {
      var e = T.thumbs[t], im = document.createElement("img");
      im.loading = "lazy"; im.decoding = "async"; im.alt = ""; im.src = e[0] < 0 ? e[1] : T.tdirs[e[0]] + e[1];
      c.appendChild(im);
    }
    frag.appendChild(c);
  });
  var top = [];
  for (var i = 1; i < n; i++) { var jj = item("jumps", i); if (jj >= M.marked) top.push([jj, i]); }
  top.sort(function (a, b) { return b[0] - a[0]; });
  if (top.length) $("jumps").appendChild(el("span", "m", "Biggest jumps:"));
  top.slice(0, 12).forEach(function (t) {
    var btn = el("button", null, "#" + (t[1] + 1) + " · " + (t[0] / 1000).toFixed(2));
    btn.addEventListener("click", function () {
      strip.upTo(t[1] + 1);
      var b = $("jump-" + t[1]); if (b) b.scrollIntoView({ behavior: "smooth", block: "center" });
    });
    $("jumps").appendChild(btn);
  });
}

// ---- quality
var QL = { dark: "Dark", bright: "Overexposed", blurry: "Blurry" };
var TH = M.thresholds;
$("quality-hint").textContent = "Worst first. Dark: brightness < " + TH.dark + " · overexposed: brightness > " +
  TH.bright + " · blurry: sharpness (Laplacian variance) < " + TH.blurry + " (thresholds from this library, within fixed guards).";
["dark", "bright", "blurry"].forEach(function (k) {
  var total = M.sizes["q" + k];
  if (total === undefined) return;
  $("qual").appendChild(el("h3", "subh", QL[k] + " (" + num(total) + ")"));
  if (!total) { $("qual").appendChild(el("div", "empty", "None.")); return; }
  var g = el("div", "gallery"); $("qual").appendChild(g);
  lazy(g, total, 60, function (frag, i) {
    var q = item("q" + k, i);
    var score = k === "blurry" ? "sharpness " + q[5] : "brightness " + q[3];
    frag.appendChild(tile(q[1], q[0], null, null, [el("div", "res", score),
      el("div", "m", q[6] + " × " + q[7] + (q[2] > 1 ? " · " + q[2] + " copies" : ""))]));
  });
});

// ---- errors
if (!M.sizes.errors) $("errors").appendChild(el("div", "empty", "None: every file could be read."));
else {
  var tbl = el("table"), thead = el("tr");
  ["File", "Reason", "Size"].forEach(function (h) { thead.appendChild(el("th", null, h)); });
  tbl.appendChild(thead); $("errors").appendChild(tbl);
  var body = el("tbody"); tbl.appendChild(body);
  lazy(body, M.sizes.errors, 200, function (frag, i) {
    var e = item("errors", i), tr = el("tr");
    tr.appendChild(el("td", "path", path(e[0])));
    tr.appendChild(el("td", "err", e[1]));
    tr.appendChild(el("td", null, e[2] ? bytes(e[2]) : "—"));
    frag.appendChild(tr);
  }, "tr");
}
})();
"""
