"""unclip: unCLIP (Ramesh et al., 2022) in PyTorch.

The public entry point is :class:`unclip.UnCLIPPipeline` (imported lazily so that ``import unclip``
stays cheap for the CLI and for tools that only need the shapes world). This face of the package also imports
:mod:`unclip.interop`, whose formats (diffusers', Karlo's) register with the pipeline; it imports no network.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["UnCLIPPipeline", "__version__"]

from unclip import interop as _interop  # noqa: E402,F401 - registers diffusers' and Karlo's layouts


def __getattr__(name: str):
    if name == "UnCLIPPipeline":
        from unclip.pipeline import UnCLIPPipeline

        return UnCLIPPipeline
    raise AttributeError(f"module 'unclip' has no attribute {name!r}")
