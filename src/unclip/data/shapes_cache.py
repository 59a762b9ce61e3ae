"""A cache of shapes-world samples with their CLIP embeddings, built once and shared by the stages.

Training the prior and the decoder needs, for every sample, the image and CLIP's image embedding z_i,
pooled text embedding z_t and token states. Re-running CLIP every step would waste most of the
step; rendering is not free either. ``build_shapes_cache`` renders samples ``0..N-1`` of a
:class:`~unclip.data.shapes.ShapesWorld`, embeds them, and writes them in chunks (each chunk written
atomically, so an interrupted build resumes where it stopped). ``ShapesCache.load`` (an alias of
:class:`unclip.data.embed_cache.EmbeddingCache`) reads it back, as it reads caches of captioned photos.

Layout of a cache directory::

    meta.json                 num, size, world seed and probabilities, the CLIP (its name or resolved directory
                              and the sha256 of its weights: a cache built by another CLIP is not reused),
                              chunk size, dims
    chunk_00000.safetensors   images uint8 [n, S, S, 3], image_embedding f32 [n, D], text_pooled f32 [n, D],
                              text_tokens f16 [n, L, W], text_mask uint8 [n, L]
    chunk_00000.jsonl         one JSON object per sample: index, caption, record, specified
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unclip.data.cache_settings import clip_fingerprint, describe_differences, resolved_clip_name, setting_differences
from unclip.data.embed_cache import EmbeddingCache
from unclip.data.shapes import ShapesWorld
from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.io import atomic_write_text, load_safetensors, remove_orphaned_tmp, save_safetensors

CHUNK = 1024


def _meta(world: ShapesWorld, num: int, size: int, clip_name: str, clip: ClipEncoder) -> dict[str, Any]:
    return {
        "num": int(num),
        "size": int(size),
        "seed": world.seed,
        "two_object_prob": world.two_object_prob,
        "caption_drop_prob": world.caption_drop_prob,
        "full_caption_prob": world.full_caption_prob,
        "clip": resolved_clip_name(clip_name),
        "clip_sha256": clip_fingerprint(clip),
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
    render_workers: int = 0,
) -> Path:
    """Render and embed samples ``0..num-1`` of ``world`` into ``out_dir`` (resumable, atomic per chunk).

    Args:
        out_dir: cache directory (created).
        clip: the frozen CLIP whose embeddings are cached.
        num: number of samples (> 0).
        world: the shapes world (default ``ShapesWorld(seed=0)``).
        size: image side stored in the cache.
        clip_name: the CLIP's name or directory, recorded in ``meta.json``; on resume the CLIP must have the
            same weights (their sha256 is recorded too), or the cache is refused.
        progress: show a progress bar (default: when stderr is a terminal).
        render_workers: processes that render in parallel (0 = render in this process). Rendering is
            pure numpy at ~0.5 ms per 64-px image, so on a GPU machine it, not CLIP, bounds the build.
    """
    if not isinstance(num, int) or num <= 0:
        raise ValueError(f"num must be a positive integer, got {num!r}")
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an integer >= 8, got {size!r}")
    if not isinstance(render_workers, int) or render_workers < 0:
        raise ValueError(f"render_workers must be an integer >= 0, got {render_workers!r}")
    world = world or ShapesWorld(seed=0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_orphaned_tmp(out_dir)  # temp files of chunk writes a kill interrupted
    meta = _meta(world, num, size, clip_name, clip)
    meta_path = out_dir / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        diff = setting_differences(old, meta, tuple(sorted(k for k in meta if k != "num")))
        if diff:
            raise ValueError(
                f"{out_dir} holds a cache built with other settings ({describe_differences(old, meta, diff)}); "
                "use another directory, or delete it to rebuild"
            )
        if "clip_sha256" not in old:  # an older cache: do not claim a CLIP it was not checked against
            meta.pop("clip_sha256")
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    chunks = range(0, num, CHUNK)
    bar = tqdm(total=num, desc="shapes cache", unit="img", disable=not _show(progress))
    # spawn, not fork: the parent may hold CUDA state and OpenMP threads; workers only need numpy
    pool = ProcessPoolExecutor(render_workers, mp_context=get_context("spawn")) if render_workers > 0 else None
    try:
        for start in chunks:
            _build_chunk(out_dir, world, clip, start, min(start + CHUNK, num), size, pool)
            bar.update(min(start + CHUNK, num) - start)
    finally:
        if pool is not None:
            pool.shutdown()
        bar.close()
    return out_dir


def _build_chunk(
    out_dir: Path,
    world: ShapesWorld,
    clip: ClipEncoder,
    start: int,
    stop: int,
    size: int,
    pool: ProcessPoolExecutor | None,
) -> None:
    """Write chunk ``start // CHUNK`` (samples ``start..stop-1``) unless a complete copy exists."""
    name = f"chunk_{start // CHUNK:05d}"
    done = out_dir / f"{name}.safetensors"
    if done.exists() and (out_dir / f"{name}.jsonl").exists():
        existing = load_safetensors(done)["images"].shape[0]
        if existing == stop - start:
            return
    indices = list(range(start, stop))
    samples = [world.sample(i) for i in indices]
    scenes = [s.scene for s in samples]
    if pool is None:
        images = np.stack([world.render(scene, size) for scene in scenes])
    else:  # map keeps the input order; rendering is a pure function of the scene
        images = np.stack(list(pool.map(world.render, scenes, [size] * len(scenes), chunksize=64)))
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


def _show(progress: bool | None) -> bool:
    import sys

    return sys.stderr.isatty() if progress is None else progress


# The shapes cache is an embedding cache whose rows also carry the scene's record and the caption's
# specified attributes; EmbeddingCache.load reads this module's layout as well as ``unclip embed``'s.
ShapesCache = EmbeddingCache


@torch.no_grad()
def null_text_for_cache(
    cache: ShapesCache, clip: ClipEncoder, check_rows: int = 8, atol: float = 1e-3
) -> TextEmbedding:
    """The CLIP encoding of ``""`` (batch 1, float32, CPU), after checking that ``clip`` is the CLIP that
    built ``cache``: its dimensions match and it re-encodes the first ``check_rows`` captions to the cached
    pooled embeddings within ``atol`` (relative to their scale)."""
    meta = cache.meta
    dims = {"clip_dim": clip.dim, "token_width": clip.token_width, "max_text_length": clip.max_text_length}
    wrong = {k: (meta.get(k), v) for k, v in dims.items() if meta.get(k) != v}
    if wrong:
        raise ValueError(f"the CLIP does not match the cache (cache, clip): {wrong}")
    n = min(check_rows, len(cache))
    if n:
        pooled = clip.embed_text(cache.captions[:n]).pooled.float().cpu()
        cached = cache.text.pooled[:n].float()
        err = float((pooled - cached).abs().max() / cached.abs().max().clamp(min=1e-12))
        if err > atol:
            raise ValueError(
                f"the CLIP does not reproduce the cache's text embeddings (relative error {err:.3g} > {atol}); "
                f"the cache was built with CLIP {meta.get('clip')!r}"
            )
    return clip.embed_text([""]).to(device="cpu", dtype=torch.float32)
