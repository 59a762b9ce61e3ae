"""Issue 15, training integrity and resources: checksummed checkpoints, one-line load errors, resume refusing
any result-changing setting, orphaned temp files, embed/cache identity, resource bounds, convert by name.

Tiny models and caches only; the cases that crashed or ate memory before the fix run in a subprocess with
an address-space limit, so that on old code they fail instead of taking the machine down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from _toy_task import ToyTask  # noqa: E402

from unclip.cli.main import cli  # noqa: E402
from unclip.data.image_folder import write_image_folder  # noqa: E402
from unclip.data.shapes import ShapesWorld  # noqa: E402
from unclip.data.shapes_cache import build_shapes_cache  # noqa: E402
from unclip.pipeline.builder import tiny_clip  # noqa: E402
from unclip.train import TrainConfig, run_training  # noqa: E402

ENV = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def cfg(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=8, lr=1e-2, warmup_steps=1, log_every=1, ckpt_every=2, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache")
    build_shapes_cache(path, tiny_clip(), num=24, world=ShapesWorld(seed=0), size=16, progress=False)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(0).save_pretrained(tmp_path_factory.mktemp("clip") / "clip")


def _folder(root: Path, seed: int, n: int = 8) -> Path:
    world = ShapesWorld(seed=seed)
    rows = [(f"{i:03d}.png", world.render(world.sample(i).scene, 16), world.sample(i).caption) for i in range(n)]
    return write_image_folder(root, rows)


def _decoder_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "decoder", "--cache", str(cache), "-o", str(out), "--preset", "tiny", "--holdout", "4",
        "--steps", "2", "--batch-size", "4", "--eval-every", "0", "--ckpt-every", "0", "--log-every", "1",
        "--device", "cpu", "--no-progress", *extra,
    ]  # fmt: skip


def test_flipped_bytes_in_checkpoint_refuse_resume(tmp_path):
    """issue 15 item 1: 64 flipped bytes in checkpoint.pt are refused (resume and --init-from), naming the file."""
    run_training(ToyTask(hidden=64), cfg(), tmp_path / "a", progress=False)
    path = tmp_path / "a" / "checkpoint.pt"
    ckpt = torch.load(path, weights_only=True)  # still a plain weights_only checkpoint
    raw = bytearray(path.read_bytes())
    weight = ckpt["model"]["0.weight"].numpy().tobytes()
    at = raw.find(weight)
    assert at > 0
    raw[at + 64 : at + 128] = bytes(b ^ 0xFF for b in raw[at + 64 : at + 128])
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["step"] == 4  # torch alone notices nothing
    with pytest.raises(ValueError, match="checksum does not match") as err:
        run_training(ToyTask(hidden=64), cfg(), tmp_path / "a", progress=False)
    assert str(path) in str(err.value) and one_line(str(err.value))
    assert isinstance(ckpt["sha256"], str) and len(ckpt["sha256"]) == 64
    with pytest.raises(ValueError, match="checksum does not match"):
        run_training(ToyTask(hidden=64), cfg(init_from=str(tmp_path / "a")), tmp_path / "b", progress=False)
    # a checkpoint written before checksums existed loads, with a warning
    run_training(ToyTask(), cfg(), tmp_path / "c", progress=False)
    old = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    del old["sha256"]
    torch.save(old, tmp_path / "c" / "checkpoint.pt")
    with pytest.warns(UserWarning, match="no checksum"):
        assert run_training(ToyTask(), cfg(), tmp_path / "c", progress=False).step == 4


def test_empty_or_truncated_checkpoint_one_line_error(tmp_path):
    """issue 15 item 2: empty and truncated checkpoints give one-line errors; --trust-pickle only where it exists."""
    from unclip.io import safe_torch_load

    run_training(ToyTask(), cfg(), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    good = path.read_bytes()
    for data, words in ((b"", "empty"), (good[: len(good) // 2], "truncated"), (good[:-7], "truncated")):
        path.write_bytes(data)
        with pytest.raises(ValueError, match=words) as err:
            run_training(ToyTask(), cfg(), tmp_path / "run", progress=False)
        message = str(err.value)
        assert one_line(message) and str(path) in message and "trust-pickle" not in message
    # a file that needs full unpickling: the hint names the option only where the caller has it
    import argparse

    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "pickled.pt")
    with pytest.raises(ValueError, match="--trust-pickle"):
        safe_torch_load(tmp_path / "pickled.pt", pickle_hint="--trust-pickle")
    with pytest.raises(ValueError, match="full unpickling") as err:
        safe_torch_load(tmp_path / "pickled.pt", pickle_hint=None)
    assert "trust-pickle" not in str(err.value) and one_line(str(err.value))
    path.write_bytes((tmp_path / "pickled.pt").read_bytes())
    with pytest.raises(ValueError, match="full unpickling") as err:
        run_training(ToyTask(), cfg(), tmp_path / "run", progress=False)
    assert "trust-pickle" not in str(err.value)


def test_resume_refuses_every_result_changing_setting(cache_dir, tmp_path):
    """issue 15 item 3: --prediction, --holdout, --text-drop, --snr-gamma (and any other task setting) refused."""
    runner = CliRunner()
    out = tmp_path / "run"
    first = runner.invoke(cli, _decoder_args(cache_dir, out))
    assert first.exit_code == 0, first.output
    for extra, name in (
        (["--prediction", "eps"], "prediction"),
        (["--holdout", "6"], "holdout"),
        (["--text-drop", "0.2"], "text_drop"),
        (["--snr-gamma", "5"], "snr_gamma"),
        (["--norm-groups", "2"], "norm_groups"),
        (["--image-embedding-grid", "2"], "image_embedding_grid"),
        (["--lr", "0.5"], "lr"),
        (["--lr-scale", "clip_emb=10"], "lr_scales"),
    ):
        result = runner.invoke(cli, _decoder_args(cache_dir, out, *extra))
        assert result.exit_code == 1, (extra, result.output)
        assert name in result.output and "checkpoint has" in result.output and one_line(result.output), result.output
    assert json.loads((out / "model" / "diffusion.json").read_text())["prediction"] == "v"  # not overwritten
    allowed = runner.invoke(cli, _decoder_args(cache_dir, out, "--log-every", "2", "--threads", "1"))
    assert allowed.exit_code == 0, allowed.output
    # derived from the config dataclass: every field but the evaluation-only ones and the cache's location
    from dataclasses import fields

    from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig
    from unclip.train.settings import task_settings

    settings = task_settings(DecoderTask(DecoderTaskConfig(cache=str(cache_dir), preset="tiny", holdout=4)))
    for field in fields(DecoderTaskConfig):
        if not field.name.startswith("eval_") and field.name != "cache":
            assert any(k.startswith(f"config.{field.name}") for k in settings), field.name
    assert not any("eval_" in k for k in settings) and "cache.clip_sha256" in settings


def test_lr_scale_option_errors_name_the_bad_value(cache_dir, tmp_path):
    runner = CliRunner()
    for value, message in (("clip_emb", "'clip_emb' is not PREFIX=FACTOR"), ("clip_emb=-1", "'clip_emb=-1' is not")):
        result = runner.invoke(cli, _decoder_args(cache_dir, tmp_path / "bad", "--lr-scale", value))
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(cli, _decoder_args(cache_dir, tmp_path / "typo", "--lr-scale", "clip_embedding=10"))
    assert result.exit_code == 1 and "'clip_embedding' matches no trainable parameter" in result.output, result.output
    ok = runner.invoke(cli, _decoder_args(cache_dir, tmp_path / "ok", "--lr-scale", "clip_emb=10"))
    assert ok.exit_code == 0, ok.output
    saved = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert saved["lr_scales"] == [["clip_emb", 10.0]], saved


def test_orphaned_tmp_files_removed_when_training_starts(tmp_path):
    """issue 15 item 4: temp files of interrupted atomic writes are removed from the run directory."""
    run_training(ToyTask(), cfg(), tmp_path, progress=False)
    orphans = [tmp_path / ".checkpoint.pt.k2j4_x.tmp", tmp_path / "model" / ".model.safetensors.a8b.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"half a file")
    keep = [tmp_path / "notes.tmp", tmp_path / "notes.txt"]
    for path in keep:
        path.write_text("mine")
    assert run_training(ToyTask(), cfg(), tmp_path, progress=False).step == 4
    assert not any(p.exists() for p in orphans)
    assert all(p.exists() for p in keep)


def test_embed_resume_compares_resolved_paths_and_cache_records_its_clip(clip_dir, tmp_path, monkeypatch):
    """issue 15 item 5: embed resumes by resolved path; a cache built by another CLIP is not reused."""
    _folder(tmp_path / "a" / "folder", seed=1)
    _folder(tmp_path / "b" / "folder", seed=2)  # same name and row count, other images
    runner = CliRunner()
    args = ["embed", "--clip", str(clip_dir), "--size", "16", "--part-size", "4", "--no-progress", "--device", "cpu"]
    monkeypatch.chdir(tmp_path / "a")
    out = tmp_path / "cache"
    result = runner.invoke(cli, [*args, "folder", str(out)])
    assert result.exit_code == 0, result.output
    same = runner.invoke(cli, [*args, str(tmp_path / "a" / "folder"), str(out)])  # the same dir, spelled absolute
    assert same.exit_code == 0, same.output
    monkeypatch.chdir(tmp_path / "b")
    other = runner.invoke(cli, [*args, "folder", str(out)])  # the same spelling, another dir
    assert other.exit_code == 1 and "source" in other.output, other.output
    # shapes caches (the recipe's) record the CLIP's weights and refuse another CLIP's cache
    from unclip.data.cache_settings import clip_fingerprint

    cache = tmp_path / "shapes_cache"
    clip_a = tiny_clip(0)
    build_shapes_cache(cache, clip_a, num=8, size=16, clip_name=str(clip_dir), progress=False)
    meta = json.loads((cache / "index.json").read_text())
    assert meta["clip_sha256"] == clip_fingerprint(clip_a) and meta["clip"] == str(clip_dir.resolve())
    with pytest.raises(ValueError, match="clip_sha256"):
        build_shapes_cache(cache, tiny_clip(1), num=8, size=16, clip_name=str(clip_dir), progress=False)
    moved = tmp_path / "moved_clip"
    clip_a.save_pretrained(moved)  # the same weights elsewhere: the same CLIP
    build_shapes_cache(cache, clip_a, num=8, size=16, clip_name=str(moved), progress=False)


_BOUNDS_SCRIPT = r"""
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # old code: a MemoryError, not a dead machine
sys.path.insert(0, sys.argv[4])
from click.testing import CliRunner
from unclip.cli.main import cli
from unclip.train import TrainConfig, run_training
from _toy_task import ToyTask

cache, folder, out = sys.argv[1:4]
decoder = ["train", "decoder", "--cache", cache, "--preset", "tiny", "--holdout", "4", "--steps", "1",
           "--device", "cpu", "--no-progress", "--eval-every", "0", "-o"]
embed = ["embed", "--clip", "shapes", "--size", "16", "--no-progress", "--device", "cpu", folder]

def case(name, call):
    try:
        result = call()  # CliRunner prints usage lines too; the console script shows only the "Error:" line
        lines = result.output.strip().splitlines()
        text, code = "\n".join(x for x in lines if x.startswith("Error:")) or result.output, result.exit_code
    except BaseException as err:
        text, code = f"{type(err).__name__}: {err}", -1
    print(json.dumps({"case": name, "code": code, "text": text}), flush=True)

def library(**kw):
    class R:
        pass
    r = R()
    try:
        run_training(ToyTask(), TrainConfig(steps=1, device="cpu", **kw), out + "/lib", progress=False)
        r.output, r.exit_code = "trained", 0
    except ValueError as err:
        r.output, r.exit_code = str(err), 2
    return r

run = CliRunner().invoke
case("lib_batch", lambda: library(batch_size=10**10))
case("decoder_batch", lambda: run(cli, decoder + [out + "/d1", "--batch-size", "1000000000"]))
case("embed_batch", lambda: run(cli, embed + [out + "/e1", "--batch-size", "1000000000"]))
case("decoder_threads", lambda: run(cli, decoder + [out + "/d2", "--threads", "100000"]))
case("embed_threads", lambda: run(cli, embed + [out + "/e2", "--threads", "100000"]))
case("lib_threads", lambda: library(num_threads=100000))
"""


def test_huge_batch_size_and_threads_refused_before_allocation(cache_dir, tmp_path, monkeypatch):
    """issue 15 item 6: --batch-size 1000000000 and --threads 100000 refused, naming option, limit and why."""
    folder = _folder(tmp_path / "folder", seed=3, n=4)
    args = [str(cache_dir), str(folder), str(tmp_path), str(Path(__file__).parents[1] / "train")]
    proc = subprocess.run(
        [sys.executable, "-c", _BOUNDS_SCRIPT, *args], env=ENV, capture_output=True, text=True, timeout=300
    )
    cases = {c["case"]: c for c in map(json.loads, proc.stdout.splitlines()) if c}
    assert len(cases) == 6, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    for name, option, why in (
        ("lib_batch", "batch_size", "memory"),
        ("decoder_batch", "--batch-size 1000000000", "memory"),
        ("embed_batch", "--batch-size 1000000000", "memory"),
        ("decoder_threads", "--threads 100000", "CPU"),
        ("embed_threads", "--threads 100000", "CPU"),
        ("lib_threads", "num_threads 100000", "CPU"),
    ):
        got = cases[name]
        assert got["code"] == 2 and option in got["text"] and why in got["text"], got
        assert "at most" in got["text"] and one_line(got["text"]), got
    # a normal batch of the 32-px decoder is not refused on a 16 GiB machine; an absurd one is
    import unclip.limits
    from unclip.limits import ResourceLimitError
    from unclip.train.bounds import check_train_batch
    from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig

    monkeypatch.setattr(unclip.limits, "available_memory_bytes", lambda: 16 * 2**30)
    build_shapes_cache(tmp_path / "c32", tiny_clip(), num=4, size=32, progress=False)
    task = DecoderTask(DecoderTaskConfig(cache=str(tmp_path / "c32"), preset="shapes", holdout=1))
    assert task.model_config.image_size == 32
    check_train_batch(task, cfg(batch_size=512))
    with pytest.raises(ResourceLimitError, match="--batch-size 100000 needs about"):
        check_train_batch(task, cfg(batch_size=100_000))
    # on a GPU the activations are checked against the device's free memory
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    check_train_batch(task, cfg(batch_size=256, device="cuda"))
    with pytest.raises(ResourceLimitError, match="--batch-size 100000 needs about .* the free memory of cuda"):
        check_train_batch(task, cfg(batch_size=100_000, device="cuda"))


def test_convert_accepts_builtin_model_names(tmp_path, monkeypatch):
    """issue 15 item 7: `unclip convert --from unclip` takes a built-in model's name as SRC."""
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", "--from", "unclip", "--to", "diffusers", "shapes", str(tmp_path / "x")])
    # found and loaded: the refusal is the real one (its own CLIP has no diffusers class), not "not found"
    assert result.exit_code == 1 and "OwnClipEncoder" in result.output and "not found" not in result.output
    copied = runner.invoke(cli, ["convert", "--from", "unclip", "--to", "unclip", "shapes", str(tmp_path / "copy"),
                                 "--dtype", "fp32"])  # fmt: skip
    assert copied.exit_code == 0, copied.output
    assert json.loads((tmp_path / "copy" / "model_index.json").read_text())["format"] == "unclip-pipeline"
    pytest.importorskip("diffusers")
    import unclip.pipeline.options as options
    from unclip.interop.random_pipeline import RandomUnCLIPSpec, build_random_diffusers_unclip, save_diffusers_unclip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_diffusers_unclip(build_random_diffusers_unclip(RandomUnCLIPSpec(seed=0)), tmp_path / "hf")
    imported = runner.invoke(cli, ["convert", "--from", "diffusers", str(tmp_path / "hf"), str(tmp_path / "ours")])
    assert imported.exit_code == 0, imported.output
    builtin_dir = options.builtin_model_dir
    monkeypatch.setattr(options, "BUILTIN_MODELS", (*options.BUILTIN_MODELS, "tiny-hf"))
    monkeypatch.setattr(options, "builtin_model_dir", lambda n: tmp_path / "ours" if n == "tiny-hf" else builtin_dir(n))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(cli, ["convert", "--from", "unclip", "--to", "diffusers", "tiny-hf", "back"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "back" / "model_index.json").read_text())["_class_name"] == "UnCLIPPipeline"
