"""unclip.interop: Karlo's and diffusers' checkpoints in, diffusers' layout out.

Importing this package registers those layouts with the pipeline (:mod:`unclip.interop.formats`), so that
``UnCLIPPipeline.from_pretrained`` reads them and ``export_diffusers`` writes them; ``import unclip`` imports it.
"""

from unclip.interop import formats  # noqa: F401 - registers the formats
