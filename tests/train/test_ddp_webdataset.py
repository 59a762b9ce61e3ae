"""Two CPU processes (torchrun, gloo) over a tiny webdataset: ``unclip embed`` splits the shards between the
ranks, then ``unclip train decoder`` trains data-parallel on the cache they wrote (one torchrun launch: this
file is also its script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from unclip.data.embed_cache import EmbeddingCache
from unclip.data.shapes import ShapesWorld
from unclip.data.webdataset_source import write_webdataset
from unclip.pipeline.builder import tiny_clip


def main() -> None:
    """torchrun entry: ``unclip embed`` on every rank, a barrier, then ``unclip train decoder`` (one launch)."""
    import torch.distributed as dist

    from unclip.cli.main import cli

    embed_args, train_args = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    dist.init_process_group("gloo")  # run_training uses this group
    cli.main(args=embed_args, prog_name="unclip", standalone_mode=False)
    dist.barrier()  # every rank's parts are written before anyone trains
    cli.main(args=train_args, prog_name="unclip", standalone_mode=False)
    dist.destroy_process_group()


def test_two_processes_embed_and_train_decoder(tmp_path):
    world = ShapesWorld(seed=2)
    samples = []
    for i in range(20):
        s = world.sample(i)
        samples.append((world.render(s.scene, 24), s.caption, None))
    samples[9] = (b"broken", "a broken image", None)
    write_webdataset(tmp_path / "wds", samples, per_shard=5, image_format="png")  # 4 shards
    clip_dir = tiny_clip(0).save_pretrained(tmp_path / "clip")
    cache, out = tmp_path / "cache", tmp_path / "decoder"
    embed = ["embed", "--clip", str(clip_dir), str(tmp_path / "wds"), str(cache), "--size", "16", "--threads", "1",
             "--no-progress"]  # fmt: skip
    train = ["train", "decoder", "--cache", str(cache), "-o", str(out), "--preset", "tiny", "--holdout", "3",
             "--steps", "3", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--log-every", "1",
             "--eval-every", "0", "--no-progress"]  # fmt: skip
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "--monitor-interval=0.1", __file__, json.dumps(embed), json.dumps(train)]  # fmt: skip
    res = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    assert "rank 0/2: embedded 10 images in 2 new part(s)" in res.stdout
    assert "rank 1/2: embedded 9 images in 2 new part(s); skipped: unreadable_image 1" in res.stdout
    loaded = EmbeddingCache.load(cache)
    assert len(loaded) == 19 and loaded.keys[8:10] == ["000010003", "000020000"]  # shard order; 000010004 was bad

    assert "data parallel over 2 processes" in res.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 3 and np.all(np.isfinite(losses))
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["batch_size"] == 4


if __name__ == "__main__":
    main()
