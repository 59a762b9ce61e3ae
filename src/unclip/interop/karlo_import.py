"""Import Karlo's original release (kakaobrain/karlo) into our pipeline.

A Karlo folder holds ``prior-…ckpt``, ``decoder-…ckpt``, ``improved-sr-…ckpt`` (Lightning-style dicts with the
weights under ``state_dict``), ``ViT-L-14_stats.th`` (the prior's CLIP image-embedding (mean, std)), a
transformers-format CLIP ViT-L/14 in ``clip/``, and optionally Karlo's yaml configs (``prior_1B_vit_l.yaml``,
``decoder_900M_vit_l.yaml``, ``improved_sr_64_256_1.4B.yaml``, in the folder or in ``configs/``); without them
Karlo's published configuration (our ``karlo`` presets) is used. Head widths and image sizes cannot be read off
the weights, which is why the configs matter for anything but the released model.

Checkpoints are read with ``weights_only`` loading; a file that needs full unpickling (Lightning checkpoints
may carry config objects) is refused unless ``trust_pickle=True`` (``--trust-pickle``).

Our networks use Karlo's parameter names, so the mapping is a prefix change (:mod:`unclip.interop.keymap`). The
pipeline samples as Karlo does: respaced ancestral steps (sampler "ddpm", 25/25/7), prior x0 clamp 10, decoder
guidance against the null image embedding with CLIP's "" as caption, and the super-resolution's
``model_last_step`` for the final step. Not reproduced: Karlo's fp16 autocast and its [cond; uncond] batch order
with noise drawn for 2B samples (we draw B, diffusers' order).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.interop.hf_clip_io import SavableHFClipEncoder
from unclip.interop.keymap import karlo_to_ours
from unclip.io import safe_torch_load
from unclip.models import build_model, model_config
from unclip.models.decoder_unet import DecoderConfig
from unclip.models.prior import PriorConfig
from unclip.models.upsampler_unet import UpsamplerConfig
from unclip.pipeline.unclip_pipeline import GenerationDefaults, Stage, UnCLIPPipeline

__all__ = [
    "KARLO_CONFIG_FILES",
    "KarloConfigs",
    "parse_simple_yaml",
    "karlo_configs",
    "load_karlo_state",
    "load_karlo",
]

KARLO_CONFIG_FILES = {
    "prior": "prior_1B_vit_l.yaml",
    "decoder": "decoder_900M_vit_l.yaml",
    "sr": "improved_sr_64_256_1.4B.yaml",
}
_CKPT_PATTERNS = {"prior": "prior*.ckpt", "decoder": "decoder*.ckpt", "sr": "*sr*.ckpt"}
_STATS_FILE = "ViT-L-14_stats.th"
_AUTO_CHANNEL_MULT = {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}


# ------------------------------------------------------------------ yaml (the subset Karlo's configs use)


def _scalar(text: str) -> Any:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("null", "~", ""):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_simple_yaml(text: str) -> dict[str, Any]:
    """Parse block-style YAML made of nested mappings, ``- item`` lists and plain scalars (Karlo's configs).

    Uses PyYAML when it is installed; this fallback covers what Karlo's files contain and raises a
    ``ValueError`` naming the line for anything else (flow collections, multi-line strings, anchors).
    """
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        yaml = None
    if yaml is not None:
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError("the yaml file does not hold a mapping")
        return data
    root: dict[str, Any] = {}
    stack: list[tuple[int, Any]] = [(-1, root)]
    pending: tuple[dict, str, int] | None = None  # a "key:" awaiting a nested block
    for number, raw in enumerate(text.splitlines(), start=1):
        line = re.sub(r"\s+#.*$", "", raw.rstrip())
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip(" "))
        body = line.strip()
        if pending is not None:
            parent, key, key_indent = pending
            if indent > key_indent:
                parent[key] = [] if body.startswith("- ") or body == "-" else {}
                stack.append((key_indent, parent[key]))
            pending = None
        while len(stack) > 1 and indent <= stack[-1][0]:
            stack.pop()
        container = stack[-1][1]
        if body.startswith("- ") or body == "-":
            if not isinstance(container, list):
                raise ValueError(f"yaml line {number}: unexpected list item: {raw!r}")
            container.append(_scalar(body[1:]))
            continue
        if ":" not in body or body[0] in "[{&*|>" or isinstance(container, list):
            raise ValueError(f"yaml line {number}: unsupported syntax: {raw!r}")
        key, _, value = body.partition(":")
        key = key.strip()
        if value.strip() == "":
            container[key] = None
            pending = (container, key, indent)
        else:
            if value.strip()[0] in "[{|>&*":
                raise ValueError(f"yaml line {number}: unsupported value: {raw!r}")
            container[key] = _scalar(value)
    return root


# ------------------------------------------------------------------ configs


class KarloConfigs:
    """Network configs and diffusion processes of the three Karlo stages."""

    def __init__(
        self,
        prior: PriorConfig,
        decoder: DecoderConfig,
        sr: UpsamplerConfig,
        diffusion: dict[str, DiffusionConfig],
    ) -> None:
        self.prior, self.decoder, self.sr, self.diffusion = prior, decoder, sr, diffusion


def _diffusion(section: dict[str, Any] | None, default: DiffusionConfig, what: str) -> DiffusionConfig:
    if not section:
        return default
    schedule = {"squaredcos_cap_v2": "cosine", "cosine": "cosine", "linear": "linear"}.get(
        section.get("noise_schedule", "squaredcos_cap_v2")
    )
    if schedule is None:
        raise ValueError(f"{what}: noise_schedule {section.get('noise_schedule')!r} is not supported")
    if section.get("learn_sigma", False):
        variance = "learned_range"
    else:
        variance = "fixed_small" if section.get("sigma_small", True) else "fixed_large"
    return DiffusionConfig(
        schedule=schedule,
        num_timesteps=int(section.get("steps", 1000)),
        prediction="x0" if section.get("predict_xstart", False) else "eps",
        variance=variance,
    )


def _hparams(data: dict[str, Any] | None, what: str) -> dict[str, Any]:
    if data is None:
        return {}
    hp = (data.get("model") or {}).get("hparams")
    if not isinstance(hp, dict):
        raise ValueError(f"{what}: no model.hparams mapping")
    return hp


def _prior_config(hp: dict[str, Any]) -> PriorConfig:
    base = model_config("prior", "karlo")
    if not hp:
        return base
    if hp.get("xf_padding", False) or not hp.get("xf_final_ln", True):
        raise ValueError("Karlo prior config: xf_padding=true / xf_final_ln=false are not supported")
    return replace(
        base,
        clip_dim=int(hp.get("clip_dim", base.clip_dim)),
        text_width=int(hp.get("clip_xf_width", base.text_width)),
        text_len=int(hp.get("text_ctx", base.text_len)),
        width=int(hp.get("xf_width", base.width)),
        layers=int(hp.get("xf_layers", base.layers)),
        heads=int(hp.get("xf_heads", base.heads)),
        text_drop_prob=float(hp.get("text_drop", base.text_drop_prob)),
    )


def _decoder_config(hp: dict[str, Any]) -> DecoderConfig:
    base = model_config("decoder", "karlo")
    if not hp:
        return base
    what = "Karlo decoder config"
    if int(hp.get("xf_layers", 0)) != 0 or not hp.get("use_plm", True):
        raise ValueError(f"{what}: a trainable text transformer (xf_layers > 0 or use_plm false) is not supported")
    size = int(hp.get("image_size", base.image_size))
    mult_text = str(hp.get("channel_mult", "") or "")
    if mult_text:
        mult = tuple(int(m) for m in mult_text.split(","))
    elif size in _AUTO_CHANNEL_MULT and size != 512:
        mult = _AUTO_CHANNEL_MULT[size]
    else:
        raise ValueError(f"{what}: no channel_mult given and image_size {size} has no default")
    head_channels = int(hp.get("num_head_channels", -1))
    if head_channels <= 0:
        raise ValueError(f"{what}: num_head_channels must be set (> 0), got {head_channels}")
    resolutions = str(hp.get("attention_resolutions", "32,16,8"))
    attention_ds = tuple(size // int(r) for r in resolutions.split(",") if r.strip())
    clip_dim = int(hp.get("clip_dim", base.clip_dim))
    return replace(
        base,
        image_size=size,
        model_channels=int(hp.get("num_channels", base.model_channels)),
        channel_mult=mult,
        num_res_blocks=int(hp.get("num_res_blocks", base.num_res_blocks)),
        attention_ds=attention_ds,
        head_channels=head_channels,
        dropout=float(hp.get("dropout", base.dropout)),
        learn_sigma=bool(hp.get("learn_sigma", True)),
        use_scale_shift_norm=bool(hp.get("use_scale_shift_norm", True)),
        resblock_updown=bool(hp.get("resblock_updown", True)),
        clip_dim=clip_dim,
        clip_tokens=int(hp.get("clip_emb_mult", base.clip_tokens)),
        text_width=clip_dim,
        context_width=int(hp.get("xf_width", base.context_width)),
        image_drop=float(hp.get("clip_emb_drop", base.image_drop)),
        text_drop=float(hp.get("text_drop", base.text_drop)),
    )


def _sr_config(hp: dict[str, Any], decoder_size: int) -> UpsamplerConfig:
    base = model_config("upsampler", "karlo")
    base = replace(base, low_res_size=decoder_size, image_size=4 * decoder_size)
    if not hp:
        return base
    mult = hp.get("channels_multiple", base.channel_mult)
    if isinstance(mult, str):
        mult = [int(m) for m in mult.split(",")]
    return replace(
        base,
        model_channels=int(hp.get("channels", base.model_channels)),
        num_res_blocks=int(hp.get("depth", base.num_res_blocks)),
        channel_mult=tuple(int(m) for m in mult),
        dropout=float(hp.get("dropout", base.dropout)),
    )


def karlo_configs(directory: str | Path) -> KarloConfigs:
    """Configs from Karlo's yaml files in ``directory`` or ``directory/configs`` (each missing file: Karlo's
    published configuration for that stage)."""
    directory = Path(directory)
    data: dict[str, dict[str, Any] | None] = {}
    for part, name in KARLO_CONFIG_FILES.items():
        found = [p for p in (directory / name, directory / "configs" / name) if p.is_file()]
        data[part] = parse_simple_yaml(found[0].read_text()) if found else None
    prior = _prior_config(_hparams(data["prior"], "prior yaml"))
    decoder = _decoder_config(_hparams(data["decoder"], "decoder yaml"))
    sr = _sr_config(_hparams(data["sr"], "improved-sr yaml"), decoder.image_size)
    diffusion = {
        "prior": _diffusion((data["prior"] or {}).get("diffusion"), DiffusionConfig("cosine", 1000, "x0"), "prior"),
        "decoder": _diffusion(
            (data["decoder"] or {}).get("diffusion"), DiffusionConfig("cosine", 1000, "eps", "learned_range"), "decoder"
        ),
        "sr": _diffusion((data["sr"] or {}).get("diffusion"), DiffusionConfig("cosine", 1000, "eps"), "sr"),
    }
    return KarloConfigs(prior, decoder, sr, diffusion)


# ------------------------------------------------------------------ weights


def load_karlo_state(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """The ``state_dict`` of a Karlo ``.ckpt`` (or a bare state dict), loaded without running pickled code."""
    ckpt = safe_torch_load(path, trust_pickle=trust_pickle)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (expected a Karlo/Lightning checkpoint)")
    return state


def _find(directory: Path, part: str) -> Path:
    matches = sorted(directory.glob(_CKPT_PATTERNS[part]))
    if len(matches) != 1:
        what = "no" if not matches else f"{len(matches)}"
        raise FileNotFoundError(f"{directory}: found {what} '{_CKPT_PATTERNS[part]}' checkpoint(s) for the {part}")
    return matches[0]


def _load(kind: str, config: Any, state: dict[str, Tensor], source: Path, device, dtype) -> nn.Module:
    model = build_model(kind, config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if kind == "prior":
        missing = [k for k in missing if k not in ("clip_mean", "clip_std")]
    if missing or unexpected:
        raise ValueError(
            f"{source} does not fit the {kind} config: missing {missing[:5]}, unexpected {unexpected[:5]} "
            "(pass Karlo's yaml configs if the model is not Karlo's released one)"
        )
    return model.to(device=device, dtype=dtype).eval()


def load_karlo(
    directory: str | Path,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_pickle: bool = False,
    clip_dir: str | Path | None = None,
) -> UnCLIPPipeline:
    """Load Karlo's release folder (see the module doc) as an :class:`UnCLIPPipeline` sampling like Karlo.

    Args:
        directory: the folder with the three ``.ckpt`` files, the stats file and ``clip/``.
        device, dtype: where to put it (default CPU, float32).
        trust_pickle: allow checkpoints that need full unpickling.
        clip_dir: the transformers CLIP folder (default ``directory/clip``).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"Karlo folder not found: {directory}")
    clip_path = Path(clip_dir) if clip_dir is not None else directory / "clip"
    if not clip_path.is_dir():
        raise FileNotFoundError(f"{clip_path} not found: Karlo needs a transformers CLIP ViT-L/14 folder there")
    clip = SavableHFClipEncoder.from_pretrained(clip_path, device=device, dtype=dtype, center_crop=False)
    configs = karlo_configs(directory)
    if (clip.dim, clip.token_width, clip.max_text_length) != (
        configs.prior.clip_dim,
        configs.prior.text_width,
        configs.prior.text_len,
    ):
        raise ValueError(
            f"the CLIP in {clip_path} (dim {clip.dim}, token width {clip.token_width}, length "
            f"{clip.max_text_length}) does not fit the prior config ({configs.prior})"
        )

    prior_path = _find(directory, "prior")
    prior_state = karlo_to_ours(load_karlo_state(prior_path, trust_pickle), "prior")
    stats_path = directory / _STATS_FILE
    stats = safe_torch_load(stats_path, trust_pickle=trust_pickle)
    if not isinstance(stats, (tuple, list)) or len(stats) != 2:
        raise ValueError(f"{stats_path} must hold a (mean, std) pair of tensors")
    prior_state["clip_mean"] = torch.as_tensor(stats[0]).reshape(-1).float()
    prior_state["clip_std"] = torch.as_tensor(stats[1]).reshape(-1).float()
    prior = _load("prior", configs.prior, prior_state, prior_path, device, dtype)

    decoder_path = _find(directory, "decoder")
    decoder_state = karlo_to_ours(load_karlo_state(decoder_path, trust_pickle), "decoder")
    decoder = _load("decoder", configs.decoder, decoder_state, decoder_path, device, dtype)

    sr_path = _find(directory, "sr")
    sr_state = load_karlo_state(sr_path, trust_pickle)
    first = _load("upsampler", configs.sr, karlo_to_ours(sr_state, "sr_first"), sr_path, device, dtype)
    last = _load("upsampler", configs.sr, karlo_to_ours(sr_state, "sr_last"), sr_path, device, dtype)

    defaults = GenerationDefaults(
        sampler="ddpm",
        prior_steps=25,
        decoder_steps=25,
        upsampler_steps=7,
        prior_guidance_scale=4.0,
        decoder_guidance_scale=8.0,
        best_of=1,
        eta=0.0,
        prior_clamp=10.0,
    )
    return UnCLIPPipeline(
        clip,
        Stage(prior, configs.diffusion["prior"]),
        Stage(decoder, configs.diffusion["decoder"]),
        [Stage(first, configs.diffusion["sr"], last_step_model=last)],
        defaults,
        decoder_uncond="empty_text",
    )
