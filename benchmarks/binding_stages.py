"""Where is a two-object caption's binding lost? The same binding score at each stage of the chain (issue 19).

    python benchmarks/binding_stages.py --model shapes --seed 998 --captions 48 --images 4

For "a C1 S1 REL a C2 S2" captions of held-out two-object scenes (``unclip.measure.quality.binding_samples``),
the oracle reads, and ``binding_row`` scores against the caption (all right, per object, colours swapped):

1. ``truth``: the true scene rendered at the final size (the oracle's ceiling);
2. ``resolution``: that render downscaled to the decoder's size (antialiased bicubic) and taken back up by the
   pipeline's upsamplers at its defaults (what the 32-px decoder output and the upsampler can keep);
3. ``decoder(z_i)``: the decoder from the true render's own CLIP image embedding, without the caption;
4. ``decoder(z_i, text)``: the same with the caption's token states, as in text-to-image;
5. ``chain``: the prior's sample for the caption, then the decoder with the caption (text-to-image).

Stages 3-5 draw ``--images`` images per caption at the model's defaults (``--set FIELD=VALUE`` overrides one,
e.g. ``--set prior_guidance_scale=2``); ``--stages`` runs a subset (``--stages chain``).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

COLUMNS = ("all", "per_object", "relation", "colours_swapped")
STAGES = ("truth", "resolution", "decoder(z_i)", "decoder(z_i, text)", "chain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--seed", type=int, default=998, help="World seed of the captions (998 tuning, 999 held out).")
    parser.add_argument("--captions", type=int, default=48)
    parser.add_argument("--images", type=int, default=4, help="Images per caption for the sampled stages.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16", help="the pipeline's dtype")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="Override a generation default (e.g. prior_guidance_scale=2); repeatable.")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unclip import UnCLIPPipeline
    from unclip.data.shapes import ShapesWorld
    from unclip.data.shapes_captions import caption_from_spec
    from unclip.measure.oracle import load_oracle, predict
    from unclip.measure.quality import binding_row, binding_samples, binding_spec
    from unclip.pipeline.options import override_defaults
    from unclip.stages.decoding import sample_upsampler

    pipe = UnCLIPPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    if args.precision == "bf16":
        pipe.to("cpu", torch.bfloat16)  # networks in bf16, sampler arithmetic in float32
    try:
        settings = override_defaults(pipe.defaults, args.set)
    except ValueError as err:
        parser.error(f"--set {err}")
    oracle = load_oracle()
    world = ShapesWorld(seed=args.seed, two_object_prob=1.0)
    samples = binding_samples(args.seed, args.captions)
    specs = [binding_spec(s) for s in samples]
    renders = [world.render(s.scene, pipe.image_size) for s in samples]
    truth = torch.stack([torch.from_numpy(r).permute(2, 0, 1).float() / 127.5 - 1 for r in renders])
    z_true = pipe.embed_images([Image.fromarray(r) for r in renders])
    text = pipe.embed_prompts([caption_from_spec(spec) for spec in specs])

    def score(images: torch.Tensor, repeats: int = 1) -> dict[str, float]:
        preds = predict(oracle, images.float().clamp(-1, 1))
        rows = [binding_row(p, specs[i // repeats]) for i, p in enumerate(preds)]
        return {k: sum(float(r[k]) for r in rows) / len(rows) for k in COLUMNS}

    def repeat(t: torch.Tensor) -> torch.Tensor:
        return t.repeat_interleave(args.images, dim=0)

    def decode_chunks(z: torch.Tensor, with_text: bool) -> torch.Tensor:
        out = []
        for start in range(0, z.shape[0], 32):
            index = torch.arange(start, min(start + 32, z.shape[0])) // args.images
            caption = text[index] if with_text else None
            out.append(pipe.decode(z[start : start + 32], caption, settings, torch.Generator().manual_seed(start)))
        return torch.cat(out)

    results: dict[str, dict[str, float]] = {}
    t0 = time.time()
    if "truth" in args.stages:
        results["truth"] = score(truth)
    with torch.no_grad():
        if "resolution" in args.stages:
            base_size = pipe.decoder.model.config.image_size
            low = F.interpolate(truth, size=(base_size, base_size), mode="bicubic", antialias=True, align_corners=False)
            image = low.clamp(-1, 1).to(pipe.device, pipe.dtype)
            for stage in pipe.upsamplers:
                image = sample_upsampler(
                    stage.model, stage.diffusion, image, steps=settings.upsampler_steps, sampler=settings.sampler,
                    eta=settings.eta, generator=torch.Generator().manual_seed(0), last_step_model=stage.last_step_model,
                    keep_mean=settings.upsampler_keep_mean,
                )  # fmt: skip
            results["resolution"] = score(image)
        if "decoder(z_i)" in args.stages:
            results["decoder(z_i)"] = score(decode_chunks(repeat(z_true), with_text=False), args.images)
        if "decoder(z_i, text)" in args.stages:
            results["decoder(z_i, text)"] = score(decode_chunks(repeat(z_true), with_text=True), args.images)
        if "chain" in args.stages:
            z_prior = pipe.run_prior(text[repeat(torch.arange(len(specs)))], settings,
                                     torch.Generator().manual_seed(args.seed), None)  # fmt: skip
            results["chain"] = score(decode_chunks(z_prior, with_text=True), args.images)
    print(f"{args.model}: {len(specs)} binding captions of seed {args.seed}, {args.images} images per sampled stage, "
          f"{time.time() - t0:.0f} s")  # fmt: skip
    print("| stage | " + " | ".join(COLUMNS) + " |\n|---|" + "---|" * len(COLUMNS))
    for name, row in results.items():
        print(f"| {name} | " + " | ".join(f"{row[k]:.3f}" for k in COLUMNS) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        record = {"model": args.model, "seed": args.seed, "set": args.set, "stages": results}
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
