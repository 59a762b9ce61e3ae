import json

import pytest
import torch

from unclip.io import load_safetensors, save_safetensors
from unclip.models import build_model
from unclip.models.serialization import load_model, save_model


@pytest.mark.parametrize("kind", ["decoder", "upsampler", "prior", "clip"])
def test_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    model = build_model(kind, "tiny")
    save_model(model, tmp_path)
    loaded = load_model(kind, tmp_path)
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_fp16_storage_loads_as_requested_dtype(tmp_path):
    model = build_model("upsampler", "tiny")
    save_model(model, tmp_path, dtype=torch.float16)
    assert all(v.dtype == torch.float16 for v in load_safetensors(tmp_path / "model.safetensors").values())
    loaded = load_model("upsampler", tmp_path, dtype=torch.float64)
    assert next(loaded.parameters()).dtype == torch.float64


def test_mismatch_is_named(tmp_path):
    save_model(build_model("upsampler", "tiny"), tmp_path)
    state = load_safetensors(tmp_path / "model.safetensors")
    key = next(iter(state))
    state[key] = torch.zeros(1)
    state["extra.weight"] = torch.zeros(1)
    save_safetensors(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="extra.weight") as info:
        load_model("upsampler", tmp_path)
    assert key in str(info.value)
    (tmp_path / "config.json").write_text(json.dumps({"bogus_field": 1}))
    with pytest.raises(ValueError, match="bogus_field"):
        load_model("upsampler", tmp_path)
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        (tmp_path / "model.safetensors").unlink()
        load_model("upsampler", tmp_path)


def test_float64_buffers_keep_precision(tmp_path):
    model = build_model("upsampler", "tiny")
    model.register_buffer("stats", torch.tensor([1.0 + 1e-12], dtype=torch.float64))
    save_model(model, tmp_path, dtype=torch.float16)
    state = load_safetensors(tmp_path / "model.safetensors")
    assert state["stats"].dtype == torch.float64 and state["stats"].item() == 1.0 + 1e-12
