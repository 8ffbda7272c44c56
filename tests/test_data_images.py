"""Image and mask readers: modes, orientation, sizes, cache and one-line errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pfadseg.data.datasets import Sample, load_images, load_masks
from pfadseg.data.images import ImageCache, check_mask_matches, read_image, read_mask
from pfadseg.errors import PfadsegError


def _save(path: Path, img: Image.Image, **kwargs) -> Path:
    img.save(path, **kwargs)
    return path


def _gradient(w: int = 32, h: int = 24) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], -1).astype(np.uint8)


# --------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "1", "I", "RGB"])
def test_read_image_modes_give_rgb_uint8(tmp_path: Path, mode: str) -> None:
    rgb = Image.fromarray(_gradient())
    img = rgb.convert(mode) if mode != "P" else rgb.quantize(16)
    suffix = ".tif" if mode == "I" else ".png"  # Pillow writes 32-bit integer images as TIFF only
    path = _save(tmp_path / f"x_{mode}{suffix}", img)
    out = read_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    native = read_image(path)
    assert native.shape == (24, 32, 3)
    if mode in ("L", "LA", "I", "1"):
        assert (native[..., 0] == native[..., 1]).all() and (native[..., 1] == native[..., 2]).all()


def test_rgba_keeps_colour_and_drops_alpha(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 4), np.uint8)
    arr[..., 0], arr[..., 3] = 200, 0  # fully transparent red
    out = read_image(_save(tmp_path / "a.png", Image.fromarray(arr, "RGBA")))
    assert (out[..., 0] == 200).all() and (out[..., 1:] == 0).all()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    path = _save(tmp_path / "d.png", Image.fromarray(arr))
    assert Image.open(path).mode.startswith("I")
    out = read_image(path)[0, :, 0]
    assert out.tolist() == [0, 4, 128, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    img = Image.new("CMYK", (20, 10), (0, 255, 255, 0))  # red in CMYK
    path = _save(tmp_path / "c.jpg", img, quality=95)
    out = read_image(path, (10, 20))
    assert out.shape == (10, 20, 3)
    r, g, b = out.reshape(-1, 3).mean(0)
    assert r > 180 and g < 80 and b < 80


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)  # left half red
    arr[:, 20:] = (0, 0, 255)  # right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half goes to the top
    path = _save(tmp_path / "e.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=95)
    out = read_image(path)
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 60  # top is red
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 60  # bottom is blue
    mask_path = _save(tmp_path / "e_mask.png", Image.new("L", (20, 40)))
    check_mask_matches(path, mask_path)  # the displayed size counts


def test_one_pixel_image(tmp_path: Path) -> None:
    path = _save(tmp_path / "one.png", Image.new("RGB", (1, 1), (10, 20, 30)))
    out = read_image(path, 8)
    assert out.shape == (8, 8, 3) and (out == (10, 20, 30)).all()
    mask = read_mask(_save(tmp_path / "one_mask.png", Image.new("L", (1, 1), 255)), 8)
    assert mask.shape == (8, 8) and mask.all()


def test_read_image_non_square_size(tmp_path: Path) -> None:
    path = _save(tmp_path / "g.png", Image.fromarray(_gradient()))
    assert read_image(path, (10, 30)).shape == (10, 30, 3)


# --------------------------------------------------------------------------- masks


def test_mask_binarised_at_native_resolution_then_resized(tmp_path: Path) -> None:
    arr = np.array([[0, 127, 128, 255]], np.uint8).repeat(4, axis=0)
    path = _save(tmp_path / "m.png", Image.fromarray(arr))
    assert read_mask(path).tolist() == [[False, False, True, True]] * 4
    assert read_mask(path, binarize_at=1)[0].tolist() == [False, True, True, True]
    big = np.zeros((100, 100), np.uint8)
    big[:50] = 255
    small = read_mask(_save(tmp_path / "big.png", Image.fromarray(big)), 10)
    assert small.dtype == bool and small[:5].all() and not small[5:].any()


def test_mask_modes(tmp_path: Path) -> None:
    arr = np.zeros((6, 6), np.uint8)
    arr[2:4, 2:4] = 255
    expected = arr > 0
    for mode in ("1", "L", "RGB", "P", "I;16"):
        img = Image.fromarray(arr).convert(mode) if mode != "I;16" else Image.fromarray(arr.astype(np.uint16) * 257)
        path = _save(tmp_path / f"m_{mode.replace(';', '')}.png", img)
        assert (read_mask(path) == expected).all(), mode


# --------------------------------------------------------------------------- errors


def _assert_error_names(path: Path, fn, *args) -> str:
    with pytest.raises(PfadsegError) as info:
        fn(path, *args)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _assert_error_names(tmp_path / "nope.png", read_image, 8)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert "empty" in _assert_error_names(path, read_image, 8)
    _assert_error_names(path, read_mask, 8)


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    path = tmp_path / "trunc.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "truncated or corrupt" in _assert_error_names(path, read_image, 8)


def test_non_image_with_png_extension(tmp_path: Path) -> None:
    path = tmp_path / "text.png"
    path.write_text("this is not an image\n")
    assert "not an image" in _assert_error_names(path, read_image, 8)
    _assert_error_names(path, read_mask, 8)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    image = _save(tmp_path / "i.png", Image.new("RGB", (30, 20)))
    mask = _save(tmp_path / "i_mask.png", Image.new("L", (20, 30)))
    with pytest.raises(PfadsegError) as info:
        check_mask_matches(image, mask)
    assert str(mask) in str(info.value) and "30x20" in str(info.value)
    check_mask_matches(image, _save(tmp_path / "ok_mask.png", Image.new("L", (30, 20))))


# --------------------------------------------------------------------------- batches and cache


def test_batched_loaders_and_cache(tmp_path: Path) -> None:
    img = _save(tmp_path / "a.png", Image.fromarray(_gradient()))
    mask_arr = np.zeros((24, 32), np.uint8)
    mask_arr[:, 16:] = 255
    mask = _save(tmp_path / "a_mask.png", Image.fromarray(mask_arr))
    samples = [
        Sample(img, 0, "good", None, "good/a.png"),
        Sample(img, 1, "crack", mask, "crack/a.png"),
    ]
    cache = ImageCache()
    x = load_images(samples, 16, cache)
    assert x.dtype == torch.uint8 and x.shape == (2, 3, 16, 16)
    assert torch.equal(x[0], x[1])
    assert cache.misses == 1  # one file, decoded once
    m = load_masks(samples, 16, cache)
    assert m.dtype == torch.bool and m.shape == (2, 1, 16, 16)
    assert not m[0].any() and m[1, 0, :, 8:].all() and not m[1, 0, :, :8].any()
    before = cache.misses
    load_images(samples, 16, cache)
    load_masks(samples, 16, cache)
    assert cache.misses == before
    assert load_images([], 8).shape == (0, 3, 8, 8)


def test_defective_sample_without_mask_is_an_error(tmp_path: Path) -> None:
    img = _save(tmp_path / "a.png", Image.new("RGB", (4, 4)))
    with pytest.raises(PfadsegError, match="a.png"):
        load_masks([Sample(img, 1, "crack", None, "crack/a.png")], 8)
