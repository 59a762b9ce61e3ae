"""HFClipEncoder against transformers called directly, on tiny random CLIPs built offline."""

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers  # the [hf] extra is part of [dev]
from PIL import Image

from unclip.encoders.base import ClipEncoder
from unclip.encoders.hf_clip import HFClipEncoder, clip_image_preprocess
from unclip.encoders.loading import load_clip

MERGES = ["r e", "re d</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>", "b l", "bl u", "blu e</w>"]
TEXTS = ["a red circle", "a blue square on the left, with an unseen wörd", "x " * 40]


def _write_tokenizer(directory: Path) -> dict[str, int]:
    """A tiny byte-level BPE vocabulary (printable ASCII + end-of-word forms + a few merges)."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab: dict[str, int] = {}
    for c in chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in MERGES]:
        vocab.setdefault(c, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))
    return vocab


def _configs(vocab: dict[str, int]):
    text = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=16, projection_dim=24, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"],
    )  # fmt: skip
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=24,
    )  # fmt: skip
    return text, vision


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _write_processor(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 32, "width": 32},
        "size": {"shortest_edge": 32}, "do_center_crop": True, "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN), "image_std": list(STD),
        "resample": 3, "do_convert_rgb": True,
    }  # fmt: skip
    (directory / "preprocessor_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def clip_model_dir(tmp_path_factory) -> Path:
    """One transformers CLIPModel folder."""
    d = tmp_path_factory.mktemp("clipmodel")
    vocab = _write_tokenizer(d)
    text, vision = _configs(vocab)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)
    transformers.CLIPModel(config).save_pretrained(d)
    _write_processor(d)
    return d


@pytest.fixture(scope="module")
def unclip_layout_dir(tmp_path_factory) -> Path:
    """diffusers' UnCLIP layout: text_encoder/, tokenizer/, image_encoder/, feature_extractor/."""
    d = tmp_path_factory.mktemp("unclip_layout")
    vocab = _write_tokenizer(d / "tokenizer")
    text, vision = _configs(vocab)
    torch.manual_seed(1)
    transformers.CLIPTextModelWithProjection(text).save_pretrained(d / "text_encoder")
    transformers.CLIPVisionModelWithProjection(vision).save_pretrained(d / "image_encoder")
    _write_processor(d / "feature_extractor")
    return d


def _reference(text_dir, vision_dir, tok_dir, texts, pixels):
    tok = transformers.CLIPTokenizer.from_pretrained(str(tok_dir))
    enc = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    text_model = transformers.CLIPTextModelWithProjection.from_pretrained(str(text_dir)).eval()
    vision_model = transformers.CLIPVisionModelWithProjection.from_pretrained(str(vision_dir)).eval()
    with torch.no_grad():
        t = text_model(**enc)
        v = vision_model(pixel_values=pixels)
    return enc, t, v


@pytest.mark.parametrize("layout", ["clip_model_dir", "unclip_layout_dir"])
def test_outputs_match_transformers(layout, request):
    d = request.getfixturevalue(layout)
    enc = load_clip(d)
    assert isinstance(enc, HFClipEncoder) and isinstance(enc, ClipEncoder)
    assert (enc.dim, enc.token_width, enc.max_text_length, enc.image_size) == (24, 32, 16, 32)
    torch.manual_seed(2)
    images = torch.rand(3, 3, 32, 32) * 2 - 1  # already at image_size: preprocessing = normalisation only
    pixels = ((images + 1) / 2 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    if layout == "clip_model_dir":
        ref_enc, t, v = _reference(d, d, d, TEXTS, pixels)
    else:
        ref_enc, t, v = _reference(d / "text_encoder", d / "image_encoder", d / "tokenizer", TEXTS, pixels)
    emb = enc.embed_text(TEXTS)
    assert torch.equal(emb.mask, ref_enc["attention_mask"].bool())
    assert emb.mask[2].all() and int(ref_enc["input_ids"][2, -1]) == enc.tokenizer.eos_token_id  # truncated, EOT kept
    torch.testing.assert_close(emb.pooled, t.text_embeds)
    torch.testing.assert_close(emb.tokens, t.last_hidden_state)
    torch.testing.assert_close(enc.embed_images(images), v.image_embeds, atol=1e-5, rtol=1e-5)


def test_preprocessing_matches_clip_image_processor(clip_model_dir):
    """Centre-crop mode against transformers' CLIPImageProcessor on a non-square PIL image."""
    rng = np.random.default_rng(0)
    smooth = rng.random((6, 9, 3))
    arr = np.array(Image.fromarray((smooth * 255).astype(np.uint8)).resize((90, 60), Image.BICUBIC))
    image = Image.fromarray(arr)
    processor = transformers.CLIPImageProcessor.from_pretrained(str(clip_model_dir))
    ref = processor(images=image, return_tensors="pt")["pixel_values"]
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = clip_image_preprocess(x, 32, MEAN, STD, center_crop=True)
    assert ours.shape == ref.shape == (1, 3, 32, 32)
    # PIL resamples uint8 images, we resample floats: agree to a few 1/255 steps (in std units)
    assert (ours - ref).abs().mean() < 0.01 and (ours - ref).abs().max() < 0.05
    enc = HFClipEncoder.from_pretrained(clip_model_dir, center_crop=True)
    via_pil = enc.preprocess(enc.preprocess_pil(image))
    assert (via_pil - ref).abs().mean() < 0.01
    # without centre crop (Karlo) the whole image is squashed to a square instead
    squashed = clip_image_preprocess(x, 32, MEAN, STD, center_crop=False)
    assert (squashed - ref).abs().mean() > 0.2


def test_dtype_and_errors(clip_model_dir, tmp_path):
    enc = HFClipEncoder.from_pretrained(clip_model_dir, dtype=torch.float64)
    assert enc.embed_text(["a red circle"]).pooled.dtype == torch.float64
    assert enc.embed_images(torch.zeros(1, 3, 50, 40)).dtype == torch.float64
    with pytest.raises(ValueError, match="not a transformers CLIP"):
        HFClipEncoder.from_pretrained(tmp_path)
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        HFClipEncoder.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        HFClipEncoder.from_pretrained(clip_model_dir, max_length=17)
