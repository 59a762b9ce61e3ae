"""The networks the experiments compare: unCLIP's decoder and its caption-conditioned baselines.

Three decoders share one architecture (a :class:`~unclip.models.decoder_unet.DecoderUNet` of the same
config, hence the same parameter count) and one training recipe (steps, batch, learning rate, EMA) on the
same cache rows; they differ only in what fills the z_i slot (the projection added to the timestep
embedding and the 4 extra context tokens):

- ``image``: unCLIP's decoder, z_i of the training image (z_i -> learned null 10%, caption dropped 50%).
- ``caption``: the GLIDE-like caption-only baseline. The z_i slot always holds the learned null
  embedding (``image_drop = 1``), so the decoder sees only the caption (CLIP token states and pooled z_t);
  the caption is dropped 20% of the time (GLIDE's rate) to learn the unconditional branch of guidance.
- ``text_embedding``: the paper's "decoder trained on CLIP text embeddings" (§5.1): z_t of the caption in
  the z_i slot, with the caption as well and unCLIP's dropout rates.

The fourth setting of the prior ablation, unCLIP's decoder fed z_t zero-shot, needs no training.

Sampling (:func:`decode_with`) always runs at the decoder's base resolution (no upsampler), so every
decoder is compared on equal terms.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.experiments.common import ExperimentContext
from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig

CONDITIONINGS = ("image", "caption", "text_embedding")
CAPTION_TEXT_DROP = 0.2  # GLIDE's caption dropout for the caption-only baseline


@dataclass
class DecoderBudget:
    """Training recipe shared by the compared decoders.

    Attributes:
        name: budget name (the models' directory under ``run_root/_models/FINGERPRINT``).
        preset: decoder preset; ``model_channels`` / ``num_res_blocks`` / ``norm_groups`` override it when set.
        steps, batch_size, lr, warmup_steps, ema_decay: the training loop's settings.
        use_shipped_image_decoder: use the pipeline's decoder as the ``image`` decoder instead of training
            one (valid when the baselines are trained with the shipped decoder's recipe).
        prior_steps: steps of the diffusion prior trained when no prior is available.
        threads: torch threads while training (None = leave as is).
    """

    name: str
    preset: str = "shapes"
    model_channels: int | None = None
    num_res_blocks: int | None = None
    norm_groups: int | None = None
    steps: int = 5000
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    use_shipped_image_decoder: bool = False
    prior_steps: int = 2000
    threads: int | None = None


QUICK_DECODERS = DecoderBudget(
    name="quick", model_channels=16, num_res_blocks=1, norm_groups=8, steps=1000, warmup_steps=50, ema_decay=0.995,
    prior_steps=600,
)  # fmt: skip
# Equal budgets (issue 20): unCLIP's decoder is trained with the baselines' recipe, not taken from the pipeline
FULL_DECODERS = DecoderBudget(name="full")
# One GPU call (benchmarks/gpu_experiment_decoders.py): the shipped decoder's recipe, steps from a calibration
GPU_DECODERS = DecoderBudget(name="shapes-gpu", batch_size=512, lr=1.5e-3, warmup_steps=100, steps=1000)


class ComparisonDecoderTask(DecoderTask):
    """:class:`DecoderTask` with a choice of what fills the z_i slot (see the module doc)."""

    def __init__(self, cache: Any, conditioning: str, budget: DecoderBudget, holdout: int) -> None:
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")
        config = DecoderTaskConfig(preset=budget.preset, holdout=holdout, use_text=True)
        if conditioning == "caption":
            config = replace(config, image_drop=1.0, text_drop=CAPTION_TEXT_DROP)
        super().__init__(config, cache=cache)
        overrides = {
            k: getattr(budget, k)
            for k in ("model_channels", "num_res_blocks", "norm_groups")
            if getattr(budget, k) is not None
        }
        if "model_channels" in overrides:
            overrides["head_channels"] = min(self.model_config.head_channels, overrides["model_channels"])
        self.model_config = replace(self.model_config, **overrides)
        self.conditioning = conditioning

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, Tensor]:
        batch = super().get_batch(indices, device)
        if self.conditioning == "text_embedding":
            batch["image_embedding"] = batch["text_pooled"].clone()
        elif self.conditioning == "caption":
            batch["image_embedding"] = torch.zeros_like(batch["image_embedding"])  # always replaced by the null
        return batch

    def evaluate(self, model: torch.nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return {}  # the experiments evaluate; the base evaluation assumes z_i conditioning


@dataclass
class DecoderStage:
    """A trained decoder, its process and how it is conditioned."""

    model: torch.nn.Module
    diffusion: DiffusionConfig
    conditioning: str
    params: int
    train_steps: int | None = None
    train_seconds: float | None = None
    source: str = ""


def _num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _load_stage(model_dir: Path, conditioning: str, info: dict[str, Any], device: str) -> DecoderStage:
    from unclip.config import load_config
    from unclip.models.serialization import load_model

    model = load_model("decoder", model_dir, device, torch.float32).eval()
    diffusion = load_config(DiffusionConfig, model_dir / "diffusion.json")
    return DecoderStage(model, diffusion, conditioning, _num_params(model), info.get("steps"), info.get("seconds"),
                        str(model_dir))  # fmt: skip


def comparison_decoder(ctx: ExperimentContext, conditioning: str, budget: DecoderBudget) -> DecoderStage:
    """The ``conditioning`` decoder of ``budget``: trained (resumably) under
    ``run_root/_models/FINGERPRINT/BUDGET/`` or, for ``image`` with ``use_shipped_image_decoder``, the
    pipeline's decoder."""
    key = f"decoder:{budget.name}:{conditioning}"
    if key in ctx._memo:
        return ctx._memo[key]
    if conditioning == "image" and budget.use_shipped_image_decoder:
        pipe = ctx.get_pipeline()
        model = pipe.decoder.model
        stage = DecoderStage(model, pipe.decoder.diffusion, "image", _num_params(model), source="shipped pipeline")
        ctx._memo[key] = stage
        return stage
    if ctx.decoders is not None:
        stage = trained_elsewhere(Path(ctx.decoders), conditioning, ctx)
        ctx._memo[key] = stage
        return stage
    out = ctx.run_dir("_models", uses=("cache",)) / budget.name / f"decoder_{conditioning}"
    done = out / "done.json"
    if not done.is_file():
        from unclip.io import atomic_write_text
        from unclip.train.config import TrainConfig
        from unclip.train.loop import run_training

        task = ComparisonDecoderTask(ctx.get_cache(), conditioning, budget, ctx.holdout)
        config = TrainConfig(
            steps=budget.steps, batch_size=budget.batch_size, lr=budget.lr, warmup_steps=min(budget.warmup_steps,
            budget.steps), ema_decay=budget.ema_decay, log_every=max(1, min(50, budget.steps // 10)),
            ckpt_every=max(1, min(100, budget.steps)), eval_every=0, device=ctx.device, num_threads=budget.threads,
        )  # fmt: skip
        ctx.log(f"[models] training the {conditioning!r} decoder ({budget.name}: {budget.steps} steps) in {out}")
        with torch.enable_grad():  # callers may sample under no_grad and train lazily
            result = run_training(task, config, out, progress=ctx.progress)
        if result.stop_reason != "done":
            raise RuntimeError(f"training {out} stopped early ({result.stop_reason}); re-run to resume")
        seconds = _train_seconds(out / "metrics.jsonl")
        atomic_write_text(done, json.dumps({"steps": result.step, "seconds": seconds}) + "\n")
    stage = _load_stage(out / "model", conditioning, json.loads(done.read_text()), ctx.device)
    ctx._memo[key] = stage
    return stage


def trained_elsewhere(root: Path, conditioning: str, ctx: ExperimentContext) -> DecoderStage:
    """The ``conditioning`` decoder of a directory of comparison decoders trained elsewhere (``root/decoder_C/``
    holding ``model/`` and ``done.json``, as ``benchmarks/gpu_experiment_decoders.py`` writes them); refuses one
    built for another CLIP width than this cache's."""
    out = root / f"decoder_{conditioning}"
    if not (out / "done.json").is_file() or not (out / "model" / "model.safetensors").is_file():
        raise FileNotFoundError(f"no trained {conditioning!r} decoder in {out} (needs model/ and done.json)")
    stage = _load_stage(out / "model", conditioning, json.loads((out / "done.json").read_text()), ctx.device)
    width = ctx.get_cache().image_embedding.shape[1]
    if stage.model.config.clip_dim != width:
        raise ValueError(f"the decoder in {out} takes {stage.model.config.clip_dim}-wide embeddings, "
                         f"this cache has {width}")  # fmt: skip
    return stage


def _train_seconds(metrics: Path) -> float | None:
    """The last ``time_s`` logged by the training loop (its wall time), if any."""
    if not metrics.is_file():
        return None
    last = None
    for line in metrics.read_text().splitlines():
        try:
            last = json.loads(line).get("time_s", last)
        except json.JSONDecodeError:
            continue
    return last


def diffusion_prior(ctx: ExperimentContext, budget: DecoderBudget):
    """(prior network, its DiffusionConfig, null text, source): the pipeline's diffusion prior, else
    ``shapes_run/prior/model``, else one trained for ``budget.prior_steps`` under ``run_root/_models``."""
    if "prior" in ctx._memo:
        return ctx._memo["prior"]
    from unclip.config import load_config
    from unclip.models.serialization import load_model
    from unclip.pipeline.priors import DiffusionPriorStage

    clip = ctx.get_clip()
    null = clip.embed_text([""]).to(device=ctx.device, dtype=torch.float32)
    pipe_dir = ctx.pipeline_source()
    if ctx.pipeline is not None or pipe_dir != "shapes" or (ctx.shapes_run / "pipeline").is_dir():
        pipe = ctx.get_pipeline()
        if isinstance(pipe.prior, DiffusionPriorStage):
            ctx._memo["prior"] = (pipe.prior.model, pipe.prior.diffusion, null, "shipped pipeline")
            return ctx._memo["prior"]
    model_dir = ctx.shapes_run / "prior" / "model"
    if not (model_dir / "model.safetensors").is_file():
        model_dir = ctx.run_dir("_models", uses=("cache",)) / budget.name / "prior" / "model"
        if not (model_dir.parent / "done.json").is_file():
            from unclip.data.embed_cache import null_text_for_cache
            from unclip.io import atomic_write_text
            from unclip.train.config import TrainConfig
            from unclip.train.loop import run_training
            from unclip.train.prior_task import DiffusionPriorTask

            cache = ctx.get_cache()
            task = DiffusionPriorTask(cache, null_text_for_cache(cache, clip), "shapes", holdout=ctx.holdout,
                                      eval_rows=0)  # fmt: skip
            steps = budget.prior_steps
            config = TrainConfig(steps=steps, batch_size=64, lr=3e-4, warmup_steps=min(100, steps), ema_decay=0.999,
                                 weight_decay=0.01, log_every=50, ckpt_every=200, eval_every=0, device=ctx.device,
                                 num_threads=budget.threads)  # fmt: skip
            ctx.log(f"[models] no prior found: training a diffusion prior ({steps} steps) in {model_dir.parent}")
            with torch.enable_grad():
                result = run_training(task, config, model_dir.parent, progress=ctx.progress)
            if result.stop_reason != "done":
                raise RuntimeError(f"prior training stopped early ({result.stop_reason}); re-run to resume")
            atomic_write_text(model_dir.parent / "done.json", json.dumps({"steps": result.step}) + "\n")
    prior = load_model("prior", model_dir, ctx.device, torch.float32).eval()
    diffusion = load_config(DiffusionConfig, model_dir / "diffusion.json")
    ctx._memo["prior"] = (prior, diffusion, null, str(model_dir))
    return ctx._memo["prior"]


@torch.no_grad()
def sample_image_embeddings(
    ctx: ExperimentContext, budget: DecoderBudget, text: TextEmbedding, generator: torch.Generator, **kwargs: Any
) -> Tensor:
    """z_i [B, D] from the diffusion prior for B captions (defaults: the pipeline's prior settings)."""
    from unclip.pipeline import GenerationDefaults
    from unclip.stages.prior import sample_prior

    prior, diffusion, null, _ = diffusion_prior(ctx, budget)
    d = GenerationDefaults()
    settings = dict(steps=d.prior_steps, guidance_scale=d.prior_guidance_scale, best_of=d.best_of, clamp=d.prior_clamp)
    settings.update(kwargs)
    return sample_prior(prior, text.to(device=ctx.device), null, generator=generator, diffusion=diffusion, **settings)


@torch.no_grad()
def decode_with(
    stage: DecoderStage,
    text: TextEmbedding,
    guidance: float,
    generator: torch.Generator,
    image_embedding: Tensor | None = None,
    steps: int = 25,
    batch_size: int = 128,
) -> Tensor:
    """Base-resolution images [B, 3, S, S] in [-1, 1] from a comparison decoder (DDPM).

    ``image_embedding`` fills the z_i slot for ``image`` decoders (z_i from the prior, or z_t for the
    zero-shot setting); ``caption`` decoders get their learned null embedding; ``text_embedding`` decoders
    get the captions' z_t.
    """
    from unclip.stages.decoding import sample_decoder

    b = text.pooled.shape[0]
    device = next(stage.model.parameters()).device
    if stage.conditioning == "image":
        if image_embedding is None:
            raise ValueError("an image-conditioned decoder needs image_embedding")
        z = image_embedding
    elif stage.conditioning == "caption":
        z = stage.model.null_image_embedding.detach()[None].expand(b, -1)
    else:
        z = text.pooled
    if z.shape[0] != b:
        raise ValueError(f"{z.shape[0]} embeddings for {b} captions")
    out = []
    for s in range(0, b, batch_size):
        chunk = TextEmbedding(text.pooled[s : s + batch_size], text.tokens[s : s + batch_size].float(),
                              text.mask[s : s + batch_size].bool()).to(device=device)  # fmt: skip
        out.append(
            sample_decoder(stage.model, stage.diffusion, z[s : s + batch_size].to(device).float(), chunk, steps=steps,
                           sampler="ddpm", guidance_scale=guidance, generator=generator).float().cpu()
        )  # fmt: skip
    return torch.cat(out)
