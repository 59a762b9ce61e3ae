"""Data parallel over 2 CPU processes (gloo, launched by torchrun) equals 1 process with the same global
batch; a 2-process run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one.

Launching torchrun costs seconds on a busy 2-core machine, so all 2-process runs happen in two launches
(one killed, one running the resume, the reference and the equivalence job in turn) shared by the tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _toy_task import ToyTask  # noqa: E402

from unclip.config import config_to_dict  # noqa: E402
from unclip.train import TrainConfig, run_training  # noqa: E402

SCRIPT = Path(__file__).parent / "_toy_task.py"
# fp32: "auto" trains in bf16 on a CPU with AMX, and these runs are compared to 1e-6
BASE = dict(steps=10, batch_size=8, lr=2e-2, warmup_steps=2, log_every=1, device="cpu", num_threads=1, seed=5,
            precision="fp32")  # fmt: skip
EQUIV = TrainConfig(**BASE, grad_accum=2, ema_decay=0.9)  # 2 ranks x 2 micro-steps x 2 samples
KILL = TrainConfig(**{**BASE, "steps": 30}, ckpt_every=4)
KILL_TASK = dict(noise=0.1, dropout=0.2)  # per-rank loss generators and per-rank global RNG both matter


def torchrun(jobs: list[tuple[Path, TrainConfig, dict]]) -> subprocess.Popen:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    spec = [{"out_dir": str(d), "config": config_to_dict(c), "task": t} for d, c, t in jobs]
    args = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
        "--monitor-interval=0.1", str(SCRIPT), json.dumps(spec),
    ]  # fmt: skip
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def children(pid: int) -> list[int]:
    """Child process ids of ``pid`` (torchrun starts each worker in a session of its own)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL the torchrun workers, then the launcher."""
    for child in children(proc.pid):
        os.kill(child, signal.SIGKILL)
    proc.kill()
    proc.wait()


def load(out_dir: Path) -> dict:
    return torch.load(out_dir / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    # 1) a 2-process run (process group created by run_training from the torchrun environment), killed
    proc = torchrun([(root / "run", KILL, {**KILL_TASK, "delay": 0.1})])
    try:
        deadline = time.monotonic() + 120
        while not (root / "run" / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        time.sleep(0.21)
        workers = children(proc.pid)
        assert len(workers) == 2
    finally:
        kill_all(proc)
    for pid in workers:  # really gone (a zombie at most) before the resume starts
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, f"worker {pid} survived SIGKILL"
            time.sleep(0.01)
    killed_err = proc.stderr.read().decode()
    proc.stderr.close()
    killed_step = load(root / "run")["step"]
    # 2) one launch (process group created by the caller): resume it, an uninterrupted reference, and
    #    the job to compare with one process
    proc = torchrun([(root / "run", KILL, KILL_TASK), (root / "ref", KILL, KILL_TASK), (root / "equiv", EQUIV, {})])
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_all(proc)
    assert proc.returncode == 0, err.decode()[-3000:]
    return {"root": root, "killed_err": killed_err, "killed_step": killed_step, "err": err.decode()}


def test_two_processes_match_one(runs, tmp_path):
    single = run_training(ToyTask(), EQUIV.replace(grad_accum=1), tmp_path, progress=False)
    ddp = load(runs["root"] / "equiv")
    assert ddp["step"] == 10 and ddp["world_size"] == 2 and len(ddp["rng"]) == 2
    for name, ref in (("model", single.model), ("ema", single.ema_model)):
        for k, v in ref.state_dict().items():
            assert torch.allclose(ddp[name][k], v, atol=1e-6, rtol=0), f"{name}.{k}"
    torch.manual_seed(BASE["seed"])
    init = ToyTask().build_model().state_dict()["0.weight"]
    assert (init - ddp["model"]["0.weight"]).abs().max() > 1e-2  # training moved far beyond the tolerance
    rows = [json.loads(x) for x in (runs["root"] / "equiv" / "metrics.jsonl").read_text().splitlines()]
    one = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 11))  # written once (rank 0), not per rank
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in one], rel=1e-5)
    assert (runs["root"] / "equiv" / "model" / "model.safetensors").is_file()


def test_two_process_sigkill_resume_is_bit_identical(runs):
    assert "data parallel over 2 processes" in runs["killed_err"]
    step = runs["killed_step"]
    assert 0 < step < KILL.steps, "the run ended before it could be killed"
    assert f"resumed from step {step}" in runs["err"]
    got, want = load(runs["root"] / "run"), load(runs["root"] / "ref")
    assert got["step"] == want["step"] == KILL.steps
    for name in ("model", "ema"):
        for k, v in want[name].items():
            assert torch.equal(got[name][k], v), f"{name}.{k} differs after kill + resume"
    for rank in range(2):
        assert torch.equal(got["rng"][rank]["torch"], want["rng"][rank]["torch"])
