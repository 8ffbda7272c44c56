"""The built-in demo dataset: speed, layout, pixel-exact masks, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pfadseg.data.datasets import load_mvtec
from pfadseg.data.demo_generator import (
    DEMO_CATEGORIES,
    DemoConfig,
    DemoItem,
    demo_items,
    render_demo_item,
    write_demo_dataset,
)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    assert write_demo_dataset(root, seed=0) == list(DEMO_CATEGORIES)
    return root


def test_layout_loads_as_mvtec(demo_root: Path) -> None:
    cfg = DemoConfig()
    for name in DEMO_CATEGORIES:
        d = load_mvtec(demo_root, name)
        assert len(d.train) == cfg.train_good
        assert sum(1 for s in d.test if not s.label) == cfg.test_good
        assert sum(s.label for s in d.test) == cfg.test_defective
        assert len(d.defect_types()) >= 4


def test_defects_change_exactly_the_mask_pixels(demo_root: Path) -> None:
    for name in DEMO_CATEGORIES:
        areas = []
        for item in demo_items(name):
            image = np.asarray(Image.open(demo_root / item.image_rel))
            twin, _ = render_demo_item(item, seed=0, with_defect=False)
            assert image.shape == (256, 256, 3) and image.dtype == np.uint8
            changed = (image != twin).any(axis=2)
            if item.mask_rel is None:
                assert not changed.any(), item  # good images are untouched
                continue
            mask = np.asarray(Image.open(demo_root / item.mask_rel))
            assert mask.ndim == 2 and set(np.unique(mask).tolist()) <= {0, 255}, item
            assert mask.any(), item
            assert np.array_equal(changed, mask == 255), item
            areas.append((mask == 255).mean())
        print(f"\n{name}: defect area {100 * min(areas):.2f}-{100 * max(areas):.2f} % (mean {100 * np.mean(areas):.2f} %)")
    assert not (demo_root / "fabric" / "ground_truth" / "good").exists()


def test_good_images_vary(demo_root: Path) -> None:
    for name in DEMO_CATEGORIES:
        a = np.asarray(Image.open(demo_root / name / "train" / "good" / "000.png")).astype(int)
        b = np.asarray(Image.open(demo_root / name / "train" / "good" / "001.png")).astype(int)
        assert np.abs(a - b).mean() > 2


def test_idempotent_and_seeded(tmp_path: Path) -> None:
    cfg = DemoConfig(train_good=2, test_good=1, test_defective=5)
    write_demo_dataset(tmp_path / "a", seed=3, config=cfg)
    first = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.png"))}
    assert len(first) == len(DEMO_CATEGORIES) * (2 + 1 + 5 + 5)
    stamp = {p: (tmp_path / "a" / p).stat().st_mtime_ns for p in first}
    write_demo_dataset(tmp_path / "a", seed=3, config=cfg)
    again = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in sorted((tmp_path / "a").rglob("*.png"))}
    assert again == first
    assert stamp == {p: (tmp_path / "a" / p).stat().st_mtime_ns for p in first}
    assert not list((tmp_path / "a").rglob("*.tmp"))
    write_demo_dataset(tmp_path / "b", seed=4, config=cfg)
    other = (tmp_path / "b" / "fabric" / "train" / "good" / "000.png").read_bytes()
    assert other != first[Path("fabric/train/good/000.png")]


def test_render_is_deterministic() -> None:
    item = DemoItem("washer", "test", "bent_tab", 1)
    a, ma = render_demo_item(item, seed=7)
    b, mb = render_demo_item(item, seed=7)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)


def test_the_strip_category_is_a_wide_image_with_defects_a_few_pixels_wide() -> None:
    """``strip`` (opt-in): 2:8 line-scan images whose defects change exactly their mask, and are thin or small."""
    assert "strip" not in DEMO_CATEGORIES  # `pfadseg demo` keeps its two categories and its ten minutes
    for item in demo_items("strip", DemoConfig(size=64, train_good=1, test_good=1, test_defective=6)):
        image, mask = render_demo_item(item, seed=0, size=64)
        twin, _ = render_demo_item(item, seed=0, size=64, with_defect=False)
        assert image.shape == (128, 512, 3) and mask.shape == (128, 512)
        assert np.array_equal((image != twin).any(axis=2), mask)
        if item.defect_type == "good":
            continue
        assert 0 < mask.mean() < 0.01, item  # under 1 % of the image
        assert ndimage.binary_erosion(mask, iterations=6).sum() == 0, item  # nowhere 13 pixels thick


def test_unknown_demo_category_is_a_one_line_error(tmp_path: Path, capsys) -> None:
    from pfadseg.cli import main

    assert main(["demo", "--out", str(tmp_path), "--categories", "fabric,bolts", "--quiet"]) != 0
    assert "unknown demo category 'bolts'" in capsys.readouterr().err
