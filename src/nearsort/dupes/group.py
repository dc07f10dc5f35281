"""``dupes``: find the source files that show the same photo and pick a keeper in each group.

Groups are components of exact (sha256), perceptual (phash) and near (embedding + crop-aware hash)
edges, every edge confirmed on pixels (:mod:`nearsort.dupes.pixels`) and every group checked as a
star around its keeper; mirror images and similar shots are ``similar``, never grouped.
Quarantine (moving the non-keepers out, journaled and undoable) is :mod:`nearsort.dupes.quarantine`.
How and why: docs/design.md, "dupes"; defaults measured in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from collections.abc import Mapping
from typing import Callable, Iterable, Optional

import numpy as np

from nearsort.errors import CatalogError, CatalogLocked, DupesError
from nearsort.stage import Progress, Result
from nearsort.store import queries
from nearsort.store.catalog import Catalog, Thumbs, open_catalog, state_dir
from nearsort.dupes import stored
from nearsort.dupes.dsu import DSU
from nearsort.dupes.pixels import LOW_DETAIL_ONLY, STRONG_SCREEN, VERDICT_CACHE, PixelVerifier
from nearsort.frames import trim_box
from nearsort.textsafe import term
from nearsort.ingest.decode import exposure_moment, other_moments
from nearsort.ingest.thumbs import name_phash
from nearsort.vectors.knn import hamming_pairs, popcount

# ----------------------------------------------------------------------------- configuration
DEFAULT_PHASH_DISTANCE = 8
DEFAULT_THRESHOLD = 0.5
DEFAULT_CROP_DISTANCE = 12
DEFAULT_K = 10
DEFAULT_MIRROR_MARGIN = 4
ANCHOR_SLACK = 2  # the star check around the keeper allows crop_distance + this
STRONG_CROP_DISTANCE = 20  # beyond crop_distance, a pair this close is decided on pixels (Verdict.strong)
STRONG_COSINE = 0.9       # ... or whose embeddings are this close
PREFETCH_COMPONENT = 64   # components this large have their keeper checks made in worker processes
CLOSER_MARGIN = 0.05      # a star member closer than this (motion, FINE px) to another picture goes with it
FAINT_BLUR = 20.0          # thumbs.blur (variance of Laplacian) at or below which a hash may be noise
DEFAULT_KEEP = "resolution,original,metadata,size,oldest"
KEEP_KEYS = ("resolution", "original", "metadata", "size", "oldest", "newest", "path", "sharpness")
# what a camera writes (never a conversion's target): a file of these formats is an original
CAMERA_FORMATS = {"RAW", "HEIF", "HEIC", "DNG"}
SCALES = (1.0, 0.93, 0.87, 0.81)
SIG_CACHE = "cropsig-v3.npz"

KIND_RANK = {"exact": 0, "perceptual": 1, "near": 2}


@dataclass
class DupesConfig:
    phash_distance: int = DEFAULT_PHASH_DISTANCE
    threshold: float = DEFAULT_THRESHOLD
    crop_distance: int = DEFAULT_CROP_DISTANCE
    k: int = DEFAULT_K
    model: Optional[str] = None          # None: the most recently featurized model, if any
    use_embeddings: bool = True
    mirror_margin: int = DEFAULT_MIRROR_MARGIN
    keep: str = DEFAULT_KEEP
    verify: bool = True                  # confirm every copy pair on the thumbnails' pixels (pixels.py)
    originals: bool = True               # ... and a copy pair of one size on its originals' motion (reads them)
    workers: Optional[int] = None        # processes for thumbnail signatures (None: all cores)
    cache: bool = True                   # keep crop-aware signatures and pixel verdicts in THUMBS/.nearsort

    def check(self) -> None:
        if not 0 <= self.phash_distance <= 32:
            raise DupesError("--phash-distance must be between 0 and 32")
        if not -1.0 <= self.threshold <= 1.0:
            raise DupesError("--threshold is a cosine similarity: between -1 and 1")
        if not 0 <= self.crop_distance <= 64:
            raise DupesError("--crop-distance must be between 0 and 64 (64: no thumbnail check)")
        if self.k < 1:
            raise DupesError("k must be at least 1")
        parse_keep(self.keep)


def parse_keep(spec: str) -> list[str]:
    keys = [k.strip().lower() for k in (spec or "").split(",") if k.strip()]
    bad = [k for k in keys if k not in KEEP_KEYS]
    if bad or not keys:
        raise DupesError(f"--keep: unknown key(s) {', '.join(bad) or '(empty)'}; use a comma list of "
                         f"{', '.join(KEEP_KEYS)} (default {DEFAULT_KEEP})")
    return keys


# ----------------------------------------------------------------------------- bit helpers
def hex_to_u64(hexes: Iterable[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


# ----------------------------------------------------------------------------- crop-aware hash
_N = 32
_DCT = np.cos(np.pi * np.outer(np.arange(8), 2 * np.arange(_N) + 1) / (2 * _N)).astype(np.float64)


def _phash32(x: np.ndarray) -> int:
    """64-bit DCT phash of a 32x32 float image (imagehash.phash's algorithm): bit i set where the
    i-th low-frequency coefficient (row-major) lies above their median."""
    low = (_DCT @ x @ _DCT.T).ravel()
    mid = np.partition(low, (31, 32))  # the median of 64 values, as np.median takes it (3x cheaper here)
    bits = low > (mid[31] + mid[32]) / 2
    return int.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def crop_signature(path) -> np.ndarray:
    """uint64 (2*len(SCALES)+1,): phash of centre crops (SCALES) of the border-trimmed thumbnail,
    the same for its mirror image, then the share of the frame left after trimming (ppm)."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (im.width // 2, im.height // 2))
        g = im.convert("L")
    a = np.asarray(g, dtype=np.float32)
    t, b, left, right = trim_box(a)
    W, H = right - left, b - t
    direct, mirror = [], []
    for f in SCALES:
        cw, ch = W * f, H * f
        box = (left + (W - cw) / 2, t + (H - ch) / 2, left + (W + cw) / 2, t + (H + ch) / 2)
        x = np.asarray(g.resize((_N, _N), Image.LANCZOS, box=box), dtype=np.float64)
        direct.append(_phash32(x))
        mirror.append(_phash32(x[:, ::-1]))
    frac = (W * H) / float(a.shape[0] * a.shape[1])
    return np.array(direct + mirror + [int(round(frac * 1e6))], dtype=np.uint64)


def _sig_worker(path: str) -> Optional[np.ndarray]:
    try:
        return crop_signature(path)
    except Exception:
        return None


def crop_distances(sa: np.ndarray, sb: np.ndarray) -> tuple[int, int]:
    """(direct, mirrored) crop-aware distance between two signatures: the best match of any crop
    of one against the full frame of the other, both ways."""
    s = len(SCALES)
    da = popcount(sa[:s] ^ sb[0]).min(), popcount(sb[:s] ^ sa[0]).min()
    # mirrored: the mirror of a against b (and the mirror of b against a: same by symmetry)
    ma = popcount(sa[s:2 * s] ^ sb[0]).min(), popcount(sb[s:2 * s] ^ sa[0]).min()
    return int(min(da)), int(min(ma))


def crop_distances_many(sa: np.ndarray, sb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`crop_distances` of many pairs at once: signatures (m, 2*len(SCALES)+1) row by row."""
    s = len(SCALES)
    if not len(sa):
        z = np.zeros(0, np.int64)
        return z, z
    da = np.minimum(popcount(sa[:, :s] ^ sb[:, :1]).min(1), popcount(sb[:, :s] ^ sa[:, :1]).min(1))
    ma = np.minimum(popcount(sa[:, s:2 * s] ^ sb[:, :1]).min(1), popcount(sb[:, s:2 * s] ^ sa[:, :1]).min(1))
    return da.astype(np.int64), ma.astype(np.int64)


class Signatures:
    """Crop-aware signatures of thumbnails, computed on demand (in processes when many), cached
    in THUMBS/.nearsort/``SIG_CACHE`` keyed by thumbnail name."""

    def __init__(self, root: Path, names: dict[int, str], relpaths: dict[int, str],
                 workers: Optional[int] = None, cache: bool = True):
        self.root, self.names, self.relpaths = Path(root), names, relpaths
        self.workers = workers
        self.cache_path = state_dir(self.root) / SIG_CACHE if cache else None
        self.by_name: dict[str, np.ndarray] = {}
        self.failed: set[int] = set()
        self.computed = 0
        if self.cache_path and self.cache_path.exists():
            try:
                with np.load(self.cache_path) as z:
                    for nm, s in zip(z["names"], z["sigs"]):
                        self.by_name[str(nm)] = s
            except Exception:
                self.by_name = {}

    def get(self, tid: int) -> Optional[np.ndarray]:
        return self.by_name.get(self.names[tid])

    def ensure(self, tids: Iterable[int]) -> None:
        todo = sorted({t for t in tids if self.names[t] not in self.by_name and t not in self.failed})
        if not todo:
            return
        paths = [str(self.root / self.relpaths[t]) for t in todo]
        nw = self.workers or os.cpu_count() or 1
        if len(todo) >= 256 and nw > 1:
            from nearsort.workers import pool_context

            with ProcessPoolExecutor(nw, mp_context=pool_context()) as ex:
                sigs = list(ex.map(_sig_worker, paths, chunksize=64))
        else:
            sigs = [_sig_worker(p) for p in paths]
        for t, s in zip(todo, sigs):
            if s is None:
                self.failed.add(t)
            else:
                self.by_name[self.names[t]] = s
                self.computed += 1

    def save(self) -> None:
        if not self.cache_path or not self.computed:
            return
        try:
            names = np.array(sorted(self.by_name), dtype="U")
            sigs = np.stack([self.by_name[n] for n in names.tolist()]) if len(names) else np.zeros((0, 2 * len(SCALES) + 1), np.uint64)
            tmp = self.cache_path.with_name(self.cache_path.name + ".tmp.npz")
            np.savez(tmp, names=names, sigs=sigs)
            os.replace(tmp, self.cache_path)
        except OSError:
            pass  # a cache only

    def content_share(self, tid: int) -> float:
        """Share of the thumbnail left after trimming uniform borders (1.0 when unknown)."""
        s = self.get(tid)
        return float(s[-1]) / 1e6 if s is not None else 1.0

    def distances(self, a: int, b: int) -> Optional[tuple[int, int]]:
        sa, sb = self.get(a), self.get(b)
        if sa is None or sb is None:
            return None
        return crop_distances(sa, sb)

    def matrix(self, tids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(signatures (n, 2*len(SCALES)+1), known (n,) bool) of these thumbnails, row by row
        (rows of unknown ones are zeros)."""
        out = np.zeros((len(tids), 2 * len(SCALES) + 1), np.uint64)
        known = np.zeros(len(tids), bool)
        for i, t in enumerate(tids.tolist()):
            sig = self.by_name.get(self.names[t])
            if sig is not None:
                out[i], known[i] = sig, True
        return out, known


# ----------------------------------------------------------------------------- catalog loading
@dataclass(slots=True)  # one per photo: no per-instance dict (~300 B a photo at 10^6)
class Member:
    source_id: int
    path: str
    original_id: int
    thumb_id: int
    content_hash: str
    width: int
    height: int
    bytes: int
    format: Optional[str]
    capture_time: Optional[str]
    make: Optional[str]
    model: Optional[str]
    gps: bool
    exif_tags: int
    mtime_ns: int
    thumb: str

    content_share: float = 1.0   # share of the frame that is picture (letterbox/frame borders excluded)
    blur: float = 99.0           # its thumbnail's variance of Laplacian (sharpness)
    moment: Optional[int] = None  # when the camera took it (ingest.decode.exposure_moment)

    @property
    def pixels(self) -> int:
        return (self.width or 0) * (self.height or 0)

    @property
    def content_pixels(self) -> int:
        return int(self.pixels * self.content_share)

    @property
    def metadata_score(self) -> tuple[int, int]:
        return (int(bool(self.capture_time)) + int(bool(self.make or self.model)) + int(self.gps),
                self.exif_tags)

    @property
    def original_score(self) -> int:
        """2: a camera's own format (RAW, HEIC); 1: a JPEG/TIFF with the camera's EXIF (capture
        time and make/model); 0: anything else (a conversion, a re-encode that lost its EXIF)."""
        if (self.format or "").upper() in CAMERA_FORMATS:
            return 2
        return int(bool(self.capture_time) and bool(self.make or self.model))

    @property
    def date_ts(self) -> float:
        if self.capture_time:
            try:
                return datetime.fromisoformat(self.capture_time).timestamp()
            except (ValueError, OverflowError, OSError):
                pass
        return (self.mtime_ns or 0) / 1e9


def _restored(path: bytes, size: Optional[int]) -> bool:
    """A quarantined source whose file is back at its own path (a user moved it back by hand)."""
    try:
        return os.stat(bytes(path)).st_size == size
    except OSError:
        return False


def heal_statuses(cat: Catalog) -> int:
    """Writable catalogs: quarantined sources that are back home become 'ok' again."""
    back = [sid for sid, path, size in queries.quarantined_sources(cat) if _restored(path, size)]
    if back:
        with cat.tx():
            queries.set_sources_status(cat, back, "ok")
    return len(back)


def load_members(cat: Catalog) -> tuple[list[Member], dict[int, str], dict[int, str]]:
    """Every ok source with its original + thumbnail facts; thumb names and relpaths."""
    names, rels = {}, {}
    for tid, name, rel in queries.thumbs(cat):
        names[tid], rels[tid] = name, rel
    out = []
    words: dict = {}  # one string object per distinct format, camera make and model, not one a photo
    for (sid, path, size, mtime, oid, tid, ch, w, h, nbytes, fmt, ct, make, model, glat, exif,
         status) in queries.member_rows(cat):
        if tid not in names:
            continue
        if status == "quarantined" and not _restored(path, size):
            continue
        try:
            tags = json.loads(exif) if exif else {}
        except ValueError:
            tags = {}
        if not isinstance(tags, dict):
            tags = {}
        fmt, make, model = (words.setdefault(x, x) for x in (fmt, make, model))
        out.append(Member(sid, os.fsdecode(bytes(path)), oid, tid, ch, w or 0, h or 0,
                          nbytes if nbytes is not None else (size or 0), fmt, ct, make, model,
                          glat is not None, len(tags), mtime or 0, rels[tid], moment=exposure_moment(tags)))
    return out, names, rels


def thumb_blur(cat: Catalog) -> dict[int, float]:
    """thumbs.blur (variance of the Laplacian, from resize) by thumbnail id."""
    return {tid: (b if b is not None else 99.0) for tid, b in queries.thumb_blur(cat)}


def _pick_model(cat: Catalog, model: Optional[str]):
    try:
        row = queries.find_model(cat, model)
    except CatalogError as e:
        raise DupesError(f"{e} first") from None
    return None if row is None else (row.id, row.name, row.dim)


def near_candidates(cat: Catalog, model_id: int, name: str, dim: int, k: int, threshold: float,
                    thumbs: set[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thumb a, thumb b, cosine) for k-NN pairs with cosine >= threshold (a < b, unique)."""
    from nearsort.vectors.index import VectorIndex

    rows = queries.embeddings(cat, model_id)
    if len(rows) < 2:
        z = np.zeros(0, np.int64)
        return z, z, np.zeros(0, np.float32)
    valid = queries.valid_rows(cat, model_id)  # read after the rows: it covers every one of them
    row2thumb = np.full(valid, -1, dtype=np.int64)
    for t, r in rows:
        if t in thumbs:
            row2thumb[r] = t
    with VectorIndex.open(state_dir(cat.root), name, dim, valid_rows=valid, readonly=True) as vi:
        D, I = vi.knn(min(k, len(vi) - 1))
    n = min(len(D), valid)
    D, I = D[:n], I[:n]
    qa = np.repeat(np.arange(n, dtype=np.int64), D.shape[1])
    qb, sc = I.ravel(), D.ravel()
    ok = (qb >= 0) & (qb < valid) & (sc >= threshold)
    qa, qb, sc = qa[ok], qb[ok], sc[ok]
    ta, tb = row2thumb[qa], row2thumb[qb]
    ok = (ta >= 0) & (tb >= 0) & (ta != tb)
    ta, tb, sc = ta[ok], tb[ok], sc[ok]
    lo, hi = np.minimum(ta, tb), np.maximum(ta, tb)
    if not len(lo):
        return lo, hi, sc
    code = lo * (int(max(thumbs)) + 1) + hi
    code, idx = np.unique(code, return_index=True)
    return lo[idx], hi[idx], sc[idx]


# ----------------------------------------------------------------------------- keep-best
RESOLUTION_TOLERANCE = 0.03  # picture pixels within 3 % of the best count as "the same resolution"


def same_shot(a: Member, b: Member) -> bool:
    """A RAW and the camera's JPEG (or HEIC, TIFF) of one shot: the same base name and capture time,
    one of them RAW. One shot, never a copy to delete against the other."""
    if not (a.capture_time and a.capture_time == b.capture_time):
        return False
    if ((a.format or "").upper() == "RAW") == ((b.format or "").upper() == "RAW"):
        return False
    stem = lambda m: os.path.splitext(os.path.basename(m.path))[0].casefold()  # noqa: E731
    return stem(a) == stem(b)


def keeper_key(keys: list[str], members: Optional[list[Member]] = None,
               chosen: Optional[set] = None) -> Callable[[Member], tuple]:
    """Sort key: the best keeper sorts first. With ``members`` (the group), resolutions within
    RESOLUTION_TOLERANCE of the group's best tie, so that the next keys decide (a trimmed border
    is measured on a 128 px thumbnail, to within a percent or two). ``original``: a camera's own
    file (RAW, HEIC, a JPEG with its camera EXIF) before a conversion or re-encode, however large;
    ``sharpness``: the sharpest thumbnail first (similar shots). ``chosen``: paths a user chose
    as keepers (review decisions) sort before everything else."""
    best = max((m.content_pixels for m in members), default=0) if members else 0

    def key(m: Member) -> tuple:
        out = [0 if chosen and m.path in chosen else 1]
        for k in keys:
            if k == "resolution":
                px = m.content_pixels
                if best and px >= best * (1 - RESOLUTION_TOLERANCE):
                    out.extend((0, 0 if m.content_share >= 0.98 else 1))  # tie: the copy without borders
                else:
                    out.extend((best - px, 0))
            elif k == "original":
                out.append(-m.original_score)
            elif k == "sharpness":
                out.append(-m.blur)
            elif k == "metadata":
                s = m.metadata_score
                out.extend((-s[0], -s[1]))
            elif k == "size":
                out.append(-(m.bytes or 0))
            elif k == "oldest":
                out.extend((m.date_ts, m.mtime_ns))
            elif k == "newest":
                out.extend((-m.date_ts, -m.mtime_ns))
            elif k == "path":
                out.append(len(m.path))
        out.append(m.path)
        return tuple(out)
    return key


# ----------------------------------------------------------------------------- grouping
@dataclass
class _Edge:
    a: int
    b: int
    kind: str          # perceptual | near
    phash: int         # raw phash distance
    cosine: Optional[float] = None
    crop: Optional[int] = None
    mirror: Optional[int] = None


@dataclass
class QuarantineResult(Result):
    """What a quarantine moved (or, with ``dry_run``, would move), and what it refused."""

    dest: Optional[str] = None
    dry_run: bool = False
    op_id: Optional[int] = None          # the journaled op (``nearsort undo`` reverts it)
    moved: int = 0
    bytes: int = 0
    moves: list = field(default_factory=list)           # [{"group", "source_id", "src", "dst", ...}]
    skipped: list = field(default_factory=list)         # [{"path", "why"}]
    refused_groups: list = field(default_factory=list)  # [{"group", "keeper", "why", "files"}]
    read_only: list = field(default_factory=list)
    dest_inside: Optional[str] = None
    dest_problem: Optional[str] = None
    real_dest: Optional[str] = None
    library: list = field(default_factory=list)         # the source roots files must lie in
    finished_interrupted: bool = False  # a killed quarantine was finished instead of planning one
    moved_now: Optional[int] = None     # ... of its moves, those done now
    pending_quarantine: Optional[int] = None  # dry run: a killed quarantine that would be finished


@dataclass
class DupesResult(Result):
    """Duplicate groups (each with its keeper), similar pairs, and a quarantine when one ran."""

    summary: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    groups: list = field(default_factory=list)
    similar: list = field(default_factory=list)
    quarantine: Optional[QuarantineResult] = None
    # similar shots (bursts, an edit of the same moment) gathered into groups, the sharpest frame
    # as keeper (what review shows apart from copies); and the RAW + camera JPEG pairs of one shot
    # (relation "pair": never offered for deletion against each other)
    similar_groups: list = field(default_factory=list)
    shots: list = field(default_factory=list)


class _Originals(Mapping):
    """thumbnail id -> ((W, H) of its original, the original's paths), as the pixel checks ask for
    it: made per asked id from the members (most thumbnails are never checked on their originals)."""

    def __init__(self, by_thumb: dict[int, list[Member]]):
        self.by_thumb = by_thumb

    def __getitem__(self, tid: int) -> tuple[tuple[int, int], list[str]]:
        ms = self.by_thumb[tid]
        return (ms[0].width, ms[0].height), [m.path for m in ms]

    def __iter__(self):
        return iter(self.by_thumb)

    def __len__(self) -> int:
        return len(self.by_thumb)


class _Finder:
    def __init__(self, cat: Catalog, cfg: DupesConfig, log=None, progress: Optional[Progress] = None):
        self.cat, self.cfg = cat, cfg
        self.state = queries.library_state(cat)  # what the stored result will have been found on
        self.rules = stored.rules(cat)            # review decisions: chosen keepers, "not duplicates"
        self.log = log or (lambda msg: None)
        self.tick = (lambda phase: progress("dupes", phase, 3)) if progress else (lambda phase: None)
        self.members, self.names, self.rels = load_members(cat)
        self.by_thumb: dict[int, list[Member]] = {}
        for m in self.members:
            self.by_thumb.setdefault(m.thumb_id, []).append(m)
        self.tids = sorted(self.by_thumb)
        self.pos = {t: i for i, t in enumerate(self.tids)}
        self.hash = hex_to_u64(name_phash(self.names[t]) for t in self.tids)
        self.sigs = Signatures(cat.root, self.names, self.rels, cfg.workers, cfg.cache)
        self.keep_keys = parse_keep(cfg.keep)
        self.notes: list[str] = []
        self.model_name: Optional[str] = None
        self.stats = {"phash_pairs": 0, "near_candidates": 0, "near_edges": 0, "rejected": 0, "split_off": 0,
                      "pixel_rejected": 0, "shot_pairs": 0, "moment_pairs": 0, "uniform_split": 0, "pixel_only": 0,
                      "decided_distinct": 0}
        sources = _Originals(self.by_thumb) if cfg.originals else None
        self.pixels = PixelVerifier(cat.root, self.rels, sources=sources,
                                    store=state_dir(cat.root) / VERDICT_CACHE if cfg.cache else None) \
            if cfg.verify else None
        self.blur = thumb_blur(cat) if cfg.verify else {}
        self._shot_edges: list[_Edge] = []
        # embedding cosine of the near candidates: sorted pair codes (a * base + b, a < b) and values
        self._code_base = int(max(self.tids, default=0)) + 1
        self._cos_codes = np.zeros(0, np.int64)
        self._cos_vals = np.zeros(0, np.float32)

    def _pixels_decide(self, a: int, b: int, crop: int, cosine: Optional[float] = None) -> Optional[float]:
        """May a pair the crop-aware hash rejects still be a copy on pixels alone? (:meth:`_screens`
        of one pair.) Returns the screen for ``PixelVerifier.compare`` (None: no); only a *strong*
        verdict then joins the pair."""
        sc = self._screens(np.array([a]), np.array([b]), np.array([crop]),
                           np.array([np.nan if cosine is None else cosine]))[0]
        return None if np.isnan(sc) else float(sc)

    def _screens(self, a: np.ndarray, b: np.ndarray, crop: np.ndarray, cos: np.ndarray) -> np.ndarray:
        """The screen for ``PixelVerifier.compare`` of each pair (a[i], b[i]) that the crop-aware hash
        rejects, NaN where pixels may not decide it: when the hash is near (a crop or border moved
        it), when the embeddings nearly agree (``cos``, NaN: unknown; a border the trim could not
        remove moves every hash): STRONG_SCREEN; when both thumbnails are faint (low Laplacian
        variance, then low detail on pixels: a faint picture's hash is noise): LOW_DETAIL_ONLY."""
        out = np.full(len(a), np.nan)
        if self.pixels is None:
            return out
        faint = (self._blur_of(a) <= FAINT_BLUR) & (self._blur_of(b) <= FAINT_BLUR)
        out[faint] = LOW_DETAIL_ONLY
        out[(crop <= STRONG_CROP_DISTANCE) | (cos >= STRONG_COSINE)] = STRONG_SCREEN
        return out

    def _strong(self, a: int, b: int, screen: Optional[float]) -> bool:
        return screen is not None and not self._other_moments(a, b) and self.pixels.compare(a, b, screen).strong

    def _other_moments(self, a: int, b: int) -> bool:
        """Two exposures of one camera (ingest.decode.other_moments: a burst, a sequence): never
        copies, however alike their pixels (a burst of a still scene is)."""
        return other_moments([(m.make, m.model, m.moment) for m in self.by_thumb[a]],
                             [(m.make, m.model, m.moment) for m in self.by_thumb[b]])

    def _confirmed(self, e: "_Edge") -> bool:
        """Pixel check of a candidate copy pair; a local change, or two moments of one camera,
        make it a similar shot."""
        if self._other_moments(e.a, e.b):
            self._shot_edges.append(e)
            self.stats["shot_pairs"] += 1
            self.stats["moment_pairs"] += 1
            return False
        if self.pixels is None:
            return True
        v = self.pixels.compare(e.a, e.b)
        if v.copy:
            return True
        if v.kind == "shot" or (v.kind in ("colour", "tone", "different") and self._same_moment(e.a, e.b)):
            self._shot_edges.append(e)  # a local change, or an edit of the same capture: a similar shot
            self.stats["shot_pairs"] += 1
        else:
            self.stats["pixel_rejected"] += 1
        return False

    def _same_moment(self, a: int, b: int) -> bool:
        """Thumbnails of originals with one EXIF capture time (an edited version of a photo)."""
        times = {m.capture_time for m in self.by_thumb[a] if m.capture_time}
        return any(m.capture_time in times for m in self.by_thumb[b])

    def phash_d(self, a: int, b: int) -> int:
        return int(popcount(self.hash[self.pos[a]] ^ self.hash[self.pos[b]]))

    # ---- edges
    def edges(self) -> tuple[list[_Edge], list[_Edge]]:
        cfg = self.cfg
        t0 = time.monotonic()
        i, j, d = hamming_pairs(self.hash, cfg.phash_distance)
        tid = np.array(self.tids, dtype=np.int64)
        perceptual = [_Edge(int(tid[a]), int(tid[b]), "perceptual", int(x)) for a, b, x in zip(i, j, d)]
        self.stats["phash_pairs"] = len(perceptual)
        if self.pixels is not None:
            self.pixels.prefetch([(e.a, e.b, None) for e in perceptual if not self._other_moments(e.a, e.b)],
                                 cfg.workers)  # two moments of one camera are decided without pixels
        # decided here: not near candidates again
        perceptual_codes = np.array(sorted(self._code(e.a, e.b) for e in perceptual), dtype=np.int64)
        perceptual = [e for e in perceptual if self._confirmed(e)]
        self.tick(1)
        self.log(f"phash search: {len(perceptual)} pairs within {cfg.phash_distance} bits "
                      f"({time.monotonic() - t0:.1f} s)")
        near: list[_Edge] = []
        mirrors: list[_Edge] = []
        if cfg.use_embeddings:
            m = _pick_model(self.cat, cfg.model)
            if m is None:
                self.notes.append("no embeddings in the catalog: only exact and perceptual duplicates were "
                                  f"searched (run `nearsort featurize {self.cat.root}` to find crops, "
                                  "letterboxed and re-framed copies too)")
            else:
                model_id, name, dim = m
                self.model_name = name
                a, b, s = near_candidates(self.cat, model_id, name, dim, cfg.k, cfg.threshold, set(self.tids))
                self.stats["near_candidates"] = len(a)
                near, mirrors = self._near_edges(a, b, s, perceptual_codes)
                self.stats["near_edges"] = len(near)
                self.log(f"near: {len(a)} candidates with cosine >= {cfg.threshold}, {len(near)} confirmed, "
                              f"{len(mirrors)} mirror images ({time.monotonic() - t0:.1f} s)")
        self._mirror_edges = mirrors
        self.tick(2)
        return perceptual, near

    def _code(self, a: int, b: int) -> int:
        """One int64 for the thumbnail pair a < b."""
        return a * self._code_base + b

    def _near_edges(self, a: np.ndarray, b: np.ndarray, cos: np.ndarray,
                    decided: np.ndarray) -> tuple[list["_Edge"], list["_Edge"]]:
        """(near edges, mirror edges) among the k-NN candidate pairs a < b (cosine ``cos``) not
        ``decided`` (pair codes) already. The crop-aware distances, the mirror test and the choice
        of the pairs that need pixels are made on arrays; only the pairs that become an edge, a
        mirror or a pixel check are Python objects (10^6 thumbnails give ~10^7 candidates)."""
        cfg = self.cfg
        code = a * self._code_base + b
        keep = ~np.isin(code, decided)
        a, b, cos, code = a[keep], b[keep], cos[keep].astype(np.float32), code[keep]
        order = np.argsort(code, kind="stable")  # the cosine of any candidate, for the star check
        self._cos_codes, self._cos_vals = code[order], cos[order]
        self.sigs.ensure(np.union1d(a, b).tolist())
        crop = np.zeros(len(a), np.int64)
        mir = np.zeros(len(a), np.int64)
        known = np.zeros(len(a), bool)
        step = 1 << 18
        for i in range(0, len(a), step):  # bounded memory: signatures gathered a block at a time
            sa, ka = self.sigs.matrix(a[i:i + step])
            sb, kb = self.sigs.matrix(b[i:i + step])
            crop[i:i + step], mir[i:i + step] = crop_distances_many(sa, sb)
            known[i:i + step] = ka & kb
        is_mirror = known & self._is_mirror(crop, mir)
        by_hash = known & ~is_mirror & (crop <= cfg.crop_distance)
        rest = known & ~is_mirror & ~by_hash
        screens = np.full(len(a), np.nan)
        screens[rest] = self._screens(a[rest], b[rest], crop[rest], cos[rest])
        on_pixels = rest & ~np.isnan(screens)
        self.stats["rejected"] += int((rest & ~on_pixels).sum())
        todo = np.flatnonzero(is_mirror | by_hash | on_pixels)
        if self.pixels is not None:  # every pixel check the loop below asks for, at once
            self.pixels.prefetch([(int(a[i]), int(b[i]), None if by_hash[i] else float(screens[i]))
                                  for i in todo.tolist() if (by_hash[i] or on_pixels[i])
                                  and not self._other_moments(int(a[i]), int(b[i]))], cfg.workers)
        near: list[_Edge] = []
        mirrors: list[_Edge] = []
        for i in todo.tolist():  # in candidate order, as the edges were always listed
            x, y = int(a[i]), int(b[i])
            e = _Edge(x, y, "near", self.phash_d(x, y), float(cos[i]), int(crop[i]), int(mir[i]))
            if is_mirror[i]:
                mirrors.append(e)
            elif by_hash[i]:
                if self._confirmed(e):
                    near.append(e)
            elif self._strong(x, y, float(screens[i])):
                near.append(e)  # the hashes moved (crop, border, faint picture): pixels decide
                self.stats["pixel_only"] += 1
            else:
                self.stats["rejected"] += 1
        return near, mirrors

    def _blur_of(self, tids: np.ndarray) -> np.ndarray:
        """thumbs.blur of these thumbnails (99 where unknown), as _pixels_decide reads it."""
        return np.fromiter((self.blur.get(int(t), 99) for t in tids.tolist()), dtype=np.float64, count=len(tids))

    def _cosine(self, a: int, b: int) -> Optional[float]:
        """The embedding cosine of a near candidate pair (None: not a candidate)."""
        code = self._code(min(a, b), max(a, b))
        i = int(np.searchsorted(self._cos_codes, code))
        if i < len(self._cos_codes) and self._cos_codes[i] == code:
            return float(self._cos_vals[i])
        return None

    def _is_mirror(self, crop, mirror):
        """Is the mirrored distance the near one (ints, or arrays of them: element-wise)?"""
        return (mirror <= self.cfg.crop_distance) & (mirror + self.cfg.mirror_margin <= crop)

    # ---- star check around the keeper
    def _matches(self, anchor: int, t: int) -> str:
        """'ok' | 'mirror' | 'no' for thumbnail t against the keeper's thumbnail."""
        if anchor == t:
            return "ok"
        if self.phash_d(anchor, t) > self.cfg.phash_distance:
            dist = self.sigs.distances(anchor, t)
            if dist is None:
                return "no"
            crop, mirror = dist
            if self._is_mirror(crop, mirror):
                return "mirror"
            if crop > self.cfg.crop_distance + ANCHOR_SLACK:
                screen = self._pixels_decide(anchor, t, crop, self._cosine(anchor, t))
                return "ok" if self._strong(anchor, t, screen) else "no"
        # every member must be the keeper's picture on pixels, not only linked to it
        if self._other_moments(anchor, t):
            return "no"
        return "ok" if self.pixels is None or self.pixels.compare(anchor, t).copy else "no"

    def _closer_elsewhere(self, anchor: int, good: list[int], rest: list[int],
                          adj: dict[int, list[tuple[int, str]]]) -> list[int]:
        """The members of a star that are copies of a picture split off from it (``rest``: not the
        keeper's picture), and closer to that one: their motion against it (the thumbnails', at FINE)
        is below their motion against the keeper by more than CLOSER_MARGIN. A half-size copy of a
        video frame is a copy of the next frame too (a drift of a pixel is half of one there): it goes
        with its own frame, not with the first keeper it met (video bench: 0.02-0.14 against its own
        frame, 0.16-0.31 against the neighbour's)."""
        if self.pixels is None:
            return []
        out = []
        rest_set = set(rest)
        for t in good:
            if t == anchor:
                continue
            others = [u for u, _ in adj.get(t, ()) if u in rest_set and not self._other_moments(t, u)]
            if not others:
                continue
            here = self.pixels.compare(anchor, t).metrics.get("motion")
            if here is None or here <= CLOSER_MARGIN:
                continue
            for u in dict.fromkeys(others):
                v = self.pixels.compare(t, u)
                if v.copy and v.metrics.get("motion", here) + CLOSER_MARGIN < here:
                    out.append(t)
                    break
        return out

    def _split(self, comp: list[int], adj: dict[int, list[tuple[int, str]]], out: list, mirrored: list) -> None:
        """Check a component as a star around its keeper; regroup the members that fail (a work
        list, not recursion: a long chain of look-alikes splits one member at a time)."""
        todo = [comp]
        while todo:
            comp = todo.pop()
            members = [m for t in comp for m in self.by_thumb[t]]
            if len(comp) > 1:  # borders do not count as resolution: needs every member's trim box
                self.sigs.ensure(comp)
                for m in members:
                    m.content_share = min(1.0, self.sigs.content_share(m.thumb_id))
            keeper = min(members, key=keeper_key(self.keep_keys, members, self.rules.keepers))
            anchor = keeper.thumb_id
            if self.pixels is not None and len(comp) >= PREFETCH_COMPONENT:
                self.pixels.prefetch([(anchor, t, None) for t in comp if t != anchor and not self._other_moments(anchor, t)],
                                     self.cfg.workers)
            good, rest, mir = [anchor], [], []
            for t in comp:
                if t == anchor:
                    continue
                r = self._matches(anchor, t)
                (good if r == "ok" else mir if r == "mirror" else rest).append(t)
            if rest:
                for t in self._closer_elsewhere(anchor, good, rest, adj):
                    good.remove(t)
                    rest.append(t)
            if mir:
                mirrored.append((anchor, mir))
            if rest or mir:
                self.stats["split_off"] += len(rest) + len(mir)
                left = rest + mir
                sub = set(left)
                dsu = DSU(len(left))
                idx = {t: k for k, t in enumerate(left)}
                for t in left:
                    for u, _ in adj.get(t, ()):
                        if u in sub:
                            dsu.union(idx[t], idx[u])
                comps: dict[int, list[int]] = {}
                for t in left:
                    comps.setdefault(dsu.find(idx[t]), []).append(t)
                todo.extend(comps.values())
            out.append((good, keeper))

    # ---- main
    def run(self) -> DupesResult:
        cfg = self.cfg
        perceptual, near = self.edges()
        n = len(self.tids)
        dsu = DSU(n)
        adj: dict[int, list[tuple[int, str]]] = {}
        for e in perceptual + near:  # perceptual edges first: the evidence kinds stay meaningful
            adj.setdefault(e.a, []).append((e.b, e.kind))
            adj.setdefault(e.b, []).append((e.a, e.kind))
            dsu.union(self.pos[e.a], self.pos[e.b])
        comps: dict[int, list[int]] = {}
        for t in self.tids:
            comps.setdefault(dsu.find(self.pos[t]), []).append(t)
        parts: list[tuple[list[int], Member]] = []
        mirrored: list[tuple[int, list[int]]] = []
        for comp in comps.values():
            if len(comp) == 1 and len(self.by_thumb[comp[0]]) == 1:
                continue
            self._split(comp, adj, parts, mirrored)
        # build the output
        groups = []
        group_of_thumb: dict[int, int] = {}
        for thumbs, keeper in parts:
            members = [m for t in thumbs for m in self.by_thumb[t]]
            if len(members) < 2:
                continue
            if len(thumbs) == 1 and self.pixels is not None and self.pixels.blank(thumbs[0]):
                # a blank (clipped uniform) frame shows nothing of its scene: only byte-identical files are copies
                by_hash: dict[str, list[Member]] = {}
                for m in members:
                    by_hash.setdefault(m.content_hash, []).append(m)
                self.stats["uniform_split"] += len(by_hash) - 1
                for ms in by_hash.values():
                    if len(ms) > 1:
                        groups.append((thumbs, min(ms, key=keeper_key(self.keep_keys, ms)), ms))
                continue
            groups.append((thumbs, keeper, members))
        if self.rules:
            groups = self._apply_distinct(groups)
        built = [(self._group_dict(0, thumbs, keeper, members, adj), thumbs, keeper) for thumbs, keeper, members in groups]
        built.sort(key=lambda g: (-g[0]["reclaimable_bytes"], g[2].path))
        out_groups, shots, keepers = [], [], {}
        for g, thumbs, keeper in built:
            if all(m["relation"] == "pair" for m in g["members"] if not m["keeper"]):
                g["kind"] = "shot"  # a RAW and the camera's JPEG of it: one shot, nothing to delete
                g["id"] = len(shots) + 1
                shots.append(g)
                continue
            g["id"] = gid = len(out_groups) + 1
            for t in thumbs:
                group_of_thumb[t] = gid
            keepers[gid] = keeper
            out_groups.append(g)
        similar = self._similar(mirrored, group_of_thumb, out_groups)
        similar_groups = self._similar_groups(group_of_thumb, keepers)
        originals = self.pixels.original_checks() if self.pixels else (0, 0)
        if originals[1]:
            self.notes.append(f"{originals[1]} pairs could not be checked for motion on their originals (not "
                              "readable: is the library mounted?); their groups may hold consecutive video frames: "
                              "review them before --move-to, or run dupes again with the originals in place")
        exact_groups = sum(1 for g in out_groups if g["kind"] == "exact")
        summary = {
            "sources": len(self.members), "thumbnails": n, "groups": len(out_groups),
            "exact_groups": exact_groups, "near_groups": len(out_groups) - exact_groups,
            "shot_groups": len(shots), "similar_groups": len(similar_groups), "decisions": self.rules.count,
            "duplicates": sum(len(g["members"]) - 1 for g in out_groups),
            "reclaimable_bytes": sum(g["reclaimable_bytes"] for g in out_groups),
            "mirror_pairs": sum(1 for x in similar if x["relation"] == "mirror"),
            "similar_shots": sum(1 for x in similar if x["relation"] == "shot"),
            "model": self.model_name, **self.stats, "pixel_checks": self.pixels.compared if self.pixels else 0,
            "original_checks": originals[0], "originals_unreadable": originals[1],
            "signatures_computed": self.sigs.computed,
        }
        self.sigs.save()
        if self.pixels is not None:
            self.pixels.save()
        self.tick(3)
        settings = asdict(cfg)
        settings["model"] = self.model_name
        return DupesResult(summary=summary, settings=settings, notes=self.notes, groups=out_groups, similar=similar,
                           similar_groups=similar_groups, shots=shots)

    def _apply_distinct(self, groups: list) -> list:
        """The review decisions "not duplicates": a group marked so as a whole is gone, a member
        marked so leaves its group (stored.split_distinct)."""
        out = []
        for _thumbs, keeper, members in groups:
            if stored.group_key(m.content_hash for m in members) in self.rules.distinct_keys:
                self.stats["decided_distinct"] += len(members)
                continue
            ranked = sorted(members, key=keeper_key(self.keep_keys, members, self.rules.keepers))
            kept = 0
            for head, ms in stored.split_distinct(ranked, keeper, self.rules):
                if stored.group_key(m.content_hash for m in ms) in self.rules.distinct_keys:
                    continue
                out.append((sorted({m.thumb_id for m in ms}), head, ms))
                kept += len(ms)
            self.stats["decided_distinct"] += len(members) - kept
        return out

    def _similar_groups(self, group_of_thumb: dict[int, int], keepers: dict[int, Member]) -> list:
        """Similar shots joined into groups (components of the "shot" pairs), one member per copy
        group (its keeper) or photo; the sharpest frame is the suggested keeper."""
        pairs = {(min(e.a, e.b), max(e.a, e.b)) for e in self._shot_edges}
        if not pairs:
            return []
        blur = self.blur or thumb_blur(self.cat)

        def node(t: int):
            return ("g", group_of_thumb[t]) if t in group_of_thumb else ("t", t)

        nodes = sorted({node(t) for p in pairs for t in p})
        idx = {n: i for i, n in enumerate(nodes)}
        dsu = DSU(len(nodes))
        for a, b in pairs:
            na, nb = node(a), node(b)
            if na != nb and not self._distinct_thumbs(a, b):
                dsu.union(idx[na], idx[nb])
        comps: dict[int, list] = {}
        for n in nodes:
            comps.setdefault(dsu.find(idx[n]), []).append(n)
        out = []
        for comp in comps.values():
            if len(comp) < 2:
                continue
            reps = []
            for kind, x in comp:
                if kind == "g":
                    reps.append(keepers[x])
                else:
                    ms = self.by_thumb[x]
                    reps.append(min(ms, key=keeper_key(self.keep_keys, ms, self.rules.keepers)))
            for m in reps:
                m.blur = blur.get(m.thumb_id, 99.0)
            keys = ["sharpness"] + self.keep_keys
            ranked = sorted(reps, key=keeper_key(keys, reps, self.rules.keepers))
            best = min(reps, key=keeper_key(keys, reps, self.rules.keepers))
            for head, ms in stored.split_distinct(ranked, best, self.rules) if self.rules else [(best, ranked)]:
                if stored.group_key(m.content_hash for m in ms) in self.rules.distinct_keys:
                    continue
                suggested = min(ms, key=keeper_key(keys, ms))
                rels = [self._member_dict(m, head, m is head) for m in [head] + [m for m in ms if m is not head]]
                for r in rels[1:]:
                    r["relation"] = "shot"
                out.append({"id": 0, "kind": "similar", "evidence": ["shot"], "keeper": head.path, "size": len(ms),
                            "reclaimable_bytes": sum(r["bytes"] or 0 for r in rels[1:]), "members": rels,
                            "similar": [], "suggested_source_id": suggested.source_id,
                            "groups": sorted({group_of_thumb[m.thumb_id] for m in ms
                                              if m.thumb_id in group_of_thumb})})
        out.sort(key=lambda g: (-g["reclaimable_bytes"], g["keeper"]))
        for i, g in enumerate(out, 1):
            g["id"] = i
        return out

    def _distinct_thumbs(self, a: int, b: int) -> bool:
        """Has a decision marked some original of thumbnail a and one of b "not duplicates"?"""
        return bool(self.rules.distinct_pairs) and any(
            self.rules.distinct(x.content_hash, y.content_hash) for x in self.by_thumb[a] for y in self.by_thumb[b])

    def _member_dict(self, m: Member, keeper: Member, is_keeper: bool) -> dict:
        if is_keeper:
            rel = "keeper"
        elif m.content_hash == keeper.content_hash:
            rel = "exact"
        elif m.thumb_id == keeper.thumb_id or self.phash_d(m.thumb_id, keeper.thumb_id) <= self.cfg.phash_distance:
            rel = "perceptual"
        else:
            rel = "near"
        d = {
            "path": m.path, "source_id": m.source_id, "keeper": is_keeper, "relation": rel,
            "thumb": m.thumb, "thumb_id": m.thumb_id, "width": m.width, "height": m.height, "bytes": m.bytes, "format": m.format,
            "capture_time": m.capture_time, "camera": " ".join(x for x in (m.make, m.model) if x) or None,
            "gps": m.gps, "mtime": datetime.fromtimestamp(m.mtime_ns / 1e9).isoformat(timespec="seconds")
            if m.mtime_ns else None, "content_hash": m.content_hash,
        }
        if not is_keeper and rel != "exact":
            d["phash_distance"] = self.phash_d(m.thumb_id, keeper.thumb_id)
            dist = self.sigs.distances(keeper.thumb_id, m.thumb_id) if m.thumb_id != keeper.thumb_id else (0, None)
            d["crop_distance"] = dist[0] if dist else None
        return d

    def _group_dict(self, gid, thumbs, keeper, members, adj) -> dict:
        suggested = min(members, key=keeper_key(self.keep_keys, members))  # without the decisions' keepers
        members = sorted(members, key=keeper_key(self.keep_keys, members, self.rules.keepers))
        members.remove(keeper)
        members.insert(0, keeper)
        rels = [self._member_dict(m, keeper, m is keeper) for m in members]
        shot, hashes = [keeper], {keeper.content_hash}
        for m, r in zip(members[1:], rels[1:]):  # the keeper's RAW / camera JPEG: the same shot, kept with it
            if m.content_hash not in hashes and any(same_shot(m, x) for x in shot):
                r["relation"] = "pair"
                shot.append(m)
                hashes.add(m.content_hash)
        kinds = {r["relation"] for r in rels if r["relation"] not in ("keeper", "pair")}
        kind = max(kinds, key=lambda k: KIND_RANK[k]) if kinds else "exact"
        tset = set(thumbs)
        evidence = set()
        for t in thumbs:
            hashes = [m.content_hash for m in members if m.thumb_id == t]
            if len(set(hashes)) < len(hashes):
                evidence.add("exact")
            if len(set(hashes)) > 1:
                evidence.add("perceptual")
        for t in thumbs:
            for u, k in adj.get(t, ()):
                if u in tset:
                    evidence.add(k)
        return {
            "id": gid, "kind": kind, "evidence": sorted(evidence, key=lambda k: KIND_RANK[k]),
            "keeper": keeper.path, "size": len(members),
            "reclaimable_bytes": sum(r["bytes"] or 0 for r in rels[1:] if r["relation"] != "pair"),
            "members": rels, "similar": [], "suggested_source_id": suggested.source_id,
        }

    def _similar(self, mirrored, group_of_thumb, out_groups) -> list:
        """Pairs shown side by side, never joined: mirror images and similar shots (a local
        change on the same framing: bursts, an object moved or added)."""
        pairs: dict[tuple[int, int], tuple] = {}
        for e in self._mirror_edges:
            pairs[(e.a, e.b)] = "mirror", e.crop, e.mirror
        for anchor, ts in mirrored:
            for t in ts:
                key = (min(anchor, t), max(anchor, t))
                pairs.setdefault(key, ("mirror",) + (self.sigs.distances(anchor, t) or (None, None)))
        for e in self._shot_edges:
            pairs.setdefault((min(e.a, e.b), max(e.a, e.b)), ("shot", e.crop, e.mirror))
        out, seen = [], set()
        by_id = {g["id"]: g for g in out_groups}
        for (a, b), (relation, crop, mir) in sorted(pairs.items()):
            ga, gb = group_of_thumb.get(a), group_of_thumb.get(b)
            if ga is not None and ga == gb:
                continue  # joined anyway through other evidence (symmetric picture)
            if self._distinct_thumbs(a, b):
                continue  # a review decision: "not duplicates"
            key = (relation, ga or ("t", a), gb or ("t", b))
            if key in seen or (relation, key[2], key[1]) in seen:
                continue
            seen.add(key)
            pa = [m.path for m in self.by_thumb[a]]
            pb = [m.path for m in self.by_thumb[b]]
            out.append({"relation": relation, "a": pa, "b": pb, "group_a": ga, "group_b": gb,
                        "thumb_a": self.rels[a], "thumb_b": self.rels[b],
                        "crop_distance": crop, "mirror_distance": mir})
            for g, other, t in ((ga, pb, b), (gb, pa, a)):
                if g is not None:
                    by_id[g]["similar"].append({"relation": relation, "paths": other, "thumb": self.rels[t],
                                                "thumb_id": t})
        return out


def find_duplicates(thumbs: Thumbs, config: Optional[DupesConfig] = None, *,
                    progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None) -> DupesResult:
    """Group the ok sources of THUMBS (a path or an open Catalog) into duplicate groups, each with
    its keeper (see docs/design.md, "dupes"), honouring the review decisions (a chosen keeper, "not
    duplicates"). Reads the photos only; the groups found are stored in the catalog for
    ``review`` (:func:`store_result`). ``progress("dupes", phase, 3)``; ``log(line)`` hears what
    each phase found."""
    cfg = config or DupesConfig()
    cfg.check()
    with open_catalog(thumbs, write=False) as cat:
        finder = _Finder(cat, cfg, log, progress)
        res = finder.run()
        if cat.writable:
            store_result(cat, res, finder.state)
    if not isinstance(thumbs, Catalog):
        try:  # briefly, and only when no other nearsort process writes (dupes never waits for one)
            with Catalog.open(thumbs) as cat:
                store_result(cat, res, finder.state)
        except (CatalogLocked, OSError, sqlite3.Error):
            pass  # another writer, or a read-only THUMBS: review finds the stored result stale and recomputes
    return res


def store_result(cat: Catalog, res: DupesResult, state: list) -> int:
    """Keep ``res`` in the catalog (stored.store): copies, similar-shot groups and RAW+JPEG pairs."""
    return stored.store(cat, {"copies": res.groups, "similar": res.similar_groups, "shot": res.shots},
                        state, res.settings)


# ----------------------------------------------------------------------------- text output
def human_bytes(n: Optional[float]) -> str:
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} TB"


def format_text(res: DupesResult, limit: Optional[int] = None) -> str:
    s = res.summary
    lines = [f"{s['groups']} duplicate groups ({s['exact_groups']} exact, {s['near_groups']} near) among "
             f"{s['sources']} photos: {s['duplicates']} files could go, {human_bytes(s['reclaimable_bytes'])} "
             f"reclaimable; {s['mirror_pairs']} mirror-image pairs and {s.get('similar_shots', 0)} similar shots "
             "(kept, not duplicates)."]
    if s.get("shot_groups"):
        lines.append(f"{s['shot_groups']} RAW + camera JPEG pairs of one shot are kept together (not duplicates).")
    if s.get("decisions"):
        lines.append(f"{s['decisions']} review decisions honoured (chosen keepers, \"not duplicates\").")
    for note in res.notes:
        lines.append(f"note: {term(note)}")
    for g in res.groups[:limit] if limit else res.groups:
        lines.append("")
        lines.append(f"group {g['id']} [{g['kind']}; evidence: {', '.join(g['evidence'])}] "
                     f"{g['size']} files, {human_bytes(g['reclaimable_bytes'])} reclaimable")
        for m in g["members"]:
            mark = "★ keep" if m["keeper"] else "  same shot" if m["relation"] == "pair" else f"  {m['relation']:<10}"
            date = m["capture_time"] or (m["mtime"] and f"mtime {m['mtime']}") or "?"
            lines.append(f"  {mark:<12} {m['width']}x{m['height']:<6} {human_bytes(m['bytes']):>9}  {term(date):<26} "
                         f"{term(m['path'])}")
        for sm in g["similar"]:
            label = "mirror" if sm["relation"] == "mirror" else "similar shot"
            lines.append(f"  ↔ {label:<12}{', '.join(term(p) for p in sm['paths'])}")
    if limit and len(res.groups) > limit:
        lines.append(f"... and {len(res.groups) - limit} more groups (--json for all)")
    return "\n".join(lines)


def write_json(res: DupesResult, fh) -> None:
    json.dump(res.to_dict(), fh, indent=1, ensure_ascii=True, default=str)
    fh.write("\n")
