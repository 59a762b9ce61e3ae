"""A training process killed with SIGKILL at an arbitrary moment and resumed ends bit-identical."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _toy_task import ToyTask  # noqa: E402

from unclip.config import config_to_dict  # noqa: E402
from unclip.train import TrainConfig, run_training  # noqa: E402

SCRIPT = Path(__file__).parent / "_toy_task.py"
TASK = dict(noise=0.1, dropout=0.2)  # the loss generator and the global RNG (dropout) both matter
CONFIG = TrainConfig(
    steps=40,
    batch_size=8,
    grad_accum=2,
    lr=1e-2,
    warmup_steps=4,
    log_every=1,
    ckpt_every=3,
    device="cpu",
    num_threads=1,
    seed=3,
)


def start(out_dir: Path, delay: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    job = {"out_dir": str(out_dir), "config": config_to_dict(CONFIG), "task": {**TASK, "delay": delay}}
    args = [sys.executable, str(SCRIPT), json.dumps([job])]
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def saved_step(out_dir: Path) -> int:
    path = out_dir / "checkpoint.pt"
    return torch.load(path, weights_only=True)["step"] if path.exists() else -1


def kill_after_checkpoint(out_dir: Path, after_step: int, extra_s: float) -> int:
    """Run until a checkpoint past ``after_step`` exists, wait ``extra_s``, SIGKILL; the saved step."""
    proc = start(out_dir, delay=0.05)  # ~4 s to run through: time to kill it mid-way
    deadline = time.monotonic() + 120
    while saved_step(out_dir) <= after_step:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    step = saved_step(out_dir)
    assert 0 < step < CONFIG.steps
    return step


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    # Killed at a moment not aligned with steps or checkpoint writes, then resumed to the end.
    step = kill_after_checkpoint(tmp_path / "run", 0, 0.23)
    proc = start(tmp_path / "run", delay=0.0)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert f"resumed from step {step}" in err.decode()

    killed = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    reference = run_training(ToyTask(**TASK), CONFIG, tmp_path / "ref", progress=False)
    assert killed["step"] == CONFIG.steps
    for name, ref in (("model", reference.model), ("ema", reference.ema_model)):
        got = killed[name]
        for k, v in ref.state_dict().items():
            assert torch.equal(got[k], v), f"{name}.{k} differs after kill + resume"
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, CONFIG.steps + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
