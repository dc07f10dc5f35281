"""Orderings: the chain algorithms (similarity and Hamming chains, key and name orders, page cuts;
pure functions on arrays, no catalog) and analyze, which runs one over the catalog and stores every
thumbnail's rank. It may import ``store``, ``ingest`` (thumbnail names), ``vectors`` and the leaf
modules; it moves no file (``refresh`` does, from the ranks).
"""
