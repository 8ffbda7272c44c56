"""Inference through PyTorch from a run directory, with the thresholds set for the chosen precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pfadseg.models.deployed import DeployedModel
from pfadseg.rundir import load_run
from pfadseg.thresholds import load_thresholds
from pfadseg.training.runtime import compile_fixed_batch, to_device


class TorchBackend:
    """A run directory as a prediction backend: RGB uint8 batches at the trained size → maps and scores."""

    def __init__(self, run_dir: str | Path, device: str = "auto", precision: str = "fp32", compile_batch: int | None = None) -> None:
        """``precision``: fp32 (the decision precision) or bf16 (faster; needs its own thresholds, see ``pfadseg calibrate``).
        ``compile_batch``: run through ``torch.compile``, compiled once for batches of this size."""
        self.precision = precision
        self.thresholds = load_thresholds(run_dir, precision)
        self.run = load_run(run_dir, device, precision)
        config = self.run.config
        self.image_size, self.eval_size, self.top_k = config.train.image_size, config.train.eval_size, config.model.top_k
        self.layout = config.data.layout(self.image_size)
        fusion = self.run.model.fusion
        self.knn_score_weight = fusion.score_weight if fusion is not None and self.layout is not None else None
        # A tile's map is wanted at the tile's own size, for stitching; a squared image's at the evaluation size.
        self.deployed = DeployedModel(self.run.model, self.eval_size if self.layout is None else None).eval()
        self.forward = self.deployed if compile_batch is None else compile_fixed_batch(self.deployed, compile_batch)
        self.name = f"pytorch {precision}" + (", compiled" if compile_batch is not None else "")

    @torch.no_grad()
    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W, 3) uint8 → maps (N, C, H, W) float32 at the trained size and scores (N,) (see ``Backend``)."""
        run = self.run
        x = to_device(torch.from_numpy(batch).permute(0, 3, 1, 2), run.device).contiguous(memory_format=run.precision.memory_format())
        with run.precision.autocast(run.device):
            maps, scores = self.forward(x)
        return maps.float().cpu().numpy(), scores.float().cpu().numpy()
