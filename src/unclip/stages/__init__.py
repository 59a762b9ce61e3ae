"""Sampling one stage: a network with the :class:`~unclip.diffusion.DiffusionConfig` it was trained on, its
conditioning, classifier-free guidance, best-of and clamps.

- :mod:`unclip.stages.prior`: the diffusion prior and the AR prior (``sample_prior``, ``sample_ar_prior``).
- :mod:`unclip.stages.decoding`: the decoder and the upsamplers (``sample_decoder``, ``invert_decoder``,
  ``sample_upsampler``).
- :mod:`unclip.stages.inpainting`: the same stages keeping known pixels with RePaint (``inpaint_decoder``,
  ``inpaint_upsampler``).

The pipeline composes the stages; training samples one stage to evaluate it. Neither imports the other.
"""
