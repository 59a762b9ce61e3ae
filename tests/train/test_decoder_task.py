"""Decoder and upsampler training tasks on a tiny cache, through the one training loop and the CLI."""

import json

import pytest
import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.data.embed_cache import EmbeddingCache
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import build_shapes_cache
from unclip.models.serialization import load_model
from unclip.pipeline.builder import tiny_clip
from unclip.train.config import TrainConfig
from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig, UpsamplerTask, UpsamplerTaskConfig
from unclip.train.loop import run_training


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    build_shapes_cache(path, tiny_clip(), num=40, world=ShapesWorld(seed=0), size=16, progress=False)
    return path


def _config(steps=6):
    return TrainConfig(steps=steps, batch_size=8, lr=2e-3, warmup_steps=1, log_every=1, ckpt_every=0, eval_every=0)


def test_decoder_trains_and_exports(cache_dir, tmp_path):
    task = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, eval_samples=4, eval_steps=2))
    assert task.num_train == 32 and task.rows([31, 32, 33]).tolist() == [31, 0, 1]  # held-out rows never served
    result = run_training(task, _config(), tmp_path / "run", progress=False)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    model = load_model("decoder", tmp_path / "run" / "model")
    assert model.config.clip_dim == task.cache.meta["clip_dim"] and model.config.learn_sigma
    assert json.loads((tmp_path / "run" / "model" / "diffusion.json").read_text())["variance"] == "learned_range"
    out = task.evaluate(result.ema_model if hasattr(result, "ema_model") else model, 6, tmp_path / "eval")
    assert "eval_pixel_mse" in out and (tmp_path / "eval" / "decoder_step0000006.png").is_file()


def test_decoder_loss_uses_the_generator_only(cache_dir):
    task = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8))
    torch.manual_seed(0)
    model = task.build_model()
    batch = task.get_batch([0, 1, 2, 3], torch.device("cpu"))
    a = task.loss(model, batch, torch.Generator().manual_seed(5))[0]
    torch.manual_seed(123)  # global RNG must not matter
    b = task.loss(model, batch, torch.Generator().manual_seed(5))[0]
    assert torch.equal(a, b)


def test_decoder_min_snr_weighting_and_norm_groups_reach_loss_and_network(cache_dir):
    """snr_gamma reweights each sample's MSE by min_snr_weight (checked on the same draws); norm_groups
    replaces the preset's GroupNorm groups."""
    from unclip.diffusion import min_snr_weight

    plain = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8))
    weighted = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, snr_gamma=2.0))
    torch.manual_seed(0)
    model = plain.build_model()
    batch = plain.get_batch([0, 1, 2, 3], torch.device("cpu"))
    captured = {}

    def spy(task, key):
        import unclip.train.decoder_task as mod

        original = mod.training_losses

        def wrapped(*args, **kwargs):
            out = original(*args, **kwargs)
            captured[key] = (out, args[2])  # per-sample losses and the drawn steps t
            return out

        mod.training_losses = wrapped
        try:
            task.loss(model, batch, torch.Generator().manual_seed(5))
        finally:
            mod.training_losses = original

    spy(plain, "plain")
    spy(weighted, "weighted")
    (p_out, t), (w_out, t2) = captured["plain"], captured["weighted"]
    assert torch.equal(t, t2) and torch.equal(p_out["mse"], w_out["mse"])
    w = min_snr_weight(plain.schedule, t, "v", 2.0)
    assert not torch.allclose(w, torch.ones_like(w))
    torch.testing.assert_close(w_out["loss"] - w_out["vlb"] * 1.0, p_out["mse"] * w)
    grouped = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, norm_groups=4))
    norms = [m for m in grouped.build_model().modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 4 for m in norms)


def test_upsampler_trains_on_crops(cache_dir, tmp_path):
    task = UpsamplerTask(UpsamplerTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, eval_samples=2))
    seen = []
    original = task.build_model

    def build():
        model = original()
        forward = model.forward

        def spy(x, t, low_res):
            seen.append((tuple(x.shape), tuple(low_res.shape)))
            return forward(x, t, low_res)

        model.forward = spy
        return model

    task.build_model = build
    run_training(task, _config(steps=3), tmp_path / "up", progress=False)
    assert seen[0] == ((8, 3, 8, 8), (8, 3, 4, 4))  # 1/4-area crops of 16 px targets, 8 px low-res
    metrics = task.evaluate(load_model("upsampler", tmp_path / "up" / "model"), 3, tmp_path / "eval")
    assert metrics["eval_pixel_mse"] >= 0 and "eval_bicubic_mse" in metrics


def test_holdout_validation(cache_dir):
    cache = EmbeddingCache.load(cache_dir)
    with pytest.raises(ValueError, match="holdout"):
        DecoderTask(DecoderTaskConfig(preset="tiny", holdout=40), cache=cache)
    with pytest.raises(ValueError, match="degradation"):
        UpsamplerTask(UpsamplerTaskConfig(preset="tiny", holdout=8, degradation="jpeg"), cache=cache)


def test_cli_train_decoder_resumes(cache_dir, tmp_path):
    args = [
        "train",
        "decoder",
        "--cache",
        str(cache_dir),
        "--preset",
        "tiny",
        "--holdout",
        "8",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--eval-every",
        "0",
        "--ckpt-every",
        "1",
        "-o",
        str(tmp_path / "d"),
        "--no-progress",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "d" / "model" / "model.safetensors").is_file()
    before = (tmp_path / "d" / "model" / "model.safetensors").read_bytes()
    again = CliRunner().invoke(cli, args)  # resumes from the finished checkpoint: same weights
    assert again.exit_code == 0, again.output
    assert (tmp_path / "d" / "model" / "model.safetensors").read_bytes() == before
    bad = CliRunner().invoke(cli, ["train", "upsampler", "--cache", str(tmp_path / "none"), "-o", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "none" in bad.output


def test_cli_grows_an_image_embedding_grid_on_a_trained_decoder(cache_dir, tmp_path):
    """--image-embedding-grid with --init-from: the located map starts at zero, trains, and is saved and loaded."""
    common = ["train", "decoder", "--cache", str(cache_dir), "--preset", "tiny", "--holdout", "8", "--no-progress"]
    common += ["--batch-size", "4", "--eval-every", "0", "--lr", "1e-2", "--warmup-steps", "1", "--ema-decay", "0"]
    first = CliRunner().invoke(cli, [*common, "--steps", "1", "-o", str(tmp_path / "plain")])
    assert first.exit_code == 0, first.output
    grown = CliRunner().invoke(
        cli, [*common, "--steps", "3", "-o", str(tmp_path / "grid"), "--image-embedding-grid", "2",
              "--init-from", str(tmp_path / "plain")],
    )  # fmt: skip
    assert grown.exit_code == 0, grown.output
    assert "clip_grid_proj" in grown.output
    model = load_model("decoder", tmp_path / "grid" / "model")
    assert model.config.image_embedding_grid == 2
    assert model.clip_grid_proj.weight.abs().sum() > 0  # it trained
    bad = CliRunner().invoke(cli, [*common, "--steps", "1", "-o", str(tmp_path / "x"), "--image-embedding-grid", "-1"])
    assert bad.exit_code != 0 and "-1" in bad.output and "image-embedding-grid" in bad.output


def test_evaluation_reads_the_held_out_rows_not_training_rows(cache_dir, tmp_path, monkeypatch):
    """Held-out rows are cache rows, not sample indices: indices wrap onto training rows, rows do not."""
    import unclip.stages.decoding as stages

    task = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, eval_samples=3, eval_steps=1))
    seen = {}

    def fake_decoder(model, diffusion, image_embedding, text, **kw):
        seen["z"] = image_embedding.clone()
        return torch.zeros(image_embedding.shape[0], 3, 16, 16)

    monkeypatch.setattr(stages, "sample_decoder", fake_decoder)
    task.evaluate(task.build_model(), 1, tmp_path)
    torch.testing.assert_close(seen["z"], task.cache.image_embedding[32:35].float())
    assert not torch.equal(seen["z"], task.cache.image_embedding[0:3].float())  # what index wrapping gave

    up = UpsamplerTask(UpsamplerTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8, eval_samples=2))

    def fake_upsampler(model, diffusion, low, **kw):
        seen["low"] = low.clone()
        return torch.zeros(low.shape[0], 3, up.model_config.image_size, up.model_config.image_size)

    monkeypatch.setattr(stages, "sample_upsampler", fake_upsampler)
    up.evaluate(up.build_model(), 1, tmp_path)
    held_out = up.cache.pixels(torch.tensor([32, 33]), up.model_config.image_size)
    torch.testing.assert_close(seen["low"], up.degrade(held_out, None))


def test_text_tokens_are_trimmed_to_the_batch_longest_caption_without_changing_the_loss(cache_dir):
    from unclip.train.decoder_task import longest_caption

    assert longest_caption(torch.tensor([[True, True, False, False], [True, False, True, False]])) == 3
    assert longest_caption(torch.zeros(2, 5, dtype=torch.bool)) == 1
    task = DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=8))
    short = (~task.cache.text.mask[:, -1]).nonzero().flatten()  # rows whose caption leaves padding
    rows = short[short < task.num_train][:8]
    assert len(rows) >= 4
    full_mask = task.cache.text.mask[rows]
    batch = task.batch_of_rows(rows, torch.device("cpu"))
    length = batch["text_tokens"].shape[1]
    assert length == longest_caption(full_mask) < full_mask.shape[1]  # the tiny CLIP pads captions
    assert batch["text_mask"].sum() == full_mask.sum()  # no real token is cut
    padded = dict(batch, text_tokens=task.cache.text.tokens[rows].float(), text_mask=full_mask)
    torch.manual_seed(0)
    model = task.build_model()
    trimmed_loss = task.loss(model, batch, torch.Generator().manual_seed(3))[0]
    padded_loss = task.loss(model, padded, torch.Generator().manual_seed(3))[0]
    torch.testing.assert_close(trimmed_loss, padded_loss, rtol=1e-5, atol=1e-7)
