"""Each stage task (decoder, upsampler, diffusion prior, AR prior) crashed mid-run and resumed ends with the same
bits as an uninterrupted run: weights, EMA, optimizer-driven losses, row order and the loss noise all restored."""

from __future__ import annotations

import json

import pytest
import torch

from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import build_shapes_cache
from unclip.pipeline.builder import tiny_clip
from unclip.train.config import TrainConfig
from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig, UpsamplerTask, UpsamplerTaskConfig
from unclip.train.loop import run_training
from unclip.train.prior_task import ARPriorTask, DiffusionPriorTask

STEPS, CKPT_EVERY, CRASH_AT = 7, 3, 5  # the crash comes two steps after the step-3 checkpoint
CONFIG = TrainConfig(steps=STEPS, batch_size=4, lr=2e-3, warmup_steps=2, log_every=1, ckpt_every=CKPT_EVERY,
                     eval_every=0, ema_decay=0.9, device="cpu", seed=11)  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    clip = tiny_clip(0)
    path = tmp_path_factory.mktemp("resume_cache")
    build_shapes_cache(path, clip, 24, ShapesWorld(seed=0), 16, progress=False)
    cache = EmbeddingCache.load(path)
    return path, cache, null_text_for_cache(cache, clip)


def _make(kind: str, world):
    path, cache, null_text = world
    if kind == "decoder":
        return DecoderTask(DecoderTaskConfig(cache=str(path), preset="tiny", holdout=4, eval_samples=2))
    if kind == "upsampler":
        return UpsamplerTask(UpsamplerTaskConfig(cache=str(path), preset="tiny", holdout=4, eval_samples=2))
    if kind == "prior":  # 20 training rows, batch 4: the crash falls inside the second epoch's permutation
        return DiffusionPriorTask(cache, null_text, "tiny", holdout=4, eval_rows=2, eval_steps=2)
    return ARPriorTask(cache, null_text, "tiny", holdout=4, eval_rows=2)


def _crash_on_batch(task, call: int):
    """Make the task raise on its ``call``-th batch (1-based): a process dying mid-run after a checkpoint."""
    original, calls = task.get_batch, [0]

    def get_batch(indices, device):
        calls[0] += 1
        if calls[0] == call:
            raise RuntimeError("simulated crash")
        return original(indices, device)

    task.get_batch = get_batch
    return task


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("kind", ["decoder", "upsampler", "prior", "ar_prior"])
def test_stage_task_crashed_mid_run_resumes_bit_identical(kind, world, tmp_path):
    reference = run_training(_make(kind, world), CONFIG, tmp_path / "ref", progress=False)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_crash_on_batch(_make(kind, world), CRASH_AT), CONFIG, tmp_path / "cut", progress=False)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["step"] == CKPT_EVERY
    resumed = run_training(_make(kind, world), CONFIG, tmp_path / "cut", progress=False)

    assert resumed.step == STEPS
    for name in ("model", "ema_model"):
        want, got = getattr(reference, name).state_dict(), getattr(resumed, name).state_dict()
        assert want.keys() == got.keys()
        for key, value in want.items():
            assert torch.equal(got[key], value), f"{kind}: {name}.{key} differs after crash + resume"
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "ref")  # same steps, same losses, none duplicated
    assert [s for s, _ in _losses(tmp_path / "ref")] == list(range(1, STEPS + 1))


def test_a_resume_that_loses_state_would_be_caught(world, tmp_path, monkeypatch):
    # The comparison above has teeth: a resume that restored the EMA as a copy of the model ends differently.
    from unclip.train import loop

    reference = run_training(_make("decoder", world), CONFIG, tmp_path / "ref", progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(_crash_on_batch(_make("decoder", world), CRASH_AT), CONFIG, tmp_path / "cut", progress=False)
    restore = loop._restore

    def lossy_restore(run, ckpt):
        restore(run, ckpt)
        run.ema.load_state_dict(run.model.state_dict())

    monkeypatch.setattr(loop, "_restore", lossy_restore)
    resumed = run_training(_make("decoder", world), CONFIG, tmp_path / "cut", progress=False)
    want, got = reference.ema_model.state_dict(), resumed.ema_model.state_dict()
    assert any(not torch.equal(got[k], v) for k, v in want.items())
