"""Issue 18 items 2-4: diffusers-style outputs and progress bars, negative prompts, mixing in CLIP space."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip import UnCLIPPipeline
from unclip.cli.main import cli
from unclip.pipeline import GenerationDefaults, UnCLIPOutput
from unclip.pipeline.builder import build_pipeline
from unclip.pipeline.mixing import combine_embeddings
from unclip.pipeline.options import PromptWarning

FAST = dict(prior_steps=3, decoder_steps=3, upsampler_steps=2)


@pytest.fixture(scope="module")
def pipe():
    p = build_pipeline("tiny", defaults=GenerationDefaults(**FAST, inversion_steps=3))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def source(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("src") / "source.png"
    pipe("a blue square", seed=3).images[0].save(path)
    return path


# ------------------------------------------------------------------ outputs and progress


def test_every_generating_call_returns_an_output_that_acts_like_its_images(pipe, source):
    out = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, seed=0)
    assert isinstance(out, UnCLIPOutput) and isinstance(out.images, list) and len(out) == 4
    assert out[1] is out.images[1] and list(out) == out.images and out.image_embeddings is None
    as_np = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, seed=0, output_type="np")
    assert np.array_equal(np.round(np.asarray(as_np) * 255).astype(np.uint8), np.asarray(out))
    full = pipe("a red circle", num_images_per_prompt=2, seed=0, return_embeddings=True)
    assert full.image_embeddings.shape == (2, pipe.clip.dim) and full.text_embeddings.shape == (2, pipe.clip.dim)
    for call in (
        lambda: pipe.vary(source, num_images=2, seed=0),
        lambda: pipe.interpolate(source, source, num_frames=3, seed=0),
        lambda: pipe.edit(source, to_text="a red star", thetas=[0.0, 0.5]),
        lambda: pipe.mix(["a red circle", source], num_images=2, seed=0),
    ):
        result = call()
        assert isinstance(result, UnCLIPOutput) and all(isinstance(i, Image.Image) for i in result)


def test_progress_bars_per_stage_on_by_default_and_silenced(capsys):
    p = build_pipeline("tiny", defaults=GenerationDefaults(**FAST))
    p("a red circle", seed=0)
    err = capsys.readouterr().err
    assert "prior" in err and "decoder" in err and "upsampler_1" in err and "3/3" in err
    p.set_progress_bar_config(disable=True)
    p("a red circle", seed=0)
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="unknown progress bar option"):
        p.set_progress_bar_config(colour_scheme="x")


# ------------------------------------------------------------------ negative prompts


def test_negative_prompt_replaces_the_unconditional_caption(pipe, monkeypatch):
    import unclip.pipeline.unclip_pipeline as module

    seen = {}
    original_decoder, original_prior = module.sample_decoder, pipe.prior.sample

    def decoder_spy(*args, null_text=None, **kwargs):
        seen["decoder"] = null_text
        return original_decoder(*args, null_text=null_text, **kwargs)

    def prior_spy(text, null_text, *args):
        seen["prior"] = null_text
        return original_prior(text, null_text, *args)

    monkeypatch.setattr(module, "sample_decoder", decoder_spy)
    monkeypatch.setattr(pipe.prior, "sample", prior_spy)
    pipe(["a red circle", "a green cross"], seed=0, decoder_guidance_scale=3.0, negative_prompt=["a blue star", "x"])
    expected = pipe.clip.embed_text(["a blue star", "x"])
    for stage in ("prior", "decoder"):
        assert torch.equal(seen[stage].tokens, expected.tokens) and torch.equal(seen[stage].mask, expected.mask)
        assert torch.equal(seen[stage].pooled, expected.pooled), stage
    pipe("a red circle", seed=0, decoder_guidance_scale=3.0)
    assert seen["decoder"] is None  # ours: the masked caption, no text
    assert torch.equal(seen["prior"].pooled, pipe.null_text().pooled)
    with pytest.raises(ValueError, match="one per prompt"):
        pipe(["a", "b"], seed=0, negative_prompt=["x"])
    with pytest.raises(TypeError, match="negative_prompt must hold strings"):
        pipe("a red circle", seed=0, negative_prompt=[3])
    with pytest.warns(PromptWarning, match="no effect"):
        pipe("a red circle", seed=0, prior_guidance_scale=1.0, decoder_guidance_scale=1.0, negative_prompt="x")


def test_negative_naming_an_attribute_lowers_its_frequency_on_the_builtin_model():
    from unclip.measure.oracle import load_oracle, predict

    p = UnCLIPPipeline.from_pretrained("shapes")
    p.set_progress_bar_config(disable=True)
    oracle = load_oracle()

    def crosses(**options):
        images = p("a red shape", num_images_per_prompt=16, seed=0, prior_guidance_scale=2.0, output_type="pt",
                   **options).images  # fmt: skip
        return sum(any(o["shape"] == "cross" for o in r["objects"]) for r in predict(oracle, images * 2 - 1))

    without, with_negative = crosses(), crosses(negative_prompt="a red cross")
    assert without >= 3 and with_negative <= without // 3, (without, with_negative)  # measured: 6 -> 0


# ------------------------------------------------------------------ mixing


def test_combine_embeddings_closed_form():
    a, b = torch.tensor([2.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    mixed = combine_embeddings(torch.stack([a, b])[:, None], [1.0, 3.0])[0].double()
    angle = 0.75 * math.pi / 2  # slerp at t = 3/4 of the right angle
    expected = torch.tensor([math.cos(angle), math.sin(angle), 0.0], dtype=torch.float64) * (0.25 * 2 + 0.75 * 4)
    assert torch.allclose(mixed, expected, atol=1e-6)
    c = torch.tensor([0.0, 0.0, 1.0])
    three = combine_embeddings(torch.stack([a, b, c])[:, None], [1.0, 1.0, 2.0])[0].double()
    direction = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64) / math.sqrt(6)
    assert torch.allclose(three, direction * (2 + 4 + 2) / 4, atol=1e-6)
    assert torch.equal(combine_embeddings(a[None, None], [5.0])[0], a)


def test_mixing_an_image_with_itself_is_its_embedding(pipe, source):
    out = pipe.mix([source, Image.open(source)], weights=[0.2, 0.8], num_images=2, seed=0, return_embeddings=True)
    z = pipe.embed_images([source]).float().cpu()
    assert torch.allclose(out.image_embeddings, z.expand(2, -1), atol=1e-5)
    texts = pipe.mix(["a red circle", "a blue star"], num_images=3, seed=0, return_embeddings=True)
    assert texts.image_embeddings.shape == (3, pipe.clip.dim) and len(texts) == 3


@pytest.mark.parametrize(
    "items,weights,error,match",
    [
        ([], None, ValueError, "at least one item"),
        ("a red circle", None, TypeError, "must be a list"),
        (["a red circle", 3], None, TypeError, "captions .str. or images"),
        (["a red circle", "a blue star"], [1.0], ValueError, "one number per item"),
        (["a red circle", "a blue star"], [1.0, -1.0], ValueError, "sum to a positive number"),
        (["a red circle"], [float("nan")], ValueError, "finite"),
    ],
)
def test_mix_refuses_bad_input(pipe, items, weights, error, match):
    with pytest.raises(error, match=match):
        pipe.mix(items, weights=weights, seed=0)


def test_cli_negative_and_mix(pipe, source, tmp_path):
    model = tmp_path / "model"
    pipe.save_pretrained(model)
    runner = CliRunner()
    one = tmp_path / "neg.png"
    result = runner.invoke(cli, ["generate", "a red circle", "--negative", "a blue star", "--model", str(model),
                                 "-o", str(one), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(Image.open(one).info["unclip"])["negative_prompt"] == "a blue star"
    out = tmp_path / "mix"
    result = runner.invoke(cli, ["mix", "a red circle", str(source), "--weights", "0.3 0.7", "-n", "2", "--model",
                                 str(model), "-o", str(out), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
    expected = pipe.mix(["a red circle", Path(source)], weights=[0.3, 0.7], num_images=2, seed=0, output_type="np")
    written = np.asarray(Image.open(out / "0001.png"))
    assert np.array_equal(written, np.round(expected.images[1] * 255).astype(np.uint8))
    bad = runner.invoke(cli, ["mix", "a red circle", str(source), "--weights", "1", "--model", str(model), "-o",
                              str(tmp_path / "x.png")])  # fmt: skip
    assert bad.exit_code != 0 and "1 weights for 2 items" in bad.output
