"""The garbage collector paused while an image command starts: importing torch and building the pipeline
create hundreds of thousands of long-lived objects, and Python's collector walks them again and again on the
way (about 0.2 s of a 2.5 s ``unclip generate`` on 2 cores; docs/performance.md, "Start-up and threads").

:func:`pause_gc` (called by the console script for the image commands only) turns collection off;
:func:`resume_gc` (called once the pipeline is loaded) moves every object alive then into the permanent
generation (``gc.freeze``), so later collections skip them, and turns collection back on.
"""

from __future__ import annotations

import gc

__all__ = ["pause_gc", "resume_gc"]

_paused = False


def pause_gc() -> None:
    """Turn the cyclic garbage collector off until :func:`resume_gc` (no-op when it is already off)."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume_gc() -> None:
    """Freeze the objects alive now and turn the collector back on, if :func:`pause_gc` turned it off."""
    global _paused
    if _paused:
        gc.freeze()
        gc.enable()
        _paused = False
