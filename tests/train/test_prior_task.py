import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.config import load_config
from unclip.data.embed_cache import null_text_for_cache
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.serialization import load_model
from unclip.pipeline.builder import tiny_clip
from unclip.stages.prior import PRIOR_DIFFUSION
from unclip.train.config import TrainConfig
from unclip.train.loop import run_training
from unclip.train.prior_task import ARPriorTask, DiffusionPriorTask

NUM, HOLDOUT = 64, 16  # NUM: conftest's PRIOR_CACHE_ROWS


def _record_rows(task):
    seen = []
    original = task.get_batch

    def get_batch(indices, device):
        batch = original(indices, device)
        seen.extend(batch.rows.tolist())
        return batch

    task.get_batch = get_batch
    return seen


def _losses(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def _config(**kw):
    base = dict(steps=40, batch_size=16, lr=3e-3, warmup_steps=2, log_every=5, ckpt_every=0, device="cpu")
    return TrainConfig(**{**base, **kw})


def test_null_text_is_clip_of_empty_caption_and_checks_the_clip(cache, clip, null_text):
    ref = clip.embed_text([""])
    assert torch.equal(null_text.pooled, ref.pooled) and torch.equal(null_text.mask, ref.mask)
    with pytest.raises(ValueError, match="does not reproduce"):
        null_text_for_cache(cache, tiny_clip(1))


def test_rows_are_epoch_permutations_of_training_rows(cache, null_text):
    task = DiffusionPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=0)
    n = NUM - HOLDOUT
    rows = task.rows_of(list(range(3 * n)))
    for e in range(3):
        assert sorted(rows[e * n : (e + 1) * n].tolist()) == list(range(n))
    assert not torch.equal(rows[:n], rows[n : 2 * n])
    assert torch.equal(task.rows_of([5, 2 * n + 7]), rows[[5, 2 * n + 7]])  # a function of the indices only
    batch = task.get_batch([0, 1, 2], torch.device("cpu"))
    r = batch.rows
    assert torch.equal(batch.image_embedding, cache.image_embedding[r])
    assert torch.equal(batch.text.tokens, cache.text.tokens[r].float())


def test_diffusion_loss_matches_an_independent_computation(cache, null_text):
    task = DiffusionPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=0)
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.get_batch(list(range(12)), torch.device("cpu"))
    loss, _ = task.loss(model, batch, torch.Generator().manual_seed(3))

    # Same draws, in the task's order: drop decisions, timesteps, noise.
    g = torch.Generator().manual_seed(3)
    b = 12
    dropped = torch.rand(b, generator=g) < task.config.text_drop_prob
    t = torch.randint(0, 1000, (b,), generator=g)
    noise = torch.randn(b, task.config.clip_dim, generator=g)
    # cosine schedule (Nichol & Dhariwal), float64, betas capped at 0.999
    f = [math.cos((i / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(1001)]
    betas = np.minimum([1 - f[i + 1] / f[i] for i in range(1000)], 0.999)
    abar = torch.tensor(np.cumprod(1 - betas))[t]
    z = cache.image_embedding[: NUM - HOLDOUT].double()
    x0 = ((batch.image_embedding.double() - z.mean(0)) / z.std(0)).float()
    x_t = (abar.sqrt()[:, None] * x0 + (1 - abar).sqrt()[:, None] * noise).float()
    pooled = torch.where(dropped[:, None], null_text.pooled, batch.text.pooled)
    tokens = torch.where(dropped[:, None, None], null_text.tokens, batch.text.tokens)
    mask = torch.where(dropped[:, None], null_text.mask, batch.text.mask)
    pred = model(x_t, t, pooled, tokens, mask)
    ref = ((pred - x0) ** 2).mean()
    assert torch.allclose(loss, ref, rtol=1e-4, atol=1e-6)


def test_diffusion_prior_trains_and_exports(tmp_path, cache, null_text):
    task = DiffusionPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=4, eval_steps=2)
    seen = _record_rows(task)
    result = run_training(task, _config(eval_every=40), tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])
    assert len(seen) == 40 * 16 and max(seen) < NUM - HOLDOUT  # held-out rows never trained on
    assert {"eval/cos_image", "eval/cos_text", "eval/baseline_cos_image"} <= set(result.metrics)

    loaded = load_model("prior", tmp_path / "model")
    assert load_config(DiffusionConfig, tmp_path / "model" / "diffusion.json") == PRIOR_DIFFUSION
    for key, value in result.ema_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    train = cache.image_embedding[: NUM - HOLDOUT].numpy().astype(np.float64)
    assert np.allclose(loaded.clip_mean.numpy(), train.mean(0), atol=1e-6)
    assert np.allclose(loaded.clip_std.numpy(), train.std(0, ddof=1), rtol=1e-5)


def test_ar_prior_fits_k_trains_and_exports(tmp_path, cache, null_text):
    task = ARPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=4)
    train = cache.image_embedding[: NUM - HOLDOUT].numpy().astype(np.float64)
    var = np.linalg.svd(train - train.mean(0), compute_uv=False) ** 2
    tail = 1 - np.cumsum(var) / var.sum()
    assert task.config.num_components == int(np.argmax(tail < 0.01)) + 1  # the < 1% rule on training rows
    seen = _record_rows(task)
    result = run_training(task, _config(eval_every=40), tmp_path, progress=False)
    losses = _losses(tmp_path)
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])
    assert max(seen) < NUM - HOLDOUT
    assert task.fit_stats["rel_mse_pca"] < 0.01

    loaded = load_model("ar_prior", tmp_path / "model")
    assert loaded.config.num_components == task.config.num_components
    for key, value in result.ema_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert np.allclose(loaded.quantizer.mean.numpy(), train.mean(0), atol=1e-12)


def test_ar_task_loss_equals_model_loss(cache, null_text):
    task = ARPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=0, num_buckets=16, dot_buckets=8)
    assert (task.config.num_buckets, task.config.dot_buckets) == (16, 8)
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.get_batch(list(range(10)), torch.device("cpu"))
    ours, metrics = task.loss(model, batch, torch.Generator().manual_seed(1))
    ref, ref_metrics = model.loss(batch.image_embedding, batch.text, null_text, torch.Generator().manual_seed(1))
    assert model.comp_head.out_features == 16 and model.dot_quantizer.num_buckets == 8
    assert torch.allclose(ours, ref) and metrics == pytest.approx(ref_metrics)


def test_tasks_refuse_bad_settings(cache, null_text):
    with pytest.raises(ValueError, match="holdout"):
        DiffusionPriorTask(cache, null_text, "tiny", holdout=NUM - 1)
    with pytest.raises(ValueError, match="preset"):
        ARPriorTask(cache, null_text, "nope", holdout=HOLDOUT)
    from unclip.models.prior import PRESETS

    with pytest.raises(ValueError, match="clip_dim"):
        DiffusionPriorTask(cache, null_text, PRESETS["shapes"](), holdout=HOLDOUT)
    wrong = TextEmbedding(null_text.pooled[:, :8], null_text.tokens, null_text.mask)
    with pytest.raises(ValueError, match="null_text"):
        DiffusionPriorTask(cache, wrong, "tiny", holdout=HOLDOUT)


def test_cli_trains_and_reports(tmp_path, cache_dir, clip):
    clip_dir = clip.save_pretrained(tmp_path / "clip", dtype=torch.float32)
    out = tmp_path / "run"
    args = ["train", "prior", "--kind", "diffusion", "--cache", str(cache_dir), "-o", str(out), "--preset", "tiny"]
    args += ["--clip", str(clip_dir), "--steps", "3", "--batch-size", "8", "--holdout", str(HOLDOUT)]
    args += ["--final-eval-rows", "4", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "text embedding z_t (baseline)" in result.output and "diffusion prior" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["train_rows"] == NUM - HOLDOUT
    assert summary["parameters"] == sum(p.numel() for p in load_model("prior", out / "model").parameters())
    quality = json.loads((out / "prior_quality.json").read_text())
    assert [q["rows"] for q in quality] == [4, 4, 4]
    bad = CliRunner().invoke(cli, [*args[:2], "--kind", "ar", *args[4:8], "--holdout", str(NUM)])
    assert bad.exit_code == 2 and "--holdout" in bad.output
    # --init-from an exported prior folder: with a vanishing learning rate the fine-tune keeps its weights
    tuned = tmp_path / "tuned"
    fine = [*args[:7], str(tuned), *args[8:], "--init-from", str(out / "model"), "--lr", "1e-12", "--ema-decay", "0"]
    result = CliRunner().invoke(cli, fine)
    assert result.exit_code == 0, result.output
    start, end = load_model("prior", out / "model").state_dict(), load_model("prior", tuned / "model").state_dict()
    assert all(torch.allclose(start[k].float(), end[k].float(), atol=1e-6) for k in start)
    fresh = tmp_path / "fresh"
    result = CliRunner().invoke(cli, [*fine[:7], str(fresh), *fine[8:-6], "--lr", "1e-12", "--ema-decay", "0"])
    assert result.exit_code == 0, result.output
    other = load_model("prior", fresh / "model").state_dict()
    assert not all(torch.allclose(start[k].float(), other[k].float(), atol=1e-6) for k in start)
