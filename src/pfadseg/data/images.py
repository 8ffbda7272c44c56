"""Reading images and masks from disk, with one-line errors and a per-run decode cache.

* :func:`read_image` returns RGB ``uint8`` arrays of shape ``(H, W, 3)`` from any file Pillow
  can decode (grey, grey+alpha, palette, RGBA, CMYK, 16-bit, ...), with the EXIF orientation
  applied, resized with Pillow's bilinear filter.
* :func:`read_mask` returns ``bool`` arrays ``(H, W)``: the mask is binarised at
  ``>= binarize_at`` at its native resolution, resized bilinearly as a float image and
  thresholded at 0.5 (docs/design.md §9).
* Every problem with a file (missing, empty, truncated, not an image, mask size different from
  its image) raises :class:`~pfadseg.errors.PfadsegError` whose message starts with the path.
* :class:`ImageCache` keeps decoded and resized arrays for one run, so that every file is
  decoded once; :func:`parallel_map` decodes on a small thread pool (Pillow releases the GIL).

No torch here: the readers serve the torch-free ONNX prediction path as well.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pfadseg.errors import PfadsegError

Size = int | tuple[int, int]
"""An output size: ``S`` for ``S x S`` or ``(height, width)``."""

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File extensions read as images (compared case-insensitively)."""

#: Largest image read, in pixels (a 32k x 32k line-scan frame). Pillow's own guard refuses
#: anything above 179 M pixels as a possible decompression bomb; line cameras exceed that, so
#: importing this module raises Pillow's limit to this one (never lowers it).
MAX_PIXELS = 1 << 30
if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PIXELS // 2:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # Pillow errors at twice this value and warns above it

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}
_EXIF_ORIENTATION_TAG = 0x0112


def image_size_hw(size: Size) -> tuple[int, int]:
    """Return ``(height, width)`` for an int or a pair; reject non-positive sizes."""
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size!r}")
    return h, w


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``; raise a one-line :class:`PfadsegError` on any problem."""
    path = Path(path)
    if not path.exists():
        raise PfadsegError(f"{path}: file does not exist")
    if not path.is_file():
        raise PfadsegError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise PfadsegError(f"{path}: file is empty (0 bytes)")
    try:
        img = Image.open(path)
    except UnidentifiedImageError:
        raise PfadsegError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except Image.DecompressionBombError:
        raise PfadsegError(f"{path}: image too large (more than {MAX_PIXELS:,} pixels)") from None
    except OSError as exc:
        raise PfadsegError(f"{path}: cannot open image ({exc})") from None
    try:
        img.load()  # force the full decode: catches truncated and corrupt files
    except (OSError, SyntaxError, ValueError) as exc:
        raise PfadsegError(f"{path}: truncated or corrupt image ({exc})") from None
    return img


def _to_uint8_array(img: Image.Image) -> np.ndarray:
    """Pixel values of any Pillow mode as ``uint8`` ``(H, W)`` or ``(H, W, C)``.

    16-bit and 32-bit integer images are scaled from 0..65535 (values that all fit in 0..255
    are kept as they are); float images in 0..1 are scaled by 255, others clipped to 0..255.
    """
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img).astype(np.float64)
        if arr.size and arr.max() > 255:
            arr = arr / 257.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)
    return np.asarray(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation and convert any mode to 8-bit RGB (alpha is dropped)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        return Image.fromarray(_to_uint8_array(img), mode="L").convert("RGB")
    if img.mode in ("LA", "La", "PA"):
        img = img.convert("RGBA" if img.mode == "PA" else "LA")
    return img.convert("RGB")


def _resize(img: Image.Image, size: Size | None) -> Image.Image:
    """Resize with Pillow's bilinear filter to ``size`` (``None`` keeps the native size)."""
    if size is None:
        return img
    h, w = image_size_hw(size)
    if img.size == (w, h):
        return img
    return img.resize((w, h), Image.BILINEAR)


def read_image(path: str | os.PathLike, size: Size | None = None) -> np.ndarray:
    """Read ``path`` as RGB ``uint8`` ``(H, W, 3)``, resized to ``size`` (int or ``(H, W)``)."""
    img = open_image(path)
    try:
        rgb = to_rgb(img)
    except (OSError, ValueError) as exc:
        raise PfadsegError(f"{path}: cannot convert image mode {img.mode} to RGB ({exc})") from None
    arr = np.asarray(_resize(rgb, size), dtype=np.uint8)
    return np.ascontiguousarray(arr)


def resize_image(image: np.ndarray, size: Size) -> np.ndarray:
    """An RGB ``uint8`` array resized exactly as :func:`read_image` resizes (Pillow bilinear)."""
    return np.ascontiguousarray(np.asarray(_resize(Image.fromarray(image), size), dtype=np.uint8))


def mask_array(img: Image.Image, binarize_at: int = 128) -> np.ndarray:
    """Binarise a mask image at its native resolution: ``True`` where ``value >= binarize_at``.

    Colour masks count a pixel as set when any channel reaches the threshold; alpha is ignored.
    """
    img = ImageOps.exif_transpose(img) or img
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode == "P":
        img = img.convert("RGB")
    elif img.mode in ("LA", "La"):
        img = img.getchannel(0)
    elif img.mode in ("RGBA", "RGBa", "PA"):
        img = img.convert("RGB")
    elif img.mode == "CMYK":
        img = img.convert("RGB")
    arr = _to_uint8_array(img)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr >= binarize_at


def resize_map(values: np.ndarray, size: Size) -> np.ndarray:
    """A float (H, W) array resized with Pillow's bilinear filter, as float32."""
    h, w = image_size_hw(size)
    if values.shape == (h, w):
        return values.astype(np.float32, copy=True)
    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: Size | None) -> np.ndarray:
    """Resize a boolean mask bilinearly as a float image, then threshold at 0.5."""
    if size is None:
        return mask.astype(bool, copy=False)
    return resize_map(mask.astype(np.float32), size) >= 0.5


def read_mask(path: str | os.PathLike, size: Size | None = None, binarize_at: int = 128) -> np.ndarray:
    """Read a mask as ``bool`` ``(H, W)``: binarise at ``>= binarize_at``, resize, threshold 0.5."""
    img = open_image(path)
    try:
        mask = mask_array(img, binarize_at)
    except (OSError, ValueError) as exc:
        raise PfadsegError(f"{path}: cannot read mask of mode {img.mode} ({exc})") from None
    return np.ascontiguousarray(resize_mask(mask, size))


def _header_orientation(img: Image.Image) -> int:
    """EXIF orientation without decoding pixels (PNG's ``getexif`` would decode the image)."""
    if img.format in ("JPEG", "MPO", "TIFF", "WEBP"):
        return int(img.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    raw = img.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return int(exif.get(_EXIF_ORIENTATION_TAG, 1))


def native_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` from the file header (no full decode), EXIF orientation applied."""
    path = Path(path)
    if not path.is_file():
        raise PfadsegError(f"{path}: file does not exist")
    if path.stat().st_size == 0:
        raise PfadsegError(f"{path}: file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = _header_orientation(img)
    except UnidentifiedImageError:
        raise PfadsegError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except OSError as exc:
        raise PfadsegError(f"{path}: cannot open image ({exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def check_mask_matches(image_path: str | os.PathLike, mask_path: str | os.PathLike) -> None:
    """Raise :class:`PfadsegError` naming the mask when its native size differs from the image's."""
    iw, ih = native_size(image_path)
    mw, mh = native_size(mask_path)
    if (iw, ih) != (mw, mh):
        raise PfadsegError(
            f"{mask_path}: mask is {mw}x{mh} but its image {image_path} is {iw}x{ih} (width x height)"
        )


class ImageCache:
    """Decoded and resized arrays for one run, keyed by file, size and kind.

    Owned by whoever runs the job (a trainer, an evaluator); nothing is global. Entries are
    never evicted: at 256x256 an RGB image costs 192 KiB, so 1000 images take about 190 MiB.
    ``enabled=False`` turns it into a pass-through (useful for one-off reads).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._items: dict[Hashable, np.ndarray] = {}
        self._lock = threading.Lock()
        self.misses = 0  # decodes done: each file should be decoded once per run

    def get_or_compute(self, key: Hashable, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Return the cached array for ``key``; compute and store it on a miss."""
        if self.enabled:
            with self._lock:
                found = self._items.get(key)
                if found is not None:
                    return found
        value = compute()
        if self.enabled:
            value.setflags(write=False)  # shared between callers: keep it read-only
            with self._lock:
                self.misses += 1
                self._items.setdefault(key, value)
        return value

    def image(self, path: str | os.PathLike, size: Size | None) -> np.ndarray:
        """Cached :func:`read_image`."""
        key = ("image", str(path), None if size is None else image_size_hw(size))
        return self.get_or_compute(key, lambda: read_image(path, size))

    def mask(self, path: str | os.PathLike, size: Size | None, binarize_at: int = 128) -> np.ndarray:
        """Cached :func:`read_mask`."""
        key = ("mask", str(path), None if size is None else image_size_hw(size), int(binarize_at))
        return self.get_or_compute(key, lambda: read_mask(path, size, binarize_at))


def _default_workers() -> int:
    """Decode threads: the number of usable CPU cores, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def parallel_map(fn: Callable, items: Sequence, workers: int | None) -> list:
    """``list(map(fn, items))``, on a thread pool when there is more than one item and worker."""
    workers = _default_workers() if workers is None else workers
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


def normalise_extensions(extensions: Iterable[str] | None) -> tuple[str, ...]:
    """Lower-case extensions with a leading dot; ``None`` or empty means all image types."""
    if not extensions:
        return IMAGE_EXTENSIONS
    out = []
    for ext in extensions:
        ext = ext.strip().lower()
        if not ext:
            continue
        out.append(ext if ext.startswith(".") else "." + ext)
    return tuple(out) or IMAGE_EXTENSIONS


def find_images(root: Path, skip: Path | None = None) -> list[Path]:
    """Image files under ``root`` at any depth, sorted by relative path; hidden files and folders, and
    anything under ``skip`` (e.g. an output folder inside the input), are left out."""
    skip = skip.resolve() if skip is not None else None
    files = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.suffix.lower() not in IMAGE_EXTENSIONS or any(part.startswith(".") for part in rel.parts):
            continue
        if skip is not None and p.resolve().is_relative_to(skip):
            continue
        if p.is_file():
            files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def list_images(folder: Path, extensions: Iterable[str] | None = None) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by file name."""
    exts = normalise_extensions(extensions)
    files = [
        p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file() and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: (p.name, str(p)))
