"""nearsort: sort huge photo libraries by visual similarity.

Public API (usable without the CLI)::

    from nearsort import resize, rebuild, export, Catalog
    resize("/mnt/nas/photos", "~/thumbs")
"""
from nearsort.errors import BadArgument, CatalogError, CatalogLocked, Interrupted, NearsortError
from nearsort.order.analyze import AnalyzeResult, analyze
from nearsort.store.catalog import Catalog
from nearsort.dupes.group import DupesConfig, DupesResult, QuarantineResult, find_duplicates
from nearsort.dupes.quarantine import quarantine
from nearsort.embed.featurize import FeaturizeResult, featurize
from nearsort.embed.search import SearchResult, SimilarResult, search, similar
from nearsort.export import ExportResult, InfoResult, export, info
from nearsort.ingest.resize import ResizeResult, resize
from nearsort.pipeline import RunResult, run
from nearsort.quality import ErrorsResult, QualityResult, Thresholds, assess_quality, list_errors
from nearsort.refresh import RefreshResult, TagsResult, UndoResult, list_tags, refresh_names, undo
__all__ = ["AnalyzeResult", "BadArgument", "Catalog", "CatalogError", "CatalogLocked", "DupesConfig", "DupesResult",
           "ErrorsResult", "ExportResult", "FeaturizeResult", "InfoResult", "Interrupted", "NearsortError",
           "Progress", "QualityResult", "QuarantineResult", "RebuildResult", "RefreshResult", "ReportResult",
           "ResizeResult", "Result", "RunResult", "SearchResult", "SimilarResult", "TagsResult", "Thresholds",
           "UndoResult", "analyze", "assess_quality", "export", "featurize", "find_duplicates", "info",
           "list_errors", "list_tags", "quarantine", "rebuild", "refresh_names", "resize", "run", "search",
           "similar", "undo", "write_report"]
