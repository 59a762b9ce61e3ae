import numpy as np
import pytest
import torch

from unclip.config import save_config
from unclip.data.embed_cache import EmbeddingCache
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import build_shapes_cache
from unclip.encoders.base import TextEmbedding
from unclip.measure.prior_metrics import (
    AR,
    BASELINE,
    DIFFUSION,
    UNCONDITIONAL,
    cosine_scores,
    format_table,
    measure_prior_dirs,
    measure_priors,
    same_caption_references,
)
from unclip.models import build_model
from unclip.models.serialization import save_model
from unclip.pipeline.builder import tiny_clip
from unclip.stages.prior import PRIOR_DIFFUSION, sample_ar_prior, sample_prior


def _np_cos(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _text(b, d=16, length=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[:, :5] = True
    return TextEmbedding(torch.randn(b, d, generator=g), torch.randn(b, length, d, generator=g), mask)


def test_cosine_scores_match_numpy():
    g = torch.Generator().manual_seed(0)
    z, zi, zt = (torch.randn(30, 8, generator=g) for _ in range(3))
    scores = cosine_scores(z, zi, zt)
    for name, ref in (("cos_image", zi), ("cos_text", zt)):
        cos = _np_cos(z, ref)
        assert scores[name] == pytest.approx(cos.mean(), abs=1e-12)
        assert scores[f"{name}_sem"] == pytest.approx(cos.std(ddof=1) / np.sqrt(30), abs=1e-12)
    with pytest.raises(ValueError, match="shape"):
        cosine_scores(z, zi[:5], zt)


def test_measure_priors_baselines_and_sampling_plumbing():
    torch.manual_seed(0)
    n = 7
    text = _text(n)
    null = _text(1, seed=9)
    zi = torch.randn(n, 16)
    mean = torch.randn(16)
    prior = build_model("prior", "tiny").eval()
    ar = build_model("ar_prior", "tiny").eval()
    ar.fit_quantizers(torch.randn(200, 16), torch.randn(200, 16))
    kw = {"steps": 3, "guidance_scale": 2.0, "best_of": 2}
    results = measure_priors(
        zi,
        text,
        null,
        diffusion_prior=prior,
        ar_prior=ar,
        train_mean=mean,
        diffusion_kwargs=kw,
        ar_kwargs={"guidance_scale": 1.5},
        batch_size=4,
        seed=5,
    )
    assert [r.method for r in results] == [BASELINE, UNCONDITIONAL, DIFFUSION, AR]
    base, uncond, diff, arq = results
    assert base.cos_text == pytest.approx(1.0) and base.cos_image == pytest.approx(_np_cos(text.pooled, zi).mean())
    assert uncond.cos_image == pytest.approx(_np_cos(mean.expand(n, -1), zi).mean())
    # the same draws by hand: one generator per method, carried across batches of 4
    g = torch.Generator().manual_seed(5)
    ref = torch.cat([sample_prior(prior, text[s : s + 4], null, generator=g, **kw) for s in (0, 4)])
    assert diff.cos_image == pytest.approx(_np_cos(ref, zi).mean(), abs=1e-6)
    assert diff.cos_text == pytest.approx(_np_cos(ref, text.pooled).mean(), abs=1e-6)
    g = torch.Generator().manual_seed(5)
    ref = torch.cat([sample_ar_prior(ar, text[s : s + 4], null, guidance_scale=1.5, generator=g) for s in (0, 4)])
    assert arq.cos_image == pytest.approx(_np_cos(ref, zi).mean(), abs=1e-6)
    assert all(r.rows == n for r in results)

    table = format_table(results).splitlines()
    assert len(table) == 6 and table[2].startswith(f"| {BASELINE} | {base.cos_image:.4f} ± ")


def test_measure_prior_dirs_scores_the_heldout_rows(tmp_path):
    clip = tiny_clip(0)
    build_shapes_cache(tmp_path / "cache", clip, 24, ShapesWorld(seed=2), 16, progress=False)
    cache = EmbeddingCache.load(tmp_path / "cache")
    torch.manual_seed(0)
    prior = build_model("prior", "tiny")
    prior.fit_clip_stats(cache.image_embedding[:16])
    save_model(prior, tmp_path / "prior")
    save_config(PRIOR_DIFFUSION, tmp_path / "prior" / "diffusion.json")
    kw = {"steps": 2}
    results = measure_prior_dirs(
        cache, 8, diffusion_dir=tmp_path / "prior", clip=clip, rows=5, diffusion_kwargs=kw, seed=3
    )
    assert [r.method for r in results] == [BASELINE, UNCONDITIONAL, DIFFUSION]
    zi, zt = cache.image_embedding[16:21], cache.text.pooled[16:21]
    assert results[0].cos_image == pytest.approx(_np_cos(zt, zi).mean())
    mean = cache.image_embedding[:16].double().mean(0)
    assert results[1].cos_image == pytest.approx(_np_cos(mean.expand(5, -1), zi).mean())
    null = clip.embed_text([""])
    text = TextEmbedding(cache.text.pooled[16:21], cache.text.tokens[16:21].float(), cache.text.mask[16:21])
    ref = sample_prior(prior.eval(), text, null, generator=torch.Generator().manual_seed(3), **kw)
    assert results[2].cos_image == pytest.approx(_np_cos(ref, zi).mean(), abs=1e-5)
    with pytest.raises(ValueError, match="holdout"):
        measure_prior_dirs(cache, 24, clip=clip)
    # a report part after a tuning part: rows 19..21; the unconditional mean still uses the training rows only
    later = measure_prior_dirs(cache, 8, clip=clip, rows=3, row_offset=3)
    assert later[0].rows == 3
    assert later[0].cos_image == pytest.approx(_np_cos(cache.text.pooled[19:22], cache.image_embedding[19:22]).mean())
    assert later[1].cos_image == pytest.approx(_np_cos(mean.expand(3, -1), cache.image_embedding[19:22]).mean())
    with pytest.raises(ValueError, match="row_offset"):
        measure_prior_dirs(cache, 8, clip=clip, row_offset=8)


def test_same_caption_references_match_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    captions = ["a", "b", "a", "c", "a", "b", "a", "c", "d"]  # rows 0..5 train, 6..8 held out
    zi, zt = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g)
    rows = [6, 7, 8]
    proposals = {"m": torch.randn(3, 4, generator=g)}
    out = same_caption_references(captions, zi, zt, 6, rows, proposals, seed=1)
    # "a" has 3 training rows, "c" only 1 (< min_count 2), "d" none: only row 6 qualifies
    assert [r.rows for r in out] == [1, 1, 1]
    assert out[0].method.endswith("m") and out[0].cos_image == pytest.approx(_np_cos(proposals["m"][:1], zi[6:7])[0])
    members = [0, 2, 4]
    assert out[2].cos_image == pytest.approx(_np_cos(zi[members].mean(0, keepdim=True), zi[6:7])[0])
    draw = members[int(torch.randint(3, (1,), generator=torch.Generator().manual_seed(1)))]
    assert out[1].cos_image == pytest.approx(_np_cos(zi[draw : draw + 1], zi[6:7])[0])
    assert same_caption_references(captions, zi, zt, 6, [8]) == []
