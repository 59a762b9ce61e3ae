"""How OpenMP's worker threads wait between parallel regions: chosen by the CLI before torch is imported.

PyTorch's CPU kernels run in OpenMP parallel regions. Between two regions the worker threads either sleep
(``OMP_WAIT_POLICY=PASSIVE``; every region then pays a wake-up) or spin for a while first. A step of a small
network is hundreds of small kernels, so on an idle machine the wake-ups dominate: on 2 cores (Intel Xeon
with AMX) the built-in model's decoder step in bf16 took 54 ms sleeping and 23 ms spinning up to 30,000
iterations (prior step 8.6 vs 2.9 ms). When other processes compete for the cores, though, a spinning
thread takes time from the threads it waits for: with a 2-thread training job on the same 2 cores the fp32
decoder step took 255 ms spinning against 72 ms sleeping (docs/performance.md, "Start-up and threads").

So the CLI spins briefly only when nothing else is runnable as the command starts (five reads of
``/proc/loadavg`` 2 ms apart), and sleeps otherwise.
``UNCLIP_OMP_SPIN`` = ``auto`` (the default), ``on`` (always spin briefly) or ``off`` (always sleep). An
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` already in the environment is left as it is (the tests and CI set
``OMP_WAIT_POLICY=PASSIVE``). ``GOMP_SPINCOUNT`` is read by GNU OpenMP, which PyTorch's CPU wheels use.
This module imports nothing heavy: it runs before torch is loaded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence

__all__ = ["SPIN_COUNT", "SPIN_MODES", "choose_wait_policy", "machine_idle", "apply_wait_policy"]

SPIN_COUNT = 30_000
"""Spin iterations before a waiting thread sleeps (GNU OpenMP's default is 300,000; ``ACTIVE`` is unbounded)."""

SPIN_MODES = ("auto", "on", "off")


def machine_idle(loadavg_samples: Sequence[str]) -> bool:
    """Whether every sample of ``/proc/loadavg``'s text shows no runnable task besides the reader itself.

    The instantaneous count, not the 1-minute load: a user running one command after another raises the load
    average without competing with the next command, while a training job in the background is runnable in
    nearly every sample."""
    if not loadavg_samples:
        raise ValueError("no /proc/loadavg samples")
    for text in loadavg_samples:
        fields = text.split()
        if len(fields) < 4 or "/" not in fields[3]:
            raise ValueError(f"unreadable /proc/loadavg: {text!r}")
        if int(fields[3].split("/")[0]) > 1:
            return False
    return True


def _read_loadavg(samples: int = 5, interval_s: float = 0.002) -> list[str] | None:
    texts = []
    try:
        for i in range(samples):
            if i:
                time.sleep(interval_s)
            with open("/proc/loadavg") as f:
                texts.append(f.read())
    except OSError:
        return None
    return texts


def choose_wait_policy(environ: Mapping[str, str], loadavg_samples: Sequence[str] | None = None) -> dict[str, str]:
    """The environment variables to set before torch is imported (empty when the user chose already).

    ``loadavg_samples``: texts of ``/proc/loadavg`` read a few ms apart (None where there is none: then sleep,
    the safe choice).
    Raises ValueError naming a bad ``UNCLIP_OMP_SPIN``."""
    mode = environ.get("UNCLIP_OMP_SPIN", "auto").strip().lower() or "auto"
    if mode not in SPIN_MODES:
        raise ValueError(f"UNCLIP_OMP_SPIN must be one of {', '.join(SPIN_MODES)}, got {environ['UNCLIP_OMP_SPIN']!r}")
    if "OMP_WAIT_POLICY" in environ or "GOMP_SPINCOUNT" in environ:
        return {}
    if mode == "auto":
        try:
            spin = loadavg_samples is not None and machine_idle(loadavg_samples)
        except ValueError:
            spin = False
    else:
        spin = mode == "on"
    return {"GOMP_SPINCOUNT": str(SPIN_COUNT)} if spin else {"OMP_WAIT_POLICY": "PASSIVE"}


def apply_wait_policy() -> None:
    """Set the chosen variables in ``os.environ`` (call before the first ``import torch``)."""
    os.environ.update(choose_wait_policy(os.environ, _read_loadavg()))
