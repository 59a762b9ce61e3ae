"""The ECLIPSE-style projection prior: its network, its loss against a float64 reference, training, export, CLI."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.models.prior import DiffusionPrior
from unclip.models.projection_prior import ProjectionPrior
from unclip.models.registry import model_config
from unclip.models.serialization import load_model
from unclip.train.config import TrainConfig
from unclip.train.loop import run_training
from unclip.train.prior_task import ProjectionPriorTask, projection_prior_loss

NUM, HOLDOUT = 64, 16  # NUM: conftest's PRIOR_CACHE_ROWS


def _text(cache, rows):
    return cache.text[rows].to(dtype=torch.float32)


def test_network_is_the_diffusion_prior_at_a_fixed_step(cache):
    config = model_config("prior", "tiny")
    torch.manual_seed(0)
    projection = ProjectionPrior(config).eval()
    diffusion = DiffusionPrior(config).eval()
    diffusion.load_state_dict(projection.state_dict())  # the same parameters, key for key
    text = _text(cache, slice(0, 5))
    text_tokens = text.tokens[:, : config.text_len]
    tokens = torch.zeros(5, config.text_len, config.text_width)
    tokens[:, : text_tokens.shape[1], : text_tokens.shape[2]] = text_tokens[..., : config.text_width]
    pooled = torch.randn(5, config.clip_dim)
    mask = torch.ones(5, config.text_len, dtype=torch.bool)
    with torch.no_grad():
        got = projection(pooled, tokens, mask)
        expected = diffusion(torch.zeros(5, config.clip_dim), torch.zeros(5, dtype=torch.long), pooled, tokens, mask)
    assert torch.equal(got, expected)
    assert sum(p.numel() for p in projection.parameters()) == sum(p.numel() for p in diffusion.parameters())


def test_loss_matches_a_float64_reference():
    g = torch.Generator().manual_seed(3)
    b, d, tau, weight = 6, 8, 0.1, 0.3
    predicted, target = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    predicted_clip, text = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
    mse, infonce = projection_prior_loss(predicted, target, predicted_clip, text, weight, tau)
    p, t = predicted.double().numpy(), target.double().numpy()
    assert float(mse) == pytest.approx(((p - t) ** 2).mean(), rel=1e-6)
    a = predicted_clip.double().numpy()
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    c = text.double().numpy()
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    logits = a @ c.T / tau

    def nll(x):  # mean over rows of -log softmax at the diagonal
        x = x - x.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(x).sum(axis=1)) - np.diag(x)))

    assert float(infonce) == pytest.approx(0.5 * (nll(logits) + nll(logits.T)), rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        projection_prior_loss(predicted, target, predicted_clip, text, weight, 0.0)


def test_trains_exports_and_samples_deterministically(tmp_path, cache, null_text):
    task = ProjectionPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, eval_rows=4)
    config = TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=0,
                         eval_every=40, device="cpu", precision="fp32")  # fmt: skip
    result = run_training(task, config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert all(math.isfinite(x) for x in losses) and np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3])
    # it learned z_i from the caption: much closer to the true z_i than the caption's own z_t is
    assert result.metrics["eval/cos_image"] > result.metrics["eval/baseline_cos_image"] + 0.2
    loaded = load_model("projection_prior", tmp_path / "model")
    assert isinstance(loaded, ProjectionPrior)
    for key, value in result.ema_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    text = _text(cache, slice(NUM - HOLDOUT, NUM))
    first, second = loaded.sample(text), loaded.sample(text)
    assert first.shape == (HOLDOUT, cache.image_embedding.shape[1]) and torch.equal(first, second)
    with pytest.raises(ValueError, match="temperature"):
        ProjectionPriorTask(cache, null_text, "tiny", holdout=HOLDOUT, temperature=0.0)


def test_cli_trains_and_reports(tmp_path, cache_dir, clip):
    clip_dir = clip.save_pretrained(tmp_path / "clip", dtype=torch.float32)
    out = tmp_path / "run"
    args = ["train", "prior", "--kind", "projection", "--cache", str(cache_dir), "-o", str(out), "--preset", "tiny",
            "--clip", str(clip_dir), "--steps", "3", "--batch-size", "8", "--holdout", str(HOLDOUT),
            "--final-eval-rows", "4", "--contrastive-weight", "0.5", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "projection prior (ECLIPSE)" in result.output
    quality = json.loads((out / "prior_quality.json").read_text())
    assert [q["method"] for q in quality][-1] == "projection prior (ECLIPSE)" and quality[-1]["rows"] == 4
    assert json.loads((out / "summary.json").read_text())["kind"] == "projection"
