"""The two-stage training loop (docs/design.md §6) with exact resume.

Stage 1 trains the student to reproduce, from a synthetic image, the teacher's features of the
clean image; stage 2 freezes the student and trains the segmentation network on the
teacher–student similarities of the synthetic image against the synthetic mask.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from pfadseg.checkpoint import CONFIG_FILE, load_state_strict, load_tensors, metadata_json, save_tensors
from pfadseg.config import RunConfig
from pfadseg.errors import PfadsegError
from pfadseg.fileio import write_text_atomic
from pfadseg.models import PFADSeg
from pfadseg.models.pfadseg import cosine_distance, segmentation_input
from pfadseg.progress import progress_bar
from pfadseg.rundir import CHECKPOINT_FILE, LOG_FILE
from pfadseg.training.averaging import WeightAverage
from pfadseg.training.batches import BatchMaker
from pfadseg.training.distributed import Distributed
from pfadseg.training.losses import cosine_loss, segmentation_loss
from pfadseg.training.memory_formats import StageFormats
from pfadseg.training.runtime import Precision, compile_errors


@dataclass
class Optimizers:
    """SGD with per-group learning rates: one optimiser per stage."""

    student: torch.optim.SGD
    segmentation: torch.optim.SGD

    @classmethod
    def create(cls, model: PFADSeg, config: RunConfig) -> Optimizers:
        recipe = config.train
        sgd = dict(momentum=recipe.momentum, weight_decay=recipe.weight_decay)
        student = torch.optim.SGD(model.student.parameters(), lr=recipe.lr_student, **sgd)
        segmentation = torch.optim.SGD(
            [
                {"params": model.segmentation.res.parameters(), "lr": recipe.lr_seg_blocks},
                {"params": model.segmentation.head.parameters(), "lr": recipe.lr_seg_head},
            ],
            lr=recipe.lr_seg_head,
            **sgd,
        )
        return cls(student, segmentation)

    def momentum_state(self, model: PFADSeg) -> dict[str, torch.Tensor]:
        """Momentum buffers keyed by parameter name (safetensors needs flat named tensors)."""
        out = {}
        for prefix, module, opt in self._pairs(model):
            for name, param in module.named_parameters():
                buf = opt.state.get(param, {}).get("momentum_buffer")
                if buf is not None:
                    out[f"optim.{prefix}.{name}"] = buf
        return out

    def load_momentum_state(self, model: PFADSeg, tensors: dict[str, torch.Tensor]) -> None:
        for prefix, module, opt in self._pairs(model):
            for name, param in module.named_parameters():
                key = f"optim.{prefix}.{name}"
                if key in tensors:  # in the parameter's memory format, so that SGD's updates stay dense passes
                    opt.state[param] = {"momentum_buffer": torch.empty_like(param).copy_(tensors[key])}

    def _pairs(self, model: PFADSeg) -> list[tuple[str, nn.Module, torch.optim.SGD]]:
        return [("student", model.student, self.student), ("segmentation", model.segmentation, self.segmentation)]


class Trainer:
    """Runs the steps ``[start, student_steps + segmentation_steps)``, checkpointing as it goes."""

    def __init__(
        self,
        model: PFADSeg,
        config: RunConfig,
        batches: BatchMaker,
        precision: Precision,
        run_dir: Path,
        device: torch.device,
        distributed: Distributed | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.batches = batches
        self.precision = precision
        self.formats = StageFormats(model, model.student, model.segmentation, precision, device)
        self.run_dir = run_dir
        self.device = device
        self.distributed = distributed or Distributed()
        self.formats.enter(1)
        # What each stage trains, as DistributedDataParallel replicas under torchrun.
        self.student_net = self.distributed.wrap(model.student)
        self.segmentation_net = self.distributed.wrap(model.segmentation)
        if config.train.compile:
            # Fuses the segmentation net's element-wise work (PA blocks, RCM) into its convolutions: stage 2 dominates
            # training. The student stays eager: compiling it takes minutes for little, and inductor's channels_last
            # layouts meet the oneDNN bf16 gradient bug that the contiguous islands avoid (docs/performance.md).
            self.segmentation_net = torch.compile(self.segmentation_net)
        self._compile_hint = f"train without it: --set train.compile=false, or compile: false in {run_dir / CONFIG_FILE} and --resume"
        self.optimizers = Optimizers.create(model, config)
        # The running mean of the segmentation net's weights over the last stage-2 steps (train.seg_average_last).
        self.average = WeightAverage(model.segmentation) if config.train.seg_average_last > 0 else None
        self.step = 0

    @property
    def total_steps(self) -> int:
        return self.config.train.student_steps + self.config.train.segmentation_steps

    def stage(self, step: int) -> int:
        return 1 if step < self.config.train.student_steps else 2

    @property
    def averaged_steps(self) -> int:
        """How many of the first ``self.step`` steps fall in the averaging window (the last ``seg_average_last`` of stage 2)."""
        recipe = self.config.train
        window = round(recipe.seg_average_last * recipe.segmentation_steps)
        return max(0, self.step - (self.total_steps - window))

    # ------------------------------------------------------------------ one step of each stage

    def student_step(self) -> float:
        self.formats.enter(1)
        clean, synthetic, _ = self.batches.next()
        self.model.student.train()
        teacher = self.model.teacher
        with self.precision.autocast(self.device):
            with torch.no_grad():
                target = teacher(clean)  # the teacher's features of the clean image ...
            predicted = self.student_net(teacher.normalize(synthetic))  # ... reproduced from the synthetic one
            loss = cosine_loss([cosine_distance(t, s) for t, s in zip(target, predicted)])
        self.optimizers.student.zero_grad(set_to_none=True)
        loss.backward()
        self._set_rates(self.optimizers.student, (self.config.train.lr_student,))
        self.optimizers.student.step()
        return loss.item()

    def segmentation_step(self) -> float:
        self.formats.enter(2)
        _, synthetic, mask = self.batches.next()
        self.model.student.eval()
        self.model.segmentation.train()
        recipe = self.config.train
        with self.precision.autocast(self.device), compile_errors(self._compile_hint):
            logits = self.segmentation_net(segmentation_input(*self.model.features(synthetic)))
            loss = segmentation_loss(logits, mask, recipe.focal_gamma)
        self.optimizers.segmentation.zero_grad(set_to_none=True)
        loss.backward()
        self._set_rates(self.optimizers.segmentation, (recipe.lr_seg_blocks, recipe.lr_seg_head))
        self.optimizers.segmentation.step()
        return loss.item()

    def rate_factor(self, step: int) -> float:
        """The multiplier of the stage's base learning rates at ``step``: warm-up, then the schedule.

        A function of the step alone, so a resumed run stays exact.
        """
        recipe = self.config.train
        stage = self.stage(step)
        index, length = (step, recipe.student_steps) if stage == 1 else (step - recipe.student_steps, recipe.segmentation_steps)
        factor = 1.0
        if stage == 2 and recipe.seg_warmup_steps > 0:
            factor = min(1.0, (index + 1) / recipe.seg_warmup_steps)
        if recipe.lr_schedule == "cosine":  # half a cosine from 1 at the stage's first step towards 0 after its last
            factor *= 0.5 * (1.0 + math.cos(math.pi * index / length))
        return factor

    def _average(self) -> None:
        """After a step: fold the segmentation net's weights into the mean when in the window; after the last step, keep the mean."""
        if self.average is None or self.averaged_steps == 0:
            return
        self.average.update()
        if self.step == self.total_steps:
            self.average.apply()

    def _set_rates(self, optimizer: torch.optim.SGD, bases: tuple[float, ...]) -> None:
        factor = self.rate_factor(self.step)
        for group, base in zip(optimizer.param_groups, bases, strict=True):
            group["lr"] = base * factor

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self) -> None:
        """Weights, momentum buffers and RNG state in one file, written atomically."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(self.optimizers.momentum_state(self.model))
        tensors.update({f"rng.{k}": v for k, v in self.batches.rng_state().items()})
        if self.average is not None:
            tensors.update({f"average.{k}": v for k, v in self.average.tensors.items()})
        save_tensors(self.run_dir / CHECKPOINT_FILE, tensors, metadata_json(step=self.step))

    def load_checkpoint(self) -> None:
        path = self.run_dir / CHECKPOINT_FILE
        tensors = load_tensors(path)
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        load_state_strict(self.model, model_state, path)
        self.optimizers.load_momentum_state(self.model, tensors)
        self.batches.set_rng_state({k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")})
        with safe_open(str(path), framework="pt") as f:
            self.step = int(json.loads(f.metadata()["step"]))
        if self.average is not None:
            saved = {k[len("average."):]: v for k, v in tensors.items() if k.startswith("average.")}
            if saved.keys() != self.average.tensors.keys():
                raise PfadsegError(f"{path}: the checkpoint holds no weight average; resume with the train.seg_average_last "
                                   f"it was started with")
            self.average.load(saved, self.averaged_steps)
        self._truncate_log()

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint: they will be run again."""
        log = self.run_dir / LOG_FILE
        if log.exists():
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= self.step]
            write_text_atomic(log, "".join(line + "\n" for line in kept))

    # ------------------------------------------------------------------ the loop

    def fit(self, progress: bool = True) -> dict[str, float]:
        """Train to the end; returns a summary (seconds per stage, final losses)."""
        recipe = self.config.train
        main = self.distributed.is_main  # only rank 0 shows progress, logs and checkpoints
        summary: dict[str, float] = {}
        bar = progress_bar(self.total_steps, "train", "steps", enabled=progress and main, initial=self.step)
        with (self.run_dir / LOG_FILE).open("a", encoding="utf-8") if main else contextlib.nullcontext() as log:
            while self.step < self.total_steps:
                stage = self.stage(self.step)
                started = time.perf_counter()
                loss = self.student_step() if stage == 1 else self.segmentation_step()
                seconds = time.perf_counter() - started
                if not math.isfinite(loss):
                    raise PfadsegError(
                        f"training diverged at step {self.step + 1} (stage {stage}, loss {loss}); the last checkpoint in "
                        f"{self.run_dir} is kept; try --precision fp32 or lower learning rates (--set train.lr_...)"
                    )
                self.step += 1
                self._average()
                key = "student" if stage == 1 else "segmentation"
                summary[f"{key}_seconds"] = summary.get(f"{key}_seconds", 0.0) + seconds
                summary[f"{key}_loss"] = loss
                bar.set_description(f"train (stage {stage}, {key})")
                bar.set_postfix(loss=f"{loss:.4f}")
                bar.update(1)
                if main and (self.step % recipe.log_every == 0 or self.step == self.total_steps):
                    log.write(json.dumps({"step": self.step, "stage": stage, "loss": loss, "seconds": round(seconds, 4)}) + "\n")
                    log.flush()
                if self.step == recipe.student_steps:
                    self.distributed.sync_buffers(self.model.student)
                if main and (self.step % recipe.checkpoint_every == 0 or self.step == recipe.student_steps):
                    self.save_checkpoint()
        self.distributed.sync_buffers(self.model)  # replicas end identical: rank 0's BatchNorm statistics everywhere
        self.formats.release()
        bar.close()
        return summary
