"""The shapes oracle: network contract, canonical order, caption scoring, training, shipped weights."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from unclip.data.shapes import Scene, ShapeObject, ShapesWorld, scene_record
from unclip.measure.oracle import (
    attention_targets,
    canonical_objects,
    caption_slots,
    decode,
    encode_records,
    evaluate_on_world,
    load_oracle,
    oracle_features,
    pooled_accuracy,
    record_agreement,
    score_specified,
    unspecified_entropy,
)
from unclip.models.oracle_net import PRESETS, ShapesOracle


def _two_object_record(relation: str) -> dict:
    a = ShapeObject("circle", "red", "small", "solid", "left", 0.2, 0.5, 0.1, 0.0)
    b = ShapeObject("square", "blue", "large", "outlined", "right", 0.75, 0.5, 0.22, 0.0)
    objects = [a, b] if relation == "to the left of" else [b, a]
    return scene_record(Scene("white", objects, relation))


def test_network_accepts_any_size_and_gives_features():
    torch.manual_seed(0)
    model = ShapesOracle(PRESETS["tiny"]()).eval()
    assert isinstance(model, ShapesOracle)
    x64 = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        for size in (32, 48, 64, 96):
            out = model(torch.nn.functional.interpolate(x64, size=size))
            assert out["shape"].shape == (2, 2, 6) and out["position"].shape == (2, 2, 9)
            assert out["count"].shape == (2, 2) and out["relation"].shape == (2, 2)
            assert out["attention"].shape == (2, 2, 64) and out["centre"].shape == (2, 2, 2)
            assert out["features"].shape == (2, PRESETS["tiny"]().feature_dim)
    feats = oracle_features(model, x64)
    assert feats.dtype == torch.float64 and feats.shape == (2, 32)
    with pytest.raises(ValueError, match="images"):
        model(torch.zeros(2, 1, 64, 64))


def test_attention_targets_average_to_the_centre():
    torch.manual_seed(0)
    centres = torch.rand(50, 2) * 0.8 + 0.1
    for side in (4, 8):
        t = attention_targets(centres, side)
        ramp = (torch.arange(side, dtype=torch.float64) + 0.5) / side
        grid = torch.stack([ramp.repeat(side), ramp.repeat_interleave(side)], dim=-1)  # (x, y) row-major
        assert torch.allclose(t.sum(-1), torch.ones(50))
        inside = ((centres > 0.5 / side) & (centres < 1 - 0.5 / side)).all(-1)
        assert torch.allclose((t.double() @ grid)[inside], centres.double()[inside], atol=1e-6)


def test_canonical_order_puts_left_or_upper_object_first():
    for rel in ("to the left of", "to the right of"):
        objects, canon = canonical_objects(_two_object_record(rel))
        assert canon == "to the left of" and objects[0]["colour"] == "red"  # red circle is on the left
    world = ShapesWorld(seed=21, two_object_prob=1.0)
    for i in range(200):
        rec = world.sample(i).record
        (a, b), canon = canonical_objects(rec)
        dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
        if canon == "to the left of":
            assert dx > 0 and abs(dx) >= abs(dy)
        else:
            assert canon == "above" and dy > 0 and abs(dy) > abs(dx)


def test_encode_decode_round_trip():
    world = ShapesWorld(seed=4, two_object_prob=0.5)
    records = [world.sample(i).record for i in range(40)]
    targets = encode_records(records)
    # logits that put all mass on the targets decode back to the records (in canonical order)
    outputs = {}
    for name in ("count", "background", "relation"):
        n = {"count": 2, "background": 8, "relation": 2}[name]
        outputs[name] = torch.nn.functional.one_hot(targets[name].clamp(min=0), n).float()
    for name, n in (("shape", 6), ("colour", 8), ("size", 2), ("fill", 2), ("position", 9)):
        outputs[name] = torch.nn.functional.one_hot(targets[name].clamp(min=0), n).float()
    outputs["centre"] = targets["centre"]
    outputs["attention"] = torch.zeros(len(records), 2, 64)
    for pred, rec in zip(decode(outputs), records):
        assert all(record_agreement(pred, rec).values()), (pred, rec)


def test_score_specified_uses_the_captions_own_order():
    pred = _two_object_record("to the left of")  # red circle left of blue square
    good = score_specified(pred, "an outlined blue square to the right of a red circle")
    assert good == {"count": True, "shape@1": True, "fill@1": True, "colour@1": True, "shape@2": True,
                    "colour@2": True, "relation": True}  # fmt: skip
    swapped = score_specified(pred, "a blue square to the left of a red circle")
    assert swapped["relation"] is True  # a horizontal pair ...
    assert not swapped["shape@1"] and not swapped["colour@2"]  # ... but bound the wrong way round
    assert score_specified(pred, "a red circle above a blue square")["relation"] is False
    one = score_specified(pred, "a red circle on a white background")
    assert one == {"count": False, "background": True, "shape": False, "colour": False}
    assert caption_slots({"objects": [{"shape": "star"}, {"shape": "cross"}], "relation": "below"}) == (
        [1, 0],
        "above",
    )
    acc = pooled_accuracy([good, swapped])
    assert acc["shape"] == 0.5 and acc["relation"] == 1.0 and acc["all"] == 0.5


def test_unspecified_entropy():
    base = {"background": "white", "num_objects": 1, "relation": None}
    preds = [
        {**base, "objects": [{"shape": "circle", "colour": c, "size": "small", "fill": "solid", "position": p}]}
        for c, p in (("red", "top"), ("blue", "top"), ("red", "left"), ("blue", "left"))
    ]
    ent = unspecified_entropy(preds, "a small circle on a white background")
    assert set(ent) == {"colour", "fill", "position"}
    assert ent["fill"] == 0.0
    assert ent["colour"] == pytest.approx(torch.log(torch.tensor(2.0)).item() / torch.log(torch.tensor(8.0)).item())


def test_tiny_oracle_loss_falls_through_the_training_loop(tmp_path):
    from unclip.train.config import TrainConfig
    from unclip.train.loop import run_training
    from unclip.train.oracle_task import OracleTask, OracleTaskConfig

    task = OracleTask(PRESETS["tiny"](), OracleTaskConfig(eval_n=20, export_dtype="float32"))
    config = TrainConfig(steps=40, batch_size=16, lr=3e-3, warmup_steps=5, log_every=5, ckpt_every=0, seed=0)
    result = run_training(task, config, tmp_path / "run", progress=False)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [x["loss"] for x in lines if "loss" in x]
    assert sum(losses[-2:]) / 2 < 0.95 * losses[0], losses  # 8 heads start near sum(log K) ~ 11
    loaded = load_oracle(path=tmp_path / "run" / "model")
    x = ShapesWorld(seed=0).batch(range(4), 64)[0]
    with torch.no_grad():
        assert torch.allclose(loaded(x)["count"], result.ema_model(x)["count"], atol=1e-5)


def test_load_oracle_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_oracle(path=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"feature_dim": 64}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_oracle(path=tmp_path)


def test_shipped_oracle_reads_fresh_renders():
    oracle = load_oracle()
    n = 200
    acc64 = evaluate_on_world(oracle, seed=31_337, n=n, size=64, two_object_prob=0.25)
    print("shipped oracle, 200 fresh 64 px renders:", acc64)
    for name, value in acc64.items():
        if name != "all":
            assert value >= 0.95, (name, value)
    # the oracle is sensitive: a wrong record is read as wrong
    world = ShapesWorld(seed=31_337)
    sample = world.sample(0)
    wrong = copy.deepcopy(sample.record)
    wrong["objects"][0]["shape"] = "star" if wrong["objects"][0]["shape"] != "star" else "cross"
    from unclip.measure.oracle import predict

    pred = predict(oracle, world.batch([0], 64)[0])[0]
    assert not all(record_agreement(pred, wrong).values())
