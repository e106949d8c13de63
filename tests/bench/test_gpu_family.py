"""bench/gpu.py: the roofline arithmetic and the CPU run (predictions only)."""

import pytest
import torch

from bench import gpu


def test_bytes_moved():
    assert gpu.bytes_moved("reversal in place", 10**7, torch.float32) == 80_000_000
    assert gpu.bytes_moved("reversal fresh", 10**7, torch.bfloat16) == 40_000_000
    assert gpu.bytes_moved("fused BCE forward+backward", 1000, torch.float16) == 8000
    # K-way: logits in and gradient out (N x K), int64 ids in
    assert gpu.bytes_moved("K-way loss forward", 250, torch.float32, k=4) == 2 * 250 * 4 * 4 + 8 * 250
    with pytest.raises(ValueError, match="unknown case"):
        gpu.bytes_moved("nope", 1, torch.float32)


def test_roofline_prediction_and_device_peaks():
    # 80 MB at the H100 SXM's 3.35 TB/s and the H200's 4.8 TB/s
    assert gpu.roofline_seconds(80e6, gpu.PEAK_GBPS["H100"]) == pytest.approx(23.88e-6, rel=1e-3)
    assert gpu.roofline_seconds(80e6, gpu.PEAK_GBPS["H200"]) == pytest.approx(16.67e-6, rel=1e-3)
    assert gpu.device_peak_gbps("NVIDIA H200") == 4800
    assert gpu.device_peak_gbps("NVIDIA H100 80GB HBM3") == 3350
    assert gpu.device_peak_gbps("NVIDIA H100 PCIe") == 2000
    assert gpu.device_peak_gbps("NVIDIA GeForce RTX 3090") is None


def test_cpu_run_writes_predictions_only(tmp_path):
    res = gpu.run("cpu", quick=True)
    assert res["note"] and "--device cuda" in res["note"]
    assert {r["case"] for r in res["rows"]} == set(gpu.CASES)
    assert all("gbps" not in r and set(r["roofline_s"]) == set(gpu.ROOFLINE_DEVICES) for r in res["rows"])
    lines, plots = gpu.report(res, str(tmp_path))
    text = "\n".join(lines)
    assert "H200 prediction" in text and "Note: no CUDA device" in text and plots == []
