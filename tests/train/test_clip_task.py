import json

import torch
from click.testing import CliRunner

from unclip.cli.main import cli
from unclip.data.shapes import ShapesWorld
from unclip.encoders.loading import load_clip
from unclip.train.clip_task import ClipTask, caption_matches, evaluate_retrieval
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
    assert a.images.shape == (6, 3, 16, 16) and a.ids.shape == (6, 16)
    assert torch.all(a.targets.diagonal() == 1)
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
