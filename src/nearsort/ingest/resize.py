"""``resize``: originals -> thumbnails + catalog, incrementally, never writing to SRC.

Pipeline: a scanner thread walks SRC and skips files whose (path, size, mtime) the catalog
already has; worker processes read + hash + decode + thumbnail each new or changed file
(thumbs.process_file); this process is the single writer: it places thumbnails, writes
them with their metadata, and commits to the catalog in batches. Thumbnail files are
written *before* the catalog transaction that references them commits, so a crash or
Ctrl-C at any moment leaves a consistent catalog; the next run continues where this
one stopped.
"""
from __future__ import annotations

import io
import json
import math
import os
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from nearsort import engine as engines
from nearsort.errors import BadArgument, Interrupted
from nearsort.store import queries, thumbmeta
from nearsort.store.catalog import Catalog, CatalogError, DiskFull, Thumbs, catalog_path, check_thumbs_folder, is_disk_full
from nearsort.ingest.scan import ScanProblem, walk_images
from nearsort.store.sync import (import_meta, import_tree, iter_thumb_files, reattach_vectors, reconcile, thumb_meta,
                                 write_thumb_meta)
from nearsort.frames import (MAX_MOTION, ORIGINAL_DECODE, ORIGINAL_SCREEN, RECODE_SHARE, fine_motion, frame_motion,
                             pixel_print, prints_agree, recoded_files)
from nearsort.ingest.decode import decode_file, exposure_moment, other_moments
from nearsort.ingest.thumbs import THUMB_EXT, FileResult, layout_folder, process_file, thumb_name
from nearsort.stage import Progress, Result
from nearsort.workers import Died, Hung, Workers

COMMIT_EVERY = int(os.environ.get("NEARSORT_COMMIT_EVERY", "256"))  # results per catalog transaction
COMMIT_SECONDS = 2.0
QUEUED = 16  # files queued per worker: none waits while this process commits or is not scheduled
HELD = 512  # finished files waiting for an earlier, slower one (~30 KB each) before no new file is handed out
FILE_TIMEOUT = 60.0  # seconds a decoder may spend on one file before its worker is killed (--timeout)
PRINTS_KEPT = 16384  # thumbnails' pixel prints kept for name collisions (48 MiB)


@dataclass
class ResizeResult(Result):
    """What ``resize`` did (``status``: done | interrupted)."""

    src: str
    out: str
    scanned: int = 0
    unchanged: int = 0
    processed: int = 0
    new_thumbnails: int = 0
    merged: int = 0  # files whose content or pixels matched an existing thumbnail
    errors: int = 0
    skipped_other_files: int = 0
    missing: int = 0
    seconds: float = 0.0
    images_per_second: float = 0.0
    error_samples: list = field(default_factory=list)
    status: str = "done"


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    p = prefix.rstrip(b"/") + b"/"
    return p, p[:-1] + b"0"  # '0' is '/' + 1


CRASH_HOOK = "NEARSORT_TEST_CRASH"  # tests only: "SIGNUM:NAME" kills the worker on files named NAME,
# "hang:NAME" makes it loop forever on them


def _work(args) -> FileResult:
    path, size, quality, _place = args  # _place: the file's place in the scan order (resize applies in it)
    crash = os.environ.get(CRASH_HOOK)
    if crash:  # stands in for a native decoder crashing or hanging (tests/e2e/test_crash.py)
        signum, _, name = crash.partition(":")
        if os.path.basename(path) == name:
            while signum == "hang":
                pass
            os.kill(os.getpid(), int(signum))
    return process_file(path, size, quality)


def _lost(path: str, lost: Died | Hung) -> FileResult:
    """The error recorded for a file whose decoder process died on it (twice) or hung on it."""
    try:
        st = os.stat(path)
        size, mtime_ns = st.st_size, st.st_mtime_ns
    except OSError:
        size = mtime_ns = 0
    what = f"{lost.describe()} on this file, twice" if isinstance(lost, Died) else lost.describe()
    more = "" if isinstance(lost, Died) else ", or give it more time with --timeout"
    return FileResult(path, size, mtime_ns, error=(
        f"the decoder {what}: skipped, the rest of the run is kept; the next "
        f"resize tries it again (convert it with another program to add it sooner{more})"))


class _Scanner(threading.Thread):
    """Walks SRC, checks each file against the catalog, queues the ones to process."""

    def __init__(self, src: str, exclude: list[str], db: Path, force_ids: set[int]):
        super().__init__(daemon=True, name="nearsort-scan")
        self.src, self.exclude, self.db, self.force_ids = src, exclude, db, force_ids
        self.todo: "queue.Queue[str | None]" = queue.Queue(maxsize=4096)
        self.unchanged: "queue.SimpleQueue[int]" = queue.SimpleQueue()
        self.problems: "queue.SimpleQueue[ScanProblem]" = queue.SimpleQueue()
        self.problem_paths: list[str] = []  # folders that could not be listed: their files were not seen
        self.found = 0
        self.n_unchanged = 0
        self.skipped_other = 0
        self.done = False
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = sqlite3.connect(str(self.db), timeout=30.0)
        try:
            batch: list[tuple[str, os.stat_result | None]] = []
            for entry in walk_images(self.src, self.exclude, self._problem, self._skipped):
                if self.stop.is_set():
                    return
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError:
                    st = None  # let the worker report it precisely
                batch.append((os.path.abspath(entry.path), st))
                if len(batch) >= 512:
                    self._flush(conn, batch)
                    batch = []
            self._flush(conn, batch)
        except BaseException as e:  # reported by the main thread
            self.error = e
        finally:
            conn.close()
            self.done = True
            self.todo.put(None)

    def _skipped(self, path: str) -> None:
        self.skipped_other += 1

    def _problem(self, p: ScanProblem) -> None:
        self.problem_paths.append(os.path.abspath(p.path))
        self.problems.put(p)

    def _flush(self, conn: sqlite3.Connection, batch) -> None:
        if not batch:
            return
        keys = [os.fsencode(p) for p, _ in batch]
        known = queries.known_sources(conn, keys)
        for (path, st), key in zip(batch, keys):
            self.found += 1
            k = known.get(key)
            # a 'missing' source that is back is processed again: its status and its thumbnail's
            # metadata become 'ok' in the writer
            if (
                k is not None and st is not None and k[3] == "ok" and k[1] == st.st_size
                and k[2] == st.st_mtime_ns and k[4] not in self.force_ids
            ):
                self.n_unchanged += 1
                self.unchanged.put(k[0])
                continue
            while not self.stop.is_set():
                try:
                    self.todo.put(path, timeout=0.5)
                    break
                except queue.Full:
                    continue


def _open_or_import(out: Path) -> Catalog:
    """Open the catalog; a THUMBS folder with thumbnails but no catalog is rebuilt from them first
    (with the vectors already on disk, like ``nearsort rebuild``)."""
    fresh = not catalog_path(out).exists()
    cat = Catalog.open(out, create=True)
    if fresh and next(iter_thumb_files(out), None) is not None:
        with cat.tx():
            import_tree(cat)
            reattach_vectors(cat)
    return cat


class _Writer:
    """Applies worker results to THUMBS and the catalog (this process only)."""

    def __init__(self, cat: Catalog, layout: str, run_id: int, summary: ResizeResult):
        self.cat, self.layout, self.run_id, self.s = cat, layout, run_id, summary
        self.dirty: set[int] = set()
        self.pending: dict[int, tuple[bytes, int]] = {}  # thumb id -> (jpeg, mtime_ns) to write
        # thumb id -> pixel_print of the thumbnails met in name collisions (3 KiB each, at most
        # PRINTS_KEPT): many different uniform frames of one size are each decoded once
        self.prints: dict[int, object] = {}
        self.in_tx = False
        self.n_in_tx = 0
        self.committed = 0  # results of this run safely in the catalog
        self.last_commit = time.monotonic()

    def begin(self) -> None:
        if not self.in_tx:
            self.cat.begin()
            self.in_tx = True

    def add(self, r: FileResult) -> None:
        self.begin()
        key = os.fsencode(r.path)
        prev = queries.source_by_path(self.cat, key)
        if prev and prev[1] is not None:
            self.dirty.add(prev[1])  # its metadata must drop or update this path
        if r.error:
            self.s.errors += 1
            if len(self.s.error_samples) < 20:
                self.s.error_samples.append({"path": r.path, "error": r.error})
            queries.record_source_error(self.cat, key, r.size, r.mtime_ns, r.error, self.run_id)
        else:
            self.s.processed += 1
            oid, thumb_id = self._original(r)
            queries.record_source_ok(self.cat, key, oid, r.size, r.mtime_ns, self.run_id)
            self.dirty.add(thumb_id)
        self.n_in_tx += 1
        if self.n_in_tx >= COMMIT_EVERY or time.monotonic() - self.last_commit > COMMIT_SECONDS:
            self.flush()

    def _original(self, r: FileResult) -> tuple[int, int]:
        row = queries.original_by_hash(self.cat, r.content_hash)
        if row:
            self.s.merged += 1
            thumb_id = row[1]
            rel = queries.thumb_relpath(self.cat, thumb_id)
            if not (self.cat.root / rel).exists() and thumb_id not in self.pending:
                self.pending[thumb_id] = (r.jpeg, r.mtime_ns)  # the user deleted it: make it again
            return row[0], thumb_id
        # the same size and phash is not the same picture (uniform frames all hash alike): share a
        # thumbnail only with one whose pixels agree, else take the next free '_n' name. Of several
        # that agree (consecutive video frames often do with a coarse re-encode of one of them), the
        # one that moves least from this file's thumbnail: its own frame, not the next one.
        taken: set[str] = set()
        thumb_id = mine = None
        least = math.inf
        moment = exposure_moment(r.exif)
        for tid, tname in queries.thumbs_named_like(self.cat, r.name):
            taken.add(tname)
            if moment is not None and self._other_moment(tid, r, moment):  # a burst frame: its own name
                continue
            mine = pixel_print(r.jpeg) if mine is None else mine
            moved = self._same_picture(tid, mine, r.jpeg, r.path)
            if moved is not None and moved < least:
                thumb_id, least = tid, moved
        if thumb_id is not None:
            self.s.merged += 1
        else:
            n = 1
            while thumb_name(r.width, r.height, r.phash, n) in taken:
                n += 1
            name = thumb_name(r.width, r.height, r.phash, n)
            folder = layout_folder(self.layout, r.phash, r.capture_time, r.mtime_ns)
            relpath = f"{folder}/{name}{THUMB_EXT}"
            target = self.cat.root / relpath
            if target.exists():  # a thumbnail the catalog did not know: keep what it carries
                try:
                    meta = thumbmeta.read(target)
                except Exception:
                    meta = None
                if meta and meta.get("name") == name:
                    thumb_id = import_meta(self.cat, relpath, meta, self.run_id)
                    return self._original(r)
            thumb_id = queries.add_thumb(self.cat, name, relpath, r.tw, r.th, r.brightness, r.contrast, r.blur)
            self.pending[thumb_id] = (r.jpeg, r.mtime_ns)
            self.s.new_thumbnails += 1
        gps = r.gps or (None, None)
        oid = queries.add_original(self.cat, r.content_hash, thumb_id, r.width, r.height, r.format, r.size, r.phash,
                                   r.capture_time, r.make, r.model, gps[0], gps[1], json.dumps(r.exif, sort_keys=True))
        return oid, thumb_id

    def _other_moment(self, thumb_id: int, r: FileResult, moment: int) -> bool:
        """Was ``r``, taken at ``moment`` (``decode.exposure_moment``), taken at another moment than
        every original thumbnail ``thumb_id`` shows, by the same camera (``decode.other_moments``)?
        Then it is another exposure (a burst frame, the next shot of a still scene), never the same
        picture."""
        def theirs(exif_json) -> int | None:
            try:
                tags = json.loads(exif_json) if exif_json else None
            except ValueError:
                return None
            return exposure_moment(tags) if isinstance(tags, dict) else None

        return other_moments([(r.make, r.model, moment)],
                             [(o["make"], o["model"], theirs(o["exif_json"]))
                              for o in queries.originals_of_thumb(self.cat, thumb_id)])

    def _same_picture(self, thumb_id: int, mine, jpeg: bytes, path: str) -> float | None:
        """Does thumbnail ``thumb_id`` (pending in this batch, else its file) show the picture whose
        thumbnail is ``jpeg`` (``pixel_print`` ``mine``, original at ``path``)? The prints first
        (cached), then, when they agree, whether a part moved (``still``: two frames of a video
        share size, phash and print), then the same on the two originals (:meth:`_originals_still`).
        Returns how far the two thumbnails move (``frames.fine_motion``) when they are one
        picture, else None. A thumbnail or original that cannot be read proves nothing: None."""
        def data() -> bytes | None:
            if thumb_id in self.pending:
                return self.pending[thumb_id][0]
            rel = queries.thumb_relpath(self.cat, thumb_id)
            try:
                return (self.cat.root / rel).read_bytes()
            except OSError:
                return None

        p, theirs = self.prints.get(thumb_id), None
        if p is None:
            theirs = data()
            try:
                p = pixel_print(theirs) if theirs is not None else None
            except Exception:  # a damaged thumbnail file
                p = None
            if p is None:
                return None
            if len(self.prints) >= PRINTS_KEPT:
                self.prints.clear()
            self.prints[thumb_id] = p
        if not prints_agree(p, mine):
            return None
        theirs = data() if theirs is None else theirs
        if theirs is None:
            return None
        try:
            with Image.open(io.BytesIO(theirs)) as a, Image.open(io.BytesIO(jpeg)) as b:
                fit: list = []
                if frame_motion(a, b, fit) > MAX_MOTION:  # frames.still: a part moved
                    return None
                moved = fine_motion(a, b, fit)
        except Exception:  # noqa: BLE001 - a damaged thumbnail file proves nothing
            return None
        if moved > ORIGINAL_SCREEN and not self._originals_still(thumb_id, path):
            return None
        return None if self._recoded(thumb_id, path) else moved

    def _recoded(self, thumb_id: int, path: str) -> bool:
        """Is the original at ``path`` a JPEG of the same encoding as one of thumbnail ``thumb_id``'s,
        changed beyond a re-save (:func:`frames.recoded_files`: two frames of one encoder, however
        still)? Only the headers are read unless the encodings match."""
        others = [bytes(o) for o, status in queries.sources_of_thumb(self.cat, thumb_id)
                  if status == "ok" and bytes(o) != os.fsencode(path)]
        share = recoded_files(others, [path]) if others else None  # the first readable of them
        return share is not None and share > RECODE_SHARE

    def _originals_still(self, thumb_id: int, path: str) -> bool:
        """Did no part move between the original at ``path`` and one of thumbnail ``thumb_id``'s
        (:func:`frames.fine_motion`)? Asked when the two thumbnails seem to move at ORIGINAL_SIDE:
        consecutive video frames whose motion is sub-pixel at thumbnail size differ here. Two
        decodes at ORIGINAL_DECODE px per such collision; an original that cannot be read (it
        moved, the disk is gone) proves nothing: the new file gets a name of its own."""
        mine = decode_file(path, ORIGINAL_DECODE).image
        for other, status in queries.sources_of_thumb(self.cat, thumb_id):
            if status != "ok" or bytes(other) == os.fsencode(path):
                continue
            try:
                theirs = decode_file(bytes(other), ORIGINAL_DECODE).image
            except Exception:  # noqa: BLE001 - try its next copy
                continue
            return fine_motion(theirs, mine) <= MAX_MOTION
        return False

    def mark_unchanged(self, ids: list[int]) -> None:
        if ids:
            self.begin()
            queries.mark_sources_seen(self.cat, self.run_id, ids)

    def add_problem(self, p: ScanProblem) -> None:
        self.add(FileResult(p.path, 0, 0, error=p.reason))

    def flush(self) -> None:
        """Write pending thumbnails + rewritten metadata, then commit."""
        if not self.in_tx:
            return
        for thumb_id in sorted(self.dirty | set(self.pending)):
            rel = queries.thumb_relpath(self.cat, thumb_id)
            if rel is None:
                continue
            path = self.cat.root / rel
            meta = thumb_meta(self.cat, thumb_id)
            if thumb_id in self.pending:
                jpeg, mtime_ns = self.pending[thumb_id]
                thumbmeta.write_atomic(path, thumbmeta.embed(jpeg, meta), mtime_ns=mtime_ns)
            elif path.exists():
                thumbmeta.rewrite(path, meta)
        self.cat.commit()
        self.committed += self.n_in_tx
        self.in_tx = False
        self.dirty.clear()
        self.pending.clear()
        self.n_in_tx = 0
        self.last_commit = time.monotonic()

    def tick(self) -> None:
        """Commit what is pending if it has waited long enough (called while no result arrives)."""
        if self.in_tx and time.monotonic() - self.last_commit > COMMIT_SECONDS:
            self.flush()

    def abort(self) -> None:
        if self.in_tx:
            self.cat.rollback()
            self.in_tx = False
            self.dirty.clear()
            self.pending.clear()
            self.prints.clear()  # thumb ids rolled back here are given out again


def resize(
    src: str | os.PathLike,
    thumbs: Thumbs,
    *,
    size: int = 256,
    layout: str = "week",
    workers: int | None = None,
    quality: int = 85,
    timeout: float | None = FILE_TIMEOUT,
    progress: Progress | None = None,
    engine: str = "local",
    address: str | None = None,
) -> ResizeResult:
    """Make a thumbnail in THUMBS (a path, created if needed, or an open Catalog) of every new or
    changed photo under ``src``; return a :class:`ResizeResult`.

    ``progress("resize", done, total)`` is called as results arrive (``total`` is None until the
    scan has finished). A local decoder that spends more than ``timeout`` seconds on one file
    (None: no limit) is killed: the file is recorded as an error and the run goes on. Raises
    :class:`~nearsort.errors.Interrupted` (a KeyboardInterrupt) on Ctrl-C after committing
    everything finished so far.

    ``engine``: ``local`` (``workers`` processes here, default all cores) or ``ray`` (a Ray task per
    file on the cluster at ``address``, at most ``workers`` at a time, default one per CPU of the
    cluster; every worker must see ``src`` at the same path): see :mod:`nearsort.engine`. This
    process writes every thumbnail and the catalog either way.
    """
    engine = engines.check(engine, address)
    if layout not in ("week", "hash"):
        raise BadArgument("--layout must be 'week' or 'hash'")
    if not 16 <= size <= 4096:
        raise BadArgument("--size must be between 16 and 4096")
    if timeout is not None and not timeout > 0:
        raise BadArgument("--timeout must be a positive number of seconds")
    given = thumbs if isinstance(thumbs, Catalog) else None
    if given is not None and not given.writable:
        raise CatalogError(f"resize writes to the catalog of {given.root}: open it with Catalog.open(THUMBS)")
    src_abs = os.path.abspath(os.fspath(src))
    out = (given.root if given is not None else Path(thumbs)).absolute()
    if not os.path.exists(src_abs):
        raise FileNotFoundError(f"source folder {src_abs} does not exist (is the NAS mounted?)")
    check_thumbs_folder(out)
    _check_apart(src_abs, out)
    out.mkdir(parents=True, exist_ok=True)
    if engine == "local":
        workers = max(1, workers or os.cpu_count() or 1)
    elif workers is not None and workers < 1:
        raise BadArgument("--workers must be >= 1")
    summary = ResizeResult(src=src_abs, out=str(out))
    t0 = time.monotonic()
    cat = given if given is not None else _open_or_import(out)
    try:
        rec = reconcile(cat)
        force = set(rec["missing"])  # sources whose thumbnail file was deleted get it back
        run_id = queries.start_run(cat, "resize")
        writer = _Writer(cat, layout, run_id, summary)
        scanner = _Scanner(src_abs, [str(out)], catalog_path(out), force)
        status = "done"
        done = 0
        stop = _StopFlag()
        # Results are applied in the order the files were found (sorted per folder), not the order
        # the workers finish them: which earlier thumbnail a file's name collides with, and so every
        # '_n' name and shared thumbnail, is then the same whatever the number of workers or their
        # timing. A slow file holds back at most HELD results behind it (the workers go on meanwhile).
        held: dict[int, FileResult] = {}  # place in the scan order -> finished, waiting for an earlier file
        found = applied = 0
        try:
            # The workers are forked before the scanner thread starts (fork with no other thread
            # running is safe), so they start instantly with every module already loaded. A worker
            # killed by a crashing decoder (or the OOM killer) is replaced; its file is retried once,
            # then recorded as an error (on Ray: a task whose Ray worker dies, likewise); a local
            # worker stuck on a file for ``timeout`` seconds is killed and replaced, and that file is
            # an error at once.
            pool = (engines.RayWorkers(_work, n=workers, depth=QUEUED, address=address) if engine == "ray"
                    else Workers(workers or 1, _work, depth=QUEUED, timeout=timeout))
            with stop, pool:
                scanner.start()
                scanning = True
                while True:
                    if scanner.done:  # every file left is known: a fair share each, so none ends alone
                        pool.depth = max(1, min(QUEUED, scanner.todo.qsize() // (pool.n or 1)))
                    while scanning and pool.room() and len(held) < HELD:
                        try:
                            p = scanner.todo.get_nowait()
                        except queue.Empty:
                            break
                        if p is None:
                            scanning = False
                        else:
                            pool.submit((p, size, quality, found))
                            found += 1
                    if not scanning and not pool.busy():
                        break
                    # a short wait while workers could take more than the scanner has found yet
                    answers = pool.results(0.02 if scanning and pool.room() else 0.5)
                    for (path, _, _, place), res in answers:
                        held[place] = _lost(path, res) if isinstance(res, (Died, Hung)) else res
                    while applied in held:
                        writer.add(held.pop(applied))
                        applied += 1
                        done += 1
                    _drain(scanner, writer)
                    if answers and progress:
                        progress("resize", done, scanner.found - scanner.n_unchanged if scanner.done else None)
                    if not answers:
                        writer.tick()  # every worker is on a slow file: commit what is pending
                    if stop.requested:
                        raise KeyboardInterrupt
                _drain(scanner, writer)
                writer.flush()
            if scanner.error:
                raise scanner.error
        except KeyboardInterrupt:
            scanner.stop.set()
            status = "interrupted"
            for k in sorted(held):  # everything finished so far is kept
                writer.add(held.pop(k))
            writer.flush()
        except BaseException as e:
            scanner.stop.set()
            try:
                writer.abort()
                queries.finish_run(cat, run_id, "failed")
            except sqlite3.Error:
                pass  # a full disk or a damaged catalog: the first error is the one to report
            if is_disk_full(e, out):
                raise DiskFull(e, out, kept=f"the {writer.committed} photos committed before it were kept "
                                            "(their thumbnails and the catalog agree)") from e
            raise
        summary.scanned = scanner.found
        summary.skipped_other_files = scanner.skipped_other
        if status == "done":  # only a completed scan knows what is gone
            summary.missing = _mark_missing(cat, src_abs, run_id, scanner.problem_paths)
        summary.status = status
        summary.seconds = round(time.monotonic() - t0, 3)
        summary.images_per_second = round(summary.processed / summary.seconds, 2) if summary.seconds else 0.0
        queries.finish_run(cat, run_id, status, json.dumps(summary.to_dict()))
    finally:
        if given is None:
            cat.close()
    if status == "interrupted":
        raise Interrupted(summary)
    return summary


def _mark_missing(cat: Catalog, src_abs: str, run_id: int, unlisted: list[str]) -> int:
    """Mark 'missing' the ok/error sources below ``src_abs`` that this completed scan did not see
    (kept as history; never photos, never keepers). Files below a folder the scan could not list
    were not looked at, so they are left as they are. Returns how many were marked."""
    lo, hi = _prefix_range(os.fsencode(src_abs))
    blocked = [_prefix_range(os.fsencode(f)) for f in unlisted]
    gone = [(sid, oid) for sid, path, oid in queries.unseen_sources(cat, lo, hi, run_id)
            if not any(a <= bytes(path) < b for a, b in blocked)]
    if not gone:
        return 0
    with cat.tx():
        queries.set_sources_status(cat, [sid for sid, _ in gone], "missing")
        tids = queries.thumbs_of_originals(cat, sorted({oid for _, oid in gone if oid is not None}))
        for tid in sorted(tids):  # the thumbnails carry their sources' status (rebuild)
            try:
                write_thumb_meta(cat, tid)
            except (OSError, ValueError, TypeError):
                pass  # a thumbnail the user deleted: the next resize makes it again
    return len(gone)


def _check_apart(src_abs: str, out: Path) -> None:
    """SRC and THUMBS must not be the same folder, and SRC must not lie inside THUMBS (refresh and
    undo move files inside THUMBS; photos there would be read back as thumbnails and vice
    versa). THUMBS inside SRC is fine: the scan skips it."""
    src_real, out_real = os.path.realpath(src_abs), os.path.realpath(out)
    same = src_real == out_real
    if not same and os.path.isdir(out):
        try:
            same = os.path.samefile(src_abs, out)
        except OSError:
            pass
    if same:
        raise CatalogError(
            f"SRC and THUMBS are the same folder ({src_abs}): thumbnails would be mixed with your photos; "
            f"give --out a folder of its own, e.g. {os.path.join(src_abs, 'thumbs')} (the scan skips a THUMBS "
            "inside SRC)")
    if os.path.commonpath([src_real, out_real]) == out_real:
        raise CatalogError(
            f"SRC {src_abs} is inside THUMBS {out}: nearsort renames and moves files inside THUMBS, so photos "
            "must not live there; give --out a folder that does not contain SRC")


class _StopFlag:
    """First Ctrl-C asks the loop to stop after the current result (never mid-write);
    a second one interrupts at once. Only installed when running in the main thread."""

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import signal

        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _drain(scanner: _Scanner, writer: _Writer) -> None:
    ids = []
    try:
        while True:
            ids.append(scanner.unchanged.get_nowait())
    except queue.Empty:
        pass
    if ids:
        writer.s.unchanged += len(ids)
        writer.mark_unchanged(ids)
    try:
        while True:
            writer.add_problem(scanner.problems.get_nowait())
    except queue.Empty:
        pass
