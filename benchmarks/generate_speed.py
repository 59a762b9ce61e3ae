"""Wall time of ``unclip generate`` for 4 images at the model's default settings, per stage.

    python benchmarks/generate_speed.py [--model shapes] [--repeats 3] [--threads 2]

Prints the median over repeats of each stage's time (CLIP text encoding, prior, decoder, each upsampler)
and the total, after one warm-up run. Absolute times on a shared machine are noisy: read the per-stage
split and compare runs made side by side.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402


def timed_generate(pipe, prompt: str, n: int, seed: int) -> dict[str, float]:
    """One generation; returns seconds per stage (stage boundaries from the progress callback)."""
    marks: list[tuple[str, float]] = []

    def progress(stage: str, step: int, total: int) -> None:
        if not marks or marks[-1][0] != stage:
            marks.append((stage, time.perf_counter()))

    start = time.perf_counter()
    text_start = time.perf_counter()
    pipe.embed_prompts([prompt] * n)
    text_time = time.perf_counter() - text_start
    start = time.perf_counter()
    pipe(prompt, num_images_per_prompt=n, seed=seed, progress=progress)
    end = time.perf_counter()
    times = {"clip_text": text_time}
    for i, (stage, t0) in enumerate(marks):
        t1 = marks[i + 1][1] if i + 1 < len(marks) else end
        times[stage] = times.get(stage, 0.0) + (t1 - t0)
    times["total"] = end - start
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--prompt", default="a large red circle in the center on a white background")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unclip import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(args.model)
    d = pipe.defaults
    print(f"model {args.model}: sampler {d.sampler}, steps prior/decoder/upsampler {d.prior_steps}/"
          f"{d.decoder_steps}/{d.upsampler_steps}, best_of {d.best_of}, {args.num_images} images, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    timed_generate(pipe, args.prompt, args.num_images, seed=0)  # warm-up
    runs = [timed_generate(pipe, args.prompt, args.num_images, seed=i + 1) for i in range(args.repeats)]
    print(f"{'stage':<14}{'median s':>10}{'min s':>10}")
    for stage in runs[0]:
        values = [r.get(stage, 0.0) for r in runs]
        print(f"{stage:<14}{statistics.median(values):>10.2f}{min(values):>10.2f}")


if __name__ == "__main__":
    main()
