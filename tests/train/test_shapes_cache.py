import json

import numpy as np
import pytest
import torch

from unclip.data.embed_cache import EmbeddingCache, build_embedding_cache, part_name
from unclip.data.shapes import ShapesWorld
from unclip.data.shapes_cache import PART_SIZE, ShapesSource, build_shapes_cache
from unclip.data.transforms import ImageTransform
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
    cache = EmbeddingCache.load(tmp_path)
    assert len(cache) == 5 and cache.keys == [str(i) for i in range(5)]
    images, captions, records = world.batch(range(5), 32)
    assert captions == cache.captions and records == cache.records
    assert cache.specified == [world.sample(i).specified for i in range(5)]
    assert torch.equal(cache.images[:], torch.from_numpy(np.stack([world.render_index(i, 32) for i in range(5)])))
    assert torch.allclose(cache.pixels(range(5)), images, atol=1 / 255)
    source = ShapesSource(world, 5, 32)
    with torch.no_grad():  # CLIP sees the rendering through its PIL preprocessing, as for any source
        z_i = tiny_clip.embed_images(tiny_clip.preprocess_pil([source.read(i).image for i in range(5)]))
        text = tiny_clip.embed_text(captions)
        direct = tiny_clip.embed_images(images)  # the tensor path differs by the resampling filter only
    assert torch.allclose(cache.image_embedding, z_i, atol=1e-4)
    assert torch.allclose(cache.image_embedding, direct, atol=0.05 * float(direct.abs().max()))
    assert torch.allclose(cache.text.pooled, text.pooled, atol=1e-4)
    assert torch.equal(cache.text.mask, text.mask)
    assert torch.allclose(cache.text.tokens.float(), text.tokens, atol=1e-2)
    assert cache.pixels([0, 1], size=16).shape == (2, 3, 16, 16)


def test_shapes_cache_is_an_embedding_cache_of_its_source(tmp_path, tiny_clip):
    """The same code path as any source: build_embedding_cache over a ShapesSource writes the same cache."""
    world = ShapesWorld(seed=4)
    build_shapes_cache(tmp_path / "a", tiny_clip, num=6, world=world, size=16, progress=False)
    build_embedding_cache(ShapesSource(world, 6, 16), tiny_clip, tmp_path / "b", ImageTransform(16), batch_size=256,
                          progress=False)  # fmt: skip
    a, b = EmbeddingCache.load(tmp_path / "a"), EmbeddingCache.load(tmp_path / "b")
    assert torch.equal(a.images[:], b.images[:]) and torch.equal(a.image_embedding, b.image_embedding)
    assert a.records == b.records and a.specified == b.specified
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert index["format"] == "unclip-embedding-cache" and index["num"] == 6 and index["size"] == 16
    assert index["source"]["kind"] == "shapes" and index["source"]["seed"] == 4 and index["source"]["num"] == 6
    assert not list((tmp_path / "a").glob("chunk_*")) and not (tmp_path / "a" / "meta.json").exists()


def test_cache_resumes_and_refuses_other_settings(tmp_path, tiny_clip):
    world = ShapesWorld(seed=1)
    build_shapes_cache(tmp_path, tiny_clip, num=PART_SIZE + 3, world=world, size=16, progress=False)
    first = (tmp_path / part_name(0) / "images.npy").stat().st_mtime_ns
    import shutil

    shutil.rmtree(tmp_path / part_name(1))  # an interrupted build
    (tmp_path / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 parts"):
        EmbeddingCache.load(tmp_path)
    build_shapes_cache(tmp_path, tiny_clip, num=PART_SIZE + 3, world=world, size=16, progress=False)
    assert (tmp_path / part_name(0) / "images.npy").stat().st_mtime_ns == first  # not rebuilt
    assert len(EmbeddingCache.load(tmp_path)) == PART_SIZE + 3
    assert json.loads((tmp_path / "index.json").read_text())["num"] == PART_SIZE + 3
    with pytest.raises(ValueError, match="size"):
        build_shapes_cache(tmp_path, tiny_clip, num=PART_SIZE + 3, world=world, size=32, progress=False)
    with pytest.raises(ValueError, match="source"):
        build_shapes_cache(tmp_path, tiny_clip, num=PART_SIZE + 3, world=ShapesWorld(seed=2), size=16, progress=False)


def test_parallel_rendering_writes_the_same_cache(tmp_path, tiny_clip):
    world = ShapesWorld(seed=2)
    source = ShapesSource(world, 7, 16, part_size=2)  # four parts, spread over two workers
    build_embedding_cache(source, tiny_clip, tmp_path / "serial", ImageTransform(16), progress=False)
    build_embedding_cache(source, tiny_clip, tmp_path / "pool", ImageTransform(16), num_workers=2, progress=False)
    serial, pooled = EmbeddingCache.load(tmp_path / "serial"), EmbeddingCache.load(tmp_path / "pool")
    assert torch.equal(serial.images[:], pooled.images[:])  # rows in index order, not in worker order
    assert torch.equal(serial.image_embedding, pooled.image_embedding)
    assert serial.captions == pooled.captions and serial.records == pooled.records
    with pytest.raises(ValueError, match="render_workers"):
        build_shapes_cache(tmp_path / "bad", tiny_clip, num=2, world=world, size=16, render_workers=-1)
    with pytest.raises(ValueError, match="num"):
        ShapesSource(world, 0)


def test_old_chunked_layout_is_refused_in_one_line(tmp_path, tiny_clip):
    (tmp_path / "meta.json").write_text(json.dumps({"num": 4, "size": 16, "chunk": 1024}))
    for call in (
        lambda: EmbeddingCache.load(tmp_path),
        lambda: build_shapes_cache(tmp_path, tiny_clip, num=4, size=16, progress=False),
    ):
        with pytest.raises(ValueError, match="old chunked layout") as err:
            call()
        assert "\n" not in str(err.value) and "build it again" in str(err.value)
