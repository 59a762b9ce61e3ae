"""Where the decoder's colour cast comes from (issue 19): its x0 prediction's background error along the sampler.

    python benchmarks/colour_drift.py --seed 998 --guidance 1
    python benchmarks/colour_drift.py --seed 998 --guidance 3 --keep-mean --zero-mean-noise

Scenes of ``ShapesWorld(seed, full_caption_prob=1)`` (every attribute named) are decoded from the CLIP image
embeddings of their truth renders with their captions, so the prior plays no part. Two readings of the decoder's
x0 prediction, each image's background error (largest channel of |median - palette|, 8-bit levels,
:func:`unclip.measure.pixels.read_background`) averaged over the images:

- on forward-noised truth renders, ``x_t = q_sample(x0, t)``: how well one call reads the colour at each t;
- along a sampled DDPM trajectory at the model's decoder steps: how the colour drifts as the sample is built,
  with the correlation between each step's error (signed, per channel) and the final image's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from unclip import UnCLIPPipeline  # noqa: E402
from unclip.data.shapes import ShapesWorld, images_to_tensor  # noqa: E402
from unclip.diffusion import prediction_to_x0_eps, q_sample  # noqa: E402
from unclip.measure.pixels import read_background  # noqa: E402
from unclip.samplers import ZeroMeanNoise, run_sampler  # noqa: E402
from unclip.stages.decoding import decoder_conditioning, decoder_predictor  # noqa: E402


def offsets(x0: torch.Tensor, scenes: list) -> np.ndarray:
    """[B, 3, S, S] in [-1, 1] -> [B, 3] signed background offsets in 8-bit levels."""
    levels = x0.float().clamp(-1, 1).add(1).mul(127.5).round().permute(0, 2, 3, 1).numpy()
    return np.stack([read_background(image, scene).offset for image, scene in zip(levels, scenes)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--seed", type=int, default=998, help="World seed (998: the tuning seed).")
    parser.add_argument("--scenes", type=int, default=48)
    parser.add_argument("--guidance", type=float, default=1.0, help="Decoder guidance of the sampled trajectories.")
    parser.add_argument("--keep-mean", action="store_true", help="Guidance keeps the conditional branch's mean.")
    parser.add_argument("--zero-mean-noise", action="store_true", help="The sampler's noise without its mean.")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = UnCLIPPipeline.from_pretrained(args.model)
    decoder, diffusion = pipe.decoder.model.float(), pipe.decoder.diffusion
    world = ShapesWorld(seed=args.seed, two_object_prob=0.0, full_caption_prob=1.0)
    samples = [world.sample(i) for i in range(args.scenes)]
    scenes = [s.scene for s in samples]
    size = decoder.config.image_size
    x0 = images_to_tensor([world.render(scene, size) for scene in scenes])
    z_i = pipe.embed_images([Image.fromarray(world.render(scene, 64)) for scene in scenes]).float()
    text = pipe.embed_prompts([s.caption for s in samples])
    schedule = diffusion.make_schedule()
    prediction = diffusion.parameterization().prediction

    print(f"{args.model}: {args.scenes} scenes of seed {args.seed}, decoder from the truth renders' z_i")
    print("x0 prediction on forward-noised renders (one call per t, guidance 1, at the sampler's t):")
    model = decoder.conditioned(**decoder_conditioning(decoder, z_i, text)[0])
    generator = torch.Generator().manual_seed(0)
    sampler_steps = schedule.respace(str(pipe.defaults.decoder_steps)).timesteps.tolist()
    with torch.no_grad():
        for t in sorted(sampler_steps, reverse=True):
            steps = torch.full((len(scenes),), t)
            x_t = q_sample(schedule, x0, steps, torch.randn(x0.shape, generator=generator))
            x0_hat = prediction_to_x0_eps(schedule, x_t, steps, model(x_t, steps)[:, :3], prediction)[0]
            print(f"  t {t:4d}: background error {np.abs(offsets(x0_hat, scenes)).max(axis=1).mean():.2f}")

    predictor = decoder_predictor(
        decoder, diffusion, z_i, text, args.guidance, null_text=pipe._decoder_null_text(),
        guidance_keep_mean=args.keep_mean,
    )  # fmt: skip
    record: list[tuple[int, np.ndarray]] = []
    inner = predictor.denoiser

    def recording(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = inner(x, t)
        x0_hat = prediction_to_x0_eps(schedule, x, t, out[:, :3].float(), prediction)[0]
        record.append((int(t[0]), offsets(x0_hat, scenes)))
        return out

    predictor.denoiser = recording
    source = torch.Generator().manual_seed(0)
    with torch.no_grad():
        final = run_sampler(
            "ddpm", predictor, schedule, pipe.defaults.decoder_steps, shape=tuple(x0.shape),
            generator=ZeroMeanNoise(source) if args.zero_mean_noise else source, dtype=torch.float32,
        )  # fmt: skip
    last = offsets(final, scenes)
    print(
        f"along sampled trajectories (ddpm, {pipe.defaults.decoder_steps} steps, guidance {args.guidance:g}, "
        f"keep mean {args.keep_mean}, zero-mean noise {args.zero_mean_noise}):"
    )
    for t, step_offsets in record:
        corr = np.corrcoef(step_offsets.ravel(), last.ravel())[0, 1]
        print(f"  t {t:4d}: background error {np.abs(step_offsets).max(axis=1).mean():.2f}, corr with final {corr:.2f}")
    print(f"  final image: background error mean {np.abs(last).max(axis=1).mean():.2f} max {np.abs(last).max():.0f}")


if __name__ == "__main__":
    main()
