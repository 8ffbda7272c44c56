"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder: ``$PFADSEG_SHARED_DATA``, else ``<repo>/../shared/data``.

    Missing data skips the test, except under CI (``$CI`` set), where it is an error.
    """
    env = os.environ.get("PFADSEG_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        reason = f"shared data folder not found at {path} (set PFADSEG_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must have it")
        pytest.skip(reason)
    return path


def write_tiny_mvtec(root: Path, size: int | tuple[int, int] = 48, seed: int = 0) -> Path:
    """A minimal MVTec-layout category 'widget': smooth random surfaces (``size`` or (height, width)), bright-square defects."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    height, width = (size, size) if isinstance(size, int) else size

    def surface() -> np.ndarray:
        base = ndimage.gaussian_filter(rng.random((height, width, 3)), sigma=(3, 3, 0))
        return (80 + 120 * (base - base.min()) / (np.ptp(base) + 1e-9)).astype(np.uint8)

    cat = root / "widget"
    for i in range(8):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(surface()).save(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(3):
        (cat / "test" / "good").mkdir(parents=True, exist_ok=True)
        Image.fromarray(surface()).save(cat / "test" / "good" / f"{i:03d}.png")
    for i in range(3):
        image, mask = surface(), np.zeros((height, width), np.uint8)
        y, x = rng.integers(4, min(height, width) - 16, 2)
        image[y : y + 10, x : x + 12] = 250
        mask[y : y + 10, x : x + 12] = 255
        for sub, arr, name in (("test", image, f"{i:03d}.png"), ("ground_truth", mask, f"{i:03d}_mask.png")):
            (cat / sub / "scratch").mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(cat / sub / "scratch" / name)
    return root


@pytest.fixture()
def tiny_mvtec(tmp_path: Path) -> Path:
    """A fresh tiny MVTec-layout dataset (category ``widget``) that a test may modify."""
    return write_tiny_mvtec(tmp_path / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One debug-preset run on the tiny dataset, shared read-only by the tests that need a trained model."""
    from pfadseg.cli import main

    root = tmp_path_factory.mktemp("trained")
    data = write_tiny_mvtec(root / "data")
    run = root / "run"
    args = ["train", "--data", str(data), "--category", "widget", "--preset", "debug", "--teacher",
            "efficientnet_lite0", "--out", str(run), "--quiet"]
    assert main(args) == 0
    return run


@pytest.fixture()
def tiny_trainer(tmp_path: Path):
    """A factory: the real Trainer of a RunConfig on eight random 32² images, run directory ``tmp_path``.

    Seeded, so two calls with one config build the same model (as a resumed run would).
    """
    import torch

    from pfadseg.data.augment import augmentation_for_category
    from pfadseg.data.synthesis import AnomalySynthesizer
    from pfadseg.models import build_model
    from pfadseg.training.batches import BatchMaker
    from pfadseg.training.runtime import Precision
    from pfadseg.training.trainer import Trainer

    def make(config, precision: Precision = Precision(None, False)) -> Trainer:
        torch.manual_seed(0)
        model = build_model(config.model, pretrained=False)
        images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
        textures = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        batches = BatchMaker(images, AnomalySynthesizer(textures, config.synthesis), augmentation_for_category("none"),
                             config.train.batch_size, 0, precision.memory_format())
        return Trainer(model, config, batches, precision, tmp_path, torch.device("cpu"))

    return make
