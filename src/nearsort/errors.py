"""Every exception nearsort raises on purpose, in one hierarchy (importable by every module).

``NearsortError`` is the root. ``CatalogError`` and its subclasses are problems a user must see as
one clear line (the CLI prints their message, never a traceback); the modules that raise them
re-export them (``nearsort.store.catalog.CatalogLocked``, ``nearsort.refresh.RefreshError`` ...).
``Interrupted`` (Ctrl-C during a long stage) is a ``KeyboardInterrupt``, so code that does not
know it still stops; it carries the result of what was committed.
"""
from __future__ import annotations

import os
from pathlib import Path


class NearsortError(RuntimeError):
    """Root of nearsort's own errors."""


class CatalogError(NearsortError):
    """A problem a user must see as a clear message (not a traceback)."""


class CatalogLocked(CatalogError):
    """Another nearsort process holds the catalog's writer lock."""


class DiskFull(CatalogError):
    """No space left on THUMBS' disk; the message says what was kept and how to go on."""

    def __init__(self, exc: BaseException, where, kept: str = "everything finished before was kept"):
        what = getattr(exc, "filename", None) or where
        super().__init__(f"no space left on the disk while writing {what}: {kept}; free some space "
                         "and run the same command again to continue")


class CatalogDamaged(CatalogError):
    """The catalog file ``path`` of THUMBS ``root`` is not a readable SQLite database;
    ``nearsort rebuild`` recreates it."""

    def __init__(self, root: os.PathLike | str, reason: str, path: os.PathLike | str):
        self.root, self.reason, self.path = Path(root), reason, Path(path)
        super().__init__(f"catalog {path} is damaged ({reason}): run `nearsort rebuild {root}` "
                         "(it recreates the catalog from the thumbnails and keeps the damaged file aside)")


class RefreshError(CatalogError):
    """A refusal of refresh / undo, or a journaled move that could not be made (the op is left
    resumable; the message says how to finish or revert it)."""


class DupesError(CatalogError):
    """A refusal of dupes / quarantine (nothing was moved)."""


class VectorStoreError(CatalogError):
    """Vector store / index problem worth a clear message."""


class ModelUnavailable(CatalogError):
    """A model cannot be loaded (unknown name, weights missing / offline)."""


class EngineError(CatalogError):
    """The ``ray`` engine cannot run: Ray is not installed, the cluster cannot be reached, or its
    workers cannot do the work (everything committed before is kept; the message says what to do)."""


class BadArgument(CatalogError, ValueError):
    """An argument out of range; the message names the option. Raised before anything is opened
    or written (a ValueError too, for callers of the Python API)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a stage (resize, featurize, run), raised once everything finished is
    committed; ``result`` is the stage's result dataclass so far (``status`` 'interrupted')."""

    def __init__(self, result):
        super().__init__("interrupted")
        self.result = result
