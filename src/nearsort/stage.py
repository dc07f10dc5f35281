"""What every stage of the public API shares (a base module: it imports nothing of nearsort).

* :data:`Progress` -- ``progress(stage, done, total)``: the one progress callback of every stage
  (``total`` is None while unknown, e.g. before resize's scan has finished); :func:`ticker` binds
  the stage name for the inner loops' ``(done, total)`` callbacks.
* :class:`Result` -- the base of each stage's dataclass result; ``to_dict()`` is what ``--json`` prints.

A stage's THUMBS argument (a folder or an open Catalog) is opened by
``store.catalog.open_catalog``; its errors (``BadArgument``, ``Interrupted`` ...) are in ``errors``.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

Progress = Callable[[str, int, Optional[int]], None]


def ticker(progress: Optional[Progress], stage: str) -> Optional[Callable[..., None]]:
    """``progress`` bound to ``stage``, as the ``(done, total)`` callback the inner loops call."""
    if progress is None:
        return None
    return lambda done, total=None, *_: progress(stage, int(done), None if total is None else int(total))


@dataclasses.dataclass
class Result:
    """Base of the stages' results: plain dataclasses whose fields are the ``--json`` keys."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
