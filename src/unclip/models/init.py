"""Building a network whose weights are loaded next, without paying for their random initialisation."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["no_weight_init"]

_INIT_FUNCTIONS = (
    "normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
    "xavier_normal_", "orthogonal_", "zeros_", "ones_", "constant_",
)  # fmt: skip


def _keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
    return tensor


@contextmanager
def no_weight_init() -> Iterator[None]:
    """Inside, ``torch.nn.init``'s initialisers leave tensors as allocated (uninitialised memory, or nothing on
    the meta device), for a network whose every parameter is loaded right after (loaders check that).

    Skips the cost of random initialisation, and on the meta device the import of ``torch._dynamo`` (~1 s) that
    ``normal_`` there triggers. Not thread-safe: it swaps module attributes for the duration.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(torch.nn.init, name, _keep)
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)
