"""Oracle-measured quality of a pipeline on the shapes world (issue 5's targets).

- :func:`text_to_image_quality`: for held-out captions, accuracy of the attributes each caption specifies
  and the normalised entropy of the ones it leaves free (images of the same caption), separately for
  one-object and two-object captions (the latter also give relation accuracy).
- :func:`binding_quality`: two-object captions naming both colours and shapes and the relation: how often
  all of it is right (the binding test of issue 19).
- :func:`variation_quality`: how often variations of a rendered image keep its colour, shape, background
  (and every other attribute).
- :func:`text_diff_quality`: "a red circle" -> "a blue circle" edits: how often the object turns blue while
  staying a circle, per θ.
- :func:`reconstruction_quality` (issue 3's check): decode cache rows from their z_i alone and compare each
  decode with its source's record.

Captions come from a world seed the model never trained on; pass a different seed for tuning than for
reporting.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from unclip.data.shapes import Scene, ShapeObject, ShapesWorld, images_to_tensor, scene_record
from unclip.measure.oracle import pooled_accuracy, predict, record_agreement, score_specified, unspecified_entropy

Log = Callable[[str], None]


def _to_tensor(images: Any) -> torch.Tensor:
    """Pipeline output ("pt": [N, 3, H, W] in [0, 1]) -> [N, 3, H, W] in [-1, 1]."""
    return images.float() * 2 - 1


def held_out_captions(seed: int, count: int, objects: int) -> list[Any]:
    """The first ``count`` samples of ``ShapesWorld(seed)`` whose scenes hold ``objects`` objects."""
    world = ShapesWorld(seed=seed)
    out, index = [], 0
    while len(out) < count:
        sample = world.sample(index)
        if len(sample.scene.objects) == objects:
            out.append(sample)
        index += 1
    return out


@torch.no_grad()
def text_to_image_quality(
    pipe,
    oracle,
    seed: int,
    num_captions: int = 50,
    images_per_caption: int = 8,
    objects: int = 1,
    log: Log | None = None,
    **call_kwargs: Any,
) -> dict[str, Any]:
    """Specified-attribute accuracy and unspecified-attribute entropy on held-out captions.

    Returns:
        ``{"accuracy": {attr: acc, "all": ...}, "entropy": {attr: mean normalised entropy}, "mean_entropy",
        "mean_accuracy", "captions", "images"}``.
    """
    samples = held_out_captions(seed, num_captions, objects)
    scores: list[dict[str, bool]] = []
    entropies: dict[str, list[float]] = {}
    for i, sample in enumerate(samples):
        images = pipe(sample.caption, num_images_per_prompt=images_per_caption, seed=seed * 100_003 + i,
                      output_type="pt", **call_kwargs).images  # fmt: skip
        preds = predict(oracle, _to_tensor(images))
        scores += [score_specified(p, sample.specified) for p in preds]
        for key, value in unspecified_entropy(preds, sample.specified).items():
            entropies.setdefault(key.split("@")[0], []).append(value)
        if log is not None and (i + 1) % 10 == 0:
            log(f"{objects}-object captions: {i + 1}/{len(samples)}")
    accuracy = pooled_accuracy(scores)
    entropy = {k: statistics.fmean(v) for k, v in entropies.items()}
    specified_keys = [k for k in accuracy if k not in ("all", "count")]
    return {
        "accuracy": accuracy,
        "mean_accuracy": statistics.fmean(accuracy[k] for k in specified_keys) if specified_keys else float("nan"),
        "entropy": entropy,
        "mean_entropy": statistics.fmean(entropy.values()) if entropy else float("nan"),
        "captions": len(samples),
        "images": len(scores),
    }


def binding_samples(seed: int, count: int) -> list[Any]:
    """The first ``count`` two-object samples of ``ShapesWorld(seed, two_object_prob=1)`` whose objects differ in
    colour (so that a wrong binding is visible)."""
    world = ShapesWorld(seed=seed, two_object_prob=1.0)
    out, index = [], 0
    while len(out) < count:
        sample = world.sample(index)
        index += 1
        first, second = sample.scene.objects
        if first.colour != second.colour:
            out.append(sample)
    return out


def binding_spec(sample: Any) -> dict[str, Any]:
    """The caption specification naming exactly each object's colour and shape and the relation ("a red circle
    to the left of a blue square") of a two-object sample."""
    objects = [{"colour": o.colour, "shape": o.shape} for o in sample.scene.objects]
    return {"objects": objects, "relation": sample.scene.relation}


def binding_captions(seed: int, count: int) -> list[dict[str, Any]]:
    """:func:`binding_spec` of each of :func:`binding_samples` ``(seed, count)``."""
    return [binding_spec(sample) for sample in binding_samples(seed, count)]


def binding_row(pred: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """One image's binding scores against a :func:`binding_spec`: ``all``, ``objects``, ``relation``,
    ``per_object`` and ``colours_swapped`` (see :func:`binding_quality`)."""
    score = score_specified(pred, spec)
    swapped = score_specified(pred, {**spec, "objects": [
        {**spec["objects"][0], "colour": spec["objects"][1]["colour"]},
        {**spec["objects"][1], "colour": spec["objects"][0]["colour"]},
    ]})  # fmt: skip
    objects = [score[f"colour@{k}"] and score[f"shape@{k}"] for k in (1, 2)]
    return {
        "all": all(score.values()), "objects": all(objects), "relation": score["relation"],
        "per_object": sum(objects) / 2, "colours_swapped": swapped["colour@1"] and swapped["colour@2"],
    }  # fmt: skip


@torch.no_grad()
def binding_quality(
    pipe,
    oracle,
    seed: int,
    num_captions: int = 24,
    images_per_caption: int = 8,
    log: Log | None = None,
    **call_kwargs: Any,
) -> dict[str, Any]:
    """Two-object binding: how often an image of "a C1 S1 REL a C2 S2" shows both objects with their named
    colours and shapes in the named relation (:func:`binding_captions`, read by the oracle).

    Returns:
        ``all`` (every named attribute and the relation right), ``objects`` (both objects right, relation
        ignored), ``relation``, ``per_object`` (mean over the two objects of colour and shape both right),
        ``colours_swapped`` (each object wears the other's named colour), ``captions``, ``images``.
    """
    from unclip.data.shapes_captions import caption_from_spec

    specs = binding_captions(seed, num_captions)
    rows: list[dict[str, bool]] = []
    for i, spec in enumerate(specs):
        images = pipe(caption_from_spec(spec), num_images_per_prompt=images_per_caption, seed=seed * 100_003 + i,
                      output_type="pt", **call_kwargs).images  # fmt: skip
        rows += [binding_row(pred, spec) for pred in predict(oracle, _to_tensor(images))]
        if log is not None and (i + 1) % 8 == 0:
            log(f"binding captions: {i + 1}/{len(specs)}")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out.update(captions=len(specs), images=len(rows))
    return out


@torch.no_grad()
def variation_quality(
    pipe, oracle, seed: int, num_sources: int = 40, variations: int = 4, log: Log | None = None, **vary_kwargs: Any
) -> dict[str, float]:
    """Per-attribute preservation of variations of rendered one-object held-out images."""
    world = ShapesWorld(seed=seed)
    samples = held_out_captions(seed, num_sources, 1)
    results: list[dict[str, bool]] = []
    for i, sample in enumerate(samples):
        source = Image.fromarray(world.render(sample.scene, pipe.image_size))
        images = pipe.vary(source, num_images=variations, seed=i, output_type="pt", **vary_kwargs).images
        results += [record_agreement(p, sample.record) for p in predict(oracle, _to_tensor(images))]
        if log is not None and (i + 1) % 10 == 0:
            log(f"variations: {i + 1}/{len(samples)}")
    out = pooled_accuracy(results)
    out["colour_shape_background"] = float(np.mean([r["colour"] and r["shape"] and r["background"] for r in results]))
    return out


@torch.no_grad()
def reconstruction_quality(
    pipe, oracle, cache, rows: Sequence[int], batch_size: int = 50, settings: Any = None, log: Log | None = None
) -> dict[str, Any]:
    """Oracle agreement between cache rows' sources and ``pipe.decode`` of their z_i (no caption).

    Args:
        pipe: the pipeline (its decoder and upsamplers); ``settings`` default to ``pipe._settings()``.
        cache: a shapes cache (``image_embedding`` [N, D], ``records``).
        rows: cache rows, normally its held-out tail; decoded ``batch_size`` at a time, batch ``k`` with a
            generator seeded by its first position in ``rows`` (reruns reproduce).

    Returns:
        ``{"all_rows": pooled agreement, "one_object": pooled agreement on one-object rows, "rows": n}``.
    """
    settings = settings if settings is not None else pipe._settings()
    rows = list(rows)
    results: list[dict[str, bool]] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        z = cache.image_embedding[chunk].to(pipe.device, pipe.dtype)
        images = pipe.decode(z, None, settings, torch.Generator().manual_seed(start))
        results += [record_agreement(p, cache.records[r]) for p, r in zip(predict(oracle, images.float()), chunk)]
        if log is not None:
            log(f"reconstruction: {start + len(chunk)}/{len(rows)}")
    one = [r for r, row in zip(results, rows) if cache.records[row]["num_objects"] == 1]
    return {"all_rows": pooled_accuracy(results), "one_object": pooled_accuracy(one), "rows": len(rows)}


@torch.no_grad()
def text_diff_quality(
    pipe,
    oracle,
    seed: int,
    num_sources: int = 40,
    thetas: tuple[float, ...] = (0.0, 0.25, 0.5),
    source: tuple[str, str] = ("red", "circle"),
    change: tuple[str, str] = ("colour", "blue"),
    log: Log | None = None,
    **edit_kwargs: Any,
) -> dict[str, dict[str, float]]:
    """Text diffs of rendered "a C S" images (``source`` = (C, S)) toward the caption with one attribute changed:
    ``change`` = ("colour", "blue") edits toward "a blue S", ("shape", "square") toward "a C square". Per θ: the
    fraction showing the new value ("changed"), the fraction keeping the other of colour and shape and the
    background ("kept"), and both."""
    attribute, value = change
    if attribute not in ("colour", "shape"):
        raise ValueError(f"change must edit 'colour' or 'shape', got {attribute!r}")
    rng = np.random.default_rng(seed)
    world = ShapesWorld(seed=seed)
    colour, shape = source
    target_colour = value if attribute == "colour" else colour
    target_shape = value if attribute == "shape" else shape
    backgrounds = [
        c for c in ("white", "black", "yellow", "green", "purple", "orange") if c not in (colour, target_colour)
    ]
    counts = {t: {"changed": 0, "kept": 0, "both": 0} for t in thetas}
    from_text, to_text = f"a {colour} {shape}", f"a {target_colour} {target_shape}"
    other, other_value = ("shape", shape) if attribute == "colour" else ("colour", colour)
    for i in range(num_sources):
        background = backgrounds[i % len(backgrounds)]
        scene = _random_scene(rng, shape, colour, background)
        image = Image.fromarray(world.render(scene, pipe.image_size))
        edits = pipe.edit(image, to_text=to_text, from_text=from_text, thetas=list(thetas), seed=i, output_type="pt",
                          **edit_kwargs).images  # fmt: skip
        for theta, pred in zip(thetas, predict(oracle, _to_tensor(edits))):
            obj = pred["objects"][0] if pred["objects"] else {}
            changed = obj.get(attribute) == value
            kept = obj.get(other) == other_value and pred["background"] == background
            counts[theta]["changed"] += changed
            counts[theta]["kept"] += kept
            counts[theta]["both"] += changed and kept
        if log is not None and (i + 1) % 10 == 0:
            log(f"text diffs ({attribute}): {i + 1}/{num_sources}")
    return {str(t): {k: v / num_sources for k, v in c.items()} for t, c in counts.items()}


def _random_scene(rng: np.random.Generator, shape: str, colour: str, background: str) -> Scene:
    """A one-object scene with the given shape/colour/background and random size, fill, position."""
    from unclip.data.shapes import POSITIONS, SIZE_RANGES

    size = ("small", "large")[int(rng.integers(2))]
    fill = ("solid", "outlined")[int(rng.integers(2))]
    cell = int(rng.integers(9))
    lo, hi = SIZE_RANGES[size]
    r = float(rng.uniform(lo, hi))
    row, col = divmod(cell, 3)
    cx = float(rng.uniform(max(col / 3, r), min((col + 1) / 3, 1 - r)))
    cy = float(rng.uniform(max(row / 3, r), min((row + 1) / 3, 1 - r)))
    obj = ShapeObject(shape, colour, size, fill, POSITIONS[cell], cx, cy, r, float(rng.uniform(-15, 15)))
    return Scene(background, [obj], None)


def draw_matching_scenes(
    world: ShapesWorld, rng: np.random.Generator, spec: dict[str, Any], count: int, max_draws: int = 2_000_000
) -> list[Scene]:
    """``count`` scenes of ``world``'s distribution conditioned on a caption specification (rejection
    sampling: draw scenes until :func:`score_specified` finds every named attribute); raises if
    ``max_draws`` give none."""
    scenes: list[Scene] = []
    for _ in range(max_draws):
        scene = world.sample_scene(rng)
        if all(score_specified(scene_record(scene), spec).values()):
            scenes.append(scene)
            if len(scenes) == count:
                return scenes
    raise RuntimeError(f"no scene of {world!r} matches {spec} in {max_draws} draws")


def reference_entropy(
    oracle, seed: int, num_captions: int = 50, images_per_caption: int = 8, size: int = 64
) -> dict[str, Any]:
    """The free-attribute entropy of *real renders* of the held-out one-object captions of
    :func:`text_to_image_quality` (same captions, same number of images, read by the same oracle).

    For each caption, ``images_per_caption`` scenes are drawn from the world's own distribution conditioned
    on the caption (:func:`draw_matching_scenes` on one-object scenes of ``ShapesWorld(seed + 1)``),
    rendered and read. This is what a perfect text-to-image model scores on the metric at this sample
    size: the normalised plug-in entropy of a few images is biased low.

    Returns:
        ``{"entropy": {attr: mean}, "mean_entropy", "captions", "images"}``.
    """
    world = ShapesWorld(seed=seed + 1, two_object_prob=0.0)
    rng = np.random.default_rng([seed, 7])
    entropies: dict[str, list[float]] = {}
    for sample in held_out_captions(seed, num_captions, 1):
        scenes = draw_matching_scenes(world, rng, sample.specified, images_per_caption)
        images = images_to_tensor([world.render(s, size) for s in scenes])
        for key, value in unspecified_entropy(predict(oracle, images), sample.specified).items():
            entropies.setdefault(key.split("@")[0], []).append(value)
    entropy = {k: statistics.fmean(v) for k, v in entropies.items()}
    return {
        "entropy": entropy,
        "mean_entropy": statistics.fmean(entropy.values()) if entropy else float("nan"),
        "captions": num_captions,
        "images": num_captions * images_per_caption,
    }
