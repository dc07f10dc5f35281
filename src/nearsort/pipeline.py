"""``run``: every stage in one call -- resize -> featurize -> analyze -> dupes + quality -> refresh.

The stages are the public ones of :mod:`nearsort`, run on one catalog (opened once, after resize
made it); dupes and quality only *find* (nothing is quarantined), and refresh is a dry run
unless ``apply``. Ctrl-C in any stage raises :class:`~nearsort.stage.Interrupted` whose
``result`` is the :class:`RunResult` so far (everything finished is kept: run again to continue).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from nearsort.dupes.group import DupesConfig, DupesResult, find_duplicates
from nearsort.embed.featurize import FeaturizeResult, featurize
from nearsort.ingest.resize import ResizeResult, resize
from nearsort.order.analyze import AnalyzeResult, analyze
from nearsort.quality import QualityResult, assess_quality
from nearsort.refresh import DEFAULT_PER_PAGE, RefreshResult, refresh_names
from nearsort.stage import Progress, Result
from nearsort.errors import Interrupted
from nearsort.store.catalog import Catalog, Thumbs, open_catalog


@dataclass
class RunResult(Result):
    """Each stage's result (None: not run, or not reached)."""

    resize: Optional[ResizeResult] = None
    featurize: Optional[FeaturizeResult] = None
    analyze: Optional[AnalyzeResult] = None
    dupes: Optional[DupesResult] = None
    quality: Optional[QualityResult] = None
    refresh: Optional[RefreshResult] = None    # a dry run (``plan``) unless ``apply``


def run(src: str | os.PathLike, thumbs: Thumbs, *, model: str = "auto", device: str = "auto",
        workers: Optional[int] = None, layout: str = "week", fast: bool = False, dupes: bool = True,
        quality: bool = True, apply: bool = False, per_page: int = DEFAULT_PER_PAGE, backend: str = "auto",
        progress: Optional[Progress] = None, engine: str = "local", address: Optional[str] = None) -> RunResult:
    """``nearsort run``: thumbnails of every new or changed photo under ``src`` in THUMBS (a path,
    created if needed, or an open Catalog), their embeddings (``model``), one similarity chain,
    the duplicate groups and quality lists (``dupes``, ``quality``: find only), then the refresh
    plan -- applied (thumbnails renamed into page folders) only with ``apply``. ``backend``: see
    :func:`~nearsort.embed.featurize.featurize`; ``engine``, ``address``: where resize and featurize
    run their per-file work (:mod:`nearsort.engine`; the other stages run here).
    ``progress(stage, done, total)`` hears every stage."""
    res = RunResult()
    stage = "resize"  # the stage running (an Interrupted one leaves its partial result there)
    try:
        res.resize = resize(src, thumbs, layout=layout, workers=workers, progress=progress, engine=engine,
                            address=address)
        root = thumbs if isinstance(thumbs, Catalog) else res.resize.out
        with open_catalog(root, write=True) as cat:
            stage = "featurize"
            res.featurize = featurize(cat, model=model, device=device, backend=backend, progress=progress,
                                      workers=workers, engine=engine, address=address)
            res.analyze = analyze(cat, model=res.featurize.model, fast=fast, progress=progress)
            if dupes:
                res.dupes = find_duplicates(cat, DupesConfig(model=res.featurize.model, workers=workers),
                                            progress=progress)
            if quality:
                res.quality = assess_quality(cat)
            res.refresh = refresh_names(cat, dry_run=not apply, per_page=per_page, progress=progress)
    except Interrupted as e:
        setattr(res, stage, e.result)
        raise Interrupted(res) from None
    return res
