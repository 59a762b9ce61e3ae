"""A cache of shapes-world samples with their CLIP embeddings, built once and shared by the stages.

Training the prior and the decoder needs, for every sample, the image and CLIP's image embedding z_i,
pooled text embedding z_t and token states. Re-running CLIP every step would waste most of the
step; rendering is not free either. ``build_shapes_cache`` renders samples ``0..N-1`` of a
:class:`~unclip.data.shapes.ShapesWorld`, embeds them, and writes them in chunks (each chunk written
atomically, so an interrupted build resumes where it stopped). ``ShapesCache.load`` reads it back.

Layout of a cache directory::

    meta.json                 num, size, world seed and probabilities, clip name, chunk size, dims
    chunk_00000.safetensors   images uint8 [n, S, S, 3], image_embedding f32 [n, D], text_pooled f32 [n, D],
                              text_tokens f16 [n, L, W], text_mask uint8 [n, L]
    chunk_00000.jsonl         one JSON object per sample: index, caption, record, specified
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unclip.data.shapes import ShapesWorld
from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.io import atomic_write_text, load_safetensors, save_safetensors

CHUNK = 1024


def _meta(world: ShapesWorld, num: int, size: int, clip_name: str, clip: ClipEncoder) -> dict[str, Any]:
    return {
        "num": int(num),
        "size": int(size),
        "seed": world.seed,
        "two_object_prob": world.two_object_prob,
        "caption_drop_prob": world.caption_drop_prob,
        "full_caption_prob": world.full_caption_prob,
        "clip": clip_name,
        "clip_dim": clip.dim,
        "token_width": clip.token_width,
        "max_text_length": clip.max_text_length,
        "chunk": CHUNK,
    }


@torch.no_grad()
def build_shapes_cache(
    out_dir: str | Path,
    clip: ClipEncoder,
    num: int,
    world: ShapesWorld | None = None,
    size: int = 64,
    clip_name: str = "shapes",
    progress: bool | None = None,
) -> Path:
    """Render and embed samples ``0..num-1`` of ``world`` into ``out_dir`` (resumable, atomic per chunk).

    Args:
        out_dir: cache directory (created).
        clip: the frozen CLIP whose embeddings are cached.
        num: number of samples (> 0).
        world: the shapes world (default ``ShapesWorld(seed=0)``).
        size: image side stored in the cache.
        clip_name: a name for the CLIP, recorded in ``meta.json`` and checked on resume.
        progress: show a progress bar (default: when stderr is a terminal).
    """
    if not isinstance(num, int) or num <= 0:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    world = world or ShapesWorld(seed=0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = _meta(world, num, size, clip_name, clip)
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = sorted(k for k in meta if k != "num" and old.get(k) != meta[k])
        if diff:
            raise ValueError(f"{out_dir} holds a cache built with other settings ({diff}); use another directory")
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    chunks = range(0, num, CHUNK)
    bar = tqdm(total=num, desc="shapes cache", unit="img", disable=not _show(progress))
    for start in chunks:
        stop = min(start + CHUNK, num)
        name = f"chunk_{start // CHUNK:05d}"
        done = out_dir / f"{name}.safetensors"
        if done.exists() and (out_dir / f"{name}.jsonl").exists():
            existing = load_safetensors(done)["images"].shape[0]
            if existing == stop - start:
                bar.update(stop - start)
                continue
        indices = list(range(start, stop))
        samples = [world.sample(i) for i in indices]
        images = np.stack([world.render(s.scene, size) for s in samples])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        image_emb = clip.embed_images(pixels).float().cpu()
        text = clip.embed_text([s.caption for s in samples]).to("cpu")
        tensors = {
            "images": torch.from_numpy(images),
            "image_embedding": image_emb,
            "text_pooled": text.pooled.float(),
            "text_tokens": text.tokens.half(),
            "text_mask": text.mask.to(torch.uint8),
        }
        lines = [
            json.dumps({"index": s.index, "caption": s.caption, "record": s.record, "specified": s.specified})
            for s in samples
        ]
        atomic_write_text(out_dir / f"{name}.jsonl", "\n".join(lines) + "\n")
        save_safetensors(tensors, done)  # written last: its presence marks the chunk complete
        bar.update(stop - start)
    bar.close()
    return out_dir


def _show(progress: bool | None) -> bool:
    import sys

    return sys.stderr.isatty() if progress is None else progress


@dataclass
class ShapesCache:
    """A loaded cache (all in memory). Row ``i`` is world sample ``i``.

    Attributes:
        images: uint8 [N, S, S, 3].
        image_embedding: float32 [N, D] CLIP image embeddings z_i.
        text: TextEmbedding of the captions (pooled float32 [N, D], tokens float16 [N, L, W], mask bool [N, L]).
        captions, records, specified: per-sample caption, full attribute record, caption's specified subset.
        meta: the build settings.
    """

    images: torch.Tensor
    image_embedding: torch.Tensor
    text: TextEmbedding
    captions: list[str]
    records: list[dict[str, Any]]
    specified: list[dict[str, Any]]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def load(cls, directory: str | Path, limit: int | None = None) -> ShapesCache:
        """Read a cache written by :func:`build_shapes_cache` (optionally only its first ``limit`` rows)."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no shapes cache in {directory} (meta.json missing)")
        meta = json.loads(meta_path.read_text())
        num = meta["num"] if limit is None else min(limit, meta["num"])
        parts: dict[str, list[torch.Tensor]] = {}
        rows: list[dict[str, Any]] = []
        for start in range(0, num, meta["chunk"]):
            name = f"chunk_{start // meta['chunk']:05d}"
            path = directory / f"{name}.safetensors"
            if not path.is_file():
                raise FileNotFoundError(f"shapes cache {directory} is incomplete: {path.name} missing; rebuild it")
            for key, value in load_safetensors(path).items():
                parts.setdefault(key, []).append(value)
            rows += [json.loads(line) for line in (directory / f"{name}.jsonl").read_text().splitlines() if line]
        data = {k: torch.cat(v)[:num] for k, v in parts.items()}
        rows = rows[:num]
        text = TextEmbedding(data["text_pooled"], data["text_tokens"], data["text_mask"].bool())
        return cls(
            images=data["images"],
            image_embedding=data["image_embedding"],
            text=text,
            captions=[r["caption"] for r in rows],
            records=[r["record"] for r in rows],
            specified=[r["specified"] for r in rows],
            meta=meta,
        )

    def pixels(self, indices: torch.Tensor | list[int], size: int | None = None) -> torch.Tensor:
        """Images of rows ``indices`` as float32 [B, 3, size, size] in [-1, 1] (area-downsampled if smaller)."""
        x = self.images[torch.as_tensor(indices, dtype=torch.long)].permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if size is not None and size != x.shape[-1]:
            if size > x.shape[-1]:
                raise ValueError(f"cache images are {x.shape[-1]} px; cannot serve {size} px")
            x = F.interpolate(x, size=(size, size), mode="area")
        return x
