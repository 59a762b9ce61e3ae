"""Issue 3's "what it would take": train the built-in model's 32-px decoder with far more compute (a GPU) and
measure reconstruction with the oracle, against the shipped (CPU-trained) decoder on the same rows.

    python benchmarks/gpu_decoder_scaling.py --out /tmp/gpurun --runs A:256:1e-3 B:512:1.5e-3 --budget-s 520

Steps, all inside one wall budget (``--budget-s``, the device machine's per-command limit):

1. **Cache**: render ``--cache-size`` fresh samples of ``ShapesWorld(--world-seed)`` (seed 5 by default, so
   that the shapes4 cache's held-out rows, world seed 0, are never trained on) and embed them with the
   built-in CLIP (the same one the shipped pipeline uses), rendering in ``--render-workers`` processes.
2. **Calibrate**: every run config trains 60 steps, all at once, to read its concurrent images/s.
3. **Train** every config at once through ``unclip train decoder`` (the recipe's settings otherwise: v
   prediction, learned-range variance, hybrid loss, z_i dropped 10%, text 50%, EMA 0.999), with the step
   count that fills the remaining budget (less a reserve for evaluation) and ``--max-minutes`` as a guard.
4. **Evaluate**: the built-in pipeline decodes the new cache's held-out rows from z_i (no caption, decoder
   guidance 3, 25 DDPM steps, the shipped upsampler to 64 px) with the shipped decoder and with each new
   one; the oracle compares each decode with its source's record (as ``decoder_reconstruction.py``).

Writes ``summary.json`` (times, step counts, images seen, learning curves from the training evaluation,
agreement tables) and each run's exported decoder under ``--out``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

CALIB_STEPS = 60


def parse_run(spec: str) -> dict:
    """ "NAME:BATCH:LR" -> {"name", "batch", "lr"}."""
    try:
        name, batch, lr = spec.split(":")
        return {"name": name, "batch": int(batch), "lr": float(lr)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"run spec must be NAME:BATCH:LR, got {spec!r}") from None


def train_command(cache: Path, out: Path, run: dict, steps: int, args, extra: list[str]) -> list[str]:
    warmup = min(args.warmup, max(1, steps // 10))
    return [
        sys.executable, "-m", "unclip.cli", "train", "decoder", "--cache", str(cache), "-o", str(out),
        "--preset", args.preset, "--steps", str(steps), "--batch-size", str(run["batch"]), "--lr", str(run["lr"]),
        "--warmup-steps", str(warmup), "--ema-decay", "0.999", "--device", args.device, "--no-progress",
        "--no-resume", *extra,
    ]  # fmt: skip


def run_all(commands: list[list[str]], logs: list[Path]) -> None:
    """Start every command at once; wait for all; raise naming the first that failed (its log's tail)."""
    procs = []
    for cmd, log in zip(commands, logs):
        procs.append(subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT))
    codes = [p.wait() for p in procs]
    for code, log in zip(codes, logs):
        if code != 0:
            raise RuntimeError(f"{log.name} failed (exit {code}):\n{log.read_text()[-3000:]}")


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def reconstruction(pipe, decoder_dir: Path | None, cache, rows: list[int], batch: int) -> dict:
    """:func:`unclip.measure.quality.reconstruction_quality` of the pipeline, ``decoder_dir``'s weights swapped in."""
    from unclip.measure.oracle import load_oracle
    from unclip.measure.quality import reconstruction_quality
    from unclip.models.serialization import load_model

    if decoder_dir is not None:
        pipe.decoder.model.load_state_dict(load_model("decoder", decoder_dir).state_dict())
    return reconstruction_quality(pipe, load_oracle(device=pipe.device), cache, rows, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", type=parse_run, nargs="+", default=[parse_run("A:256:1e-3")])
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--cache-size", type=int, default=120_000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--world-seed", type=int, default=5)
    parser.add_argument("--render-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--budget-s", type=float, default=520.0, help="Wall budget for everything.")
    parser.add_argument("--eval-reserve-s", type=float, default=75.0, help="Kept for the final evaluation.")
    parser.add_argument("--eval-rows", type=int, default=1000)
    parser.add_argument("--eval-batch", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--curve-points", type=int, default=5, help="Training evaluations per run.")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--calib-steps", type=int, default=CALIB_STEPS)
    args = parser.parse_args()
    t_start = time.monotonic()
    elapsed = lambda: time.monotonic() - t_start  # noqa: E731
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "device": args.device}
    if args.device.startswith("cuda"):
        summary["gpu"] = torch.cuda.get_device_name(0)
    print(f"[{elapsed():.0f}s] device {summary.get('gpu', args.device)}", flush=True)

    from unclip.data.embed_cache import EmbeddingCache
    from unclip.data.shapes import ShapesWorld
    from unclip.data.shapes_cache import build_shapes_cache
    from unclip.encoders.loading import load_clip

    cache_dir = args.out / "cache"
    clip = load_clip("shapes", device=args.device)
    build_shapes_cache(
        cache_dir, clip, args.cache_size, ShapesWorld(seed=args.world_seed), 64, clip_name="shapes",
        progress=False, render_workers=args.render_workers,
    )  # fmt: skip
    del clip
    summary["cache_s"] = elapsed()
    print(f"[{elapsed():.0f}s] cache of {args.cache_size} rows built", flush=True)

    holdout = ["--holdout", str(args.holdout)]
    calib = [
        train_command(cache_dir, args.out / f"calib_{r['name']}", r, args.calib_steps, args,
                      [*holdout, "--eval-every", "0", "--ckpt-every", "0", "--log-every", str(args.calib_steps // 3)])
        for r in args.runs
    ]  # fmt: skip
    t0 = elapsed()
    run_all(calib, [args.out / f"calib_{r['name']}.log" for r in args.runs])
    summary["calibration_s"] = elapsed() - t0
    train_s = args.budget_s - elapsed() - args.eval_reserve_s
    if train_s < 30:
        raise RuntimeError(f"only {train_s:.0f} s left for training after the cache and calibration")
    commands, logs = [], []
    for r in args.runs:
        rate = metrics(args.out / f"calib_{r['name']}")[-1]["samples_per_s"]
        # Start-up (cache load, CUDA context) is inside the budget; 0.9 leaves room for it.
        r["steps"] = max(10, int(0.9 * (train_s - 25) * rate / r["batch"]))
        r["calib_images_per_s"] = rate
        every = max(1, r["steps"] // args.curve_points)
        extra = [*holdout, "--eval-every", str(every), "--ckpt-every", "0", "--log-every", "50",
                 "--max-minutes", f"{(train_s - 20) / 60:.2f}"]  # fmt: skip
        commands.append(train_command(cache_dir, args.out / r["name"], r, r["steps"], args, extra))
        logs.append(args.out / f"{r['name']}.log")
        print(f"[{elapsed():.0f}s] {r['name']}: {rate:.0f} img/s concurrent -> {r['steps']} steps", flush=True)
    t0 = elapsed()
    run_all(commands, logs)
    summary["train_wall_s"] = elapsed() - t0
    for r in args.runs:
        recs = metrics(args.out / r["name"])
        train_recs = [m for m in recs if "samples_per_s" in m]
        r["steps_done"] = max(m["step"] for m in recs)
        r["images_seen"] = r["steps_done"] * r["batch"]
        r["train_time_s"] = train_recs[-1].get("time_s") if train_recs else None
        r["final_loss"] = train_recs[-1].get("loss") if train_recs else None
        r["curve"] = [{k: v for k, v in m.items() if k == "step" or "oracle" in k or "eval" in k}
                      for m in recs if any("eval" in k or "oracle" in k for k in m)]  # fmt: skip
    summary["runs"] = args.runs
    print(f"[{elapsed():.0f}s] training done", flush=True)

    from unclip import UnCLIPPipeline

    cache = EmbeddingCache.load(cache_dir)
    rows = list(range(len(cache) - min(args.eval_rows, args.holdout), len(cache)))
    pipe = UnCLIPPipeline.from_pretrained("shapes").to(args.device, torch.float32)
    summary["reconstruction"] = {"shipped": reconstruction(pipe, None, cache, rows, args.eval_batch)}
    for r in args.runs:
        summary["reconstruction"][r["name"]] = reconstruction(pipe, args.out / r["name"] / "model", cache, rows,
                                                              args.eval_batch)  # fmt: skip
    summary["total_s"] = elapsed()
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for name, rec in summary["reconstruction"].items():
        a, o = rec["all_rows"], rec["one_object"]
        print(f"{name}: " + " ".join(f"{k} {a[k]:.3f}/{o.get(k, float('nan')):.3f}" for k in sorted(a)), flush=True)
    print(f"[{elapsed():.0f}s] done", flush=True)


if __name__ == "__main__":
    main()
