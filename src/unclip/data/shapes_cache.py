"""The shapes world as a captioned source, and the embedding cache of its first samples.

:class:`ShapesSource` serves samples ``0..num-1`` of a :class:`~unclip.data.shapes.ShapesWorld`, rendered at
``size`` px, as a :class:`~unclip.data.embed_cache.CaptionedSource` (parts of ``part_size`` consecutive
indices), exactly as an image folder or webdataset shards serve photos. :func:`build_shapes_cache` embeds it
with :func:`~unclip.data.embed_cache.build_embedding_cache`, so a shapes cache is an ordinary embedding
cache (same layout, resumable per part, shardable across processes), read back by
:meth:`EmbeddingCache.load <unclip.data.embed_cache.EmbeddingCache.load>`. Each row's ``extra`` carries the
sample's ``index``, attribute ``record`` and the caption's ``specified`` subset, which the reader hands on as
``cache.records`` and ``cache.specified``.

Rendering a scene is a pure function of ``(world seed, index, size)``, so a cache's rows do not depend on how
many processes rendered them (``render_workers``, the DataLoader workers of the build).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from unclip.data.embed_cache import SHAPES_KIND, build_embedding_cache
from unclip.data.shapes import ShapesWorld
from unclip.data.transforms import CaptionedSample, ImageTransform
from unclip.encoders.base import ClipEncoder

PART_SIZE = 1024  # samples per part: the unit a build writes atomically, shards and resumes


class ShapesSource:
    """Samples ``0..num-1`` of ``world`` rendered at ``size`` px, in parts of ``part_size`` indices.

    Every sample is good (a shapes caption is never empty, a rendering never unreadable). ``key`` is the
    sample index as text; ``extra`` is ``{"index", "record", "specified"}``.
    """

    kind = SHAPES_KIND

    def __init__(self, world: ShapesWorld, num: int, size: int = 64, part_size: int = PART_SIZE) -> None:
        if not isinstance(num, int) or isinstance(num, bool) or num <= 0:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 8:
            raise ValueError(f"size must be an integer >= 8, got {size!r}")
        if not isinstance(part_size, int) or isinstance(part_size, bool) or part_size < 1:
            raise ValueError(f"part_size must be an integer >= 1, got {part_size!r}")
        self.world, self.num, self.size, self.part_size = world, num, size, part_size

    def __len__(self) -> int:
        return self.num

    @property
    def num_parts(self) -> int:
        return (self.num + self.part_size - 1) // self.part_size

    def describe(self) -> dict[str, Any]:
        """What the source is (recorded in the cache's settings; a resumed build must match it)."""
        w = self.world
        return {
            "kind": self.kind,
            "seed": w.seed,
            "two_object_prob": w.two_object_prob,
            "caption_drop_prob": w.caption_drop_prob,
            "full_caption_prob": w.full_caption_prob,
            "supersample": w.supersample,
            "num": self.num,
            "size": self.size,
            "part_size": self.part_size,
        }

    def read(self, index: int) -> CaptionedSample:
        """Sample ``index`` rendered (an RGB PIL image of ``size`` px) with its caption and attributes."""
        s = self.world.sample(index)
        image = Image.fromarray(self.world.render(s.scene, self.size), "RGB")
        return CaptionedSample(str(index), image, s.caption, {"index": index, "record": s.record,
                                                                "specified": s.specified})  # fmt: skip

    def iter_part(self, part: int) -> Iterator[CaptionedSample]:
        if not 0 <= part < self.num_parts:
            raise IndexError(f"part {part} out of range [0, {self.num_parts})")
        for i in range(part * self.part_size, min((part + 1) * self.part_size, self.num)):
            yield self.read(i)


def build_shapes_cache(
    out_dir: str | Path,
    clip: ClipEncoder,
    num: int,
    world: ShapesWorld | None = None,
    size: int = 64,
    clip_name: str = "shapes",
    progress: bool | None = None,
    render_workers: int = 0,
    batch_size: int = 256,
    rank: int = 0,
    world_size: int = 1,
) -> Path:
    """Render and embed samples ``0..num-1`` of ``world`` into the embedding cache ``out_dir``; returns it.

    Args:
        out_dir: cache directory (created; a build resumes by skipping its complete parts).
        clip: the frozen CLIP whose embeddings are cached.
        num: number of samples (> 0).
        world: the shapes world (default ``ShapesWorld(seed=0)``).
        size: image side stored in the cache (CLIP sees the same rendering through ``preprocess_pil``).
        clip_name: the CLIP's name or directory, recorded in the settings; a resumed build must use a CLIP with
            the same weights (their sha256 is recorded too), or the cache is refused.
        progress: show a progress bar (default: when stderr is a terminal).
        render_workers: processes rendering in parallel (0 = in this process): rendering is pure numpy at
            ~0.5 ms per 64-px image, so on a GPU machine it, not CLIP, bounds the build.
        batch_size: CLIP batch.
        rank, world_size: this process builds the parts ``k`` with ``k % world_size == rank``.
    """
    if not isinstance(render_workers, int) or render_workers < 0:
        raise ValueError(f"render_workers must be an integer >= 0, got {render_workers!r}")
    source = ShapesSource(world or ShapesWorld(seed=0), num, size)
    build_embedding_cache(
        source, clip, out_dir, transform=ImageTransform(size=size), clip_name=clip_name, batch_size=batch_size,
        rank=rank, world_size=world_size, num_workers=render_workers, progress=progress,
    )  # fmt: skip
    return Path(out_dir)
