"""unclip.data: datasets.

- :mod:`unclip.data.shapes`: the shapes world (``ShapesWorld``, ``ShapesDataset``, ``PALETTE``, ...), the
  built-in captioned image domain, with :mod:`~unclip.data.shapes_render` (geometry, rasteriser) and
  :mod:`~unclip.data.shapes_captions` (caption grammar and parser).
"""
