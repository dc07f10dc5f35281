"""What each row of a vector store embeds, kept beside the store, so that a rebuilt catalog gets
every vector back (nothing is embedded again).

``rows.bin``: one fixed-size record per vector row (:func:`row_dtype`): the thumbnail's name, the
sha256 of one of its originals (zeros: none) and its top ``ROW_LABELS`` labels (-1: none); written
by featurize. ``model.json``: the model's catalog row ``{"format", "version", "name", "dim",
"info"}``. :func:`saved_stores` reads them back; the catalog re-attaches them
(``store.sync.reattach_vectors``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

ROWS_FILE = "rows.bin"  # beside the model's vectors.f16 (store.py): one record per vector row
CARD_FILE = "model.json"
CARD_FORMAT = "nearsort.model"
NAME_BYTES = 64
ROW_LABELS = 5


def row_dtype() -> np.dtype:
    return np.dtype([("name", f"S{NAME_BYTES}"), ("original", "u1", (32,)), ("label", "<i4", (ROW_LABELS,)),
                     ("prob", "<f4", (ROW_LABELS,))])


@dataclass
class SavedStore:
    """One vector store on disk: its model card and the records of its rows (a read-only memmap)."""

    folder: Path
    card: dict
    records: np.ndarray


def saved_stores(state_dir: os.PathLike | str) -> Iterator[SavedStore]:
    """Every vector store below ``state_dir``/vectors whose model.json, store.json and rows.bin
    agree; its records cover the rows both the vectors and rows.bin hold. Stores made before
    rows.bin, or damaged, are skipped (featurize embeds those thumbnails again)."""
    from nearsort.vectors.store import STORE_FILE, STORE_META, VECTORS_DIR, _read_json

    base = Path(state_dir) / VECTORS_DIR
    dtype = row_dtype()
    for folder in sorted(base.iterdir() if base.is_dir() else []):
        try:
            card, store = _read_json(folder / CARD_FILE), _read_json(folder / STORE_META)
            n_vec = (folder / STORE_FILE).stat().st_size // (2 * int(card["dim"]))
            n = min(n_vec, (folder / ROWS_FILE).stat().st_size // dtype.itemsize)
        except (OSError, ValueError, TypeError, KeyError):
            continue
        if (card.get("format") != CARD_FORMAT or not store or store.get("model") != card.get("name")
                or int(store.get("dim", -1)) != int(card["dim"])):
            continue
        recs = np.memmap(folder / ROWS_FILE, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        yield SavedStore(folder, card, recs)
