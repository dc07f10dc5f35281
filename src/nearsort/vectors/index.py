"""FAISS index over a model's vector store (vectors/store.py), crash-consistent with the catalog.

The store is the truth for vectors, the catalog's ``embeddings`` rows for which rows are
committed: rows past ``valid_rows`` are truncated on open (a saved index covering them is
invalidated first). The FAISS index is a cache, always rebuildable from the store, made current
only by an atomic replace of ``index.json``. Nearest-neighbour maths (exact search, k-NN graph,
k-means, the nlist rule): vectors/knn.py. Layout, write protocol, index choice, memory:
docs/design.md, "vectors"; figures: docs/benchmarks.md (bench/search.py).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Callable

import faiss
import numpy as np

from nearsort.errors import VectorStoreError
from nearsort.fsio import fsync_dir
from nearsort.vectors import knn
from nearsort.vectors.store import (
    CHUNK_ROWS,
    FORMAT_VERSION,
    VECTORS_DIR,
    VectorStore,
    _as_matrix,
    _atomic_write_text,
    _normalise,
    _read_json,
    _unlink_quietly,
)

log = logging.getLogger(__name__)

INDEX_META = "index.json"
INDEX_FORMAT = "nearsort.vectors.index"
KINDS = ("auto", "flat", "ivf", "hnsw")

_CRC_ROWS = 8  # rows hashed at each end of the range an index covers
IVF_MIN_ROWS = 1000  # below this an IVF request gets a flat index


@dataclass(frozen=True)
class IndexPolicy:
    """How the FAISS index is chosen and tuned. Defaults measured by bench/search.py."""

    kind: str = "auto"  # auto | flat | ivf | hnsw
    flat_max: int = knn.EXACT_MAX  # auto: exact IndexFlatIP below this many vectors, IVF at/above
    nprobe: int = 64  # IVF lists visited per query (capped at nlist)
    knn_nprobe: int | None = None  # k-NN graph: lists each list is searched among (knn.graph_nprobe)
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
        """IVF lists of a search index over n vectors (knn.INDEX_LISTS * sqrt(n))."""
        return knn.nlist_for(n, knn.INDEX_LISTS)


_pad = knn.pad


def _clean(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FAISS results -> float32/int64 with the padding convention (row -1, score -inf)."""
    return knn.clean(D, np.ascontiguousarray(I, dtype=np.int64))


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
    """A model's vector store (vectors/store.py) + its FAISS index. See docs/design.md, "vectors"."""

    def __init__(self, store: VectorStore, policy: IndexPolicy):
        self.store = store
        self.folder = store.folder
        self.model_name = store.model_name
        self.readonly = store.readonly
        self._dim = store.dim
        self.policy = policy
        self._index = None  # CPU faiss index (master), loaded lazily
        self._meta: dict | None = None  # metadata of the loaded/built index
        self._dirty = False  # in-memory index differs from the saved one
        self._gpu = None  # GPU clone of _index, or None
        self._gpu_tried = False
        self._keep: dict = {}  # SWIG sub-objects (IVF quantizer) kept alive with the index

    # ------------------------------------------------------------------ opening

    folder_for = staticmethod(VectorStore.folder_for)

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
        anything past it (a saved index covering such rows is invalidated first); a reader
        (``readonly=True``) just ignores it and writes nothing.
        """
        folder = VectorStore.folder_for(state_dir, model_name)

        def invalidate_index(n: int) -> None:
            imeta = _read_json(folder / INDEX_META)
            if imeta is not None and int(imeta.get("ntotal", 0)) > n:
                (folder / INDEX_META).unlink()
                fsync_dir(folder)

        store = VectorStore.open(state_dir, model_name, dim, valid_rows, readonly=readonly,
                                 before_truncate=invalidate_index)
        return cls(store, policy or IndexPolicy())

    def close(self) -> None:
        self._gpu = None
        self._index = None
        self.store.close()

    def __enter__(self) -> "VectorIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ the store

    @property
    def _n(self) -> int:
        return len(self.store)

    def __len__(self) -> int:
        return len(self.store)

    @property
    def dim(self) -> int:
        return self._dim

    def get(self, rows, dtype=np.float32) -> np.ndarray:
        """The stored vectors of ``rows`` as ``dtype`` (n, d): float32 (float16-rounded, ~unit norm)
        or float16 (the stored values, half the memory)."""
        return self.store.get(rows, dtype)

    def append(self, vectors) -> np.ndarray:
        """L2-normalise, store as float16 at the end, fdatasync; return the new row numbers.

        Durable on return. Also added to the in-memory index if that is loaded (not saved:
        call ``save()`` after committing the rows in the catalog).
        """
        if self.readonly:
            raise VectorStoreError("vector store opened read-only")
        start = len(self.store)
        rows = self.store.append(vectors)
        if self._index is not None and len(rows):
            self._add(self._index, self.store.rows_f32(start, len(self.store)), start)
        return rows

    def _fingerprint(self, ntotal: int) -> dict:
        return self.store.fingerprint(ntotal, _CRC_ROWS)

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
        # read from the file (positional reads for a sample): no memmap pages left resident
        xt = self.store.rows_f32(0, n) if ntrain >= n else self.store.gather(sample).astype(np.float32)
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
        idx.quantizer.add(knn.spherical_kmeans(xt, nlist, niter=self.policy.ivf_niter))
        idx.train(xt)  # quantizer already trained: FAISS trains the SQ8 ranges on the residuals

    def _add(self, idx, x: np.ndarray, start: int) -> None:
        assert idx.ntotal == start, (idx.ntotal, start)
        knn.threads()
        for s in range(0, len(x), CHUNK_ROWS):
            idx.add(knn.f32(x[s : s + CHUNK_ROWS]))
        self._dirty = True
        self._gpu = None
        self._gpu_tried = False

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
        for s, x in self.store.chunks(0, n):
            self._add(idx, x, s)
        secs = time.perf_counter() - t0
        log.info("built %s index for %s over %d vectors in %.1fs (%s)", kind, self.model_name, n, secs, reason)
        self._meta = {"kind": kind, "params": params, "built_rows": n, "build_seconds": round(secs, 3)}
        self._dirty = True
        self._gpu = None
        self._gpu_tried = False

    def _read_saved(self, flags: int = 0):
        """(the saved index read with these faiss IO flags, its meta) if it matches the store, else
        (None, the problem)."""
        meta = _read_json(self.folder / INDEX_META)
        if not meta or meta.get("format") != INDEX_FORMAT:
            return None, None
        ntotal = int(meta.get("ntotal", -1))
        on_disk = self.store.disk_rows()
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
                idx = faiss.read_index(str(self.folder / meta["file"]), flags)
            except Exception as e:
                problem = f"unreadable ({e})"
            else:
                if idx.ntotal != ntotal or idx.d != self._dim:
                    problem = f"file has {idx.ntotal} vectors of dim {idx.d}"
        return (None, problem) if problem is not None else (idx, meta)

    def _load_saved(self) -> bool:
        """Load the saved index if it matches the store; True if loaded."""
        idx, got = self._read_saved()
        if idx is None:
            if got is not None:
                log.warning("index of %s %s; rebuilding from the vector store", self.model_name, got)
            return False
        meta = got
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

    def _ensure_index(self):
        """Load (or build) the index and catch it up with the store. Returns the CPU index."""
        if self._index is None:
            if not self._load_saved():
                self._build("no usable saved index")
        ntotal = self._index.ntotal
        if ntotal < self._n:
            log.info("index of %s behind the store by %d rows; adding them", self.model_name, self._n - ntotal)
            for s, x in self.store.chunks(ntotal, self._n):
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
        knn.threads()
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
            params = faiss.SearchParametersIVF(nprobe=int(min(nprobe or ivf.nprobe, ivf.nlist)))
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
        view = self.store.view()
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

    def _partition(self, idx) -> knn.Partition | None:
        """The IVF index's coarse partition of the stored rows (its centroids and lists)."""
        ivf = faiss.extract_index_ivf(idx)
        q = faiss.downcast_index(ivf.quantizer)
        C = faiss.rev_swig_ptr(q.get_xb(), q.ntotal * self._dim)
        C = np.array(C, dtype=np.float32).reshape(q.ntotal, self._dim)
        invl = ivf.invlists
        members = []
        for lst in range(int(ivf.nlist)):
            sz = invl.list_size(lst)
            ids = np.empty(0, np.int64)
            if sz:
                ptr = invl.get_ids(lst)
                ids = np.array(faiss.rev_swig_ptr(ptr, sz), dtype=np.int64)
                invl.release_ids(lst, ptr)
            members.append(np.sort(ids[ids < self._n]))
        if sum(len(m) for m in members) != self._n:  # not every row filed: not usable
            return None
        return knn.Partition.from_lists(C, members, self._n)

    def exact_search(self, queries, k: int, *, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force top-k over the float16 store (chunked; no index needed). ``limit``: only
        rows < limit. Same conventions as ``search``."""
        q = _normalise(_as_matrix(queries, self._dim, "queries"))
        n = self._n if limit is None else min(limit, self._n)
        S, I = knn.search_exact(q, self.store.chunks(0, n), k)
        return S, I.astype(np.int64, copy=False)

    def knn(
        self,
        k: int,
        *,
        exact: bool | None = None,
        nprobe: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k-NN graph of all stored vectors: (scores (N,k), rows (N,k) int64), best first, ties ->
        lower row, never the row itself, -1 padded (:func:`knn.knn_graph`).

        ``exact=None``: exact when the size rule picks a flat index (N < policy.flat_max), else
        through the IVF partition (the saved IVF index's, when there is one). ``nprobe``: lists
        searched per list (default policy.knn_nprobe, else knn.graph_nprobe). ``progress(done, N)``.
        """
        n = self._n
        if n == 0 or k <= 0:
            return _pad(n, max(k, 0))
        if exact is None:
            exact = n < self.policy.flat_max or self.policy.kind_for(n) == "flat"
        part = None
        if not exact and self._index is None:
            # only the saved IVF index's lists are needed: read it memory-mapped, its codes never
            # loaded (1.3 GB at 10^6 x 1280 SQ8, kept by the allocator long after it is freed)
            idx, _ = self._read_saved(faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            if isinstance(idx, faiss.IndexIVF) and idx.ntotal == n:
                part = self._partition(idx)
            del idx
        if not exact and part is None:
            idx = self._ensure_index()
            if isinstance(idx, faiss.IndexIVF):
                part = self._partition(idx)
        S, I = knn.knn_graph(self.store.view(), k, exact=exact, part=part,
                             nprobe=nprobe or self.policy.knn_nprobe, progress=progress,
                             fetch=self.store.gather)
        return S, I.astype(np.int64, copy=False)
