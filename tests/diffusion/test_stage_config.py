import pytest
import torch

from unclip.config import config_from_dict, config_to_dict
from unclip.diffusion import make_schedule
from unclip.diffusion.stage_config import DiffusionConfig


def test_round_trip_and_builders():
    c = DiffusionConfig(schedule="linear", prediction="x0", variance="learned_range")
    assert config_from_dict(DiffusionConfig, config_to_dict(c)) == c
    assert torch.equal(c.make_schedule().betas, make_schedule("linear").betas)
    p = c.parameterization()
    assert (p.prediction, p.variance) == ("x0", "learned_range")


@pytest.mark.parametrize("field,value", [("schedule", "sigmoid"), ("prediction", "score"), ("variance", "big")])
def test_bad_values_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        DiffusionConfig(**{field: value})
