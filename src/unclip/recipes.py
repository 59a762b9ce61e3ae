"""The built-in model's recipe: every stage of a shapes-world unCLIP, trained in order by one command.

``unclip train shapes --recipe shapes -o runs/shapes`` runs, each through the one training loop and each
resumable (re-running the command continues where it stopped; finished stages are not redone):

1. ``clip/``      our small CLIP, contrastive on the shapes world;
2. ``cache/``     samples of the world rendered once with their CLIP embeddings;
3. ``prior/``     the diffusion prior on the cache;
4. ``decoder/``   the decoder (z_i + caption -> base image);
5. ``upsampler/`` the upsampler (base -> final size);
6. ``pipeline/``  the assembled :class:`~unclip.pipeline.UnCLIPPipeline` (fp16 weights), which
   ``--install`` copies into the package as the built-in ``shapes`` model.

Recipes: ``shapes`` (~2 h on 2 CPU cores; the shipped CLIP and upsampler come from it), ``quick`` (~10 min,
rough images), ``test`` (seconds; tiny networks, for CI). On a CUDA device ``shapes`` becomes
``shapes-gpu``: the same networks trained on ~10x the images (the shipped prior and decoder were trained
with its settings; docs/shapes_model.md says exactly how).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from unclip.config import config_to_dict, save_config
from unclip.data.shapes import ShapesWorld
from unclip.diffusion.stage_config import DIFFUSION_FILE
from unclip.io import atomic_write_text
from unclip.train.config import TrainConfig
from unclip.train.loop import run_training


@dataclass
class StagePlan:
    """One stage: model preset and training budget."""

    preset: str
    train: TrainConfig


@dataclass
class Recipe:
    """Everything ``unclip train shapes`` does, as data (saved as ``recipe.json`` in the run directory).

    Attributes:
        name: recipe name.
        clip, prior, decoder, upsampler: stage plans.
        cache_size: number of world samples rendered and embedded (the last ``holdout`` are never trained on).
        cache_image_size: side of the cached images (the final output size).
        holdout: held-out cache rows (evaluation).
        world_seed: seed of the training world.
        defaults: generation defaults stored in the pipeline (a dict of GenerationDefaults fields).
        upsampler_residual: train the upsampler on x - bicubic(low-res) (``UpsamplerTaskConfig.residual``).
        upsampler_blur_prob: share of the upsampler's training inputs that are blurred (``UpsamplerTaskConfig``).
    """

    name: str
    clip: StagePlan
    prior: StagePlan
    decoder: StagePlan
    upsampler: StagePlan
    cache_size: int = 30_000
    cache_image_size: int = 64
    holdout: int = 1000
    world_seed: int = 0
    defaults: dict = field(default_factory=dict)
    upsampler_residual: bool = False
    upsampler_blur_prob: float = 1.0


def _tc(steps: int, batch: int, lr: float, warmup: int, ema: float = 0.999, **kw) -> TrainConfig:
    base = dict(log_every=20, ckpt_every=200, eval_every=0, weight_decay=0.0)
    base.update(kw)
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=warmup, ema_decay=ema, **base)


def _shapes() -> Recipe:
    return Recipe(
        name="shapes",
        clip=StagePlan("shapes", _tc(800, 128, 1e-3, 30, ema=0.995, weight_decay=0.05)),
        prior=StagePlan("shapes", _tc(1500, 64, 1e-3, 30, ema=0.999, weight_decay=0.01)),
        decoder=StagePlan("shapes", _tc(4000, 32, 1e-3, 150, ema=0.999)),
        upsampler=StagePlan("shapes", _tc(2250, 32, 5e-4, 100, ema=0.999)),
        upsampler_residual=True,
        upsampler_blur_prob=0.5,
        defaults=dict(  # tuned on world seed 998 (docs/performance.md "Built-in defaults"; docs/shapes_model.md)
            decoder_steps=15,
            prior_steps=10,
            upsampler_steps=8,
            decoder_guidance_scale=3.0,
            decoder_guidance_keep_mean=True,
            decoder_zero_mean_noise=True,
            upsampler_keep_mean=True,
            prior_guidance_scale=1.0,
            best_of=1,
            precision="auto",
        ),
    )


def _quick() -> Recipe:
    return Recipe(
        name="quick",
        clip=StagePlan("shapes", _tc(100, 64, 1e-3, 10, ema=0.99, weight_decay=0.05)),
        prior=StagePlan("shapes", _tc(300, 64, 5e-4, 20, ema=0.99)),
        decoder=StagePlan("shapes", _tc(500, 32, 1e-3, 50, ema=0.99)),
        upsampler=StagePlan("shapes", _tc(200, 32, 5e-4, 20, ema=0.99)),
        upsampler_residual=True,
        cache_size=4000,
        holdout=200,
        defaults=dict(decoder_steps=25, prior_steps=25, upsampler_steps=7, decoder_guidance_scale=3.0),
    )


def _test() -> Recipe:
    return Recipe(
        name="test",
        clip=StagePlan("tiny", _tc(2, 8, 1e-3, 1, ema=0.9)),
        prior=StagePlan("tiny", _tc(2, 8, 1e-3, 1, ema=0.9)),
        decoder=StagePlan("tiny", _tc(2, 4, 1e-3, 1, ema=0.9)),
        upsampler=StagePlan("tiny", _tc(2, 4, 1e-3, 1, ema=0.9)),
        upsampler_residual=True,
        cache_size=24,
        cache_image_size=32,
        holdout=4,
        defaults=dict(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2, best_of=1),
    )


def _shapes_gpu() -> Recipe:
    """The CUDA variant: the same networks as ``shapes``, trained on 4x the rows for ~10x the images. Its
    prior and decoder settings are those that trained the shipped prior and decoder on one H200 (about 2
    and 6 minutes; docs/shapes_model.md)."""
    recipe = _shapes()
    return replace(
        recipe,
        name="shapes-gpu",
        prior=StagePlan("shapes", _tc(6500, 256, 1e-3, 100, ema=0.999, weight_decay=0.01)),
        decoder=StagePlan("shapes", _tc(2500, 512, 1.5e-3, 200)),
        upsampler=StagePlan("shapes", _tc(3000, 128, 5e-4, 100)),
        cache_size=120_000,
    )


RECIPES = {"shapes": _shapes, "quick": _quick, "test": _test, "shapes-gpu": _shapes_gpu}


def get_recipe(name: str, device: str = "auto") -> Recipe:
    """Recipe ``name``; "shapes" becomes "shapes-gpu" when training on CUDA."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if name == "shapes" and on_cuda:
        name = "shapes-gpu"
    return RECIPES[name]()


def _say(message: str) -> None:
    print(f"[train shapes] {message}", flush=True)


def _reuse_upsampler(source: Path, target: Path, task) -> None:
    """Copy an already trained upsampler (``source``: a pipeline or model directory) to ``target``."""
    from unclip.config import config_to_dict, load_config
    from unclip.diffusion.stage_config import DIFFUSION_FILE, DiffusionConfig
    from unclip.models.upsampler_unet import UpsamplerConfig

    model_dir = source / "upsampler_1" if (source / "upsampler_1").is_dir() else source
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"reuse_upsampler={str(source)!r}: no upsampler model (config.json) there")
    found = config_to_dict(load_config(UpsamplerConfig, model_dir / "config.json"))
    wanted = config_to_dict(task.model_config)
    if (model_dir / DIFFUSION_FILE).is_file():
        found["diffusion"] = config_to_dict(load_config(DiffusionConfig, model_dir / DIFFUSION_FILE))
        wanted["diffusion"] = config_to_dict(task.diffusion)
    diffs = [f"{k}: {found.get(k)!r} != {v!r}" for k, v in wanted.items() if found.get(k) != v]
    if diffs:
        raise ValueError(f"reuse_upsampler={str(source)!r} does not match the recipe's upsampler ({'; '.join(diffs)})")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(model_dir, target)
    _say(f"stage upsampler: reused {model_dir} (not trained)")


def train_shapes(
    recipe: Recipe,
    out_dir: str | Path,
    device: str = "auto",
    threads: int | None = None,
    progress: bool | None = None,
    install: bool = False,
    reuse_upsampler: str | Path | None = None,
) -> Path:
    """Train every stage of ``recipe`` under ``out_dir`` in order (resumable); returns the pipeline dir.

    ``reuse_upsampler``: a pipeline directory (its ``upsampler_1/``) or an upsampler model directory to
    take instead of training the upsampler stage. The upsampler learns from the cache's rendered images
    only (not from CLIP), so an earlier run of the same recipe's upsampler is what this run would train;
    its config must match the recipe's sizes.
    """
    from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
    from unclip.data.shapes_cache import build_shapes_cache
    from unclip.encoders.own_clip import OwnClipEncoder
    from unclip.models.serialization import load_model
    from unclip.pipeline import GenerationDefaults, Stage, UnCLIPPipeline
    from unclip.train.clip_task import ClipTask
    from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig, UpsamplerTask, UpsamplerTaskConfig
    from unclip.train.prior_task import DiffusionPriorTask

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.json", json.dumps(config_to_dict(recipe), indent=2) + "\n")
    timings: dict[str, float] = {}

    def train(name: str, task, plan: StagePlan):
        config = replace(plan.train, device=device, num_threads=threads)
        _say(f"stage {name}: {plan.preset} preset, {config.steps} steps of batch {config.batch_size}")
        t0 = time.monotonic()
        result = run_training(task, config, out / name, progress=progress)
        timings[name] = time.monotonic() - t0
        _say(f"stage {name}: done at step {result.step} ({result.stop_reason}) in {timings[name]:.0f} s")
        if result.stop_reason != "done":
            raise RuntimeError(f"stage {name} stopped early ({result.stop_reason}); re-run the command to resume")
        return result

    train("clip", ClipTask(recipe.clip.preset, data_seed=recipe.world_seed), recipe.clip)
    clip = OwnClipEncoder.from_pretrained(out / "clip" / "model")

    _say(f"stage cache: {recipe.cache_size} samples at {recipe.cache_image_size} px")
    t0 = time.monotonic()
    world = ShapesWorld(seed=recipe.world_seed)
    cpus = os.cpu_count() or 1
    build_shapes_cache(
        out / "cache", clip, recipe.cache_size, world, recipe.cache_image_size, progress=progress,
        render_workers=0 if cpus <= 2 else min(16, cpus - 1), clip_name=str(out / "clip" / "model"),
    )  # fmt: skip
    timings["cache"] = time.monotonic() - t0
    cache = EmbeddingCache.load(out / "cache")

    prior_task = DiffusionPriorTask(
        cache, null_text_for_cache(cache, clip), recipe.prior.preset, holdout=recipe.holdout, eval_rows=0
    )
    train("prior", prior_task, recipe.prior)
    decoder_task = DecoderTask(DecoderTaskConfig(preset=recipe.decoder.preset, holdout=recipe.holdout), cache=cache)
    train("decoder", decoder_task, recipe.decoder)
    base_size = decoder_task.model_config.image_size
    upsampler_task = UpsamplerTask(
        UpsamplerTaskConfig(
            preset=recipe.upsampler.preset,
            holdout=recipe.holdout,
            low_res_size=base_size,
            image_size=recipe.cache_image_size,
            residual=recipe.upsampler_residual,
            blur_prob=recipe.upsampler_blur_prob,
        ),
        cache=cache,
    )
    if reuse_upsampler is None:
        train("upsampler", upsampler_task, recipe.upsampler)
    else:
        _reuse_upsampler(Path(reuse_upsampler), out / "upsampler" / "model", upsampler_task)

    def stage(kind: str, name: str) -> Stage:
        from unclip.config import load_config
        from unclip.diffusion.stage_config import DiffusionConfig

        model_dir = out / name / "model"
        return Stage(load_model(kind, model_dir), load_config(DiffusionConfig, model_dir / DIFFUSION_FILE))

    defaults = GenerationDefaults(**recipe.defaults)
    pipe = UnCLIPPipeline(clip, stage("prior", "prior"), stage("decoder", "decoder"), [stage("upsampler", "upsampler")],
                          defaults)  # fmt: skip
    pipeline_dir = out / "pipeline"
    if pipeline_dir.exists():
        shutil.rmtree(pipeline_dir)
    pipe.save_pretrained(pipeline_dir, dtype=torch.float16)
    save_config(recipe, pipeline_dir / "recipe.json")
    atomic_write_text(out / "timings.json", json.dumps(timings, indent=2) + "\n")
    _say(
        f"pipeline written to {pipeline_dir}; stage times (s): {json.dumps({k: round(v) for k, v in timings.items()})}"
    )
    if install:
        from unclip.pipeline.unclip_pipeline import builtin_model_dir

        target = builtin_model_dir("shapes")
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(pipeline_dir, target)
        _say(f"installed as the built-in model at {target}")
    return pipeline_dir
