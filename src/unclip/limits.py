"""Resource bounds checked before anything is allocated.

Sizes a user controls (batch, best-of, number of images, threads, network widths from a config) are compared
with what this machine has, so that a typo such as ``--batch-size 1000000000`` is refused with a message naming
the option, its limit and why, instead of growing memory until the kernel kills the process.

All checks raise :class:`ResourceLimitError` (a ``ValueError``), which front ends show as one line.
"""

from __future__ import annotations

import os
from pathlib import Path

GIB = 1024**3
MEMORY_FRACTION = 0.8
"""Share of the available memory one request may plan to take."""


class ResourceLimitError(ValueError):
    """A requested size exceeds what this machine can hold or run."""


def _cgroup_memory_left() -> int | None:
    """Bytes left under this process's cgroup-v2 memory limit, or None when there is no limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def available_memory_bytes() -> int:
    """Memory this process can still take: ``MemAvailable`` of /proc/meminfo, capped by a cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        available = None
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 16 * GIB  # unknown platform: assume a modest machine
    cgroup = _cgroup_memory_left()
    return min(available, cgroup) if cgroup is not None else available


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return max(os.cpu_count() or 1, 1)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _size(n: float) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (B, KiB, MiB, GiB)."""
    for unit, scale in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def check_memory(
    option: str,
    value: int,
    bytes_per_unit: float,
    fixed_bytes: float = 0.0,
    budget: float | None = None,
    where: str = "this machine's available memory",
) -> None:
    """Refuse ``value`` units of ``bytes_per_unit`` each (plus ``fixed_bytes``) when they exceed ``budget`` (default:
    the share of available host memory one request may take; ``where`` names it). ``option`` names the setting in
    the message ("--batch-size")."""
    if budget is None:
        budget = available_memory_bytes() * MEMORY_FRACTION
    needed = fixed_bytes + bytes_per_unit * value
    if needed > budget:
        fit = max(int((budget - fixed_bytes) // max(bytes_per_unit, 1.0)), 0)
        raise ResourceLimitError(
            f"{option} {value} needs about {_gib(needed)} of memory ({_size(bytes_per_unit)} each), but "
            f"{_gib(budget)} of {where} may be used; at most {fit} fit"
        )


def check_threads(option: str, value: int | None) -> int | None:
    """Refuse a thread count above this machine's CPUs (more only slows OpenMP; huge counts crash it)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ResourceLimitError(f"{option} must be a positive integer, got {value!r}")
    limit = cpu_count()
    if value > limit:
        raise ResourceLimitError(
            f"{option} {value} exceeds this machine's {limit} CPU(s); at most {limit} (more threads than CPUs "
            "only slow the work down, and very large counts crash OpenMP)"
        )
    return value


def check_count(option: str, value: int, limit: int, why: str) -> None:
    """Refuse an integer setting above a fixed ``limit`` (``why`` says what the limit protects)."""
    if value > limit:
        raise ResourceLimitError(f"{option} {value} is above the limit of {limit} ({why})")


def check_allocation(what: str, needed_bytes: float) -> None:
    """Refuse one allocation of ``needed_bytes`` (e.g. a network's weights) that the available memory cannot
    hold; ``what`` says what it is ("the decoder config in x/config.json")."""
    budget = available_memory_bytes() * MEMORY_FRACTION
    if needed_bytes > budget:
        raise ResourceLimitError(
            f"{what} needs {_gib(needed_bytes)} of memory, more than the {_gib(budget)} of this machine's available "
            "memory that may be used; check its sizes (channels, widths, layers)"
        )


def check_device(option: str, name: object):
    """Parse and check a torch device name ("cpu", "cuda", "cuda:1", "mps", ...): it must exist on this machine.
    Returns the ``torch.device``; raises :class:`ResourceLimitError` naming the value otherwise."""
    import torch

    if not isinstance(name, (str, torch.device)):
        raise ResourceLimitError(f"{option} must be a device name such as 'cpu' or 'cuda', got {name!r}")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ResourceLimitError(f"{option} {name!r} is not a torch device (cpu, cuda, cuda:N, mps, xpu)") from None
    if device.type == "meta":
        raise ResourceLimitError(f"{option} meta holds no data; use cpu, cuda, ...")
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = bool(backend is not None and getattr(backend, "is_available", lambda: False)())
    if not available:
        raise ResourceLimitError(f"{option} {name!r}: no {device.type} device is available on this machine")
    count_fn = getattr(backend, "device_count", None)
    if device.index is not None and count_fn is not None and device.index >= count_fn():
        raise ResourceLimitError(f"{option} {name!r}: this machine has {count_fn()} {device.type} device(s)")
    return device
