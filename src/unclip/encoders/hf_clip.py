"""transformers' CLIP (e.g. OpenAI ViT-L/14, as Karlo uses it) behind the :class:`ClipEncoder` interface.

Text: ``CLIPTokenizer`` padded to ``max_length`` (77 for OpenAI CLIP) with truncation (the end token is
kept), then ``CLIPTextModelWithProjection``: pooled = ``text_embeds`` (the projected end-token state, not
normalised), tokens = ``last_hidden_state`` (after the final LayerNorm), mask = the tokenizer's attention
mask. Images: ``CLIPVisionModelWithProjection`` -> ``image_embeds``, after a torch re-implementation of
``CLIPImageProcessor``: bicubic (antialiased) resize to ``image_size`` and CLIP mean/std normalisation;
with ``center_crop=False`` (Karlo) the image is resized straight to a square, with ``center_crop=True``
(diffusers' feature extractor) the shortest side is resized and the centre cropped.

Accepted directory layouts:
- diffusers' UnCLIP: ``text_encoder/``, ``tokenizer/`` and optionally ``image_encoder/``,
  ``feature_extractor/`` (the text-to-image pipeline has no image encoder);
- one transformers ``CLIPModel`` folder (``config.json`` with ``model_type: clip``, weights, tokenizer
  files, optionally ``preprocessor_config.json``).

``transformers`` is an optional dependency (``pip install 'unclip[hf]'``): it is imported only here,
inside functions.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from unclip.encoders.base import TextEmbedding
from unclip.encoders.own_clip import check_images, check_texts, pil_to_tensor
from unclip.encoders.tokenizer import truncation_warning

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_MAX_SANE_LENGTH = 100_000  # tokenizers without a model_max_length report ~1e30


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "HFClipEncoder needs the optional dependency 'transformers' (pip install 'unclip[hf]')"
        ) from err
    return transformers


def clip_image_preprocess(
    images: torch.Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    center_crop: bool = False,
) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, size, size] CLIP pixel values (float32).

    ``center_crop=False`` resizes straight to size × size (Karlo); ``True`` resizes the shortest side to
    ``size`` and crops the centre (``CLIPImageProcessor``). Resizing is bicubic with antialiasing.
    """
    check_images(images)
    x = ((images.float() + 1) / 2).clamp(0, 1)
    H, W = x.shape[-2:]
    if center_crop:
        scale = size / min(H, W)
        h, w = max(size, round(H * scale)), max(size, round(W * scale))
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (h - size) // 2, (w - size) // 2
        x = x[..., top : top + size, left : left + size]
    elif (H, W) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    x = x.clamp(0, 1)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def is_hf_clip_dir(directory: str | Path) -> bool:
    """True for diffusers' UnCLIP layout (``text_encoder/``) or a transformers CLIP folder."""
    directory = Path(directory)
    if (directory / "text_encoder" / "config.json").is_file():
        return True
    config = directory / "config.json"
    if not config.is_file():
        return False
    try:
        data = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and str(data.get("model_type", "")).startswith("clip")


def _load_weights(model_cls: Any, directory: Path, kwargs: dict[str, Any]) -> Any:
    """``model_cls.from_pretrained(directory)``, with a one-line error for weights that need full unpickling
    (transformers loads ``pytorch_model.bin`` with ``weights_only=True``, as unclip loads everything)."""
    try:
        return model_cls.from_pretrained(str(directory), **kwargs)
    except pickle.UnpicklingError as err:
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), "")
        raise ValueError(
            f"the CLIP weights in {directory} need full unpickling, which can run code from the file; unclip loads "
            "only safetensors and weights-only files. Re-save them as safetensors where you trust the file "
            f"(transformers: model.save_pretrained(dir)). {detail}".strip()
        ) from None


class HFClipEncoder:
    """:class:`ClipEncoder` over transformers' CLIP towers.

    Args:
        text_model: a ``CLIPTextModelWithProjection``.
        tokenizer: a ``CLIPTokenizer`` (or any tokenizer returning ``input_ids`` and ``attention_mask``).
        vision_model: a ``CLIPVisionModelWithProjection``, or None (then :meth:`embed_images` raises).
        max_length: L, the padded text length (default: the tokenizer's ``model_max_length``, else the
            text model's ``max_position_embeddings``).
        image_mean, image_std: per-channel normalisation of [0, 1] pixels.
        center_crop: see :func:`clip_image_preprocess` (False = Karlo).
        batch_size: largest batch run through a tower at once.
    """

    def __init__(
        self,
        text_model: Any,
        tokenizer: Any,
        vision_model: Any | None = None,
        max_length: int | None = None,
        image_mean: Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: Sequence[float] = OPENAI_CLIP_STD,
        center_crop: bool = False,
        batch_size: int = 64,
    ):
        self.text_model = text_model.eval().requires_grad_(False)
        self.vision_model = vision_model.eval().requires_grad_(False) if vision_model is not None else None
        self.tokenizer = tokenizer
        positions = int(text_model.config.max_position_embeddings)
        if max_length is None:
            max_length = int(getattr(tokenizer, "model_max_length", positions) or positions)
            if max_length > _MAX_SANE_LENGTH:
                max_length = positions
        if not 2 <= max_length <= positions:
            raise ValueError(f"max_length {max_length} must be in [2, {positions}] (the text model's positions)")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"image_mean/image_std must be 3 values (std > 0), got {image_mean} / {image_std}")
        self._max_length = max_length
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.center_crop = bool(center_crop)
        self.batch_size = batch_size

    # ------------------------------------------------------------------ properties

    def text_warnings(self, text: str) -> list[str]:
        """The tokens cut by truncation to ``max_text_length`` (BPE knows every word)."""
        ids = list(self.tokenizer(text, truncation=False)["input_ids"])
        if len(ids) <= self._max_length:
            return []
        dropped = self.tokenizer.decode(ids[self._max_length - 1 : -1], skip_special_tokens=True)
        return [truncation_warning(self._max_length, dropped)]

    @property
    def dim(self) -> int:
        return int(self.text_model.config.projection_dim)

    @property
    def token_width(self) -> int:
        return int(self.text_model.config.hidden_size)

    @property
    def max_text_length(self) -> int:
        return self._max_length

    @property
    def image_size(self) -> int:
        if self.vision_model is None:
            raise ValueError("this CLIP has no image encoder (text-only layout)")
        return int(self.vision_model.config.image_size)

    @property
    def device(self) -> torch.device:
        return self.text_model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.text_model.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> HFClipEncoder:
        """Move both towers in place; returns ``self``."""
        self.text_model.to(device=device, dtype=dtype)
        if self.vision_model is not None:
            self.vision_model.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ ClipEncoder

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (input_ids [B, L], mask [B, L] bool), padded to ``max_text_length``."""
        enc = self.tokenizer(
            check_texts(texts), padding="max_length", max_length=self._max_length, truncation=True, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device).bool()

    @torch.no_grad()
    def embed_text(self, texts: str | Sequence[str]) -> TextEmbedding:
        """B captions -> TextEmbedding(text_embeds [B, D], last_hidden_state [B, L, W], mask [B, L])."""
        ids, mask = self.tokenize(texts)
        parts = []
        for s in range(0, ids.shape[0], self.batch_size):
            i, m = ids[s : s + self.batch_size], mask[s : s + self.batch_size]
            out = self.text_model(input_ids=i, attention_mask=m.long())
            parts.append(TextEmbedding(out.text_embeds, out.last_hidden_state, m))
        return TextEmbedding.cat(parts)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> CLIP pixel values [B, 3, S, S] on the encoder's device and dtype."""
        pixels = clip_image_preprocess(
            check_images(images).to(self.device), self.image_size, self.image_mean, self.image_std, self.center_crop
        )
        return pixels.to(self.dtype)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, D] ``image_embeds`` (not normalised)."""
        check_images(images)
        if self.vision_model is None:
            raise ValueError("this CLIP has no image encoder (text-only layout): cannot embed images")
        out = [
            self.vision_model(pixel_values=self.preprocess(images[s : s + self.batch_size])).image_embeds
            for s in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(out)

    def preprocess_pil(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL images -> [B, 3, S, S] float32 in [-1, 1] for :meth:`embed_images`, with the encoder's crop
        policy: squashed to a square (``center_crop=False``), or shortest side resized then centre-cropped."""
        if isinstance(images, Image.Image):
            images = [images]
        size = self.image_size
        if not self.center_crop:
            return pil_to_tensor(images, size)
        out = []
        for im in images:
            if not isinstance(im, Image.Image):
                raise TypeError(f"expected PIL images, got {type(im).__name__}")
            w, h = im.size
            scale = size / min(w, h)
            im = im.convert("RGB").resize(
                (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
            )
            out.append(clip_center_crop_pil(im, size))
        return pil_to_tensor(out, size)

    # ------------------------------------------------------------------ files

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        center_crop: bool = False,
        max_length: int | None = None,
    ) -> HFClipEncoder:
        """Load diffusers' UnCLIP layout or a transformers ``CLIPModel`` folder from a local directory."""
        tf = _transformers()
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"CLIP directory not found: {directory}")
        if (directory / "text_encoder").is_dir():
            text_dir = directory / "text_encoder"
            tok_dir = directory / "tokenizer"
            vision_dir = directory / "image_encoder" if (directory / "image_encoder").is_dir() else None
            proc_dir = directory / "feature_extractor"
            if not tok_dir.is_dir():
                raise FileNotFoundError(f"{directory} has text_encoder/ but no tokenizer/ sub-folder")
        elif is_hf_clip_dir(directory):
            text_dir = tok_dir = proc_dir = directory
            config = _read_json(directory / "config.json")
            vision_dir = (
                directory if ("vision_config" in config or config.get("model_type") == "clip_vision_model") else None
            )
            if config.get("model_type") == "clip_vision_model":
                raise ValueError(f"{directory} holds only a CLIP vision model; a text encoder is required")
        else:
            raise ValueError(
                f"{directory} is not a transformers CLIP directory (expected text_encoder/ + tokenizer/ "
                "sub-folders, or a config.json with model_type 'clip')"
            )
        kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
        text_model = _load_weights(tf.CLIPTextModelWithProjection, text_dir, kwargs)
        vision_model = None
        if vision_dir is not None:
            vision_model = _load_weights(tf.CLIPVisionModelWithProjection, vision_dir, kwargs)
        tokenizer = tf.CLIPTokenizer.from_pretrained(str(tok_dir))
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
        proc_file = proc_dir / "preprocessor_config.json"
        if proc_file.is_file():
            proc = _read_json(proc_file)
            mean = tuple(proc.get("image_mean", mean))
            std = tuple(proc.get("image_std", std))
        encoder = cls(
            text_model, tokenizer, vision_model, max_length=max_length, image_mean=mean, image_std=std,
            center_crop=center_crop,
        )  # fmt: skip
        return encoder.to(device=device)

    def __repr__(self) -> str:
        size = self.image_size if self.vision_model is not None else None
        return (
            f"HFClipEncoder(dim={self.dim}, token_width={self.token_width}, max_text_length={self.max_text_length}, "
            f"image_size={size}, center_crop={self.center_crop}, device={self.device}, dtype={self.dtype})"
        )


def clip_center_crop_pil(image: Image.Image, size: int) -> Image.Image:
    """The central size × size crop of a PIL image whose sides are both >= size."""
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    return image.crop((left, top, left + size, top + size))
