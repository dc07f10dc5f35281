"""The HTML report: one self-contained page (summary, duplicate groups, the chain, quality
galleries, unreadable files) built from the catalog and the results of ``dupes`` and ``quality``;
its markup, style and script are package files beside the code. It only reads: it may import
``store``, ``dupes``, ``quality`` and the leaf modules, and nothing imports it but the API and CLI.
"""
