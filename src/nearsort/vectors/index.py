"""Vector store + FAISS index, one per model, crash-consistent with the catalog.

The float16 store (append-only; ``append`` is durable on return) is the truth for vectors, the
catalog's ``embeddings`` rows for which rows are committed: rows past ``valid_rows`` are truncated
on open. The FAISS index is a cache, always rebuildable from the store, made current only by an
atomic replace of ``index.json``. Layout, write protocol, index choice, memory: docs/design.md,
"vectors"; figures: docs/benchmarks.md (bench/search.py).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from nearsort.errors import VectorStoreError
from nearsort.fsio import fsync_dir

log = logging.getLogger(__name__)

VECTORS_DIR = "vectors"
STORE_META = "store.json"
STORE_FILE = "vectors.f16"
INDEX_META = "index.json"
STORE_FORMAT = "nearsort.vectors"
INDEX_FORMAT = "nearsort.vectors.index"
FORMAT_VERSION = 1
KINDS = ("auto", "flat", "ivf", "hnsw")

_CHUNK_ROWS = 65536  # rows converted to float32 at a time (128 MiB at d=512)
_CRC_ROWS = 8  # rows hashed at each end of the range an index covers
IVF_MIN_ROWS = 1000  # below this an IVF request gets a flat index


@dataclass(frozen=True)
class IndexPolicy:
    """How the FAISS index is chosen and tuned. Defaults measured by bench/search.py."""

    kind: str = "auto"  # auto | flat | ivf | hnsw
    flat_max: int = 50_000  # auto: exact IndexFlatIP below this many vectors, IVF at/above
    nprobe: int = 64  # IVF lists visited per query (capped at nlist)
    knn_nprobe: int = 16  # IVF lists visited per row when building the k-NN graph
    refine: int = 2  # IVF: re-score refine*k candidates exactly from the float16 store
    ivf_train_per_list: int = 40  # training points per list (faiss wants >= 39)
    ivf_niter: int = 10  # k-means iterations
    rebuild_growth: float = 4.0  # retrain IVF on save() when n > rebuild_growth * trained rows
    hnsw_m: int = 32
    hnsw_ef_construction: int = 64
    hnsw_ef_search: int = 64

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"index kind must be one of {KINDS}, not {self.kind!r}")

    def kind_for(self, n: int) -> str:
        """The index kind for n vectors (an IVF index needs IVF_MIN_ROWS to train on)."""
        kind = self.kind
        if kind == "auto":
            kind = "flat" if n < self.flat_max else "ivf"
        if kind == "ivf" and n < IVF_MIN_ROWS:
            kind = "flat"
        return kind

    @staticmethod
    def nlist_for(n: int) -> int:
        """Power of two nearest 4*sqrt(n), but at most n/39 (enough k-means points per list)."""
        ideal = 4.0 * np.sqrt(max(n, 1))
        nlist = 1 << int(round(np.log2(ideal)))
        cap = max(1, n // 39)
        while nlist > cap:
            nlist >>= 1
        return max(1, nlist)


# --------------------------------------------------------------------------- small helpers


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


def _pad(m: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)


def _clean(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS results -> float32/int64 with the padding convention (row -1, score -inf)."""
    D = np.ascontiguousarray(D, dtype=np.float32)
    I = np.ascontiguousarray(I, dtype=np.int64)
    D[I < 0] = -np.inf
    return D, I


def _drop_self(D: np.ndarray, I: np.ndarray, self_rows: np.ndarray, k: int):
    """Remove each query's own row (wherever it appears) and keep the best k of the rest."""
    is_self = I == self_rows[:, None]
    I = np.where(is_self, -1, I)
    D = np.where(is_self, np.float32(-np.inf), D)
    order = np.argsort(I < 0, axis=1, kind="stable")  # real neighbours first, order preserved
    I = np.take_along_axis(I, order, axis=1)[:, :k]
    D = np.take_along_axis(D, order, axis=1)[:, :k]
    if I.shape[1] < k:
        pd, pi = _pad(len(I), k - I.shape[1])
        D, I = np.hstack([D, pd]), np.hstack([I, pi])
    return np.ascontiguousarray(D), np.ascontiguousarray(I)


# --------------------------------------------------------------------------- dense math in numpy
# The OpenBLAS bundled with faiss-cpu wheels is old and ~4x slower than numpy's on recent CPUs
# (measured: 22 vs 85 GFLOP/s per core for 512-d inner products), so the heavy dense parts --
# k-means, coarse assignment, exact search -- are numpy matmuls; FAISS does the rest.

_QBLOCK = 2048  # query rows per matmul block
_DBLOCK = 16384  # database rows per matmul block (QBLOCK x DBLOCK float32 = 128 MiB)


def _topk_rows(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns of each row of S, best first: (scores, column indices)."""
    k = min(k, S.shape[1])
    if k < S.shape[1]:
        idx = np.argpartition(S, S.shape[1] - k, axis=1)[:, S.shape[1] - k :]
    else:
        idx = np.broadcast_to(np.arange(S.shape[1]), S.shape)
    sc = np.take_along_axis(S, idx, axis=1)
    order = np.argsort(-sc, axis=1, kind="stable")
    return np.take_along_axis(sc, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _assign(x: np.ndarray, C: np.ndarray, p: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The p most similar centroids of each row: (scores (n,p) float32, lists (n,p) int64)."""
    n = len(x)
    D = np.empty((n, p), np.float32)
    I = np.empty((n, p), np.int64)
    for s in range(0, n, _QBLOCK * 2):
        S = x[s : s + _QBLOCK * 2] @ C.T
        if p == 1:
            a = S.argmax(axis=1)
            D[s : s + len(S), 0] = S[np.arange(len(S)), a]
            I[s : s + len(S), 0] = a
        else:
            D[s : s + len(S)], I[s : s + len(S)] = _topk_rows(S, p)
    return D, I


def _spherical_kmeans(x: np.ndarray, k: int, niter: int, seed: int = 0) -> np.ndarray:
    """Unit-norm centroids maximising inner product (k-means on the sphere)."""
    rng = np.random.default_rng(seed)
    n = len(x)
    C = x[rng.choice(n, k, replace=False)].copy()
    for _ in range(niter):
        a = _assign(x, C)[1][:, 0]
        counts = np.bincount(a, minlength=k)
        order = np.argsort(a, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        full = counts > 0
        sums = np.add.reduceat(x[order], starts[full], axis=0)
        C[full] = sums
        empty = np.flatnonzero(~full)
        if len(empty):  # re-seed empty clusters on random points
            C[empty] = x[rng.choice(n, len(empty), replace=False)]
        C = _normalise(C)
    return C


# --------------------------------------------------------------------------- GPU (guarded)

_gpu_res = None


def _gpu_available() -> bool:
    try:
        return faiss.get_num_gpus() > 0 and hasattr(faiss, "StandardGpuResources")
    except Exception:  # pragma: no cover
        return False


def _to_gpu(index):  # pragma: no cover - needs faiss-gpu and a GPU
    global _gpu_res
    try:
        if _gpu_res is None:
            _gpu_res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = True
        return faiss.index_cpu_to_gpu(_gpu_res, 0, index, co)
    except Exception as e:
        log.info("GPU clone failed, searching on CPU: %s", e)
        return None


# --------------------------------------------------------------------------- the class


class VectorIndex:
    """Append-only float16 vector store + FAISS index for one model. See docs/design.md, "vectors"."""

    def __init__(self, folder: Path, model_name: str, dim: int, policy: IndexPolicy, readonly: bool):
        self.folder = folder
        self.model_name = model_name
        self._dim = int(dim)
        self.policy = policy
        self.readonly = readonly
        self._rowbytes = self._dim * 2
        self._fh = None  # binary file handle on vectors.f16
        self._n = 0  # valid rows
        self._mm: np.memmap | None = None
        self._index = None  # CPU faiss index (master), loaded lazily
        self._meta: dict | None = None  # metadata of the loaded/built index
        self._dirty = False  # in-memory index differs from the saved one
        self._gpu = None  # GPU clone of _index, or None
        self._gpu_tried = False
        self._keep: dict = {}  # SWIG sub-objects (IVF quantizer) kept alive with the index

    # ------------------------------------------------------------------ opening

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
        policy: IndexPolicy | None = None,
        readonly: bool = False,
    ) -> "VectorIndex":
        """Open (creating unless ``readonly``) the store of ``model_name`` under ``state_dir``.

        ``valid_rows``: number of rows the catalog has committed (max(row)+1). A writer truncates
        anything past it; a reader (``readonly=True``) just ignores it and writes nothing.
        """
        if dim <= 0:
            raise ValueError("dim must be positive")
        folder = cls.folder_for(state_dir, model_name)
        self = cls(folder, model_name, dim, policy or IndexPolicy(), readonly)
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
        self._check_store_meta(meta)

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
            self._truncate(n, size)
        self._n = n
        return self

    def _check_store_meta(self, meta: dict) -> None:
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
        """Drop rows >= n (orphans / torn tail). Invalidate an index that covers them first."""
        imeta = _read_json(self.folder / INDEX_META)
        if imeta is not None and int(imeta.get("ntotal", 0)) > n:
            (self.folder / INDEX_META).unlink()
            fsync_dir(self.folder)
        log.info(
            "vector store %s: truncating %d bytes past row %d (uncommitted or torn writes)",
            self.folder.name, size - n * self._rowbytes, n,
        )
        self._fh.truncate(n * self._rowbytes)
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._mm = None
        self._gpu = None
        self._index = None
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "VectorIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the store

    def __len__(self) -> int:
        return self._n

    @property
    def dim(self) -> int:
        return self._dim

    def _view(self) -> np.ndarray:
        """float16 (n, d) memmap of the valid rows (re-mapped when n changed)."""
        if self._n == 0:
            return np.empty((0, self._dim), np.float16)
        if self._mm is None or self._mm.shape[0] != self._n:
            self._mm = np.memmap(
                self.folder / STORE_FILE, dtype="<f2", mode="r", shape=(self._n, self._dim)
            )
        return self._mm

    def _rows_f32(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._view()[start:stop], dtype=np.float32)

    def _chunks(self, start: int, stop: int, size: int = _CHUNK_ROWS) -> Iterable[tuple[int, np.ndarray]]:
        for s in range(start, stop, size):
            yield s, self._rows_f32(s, min(stop, s + size))

    def append(self, vectors) -> np.ndarray:
        """L2-normalise, store as float16 at the end, fdatasync; return the new row numbers.

        Durable on return. Also added to the in-memory index if that is loaded (not saved:
        call ``save()`` after committing the rows in the catalog).
        """
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
        if self._index is not None:
            self._add(self._index, f16.astype(np.float32), start)
        return np.arange(start, start + m, dtype=np.int64)

    def get(self, rows) -> np.ndarray:
        """The stored vectors of ``rows`` as float32 (n, d) (float16-rounded, ~unit norm)."""
        r = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= self._n):
            raise IndexError(f"rows out of range [0, {self._n})")
        if len(r) == 0:
            return np.empty((0, self._dim), np.float32)
        return np.asarray(self._view()[r], dtype=np.float32)

    def _crc(self, start: int, stop: int) -> int:
        """CRC32 of the stored bytes of rows [start, stop) (read from the file, any row count)."""
        if stop <= start:
            return 0
        with open(self.folder / STORE_FILE, "rb") as f:
            f.seek(start * self._rowbytes)
            return zlib.crc32(f.read((stop - start) * self._rowbytes))

    def _fingerprint(self, ntotal: int) -> dict:
        return {
            "head_crc": self._crc(0, min(ntotal, _CRC_ROWS)),
            "tail_crc": self._crc(max(0, ntotal - _CRC_ROWS), ntotal),
        }

    # ------------------------------------------------------------------ building the index

    def _new_index(self, kind: str, n: int, params: dict):
        d = self._dim
        if kind == "flat":
            return faiss.IndexFlatIP(d), {}
        if kind == "hnsw":
            p = self.policy
            idx = faiss.IndexHNSWFlat(d, p.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            idx.hnsw.efConstruction = p.hnsw_ef_construction
            idx.hnsw.efSearch = p.hnsw_ef_search
            params.update(M=p.hnsw_m, efConstruction=p.hnsw_ef_construction, efSearch=p.hnsw_ef_search)
            return idx, {}
        if kind == "ivf":
            nlist = IndexPolicy.nlist_for(n)
            quantizer = faiss.IndexFlatIP(d)
            idx = faiss.IndexIVFScalarQuantizer(
                quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
            )
            idx.cp.niter = self.policy.ivf_niter
            idx.cp.spherical = True
            idx.nprobe = min(self.policy.nprobe, nlist)
            params.update(
                nlist=nlist, nprobe=int(idx.nprobe), encoding="SQ8", refine=self.policy.refine,
                niter=self.policy.ivf_niter,
            )
            return idx, {"quantizer": quantizer}
        raise ValueError(kind)

    def _train(self, idx, n: int, params: dict) -> None:
        """Spherical k-means for the coarse quantizer, then the SQ8 ranges on residuals."""
        if idx.is_trained:
            return
        nlist = int(params["nlist"])
        ntrain = min(n, self.policy.ivf_train_per_list * nlist)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, ntrain, replace=False)) if ntrain < n else np.arange(n)
        xt = np.asarray(self._view()[sample], dtype=np.float32)
        params["train_rows"] = int(ntrain)
        if _gpu_available():  # pragma: no cover
            try:
                gpu_km = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(self._dim))
                idx.clustering_index = gpu_km
                idx.train(xt)
                idx.clustering_index = None
                return
            except Exception as e:
                log.info("GPU k-means failed, using the CPU: %s", e)
        C = _spherical_kmeans(xt, nlist, self.policy.ivf_niter)
        idx.quantizer.add(C)
        xs = xt[:65536]
        a = _assign(xs, C)[1][:, 0]
        r = np.ascontiguousarray(xs - C[a])  # by_residual encoding
        idx.sq.train(r)
        idx.is_trained = True

    def _add(self, idx, x: np.ndarray, start: int) -> None:
        assert idx.ntotal == start, (idx.ntotal, start)
        ivf = isinstance(idx, faiss.IndexIVF)
        for s in range(0, len(x), _CHUNK_ROWS):
            xc = np.ascontiguousarray(x[s : s + _CHUNK_ROWS], dtype=np.float32)
            if ivf:  # coarse assignment by numpy BLAS, then FAISS encodes and files them
                a = np.ascontiguousarray(_assign(xc, self._centroids(idx))[1][:, 0])
                idx.add_core(len(xc), faiss.swig_ptr(xc), None, faiss.swig_ptr(a))
            else:
                idx.add(xc)
        self._dirty = True
        self._gpu = None
        self._gpu_tried = False

    def _centroids(self, idx) -> np.ndarray:
        """IVF coarse centroids (nlist, d), cached per index object."""
        c = self._keep.get("centroids")
        if c is None or self._keep.get("centroids_of") is not idx:
            q = faiss.extract_index_ivf(idx).quantizer
            c = faiss.rev_swig_ptr(faiss.downcast_index(q).get_xb(), q.ntotal * self._dim)
            c = np.array(c, dtype=np.float32).reshape(q.ntotal, self._dim)
            self._keep["centroids"], self._keep["centroids_of"] = c, idx
        return c

    def _build(self, reason: str) -> None:
        n = self._n
        kind = self.policy.kind_for(n)
        t0 = time.perf_counter()
        params: dict = {}
        idx, keep = self._new_index(kind, n, params)
        if kind == "ivf":
            self._train(idx, n, params)
        self._index = idx
        self._keep = dict(keep)  # keep SWIG sub-objects alive
        for s, x in self._chunks(0, n):
            self._add(idx, x, s)
        secs = time.perf_counter() - t0
        log.info("built %s index for %s over %d vectors in %.1fs (%s)", kind, self.model_name, n, secs, reason)
        self._meta = {"kind": kind, "params": params, "built_rows": n, "build_seconds": round(secs, 3)}
        self._dirty = True
        self._gpu = None
        self._gpu_tried = False

    def _load_saved(self) -> bool:
        """Load the saved index if it matches the store; True if loaded."""
        meta = _read_json(self.folder / INDEX_META)
        if not meta or meta.get("format") != INDEX_FORMAT:
            return False
        ntotal = int(meta.get("ntotal", -1))
        on_disk = self._disk_rows()
        problem = None
        if int(meta.get("dim", -1)) != self._dim:
            problem = "dimension differs"
        elif ntotal < 0 or ntotal > on_disk:
            problem = f"covers {ntotal} rows, store has {on_disk}"
        elif meta.get("kind") not in ("flat", "ivf", "hnsw"):
            problem = f"unknown kind {meta.get('kind')!r}"
        elif self._fingerprint(ntotal) != {k: meta.get(k) for k in ("head_crc", "tail_crc")}:
            problem = "does not match the stored vectors"
        if problem is None:
            try:
                idx = faiss.read_index(str(self.folder / meta["file"]))
            except Exception as e:
                problem = f"unreadable ({e})"
            else:
                if idx.ntotal != ntotal or idx.d != self._dim:
                    problem = f"file has {idx.ntotal} vectors of dim {idx.d}"
        if problem is not None:
            log.warning("index of %s %s; rebuilding from the vector store", self.model_name, problem)
            return False
        self._index = idx
        self._meta = {k: meta[k] for k in ("kind", "params", "built_rows", "build_seconds") if k in meta}
        self._dirty = False
        params = self._meta.setdefault("params", {})
        if meta["kind"] == "ivf":  # search-time knobs follow the current policy
            ivf = faiss.extract_index_ivf(idx)
            ivf.nprobe = params["nprobe"] = int(min(self.policy.nprobe, ivf.nlist))
        elif meta["kind"] == "hnsw":
            idx.hnsw.efSearch = params["efSearch"] = int(self.policy.hnsw_ef_search)
        return True

    def _disk_rows(self) -> int:
        try:
            return (self.folder / STORE_FILE).stat().st_size // self._rowbytes
        except FileNotFoundError:
            return 0

    def _ensure_index(self):
        """Load (or build) the index and catch it up with the store. Returns the CPU index."""
        if self._index is None:
            if not self._load_saved():
                self._build("no usable saved index")
        ntotal = self._index.ntotal
        if ntotal < self._n:
            log.info("index of %s behind the store by %d rows; adding them", self.model_name, self._n - ntotal)
            for s, x in self._chunks(ntotal, self._n):
                self._add(self._index, x, s)
        return self._index

    def _wants_rebuild(self, meta: dict | None = None) -> str | None:
        meta = (self._meta if meta is None else meta) or {}
        want = self.policy.kind_for(self._n)
        if meta.get("kind") != want:
            return f"kind {meta.get('kind')} -> {want}"
        if want == "ivf" and self._n > self.policy.rebuild_growth * max(1, int(meta.get("built_rows", 0))):
            return f"grew from {meta.get('built_rows')} to {self._n} rows"
        return None

    def rebuild(self) -> None:
        """Rebuild the index from the store now (not saved until ``save()``)."""
        self._index = None
        self._build("requested")

    def save(self) -> dict:
        """Persist the index covering all rows (atomic). Rebuilds it first if the policy says so
        (kind change, IVF outgrown). Cheap no-op when the saved index is already current.
        Returns ``params()``."""
        if self.readonly:
            raise VectorStoreError("vector store opened read-only")
        if self._index is None and self._saved_is_current():
            return self.params()
        self._ensure_index()
        why = self._wants_rebuild()
        if why:
            self._index = None
            self._build(why)
        if not self._dirty and self._saved_is_current():
            return self.params()
        idx = self._index
        token = secrets.token_hex(6)
        fname = f"index-{token}.faiss"
        tmp = self.folder / (fname + ".tmp")
        try:
            faiss.write_index(idx, str(tmp))
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / fname)
        except BaseException as e:  # a full disk: no partial index file is left behind
            _unlink_quietly(tmp)
            if isinstance(e, RuntimeError) and "No space left on device" in str(e):  # how faiss says it
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp)) from e
            raise
        meta = {
            "format": INDEX_FORMAT,
            "version": FORMAT_VERSION,
            "file": fname,
            "model": self.model_name,
            "dim": self._dim,
            "metric": "inner_product",
            "ntotal": int(idx.ntotal),
            **self._meta,
            **self._fingerprint(int(idx.ntotal)),
            "faiss_version": faiss.__version__,
            "saved_at": time.time(),
        }
        _atomic_write_text(self.folder / INDEX_META, json.dumps(meta, indent=1) + "\n")
        for p in self.folder.glob("index-*"):  # older index files and leftovers of crashed saves
            if p.name != fname:
                try:
                    p.unlink()
                except OSError:
                    pass
        self._dirty = False
        return self.params()

    def _saved_is_current(self) -> bool:
        meta = _read_json(self.folder / INDEX_META)
        if not meta or int(meta.get("ntotal", -1)) != self._n or int(meta.get("dim", -1)) != self._dim:
            return False
        if not (self.folder / str(meta.get("file"))).exists():
            return False
        if self._fingerprint(self._n) != {k: meta.get(k) for k in ("head_crc", "tail_crc")}:
            return False
        return self._wants_rebuild(meta) is None

    def params(self) -> dict:
        """Index kind, parameters and coverage, JSON-serialisable (for ``models.info``)."""
        meta = self._meta
        if meta is None:
            meta = _read_json(self.folder / INDEX_META) or {}
        kind = meta.get("kind") or self.policy.kind_for(self._n)
        return {
            "kind": kind,
            "metric": "inner_product",
            "dim": self._dim,
            "rows": self._n,
            "ntotal": int(self._index.ntotal) if self._index is not None else meta.get("ntotal", 0),
            "params": dict(meta.get("params", {})),
            "built_rows": meta.get("built_rows"),
            "build_seconds": meta.get("build_seconds"),
            "store": f"{VECTORS_DIR}/{self.folder.name}",
            "store_dtype": "float16",
            "policy": asdict(self.policy),
            "faiss_version": faiss.__version__,
        }

    # ------------------------------------------------------------------ searching

    def _searcher(self):
        idx = self._ensure_index()
        if self._gpu is None and not self._gpu_tried:
            self._gpu_tried = True
            kind = (self._meta or {}).get("kind")
            if kind in ("flat", "ivf") and _gpu_available():  # pragma: no cover
                self._gpu = _to_gpu(idx)
        return idx

    def _raw_search(self, q: np.ndarray, kk: int, nprobe: int | None, ef: int | None):
        """Search the FAISS index; results restricted to rows < n. Returns (D, I) cleaned."""
        idx = self._searcher()
        kind = self._meta["kind"]
        kk = max(1, min(kk, idx.ntotal))
        sel = faiss.IDSelectorRange(0, self._n) if idx.ntotal > self._n else None
        if self._gpu is not None and sel is None and nprobe is None:  # pragma: no cover
            try:
                return _clean(*self._gpu.search(q, kk))
            except Exception as e:
                log.info("GPU search failed, using CPU: %s", e)
                self._gpu = None
        if kind == "ivf":
            ivf = faiss.extract_index_ivf(idx)
            npb = int(min(nprobe or ivf.nprobe, ivf.nlist))
            if sel is None and len(q) >= 16:  # batch: coarse assignment by numpy BLAS
                Dq, Iq = _assign(q, self._centroids(idx), npb)
                saved, ivf.nprobe = ivf.nprobe, npb  # search_preassigned takes no params
                try:
                    return _clean(*ivf.search_preassigned(q, kk, Iq, Dq))
                finally:
                    ivf.nprobe = saved
            params = faiss.SearchParametersIVF(nprobe=npb)
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=int(max(ef or idx.hnsw.efSearch, kk)))
        else:
            params = faiss.SearchParameters() if sel is not None else None
        if sel is not None:
            params.sel = sel
        D, I = idx.search(q, kk, params=params) if params is not None else idx.search(q, kk)
        return _clean(D, I)

    def _rerank(self, q: np.ndarray, I: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate rows I (m, kk) against q from the float16 store; best k."""
        m, kk = I.shape
        S = np.full((m, kk), -np.inf, np.float32)
        view = self._view()
        step = 256
        for s in range(0, m, step):
            Ib = I[s : s + step]
            valid = Ib >= 0
            if not valid.any():
                continue
            uniq, inv = np.unique(Ib[valid], return_inverse=True)
            V = np.asarray(view[uniq], dtype=np.float32)
            qi = np.broadcast_to(np.arange(len(Ib))[:, None], Ib.shape)[valid]
            Sb = S[s : s + step]
            Sb[valid] = np.einsum("ij,ij->i", q[s : s + step][qi], V[inv])
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        S = np.take_along_axis(S, order, axis=1)
        I = np.take_along_axis(I, order, axis=1)
        I[~np.isfinite(S)] = -1
        return np.ascontiguousarray(S), np.ascontiguousarray(I)

    def _search_block(self, q, k, nprobe, ef, refine) -> tuple[np.ndarray, np.ndarray]:
        kind = self._meta["kind"]
        if kind == "ivf":
            r = self.policy.refine if refine is None else refine
            if r and r > 0:
                _, I = self._raw_search(q, max(k, int(round(k * r))), nprobe, ef)
                return self._rerank(q, I, k)
        return self._raw_search(q, k, nprobe, ef)

    def search(
        self,
        queries,
        k: int,
        *,
        nprobe: int | None = None,
        ef: int | None = None,
        refine: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by cosine for each query: (scores float32 (m,k), rows int64 (m,k)).

        Best first; padded with row -1 / score -inf when fewer than k exist. Queries are
        L2-normalised. ``nprobe`` (IVF), ``ef`` (HNSW), ``refine`` (IVF re-ranking factor, 0 = off)
        override the saved parameters for this call.
        """
        q = _normalise(_as_matrix(queries, self._dim, "queries"))
        m = len(q)
        if k <= 0:
            return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
        D, I = _pad(m, k)
        if self._n == 0 or m == 0:
            return D, I
        self._ensure_index()
        kk = min(k, self._n)
        step = 1024
        for s in range(0, m, step):
            d, i = self._search_block(q[s : s + step], kk, nprobe, ef, refine)
            D[s : s + step, : d.shape[1]] = d
            I[s : s + step, : i.shape[1]] = i
        return D, I

    def _knn_by_lists(self, idx, kq: int, nprobe: int | None, progress) -> tuple[np.ndarray, np.ndarray]:
        """Approximate k-NN graph through the IVF partition, list-major with dense BLAS blocks.

        Same candidates as one IVF search per row with ``nprobe`` lists (each row's nearest
        centroids), but instead of scanning SQ8 codes row by row, for each list the rows that
        probe it are scored exactly against its members in one float32 matmul, and merged into
        running top-k. Rows are processed in waves (float16 copy of the wave's rows in RAM)."""
        n = self._n
        ivf = faiss.extract_index_ivf(idx)
        nlist = int(ivf.nlist)
        C = self._centroids(idx)
        P = int(min(nlist, nprobe or self.policy.knn_nprobe))
        invl = ivf.invlists
        members = []
        for l in range(nlist):
            sz = invl.list_size(l)
            if sz == 0:
                members.append(np.empty(0, np.int64))
                continue
            ptr = invl.get_ids(l)
            ids = np.array(faiss.rev_swig_ptr(ptr, sz), dtype=np.int64)
            invl.release_ids(l, ptr)
            members.append(np.sort(ids[ids < n]))
        D, I = _pad(n, kq)
        view = self._view()
        wave = min(n, 262144)
        for s in range(0, n, wave):
            e = min(n, s + wave)
            m = e - s
            Xq16 = np.array(view[s:e])  # float16 copy of the wave's rows
            L = np.empty((m, P), np.int64)
            for c in range(0, m, _DBLOCK):
                L[c : c + _DBLOCK] = _assign(np.asarray(Xq16[c : c + _DBLOCK], np.float32), C, P)[1]
            flat = L.ravel()
            order = np.argsort(flat, kind="stable")
            bounds = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=nlist))])
            bd, bi = _pad(m, kq)
            for j in range(nlist):
                mem = members[j]
                if bounds[j] == bounds[j + 1] or len(mem) == 0:
                    continue
                qs = order[bounds[j] : bounds[j + 1]] // P  # wave rows probing list j (each once)
                Xm = np.asarray(view[mem], dtype=np.float32)
                sc, ix = _topk_rows(np.asarray(Xq16[qs], np.float32) @ Xm.T, kq)
                cs = np.hstack([bd[qs], sc])
                ci = np.hstack([bi[qs], mem[ix]])
                top = np.argsort(-cs, axis=1, kind="stable")[:, :kq]
                bd[qs] = np.take_along_axis(cs, top, axis=1)
                bi[qs] = np.take_along_axis(ci, top, axis=1)
                if progress is not None and j % 256 == 255:
                    progress(s + m * (j + 1) // nlist, n)
            D[s:e], I[s:e] = bd, bi
            if progress is not None:
                progress(e, n)
        return D, I

    def exact_search(self, queries, k: int, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k over the float16 store (chunked; no index needed). ``limit``: only
        rows < limit. Same conventions as ``search``."""
        q = _normalise(_as_matrix(queries, self._dim, "queries"))
        n = self._n if limit is None else min(limit, self._n)
        return self._exact(q, k, n)

    def _exact(self, q: np.ndarray, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(q)
        D, I = _pad(m, k)
        if n == 0 or m == 0 or k <= 0:
            return D, I
        kk = min(k, n)
        bd, bi = _pad(m, kk)  # running best
        for s, x in self._chunks(0, n, _DBLOCK):
            for qs in range(0, m, _QBLOCK):
                qe = min(m, qs + _QBLOCK)
                sc, ix = _topk_rows(q[qs:qe] @ x.T, kk)
                cs = np.hstack([bd[qs:qe], sc])
                ci = np.hstack([bi[qs:qe], ix + s])
                order = np.argsort(-cs, axis=1, kind="stable")[:, :kk]
                bd[qs:qe] = np.take_along_axis(cs, order, axis=1)
                bi[qs:qe] = np.take_along_axis(ci, order, axis=1)
        D[:, :kk], I[:, :kk] = _clean(bd, bi)
        return D, I

    def knn(
        self,
        k: int,
        *,
        exclude_self: bool = True,
        exact: bool | None = None,
        batch: int | None = None,
        nprobe: int | None = None,
        ef: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN graph of all stored vectors: (scores (N,k), rows (N,k)), best first, -1 padded.

        ``exact=None``: exact when the size rule picks a flat index (N < policy.flat_max), else
        through the ANN index. Exact = blocked brute force over the float16 store (numpy BLAS),
        O(N^2 d): ~10 s at 20 k, ~1 min at 50 k on 2 cores; memory-bounded at any N.
        ``nprobe``: IVF lists per row (default policy.knn_nprobe); ``ef``: HNSW efSearch.
        Computed ``batch`` rows at a time (IVF: in waves); ``progress(done, N)`` as it goes.
        """
        n = self._n
        D, I = _pad(n, k)
        if n == 0 or k <= 0:
            return D, I
        if exact is None:
            exact = n < self.policy.flat_max or self.policy.kind_for(n) == "flat"
        kq = min(k + (1 if exclude_self else 0), n)
        if not exact:
            idx = self._ensure_index()
            if isinstance(idx, faiss.IndexIVF):
                d, i = self._knn_by_lists(idx, kq, nprobe, progress)
                if exclude_self:
                    d, i = _drop_self(d, i, np.arange(n, dtype=np.int64), k)
                w = min(k, d.shape[1])
                D[:, :w], I[:, :w] = d[:, :w], i[:, :w]
                return D, I
        if batch is None:
            batch = 4096
        for s in range(0, n, batch):
            e = min(n, s + batch)
            q = self._rows_f32(s, e)
            if exact:
                d, i = self._exact(q, kq, n)
            else:
                d, i = self._search_block(q, kq, nprobe, ef, None)
            if exclude_self:
                d, i = _drop_self(d, i, np.arange(s, e, dtype=np.int64), k)
            w = min(k, d.shape[1])
            D[s:e, :w], I[s:e, :w] = d[:, :w], i[:, :w]
            if progress is not None:
                progress(e, n)
        return D, I
