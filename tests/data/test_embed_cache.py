"""Embedding caches from an image folder and from webdataset shards: contents vs direct CLIP calls, the
row store, resume, sharding across processes, the ``unclip embed`` CLI, and every stage training on them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip.cli.main import cli
from unclip.data.embed_cache import EmbeddingCache, RowStore, build_embedding_cache, cache_status
from unclip.data.image_folder import ImageFolderSource, write_image_folder
from unclip.data.shapes import ShapesWorld
from unclip.data.transforms import ImageTransform
from unclip.data.webdataset_source import WebDatasetSource, write_webdataset
from unclip.pipeline.builder import tiny_clip

N = 24  # samples per source; two of them bad


def _world_samples(n, size=40):
    world = ShapesWorld(seed=4)
    out = []
    for i in range(n):
        s = world.sample(i)
        image = world.render(s.scene, size)
        out.append((np.concatenate([image, image[:, :8]], 1), s.caption))  # 40 x 48: not square
    return out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(0).save_pretrained(tmp_path_factory.mktemp("clip") / "clip")


@pytest.fixture(scope="module")
def clip(clip_dir):
    from unclip.encoders.loading import load_clip

    return load_clip(clip_dir)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    samples = _world_samples(N)
    rows = [(f"{i:03d}.png", im, cap) for i, (im, cap) in enumerate(samples)]
    rows[5] = (rows[5][0], rows[5][1], None)  # missing caption
    root = write_image_folder(tmp_path_factory.mktemp("data") / "folder", rows)
    (root / "011.png").write_bytes(b"corrupt")
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    samples = [(im, cap, None) for im, cap in _world_samples(N)]
    samples[2] = (samples[2][0], None, None)
    samples[13] = (b"corrupt", "a broken one", None)
    out = tmp_path_factory.mktemp("data") / "wds"
    write_webdataset(out, samples, per_shard=6, image_format="png")
    return out


def test_row_store_matches_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3, 2)).astype(np.float32) for n in (4, 0, 5, 2)]
    ref = np.concatenate(parts)
    full = torch.from_numpy(ref)
    store = RowStore(parts)
    assert store.shape == full.shape and len(store) == 11 and store.dtype == torch.float32
    for index in ([0, 10, 4, 4, 3], np.array([8, 1]), slice(2, 9), slice(None, None, -3), 7, -1):
        assert np.array_equal(store[index].numpy(), ref[index])
    assert torch.equal(store[torch.tensor([8, 1])], full[[8, 1]])
    assert torch.equal(store[torch.arange(11) % 2 == 0], full[::2])
    assert torch.equal(store[:, :1, 1], full[:, :1, 1])
    assert torch.equal(store[[9, 0], 1:], full[[9, 0], 1:])
    assert torch.equal(store.head(6).float(), full[:6]) and len(store.head(0)) == 0
    with pytest.raises(IndexError):
        store[[11]]


def test_folder_cache_matches_direct_clip_calls(folder, clip, tmp_path):
    source = ImageFolderSource(folder, part_size=10)
    transform = ImageTransform(size=16)
    report = build_embedding_cache(source, clip, tmp_path / "c", transform, clip_name="tiny", batch_size=5)
    assert report == {"built": 3, "rows": N - 2, "bad": {"unreadable_image": 1, "missing_image": 0,
                      "missing_caption": 1, "too_small": 0}, "complete": True}  # fmt: skip
    cache = EmbeddingCache.load(tmp_path / "c")
    assert len(cache) == N - 2 and isinstance(cache.images, RowStore) and cache.records is None
    assert cache.keys[:6] == ["000.png", "001.png", "002.png", "003.png", "004.png", "006.png"]
    meta = json.loads((folder / "metadata.jsonl").read_text().splitlines()[6])
    assert cache.captions[5] == meta["text"]
    # reference: crop and resize by hand, CLIP on the full-resolution square, one sample at a time
    im = Image.open(folder / "006.png").convert("RGB")
    square = im.crop((4, 0, 44, 40))
    expected = np.array(square.resize((16, 16), Image.Resampling.BICUBIC))
    assert np.array_equal(cache.images[5].numpy(), expected)
    assert torch.allclose(cache.pixels([5]), torch.from_numpy(expected).permute(2, 0, 1)[None].float() / 127.5 - 1)
    z = clip.embed_images(clip.preprocess_pil([square]))
    assert torch.allclose(cache.image_embedding[5], z[0], atol=1e-5)
    text = clip.embed_text([cache.captions[5]])
    assert torch.allclose(cache.text.pooled[5], text.pooled[0], atol=1e-5)
    assert torch.allclose(cache.text.tokens[5].float(), text.tokens[0], atol=2e-3)
    assert torch.equal(cache.text.mask[5], text.mask[0]) and cache.text.mask.dtype == torch.bool
    in_memory = EmbeddingCache.load(tmp_path / "c", mmap=False, limit=7)
    assert len(in_memory) == 7 and torch.equal(in_memory.images, cache.images[:7])
    assert torch.equal(in_memory.text.tokens, cache.text.tokens[:7])


def test_build_is_sharded_and_resumable(shards, clip, tmp_path):
    source = WebDatasetSource(shards)
    out = tmp_path / "c"
    t = ImageTransform(size=16)
    first = build_embedding_cache(source, clip, out, t, clip_name="tiny", rank=0, world_size=2)
    assert first["built"] == 2 and not first["complete"]
    assert cache_status(out)["missing"] == [1, 3]
    with pytest.raises(FileNotFoundError, match="2 of 4 parts"):
        EmbeddingCache.load(out)
    stamp = (out / "part_00000" / "images.npy").stat().st_mtime_ns
    (out / "part_00003.tmp-999").mkdir()  # debris of a killed build
    second = build_embedding_cache(source, clip, out, t, clip_name="tiny", rank=1, world_size=2, num_workers=2)
    assert second["built"] == 2 and second["complete"] and not (out / "part_00003.tmp-999").exists()
    again = build_embedding_cache(source, clip, out, t, clip_name="tiny")
    assert again["built"] == 0 and again["complete"]
    assert (out / "part_00000" / "images.npy").stat().st_mtime_ns == stamp
    cache = EmbeddingCache.load(out)
    index = json.loads((out / "index.json").read_text())
    assert len(cache) == index["num"] == N - 2 and index["bad"]["unreadable_image"] == 1
    one = tmp_path / "one"
    build_embedding_cache(source, clip, one, t, clip_name="tiny")
    ref = EmbeddingCache.load(one)
    assert ref.keys == cache.keys and torch.equal(ref.images[:], cache.images[:])
    assert torch.allclose(ref.image_embedding, cache.image_embedding, atol=1e-6)
    with pytest.raises(ValueError, match="size"):
        build_embedding_cache(source, clip, out, ImageTransform(size=32), clip_name="tiny")


@pytest.mark.parametrize("kind", ["folder", "webdataset"])
def test_embed_cli_then_every_stage_trains(kind, folder, shards, clip_dir, tmp_path):
    data = folder if kind == "folder" else shards
    runner = CliRunner()
    cache = tmp_path / "cache"
    res = runner.invoke(cli, ["embed", "--clip", str(clip_dir), str(data), str(cache), "--size", "16",
                              "--part-size", "8", "--batch-size", "8", "--no-progress"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"cache complete: {N - 2} rows" in res.output and "unreadable_image 1" in res.output
    common = ["--steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress", "--log-every", "1"]
    prior = ["--preset", "tiny", "--holdout", "4", "--final-eval-rows", "2", "--eval-rows", "2"]
    stages = [
        ("prior", "diffusion_prior", ["--kind", "diffusion", *prior]),
        ("prior", "ar_prior", ["--kind", "ar", "--num-components", "4", *prior]),
        ("decoder", "decoder", ["--preset", "tiny", "--holdout", "4"]),
        ("upsampler", "upsampler", ["--preset", "tiny", "--holdout", "4"]),
    ]
    for stage, name, args in stages:
        out = tmp_path / name
        res = runner.invoke(cli, ["train", stage, "--cache", str(cache), "-o", str(out), *args, *common])
        assert res.exit_code == 0, f"{stage}: {res.output}"
        assert (out / "model" / "model.safetensors").is_file(), stage
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in records if "loss" in r]
        assert len(losses) == 2 and all(np.isfinite(losses)), stage
    bad = runner.invoke(cli, ["embed", "--clip", str(clip_dir), str(tmp_path / "nothing"), str(tmp_path / "x")])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_own_data_guide_end_to_end(folder, clip_dir, tmp_path):
    """docs/own_data.md, shrunk: folder -> embed -> prior, decoder, upsampler -> pipeline -> images."""
    from unclip.config import load_config
    from unclip.diffusion.stage_config import DiffusionConfig
    from unclip.encoders.loading import load_clip
    from unclip.models.serialization import load_model
    from unclip.pipeline import Stage, UnCLIPPipeline
    from unclip.train.config import TrainConfig
    from unclip.train.decoder_task import UpsamplerTask, UpsamplerTaskConfig
    from unclip.train.loop import run_training

    runner = CliRunner()
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    res = runner.invoke(cli, ["embed", "--clip", str(clip_dir), str(folder), str(cache), "--size", "32"])
    assert res.exit_code == 0, res.output
    common = ["--holdout", "4", "--steps", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    for stage, extra in (("prior", ["--kind", "diffusion", "--final-eval-rows", "0", "--eval-rows", "1"]),
                         ("decoder", [])):  # fmt: skip
        res = runner.invoke(cli, ["train", stage, "--cache", str(cache), "-o", str(runs / stage), "--preset", "tiny",
                                  *extra, *common])  # fmt: skip
        assert res.exit_code == 0, res.output
    up = UpsamplerTask(UpsamplerTaskConfig(cache=str(cache), preset="tiny", holdout=4, image_size=32, low_res_size=16))
    run_training(
        up, TrainConfig(steps=2, batch_size=4, warmup_steps=1, device="cpu"), runs / "upsampler", progress=False
    )

    def stage(kind, name):
        d = runs / name / "model"
        return Stage(load_model(kind, d), load_config(DiffusionConfig, d / "diffusion.json"))

    pipe = UnCLIPPipeline(load_clip(clip_dir), stage("prior", "prior"), stage("decoder", "decoder"),
                          [stage("upsampler", "upsampler")])  # fmt: skip
    pipe.save_pretrained(tmp_path / "pipeline")
    loaded = UnCLIPPipeline.from_pretrained(tmp_path / "pipeline")
    images = loaded("a red circle", seed=0, prior_steps=2, decoder_steps=2, upsampler_steps=2, output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()
