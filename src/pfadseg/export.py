"""``pfadseg export``: a run as one ONNX file with normalisation inside, checked against PyTorch.

The file takes ``image``: uint8 RGB ``(N, 3, H, W)`` at the trained size (N dynamic; H and W too, multiples of
32, in the `aspect` geometry) and gives
``anomaly_map``: float32 ``(N, 1, H, W)`` and ``score``: float32 ``(N,)``, the score exactly as
``pfadseg test`` computes it. In the `tiles` and `aspect` geometries the file is a per-tile model whose
maps the predictor stitches and scores; a fused model's ``anomaly_map`` then has 3 channels (the fused
map, then the segmentation and kNN maps the image score combines). The run's image size, geometry and
OK/NG thresholds travel in the file's metadata, so ``pfadseg predict --model FILE.onnx`` needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pfadseg.config import dump_yaml
from pfadseg.data.datasets import Sample, load_images, load_scaled_images, load_splits
from pfadseg.data.tiling import Layout, TileLayout, WholeImage
from pfadseg.errors import PfadsegError
from pfadseg.fileio import atomic_path
from pfadseg.models.deployed import DeployedModel
from pfadseg.onnx_backend import META_GEOMETRY, META_IMAGE_SIZE, META_THRESHOLDS, OnnxBackend
from pfadseg.rundir import load_run
from pfadseg.thresholds import load_thresholds
from pfadseg.version import __version__

MAP_TOLERANCE = 1e-4
SCORE_TOLERANCE = 1e-5
OPSET = 18


@dataclass
class ExportReport:
    """Where the file went and how closely onnxruntime reproduces PyTorch (fp32) on the check images."""

    path: Path
    images: int = 0
    max_map_difference: float = 0.0
    max_score_difference: float = 0.0
    onnx_images_per_second: float = 0.0
    torch_images_per_second: float = 0.0

    def summary(self) -> str:
        if not self.images:
            return f"{self.path}: written without the parity check"
        return (f"{self.path}: parity on {self.images} images: max |Δmap| {self.max_map_difference:.2e} (≤ {MAP_TOLERANCE:g}), "
                f"max |Δscore| {self.max_score_difference:.2e} (≤ {SCORE_TOLERANCE:g}); onnxruntime {self.onnx_images_per_second:.1f} "
                f"images/s, PyTorch fp32 {self.torch_images_per_second:.1f} images/s")


def _timed_batches(fn, batches: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Run ``fn`` over each batch; (maps per batch, scores, images per second)."""
    maps, scores = [], []
    started = time.perf_counter()
    for batch in batches:
        m, s = fn(batch)
        maps.append(m)
        scores.append(s)
    scores = np.concatenate(scores)
    return maps, scores, len(scores) / (time.perf_counter() - started)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Keep the exporter's step-by-step printout, its notes about torchvision ops and torch-internal warnings off the console."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch-internal deprecations, not the user's concern
            yield
    finally:
        logger.setLevel(level)


def _onnx_modules():
    """The ``onnx`` module, checking that torch's exporter (onnxscript) and onnxruntime (the parity check) are there too."""
    try:
        import onnx
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise PfadsegError(f"pfadseg export needs the onnx extra ({err.name} is missing): pip install 'pfadseg[onnx]'") from None
    return onnx


def export_onnx(run_dir: str | Path, out: str | Path | None = None, *, check: bool = True, batch_size: int = 8) -> ExportReport:
    """Export ``run_dir`` to ``out`` (default ``RUN/model.onnx``); with ``check``, compare with PyTorch on the run's test images
    and refuse to write a file that disagrees."""
    onnx = _onnx_modules()

    run = load_run(run_dir, device="cpu", precision="fp32")
    config = run.config
    size, layout = config.train.image_size, config.data.layout(config.train.image_size)
    # In the `tiles` and `aspect` geometries the file is a per-tile model (the map at the input's size, any size in
    # `aspect`); the predictor scales, stitches and scores.
    deployed = DeployedModel(run.model.to(memory_format=torch.contiguous_format), None if layout else config.train.eval_size).eval()
    out = Path(out) if out else run.run_dir / "model.onnx"
    batches = None
    if check:  # read the check images first: a missing dataset fails before anything is written
        splits = load_splits(config.data)
        batches = check_batches(splits.test or splits.train, size, layout, batch_size)
    dims = {0: torch.export.Dim("batch", min=1, max=65536)}
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    if isinstance(layout, WholeImage):  # any height and width that are multiples of the coarsest stride
        m = layout.multiple
        dims.update({2: m * torch.export.Dim("height", min=1, max=4096), 3: m * torch.export.Dim("width", min=1, max=4096)})
        example = torch.zeros(2, 3, size, size + m, dtype=torch.uint8)
    with atomic_path(out) as tmp:
        with torch.no_grad(), _quiet_exporter():
            torch.onnx.export(deployed, (example,), str(tmp), input_names=["image"],
                              output_names=["anomaly_map", "score"], opset_version=OPSET, dynamo=True, verbose=False,
                              external_data=False,  # one self-contained file, no weights file beside it
                              dynamic_shapes=(dims,))
        model = onnx.load(str(tmp))
        geometry = {"geometry": config.data.geometry, "eval_size": config.train.eval_size, "top_k": config.model.top_k}
        if isinstance(layout, TileLayout):
            geometry.update(scale=layout.scale, overlap=layout.overlap)
        if layout is not None and run.model.fusion is not None:
            geometry.update(knn_score_weight=run.model.fusion.score_weight)
        metadata = {META_IMAGE_SIZE: str(size), META_THRESHOLDS: json.dumps(load_thresholds(run.run_dir)), META_GEOMETRY: json.dumps(geometry),
                    "pfadseg.version": __version__, "pfadseg.config": dump_yaml(config)}
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        model.doc_string = "PFADSeg anomaly detector: uint8 RGB image (N,3,H,W) -> anomaly_map (N,C,H,W), score (N,); C: see pfadseg.geometry"
        onnx.save(model, str(tmp))
        if batches is None:
            return ExportReport(out)
        report = check_parity(tmp, deployed, batches)
        report.path = out
    return report


def check_batches(samples: list[Sample], size: int, layout: Layout | None, batch_size: int) -> list[np.ndarray]:
    """The parity check's inputs, RGB uint8 (B, H, W, 3): the images at the trained size (`square`, `tiles`: a tile's
    size), or each image alone at its own scaled size (`aspect`)."""
    if isinstance(layout, WholeImage):
        return [layout.tiles(image, layout.boxes(*image.shape[:2])) for image in load_scaled_images(samples, layout)]
    images = load_images(samples, size).permute(0, 2, 3, 1).numpy()
    return [images[i : i + batch_size] for i in range(0, len(images), batch_size)]


def check_parity(path: Path, deployed: DeployedModel, batches: list[np.ndarray]) -> ExportReport:
    """Run the ONNX file and the PyTorch model (fp32) on the same batches; raise if they disagree."""

    @torch.no_grad()
    def torch_fn(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = deployed(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())
        return maps.numpy(), scores.numpy()

    ref_maps, ref_scores, torch_speed = _timed_batches(torch_fn, batches)
    maps, scores, onnx_speed = _timed_batches(OnnxBackend(path), batches)
    map_difference = max(float(np.abs(m - r).max()) for m, r in zip(maps, ref_maps))
    report = ExportReport(path, len(scores), map_difference, float(np.abs(scores - ref_scores).max()), onnx_speed, torch_speed)
    if report.max_map_difference > MAP_TOLERANCE or report.max_score_difference > SCORE_TOLERANCE:
        raise PfadsegError(f"{path.name}: the ONNX model disagrees with PyTorch (max |Δmap| {report.max_map_difference:.2e}, "
                           f"max |Δscore| {report.max_score_difference:.2e}); nothing was written")
    return report
