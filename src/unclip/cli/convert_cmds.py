"""``unclip convert --from diffusers|karlo SRC DST``: import released weights into our pipeline layout, and
``--to diffusers`` to export one of our pipelines to diffusers' ``UnCLIPPipeline`` layout. With ``--from unclip``
SRC may be a built-in model's name: ``unclip convert --from unclip --to unclip shapes my_shapes/ --dtype fp32``
copies the built-in model (cast) into a directory to fine-tune or edit; ``--to diffusers`` needs a pipeline whose
CLIP is a transformers CLIP (the built-in model's own CLIP has no diffusers counterpart).

Errors are one line on stderr with exit code 1 (bad files) or 2 (bad options).
"""

from __future__ import annotations

from pathlib import Path

import click

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


@click.command()
@click.option(
    "--from",
    "source",
    type=click.Choice(["diffusers", "karlo", "unclip"]),
    required=True,
    help="Format of SRC: a diffusers UnCLIP(ImageVariation)Pipeline folder, Karlo's release folder, or ours.",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(["unclip", "diffusers", "diffusers-variation"]),
    default="unclip",
    show_default=True,
    help="Format of DST: our pipeline layout, or diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline.",
)
@click.option("--dtype", type=click.Choice(sorted(DTYPES)), default=None, help="Cast the written weights.")
@click.option(
    "--trust-pickle",
    is_flag=True,
    help="Allow checkpoints that need full unpickling (can run code from the file: only for trusted sources).",
)
@click.option("--clip", "clip_dir", type=click.Path(path_type=Path), default=None, help="Karlo: CLIP folder.")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
def convert(
    source: str, target: str, dtype: str | None, trust_pickle: bool, clip_dir: Path | None, src: Path, dst: Path
) -> None:
    """Convert the pipeline in SRC (a directory, or with --from unclip a built-in model name) and write it to DST."""
    import torch

    from unclip.pipeline.options import BUILTIN_MODELS, INDEX_FILE, builtin_model_dir

    if clip_dir is not None and source != "karlo":
        raise click.UsageError("--clip only applies to --from karlo")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise click.UsageError(f"{dst} exists and is not an empty directory")
    cast = getattr(torch, DTYPES[dtype]) if dtype else None
    if source == "unclip" and not src.exists() and str(src) in BUILTIN_MODELS:  # a built-in model's name
        name, src = str(src), builtin_model_dir(str(src))
        if not (src / INDEX_FILE).is_file():
            raise click.ClickException(
                f"the built-in model {name!r} is not in this installation ({src}); train it with `unclip train shapes`"
            )
    try:
        if source == "diffusers":
            from unclip.interop.diffusers_import import load_diffusers_pipeline

            pipe = load_diffusers_pipeline(src, trust_pickle=trust_pickle)
        elif source == "karlo":
            from unclip.interop.karlo_import import load_karlo

            pipe = load_karlo(src, trust_pickle=trust_pickle, clip_dir=clip_dir)
        else:
            from unclip.pipeline import UnCLIPPipeline

            pipe = UnCLIPPipeline.from_pretrained(src)
        if target == "unclip":
            pipe.save_pretrained(dst, dtype=cast)
        else:
            from unclip.interop.diffusers_export import export_diffusers

            export_diffusers(pipe, dst, dtype=cast, variation=target == "diffusers-variation")
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {dst} ({target} layout)")
