"""MVTec and folder dataset loaders: real data counts, split rules and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from pfadseg.data.datasets import (
    DataConfig,
    FolderSpec,
    folder_spec_from_args,
    load_folder,
    load_masks,
    load_mvtec,
    load_splits,
    parse_split,
)
from pfadseg.data.images import read_mask
from pfadseg.errors import PfadsegError

# --------------------------------------------------------------------------- real data


def test_bottle_counts_and_mask_pairing(shared_data: Path) -> None:
    d = load_mvtec(shared_data / "mvtec_ad", "bottle")
    assert len(d.train) == 209 and len(d.test) == 83
    good = [s for s in d.test if s.label == 0]
    bad = [s for s in d.test if s.label == 1]
    assert len(good) == 20 and len(bad) == 63
    assert all(s.mask_path is None and s.defect_type == "good" for s in good + d.train)
    assert len({s.mask_path for s in bad}) == 63
    for s in bad:
        assert s.mask_path.name == f"{s.image_path.stem}_mask.png"
        assert s.mask_path.parent.name == s.defect_type == s.image_path.parent.name
        assert s.rel_path == f"{s.defect_type}/{s.image_path.name}"
    assert d.defect_types() == ["broken_large", "broken_small", "contamination"]
    assert [s.rel_path for s in d.test] == sorted(s.rel_path for s in d.test)
    assert "209 train" in d.summary() and "\n" not in d.summary()


def test_magnetic_tile_standard_split(shared_data: Path) -> None:
    """benchmarks/magnetic_tile.yaml, the documented settings, gives the project's split."""
    settings = yaml.safe_load((Path(__file__).resolve().parents[1] / "benchmarks" / "magnetic_tile.yaml").read_text())["data"]
    d = load_splits(DataConfig(**{**settings, "root": str(shared_data / "magnetic_tile")}))
    good = [s for s in d.test if s.label == 0]
    bad = [s for s in d.test if s.label == 1]
    assert (len(d.train), len(good), len(bad)) == (761, 191, 392)
    assert all(s.image_path.suffix == ".jpg" for s in d.train + d.test)
    assert all(s.mask_path.suffix == ".png" and s.mask_path.stem == s.image_path.stem for s in bad)
    names = sorted(p.name for p in (shared_data / "magnetic_tile" / "MT_Free" / "Imgs").glob("*.jpg"))
    assert [s.image_path.name for s in good] == names[::5]
    assert {s.defect_type for s in bad} == {f"MT_{c}" for c in ("Blowhole", "Break", "Crack", "Fray", "Uneven")}
    empty = [s for s in bad if not read_mask(s.mask_path, binarize_at=d.binarize_at).any()]
    assert len(empty) == 4 and all(s.defect_type == "MT_Uneven" for s in empty)
    masks = load_masks(bad[:20], 64, binarize_at=d.binarize_at)
    assert masks.shape == (20, 1, 64, 64)


def test_magnetic_tile_from_cli_strings(shared_data: Path) -> None:
    spec = folder_spec_from_args(
        shared_data / "magnetic_tile",
        normal_dir="MT_Free",
        abnormal_dirs="MT_Blowhole, MT_Crack",
        images_subdir="Imgs",
        image_ext=".JPG",
        mask_ext="png",
        split="random:0.2:7",
    )
    d = load_folder(spec)
    assert len(d.test) - sum(s.label for s in d.test) == round(0.2 * 952)
    assert sum(s.label for s in d.test) == 115 + 57
    assert d.name == "magnetic_tile"


# --------------------------------------------------------------------------- synthetic trees


def _img(path: Path, size: tuple[int, int] = (8, 6), value: int = 100, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * 3).save(path)
    return path


def _mvtec(root: Path, category: str = "widget") -> Path:
    cat = root / category
    for i in range(3):
        _img(cat / "train" / "good" / f"{i:03d}.png")
    _img(cat / "test" / "good" / "000.png")
    _img(cat / "test" / "crack" / "000.png")
    _img(cat / "test" / "crack" / "001.JPG")
    _img(cat / "ground_truth" / "crack" / "000_mask.png", mode="L", value=255)
    _img(cat / "ground_truth" / "crack" / "001_mask.png", mode="L", value=255)
    return cat


def test_mvtec_synthetic_tree_and_extensions(tmp_path: Path) -> None:
    _mvtec(tmp_path)
    (tmp_path / "widget" / "train" / "good" / "notes.txt").write_text("ignored")
    d = load_mvtec(tmp_path, "widget")
    assert len(d.train) == 3 and [s.rel_path for s in d.test] == ["crack/000.png", "crack/001.JPG", "good/000.png"]


def test_unknown_category_lists_available(tmp_path: Path) -> None:
    _mvtec(tmp_path, "widget")
    _mvtec(tmp_path, "gadget")
    with pytest.raises(PfadsegError) as info:
        load_mvtec(tmp_path, "bottle")
    msg = str(info.value)
    assert "bottle" in msg and "gadget, widget" in msg and str(tmp_path) in msg


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(PfadsegError, match="does not exist"):
        load_mvtec(tmp_path / "nowhere", "bottle")


def test_empty_train_folder(tmp_path: Path) -> None:
    cat = _mvtec(tmp_path)
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(PfadsegError) as info:
        load_mvtec(tmp_path, "widget")
    assert str(cat / "train" / "good") in str(info.value)


def test_defective_image_without_mask(tmp_path: Path) -> None:
    cat = _mvtec(tmp_path)
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(PfadsegError) as info:
        load_mvtec(tmp_path, "widget")
    msg = str(info.value)
    assert str(cat / "test" / "crack" / "001.JPG") in msg
    assert str(cat / "ground_truth" / "crack" / "001_mask.png") in msg


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    cat = _mvtec(tmp_path)
    bad_mask = _img(cat / "ground_truth" / "crack" / "000_mask.png", size=(9, 6), mode="L")
    with pytest.raises(PfadsegError) as info:
        load_mvtec(tmp_path, "widget")
    assert str(bad_mask) in str(info.value)
    load_mvtec(tmp_path, "widget", check_masks=False)


def _folder_tree(root: Path, masks_beside: bool = True) -> None:
    for i in range(10):
        _img(root / "ok" / f"n{i:02d}.png")
    for cls in ("A_scratch", "A_dent"):
        for i in range(2):
            _img(root / cls / f"d{i}.png")
            mask = (root / cls / f"d{i}_gt.png") if masks_beside else (root / "masks" / cls / f"d{i}_gt.png")
            _img(mask, mode="L", value=255)


def test_folder_masks_beside_with_suffix_and_glob(tmp_path: Path) -> None:
    _folder_tree(tmp_path)
    spec = FolderSpec(tmp_path, "ok", ["A_*"], mask_suffix="_gt", split="every:5")
    d = load_folder(spec)
    assert [s.rel_path for s in d.train] == [f"ok/n{i:02d}.png" for i in (1, 2, 3, 4, 6, 7, 8, 9)]
    assert [s.rel_path for s in d.test if not s.label] == ["ok/n00.png", "ok/n05.png"]
    bad = [s for s in d.test if s.label]
    assert [s.rel_path for s in bad] == ["A_dent/d0.png", "A_dent/d1.png", "A_scratch/d0.png", "A_scratch/d1.png"]
    assert all(s.mask_path.name == s.image_path.stem + "_gt.png" for s in bad)


def test_folder_separate_mask_tree(tmp_path: Path) -> None:
    _folder_tree(tmp_path, masks_beside=False)
    d = load_folder(FolderSpec(tmp_path, "ok", ["A_scratch", "A_dent"], mask_dir="masks", mask_suffix="_gt"))
    assert all(s.mask_path.parent == tmp_path / "masks" / s.defect_type for s in d.test if s.label)
    with pytest.raises(PfadsegError) as info:
        load_folder(FolderSpec(tmp_path, "ok", ["A_*"], mask_dir="masks"))  # wrong suffix
    assert str(tmp_path / "masks" / "A_dent" / "d0.png") in str(info.value)


def test_folder_masks_beside_need_distinct_names(tmp_path: Path) -> None:
    _folder_tree(tmp_path)
    with pytest.raises(PfadsegError, match="mask extension"):
        load_folder(FolderSpec(tmp_path, "ok", ["A_*"]))  # .png masks beside .png images


def test_folder_split_variants(tmp_path: Path) -> None:
    _folder_tree(tmp_path)
    base = dict(root=tmp_path, normal_dir="ok", abnormal_dirs=["A_*"], mask_suffix="_gt")
    r1 = load_folder(FolderSpec(**base, split="random:0.3:1"))
    r2 = load_folder(FolderSpec(**base, split="random:0.3:1"))
    assert [s.rel_path for s in r1.test] == [s.rel_path for s in r2.test]
    assert len(r1.train) == 7
    (tmp_path / "test_list.txt").write_text("# normal test images\nn03.png\nok/n07.png\n")
    d = load_folder(FolderSpec(**base, split="list:test_list.txt"))
    assert [s.rel_path for s in d.test if not s.label] == ["ok/n03.png", "ok/n07.png"]
    for i in range(3):
        _img(tmp_path / "ok_test" / f"t{i}.png")
    d = load_folder(FolderSpec(**base, normal_test_dir="ok_test"))
    assert len(d.train) == 10 and sum(1 for s in d.test if not s.label) == 3
    for bad in ("every:0", "random:1.5:0", "sometimes", "list:"):
        with pytest.raises(PfadsegError, match="invalid split"):
            parse_split(bad)
    (tmp_path / "bad_list.txt").write_text("missing.png\n")
    with pytest.raises(PfadsegError, match="missing.png"):
        load_folder(FolderSpec(**base, split="list:bad_list.txt"))


def test_folder_errors(tmp_path: Path) -> None:
    _folder_tree(tmp_path)
    with pytest.raises(PfadsegError, match="no abnormal folder matches"):
        load_folder(FolderSpec(tmp_path, "ok", ["B_*"], mask_suffix="_gt"))
    with pytest.raises(PfadsegError) as info:
        load_folder(FolderSpec(tmp_path, "nothere", ["A_*"], mask_suffix="_gt"))
    assert str(tmp_path / "nothere") in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PfadsegError) as info:
        load_folder(FolderSpec(tmp_path, "empty", ["A_*"], mask_suffix="_gt"))
    assert str(tmp_path / "empty") in str(info.value)
    (tmp_path / "A_scratch" / "d1_gt.png").unlink()
    with pytest.raises(PfadsegError) as info:
        load_folder(FolderSpec(tmp_path, "ok", ["A_*"], mask_suffix="_gt"))
    assert str(tmp_path / "A_scratch" / "d1.png") in str(info.value)
