"""``unclip embed --clip CLIP DATA OUT``: turn captioned images into an embedding cache for training.

DATA is an image folder in the Hugging Face ``imagefolder`` convention (``metadata.jsonl`` with
``file_name`` and ``text``) or webdataset shards (a ``.tar``, a directory of them, a glob, a brace pattern
``shards/{00000..00099}.tar`` or ``pipe:COMMAND``). OUT becomes a cache that ``unclip train prior|decoder|
upsampler --cache OUT`` read (``unclip.data.embed_cache``). Re-running the command resumes; several
processes share the work (``torchrun --nproc-per-node 8 -m unclip.cli embed ...``, or ``--rank/--world-size``).

Example::

    unclip embed --clip runs/clip/model photos/ runs/photos_cache --size 64 --batch-size 256
"""

from __future__ import annotations

import os
from pathlib import Path

import click


def _source(data: str, fmt: str, caption_column: str, part_size: int, min_size: int):
    from unclip.data.image_folder import METADATA_NAMES, ImageFolderSource
    from unclip.data.webdataset_source import WebDatasetSource

    path = Path(data)
    if fmt == "auto":
        has_metadata = path.is_dir() and any(next(path.rglob(name), None) for name in METADATA_NAMES)
        fmt = "imagefolder" if has_metadata else "webdataset"
    if fmt == "imagefolder":
        return ImageFolderSource(path, caption_column=caption_column, part_size=part_size, min_size=min_size)
    return WebDatasetSource(data, min_size=min_size)


@click.command("embed")
@click.option(
    "--clip", "clip_name", required=True, help='CLIP: "shapes" or a directory (ours, transformers, diffusers).'
)
@click.argument("data")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "imagefolder", "webdataset"]),
    default="auto",
    show_default=True,
    help="How to read DATA (auto: a folder with metadata.jsonl is an image folder).",
)
@click.option("--size", type=click.IntRange(min=8), default=64, show_default=True, help="Side of the stored images.")
@click.option(
    "--crop",
    type=click.Choice(["center", "random", "none"]),
    default="center",
    show_default=True,
    help="Square crop before resizing (none = squash).",
)
@click.option(
    "--flip/--no-flip",
    default=False,
    show_default=True,
    help="Random horizontal flips (off: captions may say left/right).",
)
@click.option("--min-size", type=click.IntRange(min=1), default=None, help="Skip images smaller (default size/2).")
@click.option("--caption-column", default="text", show_default=True, help="Image folders: the caption column.")
@click.option(
    "--part-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Image folders: rows per part (webdataset: one shard per part).",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="CLIP batch.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="Image decoding processes.")
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", ...')
@click.option("--fp16/--fp32", "half", default=False, show_default=True, help="Run CLIP in float16 (CUDA).")
@click.option("--rank", type=click.IntRange(min=0), default=None, help="This process (default: $RANK or 0).")
@click.option("--world-size", type=click.IntRange(min=1), default=None, help="Processes (default: $WORLD_SIZE or 1).")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal).")
def embed(clip_name, data, out, fmt, size, crop, flip, min_size, caption_column, part_size, batch_size, workers,
          device, half, rank, world_size, threads, progress) -> None:  # fmt: skip
    """Embed the captioned images of DATA with CLIP into the cache OUT (resumable, sharded)."""
    import torch

    from unclip.cli.startup import resume_gc
    from unclip.cli.train_common import check_threads_option
    from unclip.data.cache_settings import resolved_clip_name
    from unclip.data.embed_cache import build_embedding_cache
    from unclip.data.transforms import ImageTransform
    from unclip.encoders.loading import load_clip
    from unclip.limits import ResourceLimitError
    from unclip.train.bounds import check_embed_batch

    check_threads_option(threads)
    if threads is not None:
        torch.set_num_threads(threads)
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
    if rank >= world_size:
        raise click.BadParameter(f"{rank} is not below --world-size {world_size}", param_hint="--rank")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    try:
        transform = ImageTransform(size=size, crop=crop, flip=flip, min_size=min_size)
        source = _source(data, fmt, caption_column, part_size, transform.min_size)
        recorded = resolved_clip_name(clip_name)
        clip = load_clip(clip_name, device=device, dtype=torch.float16 if half else None)
        resume_gc()  # the console script paused it for the start-up (unclip.cli.startup)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    try:
        check_embed_batch(batch_size, clip.image_size, size)
    except ResourceLimitError as err:
        raise click.UsageError(str(err)) from None
    try:
        report = build_embedding_cache(
            source, clip, out, transform=transform, clip_name=recorded, batch_size=batch_size, rank=rank,
            world_size=world_size, num_workers=workers, progress=progress,
        )  # fmt: skip
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    bad = ", ".join(f"{k} {v}" for k, v in report["bad"].items() if v) or "none"
    who = f"rank {rank}/{world_size}: " if world_size > 1 else ""
    click.echo(f"{who}embedded {report['rows']} images in {report['built']} new part(s); skipped: {bad}")
    if report["complete"]:
        import json

        index = json.loads((Path(out) / "index.json").read_text())
        click.echo(f"cache complete: {index['num']} rows in {out} (skipped in total: {sum(index['bad'].values())})")
    elif world_size > 1:
        click.echo("other processes' parts are still missing; the last one to finish writes index.json")
