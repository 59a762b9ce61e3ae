"""The throughput benchmarks measure what they say: FLOP counts against closed forms, figures that agree with
each other (rate, FLOPs, MFU), the peak table reachable by every device name, and the DALLE2-pytorch
comparison's alternation, medians and ratios on constructed measurements."""

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


def test_flop_count_of_a_convolution_matches_closed_form():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    x = torch.randn(2, 4, 5, 5)
    flops = gpu_decoder.count_flops(lambda: conv(x))
    assert flops == 2 * 2 * 6 * 5 * 5 * 4 * 3 * 3  # 2 * N * C_out * H * W * C_in * k * k


def test_every_device_in_the_peak_table_finds_its_own_peak():
    # first match wins, so a name that contains an earlier key (L40S / L40 / L4, H100 PCIe / H100) must come first
    for key, peak in gpu_decoder.PEAK_BF16_TFLOPS:
        assert gpu_decoder.peak_for_name(f"NVIDIA {key}") == peak, key
    assert gpu_decoder.peak_for_name("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_decoder.peak_for_name("Some Future GPU") is None
    assert gpu_decoder.peak_tflops(torch.device("cpu")) is None


def test_gpu_decoder_figures_agree_with_each_other(tmp_path):
    out = tmp_path / "r.json"
    args = ["--device", "cpu", "--tiny", "--threads", "1", "--peak-tflops", "0.5", "--json", str(out)]
    result = gpu_decoder.main(args)
    assert json.loads(out.read_text()) == pytest.approx(result)
    assert result["images_per_s"] == pytest.approx(result["steps"] * result["batch_size"] / result["seconds"])
    achieved = result["gflops_per_image"] * result["images_per_s"] / 1e3
    assert result["achieved_tflops"] == pytest.approx(achieved)
    assert result["mfu"] == pytest.approx(achieved / 0.5)


def test_gpu_decoder_flops_per_image_do_not_depend_on_the_batch():
    # the count is of one whole training step's forward and backward: per image it is the same at batch 2 and 4
    small = gpu_decoder.measure("tiny", batch_size=2, steps=1, warmup=0, device="cpu", precision="fp32", text_len=8)
    large = gpu_decoder.measure("tiny", batch_size=4, steps=1, warmup=0, device="cpu", precision="fp32", text_len=8)
    assert small["gflops_per_image"] == pytest.approx(large["gflops_per_image"], rel=1e-6)
    assert small["parameters"] == large["parameters"]


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


def test_vs_dalle2_our_worker_runs_the_decoder_of_its_settings():
    # a smoke test of the worker (the benchmark itself is a separate command); its timing is tested below
    settings = {**vs_dalle2_pytorch.SETTINGS["decoder"], "preset": "tiny", "image_size": 16, "batch_size": 2}
    result = vs_dalle2_pytorch.ours("decoder", settings, warmup=1, steps=1)
    assert result["side"] == "ours" and result["model"] == "decoder" and result["torch"] == torch.__version__


def test_vs_dalle2_timing_counts_only_the_timed_steps_in_wall_and_cpu_time():
    import time

    calls = []

    def sleepy_step():
        calls.append(1)
        time.sleep(0.02)  # wall time without CPU time

    rates = vs_dalle2_pytorch._timed(sleepy_step, warmup=2, steps=5, batch_size=4)
    assert len(calls) == 7
    assert 4 / 0.02 * 0.6 < rates["samples_per_s"] <= 4 / 0.02  # warm-up calls are not in the timed window
    assert rates["samples_per_cpu_s"] > 5 * rates["samples_per_s"]  # sleeping costs no CPU time


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
