"""Originals -> thumbnails + catalog rows: walk SRC read-only (scan), decode any supported format
at reduced scale (decode), make one thumbnail with its hashes and quality signals in worker
processes (thumbs), and the incremental, crash-safe resize pipeline with its single writer
(resize). Never writes to SRC. It may import ``store`` and the leaf modules (textsafe, workers),
not the later stages.
"""
