import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.data.shapes import ShapesWorld
from unclip.encoders.loading import load_clip
from unclip.train.clip_task import ClipTask, caption_matches, evaluate_retrieval, hard_negative_spec
from unclip.train.task import TrainTask


def _record(objects, background="white", relation=None):
    return {"background": background, "num_objects": len(objects), "objects": objects, "relation": relation}


def test_caption_matches_named_attributes_only():
    red_circle = {"shape": "circle", "colour": "red", "size": "small", "fill": "solid", "position": "left"}
    blue_star = {"shape": "star", "colour": "blue", "size": "large", "fill": "outlined", "position": "right"}
    one = _record([red_circle])
    assert caption_matches({"objects": [{"shape": "circle"}]}, one)
    assert caption_matches({"objects": [{"shape": "circle", "position": "left"}], "background": "white"}, one)
    assert not caption_matches({"objects": [{"shape": "circle", "colour": "blue"}]}, one)
    assert not caption_matches({"objects": [{"shape": "circle"}], "background": "black"}, one)
    two = _record([red_circle, blue_star], relation="to the left of")
    assert not caption_matches({"objects": [{"shape": "circle"}]}, two)  # object count differs
    spec = {"objects": [{"shape": "circle"}, {"shape": "star", "colour": "blue"}], "relation": "to the left of"}
    assert caption_matches(spec, two)
    swapped = {"objects": [{"shape": "star"}, {"shape": "circle"}], "relation": "to the right of"}
    assert caption_matches(swapped, two)
    assert not caption_matches({**swapped, "relation": "to the left of"}, two)
    # every sample's own caption fits its own scene
    world = ShapesWorld(seed=5, full_caption_prob=0.5)
    for i in range(200):
        s = world.sample(i)
        assert caption_matches(s.specified, s.record), s.caption


def test_batches_are_deterministic_and_targets_include_the_diagonal():
    task = ClipTask("tiny", data_seed=3, eval_seed=4)
    assert isinstance(task, TrainTask)
    a = task.get_batch([10, 11, 12, 13, 14, 15], torch.device("cpu"))
    b = task.get_batch([10, 11, 12, 13, 14, 15], torch.device("cpu"))
    assert torch.equal(a.images, b.images) and torch.equal(a.ids, b.ids) and torch.equal(a.targets, b.targets)
    assert a.images.shape == (6, 3, 16, 16) and a.ids.shape == (12, 16)  # 6 captions + 6 hard negatives
    assert a.targets.shape == (6, 12) and torch.all(a.targets.diagonal() == 1)
    # a hard negative counts as a match exactly when it describes the image (checked by the spec reader)
    samples = [task.world.sample(i) for i in range(10, 16)]
    for k, s in enumerate(samples):
        rng = np.random.default_rng([3, s.index, 7])
        negative = hard_negative_spec(s.specified, rng)
        for i, other in enumerate(samples):
            assert a.targets[i, 6 + k] == float(caption_matches(negative, other.record))
        assert a.targets[k, 6 + k] == 0  # never describes its own image
    plain = ClipTask("tiny", data_seed=3, eval_seed=4, hard_negatives=0).get_batch([10, 11], torch.device("cpu"))
    assert plain.ids.shape[0] == 2 and plain.targets.shape == (2, 2)
    model = task.build_model()
    loss, metrics = task.loss(model, a, torch.Generator())
    assert loss.ndim == 0 and loss.requires_grad and {"i2t_top1_batch", "inv_temperature"} <= set(metrics)


def test_train_clip_command_trains_exports_and_evaluates(tmp_path):
    out = tmp_path / "run"
    args = ["train", "clip", "--preset", "tiny", "--steps", "2", "--batch-size", "8", "-o", str(out)]
    args += ["--eval-every", "2", "--eval-pairs", "8", "--final-eval-pairs", "12", "--threads", "1", "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "retrieval.json").read_text())
    assert metrics["num_pairs"] == 12 and 0 <= metrics["i2t_top1_full"] <= 1
    assert (out / "eval" / "retrieval_0000002.json").is_file()
    enc = load_clip(out / "model")
    assert enc.embed_images(torch.zeros(2, 3, 16, 16)).shape == (2, 16)
    # the same evaluation through the public function agrees with what the command wrote
    again = evaluate_retrieval(enc, seed=1_000_003, num_pairs=12, size=16)
    assert again["i2t_top1_full"] == metrics["i2t_top1_full"]
    bad = CliRunner().invoke(cli, ["train", "clip", "-o", str(out), "--eval-seed", "0"])
    assert bad.exit_code == 2 and "--eval-seed" in bad.output


def test_probe_attributes_reads_what_the_embedding_holds():
    """A fake encoder whose embedding is the one-hot background colour: background is read perfectly,
    the (independent) object shape is not."""
    from unclip.data.shapes import PALETTE

    colours = torch.tensor(list(PALETTE.values()), dtype=torch.float32) / 127.5 - 1

    class BackgroundOnly:
        def embed_images(self, images):
            corner = images[:, :, 0, 0]  # objects stay away from the corner pixel
            return torch.nn.functional.one_hot(torch.cdist(corner, colours).argmin(1), 8).float()

    from unclip.train.clip_task import probe_attributes

    out = probe_attributes(BackgroundOnly(), num_scenes=300, num_fit=200, size=16)
    assert out["background"] == 1.0
    assert out["shape"] < out["chance/shape"] + 0.15


def test_hard_negative_spec_changes_exactly_one_named_attribute():
    world = ShapesWorld(seed=8, full_caption_prob=0.5)
    rng = np.random.default_rng(0)
    changed = {}
    for i in range(400):
        spec = world.sample(i).specified
        neg = hard_negative_spec(spec, rng)
        diffs = [("relation", None)] if neg.get("relation") != spec.get("relation") else []
        for k, (a, b) in enumerate(zip(spec["objects"], neg["objects"])):
            assert set(a) == set(b)
            diffs += [(key, k) for key in a if a[key] != b[key]]
        assert len(diffs) == 1 and neg.get("background") == spec.get("background")
        changed[diffs[0][0]] = changed.get(diffs[0][0], 0) + 1
        assert not caption_matches(neg, world.sample(i).record)
    # colour and shape dominate (odds 4:1 against each other attribute)
    assert changed["colour"] > 2 * changed.get("size", 0) and changed["shape"] > 2 * changed.get("fill", 0)
    with pytest.raises(ValueError, match="hard_negatives"):
        ClipTask("tiny", data_seed=3, eval_seed=4, hard_negatives=-1)


def test_swap_negative_spec_exchanges_between_the_two_objects_only():
    from unclip.train.clip_task import swap_negative_spec

    red_circle, blue_square = {"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "blue"}
    spec = {"objects": [red_circle, blue_square], "relation": "to the left of", "background": "white"}
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(60):
        neg = swap_negative_spec(spec, rng)
        assert neg["relation"] == spec["relation"] and neg["background"] == "white"
        # the same words (a bag of attributes cannot tell them apart), bound differently
        bag = sorted(v for obj in neg["objects"] for v in obj.values())
        assert bag == sorted(v for obj in spec["objects"] for v in obj.values())
        seen.add(tuple(tuple(sorted(o.items())) for o in neg["objects"]))
    blue_circle, red_square = (("colour", "blue"), ("shape", "circle")), (("colour", "red"), ("shape", "square"))
    assert seen == {
        (blue_circle, red_square),  # colours exchanged
        (red_square, blue_circle),  # shapes exchanged
        ((("colour", "blue"), ("shape", "square")), (("colour", "red"), ("shape", "circle"))),  # objects exchanged
    }
    # an attribute only one object names moves to the other one
    moved = swap_negative_spec({**spec, "objects": [{"shape": "circle", "colour": "red"}, {"shape": "circle"}]}, rng)
    assert moved["objects"] in ([{"shape": "circle"}, {"shape": "circle", "colour": "red"}],)
    assert swap_negative_spec({"objects": [red_circle]}, rng) is None
    assert swap_negative_spec({"objects": [red_circle, dict(red_circle)], "relation": "above"}, rng) is None
    # on real scenes whose two objects differ, a binding negative never describes the scene
    world = ShapesWorld(seed=8, full_caption_prob=1.0, two_object_prob=1.0)
    for i in range(200):
        s = world.sample(i)
        neg = swap_negative_spec(s.specified, rng)
        a, b = s.record["objects"]
        if neg is not None and any(a[k] != b[k] for k in ("colour", "shape", "size", "fill")):
            assert not caption_matches(neg, s.record), (s.caption, neg)


def test_swap_negatives_are_added_for_two_object_captions_only():
    task = ClipTask("tiny", data_seed=3, eval_seed=4, hard_negatives=0, swap_negatives=2, two_object_prob=0.5)
    indices = list(range(12))
    batch = task.get_batch(indices, torch.device("cpu"))
    pairs = sum(len(task.world.sample(i).specified["objects"]) == 2 for i in indices)
    assert 0 < pairs < 12 and 12 + pairs <= batch.ids.shape[0] <= 12 + 2 * pairs
    assert torch.all(batch.targets[:, 12:].sum(1) <= 1)  # a swap only ever fits a scene it truly describes
    with pytest.raises(ValueError, match="swap_negatives"):
        ClipTask("tiny", data_seed=3, eval_seed=4, swap_negatives=-1)


class _SlotEncoder:
    """A fake CLIP that reads scene records (looked up by the rendered pixels) and captions exactly:
    one-hot colour and shape per canonical slot (``bind=True``) or their sum over both objects (a bag)."""

    def __init__(self, seed: int, num_scenes: int, size: int, bind: bool):
        from unclip.data.shapes import images_to_tensor

        world = ShapesWorld(seed=seed, two_object_prob=1.0, full_caption_prob=1.0)
        self.records = {}
        for i in range(num_scenes):
            s = world.sample(i)
            self.records[images_to_tensor([world.render(s.scene, size)]).numpy().tobytes()] = s.record
        self.bind = bind

    def _vector(self, objects):
        from unclip.data.shapes_captions import COLOURS, SHAPES

        parts = []
        for obj in objects:
            v = torch.zeros(len(COLOURS) + len(SHAPES))
            v[COLOURS.index(obj["colour"])] = 1
            v[len(COLOURS) + SHAPES.index(obj["shape"])] = 1
            parts.append(v)
        return torch.cat(parts) if self.bind else torch.cat([parts[0] + parts[1]] * 2)

    def embed_images(self, images):
        from unclip.measure.oracle import canonical_objects

        return torch.stack(
            [self._vector(canonical_objects(self.records[x[None].numpy().tobytes()])[0]) for x in images]
        )

    def embed_text(self, texts):
        from types import SimpleNamespace

        from unclip.data.shapes_captions import parse_caption
        from unclip.measure.oracle import caption_slots

        rows = []
        for text in texts:
            spec = parse_caption(text)
            slots, _ = caption_slots(spec)
            ordered = [spec["objects"][slots.index(k)] for k in (0, 1)]
            rows.append(self._vector(ordered))
        return SimpleNamespace(pooled=torch.stack(rows))


def test_evaluate_binding_separates_a_binding_embedding_from_a_bag_of_attributes():
    from unclip.train.clip_task import evaluate_binding

    kw = dict(seed=778, num_scenes=240, num_fit=160, size=16)
    bound = evaluate_binding(_SlotEncoder(778, 240, 16, bind=True), **kw)
    bag = evaluate_binding(_SlotEncoder(778, 240, 16, bind=False), **kw)
    assert bound["swap/colour"] == 1.0 and bound["swap/shape"] == 1.0
    assert bag["swap/colour"] == 0.0 and bag["swap/shape"] == 0.0  # ties: never closer to its own caption
    assert bound["probe/A_colour"] > 0.9 and bound["probe/B_shape"] > 0.9
    assert bag["probe/A_colour"] < bound["probe/A_colour"] - 0.2
