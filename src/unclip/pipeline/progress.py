"""Progress bars of the Python API: one tqdm bar per stage, on by default, configured per pipeline.

``pipe.set_progress_bar_config(disable=True)`` silences them (diffusers' name); other keywords go to tqdm
(``leave=False``, ``file=...``, ``desc`` prefixes). A caller that passes its own ``progress`` function (the CLI,
the web server) gets only that.
"""

from __future__ import annotations

import sys
from typing import Any

from unclip.samplers import ProgressFn

TQDM_OPTIONS = frozenset(
    {"disable", "leave", "file", "position", "ncols", "mininterval", "maxinterval", "miniters", "ascii", "unit",
     "dynamic_ncols", "smoothing", "bar_format", "colour", "delay", "desc"}
)  # fmt: skip
"""The tqdm keywords :func:`check_progress_config` accepts."""


def check_progress_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` if every key is a tqdm keyword we pass on; else a ValueError naming the unknown ones."""
    unknown = sorted(set(config) - TQDM_OPTIONS)
    if unknown:
        raise ValueError(f"unknown progress bar option(s) {unknown}; known: {sorted(TQDM_OPTIONS)}")
    return dict(config)


class ProgressBars:
    """A :data:`~unclip.samplers.ProgressFn` drawing one tqdm bar per stage ("prior", "decoder", "upsampler_1").

    A bar opens on a stage's first report and closes when it reaches its total (or a new stage starts, or
    :meth:`close` is called).
    """

    def __init__(self, **config: Any) -> None:
        self.config = {"unit": "step", "file": sys.stderr, **config}
        self.prefix = self.config.pop("desc", None)
        self.bar: Any = None
        self.stage: str | None = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        from tqdm.auto import tqdm

        if self.bar is None or stage != self.stage or step <= self.bar.n:
            self.close()
            desc = f"{self.prefix} {stage}" if self.prefix else stage
            self.bar, self.stage = tqdm(total=total, desc=desc, **self.config), stage
        self.bar.update(step - self.bar.n)
        if step >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None


def progress_for(config: dict[str, Any], given: ProgressFn | None) -> ProgressFn | None:
    """The progress function of one call: the caller's ``given`` one, else bars as ``config`` says (None when
    disabled)."""
    if given is not None:
        return given
    if config.get("disable"):
        return None
    return ProgressBars(**config)
