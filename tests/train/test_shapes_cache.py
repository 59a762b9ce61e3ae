import json

import pytest
import torch

from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import CHUNK, ShapesCache, build_shapes_cache
from unclip.encoders.own_clip import OwnClipEncoder
from unclip.encoders.tokenizer import WordByteTokenizer
from unclip.models import build_model


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    model = build_model("clip", "tiny").eval()
    return OwnClipEncoder(model, WordByteTokenizer(max_length=model.config.context_length))


def test_cache_matches_direct_computation(tmp_path, tiny_clip):
    world = ShapesWorld(seed=3)
    build_shapes_cache(tmp_path, tiny_clip, num=5, world=world, size=32, progress=False)
    cache = ShapesCache.load(tmp_path)
    assert len(cache) == 5
    images, captions, records = world.batch(range(5), 32)
    assert captions == cache.captions and records == cache.records
    assert torch.allclose(cache.pixels(range(5)), images, atol=1 / 255)
    with torch.no_grad():
        z_i = tiny_clip.embed_images(images)
        text = tiny_clip.embed_text(captions)
    assert torch.allclose(cache.image_embedding, z_i, atol=1e-4)
    assert torch.allclose(cache.text.pooled, text.pooled, atol=1e-4)
    assert torch.equal(cache.text.mask, text.mask)
    assert torch.allclose(cache.text.tokens.float(), text.tokens, atol=1e-2)
    assert cache.pixels([0, 1], size=16).shape == (2, 3, 16, 16)


def test_cache_resumes_and_refuses_other_settings(tmp_path, tiny_clip):
    world = ShapesWorld(seed=1)
    build_shapes_cache(tmp_path, tiny_clip, num=CHUNK + 3, world=world, size=16, progress=False)
    first = (tmp_path / "chunk_00000.safetensors").stat().st_mtime_ns
    (tmp_path / "chunk_00001.safetensors").unlink()  # an interrupted build
    with pytest.raises(FileNotFoundError, match="chunk_00001"):
        ShapesCache.load(tmp_path)
    build_shapes_cache(tmp_path, tiny_clip, num=CHUNK + 3, world=world, size=16, progress=False)
    assert (tmp_path / "chunk_00000.safetensors").stat().st_mtime_ns == first  # not rebuilt
    assert len(ShapesCache.load(tmp_path)) == CHUNK + 3
    assert json.loads((tmp_path / "meta.json").read_text())["num"] == CHUNK + 3
    with pytest.raises(ValueError, match="size"):
        build_shapes_cache(tmp_path, tiny_clip, num=4, world=world, size=32, progress=False)


def test_parallel_rendering_writes_the_same_cache(tmp_path, tiny_clip):
    world = ShapesWorld(seed=2)
    build_shapes_cache(tmp_path / "serial", tiny_clip, num=7, world=world, size=16, progress=False)
    build_shapes_cache(tmp_path / "pool", tiny_clip, num=7, world=world, size=16, progress=False, render_workers=3)
    serial, pooled = ShapesCache.load(tmp_path / "serial"), ShapesCache.load(tmp_path / "pool")
    assert torch.equal(serial.images, pooled.images)  # rows in index order, not in worker order
    assert torch.equal(serial.image_embedding, pooled.image_embedding)
    assert serial.captions == pooled.captions
    with pytest.raises(ValueError, match="render_workers"):
        build_shapes_cache(tmp_path / "bad", tiny_clip, num=2, world=world, size=16, render_workers=-1)
