"""Residual upsamplers (diffusion on x - bicubic(low-res)): the image-space conversion against closed forms, the
sampler returning the bicubic resize when the residual is predicted as zero, training targets and the CLI."""

from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import build_shapes_cache
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.interop.diffusers_config import upsampler_config_to_diffusers
from unclip.models import build_model, model_config
from unclip.models.serialization import load_model
from unclip.nn.resample import bicubic_resize
from unclip.pipeline.builder import tiny_clip
from unclip.stages.decoding import image_space_denoiser, keep_input_mean, sample_upsampler
from unclip.train.decoder_task import UpsamplerTask, UpsamplerTaskConfig


def x0_from(prediction: str, out: torch.Tensor, x_t: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Closed-form x0 from a prediction at x_t = a x0 + s eps (a^2 + s^2 = 1), float64."""
    if prediction == "eps":
        return (x_t - s * out) / a
    if prediction == "x0":
        return out
    return a * x_t - s * out  # v = a eps - s x0


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_image_space_prediction_is_the_bicubic_plus_the_residual_prediction(prediction):
    torch.manual_seed(0)
    diffusion = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction=prediction, variance="fixed_small")
    weight = torch.randn(3, 6, 1, 1, dtype=torch.float64)
    base = torch.rand(2, 3, 8, 8, dtype=torch.float64) * 2 - 1

    def residual_net(r_t, t):  # any function of (r_t, t, conditioning)
        return torch.nn.functional.conv2d(torch.cat([r_t, base], 1), weight) * (1 + t.view(-1, 1, 1, 1) / 1000)

    denoise = image_space_denoiser(residual_net, diffusion, base)
    schedule = diffusion.make_schedule()
    x_t = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for step in (0, 37, 500, 999):
        t = torch.full((2,), step)
        a = schedule.sqrt_alphas_cumprod[step].double()
        s = schedule.sqrt_one_minus_alphas_cumprod[step].double()
        r_t = x_t - a * base
        image_x0 = x0_from(prediction, denoise(x_t, t), x_t, a, s)
        residual_x0 = x0_from(prediction, residual_net(r_t, t), r_t, a, s)
        torch.testing.assert_close(image_x0, base + residual_x0, rtol=1e-9, atol=1e-9)


def _zero_residual_upsampler(prediction: str):
    config = replace(model_config("upsampler", "tiny"), residual=True)
    net = build_model("upsampler", config).eval()
    with torch.no_grad():
        for p in net.out.parameters():
            p.zero_()  # the network predicts 0 for every input
    return net, DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction=prediction, variance="fixed_small")


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_a_residual_upsampler_predicting_a_zero_residual_returns_the_bicubic_resize(sampler):
    net, diffusion = _zero_residual_upsampler("x0")
    low = torch.rand(2, 3, 8, 8) * 2.4 - 1.2  # out of range on purpose: the stage clamps it first
    out = sample_upsampler(net, diffusion, low, steps=5, sampler=sampler, generator=torch.Generator().manual_seed(0))
    expected = bicubic_resize(low.clamp(-1, 1), (16, 16)).clamp(-1, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    plain = build_model("upsampler", model_config("upsampler", "tiny")).eval()
    plain.load_state_dict(net.state_dict())
    away = sample_upsampler(plain, diffusion, low, steps=5, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert (away - expected).abs().mean() > 0.1  # the same weights read as an image-space upsampler: zeros


def test_keep_mean_gives_the_input_mean_and_keeps_the_sampled_detail():
    """Float64 closed form: the output's per-channel mean is the (clamped) input's, the zero-mean part is the
    sample's; through sample_upsampler it shifts an image-space upsampler's output the same way."""
    gen = torch.Generator().manual_seed(5)
    low = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) * 1.2 - 0.6
    images = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64) * 0.8 - 0.4
    kept = keep_input_mean(images, low)
    torch.testing.assert_close(kept.mean(dim=(2, 3)), low.mean(dim=(2, 3)))
    centred = lambda a: a - a.mean(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(centred(kept), centred(images))
    with pytest.raises(ValueError, match=r"differ in batch or channels"):
        keep_input_mean(images, low[:1])
    net, diffusion = _zero_residual_upsampler("x0")
    plain = build_model("upsampler", model_config("upsampler", "tiny")).eval()
    plain.load_state_dict(net.state_dict())
    low = low.float()
    away = sample_upsampler(plain, diffusion, low, steps=3, generator=torch.Generator().manual_seed(0))
    shifted = sample_upsampler(
        plain, diffusion, low, steps=3, generator=torch.Generator().manual_seed(0), keep_mean=True
    )
    torch.testing.assert_close(shifted, keep_input_mean(away, low))
    assert (away.mean(dim=(2, 3)) - low.mean(dim=(2, 3))).abs().max() > 0.05


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    build_shapes_cache(path, tiny_clip(), num=24, world=ShapesWorld(seed=0), size=16, progress=False)
    return path


def test_training_target_is_the_residual_and_the_cli_exports_a_residual_model(cache_dir, tmp_path):
    task = UpsamplerTask(UpsamplerTaskConfig(cache=str(cache_dir), preset="tiny", holdout=4, residual=True))
    high = torch.rand(2, 3, 16, 16) * 2 - 1
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    torch.testing.assert_close(task.target(high, low), high - bicubic_resize(low, (16, 16)))
    plain = UpsamplerTask(UpsamplerTaskConfig(cache=str(cache_dir), preset="tiny", holdout=4))
    assert plain.target(high, low) is high
    out = tmp_path / "up"
    args = ["train", "upsampler", "--cache", str(cache_dir), "--preset", "tiny", "--holdout", "4", "--residual"]
    args += ["--steps", "2", "--batch-size", "4", "--eval-every", "0", "-o", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert load_model("upsampler", out / "model").config.residual is True


def test_diffusers_export_refuses_a_residual_upsampler():
    with pytest.raises(ValueError, match="residual"):
        upsampler_config_to_diffusers(replace(model_config("upsampler", "tiny"), residual=True))
    upsampler_config_to_diffusers(model_config("upsampler", "tiny"))  # the same network, image space: exports


def test_blur_prob_mixes_blurred_and_plain_downscales_per_image(cache_dir):
    from unclip.data.degrade import gaussian_blur_degrade

    high = torch.rand(64, 3, 16, 16) * 2 - 1
    blurred, clean = gaussian_blur_degrade(high, 8), gaussian_blur_degrade(high, 8, sigma=0)
    config = UpsamplerTaskConfig(cache=str(cache_dir), preset="tiny", holdout=4, blur_prob=0.5)
    low = UpsamplerTask(config).degrade(high, torch.Generator().manual_seed(0))
    is_blurred = [torch.equal(low[i], blurred[i]) for i in range(64)]
    is_clean = [torch.equal(low[i], clean[i]) for i in range(64)]
    assert all(b != c for b, c in zip(is_blurred, is_clean))  # every image is exactly one of the two
    assert 16 < sum(is_blurred) < 48
    again = UpsamplerTask(config).degrade(high, torch.Generator().manual_seed(0))
    assert torch.equal(low, again)
    paper = UpsamplerTask(replace(config, blur_prob=1.0)).degrade(high, torch.Generator().manual_seed(0))
    assert torch.equal(paper, blurred)
    with pytest.raises(ValueError, match="blur_prob"):
        UpsamplerTask(replace(config, blur_prob=1.5))
