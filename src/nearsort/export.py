"""``export``: one row per source file -- the contract other tools and our benchmarks read.

Columns: source_path, thumb_path (relative to THUMBS), width, height, content_hash, phash,
capture_time, brightness, contrast, blur, status, error, rank, analyzed_rank, tags. Rows are sorted
by source path (two exports of one catalog are byte-identical); both files are valid UTF-8 and CSV
cells inert in spreadsheets, whatever the names hold: read a path back with
``textsafe.decode_path(textsafe.csv_uncell(cell))`` (JSON: ``decode_path(value)``).

Two ranks: ``analyzed_rank`` is the thumbnail's 1-based place in the chain ``refresh`` applies by
default (the last ``analyze``'s: ``queries.current_ordering``), there as soon as analyze ran;
``rank`` is the prefix its file name carries on disk, set once ``refresh`` applied an ordering
(empty before, and after a reset).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass
from typing import IO, Iterator, Optional

from nearsort.stage import Result
from nearsort.store import queries
from nearsort.store.catalog import Catalog, Thumbs, open_catalog
from nearsort.textsafe import csv_cell, encode_path

COLUMNS = [
    "source_path", "thumb_path", "width", "height", "content_hash", "phash", "capture_time",
    "brightness", "contrast", "blur", "status", "error", "rank", "analyzed_rank", "tags",
]


def _f(x):
    return None if x is None else round(float(x), 4)


def rows(cat: Catalog) -> Iterator[dict]:
    tags: dict[int, list[str]] = {}
    for tid, tag in queries.tags(cat):
        tags.setdefault(tid, []).append(tag)
    for r in queries.export_rows(cat, queries.current_ordering(cat)):
        yield {
            "source_path": os.fsdecode(bytes(r["path"])),
            "thumb_path": r["relpath"],
            "width": r["width"], "height": r["height"],
            "content_hash": r["content_hash"], "phash": r["phash"], "capture_time": r["capture_time"],
            "brightness": _f(r["brightness"]), "contrast": _f(r["contrast"]), "blur": _f(r["blur"]),
            "status": r["status"], "error": r["error"], "rank": r["rank"],
            "analyzed_rank": None if r["analyzed"] is None else r["analyzed"] + 1,
            "tags": ";".join(tags.get(r["tid"], [])) if r["tid"] is not None else "",
        }


def _text(v):
    return encode_path(v) if isinstance(v, str) else v


def write_csv(cat: Catalog, fh: IO[str]) -> int:
    w = csv.DictWriter(fh, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    n = 0
    for row in rows(cat):
        w.writerow({k: "" if v is None else csv_cell(_text(v)) for k, v in row.items()})
        n += 1
    return n


def write_json(cat: Catalog, fh: IO[str]) -> int:
    n = 0
    fh.write("[\n")
    for row in rows(cat):
        fh.write((",\n" if n else "") + json.dumps({k: _text(v) for k, v in row.items()},
                                                 ensure_ascii=True, sort_keys=True))
        n += 1
    fh.write("\n]\n")
    return n


@dataclass
class ExportResult(Result):
    """How many rows were written, and where ('-': stdout)."""

    rows: int
    csv: Optional[str] = None
    json: Optional[str] = None


@dataclass
class InfoResult(Result):
    """What the catalog holds: counts, and the last command run on it."""

    sources: int
    sources_ok: int
    errors: int
    missing: int
    originals: int
    thumbs: int
    last_command: Optional[str] = None
    last_status: Optional[str] = None


def info(thumbs: Thumbs) -> InfoResult:
    """``nearsort info``: what the catalog of THUMBS (a path or an open Catalog) holds; read-only."""
    with open_catalog(thumbs, write=False) as cat:
        last = queries.last_run(cat)
        return InfoResult(**queries.counts(cat), last_command=last[0] if last else None,
                          last_status=last[1] if last else None)


def export(thumbs: Thumbs, csv_path: str | None = None, json_path: str | None = None) -> ExportResult:
    """``nearsort export``: write one row per source file of THUMBS (a path or an open Catalog) as
    CSV and/or JSON ('-' = stdout); read-only. See the module doc for the columns."""
    n = 0
    with open_catalog(thumbs, write=False) as cat:
        for path, fn in ((csv_path, write_csv), (json_path, write_json)):
            if not path:
                continue
            if path == "-":
                n = fn(cat, sys.stdout)
            else:
                tmp = f"{path}.tmp"
                with open(tmp, "w", encoding="utf-8", newline="") as fh:
                    n = fn(cat, fh)
                os.replace(tmp, path)
    return ExportResult(n, csv_path, json_path)
