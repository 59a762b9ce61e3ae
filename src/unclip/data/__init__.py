"""unclip.data: datasets.

- :mod:`unclip.data.shapes`: the shapes world (``ShapesWorld``, ``ShapesDataset``, ``PALETTE``, ...), the
  built-in captioned image domain, with :mod:`~unclip.data.shapes_render` (geometry, rasteriser) and
  :mod:`~unclip.data.shapes_captions` (caption grammar and parser).
- captioned sources, read in parts: :mod:`~unclip.data.shapes_cache` (the shapes world's ``ShapesSource``),
  :mod:`~unclip.data.image_folder`, :mod:`~unclip.data.webdataset_source`.
- :mod:`unclip.data.embed_cache`: the one cache format, built from any source (``build_embedding_cache``) and
  read by every stage task (``EmbeddingCache.load``); its settings and CLIP fingerprints in
  :mod:`~unclip.data.cache_settings`, its memory-mapped rows in :mod:`~unclip.data.row_store`.
"""
