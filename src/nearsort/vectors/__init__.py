"""Vectors on disk and nearest neighbours: one append-only float16 store (store.py) + FAISS index
(index.py) per model, crash-consistent with the catalog, and the one layer for exact and
approximate search, k-NN graphs, k-means and Hamming search (knn.py). A leaf of arrays: it knows
no thumbnails, models or orderings, and may import only numpy, FAISS and nearsort's leaf modules
(errors, fsio).

FAISS' OpenMP threads sleep when idle (``OMP_WAIT_POLICY=PASSIVE`` unless already set, before
FAISS loads): spinning idle threads on a busy machine made small FAISS calls up to 16x slower.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
