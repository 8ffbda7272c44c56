"""Datasets as lists of samples: the MVTec AD layout and a generic folder layout.

MVTec AD layout (``load_mvtec``)::

    ROOT/<category>/train/good/*.png
    ROOT/<category>/test/good/*.png
    ROOT/<category>/test/<defect_type>/*.png
    ROOT/<category>/ground_truth/<defect_type>/<stem>_mask.png

Folder layout (``load_folder``, in the manner of anomalib's ``Folder`` dataset): one folder of
normal images and one or more folders of defective images under a root; each defective image
has a mask, either beside it (same stem, ``mask_suffix`` + ``mask_ext``) or in a separate
folder ``mask_dir`` that mirrors the paths of the images under the root. The normal images are
split into train and test by ``split``:

* ``every:K``         sorted by file name, index ``i`` with ``i % K == 0`` goes to test;
* ``random:F:SEED``   a fraction ``F`` of the normal images, drawn with ``SEED``, goes to test;
* ``list:FILE``       the normal images named in ``FILE`` (one per line, a path relative to the
                      root or a bare file name; ``#`` comments) go to test;
* or give ``normal_test_dir``: every image of ``normal_dir`` trains, every image of
  ``normal_test_dir`` tests (``split`` is then ignored).

All defective images go to test.

Magnetic Tile loads without converting any file (``benchmarks/magnetic_tile.yaml``)::

    pfadseg train --format folder --data magnetic_tile --category magnetic_tile \\
        --normal-dir MT_Free --abnormal-dirs 'MT_*' --images-subdir Imgs \\
        --image-ext .jpg --mask-ext .png --split every:5

which gives 761 train images, 191 good and 392 defective test images.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pfadseg.data.images import (
    IMAGE_EXTENSIONS,
    ImageCache,
    Size,
    check_mask_matches,
    image_size_hw,
    list_images,
    native_size,
    normalise_extensions,
    parallel_map,
)
from pfadseg.data.tiling import Layout, TileLayout, WholeImage
from pfadseg.errors import PfadsegError


@dataclass(frozen=True)
class Sample:
    """One image of a dataset.

    ``rel_path`` is the path shown in reports, e.g. ``"broken_large/000.png"`` for MVTec test
    images (relative to ``test/``) or ``"MT_Crack/Imgs/x.jpg"`` for folder datasets (relative to
    the root).
    """

    image_path: Path
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" or the defect class name
    mask_path: Path | None
    rel_path: str


@dataclass
class DatasetSplits:
    """Train (normal images only) and test samples of one dataset or category.

    ``binarize_at`` is the mask threshold to pass to :func:`~pfadseg.data.images.load_masks`.
    """

    name: str
    train: list[Sample]
    test: list[Sample]
    binarize_at: int = 128

    def defect_types(self) -> list[str]:
        """Sorted defect types present in the test set (without ``"good"``)."""
        return sorted({s.defect_type for s in self.test if s.label})

    def summary(self) -> str:
        """One line: counts of train, test good, test defective per type."""
        good = sum(1 for s in self.test if not s.label)
        per_type = ", ".join(
            f"{t} {sum(1 for s in self.test if s.defect_type == t)}" for t in self.defect_types()
        )
        bad = len(self.test) - good
        return (
            f"{self.name}: {len(self.train)} train, {len(self.test)} test "
            f"({good} good, {bad} defective{': ' + per_type if per_type else ''})"
        )


def holdout_split(train: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split ``fraction`` of the normal training images off (seeded, order kept) to calibrate thresholds on.

    Returns (images that train, images held out). A positive fraction holds out at least one
    image and always leaves at least one to train on.
    """
    if not 0 <= fraction < 1:
        raise PfadsegError(f"calibration hold-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0 or len(train) < 2:
        return list(train), []
    count = min(len(train) - 1, max(1, round(fraction * len(train))))
    chosen = set(random.Random(seed).sample(range(len(train)), count))
    return [s for i, s in enumerate(train) if i not in chosen], [s for i, s in enumerate(train) if i in chosen]


def _require_dir(path: Path, what: str) -> None:
    """Raise a one-line error when ``path`` is not a directory."""
    if not path.is_dir():
        raise PfadsegError(f"{path}: {what} folder does not exist")


# --------------------------------------------------------------------------- MVTec AD


def mvtec_categories(root: str | os.PathLike) -> list[str]:
    """Category folders under an MVTec-layout root (those with a ``train`` or ``test`` folder)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())
    )


def _find_mvtec_mask(gt_dir: Path, stem: str) -> Path | None:
    """``<stem>_mask.png`` in ``gt_dir``, or the same stem with another image extension."""
    for ext in (".png",) + tuple(e for e in IMAGE_EXTENSIONS if e != ".png"):
        for candidate in (gt_dir / f"{stem}_mask{ext}", gt_dir / f"{stem}_mask{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def load_mvtec(root: str | os.PathLike, category: str, check_masks: bool = True) -> DatasetSplits:
    """Samples of one MVTec AD category under ``root`` (see the module docstring for the layout).

    ``check_masks`` compares the native size of every mask with its image's (header reads only).
    """
    root = Path(root)
    if not root.is_dir():
        raise PfadsegError(f"{root}: dataset root does not exist")
    cat_dir = root / category
    if not category or not cat_dir.is_dir():
        available = mvtec_categories(root)
        listing = ", ".join(available) if available else "none found"
        raise PfadsegError(f"{cat_dir}: unknown category {category!r} (available under {root}: {listing})")

    train_dir = cat_dir / "train" / "good"
    _require_dir(train_dir, "training")
    train = [
        Sample(p, 0, "good", None, f"good/{p.name}") for p in list_images(train_dir)
    ]
    if not train:
        raise PfadsegError(f"{train_dir}: no training images (extensions {', '.join(IMAGE_EXTENSIONS)})")

    test_dir = cat_dir / "test"
    _require_dir(test_dir, "test")
    test: list[Sample] = []
    for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        defect_type = type_dir.name
        for img in list_images(type_dir):
            rel = f"{defect_type}/{img.name}"
            if defect_type == "good":
                test.append(Sample(img, 0, "good", None, rel))
                continue
            gt_dir = cat_dir / "ground_truth" / defect_type
            mask = _find_mvtec_mask(gt_dir, img.stem)
            if mask is None:
                expected = gt_dir / f"{img.stem}_mask.png"
                raise PfadsegError(f"{img}: defective image has no mask (expected {expected})")
            if check_masks:
                check_mask_matches(img, mask)
            test.append(Sample(img, 1, defect_type, mask, rel))
    if not test:
        raise PfadsegError(f"{test_dir}: no test images")
    return DatasetSplits(category, train, test)


# --------------------------------------------------------------------------- folder layout


@dataclass
class FolderSpec:
    """A folder dataset: see the module docstring for the layout and the matching CLI flags."""

    root: Path
    normal_dir: str
    abnormal_dirs: list[str]
    mask_dir: str | None = None
    mask_suffix: str = ""
    mask_ext: str = ".png"
    images_subdir: str = ""
    image_ext: tuple[str, ...] = ()
    split: str = "every:5"
    normal_test_dir: str | None = None
    binarize_at: int = 128
    name: str | None = None
    check_masks: bool = True

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.abnormal_dirs = list(self.abnormal_dirs)
        self.image_ext = normalise_extensions(self.image_ext)
        if not self.mask_ext.startswith("."):
            self.mask_ext = "." + self.mask_ext


def parse_split(split: str) -> tuple[str, tuple]:
    """Parse ``every:K`` / ``random:FRACTION:SEED`` / ``list:FILE`` into ``(kind, args)``."""
    kind, _, rest = split.strip().partition(":")
    try:
        if kind == "every":
            k = int(rest)
            if k < 1:
                raise ValueError
            return kind, (k,)
        if kind == "random":
            frac_s, _, seed_s = rest.partition(":")
            frac, seed = float(frac_s), int(seed_s or 0)
            if not 0.0 < frac < 1.0:
                raise ValueError
            return kind, (frac, seed)
        if kind == "list" and rest:
            return kind, (rest,)
    except ValueError:
        pass
    raise PfadsegError(
        f"invalid split {split!r}: use every:K (K >= 1), random:FRACTION:SEED (0 < FRACTION < 1) or list:FILE"
    )


def _split_normals(normals: list[Path], root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """Split normal images into (train, test) according to ``split``."""
    kind, args = parse_split(split)
    ordered = sorted(normals, key=lambda p: (p.name, str(p)))
    if kind == "every":
        (k,) = args
        test = set(ordered[::k])
    elif kind == "random":
        frac, seed = args
        n_test = max(1, round(frac * len(ordered)))
        test = set(random.Random(seed).sample(ordered, n_test)) if ordered else set()
    else:
        (list_file,) = args
        list_path = Path(list_file)
        if not list_path.is_absolute() and not list_path.is_file():
            list_path = root / list_path
        if not list_path.is_file():
            raise PfadsegError(f"{list_path}: split list file does not exist")
        names = {
            line.strip()
            for line in list_path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")
        }
        test = {p for p in ordered if p.name in names or p.relative_to(root).as_posix() in names}
        known = {p.name for p in ordered} | {p.relative_to(root).as_posix() for p in ordered}
        unknown = sorted(names - known)
        if unknown:
            raise PfadsegError(f"{list_path}: lists {len(unknown)} image(s) not among the normal images, e.g. {unknown[0]}")
    train = [p for p in ordered if p not in test]
    return train, [p for p in ordered if p in test]


def _class_images(spec: FolderSpec, class_dir: Path) -> list[Path]:
    """Images of one class folder (inside ``images_subdir`` when set), masks left out."""
    folder = class_dir / spec.images_subdir if spec.images_subdir else class_dir
    _require_dir(folder, "image")
    images = list_images(folder, spec.image_ext)
    if spec.mask_dir is None and spec.mask_suffix:  # masks sit beside the images: skip them
        ending = f"{spec.mask_suffix}{spec.mask_ext}".lower()
        images = [p for p in images if not p.name.lower().endswith(ending)]
    return images


def _abnormal_class_dirs(spec: FolderSpec) -> list[Path]:
    """Resolve the abnormal folder names/globs, leaving out the normal and mask folders."""
    excluded = {(spec.root / d).resolve() for d in (spec.normal_dir, spec.normal_test_dir, spec.mask_dir) if d}
    found: dict[Path, None] = {}
    for pattern in spec.abnormal_dirs:
        pattern = pattern.strip()
        if not pattern:
            continue
        if any(ch in pattern for ch in "*?["):
            matches = sorted(p for p in spec.root.glob(pattern) if p.is_dir() and p.resolve() not in excluded)
            if not matches:
                raise PfadsegError(f"{spec.root}: no abnormal folder matches {pattern!r}")
        else:
            path = spec.root / pattern
            _require_dir(path, "abnormal")
            matches = [path]
        for m in matches:
            found[m] = None
    if not found:
        raise PfadsegError(f"{spec.root}: no abnormal folders given")
    return sorted(found, key=lambda p: p.relative_to(spec.root).as_posix())


def _folder_mask_path(spec: FolderSpec, image: Path) -> Path:
    """Where the mask of ``image`` is expected."""
    name = f"{image.stem}{spec.mask_suffix}{spec.mask_ext}"
    if spec.mask_dir is None:
        return image.with_name(name)
    rel_parent = image.parent.relative_to(spec.root)
    return spec.root / spec.mask_dir / rel_parent / name


def _find_folder_mask(spec: FolderSpec, image: Path) -> Path:
    """The mask file of ``image`` (extension matched case-insensitively) or a one-line error."""
    expected = _folder_mask_path(spec, image)
    if expected.is_file():
        return expected
    alt = expected.with_suffix(expected.suffix.upper())
    if alt.is_file():
        return alt
    raise PfadsegError(f"{image}: defective image has no mask (expected {expected})")


def load_folder(spec: FolderSpec) -> DatasetSplits:
    """Samples of a folder dataset described by ``spec`` (see the module docstring)."""
    root = spec.root
    if not root.is_dir():
        raise PfadsegError(f"{root}: dataset root does not exist")
    if spec.mask_ext.lower() in spec.image_ext and spec.mask_dir is None and not spec.mask_suffix:
        raise PfadsegError(
            f"{root}: masks beside images with the same stem need a mask extension ({spec.mask_ext}) "
            "that is not an image extension: set the image extensions (e.g. .jpg) or a mask suffix"
        )
    normal_dir = root / spec.normal_dir
    _require_dir(normal_dir, "normal")
    normals = _class_images(spec, normal_dir)
    if not normals:
        raise PfadsegError(f"{normal_dir}: no normal images (extensions {', '.join(spec.image_ext)})")

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    if spec.normal_test_dir:
        train_paths = normals
        test_good = _class_images(spec, root / spec.normal_test_dir)
    else:
        train_paths, test_good = _split_normals(normals, root, spec.split)
    if not train_paths:
        raise PfadsegError(f"{normal_dir}: the split {spec.split!r} leaves no training images")

    train = [Sample(p, 0, "good", None, rel(p)) for p in train_paths]
    test = [Sample(p, 0, "good", None, rel(p)) for p in test_good]
    for class_dir in _abnormal_class_dirs(spec):
        defect_type = class_dir.relative_to(root).as_posix()
        images = _class_images(spec, class_dir)
        if not images:
            raise PfadsegError(f"{class_dir}: no images (extensions {', '.join(spec.image_ext)})")
        for img in images:
            mask = _find_folder_mask(spec, img)
            if spec.check_masks:
                check_mask_matches(img, mask)
            test.append(Sample(img, 1, defect_type, mask, rel(img)))
    return DatasetSplits(spec.name or root.name, train, test, binarize_at=spec.binarize_at)


def _split_csv(value: str | Sequence[str] | None) -> list[str]:
    """Comma-separated string (or list) to a list of non-empty stripped items."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if v and v.strip()]


def folder_spec_from_args(
    root: str | os.PathLike,
    *,
    normal_dir: str,
    abnormal_dirs: str | Sequence[str],
    images_subdir: str | None = None,
    image_ext: str | Sequence[str] | None = None,
    mask_dir: str | None = None,
    mask_suffix: str | None = None,
    mask_ext: str | None = None,
    split: str | None = None,
    normal_test_dir: str | None = None,
    binarize_at: int | None = None,
    name: str | None = None,
) -> FolderSpec:
    """Build a :class:`FolderSpec` from command-line strings (``None`` = the default)."""
    return FolderSpec(
        root=Path(root),
        normal_dir=normal_dir,
        abnormal_dirs=_split_csv(abnormal_dirs),
        mask_dir=mask_dir or None,
        mask_suffix=mask_suffix or "",
        mask_ext=mask_ext or ".png",
        images_subdir=images_subdir or "",
        image_ext=tuple(_split_csv(image_ext)),
        split=split or "every:5",
        normal_test_dir=normal_test_dir or None,
        binarize_at=128 if binarize_at is None else int(binarize_at),
        name=name,
    )


# --------------------------------------------------------------------------- from the configuration


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from; ``format`` is ``mvtec`` or ``folder`` (the two layouts above)."""

    root: str = ""
    category: str = ""
    format: Literal["mvtec", "folder"] = "mvtec"
    # Folder format only (anomalib-style); ignored for mvtec.
    normal_dir: str = "good"
    abnormal_dirs: str = ""  # comma-separated folder names or globs
    images_subdir: str = ""
    image_ext: str = ""  # comma-separated; empty = every image type
    mask_dir: str = ""
    mask_suffix: str = ""
    mask_ext: str = ".png"
    split: str = "every:5"
    normal_test_dir: str = ""
    binarize_at: int = 128
    textures: str = ""  # folder of texture images; empty = built-in procedural textures
    procedural_textures: int = 128
    augmentation: str = "auto"  # per-category normal-image augmentation: auto (by category name), none, or a category name
    brightness: float = 0.0  # normal-image brightness jitter: scale by U(1 - b, 1 + b); 0 = off (as published)
    # How images enter the network: `square` squashes each to the training size (both papers' protocol); `tiles`
    # resizes each by tile_scale (1: native pixels), keeps its aspect and cuts it into overlapping tiles of the
    # training size: random tiles in training, all of them, stitched, in inference; `aspect` resizes each so that its
    # shorter side is the training size, keeps its aspect (sides rounded to multiples of 32) and feeds the whole image,
    # training batches grouped by size (data/tiling.py).
    geometry: Literal["square", "tiles", "aspect"] = "square"
    tile_scale: float = 1.0
    tile_overlap: float = 0.25  # fraction of a tile that neighbouring inference tiles share

    def __post_init__(self) -> None:
        if not 0.0 <= self.brightness < 1.0:
            raise ValueError(f"data.brightness must be in [0, 1), got {self.brightness}")
        if self.geometry == "tiles":
            TileLayout(1, self.tile_scale, self.tile_overlap)  # checks the two values

    def layout(self, image_size: int) -> Layout | None:
        """How the `tiles` or `aspect` geometry makes network inputs of ``image_size``; None for `square`."""
        if self.geometry == "tiles":
            return TileLayout(image_size, self.tile_scale, self.tile_overlap)
        return WholeImage(image_size) if self.geometry == "aspect" else None



def load_splits(data: DataConfig) -> DatasetSplits:
    """The train/test samples the data configuration names (MVTec layout or folder layout)."""
    if not data.root:
        raise PfadsegError("no dataset given: pass --data ROOT (and --category NAME for the MVTec layout)")
    if data.format == "mvtec":
        if not data.category:
            raise PfadsegError(f"{data.root}: the MVTec layout needs --category NAME")
        return load_mvtec(data.root, data.category)
    spec = folder_spec_from_args(
        data.root,
        normal_dir=data.normal_dir,
        abnormal_dirs=data.abnormal_dirs,
        images_subdir=data.images_subdir,
        image_ext=data.image_ext,
        mask_dir=data.mask_dir,
        mask_suffix=data.mask_suffix,
        mask_ext=data.mask_ext,
        split=data.split,
        normal_test_dir=data.normal_test_dir,
        binarize_at=data.binarize_at,
        name=data.category or None,
    )
    return load_folder(spec)



# --------------------------------------------------------------------------- samples as tensors


def load_images(
    samples: Iterable[Sample],
    size: Size,
    cache: ImageCache | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Images of ``samples`` as ``torch.uint8`` ``(N, 3, H, W)`` (decoded once per cache)."""
    cache = cache if cache is not None else ImageCache(enabled=False)
    samples = list(samples)
    h, w = image_size_hw(size)
    paths = list(dict.fromkeys(s.image_path for s in samples))  # decode each file once
    decoded = dict(zip(paths, parallel_map(lambda p: cache.image(p, (h, w)), paths, workers)))
    arrays = [decoded[s.image_path] for s in samples]
    if not arrays:
        return torch.zeros((0, 3, h, w), dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def load_scaled_images(samples: Iterable[Sample], layout: Layout, cache: ImageCache | None = None,
                       workers: int | None = None) -> list[np.ndarray]:
    """Images of ``samples`` as RGB uint8 arrays (H, W, 3) at the size ``layout`` scales them to (aspect kept)."""
    cache = cache if cache is not None else ImageCache(enabled=False)

    def read(path: Path) -> np.ndarray:
        width, height = native_size(path)
        return cache.image(path, layout.scaled_size(height, width))

    samples = list(samples)
    paths = list(dict.fromkeys(s.image_path for s in samples))
    decoded = dict(zip(paths, parallel_map(read, paths, workers)))
    return [decoded[s.image_path] for s in samples]


def load_masks(
    samples: Iterable[Sample],
    size: Size,
    cache: ImageCache | None = None,
    binarize_at: int = 128,
    workers: int | None = None,
) -> torch.Tensor:
    """Ground-truth masks of ``samples`` as ``torch.bool`` ``(N, 1, H, W)``.

    Samples without a mask (good images) get an all-zero mask. A defective sample without a
    mask path is an error: its pixel ground truth is unknown.
    """
    cache = cache if cache is not None else ImageCache(enabled=False)
    samples = list(samples)
    h, w = image_size_hw(size)

    for sample in samples:
        if sample.mask_path is None and sample.label:
            raise PfadsegError(f"{sample.image_path}: defective image has no ground-truth mask")
    paths = list(dict.fromkeys(s.mask_path for s in samples if s.mask_path is not None))
    decoded = dict(zip(paths, parallel_map(lambda p: cache.mask(p, (h, w), binarize_at), paths, workers)))
    empty = np.zeros((h, w), dtype=bool)
    arrays = [empty if s.mask_path is None else decoded[s.mask_path] for s in samples]
    if not arrays:
        return torch.zeros((0, 1, h, w), dtype=torch.bool)
    return torch.from_numpy(np.stack(arrays)).unsqueeze(1).contiguous()
