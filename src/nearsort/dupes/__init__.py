"""Duplicates: group the source files that show the same photo (exact, perceptual and near
evidence, each pair confirmed on the thumbnails' pixels), pick a keeper, and quarantine the rest
through journaled, undoable moves. It may import ``store``, ``ingest``, ``vectors``, the journal and
the leaf modules; nothing before it imports ``dupes``.
"""
