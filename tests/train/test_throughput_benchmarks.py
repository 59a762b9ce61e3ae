"""The throughput benchmarks run (CPU smoke modes) and their arithmetic is right: FLOP counting against the
closed form of a linear layer, alternation/medians/ratio of the DALLE2-pytorch comparison."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_decoder  # noqa: E402
import vs_dalle2_pytorch  # noqa: E402


def test_flop_count_of_a_linear_layer_matches_closed_form():
    layer = nn.Linear(32, 16, bias=False)
    x = torch.randn(8, 32, requires_grad=True)
    flops = gpu_decoder.count_flops(lambda: layer(x).sum().backward())
    assert flops == 3 * 2 * 8 * 32 * 16  # forward + grad of input + grad of weight


def test_gpu_decoder_smoke_on_cpu(tmp_path):
    out = tmp_path / "r.json"
    result = gpu_decoder.main(["--device", "cpu", "--tiny", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == pytest.approx(result)
    assert result["images_per_s"] > 0 and result["mfu"] is None and result["preset"] == "tiny"
    assert result["gflops_per_image"] > 0
    assert gpu_decoder.peak_tflops(torch.device("cpu")) is None
    assert dict(gpu_decoder.PEAK_BF16_TFLOPS)["H200"] == 989.0


def test_vs_dalle2_alternates_and_reports_medians():
    calls = []
    rates = {"ours": iter([10.0, 12.0, 11.0]), "theirs": iter([5.0, 4.0, 6.0])}

    def measure(side, target):
        calls.append((side, target))
        return {"samples_per_s": next(rates[side]), "parameters": 1000 if side == "ours" else 990, "size": 3}

    row = vs_dalle2_pytorch.compare("decoder", 3, measure)
    assert calls == [("ours", 0), ("theirs", 1000), ("ours", 1000), ("theirs", 1000), ("theirs", 1000),
                     ("ours", 1000)]  # fmt: skip
    assert row["ours_samples_per_s"] == 11.0 and row["theirs_samples_per_s"] == 5.0 and row["ratio"] == 2.2
    table = vs_dalle2_pytorch.format_table([row], threads=2)
    assert "| decoder | 0.00 M / 0.00 M | 8 | 11.00 | 5.00 | 2.20x |" in table


def test_vs_dalle2_our_worker_trains_a_tiny_decoder():
    settings = {**vs_dalle2_pytorch.SETTINGS["decoder"], "preset": "tiny", "image_size": 16, "batch_size": 2}
    result = vs_dalle2_pytorch.ours("decoder", settings, warmup=1, steps=1)
    assert result["side"] == "ours" and result["samples_per_s"] > 0 and result["parameters"] > 1000


def test_vs_dalle2_closest_size_stops_past_the_target():
    counted = []

    def count(size):
        counted.append(size)
        return 1000 * size

    assert vs_dalle2_pytorch.closest_size(count, range(1, 100), 4400) == 4
    assert vs_dalle2_pytorch.closest_size(count, range(1, 100), 4600) == 5
    assert max(counted) == 5  # never counts past the first size above the target
    assert vs_dalle2_pytorch.closest_size(count, range(1, 4), 10**9) == 3


def test_vs_dalle2_table_reports_cpu_ratio_and_torch_versions():
    def measure(side, target):
        rate = 10.0 if side == "ours" else 4.0
        return {"samples_per_s": rate, "samples_per_cpu_s": rate / 2 if side == "ours" else rate,
                "parameters": 100, "torch": f"{side}-torch"}  # fmt: skip

    row = vs_dalle2_pytorch.compare("prior", 2, measure)
    assert row["ratio"] == 2.5 and row["cpu_ratio"] == 1.25
    assert "| 2.50x | 1.25x | ours-torch / theirs-torch |" in vs_dalle2_pytorch.format_table([row], threads=1)
