"""Prior quality on held-out shapes captions: the table of docs/priors.md ("Results").

For the last ``--holdout`` rows of a shapes cache (never trained on), the mean cosine similarity of sampled
image embeddings to the true image embedding of the caption's image and to the caption's text embedding,
for the diffusion prior, the AR prior, the baseline that uses the text embedding directly and the
unconditional mean training image embedding (:mod:`unclip.measure.prior_metrics`); then, on the held-out rows
whose caption occurs at least twice among the training rows, the same methods next to what an ideal prior
would score (a training image with the same caption; the mean of those images).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/prior_quality.py --cache runs/shapes_cache \\
        --diffusion runs/prior_diffusion/model --ar runs/prior_ar/model --holdout 1000 --threads 2 \\
        --json runs/prior_quality.json

Sampling settings default to the pipeline's (diffusion: 25 DDPM steps, guidance 4, best-of-2, x0 clamp 10;
AR: top-half dot-product token, temperature 1, no guidance, best-of-1); override them with the options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True, help="shapes cache directory")
    parser.add_argument("--holdout", type=int, default=1000, help="trailing rows held out of training")
    parser.add_argument("--rows", type=int, default=None, help="score only ROWS held-out rows")
    parser.add_argument(
        "--row-offset", type=int, default=0, help="skip this many held-out rows first (e.g. a tuning part)"
    )
    parser.add_argument("--diffusion", default=None, help="exported diffusion prior directory")
    parser.add_argument("--ar", default=None, help="exported AR prior directory")
    parser.add_argument("--clip", default=None, help="the cache's CLIP (default: the one its index.json names)")
    parser.add_argument("--steps", type=int, default=25, help="diffusion prior sampler steps")
    parser.add_argument("--sampler", default="ddpm", help="diffusion prior sampler")
    parser.add_argument("--guidance", type=float, default=4.0, help="diffusion prior guidance scale")
    parser.add_argument("--best-of", type=int, default=2, help="diffusion prior best-of-k")
    parser.add_argument("--ar-guidance", type=float, default=1.0, help="AR prior guidance scale")
    parser.add_argument("--ar-temperature", type=float, default=1.0, help="AR prior temperature")
    parser.add_argument("--ar-dot-percentile", type=float, default=0.5, help="AR dot-token quantile (0.5 = top half)")
    parser.add_argument("--ar-best-of", type=int, default=1, help="AR prior best-of-k")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--no-references", action="store_true", help="skip the same-caption rows (ideal-prior references)"
    )
    parser.add_argument("--json", default=None, help="also write the results (and settings) here")
    args = parser.parse_args(argv)

    import torch

    from unclip.measure.prior_metrics import format_table, measure_prior_dirs, results_to_json

    if args.threads:
        torch.set_num_threads(args.threads)
    diffusion_kwargs = {"steps": args.steps, "sampler": args.sampler, "guidance_scale": args.guidance}
    diffusion_kwargs["best_of"] = args.best_of
    ar_kwargs = {
        "guidance_scale": args.ar_guidance,
        "temperature": args.ar_temperature,
        "dot_percentile": args.ar_dot_percentile,
        "best_of": args.ar_best_of,
    }
    t0 = time.perf_counter()
    results = measure_prior_dirs(
        args.cache,
        args.holdout,
        diffusion_dir=args.diffusion,
        ar_dir=args.ar,
        clip=args.clip,
        rows=args.rows,
        row_offset=args.row_offset,
        diffusion_kwargs=diffusion_kwargs,
        ar_kwargs=ar_kwargs,
        batch_size=args.batch_size,
        seed=args.seed,
        references=not args.no_references,
    )
    print(format_table(results))
    print(f"({time.perf_counter() - t0:.0f} s; diffusion {diffusion_kwargs}; AR {ar_kwargs})", file=sys.stderr)
    if args.json:
        record = {"settings": vars(args), "results": results_to_json(results)}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
