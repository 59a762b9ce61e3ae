"""Our UnCLIPPipeline against diffusers' UnCLIPPipeline on the same weights, steps, sampler and seed.

    python benchmarks/vs_diffusers.py [--size small|tiny] [--steps N] [--batch 1] [--repeats 3] [--threads 2]
                                      [--ours-precision fp32|bf16]

One random-weight diffusers pipeline of the chosen size (``small``: prior ~25M, decoder ~40M at 64 px,
super-resolution ~5M at 256 px, as issue 6 asks; ``tiny``: the unit-test size) is saved with diffusers'
``save_pretrained`` and loaded by both libraries (ours: ``UnCLIPPipeline.from_pretrained`` on that directory,
which imports it with sampler "unclip" and best-of 1). Both run the default 25/25/7 steps (``--steps N``: N for
every stage) with guidance 4/8 from ``torch.Generator().manual_seed(seed)``, alternating, after one warm-up
run each. Printed: per-stage and total wall time and CPU time (process time, all threads; less sensitive to
other processes' load than wall time), medians over repeats, with their ratio ours/diffusers; the peak
resident-memory increase during a run; the largest and mean pixel difference between the two outputs.
``--json PATH`` writes all of it. ``--ours-precision bf16`` runs our pipeline in bfloat16 (``pipe.to("cpu",
torch.bfloat16)``: the networks in bf16, the sampler arithmetic in float32) against diffusers in float32 —
diffusers 0.42 cannot run its UnCLIPPipeline in bf16 on a CPU (its antialiased resize has no bf16 kernel).

Stage boundaries are taken at the first forward call of each stage's network (ours: of its first U-Net
block) (text+prior | decoder | super-resolution), so each stage includes its own scheduler arithmetic.
Absolute times on a shared machine are noisy; the ratio of runs made side by side in one process is the number to read.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

STAGES = ("prior", "decoder", "super_res")
PROMPT = "a large red circle in the center on a white background"


def spec_for(size: str):
    from unclip.interop.random_pipeline import RandomUnCLIPSpec

    if size == "tiny":
        return RandomUnCLIPSpec()
    if size == "small":
        return RandomUnCLIPSpec(
            clip_dim=256, text_len=77, text_layers=2, text_heads=4, prior_layers=8, prior_heads=8, prior_head_dim=64,
            decoder_size=64, decoder_channels=(64, 128, 192, 320), decoder_attention=(False, True, True, True),
            decoder_layers=3, decoder_head_dim=32, decoder_groups=32, context_width=256, sr_size=256,
            sr_channels=(32, 64, 96, 128), sr_layers=2, sr_groups=32,
        )  # fmt: skip
    raise ValueError(f"unknown size {size!r}")


class PeakRSS:
    """Peak resident set size (bytes) while active, sampled every 2 ms from /proc/self/statm."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0
        self._stop = threading.Event()

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def increase_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _now() -> tuple[float, float]:
    """(wall clock, CPU time of this process: all its threads), in seconds."""
    return time.perf_counter(), time.process_time()


def _stage_clock(modules: dict[str, list[torch.nn.Module]]):
    """Forward pre-hooks that record the first call time of each stage; returns (marks, remove)."""
    marks: dict[str, tuple[float, float]] = {}
    handles = []
    for stage, mods in modules.items():

        def hook(*_, stage=stage) -> None:  # must return None: a returned value would replace the inputs
            if stage not in marks:
                marks[stage] = _now()

        handles += [m.register_forward_pre_hook(hook) for m in mods]
    return marks, lambda: [h.remove() for h in handles]


def _split(marks: dict[str, tuple[float, float]], start, end) -> dict[str, dict[str, float]]:
    """Stage times, wall and CPU: prior = start .. first decoder call, decoder = .. first SR call, SR = .. end."""
    out = {}
    for i, clock in enumerate(("wall", "cpu")):
        d, s = marks["decoder"][i], marks["super_res"][i]
        out[clock] = {"prior": d - start[i], "decoder": s - d, "super_res": end[i] - s, "total": end[i] - start[i]}
    return out


def run_diffusers(pipe, steps, batch, seed) -> tuple[dict[str, dict[str, float]], np.ndarray, float]:
    marks, remove = _stage_clock({"decoder": [pipe.decoder], "super_res": [pipe.super_res_first, pipe.super_res_last]})
    with PeakRSS() as mem, torch.no_grad():
        start = _now()
        out = pipe(
            [PROMPT] * batch, generator=torch.Generator().manual_seed(seed), prior_num_inference_steps=steps[0],
            decoder_num_inference_steps=steps[1], super_res_num_inference_steps=steps[2], output_type="np",
        ).images  # fmt: skip
        end = _now()
    remove()
    return _split(marks, start, end), out, mem.increase_mib


def run_ours(pipe, steps, batch, seed) -> tuple[dict[str, dict[str, float]], np.ndarray, float]:
    up = pipe.upsamplers[0]
    # our samplers run the networks' per-step bodies (``conditioned``), not ``forward``: clock the first block
    first = lambda net: net.input_blocks[0]  # noqa: E731
    marks, remove = _stage_clock(
        {"decoder": [first(pipe.decoder.model)], "super_res": [first(up.model), first(up.last_step_model)]}
    )
    with PeakRSS() as mem:
        start = _now()
        out = pipe(
            [PROMPT] * batch, generator=torch.Generator().manual_seed(seed), prior_steps=steps[0],
            decoder_steps=steps[1], upsampler_steps=steps[2], sampler="unclip", best_of=1, output_type="np",
        ).images  # fmt: skip
        end = _now()
    remove()
    return _split(marks, start, end), out, mem.increase_mib


def count(*modules) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    parser.add_argument("--steps", type=int, default=None, help="steps for every stage (default 25/25/7)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--ours-precision", choices=["fp32", "bf16"], default="fp32", help="our pipeline's dtype")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be >= 2 (UnCLIPScheduler)")
    torch.set_num_threads(args.threads)
    steps = (args.steps,) * 3 if args.steps else (25, 25, 7)

    import diffusers
    from diffusers.utils import logging as diffusers_logging

    from unclip import UnCLIPPipeline
    from unclip.interop.random_pipeline import build_random_diffusers_unclip, save_diffusers_unclip

    diffusers_logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as tmp:
        directory = save_diffusers_unclip(build_random_diffusers_unclip(spec_for(args.size)), Path(tmp) / "p")
        theirs = diffusers.UnCLIPPipeline.from_pretrained(str(directory))
        ours = UnCLIPPipeline.from_pretrained(directory)
    if args.ours_precision == "bf16":
        ours.to("cpu", torch.bfloat16)
    theirs.set_progress_bar_config(disable=True)
    ours.set_progress_bar_config(disable=True)
    setup = {
        "size": args.size, "prior_m": count(theirs.prior), "decoder_m": count(theirs.decoder, theirs.text_proj),
        "decoder_px": theirs.decoder.config.sample_size, "super_res_m": count(theirs.super_res_first),
        "super_res_px": theirs.super_res_first.config.sample_size, "steps": list(steps), "batch": args.batch,
        "threads": args.threads, "repeats": args.repeats, "torch": torch.__version__,
        "diffusers": diffusers.__version__, "ours_precision": args.ours_precision,
    }  # fmt: skip
    print(
        f"size {args.size}: prior {setup['prior_m']:.2f}M, decoder {setup['decoder_m']:.2f}M "
        f"({setup['decoder_px']} px), super-res {setup['super_res_m']:.2f}M x 2 ({setup['super_res_px']} px); "
        f"steps {steps}; batch {args.batch}; threads {args.threads}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}; ours in {args.ours_precision}, diffusers in fp32"
    )
    warm = (2, 2, 2)
    run_diffusers(theirs, warm, args.batch, args.seed)
    run_ours(ours, warm, args.batch, args.seed)
    times: dict[str, list[dict[str, dict[str, float]]]] = {"ours": [], "diffusers": []}
    memory: dict[str, list[float]] = {"ours": [], "diffusers": []}
    diff, mean_diff = 0.0, 0.0
    for _ in range(args.repeats):
        t_ref, ref, m_ref = run_diffusers(theirs, steps, args.batch, args.seed)
        t_ours, mine, m_ours = run_ours(ours, steps, args.batch, args.seed)
        times["diffusers"].append(t_ref)
        times["ours"].append(t_ours)
        memory["diffusers"].append(m_ref)
        memory["ours"].append(m_ours)
        diff = max(diff, float(np.abs(ref - mine).max()))
        mean_diff = max(mean_diff, float(np.abs(ref - mine).mean()))
    keys = (*STAGES, "total")
    med = {
        clock: {k: {s: statistics.median(r[clock][s] for r in v) for s in keys} for k, v in times.items()}
        for clock in ("wall", "cpu")
    }
    ratio = {clock: {s: m["ours"][s] / m["diffusers"][s] for s in keys} for clock, m in med.items()}
    header = ("stage", "ours s", "diffusers s", "ratio", "ours cpu s", "diff. cpu s", "ratio")
    print("{:<10} {:>9} {:>12} {:>7} {:>11} {:>12} {:>7}".format(*header))
    for s in keys:
        w, c = med["wall"], med["cpu"]
        print(
            f"{s:<10} {w['ours'][s]:>9.3f} {w['diffusers'][s]:>12.3f} {ratio['wall'][s]:>7.3f} "
            f"{c['ours'][s]:>11.3f} {c['diffusers'][s]:>12.3f} {ratio['cpu'][s]:>7.3f}"
        )
    print(
        f"peak RSS increase (MiB): ours {max(memory['ours']):.1f}, diffusers {max(memory['diffusers']):.1f}; "
        f"|pixel difference| max {diff:.2e}, mean {mean_diff:.2e}; load average {os.getloadavg()[0]:.1f}"
    )
    result = {
        **setup,
        "median_wall_s": med["wall"],
        "median_cpu_s": med["cpu"],
        "ratio_wall": ratio["wall"],
        "ratio_cpu": ratio["cpu"],
        "runs_s": times,
        "peak_rss_increase_mib": {k: max(v) for k, v in memory.items()},
        "max_pixel_difference": diff,
        "mean_pixel_difference": mean_diff,
        "load_average_1min_end": os.getloadavg()[0],
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
