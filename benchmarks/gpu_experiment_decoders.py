"""Issue 20, item 5: train every decoder of the decoder comparisons (experiments 1, 2, 4, 7) side by side in one
GPU call, with one recipe, and write them where ``unclip experiment NAME --decoders OUT`` reads them.

The three decoders (:data:`unclip.experiments.models.CONDITIONINGS`: unCLIP's z_i decoder, the caption-only
GLIDE-like baseline, the decoder trained on z_t) share the ``shapes`` preset and the shipped decoder's recipe
(batch 512, lr 1.5e-3, EMA 0.999). One short calibration run of the ``image`` decoder measures samples/s, and
every decoder then trains the same number of steps, sized so that all three fit ``--seconds`` in all (equal
budgets). The cache is the experiments' clean-clone cache (the built-in model's CLIP, 30,000 rows of world seed 0
at 64 px) built here, or ``--cache``.

On a lent GPU (one call, about 10 minutes):
    python benchmarks/gpu_experiment_decoders.py --out OUT --device cuda --seconds 420
then on the CPU, for each of diversity, prior_matters, guidance_fid and binding:
    unclip experiment diversity --budget full --decoders OUT
Smoke run on a CPU (tiny cache and preset):
    python benchmarks/gpu_experiment_decoders.py --out /tmp/d --device cpu --cache CACHE --preset tiny \
        --batch-size 8 --seconds 10 --calibrate-steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def calibrated_steps(samples_per_s: float, seconds: float, batch_size: int, decoders: int, minimum: int = 20) -> int:
    """Steps of ``batch_size`` each of ``decoders`` decoders can train within ``seconds`` in all (90% of it)."""
    if samples_per_s <= 0 or seconds <= 0:
        raise ValueError(f"need positive throughput and seconds, got {samples_per_s} samples/s, {seconds} s")
    return max(minimum, int(0.9 * seconds * samples_per_s / (batch_size * decoders)))


def _last_samples_per_s(run: Path) -> float:
    rates = [json.loads(line).get("samples_per_s") for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r for r in rates if r]
    if not rates:
        raise RuntimeError(f"the calibration run {run} logged no throughput")
    return float(rates[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Where decoder_{image,caption,text_embedding}/ go.")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=420.0, help="Training time for all three decoders.")
    parser.add_argument("--cache", type=Path, default=None, help="Shapes cache [default: build the clean-clone one].")
    parser.add_argument("--work", type=Path, default=None, help="Scratch run directory [default: OUT/_work].")
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--calibrate-steps", type=int, default=30)
    parser.add_argument("--holdout", type=int, default=1000)
    args = parser.parse_args(argv)

    from unclip.experiments.common import ExperimentContext
    from unclip.experiments.models import CONDITIONINGS, GPU_DECODERS, comparison_decoder

    work = args.work or args.out / "_work"
    ctx = ExperimentContext(run_root=work / "runs", shapes_run=work / "shapes", cache=args.cache, holdout=args.holdout,
                            device=args.device, progress=False, log=lambda m: print(m, flush=True))  # fmt: skip
    t0 = time.monotonic()
    ctx.get_cache()  # builds the clean-clone cache when none is given
    cache_s = time.monotonic() - t0
    budget = replace(GPU_DECODERS, preset=args.preset, batch_size=args.batch_size, lr=args.lr)
    calibration = replace(budget, name="calibration", steps=args.calibrate_steps, warmup_steps=1)
    comparison_decoder(ctx, "image", calibration)
    models = ctx.run_dir("_models", uses=("cache",))
    rate = _last_samples_per_s(models / "calibration" / "decoder_image")
    budget = replace(budget, steps=calibrated_steps(rate, args.seconds, budget.batch_size, len(CONDITIONINGS)))
    print(f"calibration: {rate:.0f} samples/s -> {budget.steps} steps x {budget.batch_size} per decoder", flush=True)
    summary = {"budget": asdict(budget), "calibration_samples_per_s": rate, "cache_seconds": cache_s, "decoders": {}}
    for conditioning in CONDITIONINGS:
        t = time.monotonic()
        stage = comparison_decoder(ctx, conditioning, budget)
        src = models / budget.name / f"decoder_{conditioning}"
        dst = args.out / f"decoder_{conditioning}"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src / "model", dst / "model")
        for name in ("done.json", "metrics.jsonl"):
            shutil.copy(src / name, dst / name)
        summary["decoders"][conditioning] = {"steps": stage.train_steps, "seconds": time.monotonic() - t,
                                             "params": stage.params}  # fmt: skip
        print(f"{conditioning}: {stage.train_steps} steps in {time.monotonic() - t:.0f} s", flush=True)
    summary["recipe"] = "benchmarks/gpu_experiment_decoders.py " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


if __name__ == "__main__":
    main()
