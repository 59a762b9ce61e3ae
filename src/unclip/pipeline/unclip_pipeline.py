"""``UnCLIPPipeline``: text -> CLIP -> prior -> z_i -> decoder -> upsamplers, and the manipulations of
the same latent space (variations, interpolations, text diffs).

A pipeline directory (ours) holds ``model_index.json`` and one sub-directory per part: ``clip/``,
``prior/``, ``decoder/``, ``upsampler_1/``, ... Each diffusion part has ``config.json`` +
``model.safetensors`` + ``diffusion.json`` (its :class:`DiffusionConfig`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unclip.config import config_from_dict, config_to_dict, load_config, save_config
from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.images import ImageInput, load_image, pil_to_tensor, slerp, tensor_to_output
from unclip.io import atomic_write_text
from unclip.limits import check_count, check_memory
from unclip.models.serialization import load_model, save_model
from unclip.pipeline import bounds
from unclip.pipeline.formats import exporter, find_format, format_names, read_index
from unclip.pipeline.options import (  # noqa: F401 - re-exported
    BUILTIN_MODELS,
    DECODER_UNCOND,
    DIFFUSION_FILE,
    FORMAT,
    INDEX_FILE,
    GenerationDefaults,
    PromptWarning,
    Stage,
    UnCLIPOutput,
    _check_positive_int,
    _check_scale,
    builtin_model_dir,
    check_finite,
    check_prompts,
    model_dir,
    prior_bytes_per_sample,
    unet_bytes_per_sample,
)
from unclip.samplers import SAMPLER_NAMES, ProgressFn
from unclip.stages.decoding import invert_decoder, sample_decoder, sample_prior_unclip, sample_upsampler
from unclip.stages.prior import sample_ar_prior, sample_prior


class UnCLIPPipeline:
    """The full unCLIP system. Build with :meth:`from_pretrained` or from parts.

    Args:
        clip: a frozen :class:`ClipEncoder`.
        prior: the diffusion prior stage (a ``DiffusionPrior`` with its DiffusionConfig), an ``ARPrior``, or
            None (an image-variation pipeline: text-to-image then needs ``image_embeddings``).
        decoder: the decoder stage.
        upsamplers: upsampler stages, applied in order.
        defaults: default sampling settings.
        decoder_uncond: the decoder's unconditional caption, one of :data:`DECODER_UNCOND` ("masked": ours;
            "empty_text": Karlo's and diffusers', set by the importers in :mod:`unclip.interop`).
    """

    def __init__(
        self,
        clip: ClipEncoder,
        prior: Stage | nn.Module | None,
        decoder: Stage,
        upsamplers: Sequence[Stage] = (),
        defaults: GenerationDefaults | None = None,
        decoder_uncond: str = "masked",
    ) -> None:
        if decoder_uncond not in DECODER_UNCOND:
            raise ValueError(f"decoder_uncond must be one of {DECODER_UNCOND}, got {decoder_uncond!r}")
        self.clip = clip
        self.prior = prior
        self.decoder = decoder
        self.upsamplers = list(upsamplers)
        self.defaults = defaults or GenerationDefaults()
        self.decoder_uncond = decoder_uncond
        self._null_text: TextEmbedding | None = None
        for module in self._modules():
            module.eval()

    # ------------------------------------------------------------------ devices and files

    @property
    def device(self) -> torch.device:
        return next(self.decoder.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.decoder.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        """Side of the final images."""
        return self.upsamplers[-1].model.config.image_size if self.upsamplers else self.decoder.model.config.image_size

    def _modules(self) -> list[nn.Module]:
        prior = self.prior.model if isinstance(self.prior, Stage) else self.prior
        ups = [m for u in self.upsamplers for m in (u.model, u.last_step_model) if m is not None]
        return ([prior] if prior is not None else []) + [self.decoder.model, *ups]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> UnCLIPPipeline:
        """Move every part (in place); returns ``self``."""
        self.clip.to(device, dtype)
        for module in self._modules():
            module.to(device=device, dtype=dtype)
        self._null_text = None
        return self

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path = "shapes",
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> UnCLIPPipeline:
        """Load a pipeline: a built-in name (``"shapes"``) or a directory (ours, or diffusers' UnCLIP layout)."""
        directory = model_dir(path)
        index = read_index(directory, INDEX_FILE)
        if index is None or index.get("format") != FORMAT:
            fmt = find_format(directory, index)
            if fmt is not None:
                return fmt.load(directory, device=device, dtype=dtype)
            if index is None:
                raise FileNotFoundError(
                    f"{directory} has no {INDEX_FILE} and is no layout of {format_names()}; it is not a pipeline"
                )
            raise ValueError(
                f"{directory / INDEX_FILE} is not an unclip pipeline index (format {index.get('format')!r})"
            )
        return cls._load_ours(directory, index, device, dtype)

    @classmethod
    def _load_ours(cls, directory: Path, index: dict[str, Any], device, dtype) -> UnCLIPPipeline:
        from unclip.encoders.loading import load_clip

        def stage(kind: str, sub: str) -> Stage:
            part = directory / sub
            return Stage(load_model(kind, part, device, dtype), load_config(DiffusionConfig, part / DIFFUSION_FILE))

        for key in ("clip", "prior", "decoder"):
            if key not in index:
                raise ValueError(f"{directory / INDEX_FILE} names no {key!r} part")
        clip_kwargs = {"center_crop": True} if index.get("clip_center_crop") else {}
        clip = load_clip(directory / index["clip"], device=device, dtype=dtype, **clip_kwargs)
        prior_kind = index.get("prior_kind", "prior")
        prior: Stage | nn.Module | None
        if index["prior"] is None:
            prior = None
        elif prior_kind == "ar_prior":
            prior = load_model("ar_prior", directory / index["prior"], device, dtype)
        else:
            prior = stage("prior", index["prior"])
        decoder = stage("decoder", index["decoder"])
        upsamplers = [stage("upsampler", sub) for sub in index.get("upsamplers", [])]
        for up, sub in zip(upsamplers, index.get("upsampler_last_step", [None] * len(upsamplers))):
            if sub is not None:
                up.last_step_model = load_model("upsampler", directory / sub, device, dtype)
        defaults = config_from_dict(GenerationDefaults, index.get("defaults", {}))
        return cls(clip, prior, decoder, upsamplers, defaults, decoder_uncond=index.get("decoder_uncond", "masked"))

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline in our layout; weights cast to ``dtype`` if given (e.g. fp16)."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        save_clip = getattr(self.clip, "save_pretrained", None)
        if save_clip is None:
            raise TypeError(f"{type(self.clip).__name__} cannot be saved in our layout")
        save_clip(directory / "clip", dtype=dtype)

        def write_stage(stage: Stage, sub: str) -> None:
            save_model(stage.model, directory / sub, dtype=dtype)
            save_config(stage.diffusion, directory / sub / DIFFUSION_FILE)

        if isinstance(self.prior, Stage):
            write_stage(self.prior, "prior")
            prior_kind = "prior"
        elif self.prior is not None:
            save_model(self.prior, directory / "prior", dtype=dtype)
            prior_kind = "ar_prior"
        else:
            prior_kind = None
        write_stage(self.decoder, "decoder")
        subs, last_subs = [], []
        for i, stage in enumerate(self.upsamplers, start=1):
            write_stage(stage, f"upsampler_{i}")
            subs.append(f"upsampler_{i}")
            last_subs.append(f"upsampler_{i}_last_step" if stage.last_step_model is not None else None)
            if stage.last_step_model is not None:
                save_model(stage.last_step_model, directory / last_subs[-1], dtype=dtype)
        index = {
            "format": FORMAT,
            "_class_name": "UnCLIPPipeline",
            "clip": "clip",
            "prior": "prior" if prior_kind else None,
            "prior_kind": prior_kind,
            "decoder": "decoder",
            "upsamplers": subs,
            "defaults": config_to_dict(self.defaults),
        }
        if any(last_subs):
            index["upsampler_last_step"] = last_subs
        if self.decoder_uncond != "masked":
            index["decoder_uncond"] = self.decoder_uncond
        if getattr(self.clip, "center_crop", False):
            index["clip_center_crop"] = True
        atomic_write_text(directory / INDEX_FILE, json.dumps(index, indent=2) + "\n")
        return directory

    def export(self, format_name: str, path: str | Path, dtype: torch.dtype | None = None, **options: Any) -> Path:
        """Write the pipeline in a registered format (:mod:`unclip.pipeline.formats`; ``"diffusers"``,
        ``"diffusers-variation"`` once :mod:`unclip.interop` is imported, as ``import unclip`` does)."""
        return exporter(format_name)(self, path, dtype=dtype, **options)

    def export_diffusers(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write diffusers' ``UnCLIPPipeline`` layout (see :func:`unclip.interop.diffusers_export.export_diffusers`)."""
        return self.export("diffusers", path, dtype=dtype)

    # ------------------------------------------------------------------ settings

    def _settings(self, **overrides: Any) -> GenerationDefaults:
        """Defaults with the non-None overrides applied, validated."""
        s = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        if s.sampler not in SAMPLER_NAMES:
            raise ValueError(f"sampler must be one of {SAMPLER_NAMES}, got {s.sampler!r}")
        for f in fields(s):
            value = getattr(s, f.name)
            if f.name.endswith("_steps"):
                _check_positive_int(f.name, value, bounds.MAX_STEPS)
            elif f.name == "best_of":
                _check_positive_int(f.name, value, bounds.MAX_BEST_OF)
            elif f.name.endswith("guidance_scale"):
                _check_scale(f.name, value, bounds.MAX_GUIDANCE)
            elif f.name == "eta":
                _check_scale(f.name, value, bounds.MAX_ETA)
            elif f.name != "sampler":
                _check_scale(f.name, value)
        if s.sampler == "unclip":
            for name in ("prior_steps", "decoder_steps", "upsampler_steps"):
                if getattr(s, name) < 2:
                    raise ValueError(f"{name} must be >= 2 with sampler 'unclip', got {getattr(s, name)}")
        return s

    @staticmethod
    def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
        if generator is not None and seed is not None:
            raise ValueError("give either generator or seed, not both")
        if seed is not None:
            return torch.Generator().manual_seed(bounds.check_seed(seed))
        return generator

    def _warn_about_prompts(self, prompts: Sequence[str]) -> None:
        """A :class:`PromptWarning` for each part of a prompt the text encoder does not see."""
        for prompt in dict.fromkeys(prompts):
            for message in self.clip.text_warnings(prompt):
                warnings.warn(message, PromptWarning, stacklevel=3)

    def check_batch(self, name: str, images: int, best_of: int = 1) -> None:
        """Refuse ``images`` images (``best_of`` prior candidates each) that the available memory cannot hold,
        before any work; ``name`` is the option the caller gave (``num_images_per_prompt``)."""
        check_count(name, images, bounds.MAX_IMAGES, "images sampled in one call")
        prior = self.prior.model if isinstance(self.prior, Stage) else self.prior
        per_image = sum(
            unet_bytes_per_sample(stage.model, guided=stage is self.decoder)
            for stage in [self.decoder, *self.upsamplers]
        )
        if prior is not None:
            per_image += best_of * prior_bytes_per_sample(prior, self.clip.max_text_length)
        check_memory(name, images, per_image)

    def null_text(self) -> TextEmbedding:
        """CLIP's encoding of the empty caption (the prior's unconditional branch), cached."""
        if self._null_text is None:
            self._null_text = self.clip.embed_text([""])
        return self._null_text

    # ------------------------------------------------------------------ stages

    def _decoder_null_text(self, given: TextEmbedding | None = None) -> TextEmbedding | None:
        """The decoder's unconditional caption: CLIP's "" (``given``, else the cached encoding) for
        ``decoder_uncond="empty_text"``, else None."""
        if self.decoder_uncond != "empty_text" or not self.decoder.model.config.text_width:
            return None
        return given if given is not None else self.null_text()

    def embed_prompts(self, prompts: list[str]) -> TextEmbedding:
        return self.clip.embed_text(prompts)

    def embed_images(self, images: Sequence[ImageInput]) -> Tensor:
        """Images (PIL or paths, any size/mode) -> [B, D] CLIP image embeddings."""
        pils = [load_image(image) for image in images]
        return self.clip.embed_images(self.clip.preprocess_pil(pils))

    def run_prior(
        self,
        text: TextEmbedding,
        settings: GenerationDefaults,
        generator,
        progress: ProgressFn | None,
        null_text: TextEmbedding | None = None,
    ) -> Tensor:
        """[B, D] image embeddings for B encoded captions (``null_text``: "" encoded, batch 1 or B; default cached)."""
        null_text = null_text if null_text is not None else self.null_text()
        if self.prior is None:
            raise ValueError(
                "this pipeline has no prior (an image-variation pipeline): pass image_embeddings, or use vary()"
            )
        if isinstance(self.prior, Stage) and settings.sampler == "unclip":
            return check_finite("prior", sample_prior_unclip(
                self.prior.model,
                text,
                null_text,
                steps=settings.prior_steps,
                guidance_scale=settings.prior_guidance_scale,
                best_of=settings.best_of,
                clamp=settings.prior_clamp,
                generator=generator,
                diffusion=self.prior.diffusion,
                progress=progress,
            ))  # fmt: skip
        if isinstance(self.prior, Stage):
            return check_finite("prior", sample_prior(
                self.prior.model,
                text,
                null_text,
                steps=settings.prior_steps,
                sampler=settings.sampler,
                guidance_scale=settings.prior_guidance_scale,
                best_of=settings.best_of,
                clamp=settings.prior_clamp,
                generator=generator,
                eta=settings.eta,
                diffusion=self.prior.diffusion,
                progress=progress,
            ))  # fmt: skip
        return check_finite("prior", sample_ar_prior(
            self.prior,
            text,
            null_text,
            guidance_scale=settings.prior_guidance_scale,
            best_of=settings.best_of,
            generator=generator,
        ))  # fmt: skip

    def decode(
        self,
        image_embedding: Tensor,
        text: TextEmbedding | None,
        settings: GenerationDefaults,
        generator: torch.Generator | None,
        x_T: Tensor | None = None,
        eta: float | None = None,
        sampler: str | None = None,
        progress: ProgressFn | None = None,
        null_text: TextEmbedding | None = None,
    ) -> Tensor:
        """z_i [B, D] (+ captions) -> final images [B, 3, S, S] in [-1, 1] through the decoder and upsamplers.

        ``null_text`` overrides the cached "" encoding of ``decoder_uncond="empty_text"`` (batch 1 or B)."""
        image = sample_decoder(
            self.decoder.model,
            self.decoder.diffusion,
            image_embedding,
            text,
            steps=settings.decoder_steps,
            sampler=sampler or settings.sampler,
            guidance_scale=settings.decoder_guidance_scale,
            eta=settings.eta if eta is None else eta,
            generator=generator,
            x_T=x_T,
            progress=progress,
            null_text=self._decoder_null_text(null_text),
        )
        check_finite("decoder", image)
        for i, stage in enumerate(self.upsamplers, start=1):
            image = sample_upsampler(
                stage.model,
                stage.diffusion,
                image,
                steps=settings.upsampler_steps,
                sampler=settings.sampler,
                eta=settings.eta,
                generator=generator,
                progress=progress,
                stage=f"upsampler_{i}",
                last_step_model=stage.last_step_model,
            )
            check_finite(f"upsampler_{i}", image)
        return image

    # ------------------------------------------------------------------ text to image

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        upsampler_steps: int | None = None,
        sampler: str | None = None,
        prior_guidance_scale: float | None = None,
        decoder_guidance_scale: float | None = None,
        best_of: int | None = None,
        eta: float | None = None,
        output_type: str = "pil",
        return_embeddings: bool = False,
        image_embeddings: Tensor | None = None,
        progress: ProgressFn | None = None,
    ):
        """Generate ``num_images_per_prompt`` images for each prompt.

        Prompts are batched; guidance costs one batched forward per step. Randomness is drawn from
        ``generator`` (or ``torch.Generator().manual_seed(seed)``) in stage order: prior (x_T, then step
        noises), decoder, upsamplers. ``image_embeddings`` [N, D] skips the prior.

        Returns:
            the images as ``output_type`` ("pil" list, "np" [N, H, W, 3], "pt" [N, 3, H, W], in [0, 1]),
            prompt-major (all images of prompt 0 first); with ``return_embeddings`` an :class:`UnCLIPOutput`.
        """
        prompts = check_prompts(prompt)
        n = _check_positive_int("num_images_per_prompt", num_images_per_prompt, bounds.MAX_IMAGES)
        settings = self._settings(
            sampler=sampler,
            prior_steps=prior_steps,
            decoder_steps=decoder_steps,
            upsampler_steps=upsampler_steps,
            prior_guidance_scale=prior_guidance_scale,
            decoder_guidance_scale=decoder_guidance_scale,
            best_of=best_of,
            eta=eta,
        )
        self.check_batch("num_images_per_prompt", len(prompts) * n, settings.best_of if image_embeddings is None else 0)
        generator = self._generator(generator, seed)
        self._warn_about_prompts(prompts)
        # each prompt encoded once, then repeated; the null caption encoded once per prompt (diffusers' batches,
        # so that the text features, and with them the images, match diffusers' bit for bit)
        unique = self.embed_prompts(prompts)
        index = torch.arange(len(prompts), device=unique.pooled.device).repeat_interleave(n)
        text = unique[index]
        null = self.clip.embed_text([""] * len(prompts))[index] if len(prompts) > 1 else None
        if image_embeddings is None:
            z_i = self.run_prior(text, settings, generator, progress, null_text=null)
        else:
            if image_embeddings.shape != (len(prompts) * n, self.clip.dim):
                raise ValueError(
                    f"image_embeddings must be [{len(prompts) * n}, {self.clip.dim}], "
                    f"got {tuple(image_embeddings.shape)}"
                )
            z_i = image_embeddings
        images = self.decode(z_i, text, settings, generator, progress=progress, null_text=null)
        out = tensor_to_output(images, output_type)
        if return_embeddings:
            return UnCLIPOutput(out, z_i.float().cpu(), text.pooled.float().cpu())
        return out

    # ------------------------------------------------------------------ manipulations

    def _base_images(self, images: Sequence[ImageInput]) -> Tensor:
        size = self.decoder.model.config.image_size
        return pil_to_tensor(list(images), size).to(self.device, self.dtype)

    def invert(
        self, image: ImageInput, steps: int | None = None, progress: ProgressFn | None = None
    ) -> tuple[Tensor, Tensor]:
        """An image -> (z_i [1, D], x_T [1, 3, S, S]) by CLIP and DDIM inversion of the decoder."""
        steps = _check_positive_int("inversion steps", steps or self.defaults.inversion_steps)
        z_i = self.embed_images([image])
        x_T = invert_decoder(
            self.decoder.model, self.decoder.diffusion, self._base_images([image]), z_i, steps=steps, progress=progress,
            null_text=self._decoder_null_text(),
        )  # fmt: skip
        return z_i, x_T

    def _ddim_settings(self, decoder_guidance_scale: float | None, steps: int | None) -> GenerationDefaults:
        return self._settings(
            decoder_guidance_scale=decoder_guidance_scale, decoder_steps=steps or self.defaults.inversion_steps
        )

    @torch.no_grad()
    def vary(
        self,
        image: ImageInput,
        num_images: int = 4,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        decoder_guidance_scale: float | None = None,
        decoder_steps: int | None = None,
        output_type: str = "pil",
        progress: ProgressFn | None = None,
    ):
        """Variations of ``image``: its z_i and DDIM-inverted x_T decoded with DDIM at ``eta`` > 0."""
        n = _check_positive_int("num_images", num_images, bounds.MAX_IMAGES)
        eta = _check_scale("eta", eta, bounds.MAX_ETA)
        self.check_batch("num_images", n)
        generator = self._generator(generator, seed)
        settings = self._ddim_settings(decoder_guidance_scale, decoder_steps)
        z_i, x_T = self.invert(image, settings.decoder_steps, progress)
        images = self.decode(
            z_i.repeat(n, 1), None, settings, generator, x_T=x_T.repeat(n, 1, 1, 1), eta=eta, sampler="ddim",
            progress=progress,
        )  # fmt: skip
        return tensor_to_output(images, output_type)

    @torch.no_grad()
    def interpolate(
        self,
        image_a: ImageInput,
        image_b: ImageInput,
        num_frames: int = 8,
        noise: str = "fixed",
        generator: torch.Generator | None = None,
        seed: int | None = None,
        decoder_guidance_scale: float | None = None,
        decoder_steps: int | None = None,
        output_type: str = "pil",
        progress: ProgressFn | None = None,
    ):
        """Frames decoded from slerp(z_a, z_b, θ), θ = 0..1, with DDIM (eta 0).

        ``noise="fixed"``: one random x_T shared by every frame; ``"slerp"``: x_T slerped between the two
        images' DDIM inversions (frames 0 and 1 then reconstruct the inputs).
        """
        frames = _check_positive_int("num_frames", num_frames)
        if not bounds.MIN_FRAMES <= frames <= bounds.MAX_FRAMES:
            raise ValueError(f"num_frames must be in [{bounds.MIN_FRAMES}, {bounds.MAX_FRAMES}], got {frames}")
        self.check_batch("num_frames", frames)
        if noise not in ("fixed", "slerp"):
            raise ValueError(f"noise must be 'fixed' or 'slerp', got {noise!r}")
        generator = self._generator(generator, seed)
        settings = self._ddim_settings(decoder_guidance_scale, decoder_steps)
        thetas = torch.linspace(0, 1, frames, dtype=torch.float64)
        if noise == "slerp":
            z_a, x_a = self.invert(image_a, settings.decoder_steps, progress)
            z_b, x_b = self.invert(image_b, settings.decoder_steps, progress)
            x_T = torch.cat([slerp(x_a.flatten(1), x_b.flatten(1), t).view_as(x_a) for t in thetas])
        else:
            z_a, z_b = self.embed_images([image_a]), self.embed_images([image_b])
            size = self.decoder.model.config.image_size
            device = generator.device if generator is not None else torch.device("cpu")
            x_T = torch.randn((1, 3, size, size), generator=generator, device=device, dtype=self.dtype)
            x_T = x_T.to(self.device).repeat(frames, 1, 1, 1)
        z = torch.cat([slerp(z_a, z_b, t) for t in thetas])
        images = self.decode(z, None, settings, generator, x_T=x_T, eta=0.0, sampler="ddim", progress=progress)
        return tensor_to_output(images, output_type)

    @torch.no_grad()
    def edit(
        self,
        image: ImageInput,
        to_text: str,
        from_text: str | None = None,
        thetas: Sequence[float] = (0.0, 0.25, 0.5),
        generator: torch.Generator | None = None,
        seed: int | None = None,
        decoder_guidance_scale: float | None = None,
        decoder_steps: int | None = None,
        output_type: str = "pil",
        progress: ProgressFn | None = None,
    ):
        """Text diffs (paper §3.3): z_d = normalise(z_t - z_t0); decode slerp(z_i, z_d, θ) for each θ.

        z_t0 encodes ``from_text`` (a caption of the image; "" when None). z_d is scaled to |z_i| so the
        slerp turns the direction only. x_T comes from DDIM inversion, so θ = 0 reconstructs the image.
        """
        to_text = check_prompts(to_text)[0]
        if from_text is not None and not isinstance(from_text, str):
            raise TypeError(f"from_text must be a string, got {type(from_text).__name__}")
        low, high = bounds.THETA_RANGE
        if isinstance(thetas, (str, bytes)) or not isinstance(thetas, Sequence):
            raise TypeError(f"thetas must be a list of numbers, got {thetas!r}")
        thetas = [bounds.check_range("theta", t, low, high) for t in thetas]
        if not 1 <= len(thetas) <= bounds.MAX_THETAS:
            raise ValueError(f"thetas must hold 1 to {bounds.MAX_THETAS} values, got {len(thetas)}")
        self.check_batch("thetas", len(thetas))
        self._warn_about_prompts([to_text, *([from_text] if from_text else [])])
        settings = self._ddim_settings(decoder_guidance_scale, decoder_steps)
        z_i, x_T = self.invert(image, settings.decoder_steps, progress)
        text = self.clip.embed_text([to_text, from_text or ""]).pooled.to(z_i)
        diff = text[0:1] - text[1:2]
        if float(diff.norm()) < 1e-6:
            raise ValueError(f"to_text {to_text!r} and from_text {from_text!r} have the same CLIP embedding")
        z_d = diff / diff.norm(dim=-1, keepdim=True) * z_i.norm(dim=-1, keepdim=True)
        z = torch.cat([slerp(z_i, z_d, t) for t in thetas])
        x = x_T.repeat(len(thetas), 1, 1, 1)
        generator = self._generator(generator, seed)  # only upsamplers draw noise; the decoder is DDIM, eta 0
        images = self.decode(z, None, settings, generator, x_T=x, eta=0.0, sampler="ddim", progress=progress)
        return tensor_to_output(images, output_type)
