"""``report``: one self-contained HTML page about a library.

The page (``template.html``, ``report.css``, ``report.js`` beside this file) is static markup plus
one script; the data travels in chunked JSON blocks rendered lazily, so it stays small and usable
at 10^5 photos. Nothing from the catalog is ever interpolated into HTML: names are escaped JSON put
into the page with ``textContent``, and the Content-Security-Policy allows only that one script.
How and why: docs/design.md, "report".
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import quote

from nearsort.stage import Progress, Result
from nearsort.store import queries
from nearsort.store.catalog import Catalog, Thumbs, open_catalog

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

    def __init__(self, root: Path, out_dir: Path, rels: dict[int, str], inline: bool):
        self.root, self.out_dir, self.inline = root, out_dir, inline
        self.rels = rels
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


def _chunks(prefix: str, items: list, size: int) -> str:
    """``items`` as JSON blocks d-PREFIX-0, d-PREFIX-1 ... of ``size`` items each."""
    return "".join(_jsonblock(f"d-{prefix}-{n}", items[i:i + size]) for n, i in enumerate(range(0, len(items), size)))


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
    rels = queries.thumb_relpaths(cat)
    if inline is None:
        inline = len(rels) <= INLINE_MAX and sum(_size(cat.root / r) for r in rels.values()) <= INLINE_MAX_BYTES
    T = _Tables(cat.root, out_path.parent, rels, inline)
    res = dupes_result if dupes_result is not None else D.find_duplicates(cat, dupes_config)
    qres = quality_result if quality_result is not None else Q.assess(cat)

    groups = _group_rows(res, T)
    ordname = queries.current_ordering(cat, ordering)  # the rule refresh applies
    order, jumps = _chain_rows(cat, ordname, rels, T)
    qual, errs = _quality_rows(qres, T)
    summary = _summary(cat, res, rels, qual, errs)
    blocks = {"groups": groups, "errors": errs, **{"q" + k: v for k, v in qual.items()}, "chain": order, "jumps": jumps}
    csize = {"groups": CHUNK["groups"], "errors": CHUNK["errors"], "chain": CHUNK["chain"], "jumps": CHUNK["chain"],
             **{"q" + k: CHUNK["quality"] for k in qual}}
    meta = {
        "title": title or f"nearsort report — {cat.root.name or cat.root}",
        "root": str(cat.root), "generated": time.strftime("%Y-%m-%d %H:%M"),
        "summary": summary, "sizes": {k: len(v) for k, v in blocks.items() if k != "jumps"}, "csize": csize,
        "chunks": {k: -(-len(v) // csize[k]) for k, v in blocks.items() if k != "jumps"}, "ordering": ordname,
        "marked": _biggest(jumps), "model": res.summary.get("model"), "notes": res.notes,
        "thresholds": {k: v["value"] for k, v in qres.thresholds.items()},
        "dupes": {k: res.settings.get(k) for k in ("phash_distance", "threshold", "crop_distance", "keep")},
        "sep": os.sep, "inline": inline,
    }
    page = _page(meta, {"tdirs": T.tdirs, "thumbs": T.thumbs, "sdirs": T.sdirs},
                 "".join(_chunks(key, items, csize[key]) for key, items in blocks.items()))
    _write_text_atomic(out_path, page)
    return {"path": str(out_path), "bytes": len(page.encode("utf-8")), "inline": inline, **summary,
            "chain": len(order), "ordering": ordname}


def _group_rows(res, T: _Tables) -> list:
    """Duplicate groups: [id, kind, evidence, reclaimable, members, mirrors]; a member is
    [src, thumb, relation, w, h, bytes, date, camera, gps(0/1), keeper(0/1), format]."""
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
    return groups


def _chain_rows(cat: Catalog, ordname: Optional[str], rels: dict[int, str], T: _Tables) -> tuple[list, list]:
    """The chain as thumbnail-table indexes and its steps in thousandths (-1: none)."""
    order, jumps = [], []
    if ordname:
        for tid, _rank, jump in queries.ranks(cat, ordname):
            if tid in rels:
                order.append(T.thumb(tid))
                jumps.append(-1 if jump is None else int(round(float(jump) * 1000)))
    return order, jumps


def _quality_rows(qres, T: _Tables) -> tuple[dict, list]:
    """{kind: [[thumb, src, copies, brightness, contrast, blur, w, h]]} and [[src, error, size]]."""
    qual = {}
    for kind, items in qres.lists.items():
        qual[kind] = [[T.thumb(it["thumb_id"]), T.src(it["paths"][0]), len(it["paths"]), it["brightness"],
                       it["contrast"], it["blur"], it["width"], it["height"]] for it in items]
    errs = [[T.src(e["path"]), e["error"], e["size"]] for e in qres.errors]
    return qual, errs


def _summary(cat: Catalog, res, rels: dict[int, str], qual: dict, errs: list) -> dict:
    counts = queries.counts(cat)
    quarantined = queries.count_sources(cat, "quarantined")
    return {
        "photos": counts["sources_ok"], "distinct": len(rels), "sources": counts["sources"],
        "groups": res.summary["groups"], "exact_groups": res.summary["exact_groups"],
        "near_groups": res.summary["near_groups"], "duplicates": res.summary["duplicates"],
        "reclaimable": res.summary["reclaimable_bytes"], "mirrors": res.summary["mirror_pairs"],
        "shots": res.summary.get("similar_shots", 0),
        "dark": len(qual.get("dark", [])), "bright": len(qual.get("bright", [])),
        "blurry": len(qual.get("blurry", [])), "errors": len(errs), "quarantined": quarantined,
    }


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    """A page file shipped in this package (template.html, report.css, report.js)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


_SLOT = re.compile(r"__(CSP_HASH|TITLE|CSS|DATA|SCRIPT)__")


def _page(meta: dict, tables: dict, data_blocks: str) -> str:
    """The page: the template with its style, the data blocks and the one script filled in (in one
    pass, so nothing filled in is ever read as a slot); the CSP names the script by its hash."""
    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    slots = {"CSP_HASH": digest, "TITLE": html.escape(meta["title"]), "CSS": _asset("report.css"),
             "DATA": _jsonblock("d-meta", meta) + _jsonblock("d-tables", tables) + data_blocks, "SCRIPT": script}
    return _SLOT.sub(lambda m: slots[m.group(1)], _asset("template.html"))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


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


@dataclass
class ReportResult(Result):
    """The page written and what its summary shows."""

    path: str
    bytes: int
    inline: bool          # thumbnails embedded in the page
    photos: int
    distinct: int
    sources: int
    groups: int
    exact_groups: int
    near_groups: int
    duplicates: int
    reclaimable: int      # bytes
    mirrors: int
    shots: int
    dark: int
    bright: int
    blurry: int
    errors: int
    quarantined: int
    chain: int            # thumbnails in the similarity chain strip
    ordering: Optional[str]


def write_report(thumbs: Thumbs, out="report.html", *, inline: Optional[bool] = None, dupes_result=None,
                 dupes_config=None, quality_result=None, ordering: Optional[str] = None,
                 title: Optional[str] = None, progress: Optional[Progress] = None) -> ReportResult:
    """``nearsort report``: write the HTML report of THUMBS (a path or an open Catalog) to ``out``;
    read-only. Duplicate groups and quality lists are found here unless given (``dupes_result``,
    ``quality_result``); ``progress`` hears the duplicate search. See :func:`build`."""
    from nearsort.dupes import group as D

    with open_catalog(thumbs, write=False) as cat:
        if dupes_result is None:
            dupes_result = D.find_duplicates(cat, dupes_config, progress=progress)
        return ReportResult(**build(cat, Path(out), dupes_result=dupes_result, quality_result=quality_result,
                                    ordering=ordering, inline=inline, title=title))
