"""Prior sampling: guidance is one batched forward matching the CFG formula, best-of-k keeps the best candidate."""

import pytest
import torch
from torch import nn

from unclip.encoders.base import TextEmbedding
from unclip.models.ar_prior import ARPrior, ARPriorConfig
from unclip.models.prior import DiffusionPrior, PriorConfig
from unclip.samplers import SAMPLER_NAMES
from unclip.stages.prior import repeat_text, sample_ar_prior, sample_prior, select_best_of

D, L, W = 8, 5, 8


def _text(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[:, 3:] = False
    return TextEmbedding(torch.randn(b, D, generator=g), torch.randn(b, L, W, generator=g), mask)


def _null():
    mask = torch.zeros(1, L, dtype=torch.bool)
    mask[0, :2] = True
    return TextEmbedding(torch.full((1, D), 0.1), torch.full((1, L, W), -0.2), mask)


class _StubPrior(nn.Module):
    """x0 = 0.5 x_t + pooled + mean of the visible tokens: a closed form, and it records its calls."""

    def __init__(self):
        super().__init__()
        self.config = PriorConfig(clip_dim=D, text_width=W, text_len=L, width=8, layers=1, heads=1)
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.register_buffer("clip_mean", torch.linspace(-1, 1, D))
        self.register_buffer("clip_std", torch.linspace(0.5, 2, D))
        self.calls = []

    normalize = DiffusionPrior.normalize
    denormalize = DiffusionPrior.denormalize

    @staticmethod
    def formula(x, pooled, tokens, mask):
        m = mask.float()[..., None]
        return 0.5 * x + pooled + (tokens * m).sum(1) / m.sum(1).clamp(min=1)

    def conditioned(self, text_pooled, text_tokens, text_mask):
        return lambda noisy_z, t: self(noisy_z, t, text_pooled, text_tokens, text_mask)

    def forward(self, noisy_z, t, text_pooled, text_tokens, text_mask):
        self.calls.append((noisy_z.clone(), t.clone(), text_pooled.clone(), text_mask.clone()))
        return self.formula(noisy_z, text_pooled, text_tokens, text_mask)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_guidance_is_one_batched_forward_and_matches_the_formula(scale):
    stub = _StubPrior()
    text, null = _text(3), _null()
    out = sample_prior(stub, text, null, steps=4, guidance_scale=scale, best_of=1, clamp=None,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert len(stub.calls) == 4  # one forward per step
    x, t, pooled, mask = stub.calls[-1]
    if scale == 1.0:
        assert x.shape[0] == 3  # no unconditional branch at all
        expected = stub.formula(x, text.pooled, text.tokens, text.mask)
    else:
        assert x.shape[0] == 6  # [uncond; cond] in one batch
        assert torch.equal(x[:3], x[3:]) and torch.equal(pooled[:3], null.pooled.expand(3, -1))
        assert torch.equal(pooled[3:], text.pooled) and torch.equal(mask[:3], null.mask.expand(3, -1))
        xs = x[:3]
        u = stub.formula(xs, null.pooled.expand(3, -1), null.tokens.expand(3, -1, -1), null.mask.expand(3, -1))
        c = stub.formula(xs, text.pooled, text.tokens, text.mask)
        expected = u + scale * (c - u)
    assert int(t[0]) == 0  # the last DDPM step returns its x0 prediction exactly
    torch.testing.assert_close(out, stub.denormalize(expected), rtol=1e-5, atol=1e-5)


def test_x0_clamp_is_applied_in_normalised_space():
    stub = _StubPrior()
    text = TextEmbedding(_text(2).pooled * 100, _text(2).tokens, _text(2).mask)
    out = sample_prior(stub, text, steps=2, guidance_scale=1.0, best_of=1, clamp=2.0,
                       generator=torch.Generator().manual_seed(0))  # fmt: skip
    z = stub.normalize(out)
    assert z.abs().max() <= 2.0 + 1e-5 and (z.abs() > 1.999).any()


def test_select_best_of_picks_the_max_cosine_candidate():
    text = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    cands = torch.tensor(
        [
            [[0.0, 1.0, 0.0], [10.0, 0.0, 10.0], [2.0, 0.1, 0.0]],  # caption 0: the third (cos 0.999); not the longest
            [[5.0, 5.0, 0.0], [0.0, 0.5, 0.0], [0.0, -9.0, 0.0]],  # caption 1: the second (cos 1)
        ]
    )
    best, idx = select_best_of(cands, text)
    assert idx.tolist() == [2, 1]
    assert torch.equal(best, cands[[0, 1], [2, 1]])


def test_best_of_k_keeps_the_max_cosine_candidate_of_the_same_draws():
    torch.manual_seed(0)
    cfg = PriorConfig(clip_dim=D, text_width=W, text_len=L, width=16, layers=1, heads=2)
    prior = DiffusionPrior(cfg).eval()
    prior.set_clip_stats(torch.randn(D), torch.rand(D) + 0.5)
    text, null, k = _text(3, seed=1), _null(), 3
    kw = dict(steps=3, guidance_scale=2.0, clamp=10.0)
    best = sample_prior(prior, text, null, best_of=k, generator=torch.Generator().manual_seed(5), **kw)
    # the same draws, as k separate captions each: identical noise for the whole [B*k, D] batch
    all_cands = sample_prior(prior, repeat_text(text, k), null, best_of=1, generator=torch.Generator().manual_seed(5),
                             **kw).view(3, k, D)  # fmt: skip
    cos = torch.nn.functional.cosine_similarity(all_cands, text.pooled[:, None], dim=-1)
    assert cos.argmax(1).tolist() != [0, 0, 0]  # the choice is not just "the first draw"
    torch.testing.assert_close(best, all_cands[torch.arange(3), cos.argmax(1)], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(all_cands[:, 0], all_cands[:, 1])  # the candidates really differ


@pytest.mark.parametrize("sampler", SAMPLER_NAMES)
def test_every_sampler_runs_on_the_prior(sampler):
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorConfig(clip_dim=D, text_width=W, text_len=L, width=16, layers=1, heads=2)).eval()
    out = sample_prior(prior, _text(2), _null(), steps=3, sampler=sampler, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, D) and torch.isfinite(out).all()


def test_unclip_sampler_on_the_prior_is_the_shipped_float32_walk():
    """sample_prior(sampler="unclip") is the shipped float32 walk: the CFG batch [null; text] over B·k candidate
    rows, x0 clamped in normalised space, the float32 UnCLIPScheduler walk (x_T for all rows, then one noise per
    step), de-normalised, best-of-k by cosine: equal to those steps written out with the uncached forward (to
    float rounding: the sampler runs the prior with its text keys/values cached)."""
    from unclip.diffusion.stage_config import PRIOR_DIFFUSION
    from unclip.samplers import Predictor, classifier_free_guidance, unclip_sample, unclip_timesteps

    torch.manual_seed(0)
    prior = DiffusionPrior(PriorConfig(clip_dim=D, text_width=W, text_len=L, width=16, layers=1, heads=2)).eval()
    prior.set_clip_stats(torch.randn(D), torch.rand(D) + 0.5)
    text, null, b, k, steps = _text(3, seed=1), _null(), 3, 2, 6
    kw = dict(steps=steps, guidance_scale=4.0, best_of=k, clamp=5.0, diffusion=PRIOR_DIFFUSION)
    ours = sample_prior(prior, text, null, sampler="unclip", generator=torch.Generator().manual_seed(5), **kw)

    cond, unc = repeat_text(text, k), repeat_text(null, k, batch=b)
    as_kwargs = lambda e: {"text_pooled": e.pooled, "text_tokens": e.tokens, "text_mask": e.mask.bool()}  # noqa: E731
    param = PRIOR_DIFFUSION.parameterization()
    denoiser = classifier_free_guidance(prior, 4.0, cond=as_kwargs(cond), uncond=as_kwargs(unc), param=param)
    with torch.no_grad():
        z = unclip_sample(Predictor(denoiser, param, clip_x0=5.0), PRIOR_DIFFUSION.make_schedule(), steps,
                          shape=(b * k, D), generator=torch.Generator().manual_seed(5))  # fmt: skip
    reference, _ = select_best_of(prior.denormalize(z).view(b, k, D), text.pooled)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)

    stub = _StubPrior()  # one forward per step on [null; text], at the UnCLIPScheduler's timesteps
    sample_prior(stub, text, null, sampler="unclip", generator=torch.Generator().manual_seed(5), **kw)
    assert [int(t[0]) for _, t, _, _ in stub.calls] == unclip_timesteps(1000, steps)
    x, _, pooled, _ = stub.calls[0]
    assert x.shape == (2 * b * k, D)
    assert torch.equal(pooled[: b * k], unc.pooled) and torch.equal(pooled[b * k :], cond.pooled)


def test_bad_options_raise():
    stub = _StubPrior()
    with pytest.raises(ValueError, match="null_text"):
        sample_prior(stub, _text(2), None, guidance_scale=4.0)
    with pytest.raises(ValueError, match="best_of"):
        sample_prior(stub, _text(2), _null(), best_of=0)
    with pytest.raises(ValueError, match="text.tokens"):
        sample_prior(stub, TextEmbedding(_text(2).pooled, _text(2).tokens[:, :2], _text(2).mask[:, :2]), _null())
    with pytest.raises(ValueError, match="sampler"):
        sample_prior(stub, _text(2), _null(), sampler="euler")


def test_sample_ar_prior_shapes_and_best_of():
    torch.manual_seed(0)
    cfg = ARPriorConfig(clip_dim=D, text_width=W, text_len=L, num_components=4, num_buckets=16, dot_buckets=8,
                        width=16, layers=1, heads=2)  # fmt: skip
    prior = ARPrior(cfg)
    img = torch.randn(100, D)
    prior.fit_quantizers(img, img + torch.randn(100, D))
    prior.eval()
    text = _text(3, seed=2)
    out = sample_ar_prior(prior, text, _null(), guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, D) and out.dtype == torch.float32
    best = sample_ar_prior(prior, text, best_of=4, generator=torch.Generator().manual_seed(1))
    cands, _, _ = prior.generate(repeat_text(text, 4), generator=torch.Generator().manual_seed(1))
    ref, _ = select_best_of(cands.view(3, 4, D), text.pooled)
    torch.testing.assert_close(best, ref)
