"""Requests -> resolved parameters and the pipeline calls that run them (on the worker thread).

The request models already apply the server's limits (counts, step fields, ranges); what is checked here is
what they cannot judge alone: the model's defaults against the server's step limit, the sampler's needs.
Every parameter is resolved before the job is queued (the model's defaults filled in, a seed drawn when
none was given), so the job, its events and its PNGs all carry the exact values that made the images;
the same values on the command line (``unclip generate ... --seed S``) give the same pixels.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

from PIL import Image

from unclip.pipeline import inpainting
from unclip.pipeline.options import GenerationDefaults
from unclip.samplers.registry import sampler_spec
from unclip.web.jobs import ProgressFn, RunFn
from unclip.web.schemas import (
    GenerateRequest,
    InpaintRequest,
    InterpolateRequest,
    MixRequest,
    TextDiffRequest,
    VariationsRequest,
)

SEED_RANGE = 2**31  # seeds the server draws (any seed up to bounds.MAX_SEED = 2**64 - 1 may be given)
# GenerationDefaults fields a generate request may set (None: the model's default)
GENERATE_SETTINGS = (
    "sampler", "prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance_scale", "decoder_guidance_scale",
    "best_of", "eta",
)  # fmt: skip
# GenerationDefaults fields a mix request may set (as ``unclip mix``)
MIX_SETTINGS = ("prior_steps", "decoder_steps", "upsampler_steps", "decoder_guidance_scale")
# ... and an inpaint request (as ``unclip inpaint``)
INPAINT_SETTINGS = ("prior_steps", "decoder_steps", "upsampler_steps", "prior_guidance_scale", "decoder_guidance_scale")


class FieldError(ValueError):
    """A request value that the schema cannot judge alone (limits of this server, unknown image id ...)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = ("body", *loc)


def _seed(seed: int | None) -> int:
    return secrets.randbelow(SEED_RANGE) if seed is None else seed


def _check_steps(params: dict[str, Any], names: tuple[str, ...], max_steps: int) -> None:
    for name in names:
        if params[name] > max_steps:
            raise FieldError((name,), f"{name} = {params[name]} is above this server's limit of {max_steps}")
    if params.get("sampler") is not None:
        min_steps = sampler_spec(params["sampler"]).min_steps
        for name in names:
            if params[name] < min_steps:
                raise FieldError(
                    (name,), f"{name} must be >= {min_steps} with sampler {params['sampler']!r}, got {params[name]}"
                )


def _labelled(images: list[Image.Image], params: dict[str, Any], extra: list[dict[str, Any]] | None = None):
    return [(image, {**params, "index": i, **(extra[i] if extra else {})}) for i, image in enumerate(images)]


def generate_job(pipe, req: GenerateRequest, model: str, max_steps: int) -> tuple[dict, RunFn]:
    """Text to image: resolved parameters and the run function."""
    given = {name: getattr(req, name) for name in GENERATE_SETTINGS}
    resolved = replace(pipe.defaults, **{k: v for k, v in given.items() if v is not None})
    params = {
        "kind": "generate",
        "model": model,
        "prompt": req.prompt,
        "num_images_per_prompt": req.num_images_per_prompt,
        "seed": _seed(req.seed),
        **{name: getattr(resolved, name) for name in GENERATE_SETTINGS},
        "negative_prompt": req.negative_prompt,
    }
    _check_steps(params, ("prior_steps", "decoder_steps", "upsampler_steps"), max_steps)

    def run(progress: ProgressFn):
        images = pipe(
            params["prompt"],
            num_images_per_prompt=params["num_images_per_prompt"],
            seed=params["seed"],
            negative_prompt=params["negative_prompt"],
            progress=progress,
            **{name: params[name] for name in GENERATE_SETTINGS},
        )
        return _labelled(images, params)

    return params, run


def _decoder_params(pipe, req, kind: str, model: str, max_steps: int) -> dict[str, Any]:
    d: GenerationDefaults = pipe.defaults
    params = {
        "kind": kind,
        "model": model,
        "seed": _seed(req.seed),
        # image-to-image runs decode with DDIM; its step count defaults to the inversion's (pipe._ddim_settings)
        "decoder_steps": req.decoder_steps or d.inversion_steps,
        "decoder_guidance_scale": (
            d.decoder_guidance_scale if req.decoder_guidance_scale is None else req.decoder_guidance_scale
        ),
    }
    _check_steps(params, ("decoder_steps",), max_steps)
    return params


def variations_job(
    pipe, req: VariationsRequest, image: Image.Image, source: dict, model: str, max_steps: int
) -> tuple[dict, RunFn]:
    """Variations of ``image`` (``source`` describes it: {"image_id": ...} or {"image": "upload"})."""
    params = {**_decoder_params(pipe, req, "variations", model, max_steps), **source}
    params.update(num_images=req.num_images, eta=req.eta)

    def run(progress: ProgressFn):
        images = pipe.vary(
            image, num_images=params["num_images"], eta=params["eta"], seed=params["seed"],
            decoder_steps=params["decoder_steps"], decoder_guidance_scale=params["decoder_guidance_scale"],
            progress=progress,
        )  # fmt: skip
        return _labelled(images, params)

    return params, run


def interpolate_job(
    pipe, req: InterpolateRequest, images: tuple[Image.Image, Image.Image], sources: dict, model: str, max_steps: int
) -> tuple[dict, RunFn]:
    """Frames between two images; each frame's PNG records its θ = index / (num_frames - 1)."""
    params = {**_decoder_params(pipe, req, "interpolate", model, max_steps), **sources}
    params.update(num_frames=req.num_frames, noise=req.noise)
    frames = req.num_frames

    def run(progress: ProgressFn):
        out = pipe.interpolate(
            images[0], images[1], num_frames=frames, noise=params["noise"], seed=params["seed"],
            decoder_steps=params["decoder_steps"], decoder_guidance_scale=params["decoder_guidance_scale"],
            progress=progress,
        )  # fmt: skip
        return _labelled(out, params, [{"theta": i / (frames - 1)} for i in range(frames)])

    return params, run


def text_diff_job(
    pipe, req: TextDiffRequest, image: Image.Image, source: dict, model: str, max_steps: int
) -> tuple[dict, RunFn]:
    """Text diff of ``image`` for each θ in ``req.thetas`` (each frame's PNG records its θ)."""
    params = {**_decoder_params(pipe, req, "text-diff", model, max_steps), **source}
    params.update(to_text=req.to_text, from_text=req.from_text, thetas=list(req.thetas))

    def run(progress: ProgressFn):
        out = pipe.edit(
            image, to_text=params["to_text"], from_text=params["from_text"], thetas=params["thetas"],
            seed=params["seed"], decoder_steps=params["decoder_steps"],
            decoder_guidance_scale=params["decoder_guidance_scale"], progress=progress,
        )  # fmt: skip
        return _labelled(out, params, [{"theta": t} for t in params["thetas"]])

    return params, run


def _resolved(pipe, req, names: tuple[str, ...]) -> dict[str, Any]:
    """``names`` of ``req``, each left out (None) taking the model's default."""
    given = {name: getattr(req, name) for name in names}
    resolved = replace(pipe.defaults, **{k: v for k, v in given.items() if v is not None})
    return {name: getattr(resolved, name) for name in names}


def mix_job(
    pipe, req: MixRequest, items: list[str | Image.Image], sources: list[Any], model: str, max_steps: int
) -> tuple[dict, RunFn]:
    """A mix of ``items`` (captions and resolved images); ``sources[i]`` is item i as its PNG records it: the
    caption, {"image_id": ...} or {"image_id": None} (sent as data)."""
    params = {
        "kind": "mix",
        "model": model,
        "items": sources,
        "weights": None if req.weights is None else list(req.weights),
        "num_images": req.num_images,
        "seed": _seed(req.seed),
        "sampler": pipe.defaults.sampler,  # what the pipeline's mix samples with (not a request field)
        **_resolved(pipe, req, MIX_SETTINGS),
    }
    _check_steps(params, ("prior_steps", "decoder_steps", "upsampler_steps"), max_steps)

    def run(progress: ProgressFn):
        images = pipe.mix(
            items, weights=params["weights"], num_images=params["num_images"], seed=params["seed"], progress=progress,
            **{name: params[name] for name in MIX_SETTINGS},
        )  # fmt: skip
        return _labelled(images, params)

    return params, run


def check_inpaint_inputs(image: Image.Image, mask: Image.Image) -> None:
    """The checks ``pipe.inpaint`` makes of an image and its mask (same size, something to repaint), as a
    :class:`FieldError` on ``mask``: run before the job is queued, so a bad mask is a 422, not a failed job."""
    try:
        inpainting.load_inpaint_inputs(image, mask)
    except (ValueError, TypeError) as err:
        raise FieldError(("mask",), str(err)) from None


def inpaint_job(
    pipe, req: InpaintRequest, image: Image.Image, mask: Image.Image, sources: dict, model: str, max_steps: int
) -> tuple[dict, RunFn]:
    """Inpainting of ``image`` where ``mask`` is white (both checked by :func:`check_inpaint_inputs`)."""
    params = {
        "kind": "inpaint",
        "model": model,
        "prompt": req.prompt,
        "num_images": req.num_images,
        "seed": _seed(req.seed),
        **_resolved(pipe, req, INPAINT_SETTINGS),
        "context_candidates": req.context_candidates or inpainting.CONTEXT_CANDIDATES,
        **sources,
    }
    # the prior samples with the pipeline's sampler, the decoder and upsamplers with RePaint's DDPM steps
    _check_steps({**params, "sampler": pipe.defaults.sampler}, ("prior_steps",), max_steps)
    _check_steps(params, ("decoder_steps", "upsampler_steps"), max_steps)
    try:
        options = inpainting.repaint_options(req.jump_length, req.jump_n_sample, params["decoder_steps"])
    except ValueError as err:
        raise FieldError(("jump_length",), str(err)) from None
    params.update(jump_length=options.jump_length, jump_n_sample=options.jump_n_sample)

    def run(progress: ProgressFn):
        images = pipe.inpaint(
            image, mask, params["prompt"], num_images=params["num_images"], seed=params["seed"],
            jump_length=params["jump_length"], jump_n_sample=params["jump_n_sample"],
            context_candidates=params["context_candidates"], progress=progress,
            **{name: params[name] for name in INPAINT_SETTINGS},
        )  # fmt: skip
        return _labelled(images, params)

    return params, run
