"""Data pipeline: text extraction, vocab, pretraining instances, shard formats, loader.

Import from the submodules (``bertforge.data.text``, ``.vocab``, ``.tokenization``,
``.instances``, ``.hdf5``, ``.parquet``, ``.create``, ``.loader``); importing this package
loads nothing heavy.
"""
