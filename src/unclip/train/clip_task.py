"""Contrastive training of our small CLIP on the shapes world, as a :class:`TrainTask`.

Sample ``i`` is shapes-world scene ``i`` of ``ShapesWorld(data_seed, full_caption_prob=...)`` rendered at
``image_size``; its caption is the world's partial caption (a random subset of attributes) or, with
probability ``full_caption_prob`` (default 0.5), the full caption, so that image embeddings must carry
every attribute while text embeddings learn to leave unnamed attributes open.

Partial captions match many images ("a star" fits every one-star scene), so the loss is InfoNCE with
*multi-positive* targets: text j counts as a match for image i whenever the attributes that caption j
names all hold in scene i (:func:`caption_matches`). Under DDP the contrastive batch is each rank's
micro-batch (no all-gather).

*Hard negatives* (``hard_negatives`` per caption, default 1): copies of the batch's captions with one named
attribute changed (:func:`hard_negative_spec`: mostly the object's colour or shape, the attributes a random
batch rarely needs to tell apart, which is why z_i had lost them) are appended as extra texts; they count as
a match only for an image they truly describe.

:func:`evaluate_retrieval` measures image->text top-1 retrieval among N held-out pairs (a world seed
never used for training) for any :class:`ClipEncoder`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unclip.data.shapes import ShapesWorld, full_caption, images_to_tensor
from unclip.data.shapes_captions import COLOURS, FILLS, POSITIONS, RELATIONS, SHAPES, SIZES, caption_from_spec
from unclip.encoders.base import ClipEncoder
from unclip.encoders.own_clip import OwnClipEncoder
from unclip.encoders.tokenizer import WordByteTokenizer
from unclip.io import atomic_write_text
from unclip.measure.oracle import canonical_objects
from unclip.models.clip import PRESETS, ClipConfig, SmallCLIP, contrastive_loss

_INVERSE_RELATION = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}


def caption_matches(spec: dict[str, Any], record: dict[str, Any]) -> bool:
    """True when every attribute a caption names (``spec``, see ``shapes_captions``) holds in the scene
    ``record``. Two-object captions may name the objects in either order (with the relation inverted)."""
    objects = record["objects"]
    named = spec["objects"]
    if len(named) != len(objects):
        return False
    if spec.get("background") is not None and spec["background"] != record["background"]:
        return False

    def objects_fit(order: list[dict[str, Any]]) -> bool:
        return all(all(obj.get(k) == v for k, v in want.items()) for want, obj in zip(named, order))

    if len(objects) == 1:
        return objects_fit(objects)
    if objects_fit(objects) and spec.get("relation") == record["relation"]:
        return True
    return objects_fit(objects[::-1]) and spec.get("relation") == _INVERSE_RELATION.get(record["relation"])


_VALUES = {"colour": COLOURS, "shape": SHAPES, "size": SIZES, "fill": FILLS, "position": POSITIONS}
# Relative odds of the attribute a hard negative changes (among those the caption names).
_NEGATIVE_WEIGHTS = {"colour": 4.0, "shape": 4.0, "size": 1.0, "fill": 1.0, "position": 1.0, "relation": 1.0}


def hard_negative_spec(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """A copy of the caption specification ``spec`` with one named attribute changed to another value.

    The attribute is drawn among the named object attributes (and the relation of two-object captions)
    with the odds of ``_NEGATIVE_WEIGHTS``: colour and shape four times as often as the others.
    """
    choices: list[tuple[int | None, str]] = [
        (i, key) for i, obj in enumerate(spec["objects"]) for key in _VALUES if key in obj
    ]
    if spec.get("relation") is not None:
        choices.append((None, "relation"))
    weights = np.array([_NEGATIVE_WEIGHTS[key] for _, key in choices])
    index, key = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
    out = {**spec, "objects": [dict(obj) for obj in spec["objects"]]}
    if index is None:
        out["relation"] = str(rng.choice([r for r in RELATIONS if r != spec["relation"]]))
    else:
        old = out["objects"][index][key]
        out["objects"][index][key] = str(rng.choice([v for v in _VALUES[key] if v != old]))
    return out


# Relative odds of what a binding negative exchanges between the two objects of a caption.
_SWAP_WEIGHTS = {"colour": 4.0, "shape": 4.0, "size": 1.0, "fill": 1.0, "objects": 2.0}


def swap_negative_spec(spec: dict[str, Any], rng: np.random.Generator) -> dict[str, Any] | None:
    """A *binding* negative of a two-object caption: the same words with one attribute exchanged between the
    two objects ("a red circle left of a blue square" -> "a blue circle left of a red square"; an attribute
    only one object names moves to the other), or the two objects exchanged under the same relation.

    A bag of words cannot tell it from the caption, so only an embedding that binds attributes to objects
    separates them. None for one-object captions and when nothing differs between the two objects.
    """
    if len(spec["objects"]) != 2:
        return None
    first, second = spec["objects"]
    choices = [key for key in ("colour", "shape", "size", "fill") if first.get(key) != second.get(key)]
    if first != second:
        choices.append("objects")
    if not choices:
        return None
    weights = np.array([_SWAP_WEIGHTS[key] for key in choices])
    key = choices[int(rng.choice(len(choices), p=weights / weights.sum()))]
    a, b = dict(first), dict(second)
    if key == "objects":
        a, b = b, a
    else:
        a.pop(key, None)
        b.pop(key, None)
        if key in second:
            a[key] = second[key]
        if key in first:
            b[key] = first[key]
    return {**spec, "objects": [a, b]}


@dataclass
class ClipBatch:
    """images [B, 3, S, S] in [-1, 1]; ids/mask [T, L] (T >= B texts: the B captions, then hard negatives);
    targets [B, T] float (1 where text j fits image i)."""

    images: torch.Tensor
    ids: torch.Tensor
    mask: torch.Tensor
    targets: torch.Tensor


class ClipTask:
    """:class:`TrainTask` for :class:`SmallCLIP` on the shapes world.

    Args:
        config: the network's config, or a preset name of ``unclip.models.clip.PRESETS``.
        data_seed: world seed of the training data.
        eval_seed: world seed of the held-out pairs used by :meth:`evaluate` (must differ from ``data_seed``).
        full_caption_prob: probability that a training caption is the full caption.
        eval_pairs: held-out pairs scored at each periodic evaluation.
        hard_negatives: altered copies of each caption added as extra texts (:func:`hard_negative_spec`).
        swap_negatives: binding negatives of each two-object caption added as extra texts
            (:func:`swap_negative_spec`: an attribute or the objects exchanged between the two objects).
        two_object_prob: share of two-object scenes in the training world (the world's default 0.25).
        export_dtype: dtype of the exported weights (fp16 halves the size; loading casts back to fp32).
    """

    name = "clip"
    # Settings outside the ClipConfig that change training (checked on resume, unclip.train.settings).
    setting_attributes = ("data_seed", "hard_negatives", "swap_negatives", "world")

    def __init__(
        self,
        config: ClipConfig | str = "shapes",
        data_seed: int = 0,
        eval_seed: int = 1_000_003,
        full_caption_prob: float = 0.5,
        eval_pairs: int = 500,
        export_dtype: torch.dtype = torch.float16,
        hard_negatives: int = 1,
        swap_negatives: int = 0,
        two_object_prob: float = 0.25,
    ):
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"unknown CLIP preset {config!r}; choose one of {sorted(PRESETS)}")
            config = PRESETS[config]()
        if data_seed == eval_seed:
            raise ValueError(f"eval_seed must differ from data_seed (both {data_seed}): held-out pairs must be unseen")
        if not isinstance(hard_negatives, int) or hard_negatives < 0:
            raise ValueError(f"hard_negatives must be an integer >= 0, got {hard_negatives!r}")
        if not isinstance(swap_negatives, int) or swap_negatives < 0:
            raise ValueError(f"swap_negatives must be an integer >= 0, got {swap_negatives!r}")
        if eval_pairs < 2:
            raise ValueError(f"eval_pairs must be >= 2, got {eval_pairs}")
        self.config = config
        self.tokenizer = WordByteTokenizer(max_length=config.context_length)
        if self.tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"vocab_size {config.vocab_size} < tokenizer vocabulary {self.tokenizer.vocab_size}")
        self.world = ShapesWorld(seed=data_seed, full_caption_prob=full_caption_prob, two_object_prob=two_object_prob)
        self.eval_seed = eval_seed
        self.eval_pairs = eval_pairs
        self.hard_negatives = hard_negatives
        self.swap_negatives = swap_negatives
        self.data_seed = data_seed
        self.export_dtype = export_dtype

    def build_model(self) -> nn.Module:
        return SmallCLIP(self.config)

    def get_batch(self, indices: list[int], device: torch.device) -> ClipBatch:
        samples = [self.world.sample(i) for i in indices]
        images = images_to_tensor([self.world.render(s.scene, self.config.image_size) for s in samples])
        specs = [s.specified for s in samples]
        captions = [s.caption for s in samples]
        for s in samples:
            rng = np.random.default_rng([self.data_seed, s.index, 7])  # a pure function of the sample
            for _ in range(self.hard_negatives):
                specs.append(hard_negative_spec(s.specified, rng))
                captions.append(caption_from_spec(specs[-1]))
            for _ in range(self.swap_negatives):
                swapped = swap_negative_spec(s.specified, rng)
                if swapped is not None:
                    specs.append(swapped)
                    captions.append(caption_from_spec(swapped))
        ids, mask = self.tokenizer(captions)
        targets = torch.tensor(
            [[float(caption_matches(spec, s.record)) for spec in specs] for s in samples], dtype=torch.float32
        )
        return ClipBatch(images.to(device), ids.to(device), mask.to(device), targets.to(device))

    def loss(self, model: nn.Module, batch: ClipBatch, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        logits = model(batch.images, batch.ids, batch.mask)
        loss = contrastive_loss(logits, batch.targets)
        with torch.no_grad():
            hit = float(batch.targets.gather(1, logits.argmax(1, keepdim=True)).mean())
            core = model.module if hasattr(model, "module") else model
            inv_temp = float(core.inverse_temperature())
        return loss, {"i2t_top1_batch": hit, "inv_temperature": inv_temp}

    def encoder(self, model: nn.Module) -> OwnClipEncoder:
        """A :class:`ClipEncoder` over a copy of ``model`` (the original is left untouched)."""
        return OwnClipEncoder(copy.deepcopy(model), self.tokenizer)

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        metrics = evaluate_retrieval(
            self.encoder(model), seed=self.eval_seed, num_pairs=self.eval_pairs, size=self.config.image_size
        )
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / f"retrieval_{step:07d}.json", json.dumps(metrics, indent=1) + "\n")
        return metrics

    def export(self, model: nn.Module, out_dir: Path) -> None:
        self.encoder(model).save_pretrained(out_dir, dtype=self.export_dtype)


# ---------------------------------------------------------------------------------------------- evaluation


def _embed_scenes(encoder: ClipEncoder, world: ShapesWorld, samples: list, size: int, chunk: int = 250) -> torch.Tensor:
    """Image embeddings [N, D] (float32, CPU) of the samples' scenes rendered at ``size``, in chunks."""
    parts = []
    for s in range(0, len(samples), chunk):
        images = images_to_tensor([world.render(x.scene, size) for x in samples[s : s + chunk]])
        parts.append(encoder.embed_images(images).float().cpu())
    return torch.cat(parts)


def _embed_captions(encoder: ClipEncoder, texts: list[str], chunk: int = 250) -> torch.Tensor:
    """L2-normalised pooled text embeddings [N, D] (float32, CPU), in chunks."""
    parts = [encoder.embed_text(texts[s : s + chunk]).pooled.float().cpu() for s in range(0, len(texts), chunk)]
    return F.normalize(torch.cat(parts), dim=-1)


@torch.no_grad()
def evaluate_retrieval(
    encoder: ClipEncoder, seed: int = 1_000_003, num_pairs: int = 1000, size: int = 64, chunk: int = 250
) -> dict[str, float]:
    """Image->text (and text->image) top-1 retrieval among ``num_pairs`` held-out shapes-world pairs.

    The pairs are samples ``0..num_pairs-1`` of ``ShapesWorld(seed)`` (default caption statistics) rendered
    at ``size``. Each image is scored against all ``num_pairs`` captions by cosine similarity.

    Returns:
        ``i2t_top1_caption``: with the pairs' own (partial) captions, the retrieved caption is the image's
        own caption (the same text counts: partial captions repeat); ``i2t_top1_caption_consistent``: the
        retrieved caption's named attributes all hold in the image; ``i2t_top1_full``: with each pair's
        full caption, the retrieved caption is the image's own; ``t2i_top1_full``: the same from text to
        image; ``num_pairs``.
    """
    if num_pairs < 2:
        raise ValueError(f"num_pairs must be >= 2, got {num_pairs}")
    world = ShapesWorld(seed=seed)
    samples = [world.sample(i) for i in range(num_pairs)]
    zi = F.normalize(_embed_scenes(encoder, world, samples, size, chunk), dim=-1)

    captions = [x.caption for x in samples]
    fulls = [full_caption(x.scene) for x in samples]
    sim = zi @ _embed_captions(encoder, captions, chunk).t()
    best = sim.argmax(1).tolist()
    own = sum(captions[j] == captions[i] for i, j in enumerate(best)) / num_pairs
    consistent = sum(caption_matches(samples[j].specified, samples[i].record) for i, j in enumerate(best)) / num_pairs
    sim_full = zi @ _embed_captions(encoder, fulls, chunk).t()
    i2t_full = sum(fulls[j] == fulls[i] for i, j in enumerate(sim_full.argmax(1).tolist())) / num_pairs
    t2i_full = sum(fulls[j] == fulls[i] for i, j in enumerate(sim_full.argmax(0).tolist())) / num_pairs
    return {
        "i2t_top1_caption": own,
        "i2t_top1_caption_consistent": consistent,
        "i2t_top1_full": i2t_full,
        "t2i_top1_full": t2i_full,
        "num_pairs": float(num_pairs),
    }


def _probe_accuracy(z: torch.Tensor, labels: list[str], num_fit: int) -> float:
    classes = sorted(set(labels))
    y = torch.tensor([classes.index(v) for v in labels])
    with torch.enable_grad():
        head = nn.Linear(z.shape[1], len(classes)).to(z.dtype)
        opt = torch.optim.LBFGS(head.parameters(), max_iter=200)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(z[:num_fit]), y[:num_fit]) + 1e-4 * head.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
    return float((head(z[num_fit:]).argmax(1) == y[num_fit:]).float().mean())


@torch.no_grad()
def probe_attributes(
    encoder: ClipEncoder, seed: int = 777, num_scenes: int = 3000, num_fit: int = 2000, size: int = 64
) -> dict[str, float]:
    """Linear-probe accuracy of scene attributes from image embeddings (what z_i carries).

    Embeds scenes ``0..num_scenes-1`` of ``ShapesWorld(seed)``, L2-normalises (×10), fits a logistic
    regression (L-BFGS) per attribute on the first ``num_fit`` and reports accuracy on the rest, for the
    background and the first object's colour, shape, position, size and fill; ``chance/<name>`` is the
    majority-class rate of the test part.
    """
    if not 0 < num_fit < num_scenes:
        raise ValueError(f"need 0 < num_fit < num_scenes, got {num_fit} and {num_scenes}")
    world = ShapesWorld(seed=seed)
    samples = [world.sample(i) for i in range(num_scenes)]
    z = F.normalize(_embed_scenes(encoder, world, samples, size), dim=-1) * 10
    attributes = {"background": [x.record["background"] for x in samples]}
    for key in ("colour", "shape", "position", "size", "fill"):
        attributes[key] = [x.record["objects"][0][key] for x in samples]
    out: dict[str, float] = {}
    for name, labels in attributes.items():
        out[name] = _probe_accuracy(z, labels, num_fit)
        test = labels[num_fit:]
        out[f"chance/{name}"] = max(test.count(v) for v in set(test)) / len(test)
    return out


@torch.no_grad()
def evaluate_binding(
    encoder: ClipEncoder, seed: int = 778, num_scenes: int = 1500, num_fit: int = 1000, size: int = 64
) -> dict[str, float]:
    """How well the embeddings bind attributes to objects, on two-object scenes of ``ShapesWorld(seed)``.

    - ``probe/<slot>_<attribute>``: linear-probe accuracy (fit on the first ``num_fit`` scenes, scored on the
      rest) of colour and shape of each object from z_i, objects in the oracle's canonical slot order (A is
      left of / above B), and of the relation; ``chance/...`` the test part's majority rate;
    - ``swap/<key>``: share of scenes whose image embedding is closer to its full caption than to the same
      caption with ``key`` (colour, shape) exchanged between the two objects (0.5 = no binding; scenes whose
      two objects agree on ``key`` are skipped).
    """
    if not 0 < num_fit < num_scenes:
        raise ValueError(f"need 0 < num_fit < num_scenes, got {num_fit} and {num_scenes}")
    world = ShapesWorld(seed=seed, two_object_prob=1.0, full_caption_prob=1.0)
    samples = [world.sample(i) for i in range(num_scenes)]
    z = F.normalize(_embed_scenes(encoder, world, samples, size), dim=-1)
    out: dict[str, float] = {}
    slots = [canonical_objects(x.record) for x in samples]
    labels = {"relation": [rel for _, rel in slots]}
    for k, slot in enumerate("AB"):
        for key in ("colour", "shape"):
            labels[f"{slot}_{key}"] = [objs[k][key] for objs, _ in slots]
    for name, values in labels.items():
        out[f"probe/{name}"] = _probe_accuracy(z * 10, values, num_fit)
        test = values[num_fit:]
        out[f"chance/{name}"] = max(test.count(v) for v in set(test)) / len(test)

    own = (z * _embed_captions(encoder, [x.caption for x in samples])).sum(-1)
    for key in ("colour", "shape"):
        keep, swapped = [], []
        for i, x in enumerate(samples):
            first, second = x.specified["objects"]
            if first.get(key) == second.get(key):
                continue
            objects = [dict(first), dict(second)]
            objects[0][key], objects[1][key] = second[key], first[key]
            keep.append(i)
            swapped.append(caption_from_spec({**x.specified, "objects": objects}))
        if keep:
            index = torch.tensor(keep)
            other = (z[index] * _embed_captions(encoder, swapped)).sum(-1)
            out[f"swap/{key}"] = float((own[index] > other).float().mean())
    return out
