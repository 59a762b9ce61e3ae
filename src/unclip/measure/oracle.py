"""The shapes oracle: labels, predictions, caption scoring and loading the shipped weights.

**Canonical object order.** The oracle reads two-object scenes into two slots, A and B, ordered so that
the relation from A to B is always "to the left of" (when |dx| >= |dy|, A is the left object) or
"above" (otherwise, A is the upper object). A record's objects are put in this order by
:func:`canonical_objects`; a caption's objects are matched to slots by its own relation
(:func:`caption_slots`): "X to the right of Y" puts X in slot B and Y in slot A.

Predicted records (:func:`predict`) have the shapes-world record layout (``background``,
``num_objects``, ``objects`` with ``shape``, ``colour``, ``size``, ``fill``, ``position``, ``cx``,
``cy``, ``relation``) with objects in canonical order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unclip.data.shapes_captions import COLOURS, FILLS, POSITIONS, SHAPES, SIZES, parse_caption
from unclip.models.oracle_net import IMAGE_HEADS, NUM_SLOTS, SLOT_HEADS, OracleConfig, ShapesOracle

ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "oracle"
OBJECT_ATTRIBUTES = tuple(SLOT_HEADS)  # shape, colour, size, fill, position
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "size": SIZES,
    "fill": FILLS,
    "position": POSITIONS,
    "background": COLOURS,
    "count": ("1", "2"),
    "relation": ("to the left of", "above"),
}
# The network's heads have fixed class counts; the logits are read through these names, so they must agree.
_HEADS = {**SLOT_HEADS, **IMAGE_HEADS}
if any(len(names) != _HEADS[head] for head, names in CLASS_NAMES.items()):
    raise ImportError(f"the shapes vocabulary {CLASS_NAMES} does not fit the oracle's heads {_HEADS}")
IGNORE = -100  # target value of a label that does not exist (slot B of a one-object image, ...)
_CANONICAL = {"to the left of": 0, "above": 1}
_SWAPPED = {"to the right of": 0, "below": 1}


def canonical_objects(record: dict[str, Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Objects of a shapes-world record in canonical slot order, and the canonical relation of slot A to
    slot B ("to the left of" | "above", ``None`` for one object)."""
    objects = list(record["objects"])
    if len(objects) == 1:
        return objects, None
    if len(objects) != 2:
        raise ValueError(f"record has {len(objects)} objects; expected 1 or 2")
    rel = record["relation"]
    if rel in _CANONICAL:
        return objects, rel
    if rel in _SWAPPED:
        return objects[::-1], CLASS_NAMES["relation"][_SWAPPED[rel]]
    raise ValueError(f"unknown relation {rel!r} in record")


def caption_slots(spec: dict[str, Any]) -> tuple[list[int], str | None]:
    """For a caption specification (``parse_caption`` / ``ShapesSample.specified``), the oracle slot of
    each named object (in caption order) and the canonical relation the caption asks for."""
    objects = spec["objects"]
    if len(objects) == 1:
        return [0], None
    rel = spec.get("relation")
    if rel in _CANONICAL:
        return [0, 1], rel
    if rel in _SWAPPED:
        return [1, 0], CLASS_NAMES["relation"][_SWAPPED[rel]]
    raise ValueError(f"two-object specification needs a relation, got {rel!r}")


def object_masks(record: dict[str, Any], side: int) -> torch.Tensor:
    """Rendered coverage [2, side, side] in [0, 1] of a record's objects in canonical slot order (zeros
    for an absent slot B): the oracle's mask targets."""
    from unclip.data.shapes_render import object_coverage

    out = torch.zeros(NUM_SLOTS, side, side)
    for k, obj in enumerate(canonical_objects(record)[0]):
        alpha, (y0, y1, x0, x1) = object_coverage(
            obj["shape"], obj["fill"], obj["cx"], obj["cy"], obj["r"], obj["rotation"], side
        )
        out[k, y0:y1, x0:x1] = torch.from_numpy(alpha)
    return out


def encode_records(records: Sequence[dict[str, Any]], mask_side: int | None = None) -> dict[str, torch.Tensor]:
    """Training targets of records: long tensors ``count, background, relation`` [B] and per slot
    ``shape, colour, size, fill, position`` [B, 2] (``IGNORE`` where absent), ``centre`` float [B, 2, 2]
    (cx, cy), ``slot_mask`` bool [B, 2], and with ``mask_side`` the objects' coverage ``mask``
    [B, 2, mask_side, mask_side]."""
    b = len(records)
    out = {name: torch.full((b,), IGNORE, dtype=torch.long) for name in IMAGE_HEADS}
    out.update({name: torch.full((b, NUM_SLOTS), IGNORE, dtype=torch.long) for name in SLOT_HEADS})
    out["centre"] = torch.zeros(b, NUM_SLOTS, 2)
    out["slot_mask"] = torch.zeros(b, NUM_SLOTS, dtype=torch.bool)
    for i, rec in enumerate(records):
        objects, rel = canonical_objects(rec)
        out["count"][i] = len(objects) - 1
        out["background"][i] = COLOURS.index(rec["background"])
        if rel is not None:
            out["relation"][i] = _CANONICAL[rel]
        for k, obj in enumerate(objects):
            for name in SLOT_HEADS:
                out[name][i, k] = CLASS_NAMES[name].index(obj[name])
            out["centre"][i, k] = torch.tensor([obj["cx"], obj["cy"]])
            out["slot_mask"][i, k] = True
    if mask_side is not None:
        out["mask"] = torch.stack([object_masks(rec, mask_side) for rec in records])
    return out


def attention_targets(centres: torch.Tensor, side: int) -> torch.Tensor:
    """Soft targets [..., side*side] for the slot attention: bilinear weights of each centre [..., 2]
    (cx, cy in [0, 1]) over the centres of the 4 nearest cells, so that their weighted cell centre is
    the object's centre (clamped at the border cells)."""
    g = (centres.float() * side - 0.5).clamp(0, side - 1)  # continuous cell coordinates
    lo = g.floor().clamp(max=side - 2).long() if side > 1 else g.floor().long()
    frac = g - lo
    out = torch.zeros(*centres.shape[:-1], side * side, device=centres.device)
    for dy in (0, 1):
        for dx in (0, 1):
            wx = frac[..., 0] if dx else 1 - frac[..., 0]
            wy = frac[..., 1] if dy else 1 - frac[..., 1]
            idx = ((lo[..., 1] + dy).clamp(max=side - 1) * side + (lo[..., 0] + dx).clamp(max=side - 1)).unsqueeze(-1)
            out.scatter_add_(-1, idx, (wx * wy).unsqueeze(-1))
    return out


def oracle_loss(
    outputs: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    centre_weight: float = 10.0,
    mask_weight: float = 10.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum of the heads' cross-entropies (absent labels ignored), the slot attentions' cross-entropy to
    :func:`attention_targets`, ``mask_weight`` x the masks' binary cross-entropy to the rendered
    coverage (when ``targets`` has ``mask``), and ``centre_weight`` x the MSE of the centres. Returns
    (scalar loss, per-head accuracies on this batch and the centre RMSE in pixels of a 64 px image)."""
    device = outputs["count"].device
    loss = torch.zeros((), device=device)
    metrics: dict[str, float] = {}
    for name in (*IMAGE_HEADS, *SLOT_HEADS):
        logits = outputs[name].float().reshape(-1, outputs[name].shape[-1])
        target = targets[name].reshape(-1).to(device)
        valid = target != IGNORE
        if valid.any():
            loss = loss + F.cross_entropy(logits, target, ignore_index=IGNORE)
            metrics[f"acc_{name}"] = (logits.argmax(-1)[valid] == target[valid]).float().mean().item()
    mask = targets["slot_mask"].to(device)
    if mask.any():
        centres = targets["centre"].to(device)[mask]  # [M, 2]
        if "attention" in outputs:
            attn = outputs["attention"].float()[mask]  # [M, s*s]
            side = int(round(attn.shape[-1] ** 0.5))
            loss = loss + F.cross_entropy(attn, attention_targets(centres, side))
        if "mask" in outputs and "mask" in targets:
            loss = loss + mask_weight * F.binary_cross_entropy_with_logits(
                outputs["mask"].float(), targets["mask"].to(device).float()
            )
        err = ((outputs["centre"].float()[mask] - centres) ** 2).sum(-1)
        loss = loss + centre_weight * err.mean()
        metrics["centre_rmse_px64"] = 64.0 * err.mean().sqrt().item()
    return loss, metrics


def decode(outputs: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Network outputs -> predicted records (objects in canonical order)."""
    idx = {name: outputs[name].argmax(-1).cpu() for name in (*IMAGE_HEADS, *SLOT_HEADS)}
    centre = outputs["centre"].float().cpu()
    records = []
    for i in range(outputs["count"].shape[0]):
        n = int(idx["count"][i]) + 1
        objects = []
        for k in range(n):
            obj: dict[str, Any] = {name: CLASS_NAMES[name][int(idx[name][i, k])] for name in SLOT_HEADS}
            obj["cx"], obj["cy"] = float(centre[i, k, 0]), float(centre[i, k, 1])
            objects.append(obj)
        rel = CLASS_NAMES["relation"][int(idx["relation"][i])] if n == 2 else None
        records.append(
            {"background": CLASS_NAMES["background"][int(idx["background"][i])], "num_objects": n,
             "objects": objects, "relation": rel}
        )  # fmt: skip
    return records


@torch.no_grad()
def predict(oracle: ShapesOracle, images: torch.Tensor, batch_size: int = 256) -> list[dict[str, Any]]:
    """Read images [B, 3, H, W] in [-1, 1] (any square size) into predicted records."""
    was_training = oracle.training
    oracle.eval()
    try:
        out: list[dict[str, Any]] = []
        for start in range(0, images.shape[0], batch_size):
            out += decode(oracle(images[start : start + batch_size]))
        return out
    finally:
        oracle.train(was_training)


@torch.no_grad()
def oracle_features(oracle: ShapesOracle, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate features [B, F] (float64, CPU) of images [B, 3, H, W] in [-1, 1], in eval mode."""
    was_training = oracle.training
    oracle.eval()
    try:
        chunks = [
            oracle.features(images[s : s + batch_size]).double().cpu() for s in range(0, images.shape[0], batch_size)
        ]
        return torch.cat(chunks)
    finally:
        oracle.train(was_training)


def record_agreement(pred: dict[str, Any], truth: dict[str, Any]) -> dict[str, bool]:
    """Which attributes of a predicted record match a true record (both put in canonical order).

    Keys: ``count``, ``background``, per object ``shape``, ``colour``, ``size``, ``fill``, ``position``
    suffixed ``@A`` / ``@B`` for two-object scenes, and ``relation``. Object attributes and the relation
    count as wrong when the predicted number of objects is wrong.
    """
    t_objects, t_rel = canonical_objects(truth)
    p_objects, p_rel = canonical_objects(pred)
    same_n = len(p_objects) == len(t_objects)
    out = {"count": same_n, "background": pred["background"] == truth["background"]}
    for k, t_obj in enumerate(t_objects):
        suffix = "" if len(t_objects) == 1 else "@" + "AB"[k]
        for name in OBJECT_ATTRIBUTES:
            out[name + suffix] = same_n and p_objects[k][name] == t_obj[name]
    if t_rel is not None:
        out["relation"] = same_n and p_rel == t_rel
    return out


def score_specified(pred: dict[str, Any], spec: dict[str, Any] | str) -> dict[str, bool]:
    """Which of a caption's specified attributes a predicted record satisfies.

    Args:
        pred: a predicted record (from :func:`predict`).
        spec: the caption's specification (``ShapesSample.specified``) or the caption text itself.

    Returns:
        ``{attribute: correct}`` for every attribute the caption names: ``count`` (always),
        ``background``, ``shape``/``colour``/``size``/``fill``/``position`` (suffixed ``@1``, ``@2`` with the
        object's place in the caption when it names two objects) and ``relation``. With a wrong object
        count, object attributes and the relation are wrong.
    """
    if isinstance(spec, str):
        spec = parse_caption(spec)
    slots, rel = caption_slots(spec)
    p_objects, p_rel = canonical_objects(pred)
    same_n = len(p_objects) == len(spec["objects"])
    out = {"count": same_n}
    if spec.get("background") is not None:
        out["background"] = pred["background"] == spec["background"]
    two = len(spec["objects"]) == 2
    for place, (slot, named) in enumerate(zip(slots, spec["objects"])):
        for name, value in named.items():
            if name in OBJECT_ATTRIBUTES:
                key = f"{name}@{place + 1}" if two else name
                out[key] = same_n and p_objects[slot][name] == value
    if rel is not None:
        out["relation"] = same_n and p_rel == rel
    return out


def unspecified_entropy(preds: Sequence[dict[str, Any]], spec: dict[str, Any] | str) -> dict[str, float]:
    """Diversity of the attributes a caption leaves free, over images generated for that one caption.

    Args:
        preds: predicted records (:func:`predict`) of images generated from the same caption.
        spec: the caption's specification or text.

    Returns:
        ``{attribute: normalised entropy in [0, 1]}`` for each object attribute the caption does not name
        (suffixed ``@1``/``@2`` for two-object captions; images with the wrong object count are skipped)
        and ``background`` when it is not named. Normalised by the number of classes of the attribute.
    """
    from unclip.measure.metrics import normalized_entropy

    if isinstance(spec, str):
        spec = parse_caption(spec)
    if not preds:
        raise ValueError("unspecified_entropy needs at least one predicted record")
    slots, _ = caption_slots(spec)
    out: dict[str, float] = {}
    if spec.get("background") is None:
        out["background"] = normalized_entropy([p["background"] for p in preds], len(COLOURS))
    matching = [canonical_objects(p)[0] for p in preds if p["num_objects"] == len(spec["objects"])]
    two = len(spec["objects"]) == 2
    for place, (slot, named) in enumerate(zip(slots, spec["objects"])):
        for name in OBJECT_ATTRIBUTES:
            if name not in named and matching:
                key = f"{name}@{place + 1}" if two else name
                out[key] = normalized_entropy([objs[slot][name] for objs in matching], len(CLASS_NAMES[name]))
    return out


def pooled_accuracy(results: Sequence[dict[str, bool]]) -> dict[str, float]:
    """Mean correctness per attribute over many results of :func:`score_specified` or
    :func:`record_agreement`, pooling object suffixes (``shape@A`` and ``shape@B`` -> ``shape``); adds
    ``all`` (fraction of results with every attribute correct)."""
    sums: dict[str, list[int]] = {}
    for res in results:
        for key, ok in res.items():
            base = key.split("@")[0]
            sums.setdefault(base, [0, 0])
            sums[base][0] += int(ok)
            sums[base][1] += 1
    out = {k: v[0] / v[1] for k, v in sums.items()}
    if results:
        out["all"] = sum(all(r.values()) for r in results) / len(results)
    return out


def load_oracle(
    device: str | torch.device | None = None, dtype: torch.dtype | None = None, path: str | Path | None = None
) -> ShapesOracle:
    """Load an oracle (default: the weights shipped in ``unclip/assets/oracle``) in eval mode.

    Args:
        device, dtype: where and in which dtype to put it (default CPU, float32).
        path: a directory with ``config.json`` and ``model.safetensors`` (e.g. ``RUN/model`` of
            ``unclip train oracle``); ``None`` for the shipped one.
    """
    from unclip.config import load_config
    from unclip.io import load_safetensors

    directory = Path(path) if path is not None else ASSET_DIR
    if not (directory / "config.json").is_file() or not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"no oracle at {directory}: expected config.json and model.safetensors")
    config = load_config(OracleConfig, directory / "config.json")
    model = ShapesOracle(config)
    state = load_safetensors(directory / "model.safetensors")
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except RuntimeError as err:
        raise ValueError(
            f"{directory / 'model.safetensors'} does not fit its config: {str(err).splitlines()[0]}"
        ) from None
    model.to(device=device if device is not None else "cpu", dtype=dtype if dtype is not None else torch.float32)
    return model.eval()


def evaluate_on_world(
    oracle: ShapesOracle, seed: int, n: int, size: int, two_object_prob: float, batch_size: int = 250
) -> dict[str, float]:
    """Per-attribute accuracy of ``oracle`` on ``n`` fresh renders of ``ShapesWorld(seed, two_object_prob)``
    at ``size`` px (see :func:`record_agreement`; object attributes pooled over slots)."""
    from unclip.data.shapes import ShapesWorld

    world = ShapesWorld(seed=seed, two_object_prob=two_object_prob)
    results = []
    for start in range(0, n, batch_size):
        idx = range(start, min(n, start + batch_size))
        images, _, records = world.batch(idx, size)
        preds = predict(oracle, images)
        results += [record_agreement(p, t) for p, t in zip(preds, records)]
    return pooled_accuracy(results)
