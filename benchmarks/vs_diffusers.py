"""Our UnCLIPPipeline against diffusers' UnCLIPPipeline on the same weights, steps, sampler and seed.

    python benchmarks/vs_diffusers.py [--size small|tiny] [--steps N] [--batch 1] [--repeats 3] [--threads 2]

One random-weight diffusers pipeline of the chosen size (``small``: prior ~25M, decoder ~40M at 64 px,
super-resolution ~5M at 256 px, as issue 6 asks; ``tiny``: the unit-test size) is saved with diffusers'
``save_pretrained`` and loaded by both libraries (ours: ``UnCLIPPipeline.from_pretrained`` on that directory,
which imports it with sampler "unclip" and best-of 1). Both run the default 25/25/7 steps (``--steps N``: N for
every stage) with guidance 4/8 from ``torch.Generator().manual_seed(seed)``, alternating, after one warm-up
run each. Printed: per-stage and total wall time (median over repeats) and their ratio ours/diffusers, the
peak resident-memory increase during a run, and the largest pixel difference between the two outputs.

Stage boundaries are taken at the first forward call of each stage's network (text+prior | decoder |
super-resolution), so each stage includes its own scheduler arithmetic. Absolute times on a shared machine
are noisy; the ratio of runs made side by side in one process is the number to read.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
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


def _stage_clock(modules: dict[str, list[torch.nn.Module]]):
    """Forward pre-hooks that record the first call time of each stage; returns (marks, remove)."""
    marks: dict[str, float] = {}
    handles = []
    for stage, mods in modules.items():

        def hook(*_, stage=stage) -> None:  # must return None: a returned value would replace the inputs
            marks.setdefault(stage, time.perf_counter())

        handles += [m.register_forward_pre_hook(hook) for m in mods]
    return marks, lambda: [h.remove() for h in handles]


def _split(marks: dict[str, float], start: float, end: float) -> dict[str, float]:
    """Stage times: prior = start .. first decoder call, decoder = .. first SR call, SR = .. end."""
    d, s = marks["decoder"], marks["super_res"]
    return {"prior": d - start, "decoder": s - d, "super_res": end - s, "total": end - start}


def run_diffusers(pipe, steps, batch, seed) -> tuple[dict[str, float], np.ndarray, float]:
    marks, remove = _stage_clock({"decoder": [pipe.decoder], "super_res": [pipe.super_res_first, pipe.super_res_last]})
    with PeakRSS() as mem, torch.no_grad():
        start = time.perf_counter()
        out = pipe(
            [PROMPT] * batch, generator=torch.Generator().manual_seed(seed), prior_num_inference_steps=steps[0],
            decoder_num_inference_steps=steps[1], super_res_num_inference_steps=steps[2], output_type="np",
        ).images  # fmt: skip
        end = time.perf_counter()
    remove()
    return _split(marks, start, end), out, mem.increase_mib


def run_ours(pipe, steps, batch, seed) -> tuple[dict[str, float], np.ndarray, float]:
    up = pipe.upsamplers[0]
    marks, remove = _stage_clock({"decoder": [pipe.decoder.model], "super_res": [up.model, up.last_step_model]})
    with PeakRSS() as mem:
        start = time.perf_counter()
        out = pipe(
            [PROMPT] * batch, generator=torch.Generator().manual_seed(seed), prior_steps=steps[0],
            decoder_steps=steps[1], upsampler_steps=steps[2], sampler="unclip", best_of=1, output_type="np",
        )  # fmt: skip
        end = time.perf_counter()
    remove()
    return _split(marks, start, end), out, mem.increase_mib


def count(*modules) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "tiny"], default="small")
    parser.add_argument("--steps", type=int, default=None, help="steps for every stage (default 25/25/7)")
    parser.add_argument("--batch", type=int, default=1, help="prompts per call")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
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
    theirs.set_progress_bar_config(disable=True)
    print(
        f"size {args.size}: prior {count(theirs.prior):.2f}M, decoder {count(theirs.decoder, theirs.text_proj):.2f}M "
        f"({theirs.decoder.config.sample_size} px), super-res {count(theirs.super_res_first):.2f}M x 2 "
        f"({theirs.super_res_first.config.sample_size} px); steps {steps}; batch {args.batch}; "
        f"threads {args.threads}; torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    warm = (2, 2, 2)
    run_diffusers(theirs, warm, args.batch, args.seed)
    run_ours(ours, warm, args.batch, args.seed)
    times: dict[str, list[dict[str, float]]] = {"ours": [], "diffusers": []}
    memory: dict[str, list[float]] = {"ours": [], "diffusers": []}
    diff = 0.0
    for _ in range(args.repeats):
        t_ref, ref, m_ref = run_diffusers(theirs, steps, args.batch, args.seed)
        t_ours, mine, m_ours = run_ours(ours, steps, args.batch, args.seed)
        times["diffusers"].append(t_ref)
        times["ours"].append(t_ours)
        memory["diffusers"].append(m_ref)
        memory["ours"].append(m_ours)
        diff = max(diff, float(np.abs(ref - mine).max()))
    med = {k: {s: statistics.median(r[s] for r in v) for s in (*STAGES, "total")} for k, v in times.items()}
    print(f"{'stage':<10} {'ours s':>9} {'diffusers s':>12} {'ratio':>7}")
    for s in (*STAGES, "total"):
        a, b = med["ours"][s], med["diffusers"][s]
        print(f"{s:<10} {a:>9.3f} {b:>12.3f} {a / b:>7.3f}")
    print(
        f"peak RSS increase (MiB): ours {max(memory['ours']):.1f}, diffusers {max(memory['diffusers']):.1f}; "
        f"max |pixel difference| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
