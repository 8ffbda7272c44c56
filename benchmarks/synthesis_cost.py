"""Cost of anomaly synthesis relative to a training step (issue 3's budget: under 10 %).

Usage: python benchmarks/synthesis_cost.py [--size 256] [--batch 16] [--teacher efficientnet_lite0]

Times, in one process: synthesising one batch (Perlin masks + texture blending, the paper's
settings) and one stage-1 and one stage-2 training step of the pfadseg preset on the same batch
size, at the training precision this machine gets by default. Medians of several repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pfadseg.config import merge, preset_config
from pfadseg.data.augment import augmentation_for_category
from pfadseg.data.synthesis import AnomalySynthesizer, SynthesisConfig
from pfadseg.data.textures import procedural_textures
from pfadseg.models import build_model
from pfadseg.training.batches import BatchMaker
from pfadseg.training.runtime import resolve_precision
from pfadseg.training.trainer import Trainer


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--teacher", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    device = torch.device("cpu")
    images = torch.randint(0, 256, (64, 3, args.size, args.size), dtype=torch.uint8)
    synthesizer = AnomalySynthesizer(procedural_textures(32, args.size, 0), SynthesisConfig())
    generator = torch.Generator().manual_seed(0)
    batch = images[: args.batch].float() / 255
    synth = median_seconds(lambda: synthesizer(batch, generator), args.repeats * 4)

    config = merge(preset_config("pfadseg", "paper"), {"model": {"teacher": args.teacher}})
    model = build_model(config.model)
    precision = resolve_precision("auto", True, device)
    batches = BatchMaker(images, synthesizer, augmentation_for_category(None), args.batch, 0, precision.memory_format())
    with tempfile.TemporaryDirectory() as run_dir:  # the steps write nothing; the Trainer wants a place
        trainer = Trainer(model, config, batches, precision, Path(run_dir), device)
        student = median_seconds(trainer.student_step, args.repeats)
        segmentation = median_seconds(trainer.segmentation_step, args.repeats)
    print(f"batch {args.batch} at {args.size}², teacher {args.teacher}, precision {precision.name}; {trainer.formats.describe()}")
    print(f"synthesis per batch:        {1000 * synth:8.1f} ms")
    print(f"stage-1 training step:      {1000 * student:8.1f} ms  (synthesis = {100 * synth / student:.1f} %)")
    print(f"stage-2 training step:      {1000 * segmentation:8.1f} ms  (synthesis = {100 * synth / segmentation:.1f} %)")


if __name__ == "__main__":
    main()
