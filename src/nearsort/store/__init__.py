"""The catalog and what keeps it true: the SQLite catalog inside THUMBS (schema, migrations, the
one-writer lock, errors), the metadata every thumbnail carries about its originals, and the sync
between the two (rebuild the catalog from the thumbnails, find thumbnails the user moved). Every
other stage reads and writes state through here. It is the bottom of the pipeline: it may import
only nearsort's leaf modules (errors, fsio, frames, textsafe) and ``vectors`` (a rebuilt catalog
re-attaches the vectors on disk), never a later stage.
"""
