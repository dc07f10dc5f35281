"""File-system helpers every module may use (it imports nothing of nearsort)."""
from __future__ import annotations

import os


def fsync_dir(path) -> None:
    """Make the entries just created, renamed or removed in folder ``path`` durable (POSIX).

    A no-op where folders cannot be opened or synced (Windows, some network filesystems): the
    files themselves were fsynced by the caller, only their names' durability is best effort."""
    if os.name != "posix":
        return
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
