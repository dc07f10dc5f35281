"""Embeddings: the model registry (names -> loaded CNN or CLIP models), the batched embedder, and
featurize / search / similar over the catalog's thumbnails. It writes vectors into the per-model
stores of ``vectors`` before the catalog commits them. It may import ``store``, ``ingest`` and
``vectors`` (the vector store it fills), and the leaf modules; not ``order`` or later stages.
"""
