"""Issue 3's reconstruction check: decode held-out shapes images from their CLIP image embeddings and ask
the oracle whether the decoded image shows the same attributes as the source.

    python benchmarks/decoder_reconstruction.py --model runs/shapes3/pipeline --cache runs/shapes3/cache \
        --rows 200 --out docs/shapes_model/reconstruction.json

Rows are the cache's held-out tail (never trained on). The decoder gets z_i only (no caption), the
upsampler takes it to the final size, and the oracle compares with the source's attribute record.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--cache", required=True)
    parser.add_argument("--rows", type=int, default=200, help="Held-out rows (from the end of the cache).")
    parser.add_argument("--guidance", type=float, default=None, help="Decoder guidance (default: the model's).")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unclip import UnCLIPPipeline
    from unclip.data.embed_cache import EmbeddingCache
    from unclip.measure.oracle import load_oracle
    from unclip.measure.quality import reconstruction_quality

    pipe = UnCLIPPipeline.from_pretrained(args.model)

    pipe.set_progress_bar_config(disable=True)
    cache = EmbeddingCache.load(args.cache)
    oracle = load_oracle()
    settings = pipe._settings(decoder_guidance_scale=args.guidance, decoder_steps=args.steps)
    rows = list(range(len(cache) - args.rows, len(cache)))
    t0 = time.time()
    rec = reconstruction_quality(
        pipe, oracle, cache, rows, args.batch, settings, log=lambda m: print("  " + m, flush=True)
    )
    acc = rec["all_rows"]
    out = {
        "rows": len(rows),
        "decoder_guidance": settings.decoder_guidance_scale,
        "decoder_steps": settings.decoder_steps,
        "sampler": settings.sampler,
        "agreement_all_rows": acc,
        "agreement_one_object": rec["one_object"],
        "wall_s": time.time() - t0,
    }
    print("| attribute | agreement (all rows) | one-object rows |\n|---|---|---|")
    for key in sorted(acc):
        print(f"| {key} | {acc[key]:.3f} | {out['agreement_one_object'].get(key, float('nan')):.3f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
