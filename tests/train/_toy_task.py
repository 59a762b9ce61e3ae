"""A tiny regression task for the training-loop tests: data are a deterministic function of the index.

Sample ``i``: ``x = randn(4)`` from a generator seeded with ``i``, ``y = W* x + b* (+ noise)``. The model
is a small MLP (or a linear layer). With ``noise > 0`` the loss adds noise drawn from the loop's
generator, so exact resume depends on the loop seeding it correctly; ``dropout > 0`` exercises the
global RNG state.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

IN, OUT = 4, 2
W_TRUE = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0]])
B_TRUE = torch.tensor([0.3, -0.7])


class ToyTask:
    """A TrainTask: y = W* x + b* regression with an MLP."""

    def __init__(
        self, hidden: int = 16, noise: float = 0.0, dropout: float = 0.0, linear: bool = False, delay: float = 0.0
    ):
        self.name = "toy"
        self.hidden, self.noise, self.dropout, self.linear = hidden, noise, dropout, linear
        self.delay = delay  # seconds of sleep per batch, to make a run slow enough to kill mid-way
        self.evaluated: list[int] = []

    def result_settings(self) -> dict:
        """What changes the result (``delay`` only slows a run down)."""
        return {"hidden": self.hidden, "noise": self.noise, "dropout": self.dropout, "linear": self.linear}

    def build_model(self) -> nn.Module:
        if self.linear:
            return nn.Linear(IN, OUT)
        return nn.Sequential(
            nn.Linear(IN, self.hidden), nn.Tanh(), nn.Dropout(self.dropout), nn.Linear(self.hidden, OUT)
        )

    def get_batch(self, indices: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.delay:
            time.sleep(self.delay)
        xs = []
        for i in indices:
            g = torch.Generator().manual_seed(int(i))
            xs.append(torch.randn(IN, generator=g))
        x = torch.stack(xs)
        y = x @ W_TRUE.T + B_TRUE
        return x.to(device), y.to(device)

    def loss(self, model: nn.Module, batch, generator: torch.Generator):
        x, y = batch
        if self.noise:
            x = x + self.noise * torch.randn(x.shape, generator=generator, device=x.device)
        pred = model(x)
        loss = ((pred.float() - y) ** 2).mean()
        return loss, {"abs_err": (pred.float() - y).abs().mean().item()}

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        self.evaluated.append(step)
        x, y = self.get_batch(list(range(10**6, 10**6 + 64)), next(model.parameters()).device)
        torch.randn(3)  # a careless eval that touches the global RNG must not change training
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / f"step_{step:06d}.txt").write_text("ok\n")
        return {"mse": ((model(x) - y) ** 2).mean().item()}

    def export(self, model: nn.Module, out_dir: Path) -> None:
        from unclip.io import save_safetensors

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps({"hidden": self.hidden, "linear": self.linear}) + "\n")
        save_safetensors(model.state_dict(), out_dir / "model.safetensors")


def main() -> None:
    """``python _toy_task.py JOBS_JSON``: run the jobs ``[{"out_dir", "config", "task"}, ...]`` in turn.

    Used by the tests through a subprocess or ``torchrun``. With several jobs under torchrun the script
    creates the process group itself, so ``run_training`` also runs inside a caller's group.
    """
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch.distributed as dist

    from unclip.config import config_from_dict
    from unclip.train import TrainConfig, run_training

    jobs = json.loads(sys.argv[1])
    own_group = len(jobs) > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1
    if own_group:
        dist.init_process_group("gloo")
    for job in jobs:
        config = config_from_dict(TrainConfig, job["config"])
        run_training(ToyTask(**job.get("task", {})), config, Path(job["out_dir"]), progress=False)
    if own_group:
        dist.barrier()  # no rank closes its connections while the other still has work in flight
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
