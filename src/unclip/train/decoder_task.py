"""Training tasks for the image stages: the decoder (z_i [+ text] -> base image) and the upsamplers.

Both read an :class:`~unclip.data.embed_cache.EmbeddingCache` (images with their CLIP embeddings), so CLIP
never runs during training. Rows ``[0, len - holdout)`` are trained on; the last ``holdout`` rows are
kept for evaluation. Global sample index ``i`` maps to training row ``i mod (len - holdout)``.

Decoder (the paper's setup): learned-range variance and the hybrid MSE + VLB loss on the 1000-step cosine
schedule; condition dropout for guidance (z_i -> learned null 10%, text dropped 50%). Upsampler:
fixed-small variance, trained on random crops of 1/4 the target area with the low-resolution input
corrupted (Gaussian blur, or BSR-style degradation for a second stage).

Both default to v prediction rather than Karlo's eps. On the cosine schedule ᾱ at t = 999 is ~2e-9, so an
eps model's x0 estimate at the first sampling step amplifies its error by 1/sqrt(ᾱ) ~ 2e4: a briefly
trained eps model starts sampling from a clamped, structured error pattern that later steps keep (we
measured an upsampler with eps MSE 0.004 at t = 999 whose 7-step samples had pixel MSE 0.36 vs 0.008 for
bicubic, with a global colour shift). A v model predicts x0 directly at high noise. Karlo's own weights
keep eps (the parameterisation is part of each stage's DiffusionConfig).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unclip.config import save_config
from unclip.data.degrade import bsr_degrade, gaussian_blur_degrade, paired_random_crop
from unclip.data.embed_cache import EmbeddingCache
from unclip.diffusion import sample_timesteps, training_losses
from unclip.diffusion.stage_config import DECODER_DIFFUSION, DIFFUSION_FILE, UPSAMPLER_DIFFUSION, DiffusionConfig
from unclip.models import build_model, model_config
from unclip.models.decoder_unet import condition_dropout
from unclip.models.serialization import save_model
from unclip.nn.resample import bicubic_resize


@dataclass
class DecoderTaskConfig:
    """What the decoder trains on.

    Attributes:
        cache: directory of an embedding cache (``unclip.data.embed_cache``; a shapes cache is one).
        preset: decoder preset; its CLIP widths are replaced by the cache's.
        holdout: last rows of the cache never trained on (evaluation).
        use_text: condition on the caption's token states and pooled embedding as well as z_i.
        diffusion: schedule and parameterisation.
        image_drop, text_drop: guidance dropout probabilities (override the preset's).
        eval_samples: held-out images decoded at each evaluation.
        eval_steps: sampler steps at evaluation.
        snr_gamma: Min-SNR-γ weighting of the MSE term (None: unweighted, as Karlo and improved DDPM).
        norm_groups: GroupNorm groups of the network (None: the preset's).
        channel_mean_weight: extra weight of the error of each channel's spatial mean (the image's global
            colour) in the MSE term (:func:`unclip.diffusion.losses.channel_mean_error`; 0: plain MSE).
        image_embedding_grid: side of the decoder's located z_i map (``DecoderConfig.image_embedding_grid``;
            None: the preset's, 0: off).
    """

    cache: str = "runs/shapes_cache"
    preset: str = "shapes"
    holdout: int = 1000
    use_text: bool = True
    diffusion: DiffusionConfig = field(default_factory=lambda: replace(DECODER_DIFFUSION))
    image_drop: float = 0.1
    text_drop: float = 0.5
    eval_samples: int = 16
    eval_steps: int = 25
    snr_gamma: float | None = None
    norm_groups: int | None = None
    channel_mean_weight: float = 0.0
    image_embedding_grid: int | None = None

    def __post_init__(self) -> None:
        if not self.channel_mean_weight >= 0:
            raise ValueError(f"channel_mean_weight must be >= 0, got {self.channel_mean_weight}")
        grid = self.image_embedding_grid
        if grid is not None and (isinstance(grid, bool) or not isinstance(grid, int) or grid < 0):
            raise ValueError(f"image_embedding_grid must be an integer >= 0 or None, got {grid!r}")


@dataclass
class UpsamplerTaskConfig:
    """What an upsampler trains on.

    Attributes:
        cache: shapes cache directory (its images are the high-resolution targets).
        preset: upsampler preset (``image_size`` and ``low_res_size`` come from it).
        holdout: last rows kept for evaluation.
        degradation: "blur" (first stage: bicubic down + Gaussian blur) or "bsr" (second stage).
        blur_prob: with "blur", the share of training images that are blurred after the downscale (the
            paper: all); the rest are the plain bicubic downscale, so the upsampler also learns clean inputs
            (trained only on blurred ones it over-sharpens a clean input).
        crop_fraction: side of the training crops as a fraction of the target side (0.5 = 1/4 the area).
        diffusion: schedule and parameterisation (v prediction by default, as ``unclip train upsampler``:
            a briefly trained eps upsampler shifts colours and leaves grain; docs/shapes_model.md).
        image_size, low_res_size: override the preset's sizes (e.g. to chain after a decoder).
        residual: diffuse the residual x - bicubic(low-res) instead of x (``UpsamplerConfig.residual``): the
            bicubic resize carries colours and flat regions exactly, the network only adds detail.
    """

    cache: str = "runs/shapes_cache"
    preset: str = "shapes"
    holdout: int = 1000
    degradation: str = "blur"
    blur_prob: float = 1.0
    crop_fraction: float = 0.5
    diffusion: DiffusionConfig = field(default_factory=lambda: replace(UPSAMPLER_DIFFUSION))
    eval_samples: int = 8
    eval_steps: int = 7
    image_size: int | None = None
    low_res_size: int | None = None
    residual: bool = False


class _CacheTask:
    """Shared plumbing: the cache, the training rows, export with ``diffusion.json``."""

    name = "stage"

    def __init__(self, cache: EmbeddingCache | str | Path, holdout: int, diffusion: DiffusionConfig) -> None:
        self.cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache.load(cache)
        if not 0 <= holdout < len(self.cache):
            raise ValueError(f"holdout must be in [0, {len(self.cache)}) for this cache, got {holdout}")
        self.num_train = len(self.cache) - holdout
        self.holdout_rows = list(range(self.num_train, len(self.cache)))
        self.diffusion = diffusion
        self.schedule = diffusion.make_schedule()
        self.param = diffusion.parameterization()

    def rows(self, indices: list[int]) -> torch.Tensor:
        return torch.tensor([i % self.num_train for i in indices], dtype=torch.long)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        save_model(model, out_dir)
        save_config(self.diffusion, Path(out_dir) / DIFFUSION_FILE)


class DecoderTask(_CacheTask):
    """Train :class:`~unclip.models.decoder_unet.DecoderUNet` on a shapes cache."""

    name = "decoder"

    def __init__(self, config: DecoderTaskConfig, cache: EmbeddingCache | None = None) -> None:
        super().__init__(cache if cache is not None else config.cache, config.holdout, config.diffusion)
        self.config = config
        meta = self.cache.meta
        base = model_config("decoder", config.preset)
        self.model_config = replace(
            base,
            clip_dim=meta["clip_dim"],
            text_width=meta["token_width"] if config.use_text else None,
            use_pooled_text=config.use_text and base.use_pooled_text,
            image_drop=config.image_drop,
            text_drop=config.text_drop,
            learn_sigma=self.param.learned_variance,
            norm_groups=config.norm_groups or base.norm_groups,
            image_embedding_grid=(
                base.image_embedding_grid if config.image_embedding_grid is None else config.image_embedding_grid
            ),
        )

    def build_model(self) -> nn.Module:
        return build_model("decoder", self.model_config)

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        return self.batch_of_rows(self.rows(indices), device)

    def batch_of_rows(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Cache rows (long [B], not sample indices) as a training batch: x0 [B, 3, S, S], z_i [B, D], text."""
        batch = {
            "x0": self.cache.pixels(rows, self.model_config.image_size),
            "image_embedding": self.cache.image_embedding[rows],
        }
        if self.config.use_text:
            mask = self.cache.text.mask[rows]
            length = longest_caption(mask)
            batch["text_tokens"] = self.cache.text.tokens[rows, :length].float()
            batch["text_mask"] = mask[:, :length]
            batch["text_pooled"] = self.cache.text.pooled[rows]
        return {k: v.to(device) for k, v in batch.items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        kwargs = condition_dropout(
            self.model_config,
            batch["image_embedding"],
            batch.get("text_tokens"),
            batch.get("text_mask"),
            batch.get("text_pooled") if self.model_config.use_pooled_text else None,
            generator=generator,
        )
        x0 = batch["x0"]
        t = sample_timesteps(x0.shape[0], len(self.schedule), generator, x0.device)
        losses = training_losses(
            model, x0, t, schedule=self.schedule, param=self.param, model_kwargs=kwargs, generator=generator,
            snr_gamma=self.config.snr_gamma, channel_mean_weight=self.config.channel_mean_weight,
        )  # fmt: skip
        metrics = {"mse": float(losses["mse"].detach().mean())}
        for name in ("vlb", "channel_mean_mse"):
            if name in losses:
                metrics[name] = float(losses[name].detach().mean())
        return losses["loss"].mean(), metrics

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Decode held-out z_i; write [sources | decodes] and report pixel MSE (and oracle agreement)."""
        from unclip.stages.decoding import sample_decoder  # evaluation only; training never samples

        rows = torch.tensor(self.holdout_rows[: self.config.eval_samples], dtype=torch.long)
        if len(rows) == 0:
            return {}
        device = next(model.parameters()).device
        batch = self.batch_of_rows(rows, device)
        text = None
        if self.config.use_text:
            from unclip.encoders.base import TextEmbedding

            text = TextEmbedding(batch["text_pooled"], batch["text_tokens"], batch["text_mask"])
        generator = torch.Generator(device="cpu").manual_seed(step)
        images = sample_decoder(
            model, self.diffusion, batch["image_embedding"], text, steps=self.config.eval_steps,
            sampler="ddpm", guidance_scale=3.0, generator=generator,
        )  # fmt: skip
        metrics = {"eval_pixel_mse": float(((images - batch["x0"]) ** 2).mean())}
        if self.cache.records is not None:  # shapes-world rows: score with the oracle
            metrics.update(_oracle_agreement(images, [self.cache.records[r] for r in rows.tolist()]))
        _write_pair_grid(batch["x0"], images, Path(out_dir) / f"decoder_step{step:07d}.png")
        return metrics


def longest_caption(mask: torch.Tensor) -> int:
    """Token positions a batch needs: one past the last real token of any row (``mask`` [B, L] bool; at least 1).

    The decoder attends to text tokens only through ``mask`` (padding keys are masked out), so cutting the
    positions no row uses leaves its output unchanged and spares the attention and projection work on them.
    """
    used = mask.any(0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


class UpsamplerTask(_CacheTask):
    """Train :class:`~unclip.models.upsampler_unet.UpsamplerUNet` on crops of shapes-cache images."""

    name = "upsampler"

    def __init__(self, config: UpsamplerTaskConfig, cache: EmbeddingCache | None = None) -> None:
        super().__init__(cache if cache is not None else config.cache, config.holdout, config.diffusion)
        if config.degradation not in ("blur", "bsr"):
            raise ValueError(f"degradation must be 'blur' or 'bsr', got {config.degradation!r}")
        if not 0 <= config.blur_prob <= 1:
            raise ValueError(f"blur_prob must be in [0, 1], got {config.blur_prob}")
        if not 0 < config.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1], got {config.crop_fraction}")
        self.config = config
        base = model_config("upsampler", config.preset)
        self.model_config = replace(
            base,
            learn_sigma=self.param.learned_variance,
            image_size=config.image_size or base.image_size,
            low_res_size=config.low_res_size or base.low_res_size,
            residual=config.residual,
        )
        if self.model_config.image_size > self.cache.meta["size"]:
            raise ValueError(
                f"upsampler targets are {self.model_config.image_size} px but the cache holds "
                f"{self.cache.meta['size']} px images"
            )

    def build_model(self) -> nn.Module:
        return build_model("upsampler", self.model_config)

    def get_batch(self, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        return self.batch_of_rows(self.rows(indices), device)

    def batch_of_rows(self, rows: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
        """Cache rows (long [B], not sample indices) as high-resolution targets [B, 3, S, S]."""
        return {"high": self.cache.pixels(rows, self.model_config.image_size).to(device)}

    def degrade(self, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """High-res [B, 3, S, S] -> corrupted low-res [B, 3, s, s]."""
        low_size = self.model_config.low_res_size
        if self.config.degradation == "blur":
            blurred = gaussian_blur_degrade(high, low_size)
            if self.config.blur_prob >= 1:
                return blurred
            clean = gaussian_blur_degrade(high, low_size, sigma=0)
            keep = torch.rand(high.shape[0], generator=generator) < self.config.blur_prob
            return torch.where(keep.to(high.device)[:, None, None, None], blurred, clean)
        return bsr_degrade(high, low_size, generator=generator)

    def target(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        """What the diffusion runs on for targets [B, 3, S, S] and their low-res inputs [B, 3, s, s]: ``high``, or
        for a residual upsampler ``high`` minus the bicubic resize of ``low`` (the network's own conditioning)."""
        if not self.model_config.residual:
            return high
        return high - bicubic_resize(low.clamp(-1, 1), (high.shape[-2], high.shape[-1]))

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        high = batch["high"]
        cpu_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        low = self.degrade(high, cpu_gen).to(high.device)
        crop = max(8, int(round(self.model_config.image_size * self.config.crop_fraction)))
        if crop < self.model_config.image_size:
            high, low = paired_random_crop(high, low, crop, generator=cpu_gen)
        t = sample_timesteps(high.shape[0], len(self.schedule), generator, high.device)
        losses = training_losses(
            model, self.target(high, low), t, schedule=self.schedule, param=self.param, model_kwargs={"low_res": low},
            generator=generator,
        )  # fmt: skip
        return losses["loss"].mean(), {"mse": float(losses["mse"].detach().mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Upsample held-out (degraded) images; write [targets | outputs], report pixel MSE vs bicubic's."""
        from unclip.images import upsample_bicubic
        from unclip.stages.decoding import sample_upsampler

        rows = self.holdout_rows[: self.config.eval_samples]
        if not rows:
            return {}
        device = next(model.parameters()).device
        high = self.batch_of_rows(torch.tensor(rows, dtype=torch.long), device)["high"]
        low = self.degrade(high, torch.Generator().manual_seed(step))
        generator = torch.Generator(device="cpu").manual_seed(step)
        out = sample_upsampler(model, self.diffusion, low, steps=self.config.eval_steps, generator=generator)
        bicubic = upsample_bicubic(low, self.model_config.image_size)
        _write_pair_grid(high, out, Path(out_dir) / f"upsampler_step{step:07d}.png")
        return {
            "eval_pixel_mse": float(((out - high) ** 2).mean()),
            "eval_bicubic_mse": float(((bicubic - high) ** 2).mean()),
        }


def _oracle_agreement(images: torch.Tensor, records: list[dict[str, Any]]) -> dict[str, float]:
    """Oracle agreement of decoded images with their sources' records (when the shipped oracle exists)."""
    try:
        from unclip.measure.oracle import load_oracle, predict, record_agreement
    except ImportError:
        return {}
    try:
        oracle = load_oracle()
    except (FileNotFoundError, ValueError):
        return {}
    preds = predict(oracle, images.float().cpu())
    totals: dict[str, list[bool]] = {}
    for pred, record in zip(preds, records):
        for key, ok in record_agreement(pred, record).items():
            totals.setdefault(key, []).append(bool(ok))
    return {f"eval_agree_{k}": sum(v) / len(v) for k, v in totals.items() if v}


def _write_pair_grid(targets: torch.Tensor, outputs: torch.Tensor, path: Path) -> None:
    """Two rows: targets on top, outputs below (upsampled to the same size)."""
    import torch.nn.functional as F

    from unclip.images import make_grid, tensor_to_output
    from unclip.io import atomic_write

    size = targets.shape[-1]
    if outputs.shape[-1] != size:
        outputs = F.interpolate(outputs.float(), size=(size, size), mode="nearest")
    images = tensor_to_output(torch.cat([targets.float().cpu(), outputs.float().cpu()]), "pil")
    grid = make_grid(images, columns=targets.shape[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: grid.save(f, format="PNG"))
