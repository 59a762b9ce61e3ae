"""``override_defaults``: the benchmarks' ``--set FIELD=VALUE`` on a pipeline's generation defaults."""

from __future__ import annotations

import pytest

from unclip.pipeline.options import GenerationDefaults, override_defaults


def test_override_defaults_types_each_value_as_its_field_and_leaves_the_original() -> None:
    base = GenerationDefaults()
    new = override_defaults(base, ["prior_guidance_scale=2", "best_of=3", "upsampler_keep_mean=true", "sampler=ddim"])
    assert new.prior_guidance_scale == 2.0 and isinstance(new.prior_guidance_scale, float)
    assert new.best_of == 3 and isinstance(new.best_of, int)
    assert new.upsampler_keep_mean is True
    assert new.sampler == "ddim"
    assert base.prior_guidance_scale == 4.0 and base.best_of == 2 and base.upsampler_keep_mean is False
    assert override_defaults(base, []) == base


@pytest.mark.parametrize(
    "item, named",
    [
        ("prior_guidance=2", "prior_guidance=2"),
        ("best_of", "best_of"),
        ("best_of=", "best_of="),
        ("best_of=two", "best_of takes a value of type int, got 'two'"),
        ("upsampler_keep_mean=yes", "takes true or false"),
    ],
)
def test_override_defaults_rejects_bad_items_by_name(item: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        override_defaults(GenerationDefaults(), [item])
