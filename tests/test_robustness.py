"""Robustness: fuzzed files through the readers and predict, giant images, no pickle, concurrent runs."""

from __future__ import annotations

import csv
import io
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pfadseg.cli import main
from pfadseg.data.images import IMAGE_EXTENSIONS, read_image
from pfadseg.errors import PfadsegError

FORMATS = ["PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"]
MODES = ["L", "RGB", "RGBA", "P", "I;16", "CMYK", "1", "LA"]


@st.composite
def image_files(draw) -> tuple[bytes, str]:
    """Bytes of an image file (any of several formats and modes), possibly truncated or corrupted, or plain junk."""
    kind = draw(st.sampled_from(["image", "truncated", "flipped", "junk"]))
    if kind == "junk":
        return draw(st.binary(max_size=300)), ".png"
    fmt, mode = draw(st.sampled_from(FORMATS)), draw(st.sampled_from(MODES))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    pixels = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 256, (h, w, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert("RGB")
    image = image.convert(mode) if mode not in ("I;16",) else Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    buf = io.BytesIO()
    try:
        image.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # this format cannot hold this mode: store it as RGB PNG instead
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
    data = buf.getvalue()
    if kind == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "flipped" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    return data, "." + fmt.lower()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image_files())
def test_readers_return_rgb_or_a_one_line_error_naming_the_file(tmp_path: Path, sample):
    data, suffix = sample
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image = read_image(path)
    except PfadsegError as err:
        assert str(err).startswith(str(path)) and "\n" not in str(err)
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 1
    assert read_image(path, 16).shape == (16, 16, 3)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(image_files(), min_size=1, max_size=6))
def test_predict_on_fuzzed_folders_reports_every_file_and_never_crashes(trained_run: Path, tmp_path_factory, capsys, samples):
    folder = tmp_path_factory.mktemp("fuzz")
    paths = []
    for n, (data, suffix) in enumerate(samples):
        paths.append(folder / f"{n}{suffix}")
        paths[-1].write_bytes(data)
    out = folder / "out"
    capsys.readouterr()
    rc = main(["predict", "--run", str(trained_run), str(folder), "--out", str(out), "--quiet", "--batch-size", "4"])
    err = capsys.readouterr().err
    listed = sorted(p.name for p in paths if p.suffix in IMAGE_EXTENSIONS)  # other files in a folder are not images to predict
    if not listed:
        assert rc == 1 and "no images in this folder" in err and err.count("\n") == 1
        return
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(Path(r["image"]).name for r in rows) == listed
    skipped = [r for r in rows if r["decision"] == "SKIPPED"]
    assert rc == 0 and "Traceback" not in err and "pfadseg: error" not in err  # an unreadable file is skipped with a warning
    for r in skipped:
        assert f"warning: skipped {r['image']}" in err
    assert err.count("\n") == len(skipped)
    for r in rows:
        if r["decision"] != "SKIPPED":
            stem = Path(r["image"]).stem
            shape = read_image(r["image"]).shape[:2]
            assert np.load(out / f"{stem}_map.npy").shape == shape


def test_giant_image_is_read_not_rejected(tmp_path: Path):
    """182 M pixels: above Pillow's decompression-bomb limit (179 M), below pfadseg's (2^30)."""
    path = tmp_path / "line_scan.png"
    Image.new("L", (14_000, 13_000), 90).save(path, compress_level=1)
    image = read_image(path, 32)
    assert image.shape == (32, 32, 3) and (image == 90).all()


def test_image_over_the_pixel_limit_is_a_clear_error(tmp_path: Path):
    # A PNG header that claims 40000 x 40000 pixels: refused before decoding anything.
    header = Image.new("L", (1, 1))
    buf = io.BytesIO()
    header.save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[16:24] = (40_000).to_bytes(4, "big") * 2  # IHDR width and height ...
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # ... with the chunk's checksum to match
    path = tmp_path / "huge.png"
    path.write_bytes(bytes(data))
    with pytest.raises(PfadsegError, match="too large"):
        read_image(path)


def test_loading_a_run_never_unpickles(trained_run: Path, tmp_path: Path, monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used")

    for target, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(target, name, refuse)
    assert main(["test", "--run", str(trained_run), "--quiet"]) == 0
    image = next((Path(__import__("yaml").safe_load((trained_run / "config.yaml").read_text())["data"]["root"]) / "widget").rglob("*.png"))
    assert main(["predict", "--run", str(trained_run), str(image), "--out", str(tmp_path / "p"), "--quiet"]) == 0


def test_two_runs_at_once_into_different_directories_do_not_interfere(tiny_mvtec: Path, tmp_path: Path):
    args = ["-m", "pfadseg", "train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug",
            "--teacher", "efficientnet_lite0", "--quiet", "--out"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, *args, str(tmp_path / name)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()[-2000:]
    from pfadseg.checkpoint import load_tensors

    a, b = load_tensors(tmp_path / "a" / "model.safetensors"), load_tensors(tmp_path / "b" / "model.safetensors")
    assert all(a[k].equal(b[k]) for k in a)  # same seed, same data: the same model, whatever ran beside it
    for name in ("a", "b"):
        names = sorted(p.name for p in (tmp_path / name).iterdir())
        assert names == ["config.yaml", "metrics.json", "model.safetensors", "run_info.json", "thresholds.json", "train_log.jsonl"]
