"""The vector store of one model: append-only float16 rows on disk, crash-consistent with the catalog.

Layout (``state_dir`` is ``THUMBS/.nearsort``)::

    vectors/<slug>-<sha1[:10]>/          one folder per model name (safe from any name)
        store.json                       {"format", "version", "model", "dim", "dtype": "float16", "byteorder"}
        vectors.f16                      raw rows, float16 little-endian, append-only, no header

Invariants: rows are L2-normalised before they are stored; ``append`` is durable on return
(write + fdatasync) and leaves no partial row behind; the catalog's ``embeddings`` rows are the
truth for which rows are committed: a writer opened with ``valid_rows`` truncates everything at
or past it (uncommitted or torn writes), after ``before_truncate(n)`` has run; a reader writes
nothing. The FAISS index over these rows lives in vectors/index.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from nearsort.errors import VectorStoreError
from nearsort.fsio import fsync_dir

log = logging.getLogger(__name__)

VECTORS_DIR = "vectors"
STORE_META = "store.json"
STORE_FILE = "vectors.f16"
STORE_FORMAT = "nearsort.vectors"
FORMAT_VERSION = 1

CHUNK_ROWS = 65536  # rows converted to float32 at a time (128 MiB at d=512)


def _slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")
    return (s[:48].rstrip("-._") or "model") + "-" + hashlib.sha1(name.encode("utf-8")).hexdigest()[:10]


def _sync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk: no temp file is left behind
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None


def _normalise(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.array(x, dtype=np.float32, copy=True)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def _as_matrix(x, dim: int, what: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2 or a.shape[1] != dim:
        raise ValueError(f"{what} must have shape (n, {dim}), got {np.shape(x)}")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return a


class VectorStore:
    """Append-only float16 rows of one model. See the module docstring."""

    def __init__(self, folder: Path, model_name: str, dim: int, readonly: bool):
        self.folder = folder
        self.model_name = model_name
        self._dim = int(dim)
        self.readonly = readonly
        self._rowbytes = self._dim * 2
        self._fh = None  # binary file handle on vectors.f16
        self._n = 0  # valid rows
        self._mm: np.memmap | None = None

    @staticmethod
    def folder_for(state_dir: str | os.PathLike, model_name: str) -> Path:
        return Path(state_dir) / VECTORS_DIR / _slug(model_name)

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike,
        model_name: str,
        dim: int,
        valid_rows: int | None = None,
        *,
        readonly: bool = False,
        before_truncate: Callable[[int], None] | None = None,
    ) -> "VectorStore":
        """Open (creating unless ``readonly``) the store of ``model_name`` under ``state_dir``.

        ``valid_rows``: number of rows the catalog has committed (max(row)+1). A writer truncates
        anything past it (calling ``before_truncate(valid_rows)`` first); a reader
        (``readonly=True``) just ignores it and writes nothing.
        """
        if dim <= 0:
            raise ValueError("dim must be positive")
        folder = cls.folder_for(state_dir, model_name)
        self = cls(folder, model_name, dim, readonly)
        meta_path = folder / STORE_META
        meta = _read_json(meta_path)
        if meta is None:
            if readonly:
                if valid_rows:
                    raise VectorStoreError(
                        f"the catalog has {valid_rows} vectors for model {model_name!r} but the vector "
                        f"store {folder} is missing; re-run `nearsort featurize` to recompute them"
                    )
                return self  # empty, nothing on disk: searching returns nothing
            folder.mkdir(parents=True, exist_ok=True)
            meta = {
                "format": STORE_FORMAT,
                "version": FORMAT_VERSION,
                "model": model_name,
                "dim": self._dim,
                "dtype": "float16",
                "byteorder": "little",
            }
            _atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
        self._check_meta(meta)

        path = folder / STORE_FILE
        if readonly:
            size = path.stat().st_size if path.exists() else 0
        else:
            if not path.exists():
                open(path, "ab").close()
                fsync_dir(folder)
            self._fh = open(path, "r+b", buffering=0)
            size = os.fstat(self._fh.fileno()).st_size
        on_disk = size // self._rowbytes
        n = on_disk
        if valid_rows is not None:
            if valid_rows < 0:
                raise ValueError("valid_rows must be >= 0")
            if valid_rows > on_disk:
                self.close()
                raise VectorStoreError(
                    f"the catalog references {valid_rows} vectors for model {model_name!r} but the "
                    f"vector store {path} holds only {on_disk}; the store was damaged or replaced - "
                    "re-run `nearsort featurize` for this model to recompute them"
                )
            n = valid_rows
        if not readonly and size != n * self._rowbytes:
            if before_truncate is not None:
                before_truncate(n)
            self._truncate(n, size)
        self._n = n
        return self

    def _check_meta(self, meta: dict) -> None:
        if meta.get("format") != STORE_FORMAT or meta.get("dtype") != "float16":
            raise VectorStoreError(f"{self.folder / STORE_META} is not a nearsort vector store")
        if int(meta.get("version", 0)) > FORMAT_VERSION:
            raise VectorStoreError(f"{self.folder} was written by a newer nearsort; upgrade nearsort")
        if meta.get("model") != self.model_name:
            raise VectorStoreError(
                f"{self.folder} holds vectors of model {meta.get('model')!r}, not {self.model_name!r}"
            )
        if int(meta.get("dim", -1)) != self._dim:
            raise VectorStoreError(
                f"the vector store of model {self.model_name!r} has dimension {meta.get('dim')}, "
                f"but the model gives {self._dim}; delete {self.folder} and re-run `nearsort featurize`"
            )

    def _truncate(self, n: int, size: int) -> None:
        """Drop rows >= n (orphans / torn tail)."""
        log.info(
            "vector store %s: truncating %d bytes past row %d (uncommitted or torn writes)",
            self.folder.name, size - n * self._rowbytes, n,
        )
        self._fh.truncate(n * self._rowbytes)
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._mm = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    def view(self) -> np.ndarray:
        """float16 (n, d) memmap of the valid rows (re-mapped when n changed)."""
        if self._n == 0:
            return np.empty((0, self._dim), np.float16)
        if self._mm is None or self._mm.shape[0] != self._n:
            self._mm = np.memmap(
                self.folder / STORE_FILE, dtype="<f2", mode="r", shape=(self._n, self._dim)
            )
        return self._mm

    def gather(self, rows) -> np.ndarray:
        """The stored float16 vectors of scattered ``rows`` (n, d), read from the file row by row
        (positional reads), not through the memmap: a fault there maps 64 KB around each row
        (the kernel's fault-around, whatever the madvise), so a pass over scattered rows of a large
        store (a k-NN graph) would keep the whole file resident in this process (2.6 GB at
        10^6 x 1280) for rows of 2.5 KB."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(r), self._dim), "<f2")
        if not len(r):
            return out
        if r.min() < 0 or r.max() >= self._n:
            raise IndexError(f"rows out of range [0, {self._n})")
        rb = self._rowbytes
        buf = memoryview(out).cast("B")
        with open(self.folder / STORE_FILE, "rb", buffering=0) as fh:
            fd = fh.fileno()
            for i, row in enumerate(r.tolist()):
                if os.preadv(fd, [buf[i * rb:(i + 1) * rb]], row * rb) != rb:
                    raise VectorStoreError(f"vector store {self.folder.name}: short read at row {row}")
        return out

    def rows_f32(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32, read from the file (not through the memmap: a pass over
        the whole store would leave all of it resident in this process)."""
        start, stop = max(0, start), min(stop, self._n)
        if stop <= start:
            return np.empty((0, self._dim), np.float32)
        with open(self.folder / STORE_FILE, "rb", buffering=0) as fh:
            fh.seek(start * self._rowbytes)
            raw = fh.read((stop - start) * self._rowbytes)
        if len(raw) != (stop - start) * self._rowbytes:
            raise VectorStoreError(f"vector store {self.folder.name}: short read at row {start}")
        return np.frombuffer(raw, dtype="<f2").reshape(stop - start, self._dim).astype(np.float32)

    def chunks(self, start: int, stop: int, size: int = CHUNK_ROWS) -> Iterable[tuple[int, np.ndarray]]:
        for s in range(start, stop, size):
            yield s, self.rows_f32(s, min(stop, s + size))

    def append(self, vectors) -> np.ndarray:
        """L2-normalise, store as float16 at the end, fdatasync; return the new row numbers.
        Durable on return."""
        if self.readonly:
            raise VectorStoreError("vector store opened read-only")
        x = _as_matrix(vectors, self._dim, "vectors")
        m = len(x)
        if m == 0:
            return np.empty(0, np.int64)
        f16 = _normalise(x).astype("<f2")
        start = self._n
        offset = start * self._rowbytes
        try:
            self._fh.seek(offset)
            view = memoryview(f16.tobytes())
            while view:
                w = self._fh.write(view)
                view = view[w:]
            _sync(self._fh.fileno())
        except BaseException:
            try:  # leave no partial tail behind (it would be truncated on next open anyway)
                self._fh.truncate(offset)
            except OSError:
                pass
            raise
        self._n = start + m
        return np.arange(start, start + m, dtype=np.int64)

    def get(self, rows, dtype=np.float32) -> np.ndarray:
        """The stored vectors of ``rows`` as ``dtype`` (n, d) (float32 by default: float16-rounded,
        ~unit norm; float16: the stored values, half the memory).

        Many rows are read from the file in blocks (not through the memmap, whose pages would count
        in the process' resident memory on top of the copy: 2.6 GB more at 10^6 x 1280)."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= self._n):
            raise IndexError(f"rows out of range [0, {self._n})")
        if len(r) == 0:
            return np.empty((0, self._dim), dtype)
        if len(r) < CHUNK_ROWS:
            return np.asarray(self.view()[r], dtype=dtype)
        out = np.empty((len(r), self._dim), dtype)
        order = np.argsort(r, kind="stable")
        sr = r[order]
        with open(self.folder / STORE_FILE, "rb") as f:
            for s in range(0, len(sr), CHUNK_ROWS):
                want = sr[s:s + CHUNK_ROWS]
                lo, hi = int(want[0]), int(want[-1]) + 1
                if hi - lo > 4 * len(want):  # scattered rows: positional reads (gather)
                    out[order[s:s + CHUNK_ROWS]] = self.gather(want)
                    continue
                f.seek(lo * self._rowbytes)
                blk = np.frombuffer(f.read((hi - lo) * self._rowbytes), dtype="<f2").reshape(hi - lo, self._dim)
                out[order[s:s + CHUNK_ROWS]] = blk[want - lo]
        return out

    def crc(self, start: int, stop: int) -> int:
        """CRC32 of the stored bytes of rows [start, stop) (read from the file, any row count)."""
        if stop <= start:
            return 0
        with open(self.folder / STORE_FILE, "rb") as f:
            f.seek(start * self._rowbytes)
            return zlib.crc32(f.read((stop - start) * self._rowbytes))

    def fingerprint(self, ntotal: int, rows: int = 8) -> dict:
        """CRC32 of the first and last ``rows`` rows of [0, ntotal): what an index over them covers."""
        return {
            "head_crc": self.crc(0, min(ntotal, rows)),
            "tail_crc": self.crc(max(0, ntotal - rows), ntotal),
        }

    def disk_rows(self) -> int:
        """Whole rows in the file (committed or not)."""
        try:
            return (self.folder / STORE_FILE).stat().st_size // self._rowbytes
        except FileNotFoundError:
            return 0
