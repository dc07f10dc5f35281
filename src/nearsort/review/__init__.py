"""``review``: decide the duplicate groups in a local web app (``nearsort review THUMBS``).

``decisions`` stores the groups and the decisions made on them (the library API); ``app`` is the
web app over it (Starlette on uvicorn, the page in ``static/``), imported only when served.
"""
from __future__ import annotations


def serve(thumbs, **kwargs) -> None:
    """Serve the review app for THUMBS until Ctrl-C; see :func:`nearsort.review.app.serve`."""
    from nearsort.review.app import serve as _serve

    _serve(thumbs, **kwargs)
