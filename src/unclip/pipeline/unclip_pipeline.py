"""``UnCLIPPipeline``: text -> CLIP -> prior -> z_i -> decoder -> upsamplers, and the manipulations of
the same latent space (variations, interpolations, text diffs).

The prior is any :class:`~unclip.pipeline.priors.Prior` (diffusion or autoregressive); loading and saving live
in :mod:`unclip.pipeline.serialization` (the directory layout is described there).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.images import ImageInput, load_image, pil_to_tensor, slerp, tensor_to_output
from unclip.limits import check_count, check_memory
from unclip.pipeline import bounds
from unclip.pipeline.formats import exporter
from unclip.pipeline.options import (  # noqa: F401 - re-exported
    BUILTIN_MODELS,
    DECODER_UNCOND,
    DIFFUSION_FILE,
    FORMAT,
    INDEX_FILE,
    MEAN_COLOUR_SETTINGS,
    GenerationDefaults,
    PromptWarning,
    Stage,
    UnCLIPOutput,
    _check_positive_int,
    _check_scale,
    builtin_model_dir,
    check_finite,
    check_negative_prompts,
    check_prompts,
    model_dir,
    prior_bytes_per_sample,
    unet_bytes_per_sample,
)
from unclip.pipeline.priors import ARPriorStage, DiffusionPriorStage, Prior, as_prior  # noqa: F401 - re-exported
from unclip.pipeline.progress import check_progress_config, progress_for
from unclip.precision import PRECISIONS
from unclip.samplers import ProgressFn
from unclip.samplers.registry import sampler_spec
from unclip.stages.decoding import invert_decoder, sample_decoder, sample_upsampler


class UnCLIPPipeline:
    """The full unCLIP system. Build with :meth:`from_pretrained` or from parts.

    Args:
        clip: a frozen :class:`ClipEncoder`.
        prior: a :class:`~unclip.pipeline.priors.Prior`; a :class:`Stage` (a ``DiffusionPrior`` with its
            DiffusionConfig) or an ``ARPrior`` network, wrapped into one; or None (an image-variation pipeline:
            text-to-image then needs ``image_embeddings``).
        decoder: the decoder stage.
        upsamplers: upsampler stages, applied in order.
        defaults: default sampling settings.
        decoder_uncond: the decoder's unconditional caption, one of :data:`DECODER_UNCOND` ("masked": ours;
            "empty_text": Karlo's and diffusers', set by the importers in :mod:`unclip.interop`).
    """

    def __init__(
        self,
        clip: ClipEncoder,
        prior: Prior | Stage | nn.Module | None,
        decoder: Stage,
        upsamplers: Sequence[Stage] = (),
        defaults: GenerationDefaults | None = None,
        decoder_uncond: str = "masked",
    ) -> None:
        if decoder_uncond not in DECODER_UNCOND:
            raise ValueError(f"decoder_uncond must be one of {DECODER_UNCOND}, got {decoder_uncond!r}")
        self.clip = clip
        self.prior: Prior | None = as_prior(prior)
        self.decoder = decoder
        self.upsamplers = list(upsamplers)
        self.defaults = defaults or GenerationDefaults()
        self.decoder_uncond = decoder_uncond
        self._null_text: TextEmbedding | None = None
        self._progress_config: dict[str, Any] = {}
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
        ups = [m for u in self.upsamplers for m in (u.model, u.last_step_model) if m is not None]
        return ([self.prior.module] if self.prior is not None else []) + [self.decoder.model, *ups]

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
        revision: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> UnCLIPPipeline:
        """Load a pipeline: a built-in name (``"shapes"``), a directory (ours, or a registered format's such as
        diffusers' UnCLIP layout or Karlo's files) or a hub id ``"org/name"`` (at ``revision``, through the Hugging
        Face cache ``cache_dir``); see :func:`unclip.pipeline.serialization.load_pipeline`."""
        from unclip.pipeline.serialization import load_pipeline

        return load_pipeline(path, device=device, dtype=dtype, revision=revision, cache_dir=cache_dir)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write the pipeline in our layout; weights cast to ``dtype`` if given (e.g. fp16); see
        :func:`unclip.pipeline.serialization.save_pipeline`."""
        from unclip.pipeline.serialization import save_pipeline

        return save_pipeline(self, path, dtype=dtype)

    def export(self, format_name: str, path: str | Path, dtype: torch.dtype | None = None, **options: Any) -> Path:
        """Write the pipeline in a registered format (:mod:`unclip.pipeline.formats`; ``"diffusers"``,
        ``"diffusers-variation"`` once :mod:`unclip.interop` is imported, as ``import unclip`` does)."""
        return exporter(format_name)(self, path, dtype=dtype, **options)

    def export_diffusers(self, path: str | Path, dtype: torch.dtype | None = None) -> Path:
        """Write diffusers' ``UnCLIPPipeline`` layout (see :func:`unclip.interop.diffusers_export.export_diffusers`)."""
        return self.export("diffusers", path, dtype=dtype)

    # ------------------------------------------------------------------ settings

    def set_progress_bar_config(self, **config: Any) -> None:
        """Configure the Python API's progress bars (one tqdm bar per stage, on by default):
        ``disable=True`` silences them; other keywords (``leave``, ``file``, ...) go to tqdm."""
        self._progress_config = check_progress_config(config)

    def _progress(self, given: ProgressFn | None) -> ProgressFn | None:
        """A call's progress function: the caller's, else the configured bars."""
        return progress_for(self._progress_config, given)

    def _settings(self, **overrides: Any) -> GenerationDefaults:
        """Defaults with the non-None overrides applied, validated."""
        s = replace(self.defaults, **{k: v for k, v in overrides.items() if v is not None})
        spec = sampler_spec(s.sampler)
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
            elif f.name in MEAN_COLOUR_SETTINGS:
                if not isinstance(value, bool):
                    raise ValueError(f"{f.name} must be true or false, got {value!r}")
            elif f.name == "precision":
                if value not in PRECISIONS:
                    raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
            elif f.name != "sampler":
                _check_scale(f.name, value)
        for name in ("prior_steps", "decoder_steps", "upsampler_steps"):
            if getattr(s, name) < spec.min_steps:
                raise ValueError(
                    f"{name} must be >= {spec.min_steps} with sampler {s.sampler!r}, got {getattr(s, name)}"
                )
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
        per_image = sum(
            unet_bytes_per_sample(stage.model, guided=stage is self.decoder)
            for stage in [self.decoder, *self.upsamplers]
        )
        if self.prior is not None:
            per_image += best_of * prior_bytes_per_sample(self.prior.module, self.clip.max_text_length)
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
        return check_finite("prior", self.prior.sample(text, null_text, settings, generator, progress))

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
        negative: TextEmbedding | None = None,
    ) -> Tensor:
        """z_i [B, D] (+ captions) -> final images [B, 3, S, S] in [-1, 1] through the decoder and upsamplers.

        ``null_text`` overrides the cached "" encoding of ``decoder_uncond="empty_text"`` (batch 1 or B);
        ``negative`` (encoded negative prompts, batch 1 or B) is the unconditional branch's caption instead."""
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
            null_text=negative if negative is not None else self._decoder_null_text(null_text),
            guidance_keep_mean=settings.decoder_guidance_keep_mean,
            zero_mean_noise=settings.decoder_zero_mean_noise,
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
                keep_mean=settings.upsampler_keep_mean,
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
        negative_prompt: str | Sequence[str] | None = None,
    ) -> UnCLIPOutput:
        """Generate ``num_images_per_prompt`` images for each prompt.

        Prompts are batched; guidance costs one batched forward per step. Randomness is drawn from
        ``generator`` (or ``torch.Generator().manual_seed(seed)``) in stage order: prior (x_T, then step
        noises), decoder, upsamplers. ``image_embeddings`` [N, D] skips the prior. ``negative_prompt`` (one for all
        prompts, or one per prompt) is the caption of the unconditional branch of the prior and the decoder in
        place of the null text, so guidance steers away from it (it acts only where the guidance scale is not 1).

        Returns:
            an :class:`UnCLIPOutput`: ``.images`` as ``output_type`` ("pil" list, "np" [N, H, W, 3], "pt"
            [N, 3, H, W], in [0, 1]), prompt-major (all images of prompt 0 first); with ``return_embeddings`` also
            the z_i and z_t.
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
        negatives = check_negative_prompts(negative_prompt, len(prompts))
        if negatives and settings.prior_guidance_scale == 1 and settings.decoder_guidance_scale == 1:
            warnings.warn("negative_prompt has no effect with both guidance scales at 1", PromptWarning, stacklevel=2)
        generator = self._generator(generator, seed)
        progress = self._progress(progress)
        self._warn_about_prompts(prompts + (negatives or []))
        # each prompt encoded once, then repeated; the null caption encoded once per prompt (diffusers' batches,
        # so that the text features, and with them the images, match diffusers' bit for bit)
        unique = self.embed_prompts(prompts)
        index = torch.arange(len(prompts), device=unique.pooled.device).repeat_interleave(n)
        text = unique[index]
        null = self.clip.embed_text([""] * len(prompts))[index] if len(prompts) > 1 else None
        negative = self.clip.embed_text(negatives)[index] if negatives else None
        if negative is not None:
            null = negative
        if image_embeddings is None:
            z_i = self.run_prior(text, settings, generator, progress, null_text=null)
        else:
            if image_embeddings.shape != (len(prompts) * n, self.clip.dim):
                raise ValueError(
                    f"image_embeddings must be [{len(prompts) * n}, {self.clip.dim}], "
                    f"got {tuple(image_embeddings.shape)}"
                )
            z_i = image_embeddings
        images = self.decode(z_i, text, settings, generator, progress=progress, null_text=null, negative=negative)
        out = tensor_to_output(images, output_type)
        if return_embeddings:
            return UnCLIPOutput(out, z_i.float().cpu(), text.pooled.float().cpu())
        return UnCLIPOutput(out)

    # ------------------------------------------------------------------ manipulations

    def _base_images(self, images: Sequence[ImageInput]) -> Tensor:
        size = self.decoder.model.config.image_size
        return pil_to_tensor(list(images), size).to(self.device, self.dtype)

    @staticmethod
    def _image_list(image: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        """One image (PIL or path) or a list/tuple of them -> a non-empty list."""
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("give at least one image")
        return images

    def invert(
        self, image: ImageInput | Sequence[ImageInput], steps: int | None = None, progress: ProgressFn | None = None
    ) -> tuple[Tensor, Tensor]:
        """An image, or a list of B images -> (z_i [B, D], x_T [B, 3, S, S]) by CLIP and DDIM inversion of the
        decoder (the images in one batch)."""
        images = self._image_list(image)
        steps = _check_positive_int("inversion steps", steps or self.defaults.inversion_steps)
        z_i = self.embed_images(images)
        x_T = invert_decoder(
            self.decoder.model, self.decoder.diffusion, self._base_images(images), z_i, steps=steps, progress=progress,
            null_text=self._decoder_null_text(),
        )  # fmt: skip
        return z_i, x_T

    def _ddim_settings(self, decoder_guidance_scale: float | None, steps: int | None) -> GenerationDefaults:
        return self._settings(
            decoder_guidance_scale=decoder_guidance_scale, decoder_steps=steps or self.defaults.inversion_steps
        )

    def sample_variations(
        self,
        images: Sequence[ImageInput],
        num_images: int,
        eta: float,
        settings: GenerationDefaults,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """What :meth:`vary` decodes: [len(images) * num_images, 3, S, S] in [-1, 1], image-major. Each image's z_i
        and DDIM-inverted x_T (``settings.decoder_steps`` steps) decoded with DDIM at ``eta``, all in one batch."""
        z_i, x_T = self.invert(images, settings.decoder_steps, progress)
        z, x = z_i.repeat_interleave(num_images, 0), x_T.repeat_interleave(num_images, 0)
        return self.decode(z, None, settings, generator, x_T=x, eta=eta, sampler="ddim", progress=progress)

    @torch.no_grad()
    def vary(
        self,
        image: ImageInput | Sequence[ImageInput],
        num_images: int = 4,
        eta: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        decoder_guidance_scale: float | None = None,
        decoder_steps: int | None = None,
        output_type: str = "pil",
        progress: ProgressFn | None = None,
    ):
        """Variations of ``image``: its z_i and DDIM-inverted x_T decoded with DDIM at ``eta`` > 0.

        A list of images is one batch through the decoder: ``num_images`` per image, image-major. Its noise is
        drawn for the whole batch, so with ``eta`` > 0 (or noisy upsamplers) an image's variations in a batch
        are other draws than the same seed gives that image alone; with deterministic sampling they are equal.
        """
        images = self._image_list(image)
        n = _check_positive_int("num_images", num_images, bounds.MAX_IMAGES)
        eta = _check_scale("eta", eta, bounds.MAX_ETA)
        self.check_batch("num_images", len(images) * n)
        generator = self._generator(generator, seed)
        settings = self._ddim_settings(decoder_guidance_scale, decoder_steps)
        out = self.sample_variations(images, n, eta, settings, generator, self._progress(progress))
        return UnCLIPOutput(tensor_to_output(out, output_type))

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
        progress = self._progress(progress)
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
        return UnCLIPOutput(tensor_to_output(images, output_type))

    def text_diff_embeddings(
        self, z_i: Tensor, to_texts: Sequence[str], from_texts: Sequence[str], thetas: Sequence[float]
    ) -> Tensor:
        """Text diffs (paper §3.3) of B image embeddings: z_d = normalise(z_t - z_t0) scaled to |z_i|, then
        slerp(z_i, z_d, θ) -> [B * len(thetas), D], image-major (``to_texts``/``from_texts``: one per row)."""
        b = z_i.shape[0]
        text = self.clip.embed_text([*to_texts, *from_texts]).pooled.to(z_i)
        diff = text[:b] - text[b:]
        norm = diff.norm(dim=-1, keepdim=True)
        for to_text, from_text, value in zip(to_texts, from_texts, norm[:, 0].tolist()):
            if value < 1e-6:
                raise ValueError(f"to_text {to_text!r} and from_text {from_text!r} have the same CLIP embedding")
        z_d = diff / norm * z_i.norm(dim=-1, keepdim=True)
        return torch.stack([slerp(z_i, z_d, t) for t in thetas], dim=1).reshape(b * len(thetas), -1)

    def sample_edits(
        self,
        images: Sequence[ImageInput],
        to_texts: Sequence[str],
        from_texts: Sequence[str],
        thetas: Sequence[float],
        settings: GenerationDefaults,
        generator: torch.Generator | None = None,
        progress: ProgressFn | None = None,
    ) -> Tensor:
        """What :meth:`edit` decodes: [len(images) * len(thetas), 3, S, S] in [-1, 1], image-major. Each image's
        :meth:`text_diff_embeddings` decoded with DDIM (eta 0) from its DDIM-inverted x_T, all in one batch."""
        z_i, x_T = self.invert(images, settings.decoder_steps, progress)
        z = self.text_diff_embeddings(z_i, to_texts, from_texts, thetas)
        x = x_T.repeat_interleave(len(thetas), 0)
        return self.decode(z, None, settings, generator, x_T=x, eta=0.0, sampler="ddim", progress=progress)

    @staticmethod
    def _per_image(name: str, texts: str | Sequence[str | None] | None, count: int) -> list[str | None]:
        """One caption for every image, or a list of one per image."""
        listed = [texts] * count if texts is None or isinstance(texts, str) else texts
        if not isinstance(listed, (list, tuple)) or len(listed) != count:
            raise ValueError(f"{name} must be a string or a list of {count} strings (one per image), got {texts!r}")
        return list(listed)

    @torch.no_grad()
    def edit(
        self,
        image: ImageInput | Sequence[ImageInput],
        to_text: str | Sequence[str],
        from_text: str | Sequence[str | None] | None = None,
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
        A list of images is one batch through the decoder (``to_text``/``from_text``: one caption for all, or
        a list of one per image); the results are image-major, ``len(thetas)`` per image.
        """
        images = self._image_list(image)
        to_texts = [check_prompts(t)[0] for t in self._per_image("to_text", to_text, len(images))]
        from_texts = self._per_image("from_text", from_text, len(images))
        for t in from_texts:
            if t is not None and not isinstance(t, str):
                raise TypeError(f"from_text must be a string, got {type(t).__name__}")
        low, high = bounds.THETA_RANGE
        if isinstance(thetas, (str, bytes)) or not isinstance(thetas, Sequence):
            raise TypeError(f"thetas must be a list of numbers, got {thetas!r}")
        thetas = [bounds.check_range("theta", t, low, high) for t in thetas]
        if not 1 <= len(thetas) <= bounds.MAX_THETAS:
            raise ValueError(f"thetas must hold 1 to {bounds.MAX_THETAS} values, got {len(thetas)}")
        self.check_batch("thetas", len(images) * len(thetas))
        self._warn_about_prompts([*to_texts, *(t for t in from_texts if t)])
        settings = self._ddim_settings(decoder_guidance_scale, decoder_steps)
        generator = self._generator(generator, seed)  # only upsamplers draw noise; the decoder is DDIM, eta 0
        from_texts = [t or "" for t in from_texts]
        out = self.sample_edits(images, to_texts, from_texts, thetas, settings, generator, self._progress(progress))
        return UnCLIPOutput(tensor_to_output(out, output_type))

    # ------------------------------------------------------------------ mixing and inpainting

    @torch.no_grad()
    def mix(self, items: Sequence[Any], weights: Sequence[float] | None = None, num_images: int = 1, **options: Any):
        """Images of a weighted mixture of captions (``str``) and images (PIL or ``pathlib.Path``) in CLIP space;
        options as :func:`unclip.pipeline.mixing.mix` (seed, steps, guidance, output_type, return_embeddings)."""
        from unclip.pipeline.mixing import mix

        return mix(self, items, weights, num_images, **options)

    @torch.no_grad()
    def inpaint(self, image: ImageInput, mask: Any, prompt: str, num_images: int = 1, **options: Any):
        """Repaint the white part of ``mask`` in ``image`` as ``prompt`` says, keeping every other pixel;
        options as :func:`unclip.pipeline.inpainting.inpaint` (seed, RePaint jumps, steps, guidance, output_type)."""
        from unclip.pipeline.inpainting import inpaint

        return inpaint(self, image, mask, prompt, num_images, **options)
