"""Time and peak memory of `pfadseg predict` on large images with a run in the `tiles` geometry.

For each size, writes one smooth random RGB image of that size, runs `pfadseg predict --run RUN` on it
in a fresh process (so the peak resident memory is that command's own), and reports seconds, tiles,
tiles/s and peak RSS; with --onnx, also exports the run and predicts with the ONNX file, and compares
the two native-size maps. Run it alone on the machine.

    python benchmarks/tiling_cost.py --run RUN --sizes 1000x1000,2000x2000,4000x4000,2000x8000 --onnx
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image (a coarse random grid, resized bicubically)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(60, 200, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))


def predict(model_flag: str, model: Path, image: Path, out: Path) -> dict:
    """One `pfadseg predict` in a child process: seconds, its summary line and its own peak RSS in MB."""
    log = out.with_suffix(".log")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as f:
        child = subprocess.Popen([sys.executable, "-m", "pfadseg", "predict", model_flag, str(model), str(image), "--out", str(out),
                                  "--quiet"], stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"pfadseg predict failed:\n{log.read_text()}")
    return {"seconds": seconds, "summary": log.read_text().strip().splitlines()[-1], "peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run trained with data.geometry=tiles")
    parser.add_argument("--sizes", default="1000x1000,2000x2000,4000x4000,2000x8000", help="HxW, comma-separated")
    parser.add_argument("--scale", type=float, help="predict at this data.tile_scale instead of the run's (on a copy of the run)")
    parser.add_argument("--onnx", action="store_true", help="also predict with the exported ONNX file and compare the maps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        run = args.run
        if args.scale is not None:
            run = tmp / "run"
            shutil.copytree(args.run, run)
            config = yaml.safe_load((run / "config.yaml").read_text())
            config["data"]["tile_scale"] = args.scale
            (run / "config.yaml").write_text(yaml.safe_dump(config))
        config = yaml.safe_load((run / "config.yaml").read_text())
        print(f"run {args.run}: {config['train']['image_size']}² tiles, scale {config['data']['tile_scale']}, "
              f"overlap {config['data']['tile_overlap']}")
        onnx_file = None
        if args.onnx:
            onnx_file = tmp / "model.onnx"
            subprocess.run([sys.executable, "-m", "pfadseg", "export", "--run", str(run), "--out", str(onnx_file), "--no-check"],
                           check=True, capture_output=True)
        rows = []
        for size in args.sizes.split(","):
            height, width = (int(v) for v in size.lower().split("x"))
            image = tmp / f"image_{height}x{width}.png"
            Image.fromarray(smooth_image(height, width)).save(image)
            row = {"height": height, "width": width, "megapixels": height * width / 1e6,
                   "torch": predict("--run", run, image, tmp / "torch")}
            torch_map = np.load(tmp / "torch" / f"{image.stem}_map.npy")
            row["map_shape"] = list(torch_map.shape)
            if onnx_file is not None:
                row["onnx"] = predict("--model", onnx_file, image, tmp / "onnx")
                row["max_map_difference"] = float(np.abs(np.load(tmp / "onnx" / f"{image.stem}_map.npy") - torch_map).max())
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
