"""``pfadseg predict``: anomaly maps, overlays, binary masks and OK/NG decisions for new images."""

from __future__ import annotations

import csv
import io
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from pfadseg.data.datasets import list_images
from pfadseg.data.images import read_image, resize_image
from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path, write_text_atomic
from pfadseg.runs import LoadedRun, load_run, load_thresholds
from pfadseg.visualize import overlay


@dataclass
class Prediction:
    """One image's result: the map at the image's own resolution, its score and the decision."""

    path: Path
    anomaly_map: np.ndarray  # (H, W) float32 in [0, 1]
    score: float
    is_anomalous: bool


def collect_inputs(inputs: list[str | Path]) -> list[tuple[Path, Path]]:
    """Files and folders (searched recursively) → (image path, output-relative path), in a stable order."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = list_images(item)
            if not images:
                raise PfadsegError(f"{item}: no images in this folder")
            found.extend((p, p.relative_to(item)) for p in images)
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            raise PfadsegError(f"{item}: no such file or folder")
    return found


class Predictor:
    """Runs a loaded model on images of any size; decisions use the run's thresholds."""

    def __init__(self, run: LoadedRun) -> None:
        self.run = run
        self.thresholds = load_thresholds(run.run_dir)

    @torch.no_grad()
    def predict_arrays(self, images: list[np.ndarray], paths: list[Path]) -> list[Prediction]:
        """RGB uint8 arrays (any sizes) → predictions; one batched forward pass at the training size."""
        t = self.run.config.train
        size = (t.image_size, t.image_size)
        batch = np.stack([resize_image(a, size) for a in images])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.run.device).float().div_(255)
        x = x.contiguous(memory_format=self.run.precision.memory_format())
        model = self.run.model
        with self.run.precision.autocast(self.run.device):
            p = model.segment(x).float()
        scores = model.scored_map(p, (t.eval_size, t.eval_size))[1].cpu().numpy()
        results = []
        for i, (image, path) in enumerate(zip(images, paths)):
            native = F.interpolate(p[i : i + 1], size=image.shape[:2], mode="bilinear", align_corners=False)
            score = float(scores[i])
            results.append(Prediction(path, native[0, 0].cpu().numpy(), score, score >= self.thresholds["image"]))
        return results

    def predict_file(self, path: str | Path) -> Prediction:
        """One image file → its prediction."""
        return self.predict_arrays([read_image(path)], [Path(path)])[0]

    def write(self, prediction: Prediction, image: np.ndarray, out_dir: Path, rel: Path) -> None:
        """``<rel>_overlay.png``, ``<rel>_map.npy`` (float32, native size) and ``<rel>_mask.png`` (0/255)."""
        base = out_dir / rel.parent / rel.stem
        with atomic_path(f"{base}_overlay.png") as tmp:
            Image.fromarray(overlay(image, prediction.anomaly_map)).save(tmp, format="PNG")
        with atomic_path(f"{base}_map.npy") as tmp, tmp.open("wb") as f:
            np.save(f, prediction.anomaly_map.astype(np.float32))
        mask = (prediction.anomaly_map >= self.thresholds["pixel"]).astype(np.uint8) * 255
        with atomic_path(f"{base}_mask.png") as tmp:
            Image.fromarray(mask).save(tmp, format="PNG")


def predict_to_folder(
    run_dir: str | Path,
    inputs: list[str],
    out_dir: Path,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
) -> str:
    """Predict every input image into ``out_dir`` with ``predictions.csv``; returns a one-paragraph summary.

    An unreadable image is reported on stderr and listed as ERROR; the others are still processed,
    and the command then fails (non-zero exit) naming how many could not be read.
    """
    predictor = Predictor(load_run(run_dir, device))
    items = collect_inputs(inputs)
    rows: list[list[str]] = []
    failures = 0
    started = time.perf_counter()
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=not progress)
    for start in range(0, len(items), batch_size):
        chunk, images = [], []
        for path, rel in items[start : start + batch_size]:
            try:
                images.append(read_image(path))
                chunk.append((path, rel))
            except PfadsegError as err:
                print(f"pfadseg: error: {err}", file=sys.stderr)
                rows.append([str(path), "", "ERROR"])
                failures += 1
        if chunk:
            for pred, image, (_, rel) in zip(predictor.predict_arrays(images, [p for p, _ in chunk]), images, chunk):
                predictor.write(pred, image, out_dir, rel)
                rows.append([str(pred.path), f"{pred.score:.6f}", "NG" if pred.is_anomalous else "OK"])
        bar.update(len(items[start : start + batch_size]))
    bar.close()
    buf = io.StringIO()
    csv.writer(buf).writerows([["image", "score", "decision"], *rows])
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue())
    seconds = time.perf_counter() - started
    ng = sum(r[2] == "NG" for r in rows)
    summary = (f"{len(items) - failures} images in {seconds:.1f} s ({(len(items) - failures) / max(seconds, 1e-9):.1f} images/s): "
               f"{ng} NG, {len(items) - failures - ng} OK (image threshold {predictor.thresholds['image']:.4f}); "
               f"results in {out_dir}, table {out_dir / 'predictions.csv'}")
    if failures:
        raise PfadsegError(f"{failures} of {len(items)} images could not be read (listed as ERROR in {out_dir / 'predictions.csv'})")
    return summary
