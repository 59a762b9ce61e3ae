"""The quality measurements against stand-in pipelines whose answers are known."""

import numpy as np
import pytest
import torch

from unclip.data.shapes import PALETTE, ShapesWorld, full_spec, scene_record
from unclip.measure import quality
from unclip.measure.oracle import score_specified
from unclip.measure.quality import held_out_captions, text_diff_quality, text_to_image_quality, variation_quality
from unclip.pipeline.options import UnCLIPOutput


class PerfectOracle:
    """Stands in for the oracle: images are tagged with the record they were rendered from."""

    def __init__(self):
        self.records = []


def _patch_predict(monkeypatch, oracle):
    def predict(o, images):  # images are in [-1, 1]: undo the pipe's tag value t -> 2t - 1
        return [o.records[round((float(img[0, 0, 0]) + 1) / 2 * 1000)] for img in images]

    monkeypatch.setattr(quality, "predict", predict)


def _tag(oracle, record):
    oracle.records.append(record)
    return (len(oracle.records) - 1) / 1000


class RenderingPipe:
    """Returns images whose pixel (0,0) is a tag; the tag maps to a record of a scene fitting the caption."""

    image_size = 16

    def __init__(self, oracle, faithful=True):
        self.oracle, self.faithful, self.world = oracle, faithful, ShapesWorld(seed=12345)

    def _images(self, records):
        out = torch.zeros(len(records), 3, 16, 16)
        for i, record in enumerate(records):
            out[i, 0, 0, 0] = _tag(self.oracle, record)
        return UnCLIPOutput(out)

    def __call__(self, caption, num_images_per_prompt, seed, output_type, **kw):
        match = next(s for s in held_out_captions(7, 50, 1) + held_out_captions(7, 20, 2) if s.caption == caption)
        records = []
        for i in range(num_images_per_prompt):
            other = self.world.sample(seed + i)
            records.append(match.record if self.faithful else other.record)
        return self._images(records)


def test_text_to_image_quality_reads_a_faithful_pipe_as_accurate(monkeypatch):
    oracle = PerfectOracle()
    _patch_predict(monkeypatch, oracle)
    good = text_to_image_quality(RenderingPipe(oracle), oracle, seed=7, num_captions=5, images_per_caption=4)
    assert good["mean_accuracy"] == 1.0 and good["accuracy"]["shape"] == 1.0
    assert good["mean_entropy"] == 0.0  # the same scene every time: no diversity
    bad = text_to_image_quality(RenderingPipe(oracle, faithful=False), oracle, seed=7, num_captions=5,
                                images_per_caption=4)  # fmt: skip
    assert bad["mean_accuracy"] < 0.8 and bad["mean_entropy"] > 0.2
    two = text_to_image_quality(RenderingPipe(oracle), oracle, seed=7, num_captions=3, images_per_caption=2, objects=2)
    assert two["accuracy"]["relation"] == 1.0


def test_variation_and_text_diff_counts(monkeypatch):
    oracle = PerfectOracle()
    _patch_predict(monkeypatch, oracle)

    class Pipe(RenderingPipe):
        def vary(self, image, num_images, seed, output_type):
            arr = np.asarray(image)
            sample = next(s for s in held_out_captions(7, 50, 1)
                          if np.array_equal(ShapesWorld(seed=7).render(s.scene, 16), arr))  # fmt: skip
            return self._images([sample.record] * num_images)

        def edit(self, image, to_text, from_text, thetas, seed, output_type):
            recs = []
            pixels, counts = np.unique(np.asarray(image).reshape(-1, 3), axis=0, return_counts=True)
            commonest = tuple(int(v) for v in pixels[counts.argmax()])
            background = next(b for b, c in PALETTE.items() if commonest == tuple(c))
            for t in thetas:
                late = t >= 0.5
                obj = {"shape": "square" if late and "square" in to_text else "circle",
                       "colour": "blue" if late and "blue" in to_text else "red", "size": "small", "fill": "solid",
                       "position": "center"}  # fmt: skip
                recs.append({"background": background, "num_objects": 1, "objects": [obj], "relation": None})
            return self._images(recs)

    pipe = Pipe(oracle)
    var = variation_quality(pipe, oracle, seed=7, num_sources=3, variations=2)
    assert var["colour_shape_background"] == 1.0 and var["all"] == 1.0
    diff = text_diff_quality(pipe, oracle, seed=7, num_sources=4, thetas=(0.0, 0.5))
    assert diff["0.0"]["changed"] == 0.0 and diff["0.5"]["both"] == 1.0 and diff["0.0"]["kept"] == 1.0
    shape = text_diff_quality(pipe, oracle, seed=7, num_sources=4, thetas=(0.0, 0.5), change=("shape", "square"))
    assert shape["0.0"]["changed"] == 0.0 and shape["0.5"] == {"changed": 1.0, "kept": 1.0, "both": 1.0}
    with pytest.raises(ValueError, match="change must edit 'colour' or 'shape', got 'size'"):
        text_diff_quality(pipe, oracle, seed=7, num_sources=1, change=("size", "large"))


def test_held_out_captions_have_the_requested_object_count():
    assert all(len(s.scene.objects) == 2 for s in held_out_captions(3, 5, 2))
    assert full_spec(held_out_captions(3, 1, 1)[0].scene)["objects"]


def test_matching_scenes_fit_the_caption_and_leave_the_rest_free():
    """Scenes drawn for a caption show every attribute it names; the attributes it leaves free vary."""
    rng = np.random.default_rng(0)
    world = ShapesWorld(seed=3, two_object_prob=0.0)
    for sample in held_out_captions(5, 6, 1):
        scenes = quality.draw_matching_scenes(world, rng, sample.specified, 40)
        records = [scene_record(s) for s in scenes]
        assert len(records) == 40 and all(all(score_specified(r, sample.specified).values()) for r in records)
        named = sample.specified["objects"][0]
        for attr in ("size", "fill", "position"):
            values = {r["objects"][0][attr] for r in records}
            assert (len(values) == 1) == (attr in named), (sample.caption, attr, values)
    spec = {"objects": [{"shape": "star", "colour": "red"}], "background": "red"}  # impossible: same colours
    with pytest.raises(RuntimeError, match="no scene"):
        quality.draw_matching_scenes(world, rng, spec, 1, max_draws=5000)


def test_reference_entropy_of_real_renders_grows_toward_one_with_more_images():
    """Real renders of held-out captions, read by the shipped oracle: free attributes are diverse, and the
    plug-in entropy's low bias shrinks as the images per caption grow."""
    from unclip.measure.oracle import load_oracle

    oracle = load_oracle()
    few = quality.reference_entropy(oracle, 999, 4, 4, size=32)
    many = quality.reference_entropy(oracle, 999, 4, 24, size=32)
    assert few["images"] == 16 and many["images"] == 96
    assert 0.3 < few["mean_entropy"] < many["mean_entropy"] and many["mean_entropy"] > 0.8
    assert set(many["entropy"]) <= {"background", "colour", "size", "fill", "position"}


class _Cache:
    """A stand-in shapes cache: row r's z_i holds r, its record is a sample of the world."""

    def __init__(self, records):
        self.records = records
        self.image_embedding = torch.arange(len(records), dtype=torch.float32)[:, None].repeat(1, 4)


class DecodingPipe:
    """decode(z_i) returns images tagged with the record of row z_i[0] (``faithful``) or of another row."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, oracle, cache, faithful=True):
        self.oracle, self.cache, self.faithful, self.calls = oracle, cache, faithful, []

    def _settings(self):
        return "default settings"

    def decode(self, z, text, settings, generator):
        assert text is None and settings == "default settings"
        self.calls.append(int(generator.initial_seed()))
        rows = [int(r) if self.faithful else (int(r) + 1) % len(self.cache.records) for r in z[:, 0]]
        images = torch.zeros(len(rows), 3, 16, 16)
        for i, row in enumerate(rows):
            images[i, 0, 0, 0] = _tag(self.oracle, self.cache.records[row]) * 2 - 1  # decode returns [-1, 1]
        return images


def test_reconstruction_quality_compares_each_decode_with_its_own_row(monkeypatch):
    oracle = PerfectOracle()
    _patch_predict(monkeypatch, oracle)
    world = ShapesWorld(seed=5, two_object_prob=0.5)
    cache = _Cache([world.sample(i).record for i in range(12)])
    rows = list(range(4, 12))
    pipe = DecodingPipe(oracle, cache)
    good = quality.reconstruction_quality(pipe, oracle, cache, rows, batch_size=3)
    assert good["rows"] == 8 and good["all_rows"]["shape"] == 1.0 and good["one_object"]["colour"] == 1.0
    assert pipe.calls == [0, 3, 6]  # one generator per batch, seeded by the batch's position
    one_object = [r for r in rows if cache.records[r]["num_objects"] == 1]
    assert 0 < len(one_object) < len(rows)
    shifted = quality.reconstruction_quality(DecodingPipe(oracle, cache, faithful=False), oracle, cache, rows, 3)
    assert shifted["all_rows"]["count"] < 1.0 or shifted["all_rows"]["shape"] < 1.0


def test_binding_quality_counts_right_swapped_and_misplaced_pairs(monkeypatch):
    from unclip.data.shapes_captions import caption_from_spec, parse_caption
    from unclip.measure.quality import binding_captions, binding_quality

    specs = binding_captions(7, 6)
    for spec in specs:  # exactly colour and shape per object and the relation; colours differ
        assert [sorted(o) for o in spec["objects"]] == [["colour", "shape"]] * 2
        assert spec["objects"][0]["colour"] != spec["objects"][1]["colour"]
        assert parse_caption(caption_from_spec(spec)) == spec
    oracle = PerfectOracle()
    _patch_predict(monkeypatch, oracle)

    def record(spec, swap_colours=False, flip_relation=False):
        a, b = ({"size": "small", "fill": "solid", "position": "center", **o} for o in spec["objects"])
        if swap_colours:
            a["colour"], b["colour"] = b["colour"], a["colour"]
        across = {"to the left of": "above", "to the right of": "below", "above": "to the left of",
                  "below": "to the right of"}  # fmt: skip
        relation = across[spec["relation"]] if flip_relation else spec["relation"]
        return {"background": "white", "num_objects": 2, "objects": [a, b], "relation": relation}

    class Pipe(RenderingPipe):
        def __init__(self, oracle, **how):
            super().__init__(oracle)
            self.how = how

        def __call__(self, caption, num_images_per_prompt, seed, output_type, **kw):
            spec = parse_caption(caption)
            return self._images([record(spec, **self.how)] * num_images_per_prompt)

    right = binding_quality(Pipe(oracle), oracle, seed=7, num_captions=6, images_per_caption=2)
    assert right["all"] == right["objects"] == right["relation"] == right["per_object"] == 1.0
    assert right["colours_swapped"] == 0.0 and right["images"] == 12
    swapped = binding_quality(Pipe(oracle, swap_colours=True), oracle, seed=7, num_captions=6, images_per_caption=2)
    assert swapped["all"] == swapped["per_object"] == 0.0 and swapped["colours_swapped"] == 1.0
    assert swapped["relation"] == 1.0
    flipped = binding_quality(Pipe(oracle, flip_relation=True), oracle, seed=7, num_captions=6, images_per_caption=2)
    assert flipped["all"] == 0.0 and flipped["relation"] == 0.0 and flipped["objects"] == 1.0
