"""Random-weight diffusers UnCLIP pipelines of any size, built offline (for the parity tests and
``benchmarks/vs_diffusers.py``). Needs ``diffusers`` and ``transformers`` (the ``hf`` extra).

The components are Karlo-shaped (``reference/karlo_and_diffusers.md`` §b): ``PriorTransformer``, a decoder
``UNet2DConditionModel`` of ``ResnetDownsampleBlock2D`` / ``SimpleCrossAttn*Block2D`` with ``scale_shift``
ResBlocks and an identity class embedding fed by ``UnCLIPTextProjModel``, attention-free ``UNet2DModel``
super-resolution nets, ``UnCLIPScheduler`` with Karlo's settings, and a CLIP whose tokenizer is a small byte-level
BPE vocabulary written on the fly (``"!"`` is id 0 and the pad token, as Karlo). Parameters that diffusers
initialises to zero (the prior's CLIP statistics, positional and query embeddings, the decoder's null image
embedding) are drawn at random so that every path matters.
"""

from __future__ import annotations

import json
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unclip.interop.diffusers_export import TEXT_PROJ_CLASS

__all__ = ["RandomUnCLIPSpec", "write_clip_tokenizer", "build_random_diffusers_unclip", "save_diffusers_unclip"]

_MERGES = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "b l", "bl u", "blu e</w>"]


@dataclass
class RandomUnCLIPSpec:
    """Sizes of a random UnCLIP pipeline (defaults: tiny, for tests)."""

    clip_dim: int = 32
    text_len: int = 16
    text_layers: int = 1
    text_heads: int = 2
    vision_size: int = 32
    vision_patch: int = 16
    prior_layers: int = 1
    prior_heads: int = 2
    prior_head_dim: int = 16
    decoder_size: int = 16
    decoder_channels: tuple[int, ...] = (16, 32)
    decoder_attention: tuple[bool, ...] = (False, True)
    decoder_layers: int = 1
    decoder_head_dim: int = 8
    decoder_groups: int = 8
    context_width: int = 32
    clip_tokens: int = 4
    sr_size: int = 32
    sr_channels: tuple[int, ...] = (8, 16)
    sr_layers: int = 1
    sr_groups: int = 4
    prior_clamp: float = 5.0
    seed: int = 0


def write_clip_tokenizer(directory: str | Path, max_length: int):
    """Write a tiny CLIP BPE vocabulary to ``directory`` and load it as a ``CLIPTokenizer``."""
    import transformers

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = ["!"] + [c for c in string.ascii_lowercase + string.digits + string.punctuation if c != "!"]
    vocab: dict[str, int] = {}
    for piece in chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in _MERGES]:
        vocab.setdefault(piece, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(_MERGES) + "\n")
    return transformers.CLIPTokenizer.from_pretrained(str(directory), pad_token="!", model_max_length=max_length)


def _randomize(module: torch.nn.Module, names: list[str], generator: torch.Generator, positive: bool = False) -> None:
    with torch.no_grad():
        for name in names:
            p = module.get_parameter(name)
            noise = torch.randn(p.shape, generator=generator)
            p.copy_(0.5 + torch.rand(p.shape, generator=generator) if positive else noise)


def build_random_diffusers_unclip(spec: RandomUnCLIPSpec | None = None, variation: bool = False) -> Any:
    """A diffusers ``UnCLIPPipeline`` (``variation=True``: ``UnCLIPImageVariationPipeline``) with random weights,
    every module in eval mode."""
    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    s = spec or RandomUnCLIPSpec()
    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed + 1)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_clip_tokenizer(tmp, s.text_len)
    vocab = tokenizer.get_vocab()
    text_config = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=s.clip_dim, intermediate_size=2 * s.clip_dim,
        num_hidden_layers=s.text_layers, num_attention_heads=s.text_heads, max_position_embeddings=s.text_len,
        projection_dim=s.clip_dim, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=0,
    )  # fmt: skip
    text_encoder = transformers.CLIPTextModelWithProjection(text_config).eval()
    levels = len(s.decoder_channels)
    down = ["SimpleCrossAttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in s.decoder_attention]
    decoder = diffusers.UNet2DConditionModel(
        sample_size=s.decoder_size, in_channels=3, out_channels=6, layers_per_block=s.decoder_layers,
        block_out_channels=s.decoder_channels, down_block_types=down,
        up_block_types=[t.replace("Down", "Up") for t in reversed(down)],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=s.context_width,
        attention_head_dim=s.decoder_head_dim, resnet_time_scale_shift="scale_shift", class_embed_type="identity",
        norm_num_groups=s.decoder_groups,
    ).eval()  # fmt: skip
    assert levels == len(s.decoder_attention)
    text_proj = UnCLIPTextProjModel(
        clip_extra_context_tokens=s.clip_tokens, clip_embeddings_dim=s.clip_dim,
        time_embed_dim=4 * s.decoder_channels[0], cross_attention_dim=s.context_width,
    ).eval()  # fmt: skip
    _randomize(text_proj, ["learned_classifier_free_guidance_embeddings"], g)

    def super_res() -> Any:
        return diffusers.UNet2DModel(
            sample_size=s.sr_size, in_channels=6, out_channels=3, layers_per_block=s.sr_layers,
            block_out_channels=s.sr_channels, down_block_types=["ResnetDownsampleBlock2D"] * len(s.sr_channels),
            up_block_types=["ResnetUpsampleBlock2D"] * len(s.sr_channels), add_attention=False,
            norm_num_groups=s.sr_groups,
        ).eval()  # fmt: skip

    sr_first, sr_last = super_res(), super_res()
    decoder_scheduler = diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon")
    sr_scheduler = diffusers.UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="epsilon")
    common = dict(
        decoder=decoder, text_encoder=text_encoder, tokenizer=tokenizer, text_proj=text_proj,
        super_res_first=sr_first, super_res_last=sr_last, decoder_scheduler=decoder_scheduler,
        super_res_scheduler=sr_scheduler,
    )  # fmt: skip
    if variation:
        vision_config = transformers.CLIPVisionConfig(
            hidden_size=s.clip_dim, intermediate_size=2 * s.clip_dim, num_hidden_layers=1, num_attention_heads=2,
            image_size=s.vision_size, patch_size=s.vision_patch, projection_dim=s.clip_dim,
        )  # fmt: skip
        size = s.vision_size
        processor = transformers.CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        return diffusers.UnCLIPImageVariationPipeline(
            image_encoder=transformers.CLIPVisionModelWithProjection(vision_config).eval(),
            feature_extractor=processor,
            **common,
        )
    prior = diffusers.PriorTransformer(
        num_attention_heads=s.prior_heads, attention_head_dim=s.prior_head_dim, num_layers=s.prior_layers,
        embedding_dim=s.clip_dim, num_embeddings=s.text_len,
    ).eval()  # fmt: skip
    _randomize(prior, ["positional_embedding", "prd_embedding", "clip_mean"], g)
    _randomize(prior, ["clip_std"], g, positive=True)
    prior_scheduler = diffusers.UnCLIPScheduler(
        variance_type="fixed_small_log", prediction_type="sample", clip_sample=True, clip_sample_range=s.prior_clamp
    )
    return diffusers.UnCLIPPipeline(prior=prior, prior_scheduler=prior_scheduler, **common)


def save_diffusers_unclip(pipe: Any, directory: str | Path) -> Path:
    """``pipe.save_pretrained(directory)``, then the ``text_proj`` class path that diffusers can load back."""
    directory = Path(directory)
    pipe.save_pretrained(str(directory))
    index_path = directory / "model_index.json"
    index = json.loads(index_path.read_text())
    index["text_proj"] = TEXT_PROJ_CLASS
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return directory
