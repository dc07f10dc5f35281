"""nearsort: sort huge photo libraries by visual similarity.

Public API (usable without the CLI)::

    from nearsort import resize, rebuild, export, Catalog
    resize("/mnt/nas/photos", "~/thumbs")
"""
from nearsort.errors import CatalogError, CatalogLocked, Interrupted, NearsortError
from nearsort.store.catalog import Catalog
from nearsort.export import export
from nearsort.ingest.resize import resize
from nearsort.store.sync import rebuild

__version__ = "0.1.0"
__all__ = ["Catalog", "CatalogError", "CatalogLocked", "Interrupted", "NearsortError", "export", "rebuild", "resize"]
