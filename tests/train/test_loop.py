"""The training loop on a toy regression task: learning, LR schedule, EMA, config, checkpoints, hooks."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from _toy_task import ToyTask  # noqa: E402

from unclip.config import load_config  # noqa: E402
from unclip.train import TrainConfig, TrainTask, run_training  # noqa: E402
from unclip.train import checkpoint as ckpt_lib  # noqa: E402
from unclip.train.config import result_field_differences  # noqa: E402
from unclip.train.dist import shard_indices  # noqa: E402
from unclip.train.ema import ema_decay_at, update_ema  # noqa: E402
from unclip.train.lr_schedule import lr_at  # noqa: E402


def cfg(**kw) -> TrainConfig:
    # fp32 unless a test says otherwise: "auto" trains in bf16 on a CPU with AMX, and these tests compare arithmetic
    base = dict(
        steps=20, batch_size=8, lr=1e-2, warmup_steps=2, log_every=5, ckpt_every=0, device="cpu", precision="fp32"
    )
    base.update(kw)
    return TrainConfig(**base)


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_toy_task_is_a_train_task():
    assert isinstance(ToyTask(), TrainTask)


def test_loss_falls_and_outputs_written(tmp_path):
    res = run_training(ToyTask(), cfg(steps=150, log_every=10), tmp_path, progress=False)
    rows = [r for r in metrics(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(10, 151, 10))
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]
    for key in ("lr", "samples_per_s", "grad_norm", "abs_err", "time_s"):
        assert math.isfinite(rows[-1][key])
    assert res.step == 150 and res.stop_reason == "done"
    assert res.metrics["loss"] == rows[-1]["loss"]
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "checkpoint.pt").is_file()
    assert load_config(TrainConfig, tmp_path / "config.json") == cfg(steps=150, log_every=10)
    # the export is the EMA network
    from unclip.io import load_safetensors

    exported = load_safetensors(tmp_path / "model" / "model.safetensors")
    assert state_equal(exported, res.ema_model.state_dict())


def test_lr_schedule_closed_form():
    # steps=10, warmup=4, lr=2, ratio 0.25: warm-up 0.5, 1, 1.5, 2; then cosine over 6 steps.
    expected = [0.5, 1.0, 1.5, 2.0] + [2.0 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * k / 6))) for k in range(6)]
    got = [lr_at(s, lr=2.0, steps=10, warmup_steps=4, min_lr_ratio=0.25) for s in range(10)]
    assert got == pytest.approx(expected, rel=1e-12)
    assert got[4] == 2.0 and got[7] == pytest.approx(2.0 * (0.25 + 0.75 * 0.5), rel=1e-12)  # half way: mean
    assert lr_at(0, lr=1.0, steps=5, warmup_steps=0, min_lr_ratio=0.0) == 1.0
    assert lr_at(10, lr=1.0, steps=10, warmup_steps=0, min_lr_ratio=0.3) == pytest.approx(0.3)


def test_optimizer_uses_scheduled_lr(tmp_path):
    c = cfg(steps=12, warmup_steps=3, log_every=1, min_lr_ratio=0.1)
    run_training(ToyTask(), c, tmp_path, progress=False)
    logged = [r["lr"] for r in metrics(tmp_path) if "lr" in r]
    closed = [1e-2 * (s + 1) / 3 for s in range(3)] + [
        1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 9))) for k in range(9)
    ]
    assert logged == pytest.approx(closed, rel=1e-12)


def test_ema_update_by_hand():
    torch.manual_seed(0)
    model, ema = nn.Linear(3, 2), nn.Linear(3, 2)
    ema.load_state_dict(model.state_dict())
    w0 = model.weight.detach().double().clone()
    history = []
    for step in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn(2, 3))
        history.append(model.weight.detach().double().clone())
        update_ema(ema, model, ema_decay_at(step, 0.9, warmup=True))
    # decays with warm-up: min(0.9, (1+n)/(10+n)) = 0.1, 2/11, 0.25, 4/13
    ref = w0
    for d, w in zip([0.1, 2 / 11, 0.25, 4 / 13], history):
        ref = d * ref + (1 - d) * w
    assert torch.allclose(ema.weight.double(), ref, atol=1e-6)
    assert ema_decay_at(1000, 0.9, warmup=True) == 0.9 and ema_decay_at(0, 0.9, warmup=False) == 0.9


def test_ema_in_loop_matches_hand_computation(tmp_path):
    # Constant LR (no warm-up, min_lr_ratio=1) makes a k-step run a prefix of a longer one.
    base = dict(warmup_steps=0, min_lr_ratio=1.0, ema_decay=0.5, lr=0.05)
    weights = []
    for k in range(4):
        if k == 0:
            torch.manual_seed(0)
            weights.append(ToyTask(linear=True).build_model().weight.detach().double())
            continue
        res = run_training(ToyTask(linear=True), cfg(steps=k, **base), tmp_path / str(k), progress=False)
        weights.append(res.model.weight.detach().double())
    ema = weights[0]
    for n in range(3):
        d = min(0.5, (1 + n) / (10 + n))
        ema = d * ema + (1 - d) * weights[n + 1]
    assert torch.allclose(res.ema_model.weight.double(), ema, atol=1e-6)
    assert not torch.allclose(res.ema_model.weight.double(), weights[3], atol=1e-3)


@pytest.mark.parametrize(
    "field,value",
    [
        ("steps", 0),
        ("batch_size", -1),
        ("grad_accum", 0),
        ("lr", float("nan")),
        ("min_lr_ratio", 1.5),
        ("warmup_steps", -2),
        ("weight_decay", -0.1),
        ("betas", (0.9,)),
        ("grad_clip", 0.0),
        ("ema_decay", 1.0),
        ("precision", "fp8"),
        ("device", "gpu0"),
        ("num_threads", 0),
        ("max_minutes", -1.0),
        ("log_every", 0),
        ("seed", 1.5),
    ],
)
def test_config_validation_names_field(field, value):
    with pytest.raises(ValueError, match=rf"TrainConfig\.{field}="):
        TrainConfig(**{field: value})


def test_batch_must_split_over_accumulation():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=10, grad_accum=3)


def test_shard_indices():
    assert shard_indices(16, 8, 1, 2, 2) == [[20, 21], [22, 23]]
    assert shard_indices(0, 4, 0, 1, 1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="world_size"):
        shard_indices(0, 6, 0, 4, 1)


def test_checkpoint_contents_load_weights_only(tmp_path):
    run_training(ToyTask(dropout=0.1), cfg(steps=6, ckpt_every=3), tmp_path, progress=False)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["format"] == ckpt_lib.FORMAT and ck["task"] == "toy"
    assert ck["step"] == 6 and ck["data_position"] == 48 and ck["ema_updates"] == 6
    assert ck["config"] == json.loads((tmp_path / "config.json").read_text())
    assert ck["lr_schedule"]["step"] == 6 and ck["optimizer"]["state"]
    rng = ck["rng"][0]
    assert set(rng) == {"torch", "cuda", "numpy", "python"}


def test_rng_capture_restore_roundtrip():
    import random

    import numpy as np

    dev = torch.device("cpu")
    state = ckpt_lib.capture_rng(dev)
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123), np.random.seed(5), random.seed(7)
    ckpt_lib.restore_rng(state, dev)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_crash_then_resume_is_exact_and_metrics_not_duplicated(tmp_path):
    task_kw = dict(noise=0.1, dropout=0.2)
    c = cfg(steps=12, ckpt_every=4, log_every=1)
    full = run_training(ToyTask(**task_kw), c, tmp_path / "a", progress=False)

    class CrashAtStep10(ToyTask):
        def get_batch(self, indices, device):
            if indices[0] >= 9 * 8:  # the batch of step index 9, after the step-8 checkpoint
                raise RuntimeError("simulated crash")
            return super().get_batch(indices, device)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(CrashAtStep10(**task_kw), c, tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 8
    assert [r["step"] for r in metrics(tmp_path / "b")][-1] == 9  # logged after the checkpoint
    res = run_training(ToyTask(**task_kw), c, tmp_path / "b", progress=False)
    assert res.step == 12
    assert state_equal(res.model.state_dict(), full.model.state_dict())
    assert state_equal(res.ema_model.state_dict(), full.ema_model.state_dict())
    assert [r["step"] for r in metrics(tmp_path / "b")] == list(range(1, 13))
    assert metrics(tmp_path / "b")[-1]["loss"] == metrics(tmp_path / "a")[-1]["loss"]
    # a finished run resumed again only re-exports
    again = run_training(ToyTask(**task_kw), c, tmp_path / "b", progress=False)
    assert again.step == 12 and state_equal(again.model.state_dict(), full.model.state_dict())


def test_stop_on_time_budget_then_resume_exact(tmp_path, monkeypatch):
    task_kw = dict(noise=0.1, dropout=0.2)
    c = cfg(steps=10, ckpt_every=0, log_every=1, eval_every=3)
    full = run_training(ToyTask(**task_kw), c, tmp_path / "full", progress=False)

    import unclip.train.loop as loop_mod

    clock = {"t": 0.0}

    def fake_monotonic() -> float:  # every call advances 1 s: the budget runs out after a few steps
        clock["t"] += 1.0
        return clock["t"]

    monkeypatch.setattr(loop_mod.time, "monotonic", fake_monotonic)
    stopped = run_training(ToyTask(**task_kw), c.replace(max_minutes=0.1), tmp_path / "cut", progress=False)
    monkeypatch.undo()
    assert stopped.stop_reason == "max_minutes" and 0 < stopped.step < 10
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == stopped.step
    assert (tmp_path / "cut" / "model" / "model.safetensors").is_file()
    resumed = run_training(ToyTask(**task_kw), c, tmp_path / "cut", progress=False)
    assert resumed.step == 10
    assert state_equal(resumed.model.state_dict(), full.model.state_dict())
    assert state_equal(resumed.ema_model.state_dict(), full.ema_model.state_dict())
    steps = [r["step"] for r in metrics(tmp_path / "cut") if "loss" in r]
    assert steps == list(range(1, 11))


def test_evaluation_hook_does_not_change_training(tmp_path):
    task_kw = dict(noise=0.1, dropout=0.3)
    plain = run_training(ToyTask(**task_kw), cfg(steps=10), tmp_path / "a", progress=False)
    task = ToyTask(**task_kw)
    evald = run_training(task, cfg(steps=10, eval_every=4), tmp_path / "b", progress=False)
    assert task.evaluated == [4, 8, 10]
    assert (tmp_path / "b" / "eval" / "step_000008.txt").is_file()
    assert "eval/mse" in evald.metrics
    assert state_equal(plain.model.state_dict(), evald.model.state_dict())


def test_changed_config_refused_naming_field(tmp_path):
    run_training(ToyTask(), cfg(steps=6, ckpt_every=3), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"lr: checkpoint has 0\.01, now 0\.02"):
        run_training(ToyTask(), cfg(steps=6, ckpt_every=3, lr=2e-2), tmp_path, progress=False)
    with pytest.raises(ValueError, match="steps"):
        run_training(ToyTask(), cfg(steps=7, ckpt_every=3), tmp_path, progress=False)
    # cadence fields do not change the result: accepted
    res = run_training(ToyTask(), cfg(steps=6, ckpt_every=2, log_every=1), tmp_path, progress=False)
    assert res.step == 6
    # resume=False starts over
    res = run_training(ToyTask(), cfg(steps=3, ckpt_every=3), tmp_path, resume=False, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 3


def test_other_task_refused(tmp_path):
    run_training(ToyTask(), cfg(steps=2), tmp_path, progress=False)
    other = ToyTask()
    other.name = "other"
    with pytest.raises(ValueError, match="belongs to task 'toy'"):
        run_training(other, cfg(steps=2), tmp_path, progress=False)


def test_atomic_checkpoint_write_keeps_old_on_failure(tmp_path, monkeypatch):
    run_training(ToyTask(), cfg(steps=4, ckpt_every=2), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    import unclip.io

    def broken_fsync(fd):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(unclip.io.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        ckpt_lib.save_checkpoint({"task": "toy", "step": 99}, tmp_path, {"x": 1})
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 4


def test_grad_accumulation_matches_full_batch(tmp_path):
    a = run_training(ToyTask(), cfg(steps=8, grad_accum=1), tmp_path / "a", progress=False)
    b = run_training(ToyTask(), cfg(steps=8, grad_accum=4), tmp_path / "b", progress=False)
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b.model.state_dict()[k], atol=1e-6), k


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_learns(tmp_path, precision):
    res = run_training(ToyTask(), cfg(steps=60, precision=precision, log_every=10), tmp_path, progress=False)
    rows = [r for r in metrics(tmp_path) if "loss" in r]
    assert rows[-1]["loss"] < 0.3 * rows[0]["loss"]
    assert res.model[0].weight.dtype == torch.float32
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert (ck["scaler"] is not None) == (precision == "fp16")


def test_bad_task_output_is_a_clear_error(tmp_path):
    class BadTask(ToyTask):
        def loss(self, model, batch, generator):
            return model(batch[0])  # not a (scalar, dict) pair

    with pytest.raises(TypeError, match="loss\\(\\) must return"):
        run_training(BadTask(), cfg(steps=2), tmp_path, progress=False)
    with pytest.raises(TypeError, match="does not implement TrainTask"):
        run_training(object(), cfg(steps=2), tmp_path, progress=False)


def test_non_finite_loss_raises(tmp_path):
    class NanTask(ToyTask):
        def loss(self, model, batch, generator):
            loss, m = super().loss(model, batch, generator)
            return loss * float("nan"), m

    with pytest.raises(FloatingPointError, match="non-finite"):
        run_training(NanTask(), cfg(steps=4, log_every=2), tmp_path, progress=False)


def test_loss_generator_is_fresh_per_step_and_micro_step(tmp_path):
    class Recorder(ToyTask):
        def __init__(self):
            super().__init__()
            self.draws: list[float] = []

        def loss(self, model, batch, generator):
            self.draws.append(torch.rand((), generator=generator).item())
            return super().loss(model, batch, generator)

    a, b = Recorder(), Recorder()
    run_training(a, cfg(steps=3, grad_accum=2), tmp_path / "a", progress=False)
    run_training(b, cfg(steps=3, grad_accum=2), tmp_path / "b", progress=False)
    assert len(a.draws) == 6 and len(set(a.draws)) == 6  # distinct per (step, micro-step)
    assert a.draws == b.draws  # and reproducible
    c = Recorder()
    run_training(c, cfg(steps=3, grad_accum=2, seed=1), tmp_path / "c", progress=False)
    assert not set(c.draws) & set(a.draws)


def test_sigterm_stops_cleanly_with_checkpoint_then_resume_exact(tmp_path):
    import os
    import signal

    task_kw = dict(noise=0.1, dropout=0.2)
    c = cfg(steps=10, log_every=1)
    full = run_training(ToyTask(**task_kw), c, tmp_path / "full", progress=False)

    class TermAtStep5(ToyTask):
        def get_batch(self, indices, device):
            if indices[0] == 5 * 8:
                os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler would
            return super().get_batch(indices, device)

    before = signal.getsignal(signal.SIGTERM)
    stopped = run_training(TermAtStep5(**task_kw), c, tmp_path / "cut", progress=False)
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
    assert stopped.stop_reason == "signal" and stopped.step == 6  # the running step is finished
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == 6
    resumed = run_training(ToyTask(**task_kw), c, tmp_path / "cut", progress=False)
    assert state_equal(resumed.model.state_dict(), full.model.state_dict())
    assert state_equal(resumed.ema_model.state_dict(), full.ema_model.state_dict())


def test_init_from_starts_at_another_runs_ema_weights(tmp_path):
    first = run_training(ToyTask(), cfg(steps=30), tmp_path / "a", progress=False)
    # zero learning rate: the fine-tune's weights stay exactly the first run's EMA weights
    tuned = run_training(
        ToyTask(), cfg(steps=3, lr=1e-12, init_from=str(tmp_path / "a")), tmp_path / "b", progress=False
    )
    for name, value in first.ema_model.state_dict().items():
        assert torch.allclose(tuned.model.state_dict()[name], value, atol=1e-9), name
    fresh = run_training(ToyTask(), cfg(steps=3, lr=1e-12), tmp_path / "c", progress=False)
    assert not state_equal(fresh.model.state_dict(), tuned.model.state_dict())
    with pytest.raises(ValueError, match="init_from="):
        run_training(ToyTask(), cfg(steps=3, init_from=str(tmp_path / "nowhere")), tmp_path / "d", progress=False)
    # resuming with another init_from would change the result: refused like any result field
    assert [d[0] for d in result_field_differences({"init_from": "x"}, {"init_from": None})] == ["init_from"]


def test_init_from_takes_an_exported_model_folder_in_fp16(tmp_path):
    from safetensors.torch import save_file

    first = run_training(ToyTask(), cfg(steps=30), tmp_path / "a", progress=False)
    export = tmp_path / "export"
    export.mkdir()
    half = {k: v.detach().half().contiguous() for k, v in first.ema_model.state_dict().items()}
    save_file(half, str(export / "model.safetensors"))
    tuned = run_training(ToyTask(), cfg(steps=3, lr=1e-12, init_from=str(export)), tmp_path / "b", progress=False)
    for name, value in half.items():
        got = tuned.model.state_dict()[name]
        assert got.dtype == torch.float32 and torch.allclose(got, value.float(), atol=1e-9), name
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    save_file({"other.weight": torch.zeros(2)}, str(wrong / "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors.*does not fit"):
        run_training(ToyTask(), cfg(steps=3, init_from=str(wrong)), tmp_path / "c", progress=False)


def test_make_optimizer_is_fused_where_available_and_equals_the_foreach_update():
    from unclip.train.loop import make_optimizer

    def run(fused: bool) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LayerNorm(7), torch.nn.Linear(7, 2))
        opt = make_optimizer(model, lr=1e-2, weight_decay=0.1, fused=fused)
        x = torch.randn(16, 5, generator=torch.Generator().manual_seed(1))
        for _ in range(5):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
        return opt, [p.detach().clone() for p in model.parameters()]

    fused_opt, fused = run(True)
    plain_opt, plain = run(False)
    assert fused_opt.defaults["fused"] and not plain_opt.defaults.get("fused")
    assert [g["weight_decay"] for g in fused_opt.param_groups] == [0.1, 0.0]  # weights decay, biases/norms not
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class ConvToyTask(ToyTask):
    """ToyTask through a 2-D convolution (x [B, 4] seen as a [B, 1, 2, 2] image), to test the memory format."""

    def build_model(self) -> nn.Module:
        return nn.Sequential(
            nn.Unflatten(1, (1, 2, 2)), nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(),
            nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2),
        )  # fmt: skip


def test_memory_format_choice():
    from unclip.train.loop import uses_channels_last

    conv, mlp = ConvToyTask().build_model(), ToyTask().build_model()
    assert uses_channels_last("auto", conv) and not uses_channels_last("auto", mlp)
    assert uses_channels_last("channels_last", mlp) and not uses_channels_last("contiguous", conv)
    with pytest.raises(ValueError, match="memory_format='nchw'"):
        cfg(memory_format="nchw")


def test_channels_last_training_matches_contiguous_and_exports_contiguous(tmp_path):
    runs = {}
    for fmt in ("channels_last", "contiguous"):
        res = run_training(ConvToyTask(), cfg(steps=12, memory_format=fmt), tmp_path / fmt, progress=False)
        weight = res.model[3].weight  # [4, 4, 3, 3]: its two layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
        runs[fmt] = res.model.state_dict()
        from safetensors.torch import load_file

        exported = load_file(tmp_path / fmt / "model" / "model.safetensors")  # safetensors needs contiguous tensors
        assert torch.equal(exported["3.weight"], res.ema_model.state_dict()["3.weight"].contiguous())
    for name, value in runs["contiguous"].items():
        assert torch.allclose(runs["channels_last"][name], value, atol=1e-5), name


def test_auto_precision_follows_native_bf16_training(monkeypatch):
    from unclip.train.loop import resolve_precision

    monkeypatch.setenv("UNCLIP_NATIVE_BF16", "1")
    assert resolve_precision("auto", torch.device("cpu")) == (torch.bfloat16, False)
    monkeypatch.setenv("UNCLIP_NATIVE_BF16", "0")
    assert resolve_precision("auto", torch.device("cpu")) == (None, False)
    assert resolve_precision("fp32", torch.device("cpu")) == (None, False)


def test_lr_scales_train_matching_parameters_at_their_factor(tmp_path):
    # AdamW's first step moves every parameter with a nonzero gradient by exactly lr (update m/sqrt(v) = sign g
    # up to eps), so one step at lr 1e-3 measures each parameter's learning rate in closed form.
    def one_step(name: str, **kw) -> dict[str, torch.Tensor]:
        c = cfg(steps=1, warmup_steps=0, lr=kw.pop("lr", 1e-3), grad_clip=None, **kw)
        return run_training(ToyTask(), c, tmp_path / name, progress=False).model.state_dict()

    start = one_step("start", lr=1e-30)
    plain = one_step("plain")
    scaled = one_step("scaled", lr_scales=(("0.b", 3.0), ("0.", 10.0)))  # the first matching prefix wins
    expected = {"0.weight": 10.0, "0.bias": 3.0, "3.weight": 1.0, "3.bias": 1.0}
    for name, factor in expected.items():
        moved = (scaled[name] - start[name]).abs()
        torch.testing.assert_close(moved, torch.full_like(moved, 1e-3 * factor), rtol=1e-3, atol=1e-9)
        torch.testing.assert_close(
            (plain[name] - start[name]).abs(), torch.full_like(moved, 1e-3), rtol=1e-3, atol=1e-9
        )
    logged = [r["lr"] for r in metrics(tmp_path / "scaled") if "lr" in r]
    assert logged == [pytest.approx(1e-3)]  # the schedule's lr is logged; the factors apply per group
    with pytest.raises(ValueError, match="lr_scales prefix 'decoder.' matches no trainable parameter"):
        one_step("typo", lr_scales=(("decoder.", 2.0),))
    # resuming with other factors would change the result: refused like any result field
    assert [d[0] for d in result_field_differences({"lr_scales": [["0.", 10.0]]}, {"lr_scales": []})] == ["lr_scales"]


@pytest.mark.parametrize(
    "value", [(("", 2.0),), (("a.", 0.0),), (("a.", float("inf")),), (("a.", 1.0), ("a.", 2.0)), ("a.",)]
)
def test_lr_scales_validation_names_the_field(value):
    with pytest.raises(ValueError, match=r"TrainConfig\.lr_scales="):
        TrainConfig(lr_scales=value)
