"""``export``: one row per source file -- the contract other tools and our benchmarks read.

Columns: source_path, thumb_path (relative to THUMBS), width, height, content_hash, phash,
capture_time, brightness, contrast, blur, status, error, rank, tags. Rows are sorted by source path
(two exports of one catalog are byte-identical); both files are valid UTF-8 and CSV cells inert
in spreadsheets, whatever the names hold: read a path back with
``textsafe.decode_path(textsafe.csv_uncell(cell))`` (JSON: ``decode_path(value)``).
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import IO, Iterator

from nearsort.store import queries
from nearsort.store.catalog import Catalog
from nearsort.textsafe import csv_cell, encode_path

COLUMNS = [
    "source_path", "thumb_path", "width", "height", "content_hash", "phash", "capture_time",
    "brightness", "contrast", "blur", "status", "error", "rank", "tags",
]


def _f(x):
    return None if x is None else round(float(x), 4)


def rows(cat: Catalog) -> Iterator[dict]:
    tags: dict[int, list[str]] = {}
    for tid, tag in queries.tags(cat):
        tags.setdefault(tid, []).append(tag)
    for r in queries.export_rows(cat):
        yield {
            "source_path": os.fsdecode(bytes(r["path"])),
            "thumb_path": r["relpath"],
            "width": r["width"], "height": r["height"],
            "content_hash": r["content_hash"], "phash": r["phash"], "capture_time": r["capture_time"],
            "brightness": _f(r["brightness"]), "contrast": _f(r["contrast"]), "blur": _f(r["blur"]),
            "status": r["status"], "error": r["error"], "rank": r["rank"],
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


def export(root, csv_path: str | None = None, json_path: str | None = None) -> int:
    """Write the export to files ('-' = stdout). Returns the number of rows."""
    n = 0
    with Catalog.open(root, write=False) as cat:
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
    return n
