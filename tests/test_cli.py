"""The command line: help everywhere, test with saved maps, predict outputs, preview, one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfadseg.cli import build_parser, main
from pfadseg.data.images import read_image

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["info", "train", "test", "predict", "export", "calibrate", "bank", "demo", "benchmark", "preview-synthesis"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_of_every_command_says_what_it_does(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pfadseg " + command in capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    undocumented = [a.option_strings or a.dest for a in sub._actions if not a.help and a.dest != "help"]
    assert not undocumented


def test_info_works_offline_and_summarises_a_run(trained_run: Path, monkeypatch, capsys):
    import torch

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    assert main(["info"]) == 0
    assert "2,782,784 parameters" in capsys.readouterr().out  # the ResNet18 teacher's stem and layer1-3, counted without weights
    assert main(["info", "--run", str(trained_run)]) == 0
    out = capsys.readouterr().out
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert f"img AUROC {100 * metrics['image_auroc']:.2f}" in out and "thresholds.json" in out and "torch " in out
    assert main(["info", "--run", str(trained_run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"] == metrics and summary["files"]["model.safetensors"] == (trained_run / "model.safetensors").stat().st_size


def test_redirected_output_gets_progress_lines_not_bars(tiny_mvtec: Path, tmp_path: Path, capsys):
    """stderr is not a terminal here (as in a log file): a plain line per tenth of the steps, no carriage returns."""
    assert main(["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("train (stage")]
    assert lines[0].startswith("train (stage 1, student): 1/8 steps (12 %)")
    assert lines[-1].startswith("train (stage 2, segmentation): 8/8 steps (100 %)") and "loss" in lines[-1] and "ETA" in lines[-1]
    assert len(lines) == 8  # debug: 8 steps, a line per step (a tenth of 8 rounds to 1)


def test_parser_knows_all_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_saved_maps_reproduce_metrics_with_an_independent_script(trained_run: Path, tmp_path: Path):
    maps = tmp_path / "maps"
    assert main(["test", "--run", str(trained_run), "--save-maps", str(maps), "--quiet"]) == 0
    metrics = json.loads((trained_run / "metrics.json").read_text())
    rows = list(csv.DictReader((maps / "scores.csv").open()))
    assert len(rows) == 6 and {r["label"] for r in rows} == {"0", "1"}
    assert np.load(maps / "scratch" / "000.npy").shape == (256, 256)
    data_root = json.loads(json.dumps(__import__("yaml").safe_load((trained_run / "config.yaml").read_text())))["data"]["root"]
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "recompute_metrics.py"), str(maps), data_root, "widget"],
                         capture_output=True, text=True, check=True).stdout
    recomputed = json.loads(out)
    for key, value in recomputed.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key


def test_predict_writes_maps_overlays_masks_and_decisions(trained_run: Path, tmp_path: Path):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.full((40, 70, 3), 128, np.uint8)).save(images / "flat.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 60), np.uint8)).save(images / "noise.jpg")
    out = tmp_path / "out"
    assert main(["predict", "--run", str(trained_run), str(images), "--out", str(out), "--quiet"]) == 0
    assert np.load(out / "flat_map.npy").shape == (40, 70)
    assert np.load(out / "noise_map.npy").shape == (90, 60)
    overlay = Image.open(out / "noise_overlay.png")
    assert overlay.size == (60, 90) and overlay.mode == "RGB"
    assert set(np.unique(np.asarray(Image.open(out / "flat_mask.png")))) <= {0, 255}
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [Path(r["image"]).name for r in rows] == ["flat.png", "noise.jpg"]
    assert all(r["decision"] in ("OK", "NG") and 0 <= float(r["score"]) <= 1 for r in rows)
    threshold = json.loads((trained_run / "thresholds.json").read_text())["image"]  # calibrated after training
    assert all((float(r["score"]) >= threshold) == (r["decision"] == "NG") for r in rows)


def test_predict_searches_folders_recursively_and_mirrors_them(trained_run: Path, tmp_path: Path):
    images = tmp_path / "test"  # the MVTec layout: one subfolder per defect type
    for sub in ("good", "crack", ".hidden"):
        (images / sub).mkdir(parents=True)
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(images / sub / "000.png")
    out = images / "predictions"  # an output folder inside the input is not read back as input
    for _ in range(2):
        assert main(["predict", "--run", str(trained_run), str(images), "--out", str(out), "--quiet"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert sorted(Path(r["image"]).relative_to(images).as_posix() for r in rows) == ["crack/000.png", "good/000.png"]
    assert (out / "crack" / "000_map.npy").is_file() and (out / "good" / "000_overlay.png").is_file()


def test_predict_skips_unreadable_files_with_a_warning(trained_run: Path, tmp_path: Path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "ok.png")
    (images / "broken.png").write_bytes(b"not an image")
    assert main(["predict", "--run", str(trained_run), str(images), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"pfadseg: warning: skipped {images / 'broken.png'}") and "Traceback" not in captured.err
    assert "1 unreadable files skipped" in captured.out
    assert (tmp_path / "out" / "ok_map.npy").exists()
    rows = {Path(r["image"]).name: r["decision"] for r in csv.DictReader((tmp_path / "out" / "predictions.csv").open())}
    assert rows["broken.png"] == "SKIPPED" and rows["ok.png"] in ("OK", "NG")


def test_preview_synthesis_writes_a_grid(tiny_mvtec: Path, tmp_path: Path):
    out = tmp_path / "grid.png"
    assert main(["preview-synthesis", "--data", str(tiny_mvtec), "--category", "widget", "--image-size", "48",
                 "--rows", "3", "--out", str(out)]) == 0
    grid = Image.open(out)
    assert grid.width > 3 * 48 and grid.height > 3 * 48


def test_errors_are_one_line_without_traceback(tmp_path: Path):
    cases = [
        ["test", "--run", str(tmp_path / "missing")],
        ["train", "--data", str(tmp_path), "--category", "x", "--preset", "nope"],
        ["info", "--teacher", "vgg"],
        ["train", "--data", str(tmp_path), "--category", "x", "--preset", "debug", "--set", "data.brightness=1.5"],
    ]
    for args in cases:
        proc = subprocess.run([sys.executable, "-m", "pfadseg", *args], capture_output=True, text=True)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_tampered_or_mismatched_weights_are_clear_errors(trained_run: Path, tmp_path: Path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["test", "--run", str(copy), "--quiet"]) != 0
    assert "model.safetensors" in capsys.readouterr().err

    shutil.copy(trained_run / "model.safetensors", weights)
    config = (copy / "config.yaml").read_text().replace("kind: rcm", "kind: aspp")
    (copy / "config.yaml").write_text(config)
    assert main(["test", "--run", str(copy), "--quiet"]) != 0
    assert "do not fit" in capsys.readouterr().err


def test_demo_end_to_end_with_debug_budget(tmp_path: Path, capsys):
    """``--seed`` seeds training only (the data are the seed-0 data); ``--set`` reaches every run's configuration."""
    import numpy as np

    from pfadseg.data.demo_generator import demo_items, render_demo_item

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--preset", "debug", "--seed", "3", "--set", "train.student_steps=2", "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    categories = sorted(p.name for p in (out / "runs").iterdir())
    assert len(categories) >= 2 and sorted(r["dataset"] for r in results["runs"]) == categories
    page = (out / "report.html").read_text()
    printed = capsys.readouterr().out
    total_cases = 0
    for category in categories:
        assert (out / "runs" / category / "model.safetensors").exists()
        config = __import__("yaml").safe_load((out / "runs" / category / "config.yaml").read_text())
        assert config["seed"] == 3 and config["train"]["student_steps"] == 2
        item = demo_items(category)[0]
        assert np.array_equal(np.asarray(Image.open(out / "data" / item.image_rel)), render_demo_item(item, seed=0)[0])
        picture = Image.open(out / "pictures" / f"{category}.png")
        assert picture.width > 3 * 256  # image | ground truth | heat map at the evaluation size, and a colour bar
        run = next(r for r in results["runs"] if r["dataset"] == category)
        assert f"\n{category} " in printed and f"{100 * run['metrics']['pixel_ap']:.2f}" in printed  # the metrics table
        assert f"<h2>{category}</h2>" in page
        cases = json.loads((out / "gallery" / f"{category}.json").read_text())["cases"]
        assert len(cases) > 0 and all(f"base64,{c['jpeg']}" in page for c in cases)
        total_cases += len(cases)
    assert page.count("<img ") == total_cases  # one inline picture per case
    assert "\nmean " in printed and "pictures" in printed and "report.html" in printed


def test_predict_scores_equal_test_scores(trained_run: Path, tmp_path: Path):
    """predict (native-size reading + resize) must score an image exactly as `pfadseg test` does."""
    from pfadseg.api import load

    maps = tmp_path / "maps"
    assert main(["test", "--run", str(trained_run), "--save-maps", str(maps), "--quiet"]) == 0
    rows = {r["image"]: float(r["score"]) for r in csv.DictReader((maps / "scores.csv").open())}
    config = __import__("yaml").safe_load((trained_run / "config.yaml").read_text())
    data_root = Path(config["data"]["root"])
    detector = load(trained_run)
    # The same images in the same batch as `test` runs them (bf16 kernels may round differently at another batch size).
    assert len(rows) <= config["train"]["eval_batch_size"]
    paths = [data_root / "widget" / "test" / rel for rel in rows]
    predictions = detector.predict_arrays([read_image(p) for p in paths], paths)
    for (rel, score), prediction in zip(rows.items(), predictions):
        assert prediction.score == pytest.approx(score, abs=1e-6), rel
