"""Stage-1 training step, fp32 eager against the default bf16, timed with more repeats than speed.py.

    python benchmarks/stage1_ratio.py [--preset pfadseg] [--repeats 10] [--image-size 256] [--batch 16]

Builds the real Trainer (Lite0 teacher, random images) once in fp32 contiguous, then once in bf16 +
channels_last (contiguous islands where the Trainer puts them), in one process, and prints each
median [min-max] and the ratio of the medians: the stage-1 line of issue 6, which sits at about 2x
on a 2-core AVX-512 bf16 CPU, so that one speed.py run of 5 repeats cannot settle it.
"""

from __future__ import annotations

import argparse

import torch
from speed import step_trainer, timed  # this folder is on sys.path when the script runs

from pfadseg.training.runtime import Precision, resolve_device


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pfadseg")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = resolve_device(args.device)
    medians = {}
    for name, precision in (("fp32 eager", Precision(None, False)), ("bf16", Precision(torch.bfloat16, True))):
        with step_trainer(args.preset, precision, device, args.image_size, args.batch) as trainer:
            t = timed(trainer.student_step, device, warmup=1, repeats=args.repeats)
        medians[name] = t["median"]
        print(f"{name:10s} {t['median']:.3f} s [{t['min']:.3f}-{t['max']:.3f}]  ({trainer.formats.describe()})", flush=True)
    print(f"bf16 stage 1 = {medians['fp32 eager'] / medians['bf16']:.2f}x fp32 (medians of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
