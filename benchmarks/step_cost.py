"""Cost of one sampling step of each stage of a pipeline, per precision and OpenMP wait policy, side by side.

    python benchmarks/step_cost.py [--model shapes] [--precisions fp32 bf16] [--policies passive spin]

Each (precision, policy) runs in its own process, because OpenMP reads its wait policy when torch is imported:
``passive`` is ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep between parallel regions), ``spin`` is
``GOMP_SPINCOUNT=30000`` (what the CLI chooses on an idle machine, ``unclip.omp_policy``). In each, one stage's
step count is raised from 1 while the others stay at 1 (batch ``--num-images`` with the model's guidance), and
the per-step cost is the time difference over the extra steps (minimum of ``--repeats`` calls after a warm-up).
The last lines print every setting's ratio to the first one. Run it on an idle machine; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

POLICIES = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin": {"GOMP_SPINCOUNT": "30000"}}
EXTRA_STEPS = {"decoder": 10, "upsampler": 5, "prior": 20}


def measure(model: str, precision: str, num_images: int, repeats: int, threads: int) -> dict[str, float]:
    """Seconds per step of each stage, in this process (its wait policy fixed when torch was imported)."""
    import time

    import torch

    from unclip.pipeline import UnCLIPPipeline
    from unclip.precision import resolve_precision

    torch.set_num_threads(threads)
    pipe = UnCLIPPipeline.from_pretrained(model, device="cpu")
    pipe.to("cpu", resolve_precision(precision, "cpu"))
    pipe.set_progress_bar_config(disable=True)

    def call(**steps: int) -> float:
        kw = {"prior_steps": 1, "decoder_steps": 1, "upsampler_steps": 1} | {f"{k}_steps": v for k, v in steps.items()}
        pipe("a red circle", num_images_per_prompt=num_images, seed=0, **kw)  # warm-up at this shape
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            pipe("a red circle", num_images_per_prompt=num_images, seed=0, **kw)
            best = min(best, time.perf_counter() - start)
        return best

    base = call()
    return {"one-step call": base} | {
        stage: (call(**{stage: 1 + extra}) - base) / extra for stage, extra in EXTRA_STEPS.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--policies", nargs="+", default=["passive", "spin"], choices=sorted(POLICIES))
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=1, metavar="PRECISION", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.model, args.child[0], args.num_images, args.repeats, args.threads)))
        return
    rows = []
    for precision in args.precisions:
        for policy in args.policies:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            env |= POLICIES[policy]
            cmd = [sys.executable, __file__, "--child", precision, "--model", args.model, "--num-images",
                   str(args.num_images), "--repeats", str(args.repeats), "--threads", str(args.threads)]  # fmt: skip
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            rows.append((f"{precision} {policy}", json.loads(out.strip().splitlines()[-1])))
            cost = rows[-1][1]
            print(f"{rows[-1][0]:14s} " + "  ".join(f"{k} {v * 1e3:7.1f} ms" for k, v in cost.items()), flush=True)
    first_name, first = rows[0]
    for name, cost in rows[1:]:
        print(f"{name:14s} / {first_name}: " + "  ".join(f"{k} {cost[k] / first[k]:.2f}x" for k in first))


if __name__ == "__main__":
    main()
