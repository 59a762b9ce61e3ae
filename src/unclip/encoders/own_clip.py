"""Our small CLIP (:class:`unclip.models.clip.SmallCLIP`) behind the :class:`ClipEncoder` interface.

On disk (``save_pretrained``): ``config.json`` (the :class:`ClipConfig`), ``model.safetensors`` (weights,
fp16 or fp32) and ``tokenizer.json`` (the :class:`WordByteTokenizer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unclip.config import load_config, save_config
from unclip.encoders.base import TextEmbedding
from unclip.encoders.tokenizer import WordByteTokenizer
from unclip.io import load_safetensors, save_safetensors
from unclip.models.clip import ClipConfig, SmallCLIP
from unclip.models.init import no_weight_init

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """Validate a batch of captions (a str is one caption) and return it as a list."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence) or isinstance(texts, bytes):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: expected at least one caption")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}: {t!r}")
    return texts


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Validate a [B, 3, H, W] floating image batch."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3, H, W] in [-1, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape [B>0, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating tensor in [-1, 1], got dtype {images.dtype}")
    return images


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """[B, 3, H, W] in [-1, 1] -> [B, 3, size, size] (bicubic with antialiasing, no crop), clamped to [-1, 1]."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.clamp(-1, 1).to(images.dtype)


def pil_to_tensor(images: Sequence[Image.Image] | Image.Image, size: int) -> torch.Tensor:
    """PIL images of any size and mode -> [B, 3, size, size] float32 in [-1, 1] (bicubic resize, no crop)."""
    if isinstance(images, Image.Image):
        images = [images]
    out = []
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL.Image, got {type(im).__name__}")
        im = im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1)
    if not out:
        raise ValueError("images is empty: expected at least one PIL image")
    return torch.stack(out)


class OwnClipEncoder:
    """:class:`ClipEncoder` over a :class:`SmallCLIP` and its :class:`WordByteTokenizer`.

    Args:
        model: the network (put in eval mode; gradients are never computed here).
        tokenizer: its tokenizer; ``tokenizer.max_length`` must not exceed ``model.config.context_length``.
        batch_size: largest batch run through a tower at once.
    """

    def __init__(self, model: SmallCLIP, tokenizer: WordByteTokenizer, batch_size: int = 256):
        if tokenizer.max_length > model.config.context_length:
            raise ValueError(
                f"tokenizer max_length {tokenizer.max_length} exceeds the model's context_length "
                f"{model.config.context_length}"
            )
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({tokenizer.vocab_size}) exceeds the model's vocab_size "
                f"{model.config.vocab_size}"
            )
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> ClipConfig:
        return self.model.config

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    @property
    def token_width(self) -> int:
        return self.config.text_width

    @property
    def max_text_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.logit_scale.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> OwnClipEncoder:
        """Move the network in place; returns ``self``."""
        self.model.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ ClipEncoder

    def tokenize(self, texts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids [B, L], mask [B, L] bool) on the encoder's device."""
        ids, mask = self.tokenizer(check_texts(texts))
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def text_warnings(self, text: str) -> list[str]:
        return self.tokenizer.text_warnings(text)

    def embed_text(self, texts: str | Sequence[str]) -> TextEmbedding:
        """B captions -> TextEmbedding(pooled [B, D], tokens [B, L, W], mask [B, L]) in the encoder's dtype."""
        ids, mask = self.tokenize(texts)
        parts = []
        for s in range(0, ids.shape[0], self.batch_size):
            pooled, tokens = self.model.encode_text(ids[s : s + self.batch_size], mask[s : s + self.batch_size])
            parts.append(TextEmbedding(pooled, tokens, mask[s : s + self.batch_size]))
        return TextEmbedding.cat(parts)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 3, S, S] on the encoder's device and dtype (resized, no crop)."""
        images = check_images(images).to(self.device)
        return resize_square(images, self.image_size).to(self.dtype)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] (any H, W) -> [B, D] image embeddings (not normalised)."""
        check_images(images)
        out = [
            self.model.encode_image(self.preprocess(images[s : s + self.batch_size]))
            for s in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(out)

    def preprocess_pil(self, images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
        """PIL images -> [B, 3, S, S] float32 in [-1, 1] on CPU (RGB, bicubic resize, no crop)."""
        return pil_to_tensor(images, self.image_size)

    # ------------------------------------------------------------------ files

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype | None = torch.float16) -> Path:
        """Write ``config.json``, ``model.safetensors`` (weights cast to ``dtype``; None keeps the current
        dtype) and ``tokenizer.json`` into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu()
            for k, v in self.model.state_dict().items()
        }  # integer buffers (e.g. BatchNorm's num_batches_tracked) keep their dtype
        save_safetensors(state, directory / WEIGHTS_FILE)
        save_config(self.config, directory / CONFIG_FILE)
        self.tokenizer.save_pretrained(directory)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        batch_size: int = 256,
    ) -> OwnClipEncoder:
        """Load a directory written by :meth:`save_pretrained` onto ``device`` (CPU) in ``dtype`` (float32)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"CLIP directory not found: {directory}")
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} is not an unclip CLIP directory: {name} is missing")
        config = load_config(ClipConfig, directory / CONFIG_FILE)
        tokenizer = WordByteTokenizer.from_pretrained(directory)
        with torch.device("meta"), no_weight_init():  # every tensor is loaded (assigned) below
            model = SmallCLIP(config)
        state = load_safetensors(directory / WEIGHTS_FILE)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(
                f"{directory / WEIGHTS_FILE} does not match its config: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if state[k].shape != v.shape]
        if bad:
            raise ValueError(f"{directory / WEIGHTS_FILE}: shape mismatch (name, file, config): {bad[:5]}")
        dtype = dtype if dtype is not None else torch.float32
        state = {
            k: v.to(device=device or "cpu", dtype=dtype if v.is_floating_point() else v.dtype) for k, v in state.items()
        }
        model.load_state_dict(state, assign=True)
        return cls(model, tokenizer, batch_size=batch_size)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"OwnClipEncoder(dim={c.embed_dim}, image_size={c.image_size}, text_width={c.text_width}, "
            f"max_text_length={self.max_text_length}, device={self.device}, dtype={self.dtype})"
        )


def is_own_clip_dir(directory: str | Path) -> bool:
    """True when ``directory`` holds our CLIP format (config.json parses as a :class:`ClipConfig`)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file() or not (Path(directory) / WEIGHTS_FILE).is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and "model_type" not in data and {"embed_dim", "text_width"} <= set(data)
