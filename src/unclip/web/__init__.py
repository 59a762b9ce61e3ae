"""``unclip serve``: an HTTP API (FastAPI) and a web page over :class:`~unclip.pipeline.UnCLIPPipeline`.

Needs the ``serve`` extra (fastapi, uvicorn, python-multipart). ``create_app(pipe, ServeConfig(...))`` builds
the application; ``unclip serve`` loads a model and runs it with uvicorn. See docs/serve.md.
"""

from __future__ import annotations

from unclip.web.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str):
    if name == "create_app":  # imported lazily: fastapi is an optional dependency
        from unclip.web.app import create_app

        return create_app
    raise AttributeError(f"module 'unclip.web' has no attribute {name!r}")
