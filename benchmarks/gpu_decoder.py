"""Decoder training throughput on a GPU: images/s and model FLOP utilisation (MFU), bf16 autocast.

    python benchmarks/gpu_decoder.py                                  # Karlo's decoder (64 px), batch 64, cuda
    python benchmarks/gpu_decoder.py --preset shapes64 --batch-size 256 --compile
    python benchmarks/gpu_decoder.py --grad-checkpointing --batch-size 128
    python benchmarks/gpu_decoder.py --device cpu --tiny              # smoke run (the test suite runs it)

One training step is exactly what ``unclip train decoder`` does per step (``DecoderTask.loss``: condition
dropout, eps prediction with learned variance, hybrid MSE + VLB loss; backward; gradient clipping; AdamW;
EMA update), on a synthetic in-memory embedding cache (random images and CLIP embeddings: the speed
does not depend on the values). The model FLOPs of one step are counted once with
``torch.utils.flop_counter.FlopCounterMode`` (forward + backward; convolutions, matmuls and attention),
so MFU = FLOPs per step x steps per second / peak bf16 FLOP/s of the device (dense, no sparsity), from
a table of known GPUs or ``--peak-tflops``.

Prints one table and one JSON line (also written to ``--json``). Record the figures in docs/scale.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

# Dense bf16 peak (TFLOP/s) by device-name substring; the first match wins.
PEAK_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("H800", 989.0), ("GH200", 989.0),
    ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0),
    ("A10G", 125.0), ("A10", 125.0), ("RTX 4090", 165.0), ("RTX 3090", 71.0), ("V100", 125.0),
)  # fmt: skip


def peak_for_name(name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a device named ``name`` (e.g. "NVIDIA H100 PCIe"), or None if unknown."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def peak_tflops(device: torch.device) -> float | None:
    """The dense bf16 peak of a CUDA device from :data:`PEAK_BF16_TFLOPS`, or None if unknown."""
    if device.type != "cuda":
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def synthetic_cache(image_size: int, clip_dim: int, token_width: int, text_len: int, rows: int, seed: int = 0):
    """An in-memory :class:`EmbeddingCache` of random images/embeddings (for speed measurements only)."""
    from unclip.data.embed_cache import EmbeddingCache
    from unclip.encoders.base import TextEmbedding

    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(text_len)[None] < torch.randint(2, text_len + 1, (rows, 1), generator=g)
    text = TextEmbedding(
        torch.randn(rows, clip_dim, generator=g), torch.randn(rows, text_len, token_width, generator=g).half(), mask
    )
    meta = {"size": image_size, "clip_dim": clip_dim, "token_width": token_width, "max_text_length": text_len,
            "num": rows, "clip": "synthetic"}  # fmt: skip
    images = torch.randint(0, 256, (rows, image_size, image_size, 3), dtype=torch.uint8, generator=g)
    return EmbeddingCache(images, torch.randn(rows, clip_dim, generator=g), text, [""] * rows, None, None, meta)


def count_flops(fn) -> int:
    """FLOPs of ``fn()`` (forward and backward ops it runs), counted by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def measure(
    preset: str = "karlo",
    batch_size: int = 64,
    steps: int = 20,
    warmup: int = 5,
    device: str = "cuda",
    precision: str = "bf16",
    compile_model: bool = False,
    grad_checkpointing: bool = False,
    peak: float | None = None,
    text_len: int = 77,
) -> dict:
    """Time ``steps`` training steps of the decoder after ``warmup``; returns the figures as a dict."""
    from unclip.models import model_config
    from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig
    from unclip.train.ema import make_ema, update_ema
    from unclip.train.loop import param_groups
    from unclip.train.parallel import apply_gradient_checkpointing

    dev = torch.device(device)
    base = model_config("decoder", preset)
    cache = synthetic_cache(base.image_size, base.clip_dim, base.text_width or base.clip_dim, text_len,
                            rows=max(4 * batch_size, 64))  # fmt: skip
    task = DecoderTask(DecoderTaskConfig(preset=preset, holdout=0, use_text=base.text_width is not None), cache=cache)
    torch.manual_seed(0)
    model = task.build_model().to(dev).train()
    params = sum(p.numel() for p in model.parameters())
    ema = make_ema(model)
    if grad_checkpointing:
        apply_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(param_groups(model, 0.0), lr=1e-4)
    train_model = torch.compile(model) if compile_model else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    generator = torch.Generator(device=dev).manual_seed(0)

    def step(i: int) -> None:
        batch = task.get_batch(list(range(i * batch_size, (i + 1) * batch_size)), dev)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss, _ = task.loss(train_model, batch, generator)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, 0.999)

    def forward_backward() -> None:
        batch = task.get_batch(list(range(batch_size)), dev)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss, _ = task.loss(model, batch, torch.Generator(device=dev).manual_seed(1))
        loss.backward()
        model.zero_grad(set_to_none=True)

    flops_per_step = count_flops(forward_backward)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for i in range(warmup):
        step(i)
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync()
    seconds = time.perf_counter() - t0
    steps_per_s = steps / seconds
    achieved = flops_per_step * steps_per_s
    peak = peak if peak is not None else peak_tflops(dev)
    return {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "preset": preset,
        "image_size": base.image_size,
        "parameters": params,
        "batch_size": batch_size,
        "precision": precision,
        "compile": compile_model,
        "grad_checkpointing": grad_checkpointing,
        "steps": steps,
        "seconds": seconds,
        "images_per_s": steps_per_s * batch_size,
        "gflops_per_image": flops_per_step / batch_size / 1e9,
        "achieved_tflops": achieved / 1e12,
        "peak_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None,
        "max_memory_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="karlo", help="decoder preset (karlo = Karlo's 64 px decoder)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default=None,
                        help="autocast dtype (default bf16 on CUDA, fp32 on CPU)")  # fmt: skip
    parser.add_argument("--compile", action="store_true", help="torch.compile the decoder")
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: table)")
    parser.add_argument("--tiny", action="store_true", help="smoke mode: tiny preset, batch 4, 2 steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.preset, args.batch_size, args.steps, args.warmup = "tiny", 4, 2, 1
    precision = args.precision or ("bf16" if args.device.startswith("cuda") else "fp32")
    result = measure(args.preset, args.batch_size, args.steps, args.warmup, args.device, precision, args.compile,
                     args.grad_checkpointing, args.peak_tflops, text_len=16 if args.tiny else 77)  # fmt: skip
    mfu = f"{100 * result['mfu']:.1f}%" if result["mfu"] is not None else "n/a (unknown peak)"
    extras = (", compiled" if args.compile else "") + (", grad checkpointing" if args.grad_checkpointing else "")
    print(f"decoder {result['preset']} ({result['parameters'] / 1e6:.1f} M params, {result['image_size']} px) on "
          f"{result['device']}, batch {result['batch_size']}, {precision}{extras}")  # fmt: skip
    print(f"  images/s        {result['images_per_s']:.1f}")
    print(f"  GFLOP/image     {result['gflops_per_image']:.2f} (forward + backward)")
    print(f"  achieved        {result['achieved_tflops']:.2f} TFLOP/s")
    print(f"  MFU             {mfu}")
    if result["max_memory_gib"] is not None:
        print(f"  peak memory     {result['max_memory_gib']:.1f} GiB")
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
