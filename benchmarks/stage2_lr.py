"""Retrain only stage 2 (the segmentation network) of a finished run, with other learning rates.

Usage: python benchmarks/stage2_lr.py RUN STEPS LR_BLOCKS LR_HEAD [--seed 0] [--set KEY=VALUE ...]

Keeps the run's teacher and trained student, re-initialises the segmentation network, trains it
STEPS steps with the run's data, synthesis, batch size and precision (SGD, momentum 0.9, weight
decay 1e-4) and prints the six test metrics as JSON. Used for the learning-rate table in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from pfadseg.config import merge, parse_override
from pfadseg.data.augment import augmentation_for_category
from pfadseg.data.datasets import load_images, load_splits
from pfadseg.data.images import ImageCache
from pfadseg.data.synthesis import AnomalySynthesizer
from pfadseg.data.textures import load_texture_source
from pfadseg.evaluate import evaluate
from pfadseg.models.segmentation import SegmentationNet
from pfadseg.rundir import load_run
from pfadseg.training.batches import BatchMaker
from pfadseg.training.losses import segmentation_loss
from pfadseg.training.memory_formats import contiguous_islands, keep_contiguous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("steps", type=int)
    parser.add_argument("lr_blocks", type=float)
    parser.add_argument("lr_head", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run's configuration for this retraining, e.g. synthesis.foreground_only=true")
    args = parser.parse_args()

    run = load_run(args.run)
    model, device = run.model, run.device
    config = run.config
    for text in args.set:
        config = merge(config, parse_override(text))
    torch.manual_seed(args.seed)
    model.segmentation = SegmentationNet(sum(model.teacher.channels), config.model.block, config.model.head).to(device)
    precision = run.precision
    model.to(memory_format=precision.memory_format())
    keep_contiguous(contiguous_islands(model.segmentation, precision, device).values())  # as the Trainer does
    size = config.train.image_size
    splits, cache = load_splits(config.data), ImageCache()
    batches = BatchMaker(
        load_images(splits.train, size, cache).to(device),
        AnomalySynthesizer(load_texture_source(config.data, size, config.seed).to(device), config.synthesis),
        augmentation_for_category(config.data.category),
        config.train.batch_size,
        args.seed,
        precision.memory_format(),
    )
    seg = model.segmentation
    optimizer = torch.optim.SGD(
        [{"params": seg.res.parameters(), "lr": args.lr_blocks}, {"params": seg.head.parameters(), "lr": args.lr_head}],
        lr=args.lr_head, momentum=0.9, weight_decay=1e-4,
    )
    started = time.perf_counter()
    model.student.eval()
    seg.train()
    for _ in range(args.steps):
        _, synthetic, mask = batches.next()
        with precision.autocast(device):
            loss = segmentation_loss(model.segment_logits(synthetic), mask, config.train.focal_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.to(memory_format=run.precision.memory_format())
    evaluation = evaluate(model, splits.test, size, config.train.eval_size, run.precision, device,
                          binarize_at=splits.binarize_at, cache=cache, progress=False)
    print(json.dumps({"steps": args.steps, "lr_blocks": args.lr_blocks, "lr_head": args.lr_head,
                      "seconds": round(time.perf_counter() - started), **evaluation.metrics}))


if __name__ == "__main__":
    main()
