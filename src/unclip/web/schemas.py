"""Request and response models of the HTTP API (the OpenAPI schema is generated from them).

Field names follow the Python API: ``prompt``, ``num_images_per_prompt``, ``seed``,
``prior_steps``, ``decoder_guidance_scale``, ``negative_prompt``, ``num_images``, ``num_frames``, ``to_text``,
``thetas``, ``items``, ``weights``, ``mask``, ``jump_length`` ...
A field left out (or null) takes the model's default. Unknown fields are refused (422 naming them), so a
typo never silently falls back to a default.

The module's request models carry the hard ceilings (:mod:`unclip.pipeline.bounds`);
:func:`request_models` derives the models of one server from its :class:`~unclip.web.config.RequestLimits`,
so its validation, its OpenAPI document and its ``/docs`` page show the limits it applies.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator, model_validator
from pydantic.fields import FieldInfo

from unclip.pipeline.inpainting import MAX_JUMP_N_SAMPLE
from unclip.pipeline.mixing import MAX_ITEMS as MAX_MIX_ITEMS
from unclip.pipeline.mixing import check_mix_weights
from unclip.samplers.registry import SAMPLER_NAMES
from unclip.web.config import (
    MAX_BEST_OF,
    MAX_ETA,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_STEPS,
    MAX_THETAS,
    MIN_FRAMES,
    THETA_RANGE,
    RequestLimits,
)

Sampler = Literal[SAMPLER_NAMES]  # type: ignore[valid-type]
JobKind = Literal["generate", "variations", "interpolate", "text-diff", "mix", "inpaint"]
JobStatus = Literal["queued", "running", "done", "error", "cancelled"]

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
Steps = Field(default=None, ge=1, le=MAX_STEPS, description="Sampling steps (default: the model's).")
Guidance = Field(default=None, ge=0.0, le=MAX_GUIDANCE, description="Classifier-free guidance scale.")
SeedField = Field(
    default=None, ge=0, le=MAX_SEED, description="Random seed, 0 to 2**64 - 1 (default: drawn by the server)."
)
Theta = Annotated[float, Field(ge=THETA_RANGE[0], le=THETA_RANGE[1])]


def _text(value: str, name: str) -> str:
    if not value.strip():
        raise ValueError(f"{name} is empty")
    return value


class ImageRef(BaseModel):
    """An input image: ``{"id": ...}`` (an earlier result or upload) or ``{"data": base64 PNG/JPEG/...}``."""

    model_config = _STRICT
    id: str | None = Field(default=None, max_length=64, description="Id of a stored image.")
    data: str | None = Field(default=None, description="The image file, base64 (a data: URL prefix is allowed).")

    @model_validator(mode="after")
    def _one_of(self) -> ImageRef:
        if (self.id is None) == (self.data is None):
            raise ValueError("give exactly one of 'id' and 'data'")
        return self


class DecoderOptions(BaseModel):
    """Options every image-to-image request shares."""

    model_config = _STRICT
    seed: int | None = SeedField
    decoder_steps: int | None = Steps
    decoder_guidance_scale: float | None = Guidance


class GenerateRequest(BaseModel):
    """Text to image: ``num_images_per_prompt`` images for ``prompt`` (``pipe(prompt, ...)``)."""

    model_config = _STRICT
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The caption.")
    num_images_per_prompt: int = Field(default=4, ge=1, le=MAX_IMAGES, description="Images to make.")
    seed: int | None = SeedField
    sampler: Sampler | None = Field(default=None, description="Sampler for every stage.")
    prior_steps: int | None = Steps
    decoder_steps: int | None = Steps
    upsampler_steps: int | None = Steps
    prior_guidance_scale: float | None = Guidance
    decoder_guidance_scale: float | None = Guidance
    best_of: int | None = Field(default=None, ge=1, le=MAX_BEST_OF, description="Prior candidates per image.")
    eta: float | None = Field(default=None, ge=0.0, le=MAX_ETA, description="DDIM eta.")
    negative_prompt: str | None = Field(
        default=None, max_length=MAX_PROMPT_CHARS,
        description="What to steer away from: replaces the empty caption in the guided stages' unconditional branch.",
    )  # fmt: skip

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _text(v, "prompt")


class VariationsRequest(DecoderOptions):
    """Variations of an image (``pipe.vary``): its CLIP embedding kept, the details resampled."""

    image: ImageRef
    num_images: int = Field(default=4, ge=1, le=MAX_IMAGES, description="Variations to make.")
    eta: float = Field(default=1.0, ge=0.0, le=MAX_ETA, description="DDIM eta (> 0 varies).")


class InterpolateRequest(DecoderOptions):
    """Frames between two images in CLIP image-embedding space (``pipe.interpolate``)."""

    image_a: ImageRef
    image_b: ImageRef
    num_frames: int = Field(default=8, ge=MIN_FRAMES, le=MAX_FRAMES, description="Frames, both ends included.")
    noise: Literal["fixed", "slerp"] = "fixed"


class TextDiffRequest(DecoderOptions):
    """Text diff (``pipe.edit``): move the image's embedding toward ``to_text`` (away from ``from_text``)."""

    image: ImageRef
    to_text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="Caption of the target.")
    from_text: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, description="Caption of the source.")
    thetas: list[Theta] = Field(
        default=[0.0, 0.25, 0.5], min_length=1, max_length=MAX_THETAS,
        description=f"Edit strengths, each in [{THETA_RANGE[0]:g}, {THETA_RANGE[1]:g}]; one image each.",
    )  # fmt: skip

    @field_validator("to_text")
    @classmethod
    def _to(cls, v: str) -> str:
        return _text(v, "to_text")


class MixItem(BaseModel):
    """One item of a mix: ``{"text": caption}`` or ``{"image": {"id": ...} | {"data": ...}}``."""

    model_config = _STRICT
    text: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS, description="A caption.")
    image: ImageRef | None = Field(default=None, description="An image (as the variations request's ``image``).")

    @model_validator(mode="after")
    def _one_of(self) -> MixItem:
        if (self.text is None) == (self.image is None):
            raise ValueError("give exactly one of 'text' and 'image'")
        if self.text is not None:
            _text(self.text, "text")
        return self


class MixRequest(BaseModel):
    """Images of a weighted mixture of captions and images in CLIP space (``pipe.mix(items, weights)``)."""

    model_config = _STRICT
    items: list[MixItem] = Field(
        max_length=MAX_MIX_ITEMS, json_schema_extra={"minItems": 1},
        description="Captions and images to mix (at least one).",
    )  # fmt: skip
    weights: list[float] | None = Field(
        default=None, max_length=MAX_MIX_ITEMS,
        description="One weight per item, summing to a positive number (default: equal weights).",
    )  # fmt: skip
    num_images: int = Field(default=4, ge=1, le=MAX_IMAGES, description="Images to make.")
    seed: int | None = SeedField
    prior_steps: int | None = Steps
    decoder_steps: int | None = Steps
    upsampler_steps: int | None = Steps
    decoder_guidance_scale: float | None = Guidance

    @field_validator("items")
    @classmethod
    def _items(cls, v: list[MixItem]) -> list[MixItem]:
        if not v:
            raise ValueError("mix needs at least one item (a caption or an image)")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        items = info.data.get("items")
        return v if v is None or items is None else check_mix_weights(v, len(items))


class InpaintRequest(BaseModel):
    """Repaint the white part of ``mask`` in ``image`` with what ``prompt`` describes (``pipe.inpaint``)."""

    model_config = _STRICT
    image: ImageRef
    mask: ImageRef = Field(
        description="Same size as the image; white (grey >= 0.5) = repaint, black = keep (alpha ignored)."
    )
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to paint in the masked part.")
    num_images: int = Field(default=4, ge=1, le=MAX_IMAGES, description="Images to make.")
    seed: int | None = SeedField
    jump_length: int | None = Field(
        default=None, ge=1, le=MAX_STEPS, description="RePaint: steps each jump goes back (< decoder_steps)."
    )
    jump_n_sample: int | None = Field(
        default=None, ge=1, le=MAX_JUMP_N_SAMPLE, description="RePaint: times each stretch is sampled (1: no jumps)."
    )
    context_candidates: int | None = Field(
        default=None, ge=1, le=MAX_BEST_OF, description="Prior samples per image; the one fitting the image is kept."
    )
    prior_steps: int | None = Steps
    decoder_steps: int | None = Steps
    upsampler_steps: int | None = Steps
    prior_guidance_scale: float | None = Guidance
    decoder_guidance_scale: float | None = Guidance

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str) -> str:
        return _text(v, "prompt")


class RequestModels(NamedTuple):
    """The request models of one server (subclasses of the module's, with its limits)."""

    generate: type[GenerateRequest]
    variations: type[VariationsRequest]
    interpolate: type[InterpolateRequest]
    text_diff: type[TextDiffRequest]
    mix: type[MixRequest]
    inpaint: type[InpaintRequest]


def _bounded(info: FieldInfo, **constraints: Any) -> FieldInfo:
    """``info`` (default, description) with other numeric or length constraints."""
    return Field(default=info.default, description=info.description, **constraints)


def _with_limits(base: type[BaseModel], limits: dict[str, dict[str, Any]]) -> type[BaseModel]:
    """A subclass of ``base`` (same name, so the OpenAPI document keeps it) whose fields have ``limits``."""
    fields = base.model_fields
    overrides = {name: (fields[name].annotation, _bounded(fields[name], **c)) for name, c in limits.items()}
    return create_model(base.__name__, __base__=base, __module__=base.__module__, __doc__=base.__doc__, **overrides)


def request_models(limits: RequestLimits) -> RequestModels:
    """The request models that apply ``limits`` (their schemas show them)."""
    steps = {"ge": 1, "le": limits.max_steps}
    decoder = {"decoder_steps": steps}
    return RequestModels(
        generate=_with_limits(GenerateRequest, {
            "num_images_per_prompt": {"ge": 1, "le": limits.max_images},
            "prior_steps": steps, "decoder_steps": steps, "upsampler_steps": steps,
        }),
        variations=_with_limits(VariationsRequest, {**decoder, "num_images": {"ge": 1, "le": limits.max_images}}),
        interpolate=_with_limits(InterpolateRequest, {
            **decoder, "num_frames": {"ge": limits.min_frames, "le": limits.max_frames},
        }),
        text_diff=_with_limits(TextDiffRequest, {
            **decoder, "thetas": {"min_length": 1, "max_length": limits.max_thetas},
        }),
        mix=_with_limits(MixRequest, {
            "num_images": {"ge": 1, "le": limits.max_images},
            "prior_steps": steps, "decoder_steps": steps, "upsampler_steps": steps,
        }),
        inpaint=_with_limits(InpaintRequest, {
            "num_images": {"ge": 1, "le": limits.max_images}, "jump_length": steps,
            "prior_steps": steps, "decoder_steps": steps, "upsampler_steps": steps,
        }),
    )  # fmt: skip


class ImageInfo(BaseModel):
    """A stored PNG: ``url`` serves it; ``params`` are also in its PNG text chunks."""

    id: str
    url: str
    download_url: str
    width: int
    height: int
    kind: str
    seed: int | None = None
    index: int = Field(description="Position in its request's batch (0-based).")
    params: dict[str, Any]
    created: float


class Progress(BaseModel):
    stage: str
    step: int
    total: int


class JobLinks(BaseModel):
    self: str
    events: str
    cancel: str


class JobInfo(BaseModel):
    """A job: queued (``position`` = 1 is next), running (``progress``), then done, error or cancelled."""

    id: str
    kind: JobKind
    status: JobStatus
    position: int | None = None
    progress: Progress | None = None
    params: dict[str, Any]
    images: list[ImageInfo] = []
    error: str | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    links: JobLinks


class QueueInfo(BaseModel):
    running: int
    waiting: int
    max_waiting: int


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    device: str
    queue: QueueInfo
    stored_images: int


class ServerLimits(BaseModel):
    """This server's limits (the request schemas apply the same ones)."""

    max_images: int
    max_frames: int
    max_thetas: int
    max_steps: int
    max_guidance: float
    max_eta: float
    max_best_of: int
    max_prompt_chars: int
    max_seed: int
    theta_range: tuple[float, float]
    max_body_bytes: int
    max_queue: int
    max_upload_side: int
    max_streams: int
    max_mix_items: int
    max_jump_n_sample: int


class ServerConfigInfo(BaseModel):
    """The model's defaults and the server's limits (what the page builds its controls from)."""

    model: str
    image_size: int
    samplers: list[str]
    sampler_min_steps: dict[str, int] = Field(description="Fewest steps per stage each sampler takes.")
    defaults: dict[str, Any]
    limits: ServerLimits
