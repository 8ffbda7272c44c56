"""The memory bank: coreset, nearest-patch distances, fusion from held-out images only, saving, ONNX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from pfadseg.cli import main
from pfadseg.config import merge, preset_config
from pfadseg.data.datasets import holdout_split, load_splits
from pfadseg.models import memory_bank
from pfadseg.models.memory_bank import (
    BankConfig,
    build_memory_bank,
    gaussian_kernel,
    greedy_coreset,
    nearest_distances,
    patch_features,
    upsample_blur,
)
from pfadseg.rundir import load_run


@pytest.fixture(scope="module")
def banked_run(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared debug run with a memory bank added by ``pfadseg bank`` (fused: the run held normal images out)."""
    run = tmp_path_factory.mktemp("banked") / "run"
    shutil.copytree(trained_run, run)
    assert main(["bank", "--run", str(run), "--quiet"]) == 0
    return run


def _brute_force_nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return torch.cdist(queries.double(), bank.double()).min(dim=1).values


def test_greedy_coreset_picks_each_next_point_farthest_from_those_chosen():
    g = torch.Generator().manual_seed(0)
    points = torch.randn(300, 5, generator=g)
    chosen = greedy_coreset(points, 12, projection=5, generator=torch.Generator().manual_seed(1))
    assert len(set(chosen.tolist())) == 12
    for i in range(1, 12):
        to_chosen = torch.cdist(points, points[chosen[:i]]).min(dim=1).values
        assert to_chosen[chosen[i]] == pytest.approx(float(to_chosen.max()), rel=1e-5)


def test_greedy_coreset_covers_every_cluster_within_twice_the_optimal_radius():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0], [25.0, 100.0]])
    points = torch.cat([c + 0.5 * torch.randn(40, 2, generator=g) for c in centres])
    chosen = greedy_coreset(points, 5, projection=2, generator=torch.Generator().manual_seed(3))
    radius = torch.cdist(points, points[chosen]).min(dim=1).values.max()
    optimal_at_most = torch.cdist(points, centres).min(dim=1).values.max()  # the true centres are one 5-centre solution
    assert radius <= 2 * optimal_at_most
    assert sorted((chosen // 40).tolist()) == [0, 1, 2, 3, 4]  # one point from each cluster


@pytest.mark.parametrize("bf16_autocast", [False, True])  # float32 search, and the bf16 shortlist
def test_nearest_distances_equal_brute_force_in_float32(bf16_autocast, monkeypatch):
    shortlist, calls = memory_bank.bf16_shortlist, []
    monkeypatch.setattr(memory_bank, "bf16_shortlist", lambda *args: calls.append(args) or shortlist(*args))
    g = torch.Generator().manual_seed(0)
    bank = 10 + torch.randn(500, 24, generator=g)  # large norms: the expanded form's cancellation would show
    queries = torch.cat([bank[:7] + 1e-3 * torch.randn(7, 24, generator=g), 10 + torch.randn(5000, 24, generator=g)])
    expected = _brute_force_nearest(queries, bank)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
        got = nearest_distances(queries, bank, bank.square().sum(dim=1))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    assert bool(calls) == bf16_autocast  # the bf16 path runs exactly when autocast asks for bf16


def test_bank_size_follows_fraction_and_cap_and_the_seed():
    patches = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    bank, total = build_memory_bank(patches, BankConfig(fraction=0.1, max_size=150, projection=4, pool=1000), seed=0)
    assert total == 2000 and bank.patches.shape == (150, 8)
    small, _ = build_memory_bank(patches, BankConfig(fraction=0.05, max_size=10_000, projection=4), seed=0)
    assert small.patches.shape == (100, 8)
    again, _ = build_memory_bank(patches, BankConfig(fraction=0.05, max_size=10_000, projection=4), seed=0)
    other, _ = build_memory_bank(patches, BankConfig(fraction=0.05, max_size=10_000, projection=4), seed=1)
    assert torch.equal(small.patches, again.patches) and not torch.equal(small.patches, other.patches)
    # every kept patch is one of the training patches
    assert all((patches == row).all(dim=1).any() for row in bank.patches)


def test_patch_features_average_3x3_neighbourhoods_on_the_finest_chosen_grid():
    mid = torch.zeros(1, 2, 4, 4)
    mid[0, 0, 1, 1] = 9.0
    deep = torch.ones(1, 3, 2, 2)
    teacher_feats = [torch.zeros(1, 1, 8, 8), mid, deep]
    feats = patch_features(teacher_feats, (8, 16))
    assert feats.shape == (1, 5, 4, 4)
    assert feats[0, 0, 1, 1] == 1.0 and feats[0, 0, 0, 0] == 9.0 / 4  # 3×3 mean; at the corner over its 4 valid cells
    assert torch.all(feats[0, 2:] == 1.0)
    assert torch.equal(patch_features(teacher_feats, (16,)), deep)  # a constant stays constant under the 3×3 mean
    assert patch_features(teacher_feats, (4, 16)).shape == (1, 4, 8, 8)


@pytest.mark.parametrize("strides", [(), (16, 8), (8, 8), (2, 8), (32,)])
def test_bank_strides_must_be_increasing_teacher_strides(strides):
    with pytest.raises(ValueError, match="bank.strides"):
        BankConfig(strides=strides)


def blur_by_convolution(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Reference: a 2-D Gaussian blur as one convolution with the outer product of the kernel, edges replicated."""
    kernel = gaussian_kernel(sigma)
    r = len(kernel) // 2
    return F.conv2d(F.pad(maps, (r, r, r, r), mode="replicate"), torch.outer(kernel, kernel)[None, None])


@pytest.mark.parametrize("sigma", [0.0, 1.5, 4.0])
def test_upsample_blur_equals_bilinear_upsampling_then_a_gaussian_blur(sigma):
    maps = torch.rand(3, 1, 10, 14)
    expected = F.interpolate(maps, size=(40, 56), mode="bilinear", align_corners=False)
    if sigma:
        expected = blur_by_convolution(expected, sigma)
    torch.testing.assert_close(upsample_blur(maps, (40, 56), sigma), expected, rtol=1e-5, atol=1e-6)


def test_upsample_blur_keeps_a_constant_and_the_mass_of_a_peak():
    constant = torch.full((1, 1, 20, 30), 3.0)
    torch.testing.assert_close(upsample_blur(constant, (20, 30), 4.0), constant)
    peak = torch.zeros(1, 1, 41, 41)
    peak[0, 0, 20, 20] = 1.0
    blurred = upsample_blur(peak, (41, 41), 2.0)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5) and blurred.max() < 0.05


def test_knn_map_of_a_training_image_is_near_zero(trained_run: Path):
    from pfadseg.bank import gather_patches
    from pfadseg.data.datasets import load_images

    run = load_run(trained_run, "cpu")
    splits = load_splits(run.config.data)
    train = load_images(splits.train[:3], run.config.train.image_size)
    bank, _ = build_memory_bank(gather_patches(run.model, train, None, BankConfig().strides, run.device), BankConfig(fraction=1.0), seed=0)
    run.model.memory_bank = bank
    with torch.no_grad():
        seen = run.model.knn_scored_map(run.model.teacher(train.float() / 255), (64, 64))[0]
        unseen_images = load_images([s for s in splits.test if s.label][:2], run.config.train.image_size)
        unseen = run.model.knn_scored_map(run.model.teacher(unseen_images.float() / 255), (64, 64))[0]
    assert seen.abs().max() < 1e-3 * unseen.max() and unseen.max() > 0


def test_bank_and_fusion_come_from_training_and_held_out_images_never_from_test_images(banked_run: Path, tmp_path: Path):
    config = yaml.safe_load((banked_run / "config.yaml").read_text())
    weights = load_run(banked_run, "cpu").model.fusion.knn_weight.clone()
    run = tmp_path / "run"
    shutil.copytree(banked_run, run)
    data = tmp_path / "data"
    shutil.copytree(Path(config["data"]["root"]), data)
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(config["data"]["root"], str(data)))
    for path in (data / "widget" / "test").rglob("*.png"):  # every test image changes
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    assert main(["bank", "--run", str(run), "--quiet"]) == 0
    assert torch.equal(load_run(run, "cpu").model.fusion.knn_weight, weights)
    # the check can fail: changing the held-out images does change the fusion
    saved = load_run(run, "cpu").config
    _, held_out = holdout_split(load_splits(saved.data).train, saved.calibration.holdout, saved.seed)
    for sample in held_out:
        Image.fromarray(np.asarray(Image.open(sample.image_path))[::-1].copy()).save(sample.image_path)
    assert main(["bank", "--run", str(run), "--quiet"]) == 0
    assert not torch.equal(load_run(run, "cpu").model.fusion.knn_weight, weights)


def test_a_banked_run_saves_and_loads_its_bank_and_decides_with_the_fused_output(banked_run: Path, capsys):
    metrics = json.loads((banked_run / "metrics.json").read_text())
    assert metrics["output"] == "fused" and set(metrics["branches"]) == {"segmentation", "student_teacher", "knn", "fused"}
    assert {k: metrics[k] for k in metrics["branches"]["fused"]} == metrics["branches"]["fused"]
    run = load_run(banked_run, "cpu")
    assert run.model.output_branch == "fused" and run.model.memory_bank.patches.shape[1] == 40 + 112
    x = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8).float() / 255
    with torch.no_grad():
        fused_map, fused_score = run.model(x, (64, 64))
        outputs = run.model.forward_branches(x, (64, 64))
    named = dict(zip(run.model.branches, zip(outputs[::2], outputs[1::2])))
    torch.testing.assert_close(fused_score, named["fused"][1])
    w = run.model.fusion.knn_weight
    torch.testing.assert_close(fused_map, named["segmentation"][0] + w[0] * named["knn"][0])
    torch.testing.assert_close(fused_score, named["segmentation"][1] + w[1] * named["knn"][1])
    assert main(["test", "--run", str(banked_run), "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "fused map (output)" in table and "kNN map" in table and "segmentation map" in table


def test_without_held_out_images_the_run_says_it_cannot_fuse_and_keeps_the_segmentation_output(tiny_mvtec: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_mvtec), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
                 "--holdout", "0", "--set", "bank.enabled=true", "--out", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "no fusion: no normal images were held out of training" in out
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["output"] == "segmentation" and "knn" in metrics["branches"] and "fused" not in metrics["branches"]
    assert load_run(run, "cpu").model.fusion is None


def test_product_presets_fuse_by_default_and_the_papers_output_stays_with_paper_and_destseg():
    assert all(preset_config("pfadseg", p).bank.enabled for p in ("demo", "fast", "cpu30"))
    assert not preset_config("pfadseg", "paper").bank.enabled
    assert not any(preset_config("destseg", p).bank.enabled for p in ("demo", "fast", "cpu30", "paper"))


def test_the_demo_bank_searches_the_quarter_grid_the_other_presets_the_eighth_and_a_setting_overrides_both():
    assert preset_config("pfadseg", "demo").bank.strides == (4, 8, 16)
    assert preset_config("pfadseg", "fast").bank.strides == preset_config("pfadseg", "cpu30").bank.strides == (8, 16)
    assert merge(preset_config("pfadseg", "demo"), {"bank": {"strides": [8, 16]}}).bank.strides == (8, 16)
    assert merge(preset_config("pfadseg", "cpu30"), {"bank": {"strides": [4, 8, 16]}}).bank.strides == (4, 8, 16)


def test_onnx_export_of_a_fused_run_carries_the_bank_and_matches_pytorch(banked_run: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from pfadseg.export import export_onnx
    from pfadseg.onnx_backend import OnnxBackend
    from pfadseg.torch_backend import TorchBackend

    out = tmp_path / "fused.onnx"
    report = export_onnx(banked_run, out)
    assert report.images > 0 and report.max_score_difference <= 1e-5
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    onnx_maps, onnx_scores = OnnxBackend(out)(images)
    torch_maps, torch_scores = TorchBackend(banked_run)(images)
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-5)
    np.testing.assert_allclose(onnx_maps, torch_maps, atol=1e-4)
    # the file decides with the fused score, not the segmentation map's
    run = load_run(banked_run, "cpu")
    with torch.no_grad():
        seg_score = run.model.scored_map(run.model.segment(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255), (256, 256))[1]
    assert np.abs(onnx_scores - seg_score.numpy()).max() > 1e-3
