"""Scaling helpers of the training loop: gradient checkpointing and FSDP2 (``fully_shard``).

Both work on *units*: the elements of the outermost ``nn.ModuleList`` s of a network (the U-Nets' and
transformers' blocks), or the modules a network names itself with a ``checkpoint_units()`` method.

- :func:`apply_gradient_checkpointing` re-computes each unit's activations in the backward pass instead of
  storing them (``torch.utils.checkpoint``, non-reentrant): less memory, about one extra forward of time,
  the same gradients.
- :func:`shard_model` applies FSDP2 to every unit and then the root: each rank holds ``1/world_size`` of the
  parameters, gradients and optimizer state, and all-gathers a unit's parameters just for its forward and
  backward. For networks that do not fit one device.
- Checkpoints stay in the single-device format (full state dicts, optimizer state indexed like
  ``optimizer.state_dict()``), so a run can resume under DDP, FSDP or one process alike.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def block_units(model: nn.Module) -> list[nn.Module]:
    """The units of ``model``: ``model.checkpoint_units()`` if defined, else the elements of its outermost
    ``nn.ModuleList`` s (module order)."""
    custom = getattr(model, "checkpoint_units", None)
    if callable(custom):
        return list(custom())
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                units.extend(child)
            else:
                visit(child)

    visit(model)
    return units


def _checkpointed_forward(forward, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_gradient_checkpointing(model: nn.Module) -> int:
    """Make every unit of ``model`` re-compute its forward in the backward pass; returns the number of units.

    Raises ``ValueError`` if the network has no units (no ``nn.ModuleList`` and no ``checkpoint_units``).
    """
    units = block_units(model)
    if not units:
        raise ValueError(
            f"{type(model).__name__} has no blocks to checkpoint (no nn.ModuleList, no checkpoint_units())"
        )
    for unit in units:
        if not getattr(unit, "_unclip_checkpointed", False):
            unit.forward = functools.partial(_checkpointed_forward, unit.forward)
            unit._unclip_checkpointed = True
    return len(units)


def shard_model(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """FSDP2: ``fully_shard`` every unit, then the root, over a 1-D mesh of ``world_size`` ranks on
    ``device.type`` (parameters move to ``device`` shard by shard). Returns ``model`` (sharded in place)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world_size,))
    for unit in block_units(model):
        if any(p.requires_grad for p in unit.parameters()):
            fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP2's ``no_sync``: skip the gradient reduce-scatter of this backward unless ``enabled``."""
    model.set_requires_gradient_sync(enabled)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (a collective: every rank calls it; rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(full_state_dict=True, cpu_offload=True))


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an unsharded state dict (present on every rank) into a sharded model (a collective)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, state, options=_options(full_state_dict=True))


def _fqn_order(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The unsharded optimizer state in ``optimizer.state_dict()`` layout (parameters by index); a collective.

    Only rank 0's result is complete.
    """
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer, options=_options(full_state_dict=True, cpu_offload=True))
    if "state" not in state:
        return {}
    order = _fqn_order(model, optimizer)
    index = {name: i for i, name in enumerate(order)}
    groups, start = [], 0
    for group, live in zip(state["param_groups"], optimizer.param_groups):
        groups.append({**group, "params": list(range(start, start + len(live["params"])))})
        start += len(live["params"])
    return {"state": {index[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an ``optimizer.state_dict()``-layout state (on every rank) into the optimizer of a sharded model."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    order = _fqn_order(model, optimizer)
    groups = [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]]
    by_name = {"state": {order[int(i)]: value for i, value in state["state"].items()}, "param_groups": groups}
    set_optimizer_state_dict(model, optimizer, by_name, options=_options(full_state_dict=True))


def grad_norm_value(norm: torch.Tensor) -> torch.Tensor:
    """``clip_grad_norm_``'s result as a plain tensor (FSDP2 returns a replicated DTensor)."""
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm
