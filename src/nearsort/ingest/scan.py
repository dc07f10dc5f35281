"""Walking a photo library (often a read-only NAS mount) -- read-only, loop-safe.

Follows symlinked folders (libraries often use them) but never enters the same folder
twice (device + inode), so symlink loops end. Skips THUMBS if it lies inside SRC, and
hidden/system folders (``.nearsort``, ``@eaDir``, ``.thumbnails``...). Unreadable folders
and broken links are reported, not fatal. Special files (a FIFO, socket or device named like a
photo) are reported without ever being opened: opening a FIFO blocks until someone writes to it.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterator

from nearsort.ingest.decode import SUPPORTED_EXTS

SKIP_DIRS = {".nearsort", "@eaDir", ".thumbnails", ".Trash", ".Trashes", "$RECYCLE.BIN", ".git", "__MACOSX"}


@dataclass
class ScanProblem:
    path: str
    reason: str


def special_file(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is no photo (never to be opened), or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "not a regular file")
    return f"{kind}, not a photo file: skipped without opening it"


def _check_file(entry: os.DirEntry) -> ScanProblem | None:
    try:
        st = entry.stat(follow_symlinks=True)
    except OSError:
        return None  # vanished or unreadable: the worker reports it precisely
    why = special_file(st.st_mode)
    return ScanProblem(entry.path, why) if why else None


def walk_images(
    root: str,
    exclude: list[str] | None = None,
    on_problem: Callable[[ScanProblem], None] | None = None,
    on_skipped: Callable[[str], None] | None = None,
) -> Iterator[os.DirEntry]:
    """Yield DirEntry objects of supported image files below ``root`` in a stable order."""
    excl = set()
    for e in exclude or []:
        try:
            st = os.stat(e)
            excl.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    seen: set[tuple[int, int]] = set()
    report = on_problem or (lambda p: None)
    try:
        st = os.stat(root)
    except OSError as e:
        raise FileNotFoundError(f"cannot open the source folder {root!r}: {e.strerror or e}") from None
    if not os.path.isdir(root):
        if os.path.splitext(root)[1].lower() in SUPPORTED_EXTS:
            # a single file given as SRC
            parent = os.path.dirname(os.path.abspath(root)) or "."
            for entry in os.scandir(parent):
                if entry.name == os.path.basename(root):
                    problem = _check_file(entry)
                    if problem:
                        report(problem)
                    else:
                        yield entry
            return
        raise NotADirectoryError(f"{root!r} is not a folder")
    stack = [root]
    seen.add((st.st_dev, st.st_ino))
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            report(ScanProblem(folder, "permission denied (folder)"))
            continue
        except OSError as e:
            report(ScanProblem(folder, f"cannot list folder: {e.strerror or e}"))
            continue
        subdirs = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:
                is_dir = False
            if is_dir:
                if entry.name in SKIP_DIRS:
                    continue
                try:
                    dst = entry.stat(follow_symlinks=True)
                except OSError as e:
                    report(ScanProblem(entry.path, f"cannot open folder: {e.strerror or e}"))
                    continue
                key = (dst.st_dev, dst.st_ino)
                if key in seen or key in excl:
                    continue  # symlink loop, folder seen via another link, or THUMBS itself
                seen.add(key)
                subdirs.append(entry.path)
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if ext not in SUPPORTED_EXTS:
                if on_skipped:
                    on_skipped(entry.path)
                continue
            if entry.name.startswith("._"):  # macOS resource forks
                continue
            if entry.is_symlink() and not os.path.exists(entry.path):
                report(ScanProblem(entry.path, "broken symbolic link"))
                continue
            problem = _check_file(entry)
            if problem:
                report(problem)
                continue
            yield entry
        stack.extend(reversed(subdirs))
