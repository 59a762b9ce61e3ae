"""Training the priors on a shapes cache, as :class:`~unclip.train.task.TrainTask`\\ s.

Both tasks read an :class:`~unclip.data.embed_cache.EmbeddingCache` (CLIP image embeddings z_i, caption
encodings, per world sample) instead of running CLIP every step. The last ``holdout`` rows of the cache are
held out: no batch ever contains them, and :meth:`evaluate` measures on them.

Global sample index ``i`` maps to training row ``perm_e[i mod N]`` with ``N`` training rows, epoch
``e = i // N`` and ``perm_e`` a permutation seeded by ``(data_seed, e)``: every epoch visits every training
row once, in a fresh order, and the batch is a deterministic function of the indices (exact resume).

- :class:`DiffusionPriorTask` — x0 = ``prior.normalize(z_i)`` (CLIP mean/std fitted from the training rows
  in :meth:`build_model`), captions replaced by the null text (CLIP of ``""``) with probability
  ``config.text_drop_prob``, uniform t, ``training_losses`` with x0 prediction / fixed-small variance
  (:data:`~unclip.stages.prior.PRIOR_DIFFUSION`). Export: ``config.json`` +
  ``model.safetensors`` + ``diffusion.json``.
- :class:`ProjectionPriorTask` — ECLIPSE's non-diffusion prior
  (:class:`~unclip.models.projection_prior.ProjectionPrior`, the diffusion prior's network run once): mean
  squared error of the predicted to the normalised z_i plus ``contrastive_weight`` x the symmetric InfoNCE
  loss between the predicted z_i and the batch's z_t (cosine logits over ``temperature``); no caption
  dropout (it samples without guidance). Export: ``config.json`` + ``model.safetensors``.
- :class:`ARPriorTask` — K from the < 1% PCA reconstruction rule on the training rows (or given), the PCA,
  component and dot-product quantisers fitted in :meth:`build_model`; next-token cross-entropy over the
  dot-product token and the K component tokens. Export: ``config.json`` + ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unclip.config import save_config
from unclip.data.embed_cache import EmbeddingCache
from unclip.diffusion import sample_timesteps, training_losses
from unclip.diffusion.stage_config import DIFFUSION_FILE, PRIOR_DIFFUSION, DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.io import atomic_write_text
from unclip.measure.prior_metrics import cosine_scores
from unclip.models.ar_prior import PRESETS as AR_PRESETS
from unclip.models.ar_prior import ARPrior, ARPriorConfig
from unclip.models.pca_quantizer import num_components_for
from unclip.models.prior import PRESETS as PRIOR_PRESETS
from unclip.models.prior import DiffusionPrior, PriorConfig, text_dropout
from unclip.models.projection_prior import ProjectionPrior
from unclip.models.serialization import save_model
from unclip.stages.prior import sample_ar_prior, sample_prior

__all__ = ["ARPriorTask", "DiffusionPriorTask", "PriorBatch", "ProjectionPriorTask", "projection_prior_loss"]


@dataclass
class PriorBatch:
    """rows [B] long cache rows; image_embedding [B, D] float32 z_i; text: the captions (float32 tokens)."""

    rows: Tensor
    image_embedding: Tensor
    text: TextEmbedding


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class _CachePriorTask:
    """Shared data handling: training/held-out split, epoch permutations, batches, held-out sampling."""

    name = "prior"
    # Settings outside the config dataclasses that change training (checked on resume, unclip.train.settings).
    setting_attributes = ("holdout", "data_seed")

    def __init__(
        self,
        cache: EmbeddingCache | str | Path,
        null_text: TextEmbedding,
        holdout: int,
        data_seed: int,
        eval_rows: int,
        eval_seed: int,
        export_dtype: torch.dtype | None,
    ):
        if not isinstance(cache, EmbeddingCache):
            cache = EmbeddingCache.load(cache)
        if not isinstance(holdout, int) or holdout < 0:
            raise ValueError(f"holdout must be an integer >= 0, got {holdout!r}")
        if len(cache) - holdout < 2:
            raise ValueError(
                f"holdout={holdout} leaves {len(cache) - holdout} training rows of {len(cache)}; need >= 2"
            )
        if eval_rows < 0:
            raise ValueError(f"eval_rows must be >= 0, got {eval_rows}")
        if null_text.pooled.shape[0] != 1:
            raise ValueError(f"null_text must be one caption (batch 1), got batch {null_text.pooled.shape[0]}")
        d, length, width = cache.image_embedding.shape[1], cache.text.tokens.shape[1], cache.text.tokens.shape[2]
        if null_text.pooled.shape[1] != d or tuple(null_text.tokens.shape[1:]) != (length, width):
            raise ValueError(
                f"null_text (pooled {tuple(null_text.pooled.shape)}, tokens {tuple(null_text.tokens.shape)}) does not "
                f"match the cache (D={d}, L={length}, W={width})"
            )
        self.num_rows = len(cache)
        self.cache_meta = dict(cache.meta)  # the cache's identity, checked on resume (unclip.train.settings)
        self.holdout = holdout
        self.num_train = self.num_rows - holdout
        self.image_embedding = cache.image_embedding.float()
        self.text = cache.text  # pooled f32, tokens f16 (converted per batch), mask bool
        self.captions = cache.captions
        self.clip_dims = (d, width, length)  # (clip_dim, text_width, text_len)
        self.null_text = null_text.to(device="cpu", dtype=torch.float32)
        self.data_seed = data_seed
        self.eval_rows = min(eval_rows, holdout)
        self.eval_seed = eval_seed
        self.export_dtype = export_dtype
        self._perms: dict[int, Tensor] = {}

    # ---- data ---------------------------------------------------------------------------------------

    @property
    def train_rows(self) -> range:
        return range(self.num_train)

    @property
    def heldout_rows(self) -> range:
        return range(self.num_train, self.num_rows)

    def rows_of(self, indices: list[int]) -> Tensor:
        """Global sample indices -> training rows (long [B], all < ``num_train``)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() and int(idx.min()) < 0:
            raise ValueError(f"sample indices must be >= 0, got {int(idx.min())}")
        epochs = idx // self.num_train
        rows = torch.empty_like(idx)
        for e in epochs.unique().tolist():
            if e not in self._perms:
                if len(self._perms) > 4:
                    self._perms.clear()
                g = torch.Generator().manual_seed(self.data_seed * 1_000_003 + e)
                self._perms[e] = torch.randperm(self.num_train, generator=g)
            sel = epochs == e
            rows[sel] = self._perms[e][idx[sel] % self.num_train]
        return rows

    def batch_of_rows(self, rows: Tensor, device: torch.device | str = "cpu") -> PriorBatch:
        """The cache rows ``rows`` (any, held-out included) as a batch on ``device``."""
        text = TextEmbedding(self.text.pooled[rows].float(), self.text.tokens[rows].float(), self.text.mask[rows])
        return PriorBatch(rows.to(device), self.image_embedding[rows].to(device), text.to(device=device))

    def get_batch(self, indices: list[int], device: torch.device) -> PriorBatch:
        return self.batch_of_rows(self.rows_of(indices), device)

    def train_embeddings(self) -> tuple[Tensor, Tensor]:
        """``(z_i [N, D], z_t [N, D])`` of the training rows (float32)."""
        return self.image_embedding[: self.num_train], self.text.pooled[: self.num_train].float()

    # ---- evaluation / export helpers ------------------------------------------------------------------

    def _sample(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Mean cosine of sampled z_i to the true z_i and to z_t on the first ``eval_rows`` held-out rows
        (and the baseline that uses z_t itself); written to ``out_dir/prior_<step>.json``."""
        if self.eval_rows == 0:
            return {}
        model = _unwrap(model)
        device = next(model.parameters()).device
        rows = torch.arange(self.num_train, self.num_train + self.eval_rows)
        batch = self.batch_of_rows(rows, device)
        generator = torch.Generator(device=device).manual_seed(self.eval_seed)
        z = self._sample(model, batch, generator).float()
        scores = cosine_scores(z, batch.image_embedding, batch.text.pooled)
        baseline = cosine_scores(batch.text.pooled, batch.image_embedding, batch.text.pooled)
        metrics = {
            "cos_image": scores["cos_image"],
            "cos_text": scores["cos_text"],
            "baseline_cos_image": baseline["cos_image"],
        }
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        record = {"step": step, "rows": self.eval_rows, **metrics}
        atomic_write_text(out_dir / f"{self.name}_{step:07d}.json", json.dumps(record, indent=1) + "\n")
        return metrics


def _sized(config: Any, presets: dict, kind: str, dims: tuple[int, int, int]) -> Any:
    """A preset name -> its config with the cache's (clip_dim, text_width, text_len); a config -> checked."""
    d, w, length = dims
    if isinstance(config, str):
        if config not in presets:
            raise ValueError(f"unknown {kind} preset {config!r}; choose one of {sorted(presets)}")
        return dataclasses.replace(presets[config](), clip_dim=d, text_width=w, text_len=length)
    got = (config.clip_dim, config.text_width, config.text_len)
    if got != dims:
        raise ValueError(f"{kind} config has (clip_dim, text_width, text_len) = {got}, the cache has {dims}")
    return config


class DiffusionPriorTask(_CachePriorTask):
    """Diffusion prior on a shapes cache (see the module doc).

    Args:
        cache: a loaded :class:`EmbeddingCache` or its directory.
        null_text: CLIP encoding of ``""`` (batch 1) from the cache's CLIP
            (:func:`~unclip.data.embed_cache.null_text_for_cache`).
        config: :class:`PriorConfig` (dimensions must match the cache) or a preset name (its D, W, L are
            taken from the cache).
        holdout: the last ``holdout`` rows are never trained on.
        diffusion: the process (default :data:`PRIOR_DIFFUSION`); only x0 prediction with a fixed variance
            is what the prior's sampler expects, but any :class:`DiffusionConfig` without learned variance works.
        data_seed: seeds the per-epoch row order.
        eval_rows: held-out rows sampled by :meth:`evaluate` (0 = no evaluation).
        eval_steps, eval_guidance, eval_best_of: sampler settings of :meth:`evaluate` (DDPM, clamp 10).
        eval_seed: seed of the evaluation noise.
        export_dtype: dtype of exported float32 weights (None = float32).
    """

    name = "prior"

    def __init__(
        self,
        cache: EmbeddingCache | str | Path,
        null_text: TextEmbedding,
        config: PriorConfig | str = "shapes",
        holdout: int = 1000,
        diffusion: DiffusionConfig = PRIOR_DIFFUSION,
        data_seed: int = 0,
        eval_rows: int = 100,
        eval_steps: int = 25,
        eval_guidance: float = 4.0,
        eval_best_of: int = 2,
        eval_seed: int = 0,
        export_dtype: torch.dtype | None = None,
    ):
        super().__init__(cache, null_text, holdout, data_seed, eval_rows, eval_seed, export_dtype)
        self.config: PriorConfig = _sized(config, PRIOR_PRESETS, "prior", self.clip_dims)
        self.diffusion = diffusion
        self.param = diffusion.parameterization()
        if self.param.learned_variance:
            raise ValueError(f"the diffusion prior has no variance output; got variance={diffusion.variance!r}")
        self.schedule = diffusion.make_schedule()
        self.eval_steps, self.eval_guidance, self.eval_best_of = eval_steps, eval_guidance, eval_best_of

    def build_model(self) -> DiffusionPrior:
        """A fresh prior whose CLIP mean/std are fitted on the training rows' z_i."""
        model = DiffusionPrior(self.config)
        model.fit_clip_stats(self.train_embeddings()[0])
        return model

    def loss(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        core = _unwrap(model)
        x0 = core.normalize(batch.image_embedding)
        text, dropped = text_dropout(batch.text, self.null_text, self.config.text_drop_prob, generator)
        t = sample_timesteps(x0.shape[0], len(self.schedule), generator, x0.device)
        losses = training_losses(
            model,
            x0,
            t,
            schedule=self.schedule,
            param=self.param,
            model_kwargs={"text_pooled": text.pooled, "text_tokens": text.tokens, "text_mask": text.mask},
            generator=generator,
        )
        return losses["loss"].mean(), {"dropped_frac": float(dropped.float().mean())}

    def _sample(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> Tensor:
        return sample_prior(
            model,
            batch.text,
            self.null_text,
            steps=self.eval_steps,
            guidance_scale=self.eval_guidance,
            best_of=self.eval_best_of,
            generator=generator,
            diffusion=self.diffusion,
        )

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """``config.json`` + ``model.safetensors`` (CLIP stats included) + ``diffusion.json``."""
        save_model(_unwrap(model), out_dir, dtype=self.export_dtype)
        save_config(self.diffusion, Path(out_dir) / DIFFUSION_FILE)


def projection_prior_loss(
    predicted: Tensor, target: Tensor, predicted_clip: Tensor, text_pooled: Tensor, weight: float, temperature: float
) -> tuple[Tensor, Tensor]:
    """ECLIPSE's objective on a batch of B: ``(projection MSE, symmetric InfoNCE)``; the loss is
    ``mse + weight * infonce`` (returned apart for logging; ``weight`` only checks here).

    Args:
        predicted, target: [B, D] the predicted and the true z_i in normalised space (the MSE's inputs).
        predicted_clip: [B, D] the predicted z_i in CLIP space; text_pooled: [B, D] the captions' z_t. Logits
            ``cos(predicted_clip_j, z_t_k) / temperature``; row j's positive is column j, both directions.
    """
    if weight < 0 or temperature <= 0:
        raise ValueError(f"contrastive weight must be >= 0 and temperature > 0, got {weight}, {temperature}")
    mse = F.mse_loss(predicted.float(), target.float())
    logits = F.normalize(predicted_clip.float(), dim=-1) @ F.normalize(text_pooled.float(), dim=-1).T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    infonce = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    return mse, infonce


class ProjectionPriorTask(_CachePriorTask):
    """ECLIPSE's non-diffusion prior on a shapes cache (see the module doc); arguments as
    :class:`DiffusionPriorTask` (the same :class:`PriorConfig` and presets), plus ``contrastive_weight``
    (ECLIPSE's lambda, 0.2) and ``temperature`` of the contrastive logits."""

    name = "prior"
    setting_attributes = ("holdout", "data_seed", "contrastive_weight", "temperature")

    def __init__(
        self,
        cache: EmbeddingCache | str | Path,
        null_text: TextEmbedding,
        config: PriorConfig | str = "shapes",
        holdout: int = 1000,
        contrastive_weight: float = 0.2,
        temperature: float = 0.07,
        data_seed: int = 0,
        eval_rows: int = 100,
        eval_seed: int = 0,
        export_dtype: torch.dtype | None = None,
    ):
        super().__init__(cache, null_text, holdout, data_seed, eval_rows, eval_seed, export_dtype)
        if contrastive_weight < 0 or temperature <= 0:
            raise ValueError(f"contrastive_weight must be >= 0 (got {contrastive_weight}) and temperature > 0 "
                             f"(got {temperature})")  # fmt: skip
        self.config: PriorConfig = _sized(config, PRIOR_PRESETS, "prior", self.clip_dims)
        self.contrastive_weight, self.temperature = float(contrastive_weight), float(temperature)

    def build_model(self) -> ProjectionPrior:
        """A fresh projection prior whose CLIP mean/std are fitted on the training rows' z_i."""
        model = ProjectionPrior(self.config)
        model.fit_clip_stats(self.train_embeddings()[0])
        return model

    def loss(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        core = _unwrap(model)
        text = batch.text
        predicted = model(text.pooled, text.tokens, text.mask)
        mse, infonce = projection_prior_loss(
            predicted, core.normalize(batch.image_embedding), core.denormalize(predicted.float()), text.pooled,
            self.contrastive_weight, self.temperature,
        )  # fmt: skip
        return mse + self.contrastive_weight * infonce, {"mse": float(mse.detach()), "infonce": float(infonce.detach())}

    def _sample(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> Tensor:
        return _unwrap(model).sample(batch.text)

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """``config.json`` + ``model.safetensors`` (CLIP stats included)."""
        save_model(_unwrap(model), out_dir, dtype=self.export_dtype)


class ARPriorTask(_CachePriorTask):
    """Autoregressive prior on a shapes cache (see the module doc).

    Args:
        cache, null_text, holdout, data_seed, eval_rows, eval_seed, export_dtype: as
            :class:`DiffusionPriorTask`.
        config: :class:`ARPriorConfig` or a preset name (D, W, L from the cache).
        num_components: K; None = the smallest K with relative PCA reconstruction MSE < ``max_rel_mse`` on
            the training rows (the paper's < 1% rule). Overrides the config's K either way.
        max_rel_mse: threshold of that rule.
        num_buckets, dot_buckets: override the config's vocabularies (None = keep). The paper's 1024 buckets
            leave ~30 training rows per bucket on a 30k-row cache, too few to learn in a short CPU run.
        eval_guidance, eval_temperature, eval_dot_percentile: :func:`sample_ar_prior` settings of
            :meth:`evaluate`.
    """

    name = "ar_prior"

    def __init__(
        self,
        cache: EmbeddingCache | str | Path,
        null_text: TextEmbedding,
        config: ARPriorConfig | str = "shapes",
        holdout: int = 1000,
        num_components: int | None = None,
        max_rel_mse: float = 0.01,
        num_buckets: int | None = None,
        dot_buckets: int | None = None,
        data_seed: int = 0,
        eval_rows: int = 100,
        eval_guidance: float = 1.0,
        eval_temperature: float = 1.0,
        eval_dot_percentile: float = 0.5,
        eval_seed: int = 0,
        export_dtype: torch.dtype | None = None,
    ):
        super().__init__(cache, null_text, holdout, data_seed, eval_rows, eval_seed, export_dtype)
        config = _sized(config, AR_PRESETS, "ar_prior", self.clip_dims)
        if num_components is None:
            num_components = num_components_for(self.train_embeddings()[0], max_rel_mse)
        if num_components >= self.num_train:
            raise ValueError(f"num_components={num_components} needs more than {self.num_train} training rows")
        buckets = {"num_buckets": num_buckets, "dot_buckets": dot_buckets}
        config = dataclasses.replace(config, **{k: v for k, v in buckets.items() if v is not None})
        self.config: ARPriorConfig = dataclasses.replace(config, num_components=num_components)
        self.max_rel_mse = max_rel_mse
        self.fit_stats: dict[str, float] = {}
        self.eval_guidance, self.eval_temperature = eval_guidance, eval_temperature
        self.eval_dot_percentile = eval_dot_percentile

    def build_model(self) -> ARPrior:
        """A fresh AR prior with the PCA and quantisers fitted on the training rows."""
        model = ARPrior(self.config)
        z_i, z_t = self.train_embeddings()
        self.fit_stats = {"num_components": float(self.config.num_components), **model.fit_quantizers(z_i, z_t)}
        return model

    def loss(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """:meth:`ARPrior.loss`, with the forward pass through ``model`` itself (so DDP syncs gradients)."""
        core = _unwrap(model)
        dot, comps = core.encode_targets(batch.image_embedding, batch.text.pooled)
        text, _ = text_dropout(batch.text, self.null_text, self.config.text_drop_prob, generator)
        dot_logits, comp_logits = model(text.pooled, text.tokens, text.mask, dot, comps)
        ce_dot = F.cross_entropy(dot_logits.float(), dot)
        ce_comp = F.cross_entropy(comp_logits.float().flatten(0, 1), comps.flatten())
        k = self.config.num_components
        loss = (ce_dot + k * ce_comp) / (k + 1)
        acc = (comp_logits.detach().argmax(-1) == comps).float().mean()
        return loss, {"ce_dot": float(ce_dot.detach()), "ce_comp": float(ce_comp.detach()), "acc_comp": float(acc)}

    def _sample(self, model: nn.Module, batch: PriorBatch, generator: torch.Generator) -> Tensor:
        return sample_ar_prior(
            model,
            batch.text,
            self.null_text if self.eval_guidance != 1.0 else None,
            guidance_scale=self.eval_guidance,
            temperature=self.eval_temperature,
            dot_percentile=self.eval_dot_percentile,
            generator=generator,
        )

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """``config.json`` (with the fitted K) + ``model.safetensors`` (PCA and quantiser state in float64)."""
        save_model(_unwrap(model), out_dir, dtype=self.export_dtype)
