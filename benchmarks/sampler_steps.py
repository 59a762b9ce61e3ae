"""Decoder sampler and step count against speed and oracle-measured quality on held-out shapes captions.

    python benchmarks/sampler_steps.py --model shapes --json docs/sampler_steps.json
    python benchmarks/sampler_steps.py --settings ddpm@25,ddim@10,dpm++@8 --captions 12 --images-per-caption 4

For the first ``--captions`` one-object captions of the held-out world (seed 999, as in
``benchmarks/pipeline_quality.py``; never tuned on), the prior runs once at the pipeline's defaults and its
image embeddings z_i are shared by every setting, so settings differ only in the decoder's sampler and step
count (the upsamplers keep the default sampler and steps; the decoder's starting noise is the same for every
setting). Per setting ``sampler@steps`` it reports:

- wall time of one batched decode of all images (decoder, and decoder + upsamplers), after a warm-up;
- oracle specified-attribute accuracy (mean over the attributes the captions name, and "all right");
- oracle Fréchet distance (``unclip.measure.metrics.frechet_distance`` on ``oracle_features``) to real renders
  of the same captions: scenes drawn from the same world conditioned on each caption (rejection sampling of
  ``ShapesWorld.sample_scene``), ``--real-per-caption`` per caption. The "real renders" row is a second,
  independent set of real renders of the same size as each generated set: the FD floor at this N.

Samplers: "ddpm" (ancestral), "ddim" (eta 0), "dpm++" (DPM-Solver++(2M)); "dpm_solver" is accepted for
"dpm++". Prints a markdown table; ``--json`` writes everything.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_SETTINGS = "ddpm@25,ddim@10,ddim@15,ddim@25,dpm++@5,dpm++@8,dpm++@10,dpm++@15"
ALIASES = {"dpm_solver": "dpm++", "dpm-solver": "dpm++", "dpmsolver": "dpm++"}
MAX_TRIES = 500_000


def parse_settings(text: str) -> list[tuple[str, int]]:
    """Parse "ddpm@25,ddim@10" into [("ddpm", 25), ("ddim", 10)]; sampler aliases resolved, steps >= 1."""
    from unclip.samplers import SAMPLER_NAMES

    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, sep, steps = item.partition("@")
        name = ALIASES.get(name.strip(), name.strip())
        if not sep or name not in SAMPLER_NAMES or name == "unclip" or not steps.strip().isdigit():
            raise ValueError(f"bad setting {item!r}: expected sampler@steps with sampler in ddpm, ddim, dpm++")
        if int(steps) < 1:
            raise ValueError(f"bad setting {item!r}: steps must be >= 1")
        out.append((name, int(steps)))
    if not out:
        raise ValueError(f"no settings in {text!r}")
    return out


def scene_matches(scene, spec: dict[str, Any]) -> bool:
    """Whether a one-object ``scene`` satisfies a one-object caption ``spec`` (every named attribute)."""
    if len(scene.objects) != len(spec["objects"]) or len(scene.objects) != 1:
        return False
    if spec.get("background") is not None and scene.background != spec["background"]:
        return False
    obj = scene.objects[0]
    return all(getattr(obj, key) == value for key, value in spec["objects"][0].items())


def caption_scenes(world, spec: dict[str, Any], count: int, rng: np.random.Generator) -> list:
    """``count`` scenes of ``world`` conditioned on the one-object caption ``spec`` (exact, by rejection)."""
    if len(spec["objects"]) != 1:
        raise ValueError(f"only one-object captions are supported, got {spec!r}")
    scenes, tries = [], 0
    while len(scenes) < count:
        scene = world.sample_scene(rng)
        tries += 1
        if scene_matches(scene, spec):
            scenes.append(scene)
        elif tries > MAX_TRIES:
            raise RuntimeError(f"no scene matching {spec!r} in {MAX_TRIES} draws")
    return scenes


def render_scenes(world, scenes: list, size: int) -> torch.Tensor:
    """Scenes -> [N, 3, size, size] in [-1, 1]."""
    arr = np.stack([world.render(s, size) for s in scenes]).astype(np.float32)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1


def score(oracle, images: torch.Tensor, specs: list[dict[str, Any]], per_caption: int) -> dict[str, Any]:
    """Oracle accuracy of images [N, 3, H, W] in [-1, 1] (caption-major, ``per_caption`` each) and features."""
    from unclip.measure.oracle import oracle_features, pooled_accuracy, predict, score_specified

    preds = predict(oracle, images)
    scores = [score_specified(p, specs[i // per_caption]) for i, p in enumerate(preds)]
    accuracy = pooled_accuracy(scores)
    named = [k for k in accuracy if k not in ("all", "count")]
    return {
        "accuracy": accuracy,
        "mean_accuracy": statistics.fmean(accuracy[k] for k in named),
        "features": oracle_features(oracle, images),
    }


def timed_decode(pipe, z_i, text, settings, sampler: str, seed: int) -> tuple[torch.Tensor, float, float]:
    """One batched decode with the decoder's ``sampler``; returns (images [-1, 1], decoder s, total s)."""
    marks: dict[str, float] = {}

    def progress(stage: str, step: int, total: int) -> None:
        if not stage.startswith("upsampler"):
            marks["decoder_end"] = time.perf_counter()

    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    images = pipe.decode(z_i, text, settings, generator, sampler=sampler, progress=progress)
    end = time.perf_counter()
    return images.float().clamp(-1, 1), marks.get("decoder_end", end) - start, end - start


@torch.no_grad()
def run(
    model: str = "shapes",
    settings_text: str = DEFAULT_SETTINGS,
    seed: int = 999,
    captions: int = 12,
    images_per_caption: int = 4,
    real_per_caption: int = 16,
    log=print,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Measure every setting; returns the JSON-able results (see the module docstring)."""
    from unclip import UnCLIPPipeline
    from unclip.data.shapes import ShapesWorld
    from unclip.measure.metrics import frechet_distance
    from unclip.measure.oracle import load_oracle
    from unclip.measure.quality import held_out_captions

    settings_list = parse_settings(settings_text)
    pipe = UnCLIPPipeline.from_pretrained(model)
    pipe.set_progress_bar_config(disable=True)
    if precision == "bf16":
        pipe.to("cpu", torch.bfloat16)  # networks in bf16 (prior included), sampler arithmetic in float32
    oracle = load_oracle()
    samples = held_out_captions(seed, captions, objects=1)
    specs = [s.specified for s in samples]
    prompts = [s.caption for s in samples]
    size = pipe.image_size

    # real renders of the same captions: a reference set, and a floor set as large as each generated set
    world, rng = ShapesWorld(seed=seed), np.random.default_rng([seed, 1])
    t0 = time.perf_counter()
    real_ref, real_floor = [], []
    for spec in specs:
        scenes = caption_scenes(world, spec, real_per_caption + images_per_caption, rng)
        real_ref += scenes[:real_per_caption]
        real_floor += scenes[real_per_caption:]
    ref_features = score(oracle, render_scenes(world, real_ref, size), specs, real_per_caption)["features"]
    floor = score(oracle, render_scenes(world, real_floor, size), specs, images_per_caption)
    log(f"real renders: {len(real_ref)} + {len(real_floor)} in {time.perf_counter() - t0:.1f} s")

    # the prior once, at the pipeline's defaults
    defaults = pipe.defaults
    index = torch.arange(len(prompts)).repeat_interleave(images_per_caption)
    text = pipe.embed_prompts(prompts)[index]
    t0 = time.perf_counter()
    z_i = pipe.run_prior(text, defaults, torch.Generator().manual_seed(seed * 100_003), None)
    prior_s = time.perf_counter() - t0
    log(f"prior ({defaults.sampler}@{defaults.prior_steps}, best of {defaults.best_of}): {prior_s:.1f} s")
    timed_decode(pipe, z_i[:2], text[:2], replace(defaults, decoder_steps=2, upsampler_steps=2), "ddim", 0)  # warm

    rows = []
    for sampler, steps in settings_list:
        images, decoder_s, total_s = timed_decode(
            pipe, z_i, text, replace(defaults, decoder_steps=steps), sampler, seed * 100_003 + 1
        )
        s = score(oracle, images, specs, images_per_caption)
        row = {"sampler": sampler, "steps": steps, "decoder_s": decoder_s, "decode_s": total_s,
               "mean_accuracy": s["mean_accuracy"], "accuracy": s["accuracy"],
               "fd": frechet_distance(s["features"], ref_features)}  # fmt: skip
        rows.append(row)
        log(f"{sampler}@{steps}: decoder {decoder_s:.1f} s, +upsampler {total_s:.1f} s, "
            f"accuracy {row['mean_accuracy']:.3f}, FD {row['fd']:.2f}")  # fmt: skip
    real_row = {"mean_accuracy": floor["mean_accuracy"], "accuracy": floor["accuracy"],
                "fd": frechet_distance(floor["features"], ref_features)}  # fmt: skip
    return {
        "model": model,
        "precision": precision,
        "model_date": model_date(model),
        "run_date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_1min_end": os.getloadavg()[0],
        "seed": seed,
        "captions": captions,
        "images_per_caption": images_per_caption,
        "real_per_caption": real_per_caption,
        "images": captions * images_per_caption,
        "defaults": asdict(defaults),
        "image_size": size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prior_s": prior_s,
        "rows": rows,
        "real_renders": real_row,
    }


def model_date(model: str) -> str | None:
    """UTC modification time of the model's ``model_index.json`` (tells which model was measured)."""
    from unclip.pipeline.options import BUILTIN_MODELS, INDEX_FILE, builtin_model_dir

    directory = builtin_model_dir(model) if model in BUILTIN_MODELS else Path(model)
    index = directory / INDEX_FILE
    if not index.is_file():
        return None
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(index.stat().st_mtime))


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of :func:`run`'s result."""
    base = next((r for r in result["rows"] if (r["sampler"], r["steps"]) == ("ddpm", 25)), result["rows"][0])
    lines = [
        f"{result['images']} images ({result['captions']} held-out one-object captions x "
        f"{result['images_per_caption']}, world seed {result['seed']}), {result['image_size']} px, "
        f"{result['threads']} threads; prior once at the defaults ({result['prior_s']:.1f} s); FD reference: "
        f"{result['real_per_caption']} real renders per caption",
        "",
        "| decoder sampler@steps | decoder s | decoder s per step | decoder+upsampler s | speed-up vs "
        f"{base['sampler']}@{base['steps']} | specified-attribute accuracy | all right | oracle FD |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['sampler']}@{r['steps']} | {r['decoder_s']:.1f} | {r['decoder_s'] / r['steps']:.2f} | "
            f"{r['decode_s']:.1f} | "
            f"{base['decode_s'] / r['decode_s']:.2f}x | {r['mean_accuracy']:.3f} | {r['accuracy']['all']:.3f} | "
            f"{r['fd']:.2f} |"
        )
    real = result["real_renders"]
    lines.append(
        f"| real renders (floor) | | | | | {real['mean_accuracy']:.3f} | {real['accuracy']['all']:.3f} | "
        f"{real['fd']:.2f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes", help="built-in model name or pipeline directory")
    parser.add_argument("--settings", default=DEFAULT_SETTINGS, help="comma-separated sampler@steps")
    parser.add_argument("--seed", type=int, default=999, help="world seed of the held-out captions")
    parser.add_argument("--captions", type=int, default=12)
    parser.add_argument("--images-per-caption", type=int, default=4)
    parser.add_argument("--real-per-caption", type=int, default=16, help="real renders per caption (FD reference)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="the pipeline's dtype")
    args = parser.parse_args(argv)
    try:
        parse_settings(args.settings)
    except ValueError as err:
        parser.error(str(err))
    for name in ("captions", "images_per_caption", "real_per_caption"):
        if getattr(args, name) < (2 if name == "real_per_caption" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    torch.set_num_threads(args.threads)
    result = run(args.model, args.settings, args.seed, args.captions, args.images_per_caption, args.real_per_caption,
                 log=lambda m: print(f"  {m}", flush=True), precision=args.precision)  # fmt: skip
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n")
    return result


if __name__ == "__main__":
    main()
