"""The shapes world: a procedural captioned image domain with ground-truth attributes (docs/shapes_world.md).

Sample ``i`` of ``ShapesWorld(seed)`` is a pure function of ``(seed, i)`` (its random numbers come from
``np.random.default_rng([seed, i])``), so training code addresses data by global index and resumes
exactly. A sample is a :class:`Scene` (background colour, one or two :class:`ShapeObject`, the
relation of the first object to the second), a caption naming a random subset of the attributes, the
full attribute record and the caption's specified subset.

Default caption statistics (see ``docs/shapes_world.md``): two objects with probability 0.25; the shape
and (for two objects) the relation are always named; size, fill, colour, position and background are
each named independently with probability 1 - ``caption_drop_prob`` = 0.5, unless the caption is a
full caption (probability ``full_caption_prob``, default 0), which names everything.

Example::

    world = ShapesWorld(seed=0)
    s = world.sample(7)          # ShapesSample(scene, caption, record, specified)
    img = world.render(s.scene, 64)   # uint8 [64, 64, 3]
    images, captions, records = world.batch(range(16), 64)   # float [16, 3, 64, 64] in [-1, 1]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from unclip.data.shapes_captions import (
    COLOURS,
    FILLS,
    OPTIONAL_OBJECT_ATTRIBUTES,
    POSITION_PHRASES,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    caption_from_spec,
    parse_caption,
)
from unclip.data.shapes_render import SHAPE_EXTENT, composite, object_coverage

__all__ = [
    "PALETTE",
    "SHAPES",
    "COLOURS",
    "SIZES",
    "FILLS",
    "POSITIONS",
    "POSITION_PHRASES",
    "RELATIONS",
    "SIZE_RANGES",
    "ROTATION_RANGE",
    "ShapeObject",
    "Scene",
    "ShapesSample",
    "ShapesWorld",
    "ShapesDataset",
    "full_caption",
    "full_spec",
    "caption_from_spec",
    "parse_caption",
    "relation_between",
    "position_of",
    "scene_record",
    "images_to_tensor",
]

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 210, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
assert tuple(PALETTE) == COLOURS

SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.10, 0.15), "large": (0.22, 0.28)}  # r / side
ROTATION_RANGE = 15.0  # degrees: rotation uniform in [-15, 15]
MIN_GAP = 0.03  # two objects' extents stay at least this far apart (fraction of the side)


@dataclass
class ShapeObject:
    """One object. ``cx, cy, r`` are fractions of the image side (y down); ``rotation`` is in degrees,
    counter-clockwise on screen."""

    shape: str
    colour: str
    size: str
    fill: str
    position: str
    cx: float
    cy: float
    r: float
    rotation: float


@dataclass
class Scene:
    """A plain ``background`` colour, one or two objects, and for two objects the relation of
    ``objects[0]`` to ``objects[1]`` (one of :data:`RELATIONS`), else ``None``."""

    background: str
    objects: list[ShapeObject]
    relation: str | None = None


@dataclass
class ShapesSample:
    """One sample: the scene, its caption, the full attribute record and the caption's specified
    subset (see :mod:`unclip.data.shapes_captions` for the spec format)."""

    scene: Scene
    caption: str
    record: dict[str, Any]
    specified: dict[str, Any]
    index: int = -1
    full: bool = field(default=False)  # True when the caption names every attribute


def position_of(cx: float, cy: float) -> str:
    """Name of the 3x3 cell holding the point (cx, cy) (fractions of the side, y down)."""
    col = min(2, max(0, int(math.floor(cx * 3))))
    row = min(2, max(0, int(math.floor(cy * 3))))
    return POSITIONS[3 * row + col]


def relation_between(a: ShapeObject, b: ShapeObject) -> str:
    """Relation of ``a`` to ``b`` from their centres: left/right of when |dx| >= |dy|, else above/below
    (y grows downwards, so "above" means a smaller cy)."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def scene_record(scene: Scene) -> dict[str, Any]:
    """The full attribute record of a scene (JSON-able)."""
    return {
        "background": scene.background,
        "num_objects": len(scene.objects),
        "objects": [asdict(o) for o in scene.objects],
        "relation": scene.relation,
    }


def full_spec(scene: Scene) -> dict[str, Any]:
    """The specification naming every attribute of ``scene``."""
    spec: dict[str, Any] = {
        "objects": [{k: getattr(o, k) for k in ("shape", *OPTIONAL_OBJECT_ATTRIBUTES)} for o in scene.objects],
        "background": scene.background,
    }
    if len(scene.objects) == 2:
        spec["relation"] = scene.relation
    return spec


def full_caption(scene: Scene) -> str:
    """The caption naming every attribute, e.g. ``a large outlined blue star in the top left on a
    white background``."""
    return caption_from_spec(full_spec(scene))


def _check_prob(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 images [S, S, 3] -> float tensor [B, 3, S, S] in [-1, 1]."""
    arr = np.stack(images).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).div_(127.5).sub_(1.0).contiguous()


class ShapesWorld:
    """Deterministic sampler and renderer of the shapes world.

    Args:
        seed: world seed; sample ``i`` depends only on ``(seed, i)`` and the probabilities below.
        two_object_prob: probability that a scene holds two objects.
        caption_drop_prob: probability that each optional attribute (size, fill, colour, position,
            background) is left out of a caption.
        full_caption_prob: probability that a caption names every attribute.
        supersample: point samples per pixel along each axis when rendering.
    """

    def __init__(
        self,
        seed: int = 0,
        two_object_prob: float = 0.25,
        caption_drop_prob: float = 0.5,
        full_caption_prob: float = 0.0,
        supersample: int = 4,
    ) -> None:
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if not isinstance(supersample, int) or supersample < 1:
            raise ValueError(f"supersample must be a positive integer, got {supersample!r}")
        self.seed = int(seed)
        self.two_object_prob = _check_prob("two_object_prob", two_object_prob)
        self.caption_drop_prob = _check_prob("caption_drop_prob", caption_drop_prob)
        self.full_caption_prob = _check_prob("full_caption_prob", full_caption_prob)
        self.supersample = supersample

    def __repr__(self) -> str:
        return (
            f"ShapesWorld(seed={self.seed}, two_object_prob={self.two_object_prob}, "
            f"caption_drop_prob={self.caption_drop_prob}, full_caption_prob={self.full_caption_prob})"
        )

    # ------------------------------------------------------------------ sampling
    @staticmethod
    def _sample_object(rng: np.random.Generator, colour: str) -> ShapeObject:
        shape = SHAPES[rng.integers(len(SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        fill = FILLS[rng.integers(len(FILLS))]
        cell = int(rng.integers(len(POSITIONS)))
        lo, hi = SIZE_RANGES[size]
        r = float(rng.uniform(lo, hi))
        row, col = divmod(cell, 3)
        # centre uniform in the cell, at least r from the image edges
        cx = float(rng.uniform(max(col / 3, r), min((col + 1) / 3, 1 - r)))
        cy = float(rng.uniform(max(row / 3, r), min((row + 1) / 3, 1 - r)))
        rotation = float(rng.uniform(-ROTATION_RANGE, ROTATION_RANGE))
        cx, cy = min(cx, math.nextafter((col + 1) / 3, 0)), min(cy, math.nextafter((row + 1) / 3, 0))
        return ShapeObject(shape, colour, size, fill, POSITIONS[cell], cx, cy, r, rotation)

    @staticmethod
    def _apart(a: ShapeObject, b: ShapeObject) -> bool:
        reach = SHAPE_EXTENT[a.shape] * a.r + SHAPE_EXTENT[b.shape] * b.r + MIN_GAP
        return math.hypot(a.cx - b.cx, a.cy - b.cy) >= reach

    def sample_scene(self, rng: np.random.Generator) -> Scene:
        """Draw a scene from ``rng`` (background, objects, relation)."""
        n = 2 if rng.random() < self.two_object_prob else 1
        colours = rng.permutation(len(COLOURS))[: n + 1]
        background = COLOURS[colours[0]]
        while True:  # rejection sampling of non-overlapping pairs (~ a few tries on average)
            objects = [self._sample_object(rng, COLOURS[c]) for c in colours[1:]]
            if n == 1 or self._apart(objects[0], objects[1]):
                break
        relation = relation_between(objects[0], objects[1]) if n == 2 else None
        return Scene(background, objects, relation)

    def _caption_spec(self, rng: np.random.Generator, scene: Scene) -> tuple[dict[str, Any], bool]:
        if rng.random() < self.full_caption_prob:
            return full_spec(scene), True
        keep = 1.0 - self.caption_drop_prob
        objects = []
        for o in scene.objects:
            obj = {"shape": o.shape}
            for key in OPTIONAL_OBJECT_ATTRIBUTES:
                if rng.random() < keep:
                    obj[key] = getattr(o, key)
            objects.append(obj)
        spec: dict[str, Any] = {"objects": objects}
        if len(objects) == 2:
            spec["relation"] = scene.relation
        if rng.random() < keep:
            spec["background"] = scene.background
        return spec, False

    def sample(self, index: int) -> ShapesSample:
        """Sample ``index`` of this world (a pure function of ``(seed, index)``); nothing is rendered."""
        if not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"sample index must be a non-negative integer, got {index!r}")
        rng = np.random.default_rng([self.seed, int(index)])
        scene = self.sample_scene(rng)
        spec, full = self._caption_spec(rng, scene)
        return ShapesSample(scene, caption_from_spec(spec), scene_record(scene), spec, int(index), full)

    # ------------------------------------------------------------------ rendering
    def render(self, scene: Scene, size: int = 64) -> np.ndarray:
        """Render ``scene`` antialiased at ``size`` x ``size``.

        Returns:
            uint8 array [size, size, 3] (RGB).
        """
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"image size must be a positive integer, got {size!r}")
        if scene.background not in PALETTE:
            raise ValueError(f"unknown background colour {scene.background!r}; expected one of {COLOURS}")
        canvas = np.empty((size, size, 3), np.float32)
        canvas[:] = np.asarray(PALETTE[scene.background], np.float32)
        for o in scene.objects:
            if o.colour not in PALETTE or o.shape not in SHAPES:
                raise ValueError(f"unknown shape/colour in object {o!r}")
            alpha, box = object_coverage(o.shape, o.fill, o.cx, o.cy, o.r, o.rotation, int(size), self.supersample)
            composite(canvas, alpha, box, np.asarray(PALETTE[o.colour], np.float32))
        return np.rint(canvas).clip(0, 255).astype(np.uint8)

    def render_index(self, index: int, size: int = 64) -> np.ndarray:
        """Render sample ``index``: uint8 [size, size, 3]."""
        return self.render(self.sample(index).scene, size)

    def batch(
        self, indices: Iterable[int], size: int = 64, full_captions: bool = False
    ) -> tuple[torch.Tensor, list[str], list[dict[str, Any]]]:
        """Render samples ``indices``.

        Args:
            indices: global sample indices.
            size: image side in pixels.
            full_captions: return :func:`full_caption` of each scene instead of its sampled caption.

        Returns:
            (images float32 [B, 3, size, size] in [-1, 1], captions list[str], records list[dict]).
        """
        samples = [self.sample(i) for i in indices]
        if not samples:
            raise ValueError("batch needs at least one index")
        images = images_to_tensor([self.render(s.scene, size) for s in samples])
        captions = [full_caption(s.scene) if full_captions else s.caption for s in samples]
        return images, captions, [s.record for s in samples]


def _distributed_rank_and_size() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShapesDataset(IterableDataset):
    """Infinite stream of shapes-world samples, sharded across DataLoader workers and distributed ranks.

    Shard ``k`` of ``K = world_size * num_workers`` yields indices ``start + k, start + k + K, ...``, so
    together the shards cover every index from ``start`` exactly once. Each item is a dict
    ``{"image": float [3, S, S] in [-1, 1], "caption": str, "index": int}`` (get the attribute record
    with ``world.sample(index).record``, which renders nothing).

    Args:
        world: the world to draw from (default ``ShapesWorld(0)``).
        size: image side in pixels.
        start: first global index (e.g. to resume).
        rank, world_size: distributed shard; default from ``torch.distributed`` when initialised.
        full_captions: yield full captions instead of the sampled ones.
    """

    def __init__(
        self,
        world: ShapesWorld | None = None,
        size: int = 64,
        start: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        full_captions: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"image size must be a positive integer, got {size!r}")
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        self.world = world if world is not None else ShapesWorld(0)
        self.size = size
        self.start = start
        self.rank = rank
        self.world_size = world_size
        self.full_captions = full_captions

    def shard(self) -> tuple[int, int]:
        """(shard id, number of shards) of the calling process/worker."""
        rank, world_size = (self.rank, self.world_size) if self.world_size is not None else _distributed_rank_and_size()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world_size * nw

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shard, num_shards = self.shard()
        index = self.start + shard
        while True:
            s = self.world.sample(index)
            image = images_to_tensor([self.world.render(s.scene, self.size)])[0]
            caption = full_caption(s.scene) if self.full_captions else s.caption
            yield {"image": image, "caption": caption, "index": index}
            index += num_shards
