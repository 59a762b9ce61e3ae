import numpy as np
import pytest
import torch
from PIL import Image

from unclip.encoders.base import ClipEncoder, TextEmbedding
from unclip.encoders.loading import load_clip
from unclip.encoders.own_clip import OwnClipEncoder
from unclip.encoders.tokenizer import WordByteTokenizer
from unclip.models import build_model


@pytest.fixture()
def encoder() -> OwnClipEncoder:
    torch.manual_seed(0)
    model = build_model("clip", "tiny")
    return OwnClipEncoder(model, WordByteTokenizer(max_length=model.config.context_length), batch_size=2)


def test_implements_the_protocol_and_matches_the_network(encoder):
    assert isinstance(encoder, ClipEncoder)
    assert (encoder.dim, encoder.token_width, encoder.max_text_length, encoder.image_size) == (16, 16, 16, 16)
    texts = ["a red circle", "a blue square on the left", "zebra!"]
    emb = encoder.embed_text(texts)
    assert isinstance(emb, TextEmbedding)
    assert emb.pooled.shape == (3, 16) and emb.tokens.shape == (3, 16, 16) and emb.mask.dtype == torch.bool
    ids, mask = encoder.tokenizer(texts)
    pooled, tokens = encoder.model.encode_text(ids, mask)  # one batch vs the encoder's batches of 2
    torch.testing.assert_close(emb.pooled, pooled)
    torch.testing.assert_close(emb.tokens, tokens)
    assert torch.equal(emb.mask, mask)
    assert not emb.pooled.requires_grad

    images = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(encoder.embed_images(images), encoder.model.encode_image(images).detach())


def test_images_of_any_size_are_resized(encoder):
    torch.manual_seed(0)
    big = torch.rand(2, 3, 48, 40) * 1.6 - 0.8
    # reference: PIL's antialiased bicubic resize, per channel in float mode
    ref = torch.stack([
        torch.stack([
            torch.from_numpy(np.array(Image.fromarray(ch.numpy(), mode="F").resize((16, 16), Image.BICUBIC)))
            for ch in img
        ])
        for img in big
    ])  # fmt: skip
    torch.testing.assert_close(encoder.preprocess(big), ref, atol=2e-3, rtol=0)
    assert encoder.embed_images(torch.zeros(1, 3, 40, 24)).shape == (1, 16)
    pil = [Image.new("RGBA", (30, 20), (255, 0, 0, 255)), Image.new("L", (8, 8), 0)]
    x = encoder.preprocess_pil(pil)
    assert x.shape == (2, 3, 16, 16)
    torch.testing.assert_close(x[0, :, 5, 5], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(x[1], -torch.ones(3, 16, 16))


def test_bad_inputs_name_the_problem(encoder):
    with pytest.raises(ValueError, match="empty"):
        encoder.embed_text([])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.embed_text(["ok", 3])
    with pytest.raises(ValueError, match="shape"):
        encoder.embed_images(torch.zeros(2, 1, 16, 16))
    with pytest.raises(TypeError, match="floating"):
        encoder.embed_images(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))


def test_save_load_round_trip_and_load_clip(encoder, tmp_path):
    encoder.save_pretrained(tmp_path / "fp32", dtype=None)
    encoder.save_pretrained(tmp_path / "fp16")
    texts = ["a small green star", "unseen words"]
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    for sub, tol in (("fp32", 0.0), ("fp16", 2e-2)):
        loaded = load_clip(tmp_path / sub)
        assert isinstance(loaded, OwnClipEncoder) and loaded.dtype == torch.float32
        torch.testing.assert_close(
            loaded.embed_text(texts).pooled, encoder.embed_text(texts).pooled, atol=tol, rtol=tol
        )
        torch.testing.assert_close(loaded.embed_images(images), encoder.embed_images(images), atol=tol, rtol=tol)
    assert (tmp_path / "fp16" / "model.safetensors").stat().st_size < (
        tmp_path / "fp32" / "model.safetensors"
    ).stat().st_size
    # a pipeline directory with a clip/ part
    pipe = tmp_path / "pipe"
    encoder.save_pretrained(pipe / "clip")
    assert isinstance(load_clip(pipe), OwnClipEncoder)
    double = OwnClipEncoder.from_pretrained(tmp_path / "fp32", dtype=torch.float64)
    assert double.embed_text(texts).pooled.dtype == torch.float64


def test_load_errors(tmp_path, encoder):
    with pytest.raises(FileNotFoundError, match="neither a directory nor a built-in"):
        load_clip(tmp_path / "nope")
    with pytest.raises(ValueError, match="no recognised CLIP"):
        load_clip(tmp_path)
    encoder.save_pretrained(tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_text().replace('"embed_dim": 16', '"embed_dim": 32')
    (tmp_path / "m" / "config.json").write_text(config)
    with pytest.raises(ValueError, match="shape mismatch"):
        load_clip(tmp_path / "m")


def test_batch_norm_buffers_survive_fp16_storage(tmp_path):
    import dataclasses

    from unclip.models.clip import PRESETS, SmallCLIP

    torch.manual_seed(0)
    model = SmallCLIP(dataclasses.replace(PRESETS["tiny"](), image_norm="batch"))
    model.train().encode_image(torch.rand(8, 3, 16, 16) * 2 - 1)  # move the running statistics
    enc = OwnClipEncoder(model, WordByteTokenizer(max_length=16))
    enc.save_pretrained(tmp_path)
    loaded = OwnClipEncoder.from_pretrained(tmp_path)
    assert loaded.model.visual.stem[1].num_batches_tracked.dtype == torch.long
    assert int(loaded.model.visual.stem[1].num_batches_tracked) == 1
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(loaded.embed_images(images), enc.embed_images(images), atol=2e-2, rtol=2e-2)
