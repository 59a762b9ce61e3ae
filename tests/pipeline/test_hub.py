"""Hub ids ("org/name") through a local Hugging Face cache: tiny random pipelines placed in the cache's own layout
(``models--org--name/refs/<ref>`` holding a commit, ``snapshots/<commit>/`` linking into ``blobs/``), loaded by
id with ``HF_HUB_OFFLINE=1``. No network: the online branch is driven by a fake ``HfApi.model_info``."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip.pipeline import GenerationDefaults, UnCLIPPipeline
from unclip.pipeline import hub as unclip_hub
from unclip.pipeline.builder import build_pipeline

pytest.importorskip("huggingface_hub")
import huggingface_hub  # noqa: E402
import huggingface_hub.constants  # noqa: E402 - a submodule the package loads lazily

COMMIT = "0123456789abcdef0123456789abcdef01234567"
KARLO_ID = "kakaobrain/karlo-v1-alpha"  # the docs' hub id, here a tiny random pipeline in a test cache
FAST = dict(seed=0, prior_steps=2, decoder_steps=2, upsampler_steps=2, output_type="pt")


def put_in_cache(cache: Path, repo_id: str, source: Path, commit: str = COMMIT, ref: str = "main") -> Path:
    """Place the files of ``source`` in ``cache`` as ``snapshot_download`` leaves them; returns the snapshot."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def images(pipe: UnCLIPPipeline) -> torch.Tensor:
    out = pipe("a red circle", **FAST)
    return getattr(out, "images", out)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """HF_HUB_OFFLINE=1, also where huggingface_hub read it at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def go_online(monkeypatch, listing=None, error: Exception | None = None) -> None:
    """Offline mode off, with ``HfApi.model_info`` listing ``listing`` or raising ``error``."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def model_info(self, repo_id, revision=None, **kwargs):
        if error is not None:
            raise error
        return SimpleNamespace(siblings=[SimpleNamespace(rfilename=name) for name in listing])

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)


@pytest.fixture(scope="module")
def ours_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ours")
    build_pipeline(
        "tiny", defaults=GenerationDefaults(prior_steps=2, decoder_steps=2, upsampler_steps=2)
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory, ours_dir) -> Path:
    path = tmp_path_factory.mktemp("hf_cache")
    put_in_cache(path, "tiny-org/ours", ours_dir)
    return path


def test_our_layout_by_hub_id_gives_the_directory_images(cache, ours_dir):
    by_id = UnCLIPPipeline.from_pretrained("tiny-org/ours", cache_dir=cache)
    assert torch.equal(images(by_id), images(UnCLIPPipeline.from_pretrained(ours_dir)))
    by_commit = UnCLIPPipeline.from_pretrained("tiny-org/ours", revision=COMMIT, cache_dir=str(cache))
    assert torch.equal(images(by_commit), images(by_id))


@pytest.fixture(scope="module")
def karlo_cache(tmp_path_factory) -> tuple[Path, Path]:
    """(a cache holding a tiny random diffusers UnCLIP pipeline as ``kakaobrain/karlo-v1-alpha``, its source)."""
    pytest.importorskip("diffusers")
    from unclip.interop.random_pipeline import RandomUnCLIPSpec, build_random_diffusers_unclip, save_diffusers_unclip

    root = tmp_path_factory.mktemp("karlo_tiny")
    source = save_diffusers_unclip(build_random_diffusers_unclip(RandomUnCLIPSpec(seed=0)), root / "diffusers")
    put_in_cache(root / "cache", KARLO_ID, source)
    (root / "cache" / "models--kakaobrain--karlo-v1-alpha" / "refs" / "v1").write_text(COMMIT)  # a tag
    return root / "cache", source


def test_diffusers_layout_by_hub_id_gives_the_directory_images(karlo_cache):
    cache, source = karlo_cache
    by_id = UnCLIPPipeline.from_pretrained(KARLO_ID, revision="v1", cache_dir=cache)
    assert by_id.defaults.sampler == "unclip" and by_id.decoder_uncond == "empty_text"  # read as diffusers' layout
    assert torch.equal(images(by_id), images(UnCLIPPipeline.from_pretrained(source)))


def test_karlo_files_by_hub_id_are_read_as_karlo(tmp_path):
    """The snapshot of a repository of Karlo's release files is claimed by the Karlo loader (which
    tests/interop/test_karlo_import.py exercises on real tiny checkpoints)."""
    from unclip.pipeline.formats import find_format

    source = tmp_path / "karlo"
    (source / "clip").mkdir(parents=True)
    for name in ["prior-ckpt-step=01000000-of-01000000.ckpt", "decoder-ckpt-step=01000000-of-01000000.ckpt"]:
        (source / name).write_bytes(b"x")
    (source / "improved-sr-ckpt-step=1.2M.ckpt").write_bytes(b"y")
    (source / "ViT-L-14_stats.th").write_bytes(b"z")
    (source / "clip" / "config.json").write_text("{}")
    put_in_cache(tmp_path / "cache", "someone/karlo-release", source)
    directory = unclip_hub.resolve_model_dir("someone/karlo-release", cache_dir=tmp_path / "cache")
    assert directory.name == COMMIT and find_format(directory, None).name == "karlo"


def test_uncached_revision_and_unknown_id_offline_are_one_line_errors(cache):
    with pytest.raises(FileNotFoundError) as err:
        UnCLIPPipeline.from_pretrained("tiny-org/ours", revision="v2", cache_dir=cache)
    message = str(err.value)
    assert "'tiny-org/ours' (revision v2)" in message and "HF_HUB_OFFLINE=1" in message and "\n" not in message
    with pytest.raises(FileNotFoundError) as err:
        UnCLIPPipeline.from_pretrained("nobody/nothing", cache_dir=cache)
    message = str(err.value)
    assert "'nobody/nothing' (revision main)" in message and "not in the local Hugging Face cache" in message
    assert "\n" not in message


def test_unknown_id_and_revision_online_are_one_line_errors(monkeypatch, cache):
    from huggingface_hub.utils import RepositoryNotFoundError, RevisionNotFoundError

    class NoRepo(RepositoryNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error.\n\nRepository Not Found for url: ...")

    class NoRevision(RevisionNotFoundError):
        def __init__(self) -> None:
            Exception.__init__(self, "404 Client Error.\n\nRevision Not Found for url: ...")

    go_online(monkeypatch, error=NoRepo())
    with pytest.raises(FileNotFoundError, match=r"^model not found: 'nobody/nothing' is no local directory and no "):
        UnCLIPPipeline.from_pretrained("nobody/nothing", cache_dir=cache)
    go_online(monkeypatch, error=NoRevision())
    with pytest.raises(FileNotFoundError, match=r"^hub model 'tiny-org/ours' has no revision 'v9' on the Hugging"):
        UnCLIPPipeline.from_pretrained("tiny-org/ours", revision="v9", cache_dir=cache)


def test_unreachable_hub_falls_back_to_the_cache(monkeypatch, cache, ours_dir):
    go_online(monkeypatch, error=ConnectionError("Failed to resolve 'huggingface.co'"))
    pipe = UnCLIPPipeline.from_pretrained("tiny-org/ours", cache_dir=cache)
    assert torch.equal(images(pipe), images(UnCLIPPipeline.from_pretrained(ours_dir)))
    with pytest.raises(FileNotFoundError) as err:
        UnCLIPPipeline.from_pretrained("nobody/nothing", cache_dir=cache)
    assert "the Hub is unreachable (ConnectionError: Failed to resolve" in str(err.value)


def test_online_fetches_only_what_the_loaders_read(monkeypatch, cache):
    listing = [
        "README.md",
        "model_index.json",
        "prior/config.json",
        "prior/diffusion_pytorch_model.bin",
        "prior/diffusion_pytorch_model.safetensors",
        "prior/diffusion_pytorch_model.fp16.safetensors",
        "decoder/diffusion_pytorch_model.bin",
        "text_encoder/pytorch_model.bin",
        "text_encoder/model.safetensors",
        "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt",
        "super_res_first/diffusion_pytorch_model.safetensors.index.json",
        "super_res_first/diffusion_pytorch_model-00001-of-00002.safetensors",
        "super_res_first/diffusion_pytorch_model-00002-of-00002.safetensors",
        "super_res_first/diffusion_pytorch_model-00001-of-00002.bin",
    ]
    seen = {}

    def snapshot_download(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        return str(next((cache / "models--tiny-org--ours" / "snapshots").iterdir()))

    go_online(monkeypatch, listing=listing)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    UnCLIPPipeline.from_pretrained("tiny-org/ours", revision="main", cache_dir=cache)
    assert seen["repo_id"] == "tiny-org/ours" and seen["revision"] == "main" and not seen["local_files_only"]
    assert seen["allow_patterns"] == [
        "model_index.json",
        "prior/config.json",
        "prior/diffusion_pytorch_model.safetensors",
        "decoder/diffusion_pytorch_model.bin",
        "text_encoder/model.safetensors",
        "tokenizer/merges.txt",
        "super_res_first/diffusion_pytorch_model.safetensors.index.json",
        "super_res_first/diffusion_pytorch_model-00001-of-00002.safetensors",
        "super_res_first/diffusion_pytorch_model-00002-of-00002.safetensors",
    ]


def test_karlo_release_selection_matches_the_karlo_loader():
    from unclip.interop import diffusers_import, karlo_import
    from unclip.interop.formats import KARLO_CHECKPOINTS

    assert unclip_hub.WEIGHT_PREFERENCE[1] == diffusers_import._WEIGHT_NAMES
    assert unclip_hub.KARLO_FILES == (*KARLO_CHECKPOINTS, karlo_import._STATS_FILE)
    listing = [
        "prior-ckpt-step=01000000-of-01000000.ckpt",
        "decoder-ckpt-step=01000000-of-01000000.ckpt",
        "improved-sr-ckpt-step=1.2M.ckpt",
        "ViT-L-14.pt",  # OpenAI's pickled CLIP: the loader reads the transformers CLIP in clip/ instead
        "ViT-L-14_stats.th",
        "configs/prior_1B_vit_l.yaml",
        "clip/config.json",
        "clip/model.safetensors",
        "clip/vocab.json",
        "other/old-prior.ckpt",
    ]
    assert unclip_hub.select_files(listing) == [n for n in listing if n not in ("ViT-L-14.pt", "other/old-prior.ckpt")]


def test_what_counts_as_a_hub_id(monkeypatch, tmp_path, ours_dir, cache):
    assert unclip_hub.is_hub_id("org/name") and not unclip_hub.is_hub_id("shapes")
    assert not unclip_hub.is_hub_id(Path("org/name")) and not unclip_hub.is_hub_id("a/b/c")
    assert not unclip_hub.is_hub_id("/name") and not unclip_hub.is_hub_id("org/")
    # an existing local directory wins over the hub id it looks like (nothing is cached under that id)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(ours_dir, tmp_path / "local" / "pipe")
    assert not unclip_hub.is_hub_id("local/pipe")
    UnCLIPPipeline.from_pretrained("local/pipe", cache_dir=cache)


def test_missing_huggingface_hub_is_a_one_line_import_error(monkeypatch, tmp_path):
    from unclip.cli.main import cli

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r'^loading a hub id \("org/name"\) needs huggingface_hub: pip install'):
        UnCLIPPipeline.from_pretrained("org/name")
    args = ["generate", "a red circle", "--model", "org/name", "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)  # the CLI's one-line error, no traceback
    assert result.exit_code == 1 and 'pip install "unclip[hub]"' in result.output and "Traceback" not in result.output


def test_cli_generate_with_a_hub_id_writes_a_png(monkeypatch, tmp_path, cache):
    from unclip.cli.main import cli

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import, too
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a red circle", "--model", "tiny-org/ours", "--seed", "0", "-q", "-o", "out.png"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (32, 32)
    result = CliRunner().invoke(cli, [*args[:3], "nobody/nothing", *args[4:]], catch_exceptions=False)
    assert result.exit_code != 0 and "'nobody/nothing' (revision main) is not in the local" in result.output


def test_docs_command_for_karlo_writes_a_png(monkeypatch, tmp_path, karlo_cache):
    """docs/interop.md "Real weights": ``unclip generate "..." --model kakaobrain/karlo-v1-alpha --precision bf16
    -o out.png``, offline, on the tiny stand-in."""
    from unclip.cli.main import cli

    cache, _ = karlo_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a red circle", "--model", KARLO_ID, "--precision", "bf16", "-o", "out.png"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "out.png").size == (32, 32)
