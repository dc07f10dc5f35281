"""Vectors on disk and nearest neighbours: one append-only float16 store + FAISS index per model,
crash-consistent with the catalog, with exact and approximate search and k-NN graphs. A leaf of
arrays: it knows no thumbnails, models or orderings, and may import only numpy, FAISS and
nearsort's leaf modules (errors, fsio).
"""
