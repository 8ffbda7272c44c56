"""benchmarks/speed.py: the GPU-utilisation sampler and the tables, without a GPU."""

from __future__ import annotations

import importlib.util
import os
import stat
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _speed_module():
    spec = importlib.util.spec_from_file_location("speed_benchmark", REPO / "benchmarks" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_utilisation_is_the_mean_of_nvidia_smi_samples(tmp_path: Path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 87\necho 90\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    speed = _speed_module()
    with speed.GpuUtilisation(torch.device("cuda", 0)) as gpu:
        time.sleep(0.5)
    assert gpu.samples == [87.0, 90.0] and gpu.mean == 88.5
    with speed.GpuUtilisation(torch.device("cpu")) as cpu:  # a CPU run never calls nvidia-smi
        pass
    assert cpu.mean is None


def test_training_table_reports_speed_ups_and_compile_time():
    speed = _speed_module()
    step = {"median": 2.0, "min": 1.9, "max": 2.2, "repeats": 3}
    formats = "stage 1 channels_last (contiguous: decoder.layer1), stage 2 channels_last"
    slow = {"median": 4.0, "min": 3.9, "max": 4.4, "repeats": 3}
    b32 = {"images_per_second": 4.0, "seconds": {"median": 8.0, "min": 8.0, "max": 8.0}}
    entry = {"macs_per_image": 30e9, "peak_rss_mb_batch1": 600.0,
             "inference": {"fp32 eager": {"batch1": b32, "batch32": b32}},
             "training": {"fp32 eager": {"memory_format": "stage 1 contiguous, stage 2 contiguous", "stage1": slow, "stage2": slow},
                          "bf16 + compile (stage 2)": {"memory_format": formats, "stage1": step, "stage2": step,
                                                       "first_stage2_step_seconds": 41.0}}}
    result = {"image_size": 256, "device": "cpu", "peak_flops": {"fp32": 1e11, "bf16": 2e11},
              "environment": {"machine": {"cpu": "test CPU", "cpu_threads": 2}}, "pfadseg": entry}
    text = speed.markdown(result, ["pfadseg"])
    assert f"| pfadseg | bf16 + compile (stage 2) | {formats} | 2.00 [1.90–2.20] | 2.00 [1.90–2.20] | 2.00 | 2.00 |" in text
    assert "took 41 s" in text and "GPU busy" not in text
    assert "| pfadseg | fp32 eager | 4.00 | 4.00 [4.00–4.00] | 1.00 | 0.240 | 120 | 240 |" in text


def test_gpu_runs_add_the_utilisation_columns():
    speed = _speed_module()
    busy = {"median": 2.0, "min": 1.9, "max": 2.2, "repeats": 3, "gpu_utilisation_percent": 91.0}
    unsampled = {"median": 2.0, "min": 1.9, "max": 2.2, "repeats": 3}  # nvidia-smi gave no sample
    b32 = {"images_per_second": 4.0, "seconds": busy}
    entry = {"macs_per_image": 30e9, "peak_rss_mb_batch1": 1.0, "inference": {"fp32 eager": {"batch1": b32, "batch32": b32}},
             "training": {"fp32 eager": {"memory_format": "stage 1 channels_last, stage 2 channels_last", "stage1": busy, "stage2": unsampled}}}
    result = {"image_size": 256, "device": "cuda", "peak_flops": {"fp32": 1e11, "bf16": 2e11},
              "environment": {"machine": {"cpu": "test CPU", "cpu_threads": 2}}, "pfadseg": entry}
    text = speed.markdown(result, ["pfadseg"])
    assert "| % fp32 peak | GPU busy % |" in text and text.count("GPU busy %") == 2
    assert "| 120 | 240 | 91 |" in text and "| 1.00 | 1.00 | 91 / n/a |" in text
