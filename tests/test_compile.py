"""``--compile``: one compilation per batch size, padded last batches, and clear errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from pfadseg.cli import main
from pfadseg.errors import PfadsegError
from pfadseg.training.runtime import compile_fixed_batch


def _map_and_score(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in model: per-image outputs that depend on the image, so a wrong slice is visible."""
    return x * scale, x.flatten(1).amax(dim=1)


class RecordingCompile:
    """Replaces torch.compile: records the batch sizes the compiled function is called with."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, fn, dynamic=None):
        def compiled(x, *args):
            self.batch_sizes.append(len(x))
            return fn(x, *args)

        return compiled


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_every_call_runs_at_the_compiled_batch_size_and_outputs_match_eager(monkeypatch, n: int):
    recorder = RecordingCompile()
    monkeypatch.setattr(torch, "compile", recorder)
    x = torch.rand(n, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    maps, scores = compile_fixed_batch(_map_and_score, 4)(x, 2.0)
    assert set(recorder.batch_sizes) == {4}
    assert len(recorder.batch_sizes) == -(-n // 4)
    expected_maps, expected_scores = _map_and_score(x, 2.0)
    assert torch.equal(maps, expected_maps) and torch.equal(scores, expected_scores)


def test_padding_keeps_the_memory_format(monkeypatch):
    formats = []

    def fake_compile(fn, dynamic=None):
        def compiled(x, *args):
            formats.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
            return fn(x, *args)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    compile_fixed_batch(_map_and_score, 4)(torch.rand(2, 3, 8, 8).contiguous(memory_format=torch.channels_last), 1.0)
    assert formats == [True]


def test_a_compiler_failure_is_one_clear_error(monkeypatch):
    def broken_compile(fn, dynamic=None):
        def compiled(x, *args):
            raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found\nlong traceback")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.raises(PfadsegError, match=r"torch.compile failed \(TorchDynamoException: InvalidCxxCompiler.*\); run without --compile$"):
        compile_fixed_batch(_map_and_score, 2)(torch.rand(2, 3, 4, 4), 1.0)


def test_test_and_predict_compile_the_model_they_run(trained_run: Path, tmp_path: Path, monkeypatch):
    """`test --compile` and `predict --compile` go through the compiled forward (here a recording stand-in)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # test writes metrics.json into the run
    recorder = RecordingCompile()
    monkeypatch.setattr(torch, "compile", recorder)
    assert main(["test", "--run", str(run), "--compile", "--quiet"]) == 0
    assert recorder.batch_sizes and set(recorder.batch_sizes) == {16}  # the run's eval batch size
    recorder.batch_sizes.clear()
    root = Path(yaml.safe_load((trained_run / "config.yaml").read_text())["data"]["root"])
    images = sorted((root / "widget" / "test").rglob("*.png"))[:3]
    assert main(["predict", "--run", str(run), *map(str, images), "--out", str(tmp_path / "p"), "--compile", "--batch-size", "2",
                 "--quiet"]) == 0
    assert recorder.batch_sizes == [2, 2]


def test_compile_with_an_onnx_model_is_refused(tmp_path: Path, capsys):
    assert main(["predict", "--model", str(tmp_path / "m.onnx"), str(tmp_path), "--out", str(tmp_path / "o"), "--compile"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--compile and --precision apply to a run directory" in err and len(err.splitlines()) == 1



def test_training_compiles_the_segmentation_net_only_and_checkpoints_plain_weights(tiny_mvtec: Path, tmp_path: Path, monkeypatch):
    compiled = []
    real_compile = torch.compile

    def recording_compile(module, **kwargs):
        compiled.append(type(module).__name__)
        return real_compile(module, backend="eager")  # the real dynamo graph capture, without minutes of C++ builds

    monkeypatch.setattr(torch, "compile", recording_compile)
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
            "--set", "train.compile=true", "--out", str(run), "--quiet"]
    assert main(args) == 0
    assert compiled == ["SegmentationNet"]
    from safetensors import safe_open

    with safe_open(str(run / "model.safetensors"), framework="pt") as f:
        assert not any("_orig_mod" in key for key in f.keys())
    assert main(["test", "--run", str(run), "--quiet"]) == 0


def test_a_compiler_failure_in_training_is_one_clear_error(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    def broken_compile(module, **kwargs):
        def compiled(*args, **kw):
            raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: No working C++ compiler found")

        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    args = ["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
            "--set", "train.compile=true", "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "torch.compile failed" in err and "--set train.compile=false" in err and len(err.splitlines()) == 1
    assert (tmp_path / "run" / "checkpoint.safetensors").exists()  # stage 1's checkpoint is kept
