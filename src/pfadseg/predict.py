"""``pfadseg predict``: anomaly maps, overlays, binary masks and OK/NG decisions for new images.

Torch is not imported here: a run directory brings in :mod:`pfadseg.torch_backend`, an exported
``.onnx`` file only :mod:`pfadseg.onnx_backend` (onnxruntime).
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from pfadseg.data.images import find_images, read_image, resize_image, resize_map
from pfadseg.data.tiling import Layout, TileLayout, layout_score, stitch_tiles
from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path, write_text_atomic
from pfadseg.progress import Progress, progress_bar
from pfadseg.visualize import overlay


@dataclass
class Prediction:
    """One image's result: the map at the image's own resolution, its score and the decision."""

    path: Path
    anomaly_map: np.ndarray  # (H, W) float32 in [0, 1]
    score: float
    is_anomalous: bool


def collect_inputs(inputs: list[str | Path], out_dir: Path | None = None) -> list[tuple[Path, Path]]:
    """Files and folders (searched recursively, ``out_dir`` left out) → (image path, output-relative path), in a stable order."""
    found: list[tuple[Path, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images = find_images(item, skip=out_dir)
            if not images:
                raise PfadsegError(f"{item}: no images in this folder or below it")
            found.extend((p, p.relative_to(item)) for p in images)
        elif item.is_file():
            found.append((item, Path(item.name)))
        else:
            raise PfadsegError(f"{item}: no such file or folder")
    return found


class Backend(Protocol):
    """Runs the model: RGB uint8 batches (N, H, W, 3) at ``image_size`` → maps (N, C, H, W) float32 and scores (N,).

    ``precision``: what the scores are computed in; ``thresholds``: image and pixel thresholds, and the
    precision of the scores they were set on (None: unknown). ``layout``: the `tiles` or `aspect` geometry's (the
    batches are then tiles, or one whole scaled image, whose maps the predictor stitches and scores as evaluation does, at ``eval_size``²
    with ``top_k``), or None. ``knn_score_weight``: for a fused model in a layout, the fusion's weight of the kNN score
    (its maps then have C = 3 channels, see :class:`~pfadseg.models.deployed.DeployedModel`); else None and C = 1.
    """

    name: str
    image_size: int
    precision: str
    thresholds: dict[str, Any]
    layout: Layout | None
    eval_size: int
    top_k: int
    knn_score_weight: float | None

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def open_backend(model: str | Path, device: str = "auto", compile: bool = False, batch_size: int = 8, precision: str = "fp32") -> Backend:
    """A run directory (PyTorch) or an exported ``.onnx`` file (onnxruntime, fp32; torch is not imported).

    ``compile`` (run directories only): ``torch.compile`` once for batches of ``batch_size``.
    ``precision`` (run directories only): fp32, the decision precision, or bf16 with thresholds of its own.
    """
    path = Path(model)
    if path.suffix.lower() == ".onnx":
        if compile or precision != "fp32":
            raise PfadsegError(f"{path}: --compile and --precision apply to a run directory (PyTorch); an ONNX model runs in fp32")
        from pfadseg.onnx_backend import OnnxBackend

        return OnnxBackend(path)
    from pfadseg.torch_backend import TorchBackend

    return TorchBackend(path, device, precision, compile_batch=batch_size if compile else None)


def threshold_warning(backend: Backend) -> str | None:
    """A warning when the thresholds were set on scores of another (or an unknown) precision than the backend computes."""
    precision = backend.thresholds.get("precision")
    if precision == backend.precision:
        return None
    return (f"the thresholds were set on {precision or 'scores of an unrecorded precision (an earlier pfadseg)'}, these scores are "
            f"{backend.precision}: decisions near a threshold may differ; set them again with `pfadseg calibrate`")


class Predictor:
    """Runs a backend on images of any size; maps come back at each image's own size, decisions use its thresholds."""

    def __init__(self, backend: Backend, batch_size: int = 8) -> None:
        self.backend = backend
        self.thresholds = backend.thresholds
        self.batch_size = batch_size  # tiles per forward pass in the `tiles` geometry
        self.tiles_run = 0  # tiles through the model so far (in the `tiles` geometry)

    def predict_arrays(self, images: list[np.ndarray], paths: list[Path]) -> list[Prediction]:
        """RGB uint8 arrays (any sizes) → predictions; one batched forward pass at the training size, or each image's tiles
        (its one whole scaled input in `aspect`)."""
        if self.backend.layout is not None:
            return [self._predict_layout(image, path) for image, path in zip(images, paths)]
        size = self.backend.image_size
        maps, scores = self.backend(np.stack([resize_image(a, size) for a in images]))
        return [Prediction(path, resize_map(m[0], image.shape[:2]), float(score), float(score) >= self.thresholds["image"])
                for image, path, m, score in zip(images, paths, maps, scores)]

    def _predict_layout(self, image: np.ndarray, path: Path) -> Prediction:
        """One image in the `tiles` or `aspect` geometry: scaled, its tiles in batches, stitched, scored at the evaluation
        size (as ``pfadseg test``)."""
        backend, layout = self.backend, self.backend.layout
        height, width = image.shape[:2]
        scaled = resize_image(image, layout.scaled_size(height, width))
        channels = 1 if backend.knn_score_weight is None else 3
        stitched = stitch_tiles(scaled, layout, lambda batch: backend(batch)[0], self.batch_size, channels)
        if isinstance(layout, TileLayout):
            self.tiles_run += len(layout.boxes(*scaled.shape[:2]))
        score = layout_score(stitched, backend.eval_size, backend.top_k, backend.knn_score_weight)
        return Prediction(path, resize_map(stitched[0], (height, width)), score, score >= self.thresholds["image"])

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


def _read_batch(items: list[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path, np.ndarray]], list[tuple[Path, str]]]:
    """Decode one batch of files: (path, rel, image) for the readable ones, (path, error) for the others."""
    good, bad = [], []
    for path, rel in items:
        try:
            good.append((path, rel, read_image(path)))
        except PfadsegError as err:
            bad.append((path, str(err)))
    return good, bad


def predict_to_folder(
    model: str | Path,
    inputs: list[str],
    out_dir: Path,
    device: str = "auto",
    batch_size: int = 8,
    progress: bool = True,
    compile: bool = False,
    precision: str = "fp32",
) -> str:
    """Predict every input image into ``out_dir`` with ``predictions.csv``; returns a one-paragraph summary.

    ``model`` is a run directory or an exported ``.onnx`` file. An unreadable image is skipped with
    a warning on stderr and listed as SKIPPED in the table; the others are still processed.
    """
    if batch_size < 1:
        raise PfadsegError(f"--batch-size must be at least 1, got {batch_size}")
    predictor = Predictor(open_backend(model, device, compile, batch_size, precision), batch_size)
    items = collect_inputs(inputs, out_dir)
    started = time.perf_counter()
    bar = progress_bar(len(items), f"predict ({predictor.backend.name})", "images", enabled=progress)
    warning = threshold_warning(predictor.backend)
    if warning:
        bar.write(f"pfadseg: warning: {warning}")
    rows = _predict_stream(predictor, items, out_dir, batch_size, bar)
    bar.close()
    buf = io.StringIO()
    csv.writer(buf).writerows([["image", "score", "decision"], *rows])
    write_text_atomic(out_dir / "predictions.csv", buf.getvalue())
    seconds = time.perf_counter() - started
    skipped = sum(r[2] == "SKIPPED" for r in rows)
    done, ng = len(items) - skipped, sum(r[2] == "NG" for r in rows)
    tiled = f", {predictor.tiles_run} tiles, {predictor.tiles_run / max(seconds, 1e-9):.1f} tiles/s" if predictor.tiles_run else ""
    return (f"{done} images in {seconds:.1f} s ({done / max(seconds, 1e-9):.1f} images/s{tiled}, {predictor.backend.name}): "
            f"{ng} NG, {done - ng} OK (image threshold {predictor.thresholds['image']:.4f}, pixel threshold "
            f"{predictor.thresholds['pixel']:.4f})" + (f"; {skipped} unreadable files skipped" if skipped else "")
            + f"; results in {out_dir}, table {out_dir / 'predictions.csv'}")


def _predict_stream(predictor: Predictor, items: list[tuple[Path, Path]], out_dir: Path, batch_size: int, bar: Progress) -> list[list[str]]:
    """Predict and write the items batch by batch; rows of (image, score, decision).

    A reader thread decodes the next batch while the model runs on this one, so memory stays
    bounded by two batches however large the folder.
    """
    rows: list[list[str]] = []
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(_read_batch, batches[0]) if batches else None
        for n in range(len(batches)):
            good, bad = pending.result()
            pending = reader.submit(_read_batch, batches[n + 1]) if n + 1 < len(batches) else None
            for path, error in bad:
                bar.write(f"pfadseg: warning: skipped {error}")
                rows.append([str(path), "", "SKIPPED"])
            if good:
                images = [image for _, _, image in good]
                for pred, image, (_, rel, _) in zip(predictor.predict_arrays(images, [p for p, _, _ in good]), images, good):
                    predictor.write(pred, image, out_dir, rel)
                    rows.append([str(pred.path), f"{pred.score:.9g}", "NG" if pred.is_anomalous else "OK"])  # every digit float32 has
            bar.update(len(batches[n]))
    return rows
