"""nearsort: sort huge photo libraries by visual similarity -- originals are only ever read.

Every stage is a function here (the CLI command of the same job only parses, calls it and prints).
Each takes THUMBS -- the thumbnail folder, or an open :class:`Catalog` (``Catalog.open(THUMBS)``;
a stage that writes needs it opened for writing, the default) -- and returns a dataclass whose
``to_dict()`` is what ``--json`` prints. Long stages take ``progress(stage, done, total)``
(:data:`Progress`; ``total`` None while unknown). Ctrl-C raises :class:`Interrupted` once
everything finished is committed (``.result``: what was done).

Stages (CLI command in brackets):

* ``resize(src, thumbs)`` -> ResizeResult [resize]: a thumbnail of every new or changed photo under src
* ``rebuild(thumbs)`` -> RebuildResult [rebuild]: recreate the catalog from the thumbnails' own metadata
* ``featurize(thumbs)`` -> FeaturizeResult [featurize]: embed every thumbnail without a vector yet
* ``analyze(thumbs)`` -> AnalyzeResult [analyze]: order all thumbnails into one chain, store the ranks
* ``refresh_names(thumbs)`` -> RefreshResult [refresh]: rename thumbnails {rank}_{name} in chain order
* ``undo(thumbs)`` -> UndoResult [undo]: revert the last refresh, reset or quarantine exactly
* ``find_duplicates(thumbs)`` -> DupesResult [dupes]: duplicate groups, each with its keeper
* ``quarantine(thumbs, dest)`` -> DupesResult [dupes --move-to]: move the non-keepers' originals aside
* ``group_page(thumbs)`` -> GroupPage [review]: stored duplicate groups, worst first, page by page;
  ``decide(thumbs, group_id, action)`` -> Decision, ``undo_decision``, ``accept_all``, ``refresh_groups``,
  ``groups_state``, ``pending_summary``, ``apply_decisions(thumbs, dest)`` -> QuarantineResult
* ``assess_quality(thumbs)`` -> QualityResult [quality]: dark, overexposed, blurry photos; unreadable files
* ``write_report(thumbs, out)`` -> ReportResult [report]: one self-contained HTML page
* ``export(thumbs, csv_path, json_path)`` -> ExportResult [export]: one row per source file
* ``search(thumbs, text)`` -> SearchResult [search]: thumbnails matching a text (CLIP; ImageNet labels)
* ``similar(thumbs, image)`` -> SimilarResult [similar]: thumbnails nearest to an image
* ``list_tags(thumbs)`` -> TagsResult [tags]: tags harvested from your own folder names
* ``list_errors(thumbs)`` -> ErrorsResult [errors]: files that could not be made into thumbnails
* ``info(thumbs)`` -> InfoResult [info]: what the catalog holds
* ``run(src, thumbs)`` -> RunResult [run]: resize -> featurize -> analyze -> dupes + quality -> refresh

Example::

    import nearsort
    nearsort.resize("/mnt/nas/photos", "thumbs")
    nearsort.featurize("thumbs")
    nearsort.analyze("thumbs")
    print(nearsort.find_duplicates("thumbs").summary["groups"], "duplicate groups")
    nearsort.refresh_names("thumbs")   # nearsort.undo("thumbs") reverts it
"""
from nearsort.dupes.group import DupesConfig, DupesResult, QuarantineResult, find_duplicates
from nearsort.dupes.quarantine import quarantine
from nearsort.embed.featurize import FeaturizeResult, featurize
from nearsort.embed.search import SearchResult, SimilarResult, search, similar
from nearsort.errors import (BadArgument, CatalogError, CatalogLocked, DupesError, EngineError, Interrupted,
                             NearsortError, RefreshError)
from nearsort.export import ExportResult, InfoResult, export, info
from nearsort.ingest.resize import ResizeResult, resize
from nearsort.order.analyze import AnalyzeResult, analyze
from nearsort.pipeline import RunResult, run
from nearsort.quality import ErrorsResult, QualityResult, Thresholds, assess_quality, list_errors
from nearsort.refresh import RefreshResult, TagsResult, UndoResult, list_tags, refresh_names, undo
from nearsort.report.build import ReportResult, write_report
from nearsort.review.decisions import (Decision, GroupPage, GroupsState, accept_all, apply_decisions, decide,
                                       get_group, group_page, groups_state, pending_summary, refresh_groups,
                                       undo_decision)
from nearsort.stage import Progress, Result
from nearsort.store.catalog import Catalog, Thumbs
from nearsort.store.sync import RebuildResult, rebuild

__version__ = "0.1.0"
__all__ = [
    # stages, in pipeline order
    "resize", "rebuild", "featurize", "analyze", "refresh_names", "undo", "find_duplicates", "quarantine",
    "assess_quality", "write_report", "export", "search", "similar", "list_tags", "list_errors", "info", "run",
    "group_page", "get_group", "groups_state", "refresh_groups", "decide", "undo_decision", "accept_all",
    "pending_summary", "apply_decisions",
    # their results and options
    "ResizeResult", "RebuildResult", "FeaturizeResult", "AnalyzeResult", "RefreshResult", "UndoResult",
    "DupesResult", "QuarantineResult", "DupesConfig", "QualityResult", "Thresholds", "ReportResult",
    "ExportResult", "SearchResult", "SimilarResult", "TagsResult", "ErrorsResult", "InfoResult", "RunResult",
    "GroupPage", "GroupsState", "Decision",
    # shared
    "Catalog", "Thumbs", "Progress", "Result", "Interrupted",
    "NearsortError", "CatalogError", "CatalogLocked", "BadArgument", "DupesError", "RefreshError", "EngineError",
]
