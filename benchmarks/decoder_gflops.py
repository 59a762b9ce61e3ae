"""Achieved GFLOP/s of one decoder sampling step against this CPU's measured matmul peak.

    python benchmarks/decoder_gflops.py                   # the `small` random pipeline's decoder, fp32 and bf16
    python benchmarks/decoder_gflops.py --precisions fp32 --batch 2 --threads 2

The decoder is the `small` pipeline's of ``benchmarks/vs_diffusers.py`` (45 M parameters, 64 px), loaded through
our diffusers importer, run as the samplers run it: ``decoder.conditioned(...)`` once, then the per-step call on a
guided batch ([uncond; cond], ``--batch`` images -> 2 x batch rows). FLOPs of that call are counted by
``torch.utils.flop_counter.FlopCounterMode`` (convolutions, matmuls, attention; elementwise work is not counted,
so the figure is a lower bound of the work done). The peak is the best of ``--matmul-size``² matmuls in the
same dtype and thread count (what the convolutions and attention could at most reach).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_seconds(fn, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(size: int, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of the fastest ``size``² @ ``size``² matmul (2 n³ FLOPs)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    return 2 * size**3 / best_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def decoder_step(batch: int, dtype: torch.dtype):
    """(step function, its FLOPs) for one guided step of the `small` decoder on ``2 * batch`` rows."""
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).parent))
    from vs_diffusers import spec_for

    from unclip.interop.random_pipeline import build_random_diffusers_unclip, save_diffusers_unclip
    from unclip.pipeline import UnCLIPPipeline
    from unclip.stages.decoding import concat_conditioning, decoder_conditioning

    with tempfile.TemporaryDirectory() as tmp:
        directory = save_diffusers_unclip(build_random_diffusers_unclip(spec_for("small")), Path(tmp) / "p")
        pipe = UnCLIPPipeline.from_pretrained(directory)
    pipe.to("cpu", dtype)
    decoder = pipe.decoder.model
    g = torch.Generator().manual_seed(0)
    z = torch.randn(batch, pipe.clip.dim, generator=g)
    text = pipe.clip.embed_text(["a red circle"] * batch)
    cond, uncond = decoder_conditioning(decoder, z, text, pipe._decoder_null_text())
    size = decoder.config.image_size
    x = torch.randn(2 * batch, 3, size, size, generator=g).to(dtype)
    t = torch.full((2 * batch,), 500, dtype=torch.long)
    with torch.no_grad():
        net = decoder.conditioned(**concat_conditioning(uncond, cond))

        def step() -> None:
            with torch.no_grad():
                net(x, t)

        counter = FlopCounterMode(display=False)
        with counter:
            step()
    return step, int(counter.get_total_flops()), sum(p.numel() for p in decoder.parameters())


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--batch", type=int, default=1, help="images (the guided step runs 2 x batch rows)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in [p.strip() for p in args.precisions.split(",") if p.strip()]:
        if name not in DTYPES:
            parser.error(f"unknown precision {name!r}; choose from {sorted(DTYPES)}")
        dtype = DTYPES[name]
        step, flops, params = decoder_step(args.batch, dtype)
        seconds = best_seconds(step, args.repeats)
        peak = matmul_peak_gflops(args.matmul_size, dtype, args.repeats)
        achieved = flops / seconds / 1e9
        rows.append({"precision": name, "decoder_parameters": params, "rows": 2 * args.batch, "gflop": flops / 1e9,
                     "step_s": seconds, "achieved_gflops": achieved, "matmul_peak_gflops": peak,
                     "fraction_of_peak": achieved / peak})  # fmt: skip
    print(f"decoder step ({rows[0]['decoder_parameters'] / 1e6:.1f} M, {2 * args.batch} rows), {args.threads} threads")
    print("| precision | GFLOP per step | step s | achieved GFLOP/s | matmul peak GFLOP/s | fraction of peak |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['precision']} | {r['gflop']:.1f} | {r['step_s']:.3f} | {r['achieved_gflops']:.0f} | "
              f"{r['matmul_peak_gflops']:.0f} | {r['fraction_of_peak']:.2f} |")  # fmt: skip
    result = {"threads": args.threads, "batch": args.batch, "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
