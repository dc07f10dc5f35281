"""``quality``: dark, overexposed and blurry photos, worst first, plus files that could not be read.

Scores are those ``resize`` measured on the thumbnail (brightness = mean luma, contrast = luma std,
blur = Laplacian variance); each photo is listed once, with its source files. Thresholds are the
library's own percentiles held inside fixed guards (a library of good photos gets no "worst 5 %",
one of night shots gets all of them), or given explicitly. The rules and how the guards were set:
docs/design.md, "quality"; docs/benchmarks.md, "Quality guards".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from nearsort.stage import Result
from nearsort.store import queries
from nearsort.store.catalog import Catalog, Thumbs, open_catalog
from nearsort.textsafe import term

KINDS = ("dark", "bright", "blurry")
DARK_PCT, DARK_GUARD = 5.0, (20.0, 35.0)
BRIGHT_PCT, BRIGHT_GUARD = 95.0, (215.0, 240.0)
BLUR_PCT, BLUR_GUARD = 5.0, (10.0, 30.0)
BLUR_RELATIVE = 0.025  # and blur / contrast**2 below this


@dataclass
class Thresholds:
    dark: Optional[float] = None     # brightness below this is dark
    bright: Optional[float] = None   # brightness above this is overexposed
    blurry: Optional[float] = None   # blur (Laplacian variance) below this is blurry


def _clamp(x: float, lo: float, hi: float) -> float:
    return float(min(max(x, lo), hi))


def thresholds_from(brightness: np.ndarray, blur: np.ndarray, given: Optional[Thresholds] = None) -> dict:
    """The thresholds in force and how each was chosen."""
    given = given or Thresholds()
    out = {}
    specs = (
        ("dark", given.dark, brightness, DARK_PCT, DARK_GUARD),
        ("bright", given.bright, brightness, BRIGHT_PCT, BRIGHT_GUARD),
        ("blurry", given.blurry, blur, BLUR_PCT, BLUR_GUARD),
    )
    for name, fixed, values, pct, guard in specs:
        if fixed is not None:
            out[name] = {"value": float(fixed), "how": "given"}
            continue
        v = values[np.isfinite(values)] if len(values) else values
        if not len(v):
            out[name] = {"value": guard[0] if name != "bright" else guard[1], "how": "no data: guard"}
            continue
        p = float(np.percentile(v, pct))
        val = _clamp(p, *guard)
        how = f"{pct:g}th percentile {p:.1f}" + ("" if val == p else f", held to the guard {guard[0]:g}..{guard[1]:g}")
        out[name] = {"value": round(val, 2), "how": how, "percentile": round(p, 2)}
    return out


@dataclass
class QualityResult(Result):
    """The dark / bright / blurry lists (worst first) and the unreadable files."""

    thresholds: dict                            # kind -> {"value", "how", ...}
    photos: int
    lists: dict = field(default_factory=dict)   # kind -> [item]
    errors: list = field(default_factory=list)  # [{"path", "error", "size"}]


@dataclass
class ErrorsResult(Result):
    """The source files that could not be made into thumbnails, by path."""

    errors: list = field(default_factory=list)  # [{"path", "error", "size"}]


def _photos(cat: Catalog):
    """[(thumb_id, relpath, brightness, contrast, blur, tw, th)] of thumbnails with an ok source, and
    {thumb_id: [(path, width, height)]}."""
    srcs: dict[int, list] = {}
    for tid, path, w, h in queries.ok_source_sizes(cat):
        srcs.setdefault(tid, []).append((os.fsdecode(bytes(path)), w, h))
    rows = [r for r in queries.thumb_quality(cat) if r[0] in srcs]
    return rows, srcs


def errors(cat: Catalog) -> list[dict]:
    return [{"path": os.fsdecode(bytes(p)), "error": e or "unknown error", "size": s}
            for p, e, s in queries.source_errors(cat)]


def assess(cat: Catalog, kinds=KINDS, given: Optional[Thresholds] = None, limit: Optional[int] = None) -> QualityResult:
    rows, srcs = _photos(cat)

    def col(i):
        return np.array([np.nan if r[i] is None else float(r[i]) for r in rows], dtype=np.float64)

    bright, contrast, blur = col(2), col(3), col(4)
    th = thresholds_from(bright, blur, given)
    res = QualityResult(th, len(rows))
    tests = {
        "dark": (bright < th["dark"]["value"], bright, False),
        "bright": (bright > th["bright"]["value"], bright, True),
        "blurry": ((blur < th["blurry"]["value"])
                   & ((th["blurry"]["how"] == "given") | (blur < BLUR_RELATIVE * np.maximum(contrast, 1e-3) ** 2)),
                   blur, False),
    }
    for kind in kinds:
        mask, score, desc = tests[kind]
        idx = np.nonzero(np.nan_to_num(mask, nan=0).astype(bool))[0]
        idx = idx[np.argsort(-score[idx] if desc else score[idx], kind="stable")]
        if limit:
            idx = idx[:limit]
        items = []
        for i in idx:
            tid, rel, b, c, bl, tw, tht = rows[i]
            paths = srcs[tid]
            items.append({"thumb_id": tid, "thumb": rel, "paths": [p for p, _, _ in paths],
                          "width": paths[0][1], "height": paths[0][2],
                          "brightness": round(b, 1) if b is not None else None,
                          "contrast": round(c, 1) if c is not None else None,
                          "blur": round(bl, 1) if bl is not None else None})
        res.lists[kind] = items
    res.errors = errors(cat)
    return res


def assess_quality(thumbs: Thumbs, kinds=KINDS, thresholds: Optional[Thresholds] = None,
                   limit: Optional[int] = None) -> QualityResult:
    """``nearsort quality``: the dark, overexposed and blurry photos of THUMBS (a path or an open
    Catalog), worst first (at most ``limit`` per list; ``thresholds`` given override the library's
    percentiles), and the unreadable files; read-only."""
    with open_catalog(thumbs, write=False) as cat:
        return assess(cat, kinds, thresholds, limit)


def list_errors(thumbs: Thumbs) -> ErrorsResult:
    """``nearsort errors``: the source files of THUMBS (a path or an open Catalog) that could not
    be made into thumbnails, with the reason; read-only."""
    with open_catalog(thumbs, write=False) as cat:
        return ErrorsResult(errors(cat))


LABELS = {"dark": "Dark", "bright": "Overexposed (bright)", "blurry": "Blurry"}
SCORE = {"dark": "brightness", "bright": "brightness", "blurry": "blur"}


def format_text(res: QualityResult, show_errors: bool = True) -> str:
    lines = []
    for kind, items in res.lists.items():
        t = res.thresholds[kind]
        op = ">" if kind == "bright" else "<"
        lines.append(f"{LABELS[kind]}: {len(items)} of {res.photos} photos ({SCORE[kind]} {op} {t['value']:g}; "
                     f"{t['how']})")
        for it in items:
            more = f" (+{len(it['paths']) - 1} copies)" if len(it["paths"]) > 1 else ""
            lines.append(f"  {SCORE[kind]} {it[SCORE[kind]]:>7.1f}  {term(it['paths'][0])}{more}")
        lines.append("")
    if show_errors:
        lines.append(f"Unreadable files: {len(res.errors)}")
        for e in res.errors:
            lines.append(f"  {term(e['path'])}: {term(e['error'])}")
    return "\n".join(lines).rstrip()


def write_json(res: QualityResult, fh) -> None:
    json.dump(res.to_dict(), fh, indent=1, ensure_ascii=True)
    fh.write("\n")
