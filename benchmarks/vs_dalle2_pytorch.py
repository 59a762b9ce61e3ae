"""Training throughput of our decoder and prior against DALLE2-pytorch's at equal size, batch and resolution.

    python benchmarks/vs_dalle2_pytorch.py                    # both models, 3 alternating rounds, 2 threads
    python benchmarks/vs_dalle2_pytorch.py --models decoder --rounds 5 --steps 8 --json docs/vs_dalle2.json

DALLE2-pytorch (with its dependency torchvision) runs in its own virtual environment, which the script creates
on first use (``--venv``, default ``~/.cache/unclip/dalle2-venv``) with ``pip install torch==2.14.1
torchvision==0.29.1 dalle2-pytorch`` (add ``--pip-args "--find-links DIR"`` for a local wheelhouse). PyPI has
no CPU-only build of torch 2.14.1: its Linux wheel is the CUDA one and brings the nvidia-* libraries (the venv
is ~6 GB); on a machine without a GPU it runs the same CPU kernels as a CPU build. (A venv on this project's
own torch 2.13.0+cpu does not work: PyPI's torchvision 0.28 is built against CUDA torch and fails to import
on a CPU build, "operator torchvision::nms does not exist".) Our side runs in the current interpreter, or with
``--ours-in-venv`` on the venv's torch from the source tree, so that both sides use the same torch.

Each measurement is a fresh process (``--worker``) that builds one network, runs ``--warmup`` training
steps and times ``--steps`` more: forward, loss, backward and an AdamW step on random data (the speed does
not depend on the values). Ours and theirs alternate, the order flipping every round, so that drifting
machine load hits both alike; the table shows the median samples/s of each and the ratio ours/theirs, and
the ratio of samples per CPU second (process time, all threads: less sensitive to other processes' load).

Matching: ours is built first and reports its parameter count; DALLE2-pytorch's network is then sized to
the closest count (the U-Net's base width ``dim`` in steps of 8; the prior's depth, since its width must
equal the CLIP dimension), with the same image size, CLIP dimensions, text length, batch and loss
(measured: decoder 5.68 M vs 5.80 M, prior 5.14 M vs 5.09 M).

- decoder: our ``shapes64`` preset (64 px, D = W = 128, 32 text tokens; eps prediction, learned-range
  variance, hybrid loss with the 0.001 VB weight, cosine schedule, condition dropout) vs
  ``Decoder(Unet(...), image_sizes=(64,), learned_variance=True)`` with the same dropout probabilities,
  dim_mults (1, 2, 2, 4), 2 ResNet blocks and self-attention at the two lowest resolutions.
- prior: our diffusion prior (width 256, 6 layers, 4 heads, D = W = 256, 32 tokens; x0 prediction) vs
  ``DiffusionPrior(DiffusionPriorNetwork(dim=256, heads=4, depth=...), condition_on_text_encodings=True)``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

THEIR_REQUIREMENTS = ("torch==2.14.1", "torchvision==0.29.1", "dalle2-pytorch")
DEFAULT_VENV = Path.home() / ".cache" / "unclip" / "dalle2-venv"

# What both sides are built to (ours by preset/config, theirs matched to our parameter count).
SETTINGS = {
    "decoder": {"image_size": 64, "clip_dim": 128, "text_width": 128, "text_len": 32, "batch_size": 8,
                "preset": "shapes64", "image_drop": 0.1, "text_drop": 0.5},
    "prior": {"clip_dim": 256, "text_len": 32, "width": 256, "layers": 6, "heads": 4, "batch_size": 32,
              "text_drop": 0.1},
}  # fmt: skip


# ---------------------------------------------------------------------------------------------- workers


def _timed(step, warmup: int, steps: int, batch_size: int) -> dict[str, float]:
    """Samples per second of wall time and per second of CPU time (this process, all threads) of ``steps``
    calls of ``step()`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"samples_per_s": steps * batch_size / wall, "samples_per_cpu_s": steps * batch_size / cpu}


def ours(model: str, settings: dict, warmup: int, steps: int, precision: str = "fp32") -> dict:
    """Build our network for ``model`` and time its training step (runs in this project's environment).

    ``precision`` "bf16": the loss under bf16 autocast, weights and optimizer in fp32 (``unclip train
    --precision bf16``, what ``auto`` picks where bf16 is native)."""
    import contextlib

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from gpu_decoder import synthetic_cache

    from unclip.encoders.base import TextEmbedding
    from unclip.train.loop import make_optimizer, uses_channels_last

    s = settings
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if model == "decoder":
        from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig

        cache = synthetic_cache(s["image_size"], s["clip_dim"], s["text_width"], s["text_len"], 4 * s["batch_size"])
        from unclip.diffusion.stage_config import DiffusionConfig

        # eps prediction + learned-range variance (hybrid loss), as DALLE2-pytorch's Decoder(learned_variance=True)
        diffusion = DiffusionConfig(prediction="eps", variance="learned_range")
        config = DecoderTaskConfig(preset=s["preset"], holdout=0, image_drop=s["image_drop"], text_drop=s["text_drop"],
                                   diffusion=diffusion)  # fmt: skip
        task = DecoderTask(config, cache=cache)
    else:
        from unclip.models.prior import PriorConfig
        from unclip.train.prior_task import DiffusionPriorTask

        d, length = s["clip_dim"], s["text_len"]
        cache = synthetic_cache(8, d, d, length, 4 * s["batch_size"])
        null = TextEmbedding(torch.zeros(1, d), torch.zeros(1, length, d), torch.ones(1, length, dtype=torch.bool))
        config = PriorConfig(clip_dim=d, text_width=d, text_len=length, width=s["width"], layers=s["layers"],
                             heads=s["heads"], text_drop_prob=s["text_drop"])  # fmt: skip
        task = DiffusionPriorTask(cache, null, config, holdout=0, eval_rows=0)
    net = task.build_model().train()
    if uses_channels_last("auto", net):  # as the training loop does (TrainConfig.memory_format "auto")
        net.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(net, lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    position = [0]

    def step() -> None:
        b = s["batch_size"]
        batch = task.get_batch(list(range(position[0], position[0] + b)), torch.device("cpu"))
        position[0] += b
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = task.loss(net, batch, generator)
        loss.float().backward()
        optimizer.step()

    rates = _timed(step, warmup, steps, s["batch_size"])
    return {"side": "ours", "model": model, "parameters": sum(p.numel() for p in net.parameters()), **rates,
            "torch": torch.__version__, "precision": precision}  # fmt: skip


def _their_decoder(s: dict, dim: int):
    from dalle2_pytorch import Decoder, Unet

    unet = Unet(dim=dim, image_embed_dim=s["clip_dim"], text_embed_dim=s["text_width"], cond_dim=dim,
                channels=3, dim_mults=(1, 2, 2, 4), num_resnet_blocks=2, self_attn=(False, False, True, True),
                attn_dim_head=32, attn_heads=4, cond_on_text_encodings=True, max_text_len=s["text_len"])  # fmt: skip
    return Decoder(unet=unet, image_sizes=(s["image_size"],), timesteps=1000, learned_variance=True,
                   image_cond_drop_prob=s["image_drop"], text_cond_drop_prob=s["text_drop"])  # fmt: skip


def _their_prior(s: dict, depth: int):
    from dalle2_pytorch import DiffusionPrior, DiffusionPriorNetwork

    net = DiffusionPriorNetwork(dim=s["clip_dim"], depth=depth, dim_head=s["width"] // s["heads"], heads=s["heads"],
                                num_timesteps=1000, max_text_len=s["text_len"])  # fmt: skip
    return DiffusionPrior(net=net, image_embed_dim=s["clip_dim"], timesteps=1000, cond_drop_prob=s["text_drop"],
                          condition_on_text_encodings=True)  # fmt: skip


def closest_size(count, sizes, target: int) -> int:
    """The size in ascending ``sizes`` whose ``count(size)`` (increasing in size) is closest to ``target``;
    stops counting at the first size past the target."""
    best, best_gap = None, None
    for size in sizes:
        gap = count(size) - target
        if best_gap is None or abs(gap) < abs(best_gap):
            best, best_gap = size, gap
        if gap >= 0:
            break
    return best


def theirs(model: str, settings: dict, warmup: int, steps: int, target_params: int) -> dict:
    """Build DALLE2-pytorch's network closest to ``target_params`` and time its training step (in the venv)."""
    import torch

    s = settings
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    build = functools.partial(_their_decoder if model == "decoder" else _their_prior, s)
    sizes = range(8, 257, 8) if model == "decoder" else range(1, 65)
    size = closest_size(lambda n: count(build(n)), sizes, target_params)
    torch.manual_seed(0)
    net = build(size)
    net.train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    b, d, length = s["batch_size"], s["clip_dim"], s["text_len"]
    g = torch.Generator().manual_seed(0)
    if model == "decoder":
        images = torch.rand(b, 3, s["image_size"], s["image_size"], generator=g)  # [0, 1]: it normalises itself
        image_embed = torch.randn(b, d, generator=g)
        text = torch.randn(b, length, s["text_width"], generator=g)

        def loss():
            return net(images, image_embed=image_embed, text_encodings=text, unet_number=1)
    else:
        text_embed, image_embed = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g)
        text = torch.randn(b, length, d, generator=g)

        def loss():
            return net(text_embed=text_embed, image_embed=image_embed.clone(), text_encodings=text)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()

    rates = _timed(step, warmup, steps, b)
    return {"side": "theirs", "model": model, "parameters": count(net), "size": size, **rates,
            "torch": torch.__version__}  # fmt: skip


# ---------------------------------------------------------------------------------------------- driver


def ensure_venv(venv: Path, pip_args: list[str]) -> Path:
    """The venv's python, creating the venv and installing DALLE2-pytorch on first use."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import dalle2_pytorch"], capture_output=True).returncode == 0:
        return python
    print(f"creating {venv} with {' '.join(THEIR_REQUIREMENTS)} (a few GB; once)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", *THEIR_REQUIREMENTS, *pip_args], check=True)
    return python


def run_worker(python: str | Path, side: str, model: str, args: argparse.Namespace, target: int = 0) -> dict:
    """One measurement in a fresh process; returns its JSON result."""
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads))
    if Path(python) != Path(sys.executable):
        env.pop("PYTHONPATH", None)  # keep this project's environment (and its torch) out of the other one
        if side == "ours":  # our code on the other environment's torch: import it from the source tree
            env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    command = [str(python), __file__, "--worker", side, "--models", model, "--threads", str(args.threads),
               "--warmup", str(args.warmup), "--steps", str(args.steps), "--target-params", str(target),
               "--ours-precision", args.ours_precision]  # fmt: skip
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{side} {model} worker failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure(pythons: dict, model: str, args: argparse.Namespace, side: str, target: int) -> dict:
    return run_worker(pythons[side], side, model, args, target)


def compare(model: str, rounds: int, measure) -> dict:
    """Alternate ``measure("ours"|"theirs", target_params)`` for ``rounds`` rounds; medians and their ratio.

    ``measure`` returns ``samples_per_s`` and ``parameters`` (and optionally ``samples_per_cpu_s``, ``size``,
    ``torch``); the row holds the medians of both rates and their ratios ours/theirs."""
    first = measure("ours", 0)
    target = first["parameters"]
    runs = {"ours": [first], "theirs": []}
    for r in range(rounds):
        order = ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs")
        for side in order:
            if side == "ours" and r == 0:
                continue  # the first measurement of ours opened round 0
            runs[side].append(measure(side, target))
    med = {side: statistics.median(x["samples_per_s"] for x in v) for side, v in runs.items()}
    cpu = {side: [x["samples_per_cpu_s"] for x in v if "samples_per_cpu_s" in x] for side, v in runs.items()}
    cpu_med = {side: statistics.median(v) if v else None for side, v in cpu.items()}
    last = {side: v[-1] for side, v in runs.items()}
    return {
        "model": model,
        "ours_parameters": target,
        "theirs_parameters": last["theirs"]["parameters"],
        "theirs_size": last["theirs"].get("size"),
        "ours_samples_per_s": med["ours"],
        "theirs_samples_per_s": med["theirs"],
        "ratio": med["ours"] / med["theirs"],
        "ours_samples_per_cpu_s": cpu_med["ours"],
        "theirs_samples_per_cpu_s": cpu_med["theirs"],
        "cpu_ratio": cpu_med["ours"] / cpu_med["theirs"] if cpu_med["ours"] and cpu_med["theirs"] else None,
        "torch": {side: last[side].get("torch") for side in runs},
        "runs": {side: [x["samples_per_s"] for x in v] for side, v in runs.items()},
        "cpu_runs": cpu,
        "settings": SETTINGS[model],
    }


def format_table(rows: list[dict], threads: int) -> str:
    """Markdown table of :func:`compare` rows: wall-clock rates and ratio, then the CPU-time ratio."""
    lines = [f"training throughput, CPU, {threads} thread(s); median samples/s over alternating runs",
             "| model | params ours / theirs | batch | ours samples/s | DALLE2-pytorch samples/s | ratio | "
             "ratio per CPU second | torch ours / theirs |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        cpu = f"{r['cpu_ratio']:.2f}x" if r.get("cpu_ratio") else "n/a"
        torch_versions = " / ".join(str(v) for v in r.get("torch", {}).values())
        lines.append(
            f"| {r['model']} | {r['ours_parameters'] / 1e6:.2f} M / {r['theirs_parameters'] / 1e6:.2f} M | "
            f"{r['settings']['batch_size']} | {r['ours_samples_per_s']:.2f} | {r['theirs_samples_per_s']:.2f} | "
            f"{r['ratio']:.2f}x | {cpu} | {torch_versions} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="decoder,prior", help="comma-separated: decoder, prior")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--pip-args", default="", help="extra pip install arguments for the venv")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--ours-in-venv", action="store_true", help="run our side on the venv's torch too (same torch both sides)"
    )
    parser.add_argument(
        "--ours-precision", choices=["fp32", "bf16"], default="fp32",
        help="our side's training precision (theirs runs fp32: DALLE2-pytorch has no CPU autocast path)",
    )  # fmt: skip
    parser.add_argument("--worker", choices=["ours", "theirs"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--target-params", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in SETTINGS]
    if bad:
        parser.error(f"unknown model(s) {bad}; choose from {sorted(SETTINGS)}")
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        run = ours if args.worker == "ours" else theirs
        extra = (args.ours_precision,) if args.worker == "ours" else (args.target_params,)
        print(json.dumps(run(models[0], SETTINGS[models[0]], args.warmup, args.steps, *extra)))
        return
    their_python = ensure_venv(args.venv, args.pip_args.split())
    pythons = {"ours": their_python if args.ours_in_venv else sys.executable, "theirs": their_python}
    rows = []
    for model in models:
        measure = functools.partial(_measure, pythons, model, args)
        rows.append(compare(model, args.rounds, measure))
        print(format_table(rows[-1:], args.threads).splitlines()[-1], file=sys.stderr)
    print(format_table(rows, args.threads))
    if args.json:
        record = {"threads": args.threads, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup,
                  "ours_in_venv": args.ours_in_venv,
                  "ours_precision": args.ours_precision, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "load_average_1min_end": os.getloadavg()[0], "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
