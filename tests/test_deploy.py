"""Deployment: ONNX export and parity, torch-free prediction, calibrated OK/NG thresholds."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pfadseg.cli import main
from pfadseg.data.datasets import Sample, holdout_split
from pfadseg.errors import PfadsegError
from pfadseg.thresholds import decision_rates, f1_threshold, fpr_threshold

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "widget.onnx"
    assert main(["export", "--run", str(trained_run), "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["widget.onnx"]  # one file, no temporary or external-data leftovers
    return out


def _test_images(run: Path) -> list[Path]:
    root = Path(__import__("yaml").safe_load((run / "config.yaml").read_text())["data"]["root"])
    return sorted((root / "widget" / "test").rglob("*.png"))


def test_export_has_uint8_input_dynamic_batch_and_metadata(exported: Path, trained_run: Path):
    import onnx

    model = onnx.load(str(exported))
    (image,) = model.graph.input
    assert image.name == "image" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    assert [o.name for o in model.graph.output] == ["anomaly_map", "score"]
    meta = {p.key: p.value for p in model.metadata_props}
    saved = json.loads((trained_run / "thresholds.json").read_text())
    assert json.loads(meta["pfadseg.thresholds"]) == {"image": saved["image"], "pixel": saved["pixel"], "precision": "fp32"}
    assert meta["pfadseg.image_size"] == "64"


def test_onnx_predictions_match_pytorch_fp32(exported: Path, trained_run: Path):
    from pfadseg.onnx_backend import OnnxBackend
    from pfadseg.predict import Predictor
    from pfadseg.torch_backend import TorchBackend

    onnx_pred = Predictor(OnnxBackend(exported))
    torch_pred = Predictor(TorchBackend(trained_run))
    assert onnx_pred.thresholds == torch_pred.thresholds
    for path in _test_images(trained_run):
        a, b = onnx_pred.predict_file(path), torch_pred.predict_file(path)
        assert np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4
        assert abs(a.score - b.score) <= 1e-5 and a.is_anomalous == b.is_anomalous
    # any batch size: the batch dimension is dynamic
    images = np.zeros((5, 64, 64, 3), np.uint8)
    maps, scores = OnnxBackend(exported)(images)
    assert maps.shape == (5, 1, 64, 64) and scores.shape == (5,) and maps.dtype == np.float32


def test_onnx_predict_never_imports_torch(exported: Path, trained_run: Path, tmp_path: Path):
    out = tmp_path / "out"
    code = ("import sys; from pfadseg.cli import main; "
            f"rc = main(['predict', '--model', {str(exported)!r}, {str(_test_images(trained_run)[0].parent)!r}, '--out', {str(out)!r}, '--quiet']); "
            "assert 'torch' not in sys.modules, 'torch was imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert rows and all(r["decision"] in ("OK", "NG") for r in rows)
    assert "onnxruntime" in proc.stdout


def test_predict_outputs_are_the_same_with_the_run_and_with_onnx(exported: Path, trained_run: Path, tmp_path: Path):
    folder = _test_images(trained_run)[0].parent
    assert main(["predict", "--model", str(exported), str(folder), "--out", str(tmp_path / "onnx"), "--quiet"]) == 0
    assert main(["predict", "--run", str(trained_run), str(folder), "--out", str(tmp_path / "torch"), "--quiet"]) == 0
    names = sorted(p.name for p in (tmp_path / "onnx").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "torch").iterdir()) and "predictions.csv" in names


def test_bad_onnx_files_are_one_line_errors(tmp_path: Path, capsys):
    import onnx
    from onnx import TensorProto, helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    identity = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["score"])], "g",
                                                   [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                                                   [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])]))
    foreign = tmp_path / "foreign.onnx"
    onnx.save(identity, str(foreign))
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    for model, message in ((junk, "not a loadable ONNX model"), (foreign, "not a pfadseg export"), (tmp_path / "none.onnx", "no such file")):
        assert main(["predict", "--model", str(model), str(image), "--out", str(tmp_path / "out"), "--quiet"]) == 1
        err = capsys.readouterr().err
        assert message in err and str(model) in err and err.count("\n") == 1


def test_export_refuses_when_the_check_images_are_gone(trained_run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("*.onnx"))
    config = (copy / "config.yaml").read_text()
    root = __import__("yaml").safe_load(config)["data"]["root"]
    (copy / "config.yaml").write_text(config.replace(root, str(tmp_path / "moved")))
    assert main(["export", "--run", str(copy)]) == 1
    assert "moved" in capsys.readouterr().err
    assert not (copy / "model.onnx").exists()


# ---------------------------------------------------------------------------------- thresholds


def test_fpr_threshold_flags_at_most_the_target_share():
    scores = np.random.default_rng(0).normal(size=1000)
    for target in (0.0, 0.01, 0.05, 0.5):
        t = fpr_threshold(scores, target)
        flagged = int((scores >= t).sum())
        assert flagged <= target * 1000 and (scores >= np.nextafter(np.sort(scores)[::-1][flagged], -np.inf)).sum() > target * 1000
    tied = np.array([0.2, 0.5, 0.5, 0.5, 0.9])
    assert int((tied >= fpr_threshold(tied, 0.5)).sum()) == 1  # the tied 0.5s go together, so only 0.9 is flagged
    with pytest.raises(PfadsegError):
        fpr_threshold(scores, 1.0)


def test_f1_threshold_is_the_best_of_all_thresholds():
    rng = np.random.default_rng(1)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(size=300) + 1.5 * labels, 1)
    threshold, best = f1_threshold(scores, labels)

    def f1(t):
        flagged = scores >= t
        tp = (flagged & labels).sum()
        return 2 * tp / (flagged.sum() + labels.sum())

    assert best == pytest.approx(f1(threshold)) and best == pytest.approx(max(f1(t) for t in np.unique(scores)))
    rates = decision_rates(scores, labels, threshold)
    assert rates["detected"] == int((scores[labels] >= threshold).sum()) and rates["good"] == int((~labels).sum())


def test_holdout_split_is_seeded_disjoint_and_keeps_one_to_train():
    samples = [Sample(Path(f"{i}.png"), None, 0, "good", f"good/{i}.png") for i in range(20)]
    train, held = holdout_split(samples, 0.1, seed=3)
    assert len(held) == 2 and len(train) == 18 and not set(train) & set(held)
    assert holdout_split(samples, 0.1, seed=3) == (train, held)
    assert holdout_split(samples, 0.0, seed=3) == (samples, [])
    assert len(holdout_split(samples[:2], 0.9, seed=0)[0]) == 1


def test_training_calibrates_and_predict_applies_the_thresholds(trained_run: Path, tmp_path: Path, capsys):
    saved = json.loads((trained_run / "thresholds.json").read_text())
    assert saved["target_fpr"] == 0.01 and len(saved["calibration_images"]) == 1
    assert {"image", "pixel"} <= set(saved["f1_optimal"]) and "calibrated" in saved["test"]

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    image = _test_images(trained_run)[0]
    from pfadseg.api import load

    score = load(copy).predict_file(image).score
    for threshold, decision in ((score - 1e-6, "NG"), (score + 1e-6, "OK")):  # fp32: the same score on every path
        (copy / "thresholds.json").write_text(json.dumps({**saved, "image": threshold, "pixel": 0.0}))
        out = tmp_path / decision
        assert main(["predict", "--run", str(copy), str(image), "--out", str(out), "--quiet"]) == 0
        (row,) = csv.DictReader((out / "predictions.csv").open())
        assert row["decision"] == decision
        assert np.asarray(Image.open(out / f"{image.stem}_mask.png")).min() == 255  # pixel threshold 0: all flagged


def test_calibrate_command_sets_new_thresholds_and_test_reports_them(trained_run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    before = json.loads((copy / "thresholds.json").read_text())
    assert main(["calibrate", "--run", str(copy), "--target-fpr", "0.5", "--quiet"]) == 0
    after = json.loads((copy / "thresholds.json").read_text())
    assert after["target_fpr"] == 0.5 and after["calibration_images"] == before["calibration_images"]
    assert after["pixel"] < before["pixel"]  # half the normal pixels may now be flagged
    assert "thresholds at 50 % target false alarms" in capsys.readouterr().out
    assert main(["test", "--run", str(copy), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"image threshold {after['image']:.4f}" in out and "false alarms" in out
    decisions = json.loads((copy / "metrics.json").read_text())["decisions"]
    assert decisions["good"] == 3 and decisions["defective"] == 3


# ---------------------------------------------------------------------------------- one decision on every path


def _csv_scores(path: Path) -> dict[str, float]:
    return {"/".join(Path(r["image"]).parts[-2:]): float(r["score"]) for r in csv.DictReader(path.open())}


def test_run_onnx_and_api_give_the_same_decision_even_at_a_borderline_threshold(exported: Path, trained_run: Path, tmp_path: Path):
    """Every score a decision uses is fp32: `test`, `predict --run`, `predict --model` and the API agree far below any
    threshold's resolution, so OK/NG agree even for a threshold a millionth above an image's score."""
    from pfadseg.api import load

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    images = _test_images(trained_run)
    assert main(["test", "--run", str(copy), "--save-maps", str(tmp_path / "maps"), "--quiet"]) == 0
    scores = {"test": _csv_scores(tmp_path / "maps" / "scores.csv")}
    for name, flag, model in (("run", "--run", copy), ("onnx", "--model", exported)):
        assert main(["predict", flag, str(model), *map(str, images), "--out", str(tmp_path / name), "--quiet"]) == 0
        scores[name] = _csv_scores(tmp_path / name / "predictions.csv")
    scores["api"] = {"/".join(p.parts[-2:]): load(copy).predict_file(p).score for p in images}
    keys = sorted(scores["api"])
    table = np.array([[scores[path][k] for k in keys] for path in ("test", "run", "onnx", "api")])
    assert np.abs(table - table[0]).max() <= 1e-6
    borderline = table[0, 0] + 1e-6
    decisions = table >= borderline
    assert (decisions == decisions[0]).all() and not decisions[0, 0]
    saved = json.loads((copy / "thresholds.json").read_text())
    (copy / "thresholds.json").write_text(json.dumps({**saved, "image": borderline}))  # and end to end, through the run's file
    assert main(["predict", "--run", str(copy), *map(str, images), "--out", str(tmp_path / "decide"), "--quiet"]) == 0
    rows = {"/".join(Path(r["image"]).parts[-2:]): r["decision"] for r in csv.DictReader((tmp_path / "decide" / "predictions.csv").open())}
    assert [rows[k] == "NG" for k in keys] == decisions[0].tolist()


def test_an_fp32_score_does_not_depend_on_its_batch_mates(trained_run: Path):
    from pfadseg.api import load
    from pfadseg.data.images import read_image

    images = _test_images(trained_run)
    arrays = [read_image(p) for p in images]
    detector = load(trained_run)
    alone = [detector.predict_arrays([a], [p])[0].score for a, p in zip(arrays, images)]
    together = [pred.score for pred in detector.predict_arrays(arrays, images)]
    reversed_batch = [pred.score for pred in detector.predict_arrays(arrays[::-1], images[::-1])][::-1]
    assert np.abs(np.array(alone) - np.array(together)).max() <= 1e-6
    assert np.abs(np.array(alone) - np.array(reversed_batch)).max() <= 1e-6


def test_bf16_scores_need_thresholds_of_their_own(trained_run: Path, tmp_path: Path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    image = _test_images(trained_run)[0]
    assert main(["predict", "--run", str(copy), "--precision", "bf16", str(image), "--out", str(tmp_path / "a"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no thresholds for bf16 scores" in err and "--precision bf16" in err and err.count("\n") == 1
    assert main(["calibrate", "--run", str(copy), "--precision", "bf16", "--quiet"]) == 0
    bf16 = json.loads((copy / "thresholds-bf16.json").read_text())
    assert bf16["precision"] == "bf16" and json.loads((copy / "thresholds.json").read_text())["precision"] == "fp32"
    assert main(["predict", "--run", str(copy), "--precision", "bf16", str(image), "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "pytorch bf16" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path / "x.onnx"), "--precision", "bf16", str(image), "--out", str(tmp_path / "c")]) == 1
    assert "runs in fp32" in capsys.readouterr().err


def test_thresholds_without_a_recorded_precision_are_flagged(trained_run: Path, tmp_path: Path, capsys):
    """A run calibrated by an earlier pfadseg (no precision in thresholds.json) still predicts, with a warning."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    saved = json.loads((copy / "thresholds.json").read_text())
    del saved["precision"]
    (copy / "thresholds.json").write_text(json.dumps(saved))
    assert main(["predict", "--run", str(copy), str(_test_images(trained_run)[0]), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "warning: the thresholds were set on scores of an unrecorded precision" in capsys.readouterr().err


def test_calibration_says_what_its_held_out_images_can_resolve(trained_run: Path, tmp_path: Path, capsys):
    from pfadseg.calibration import calibration_warnings

    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    assert main(["calibrate", "--run", str(copy), "--target-fpr", "0.05", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "set on 1 held-out normal images in fp32" in out and "resolve false-alarm rates down to 1/1 = 100.0 %" in out
    base = {"target_fpr": 0.01, "calibration_images": ["x"] * 200}
    assert calibration_warnings(base) == []
    assert "1/50 = 2.0 %" in calibration_warnings({**base, "calibration_images": ["x"] * 50})[0]

    def rates(false_alarms: int, good: int = 20) -> dict:
        return {**base, "test": {"calibrated": {"false_alarms": false_alarms, "good": good}}}

    assert calibration_warnings(rates(1)) == []  # 1 in 20 at a 1 % target: chance 18 %, no alarm
    (warning,) = calibration_warnings(rates(8))
    assert warning.startswith("WARNING") and "8 of 20 good images (40.0 %)" in warning


def test_export_without_the_onnx_extra_says_what_to_install(trained_run: Path, tmp_path: Path, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def without_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'", name="onnxscript")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_onnxscript)
    assert main(["export", "--run", str(trained_run), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'pfadseg[onnx]'" in err and "onnxscript" in err and err.count("\n") == 1
    assert not (tmp_path / "m.onnx").exists()
