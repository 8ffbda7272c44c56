"""Seconds per training step of each stage at fixed input shapes, and with shapes alternating as in `aspect` training.

Random batches of 8 (the `cpu30` preset, EfficientNet-Lite0 teacher, the trainer's precision and memory formats);
user and system CPU seconds per step beside the wall time, so allocator work shows. Run it alone on the machine.

    python benchmarks/step_shapes.py [--steps 12]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from pfadseg.config import merge, preset_config
from pfadseg.models.pfadseg import build_model
from pfadseg.training.runtime import resolve_precision
from pfadseg.training.trainer import Trainer

#: Shapes of Magnetic Tile's `aspect` batches at a shorter side of 128, and the square input they stand against.
MIXED = [(128, 192), (128, 352), (128, 128), (224, 128), (128, 256), (160, 128)]
CASES = [[(160, 160)], [(128, 192)], [(128, 352)], MIXED]


class RandomBatches:
    """(clean, synthetic, mask) batches of random values, cycling through ``shapes``."""

    def __init__(self, memory_format: torch.memory_format) -> None:
        self.memory_format, self.shapes, self.count = memory_format, [(160, 160)], 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        height, width = self.shapes[self.count % len(self.shapes)]
        self.count += 1
        x = torch.rand(8, 3, height, width).contiguous(memory_format=self.memory_format)
        return x, x.clone(), (torch.rand(8, 1, height, width) > 0.9).float()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="timed steps per case (after one warm-up round)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = merge(preset_config("pfadseg", "cpu30"), {"model": {"teacher": "efficientnet_lite0"}})
    device = torch.device("cpu")
    precision = resolve_precision("auto", True, device)
    batches = RandomBatches(precision.memory_format())
    trainer = Trainer(build_model(config.model).to(device), config, batches, precision, Path(tempfile.mkdtemp()), device)
    for stage, step in ((1, trainer.student_step), (2, trainer.segmentation_step)):
        for shapes in CASES:
            batches.shapes, batches.count = shapes, 0
            for _ in shapes:  # warm-up: each shape once
                step()
            batches.count = 0
            started, cpu = time.perf_counter(), os.times()
            for _ in range(args.steps):
                step()
            seconds, cpu_after = (time.perf_counter() - started) / args.steps, os.times()
            pixels = sum(h * w for h, w in shapes) / len(shapes) / 160**2
            name = "mixed" if len(shapes) > 1 else "{}x{}".format(*shapes[0])
            print(f"stage {stage} {name:8s} ({pixels:.2f}× 160² pixels): {seconds:.3f} s/step, {seconds / pixels:.3f} s per 160² "
                  f"of pixels; user {(cpu_after.user - cpu.user) / args.steps:.2f} s, system "
                  f"{(cpu_after.system - cpu.system) / args.steps:.2f} s per step", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
