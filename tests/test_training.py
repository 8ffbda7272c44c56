"""Training end to end: run directory, exact resume after SIGKILL, bad input, configuration."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pfadseg.cli import main
from pfadseg.config import RunConfig, merge, parse_override, preset_config, run_config_from_yaml
from pfadseg.errors import PfadsegError
from pfadseg.metrics import METRIC_KEYS

TRAIN = ["train", "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0", "--quiet"]


def test_run_directory_contents(trained_run: Path):
    assert {p.name for p in trained_run.iterdir()} == {"config.yaml", "model.safetensors", "train_log.jsonl", "metrics.json",
                                                      "thresholds.json", "run_info.json"}
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics) and all(0 <= metrics[k] <= 1 for k in METRIC_KEYS)
    log = [json.loads(line) for line in (trained_run / "train_log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == list(range(1, 9))  # debug: 4 + 4 steps, logged every step
    assert [entry["stage"] for entry in log] == [1] * 4 + [2] * 4


def _train_cmd(data: Path, out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "pfadseg", *TRAIN, "--data", str(data), "--out", str(out),
            "--student-steps", str(steps), "--segmentation-steps", str(steps), "--image-size", "32"]


def test_resume_after_sigkill_ends_with_identical_weights(tiny_mvtec: Path, tmp_path: Path):
    steps = 12
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_train_cmd(tiny_mvtec, reference, steps), check=True, capture_output=True)

    proc = subprocess.Popen(_train_cmd(tiny_mvtec, killed, steps), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = killed / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and not (killed / "model.safetensors").exists(), "the run must be killed mid-way"

    assert main(["train", "--resume", "--out", str(killed), "--quiet"]) == 0
    a, b = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps_logged = [json.loads(line)["step"] for line in (killed / "train_log.jsonl").read_text().splitlines()]
    assert steps_logged == list(range(1, 2 * steps + 1))


def test_corrupt_training_image_is_a_one_line_error_and_earlier_runs_are_untouched(tiny_mvtec: Path, tmp_path: Path):
    earlier = tmp_path / "earlier"
    assert main([*TRAIN, "--data", str(tiny_mvtec), "--out", str(earlier)]) == 0
    before = {p.name: p.read_bytes() for p in earlier.iterdir()}

    bad = tiny_mvtec / "widget" / "train" / "good" / "003.png"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated PNG
    for out, expected in ((tmp_path / "new", "003.png"), (earlier, "already holds a trained model")):
        proc = subprocess.run([sys.executable, "-m", "pfadseg", *TRAIN, "--data", str(tiny_mvtec), "--out", str(out)],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in lines[0]
    assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in earlier.iterdir()} == before


def test_corrupt_image_error_names_the_file(tiny_mvtec: Path, tmp_path: Path, capsys):
    bad = tiny_mvtec / "widget" / "train" / "good" / "005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert main([*TRAIN, "--data", str(tiny_mvtec), "--out", str(tmp_path / "run")]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "005.png" in err


def test_finished_run_is_not_overwritten(trained_run: Path, capsys):
    data = json.loads((trained_run / "metrics.json").read_text())
    assert main([*TRAIN, "--data", "unused", "--out", str(trained_run)]) != 0
    assert "already holds a trained model" in capsys.readouterr().err
    assert json.loads((trained_run / "metrics.json").read_text()) == data


def test_unknown_category_lists_the_known_ones(tiny_mvtec: Path, tmp_path: Path, capsys):
    assert main(["train", "--data", str(tiny_mvtec), "--category", "gizmo", "--preset", "debug", "--out", str(tmp_path / "r")]) != 0
    err = capsys.readouterr().err
    assert "gizmo" in err and "widget" in err


def test_overrides_change_exactly_the_named_keys_and_bad_ones_are_errors():
    from dataclasses import replace

    base = preset_config("destseg", "fast")
    config = base
    for text in ("train.lr_student=0.4", "model.block.pcar_dilations=[1, 3, 5]", "synthesis.texture_augmentation=true"):
        config = merge(config, parse_override(text))
    expected = replace(base, train=replace(base.train, lr_student=0.4), synthesis=replace(base.synthesis, texture_augmentation=True),
                       model=replace(base.model, block=replace(base.model.block, pcar_dilations=(1, 3, 5))))
    assert config == expected
    for bad in ("train.nope=1", "train.batch_size=many", "model.head.kind=unet", "synthesis.beta_max=3"):
        with pytest.raises(PfadsegError):
            merge(config, parse_override(bad))


def test_saved_config_round_trips(trained_run: Path):
    from pfadseg.config import run_config_from_yaml

    config = run_config_from_yaml(trained_run / "config.yaml")
    assert isinstance(config, RunConfig)
    assert config.train == preset_config("pfadseg", "debug").train  # the fixture trains the debug preset as it is
    assert config.model.teacher == "efficientnet_lite0" and config.data.category == "widget"  # ... with these flags
    assert os.path.isabs(config.data.root)


def test_a_run_saved_with_the_removed_log_space_loss_option_still_loads(trained_run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    text = (copy / "config.yaml").read_text()
    (copy / "config.yaml").write_text(text.replace("  focal_gamma:", "  loss_from_logits: true\n  focal_gamma:"))
    assert "loss_from_logits: true" in (copy / "config.yaml").read_text()
    assert run_config_from_yaml(copy / "config.yaml") == run_config_from_yaml(trained_run / "config.yaml")
    assert main(["info", "--run", str(copy)]) == 0


def test_seed_fixes_initialisation_and_batches(tiny_mvtec: Path, tmp_path: Path):
    for name in ("a", "b"):
        assert main([*TRAIN, "--data", str(tiny_mvtec), "--out", str(tmp_path / name), "--image-size", "32", "--seed", "3"]) == 0
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corrupt_test_image_fails_before_training(tiny_mvtec: Path, tmp_path: Path, capsys):
    (tiny_mvtec / "widget" / "test" / "scratch" / "001.png").write_bytes(b"")
    assert main([*TRAIN, "--data", str(tiny_mvtec), "--out", str(tmp_path / "run")]) != 0
    assert "001.png" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_segmentation_warmup_ramps_the_learning_rates_linearly(tiny_trainer):
    config = merge(preset_config("pfadseg", "debug"), {"model": {"teacher": "efficientnet_lite0"},
                                                         "train": {"seg_warmup_steps": 4, "lr_seg_blocks": 0.4, "lr_seg_head": 0.2}})
    trainer = tiny_trainer(config)
    trainer.step = config.train.student_steps  # the first stage-2 step
    seen = []
    for _ in range(6):
        trainer.segmentation_step()
        trainer.step += 1
        seen.append([round(g["lr"], 6) for g in trainer.optimizers.segmentation.param_groups])
    assert seen == [[0.1, 0.05], [0.2, 0.1], [0.3, 0.15], [0.4, 0.2], [0.4, 0.2], [0.4, 0.2]]


def test_cosine_schedule_falls_to_zero_within_each_stage_after_the_warm_up(tiny_trainer):
    """Stage 1 and stage 2 each run half a cosine from their base rates; the stage-2 warm-up multiplies it."""
    config = merge(preset_config("pfadseg", "debug"), {"model": {"teacher": "efficientnet_lite0"},
                                                         "train": {"student_steps": 4, "segmentation_steps": 4, "seg_warmup_steps": 2,
                                                                   "lr_student": 0.5, "lr_seg_blocks": 0.4, "lr_seg_head": 0.2,
                                                                   "lr_schedule": "cosine"}})
    trainer = tiny_trainer(config)
    cosine = [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]  # 1, 0.854, 0.5, 0.146
    student, blocks = [], []
    for _ in range(8):
        trainer.student_step() if trainer.stage(trainer.step) == 1 else trainer.segmentation_step()
        trainer.step += 1
        student.append(trainer.optimizers.student.param_groups[0]["lr"])
        blocks.append([g["lr"] for g in trainer.optimizers.segmentation.param_groups])
    assert student[:4] == pytest.approx([0.5 * c for c in cosine])
    warm = [0.5, 1.0, 1.0, 1.0]
    assert [b for b, _ in blocks[4:]] == pytest.approx([0.4 * w * c for w, c in zip(warm, cosine)])
    assert [h for _, h in blocks[4:]] == pytest.approx([0.2 * w * c for w, c in zip(warm, cosine)])


def _averaging_config(**train):
    return merge(preset_config("pfadseg", "debug"), {"model": {"teacher": "efficientnet_lite0"},
                                                     "train": {"student_steps": 4, "segmentation_steps": 4, "seg_average_last": 0.5, **train}})


def _floating_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.is_floating_point()}


def test_the_segmentation_net_ends_with_the_mean_of_its_last_weights(tiny_trainer, monkeypatch):
    """seg_average_last 0.5 of 4 stage-2 steps: the segmentation net ends as the mean of its weights after steps 7 and 8
    (BatchNorm statistics included); the student keeps its last weights."""
    trainer = tiny_trainer(_averaging_config())
    iterates: list[tuple[dict, dict]] = []
    for name in ("student_step", "segmentation_step"):
        step = getattr(trainer, name)

        def record(step=step):
            loss = step()
            iterates.append((_floating_state(trainer.model.student), _floating_state(trainer.model.segmentation)))
            return loss

        monkeypatch.setattr(trainer, name, record)
    trainer.fit(progress=False)
    final = _floating_state(trainer.model.segmentation)
    assert any("running_mean" in k for k in final)
    for key, value in final.items():
        expected = torch.stack([seg[key] for _, seg in iterates[6:8]]).mean(0)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")
    assert not all(torch.equal(final[k], iterates[7][1][k]) for k in final), "the last iterate is not the mean"
    for key, value in _floating_state(trainer.model.student).items():
        assert torch.equal(iterates[3][0][key], value), key


@pytest.mark.parametrize("stop_at", [5, 7])
def test_a_run_resumed_before_or_inside_the_averaging_window_ends_as_an_uninterrupted_one(tiny_trainer, monkeypatch, stop_at):
    config = _averaging_config(checkpoint_every=1)
    reference = tiny_trainer(config)
    reference.fit(progress=False)
    expected = {k: v.clone() for k, v in reference.model.state_dict().items()}

    interrupted = tiny_trainer(config)
    step = interrupted.segmentation_step

    def stop_after(step=step):
        if interrupted.step == stop_at:  # steps 1..stop_at are done and checkpointed
            raise KeyboardInterrupt
        return step()

    monkeypatch.setattr(interrupted, "segmentation_step", stop_after)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(progress=False)
    resumed = tiny_trainer(config)
    resumed.load_checkpoint()
    assert resumed.step == stop_at and resumed.average.count == max(0, stop_at - 6)  # the window: steps 7 and 8
    resumed.fit(progress=False)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_checkpoint_without_the_average_is_refused_when_the_run_averages(tiny_trainer):
    plain = tiny_trainer(_averaging_config(seg_average_last=0.0))
    plain.save_checkpoint()
    with pytest.raises(PfadsegError, match="no weight average"):
        tiny_trainer(_averaging_config()).load_checkpoint()


def test_seg_average_last_must_be_a_fraction():
    with pytest.raises(PfadsegError, match="seg_average_last"):
        merge(preset_config("pfadseg", "demo"), {"train": {"seg_average_last": 1.5}})


def test_a_saturated_segmentation_network_is_reported(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    """Logits far below zero everywhere (a collapsed network): training ends with a warning, not silent metrics."""
    from pfadseg.training.trainer import Trainer

    real_fit = Trainer.fit

    def fit_then_saturate(self, progress=True):
        summary = real_fit(self, progress)
        last = self.model.segmentation.head[-1]
        with torch.no_grad():
            last.weight.mul_(1e-2)  # logits vary a little around the bias: the map is not constant ...
            last.bias.fill_(-60.0)  # ... but sigmoid ≈ 1e-26 everywhere: dead under the official loss
        return summary

    monkeypatch.setattr(Trainer, "fit", fit_then_saturate)
    args = ["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "warning: the anomaly map is (almost) zero everywhere" in out.out + out.err
    assert "train.seg_warmup_steps=1" in out.out + out.err  # debug preset: 4 stage-2 steps, no warm-up


def test_non_finite_segmentation_output_is_a_one_line_divergence_error(tiny_mvtec: Path, tmp_path: Path, monkeypatch, capsys):
    """A student blown up in stage 1 feeds NaN to stage 2: a clear error naming the step, not a loss-function traceback."""
    from pfadseg.models.segmentation import SegmentationNet

    real_forward = SegmentationNet.forward
    monkeypatch.setattr(SegmentationNet, "forward", lambda self, x: real_forward(self, x) * float("nan"))
    out = tmp_path / "run"
    assert main(["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
                 "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert "training diverged at step 5 (stage 2, loss nan)" in err and "Traceback" not in err
    assert not (out / "model.safetensors").exists()
