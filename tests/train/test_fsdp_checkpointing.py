"""Gradient checkpointing gives the same gradients; FSDP2 over 2 CPU processes (torchrun, gloo) trains like
one process, resumes after a stop, and writes checkpoints that a single process resumes.

This file is also the torchrun script (``python test_fsdp_checkpointing.py JOBS``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from unclip.config import config_from_dict, config_to_dict
from unclip.models import build_model
from unclip.train import TrainConfig, run_training
from unclip.train.parallel import apply_gradient_checkpointing, block_units

W_TRUE = torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, -1.0, 2.0]])


class BlockMLP(nn.Module):
    def __init__(self, width: int = 16, depth: int = 3):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)])
        self.out = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


class BlockTask:
    """Regression y = W x with a residual MLP; ``stop_at``: SIGTERM itself when that step's batch is fetched."""

    name = "blocks"

    def __init__(self, stop_at: int | None = None, batch_size: int = 8):
        self.stop_at, self.batch_size, self.signalled = stop_at, batch_size, False

    def build_model(self) -> nn.Module:
        return BlockMLP()

    def get_batch(self, indices, device):
        if self.stop_at is not None and not self.signalled and min(indices) >= self.stop_at * self.batch_size:
            self.signalled = True
            os.kill(os.getpid(), signal.SIGTERM)  # the loop stops cleanly after this step
        x = torch.stack([torch.randn(4, generator=torch.Generator().manual_seed(int(i))) for i in indices])
        return x.to(device), (x @ W_TRUE.T).to(device)

    def loss(self, model, batch, generator):
        x, y = batch
        return ((model(x) - y) ** 2).mean(), {}

    def evaluate(self, model, step, out_dir):
        x, y = self.get_batch(list(range(1000, 1016)), next(model.parameters()).device)
        return {"mse": float(((model(x) - y) ** 2).mean())}

    def export(self, model, out_dir):
        from unclip.io import save_safetensors

        out_dir.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")


# fp32: "auto" trains in bf16 on a CPU with AMX, and these runs are compared to 1e-6
BASE = dict(steps=8, batch_size=8, lr=2e-2, warmup_steps=2, log_every=1, device="cpu", num_threads=1, seed=3,
            ema_decay=0.9, ckpt_every=0, eval_every=4, precision="fp32")  # fmt: skip
FSDP = TrainConfig(**BASE, grad_accum=2, fsdp=True, grad_checkpointing=True)


def main() -> None:
    import torch.distributed as dist

    root = Path(sys.argv[1])
    config = config_from_dict(TrainConfig, json.loads(sys.argv[2]))
    dist.init_process_group("gloo")
    run_training(BlockTask(), config, root / "ref", progress=False)
    run_training(BlockTask(stop_at=3), config, root / "cut", progress=False)
    if dist.get_rank() == 0:
        shutil.copytree(root / "cut", root / "cut_single")
    dist.barrier()
    run_training(BlockTask(), config, root / "cut", progress=False)
    dist.destroy_process_group()


def _load(path: Path) -> dict:
    return torch.load(path / "checkpoint.pt", weights_only=True)


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=atol, rtol=0), k


def test_gradient_checkpointing_same_gradients_and_recomputes():
    torch.manual_seed(0)
    model = build_model("decoder", "tiny").double()
    assert len(block_units(model)) > 4
    kwargs = {"image_embedding": torch.randn(2, model.config.clip_dim, dtype=torch.float64)}
    if model.config.text_width:
        kwargs["text_tokens"] = torch.randn(2, 3, model.config.text_width, dtype=torch.float64)
        kwargs["text_mask"] = torch.ones(2, 3, dtype=torch.bool)
    x, t = torch.randn(2, 3, 16, 16, dtype=torch.float64), torch.tensor([3, 500])

    def grads():
        model.zero_grad()
        model(x, t, **kwargs).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    calls = []
    leaf = next(m for m in block_units(model)[1].modules() if isinstance(m, nn.Conv2d))
    leaf.register_forward_hook(lambda *a: calls.append(1))
    plain = grads()
    assert len(calls) == 1
    apply_gradient_checkpointing(model)
    checked = grads()
    assert len(calls) == 3  # forward + re-computation in backward
    assert plain.keys() == checked.keys()
    for k in plain:
        assert torch.allclose(plain[k], checked[k], atol=1e-12), k
    with pytest.raises(ValueError, match="no blocks"):
        apply_gradient_checkpointing(nn.Linear(2, 2))


def test_fsdp_two_processes(tmp_path):
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            "--monitor-interval=0.1", __file__, str(tmp_path), json.dumps(config_to_dict(FSDP))]  # fmt: skip
    res = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "fully sharded (FSDP2) over 2 processes" in res.stderr and "resumed from step 4" in res.stderr

    plain = FSDP.replace(grad_accum=1, fsdp=False, grad_checkpointing=False)
    single = run_training(BlockTask(), plain, tmp_path / "single", progress=False)
    ref = _load(tmp_path / "ref")
    assert ref["step"] == 8 and ref["world_size"] == 2
    _close(ref["model"], single.model.state_dict(), 1e-5)
    _close(ref["ema"], single.ema_model.state_dict(), 1e-5)
    assert (ref["model"]["inp.weight"] - BlockMLP().state_dict()["inp.weight"]).abs().max() > 1e-2
    # the optimizer state has the single-process layout (parameters by index)
    opt = ref["optimizer"]
    assert opt["param_groups"][0]["params"] == single_opt_params(plain)
    single_state = _load(tmp_path / "single")["optimizer"]["state"]
    _close({str(i): s["exp_avg"] for i, s in opt["state"].items()},
           {str(i): s["exp_avg"] for i, s in single_state.items()}, 1e-5)  # fmt: skip

    cut = _load(tmp_path / "cut")  # stopped at step 4, resumed to 8 under FSDP
    _close(cut["model"], ref["model"], 1e-6)
    _close(cut["ema"], ref["ema"], 1e-6)
    assert _load(tmp_path / "cut_single")["step"] == 4
    one = FSDP.replace(fsdp=False, grad_checkpointing=False)  # grad_accum=2 changes the result: kept
    resumed = run_training(BlockTask(), one, tmp_path / "cut_single", progress=False)  # one process resumes
    assert resumed.step == 8
    _close(resumed.model.state_dict(), ref["model"], 1e-5)
    metrics = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/mse" in m for m in metrics) and (tmp_path / "ref" / "model" / "model.safetensors").is_file()


def single_opt_params(config: TrainConfig) -> list[int]:
    from unclip.train.loop import param_groups

    return list(range(len(param_groups(BlockMLP(), config.weight_decay)[0]["params"])))


if __name__ == "__main__":
    main()
