"""Data-parallel training under torchrun: two CPU processes (gloo) end with identical replicas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfadseg.checkpoint import load_tensors
from pfadseg.data.augment import augmentation_for_category
from pfadseg.data.synthesis import AnomalySynthesizer, SynthesisConfig
from pfadseg.training.batches import BatchMaker

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"


def test_two_process_training_keeps_replicas_identical(tiny_mvtec: Path, tmp_path: Path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.fail("torchrun not found beside the Python interpreter")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", str(WORKER), str(tiny_mvtec), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = load_tensors(tmp_path / "rank0.safetensors"), load_tensors(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    saved = load_tensors(tmp_path / "run" / "model.safetensors")
    assert all(torch.equal(saved[k], rank0[k]) for k in saved)
    # one run directory written by rank 0 alone: one log line per logged step, not two
    steps = [line for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines() if line]
    assert len(steps) == 6
    assert json.loads((tmp_path / "run" / "run_info.json").read_text())["processes"] == 2


def test_ranks_take_disjoint_slices_of_one_draw_with_their_own_synthesis():
    images = torch.randint(0, 255, (40, 3, 16, 16), dtype=torch.uint8)
    synth = AnomalySynthesizer(torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8), SynthesisConfig())
    makers = [BatchMaker(images, synth, augmentation_for_category("none"), 4, seed=0, rank=r, world_size=2) for r in (0, 1)]
    single = BatchMaker(images, synth, augmentation_for_category("none"), 8, seed=0)
    a, b = makers[0].indices(), makers[1].indices()
    assert not set(a.tolist()) & set(b.tolist())
    assert torch.equal(torch.cat([a, b]), single.indices())  # together: the single-process global batch
    assert not torch.equal(makers[0].synthesis.get_state(), makers[1].synthesis.get_state())
