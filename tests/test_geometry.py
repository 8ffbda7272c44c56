"""Input and evaluation geometry: the `tiles` geometry's grid, stitching, area-scaled scores, random training tiles, a
tiled run end to end (training, bank + fusion, evaluation, prediction through PyTorch and ONNX), pixel metrics at
each image's own aspect on images of several sizes, and the `aspect` geometry (its sizes, batches of one size,
export-safe pools, synthesis on non-square images, a run end to end)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_mvtec

from pfadseg.cli import main
from pfadseg.data.tiling import Stitcher, TileLayout, WholeImage, top_k_score
from pfadseg.training.batches import BatchMaker, RandomTiles, SizeGroups

STRIP = (40, 104)  # height, width of the tiled run's images: not square, not a multiple of the tile


@pytest.mark.parametrize("size,overlap,height,width", [(32, 0.25, 40, 104), (16, 0.5, 16, 97), (8, 0.0, 8, 8), (30, 0.1, 31, 300)])
def test_tile_grid_covers_every_pixel_inside_the_image_with_the_overlap_asked(size, overlap, height, width):
    layout = TileLayout(size, overlap=overlap)
    covered = np.zeros((height, width), int)
    for top, left in layout.boxes(height, width):
        assert 0 <= top <= height - size and 0 <= left <= width - size
        covered[top : top + size, left : left + size] += 1
    assert (covered > 0).all()
    for length in (height, width):
        starts = layout.starts(length)
        assert starts[0] == 0 and starts[-1] == length - size
        assert all(size - (b - a) >= size * overlap - 1 for a, b in zip(starts, starts[1:]))  # neighbours share ≥ the overlap


def test_stitching_the_tiles_cut_from_a_map_gives_the_map_back():
    layout = TileLayout(16, overlap=0.3)
    rng = np.random.default_rng(0)
    for values in (np.full((2, 37, 70), 0.25, np.float32), rng.random((2, 37, 70)).astype(np.float32)):
        boxes = layout.boxes(37, 70)
        stitcher = Stitcher(layout, 37, 70, channels=2)
        half = len(boxes) // 2  # added in two batches, as inference does
        for chunk in (boxes[:half], boxes[half:]):
            stitcher.add(np.stack([values[:, top : top + 16, left : left + 16] for top, left in chunk]), chunk)
        np.testing.assert_allclose(stitcher.result(), values, rtol=1e-6)
    assert layout.window().min() > 0 and layout.window().max() == 1.0


def test_stitching_blends_disagreeing_tiles_smoothly():
    """Where two tiles disagree, the stitched map moves from one to the other across their overlap, with no step."""
    layout = TileLayout(20, overlap=0.5)
    boxes = layout.boxes(20, 30)
    stitcher = Stitcher(layout, 20, 30)
    stitcher.add(np.stack([np.full((1, 20, 20), float(i)) for i in range(len(boxes))]), boxes)
    row = stitcher.result()[0, 10]
    assert row[0] == 0 and row[-1] == len(boxes) - 1
    assert (np.diff(row) >= 0).all() and np.diff(row).max() < 0.5


def test_scaled_size_keeps_the_aspect_and_always_holds_one_tile():
    assert TileLayout(64, scale=0.5).scaled_size(2000, 8000) == (1000, 4000)
    assert TileLayout(64, scale=0.5).scaled_size(100, 400) == (64, 256)  # 50 × 200 grown to hold a tile
    with pytest.raises(ValueError):
        TileLayout(64, overlap=1.0)


def test_image_score_takes_top_k_per_256_squared_pixels():
    """The same defect on a map of four times the area (both sides doubled) keeps its score."""
    small = np.zeros((256, 256), np.float32)
    small[:5, :5] = 1.0  # 25 hot pixels of the 100 that 256² averages
    large = np.kron(small, np.ones((2, 2), np.float32))  # 100 hot pixels of the 400 averaged at 512²
    assert top_k_score(small, 100) == pytest.approx(0.25)
    assert top_k_score(large, 100) == pytest.approx(0.25)


def test_random_training_tiles_lie_inside_their_image_and_follow_the_generator():
    images = [np.arange(h * w * 3, dtype=np.int32).reshape(h, w, 3) for h, w in ((20, 50), (33, 21))]
    tiles = RandomTiles(images, 16, torch.device("cpu"))
    taken = tiles.take(torch.tensor([0, 1, 0]), torch.Generator().manual_seed(3))
    assert taken.shape == (3, 3, 16, 16)
    for tile, i in zip(taken, (0, 1, 0)):
        h, w = images[i].shape[:2]
        top, left = divmod(int(tile[0, 0, 0]) // 3, w)  # channel 0 of pixel (top, left) holds 3 · (top · w + left)
        assert top + 16 <= h and left + 16 <= w
        assert torch.equal(tile, torch.from_numpy(images[i][top : top + 16, left : left + 16]).permute(2, 0, 1))
    assert torch.equal(taken, tiles.take(torch.tensor([0, 1, 0]), torch.Generator().manual_seed(3)))


def assert_aspect_with_256_squared_pixels(shape: tuple[int, int], native: tuple[int, int]) -> None:
    """An evaluation grid at the image's aspect with 256² pixels, each side rounded to the nearest pixel."""
    (h, w), (nh, nw) = shape, native
    assert abs(h * w - 256 * 256) <= h + w  # rounding each side moves the count by at most half of the other side, twice
    assert abs(w / h - nw / nh) <= (nw / nh) * (1 / h + 1 / w)


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug run in the `tiles` geometry (32² tiles of 40 × 104 images) with a fused memory bank."""
    root = tmp_path_factory.mktemp("tiled")
    data = write_tiny_mvtec(root / "data", size=STRIP)
    run = root / "run"
    args = ["train", "--data", str(data), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
            "--image-size", "32", "--holdout", "0.25", "--out", str(run), "--quiet", "--set", "data.geometry=tiles",
            "--set", "bank.enabled=true"]
    assert main(args) == 0
    return run


def assert_scores_follow_the_fusion_rule(evaluation, run_dir: Path) -> None:
    """Each branch's image score is its own stitched map's top-k mean (100 per 256² pixels), except the fused one's: the
    segmentation's plus the fusion's score weight times the kNN's, the square geometry's rule."""
    from pfadseg.rundir import load_run

    weight = load_run(run_dir, "cpu").model.fusion.knn_weight[1].item()
    top = {name: np.array([top_k_score(m, 100) for m in branch.maps]) for name, branch in evaluation.branches.items()}
    for name, branch in evaluation.branches.items():
        expected = top["segmentation"] + weight * top["knn"] if name == "fused" else top[name]
        assert branch.scores == pytest.approx(expected, rel=1e-5), name


def test_a_tiled_run_fuses_and_scores_every_branch_on_stitched_maps(tiled_run: Path):
    from pfadseg.evaluate import evaluate_run

    metrics = json.loads((tiled_run / "metrics.json").read_text())
    assert metrics["output"] == "fused" and set(metrics["branches"]) == {"segmentation", "student_teacher", "knn", "fused"}
    evaluation = evaluate_run(tiled_run, progress=False)
    assert evaluation.maps.shape[1:] == evaluation.masks.shape[1:]
    assert_aspect_with_256_squared_pixels(evaluation.maps.shape[1:], STRIP)
    assert evaluation.metrics == pytest.approx({k: metrics[k] for k in evaluation.metrics})
    assert_scores_follow_the_fusion_rule(evaluation, tiled_run)


def test_tiled_prediction_gives_native_maps_and_the_scores_evaluation_gives(tiled_run: Path):
    from pfadseg.evaluate import evaluate_run
    from pfadseg.predict import Predictor
    from pfadseg.torch_backend import TorchBackend

    evaluation = evaluate_run(tiled_run, progress=False)
    predictor = Predictor(TorchBackend(tiled_run), batch_size=3)
    for sample, score in zip(evaluation.samples, evaluation.scores):
        prediction = predictor.predict_file(sample.image_path)
        assert prediction.anomaly_map.shape == STRIP
        assert prediction.score == pytest.approx(float(score), abs=1e-5)


def test_onnx_and_pytorch_tile_and_stitch_identically(tiled_run: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from pfadseg.export import export_onnx
    from pfadseg.onnx_backend import OnnxBackend
    from pfadseg.predict import Predictor
    from pfadseg.torch_backend import TorchBackend

    out = tmp_path / "tiled.onnx"
    assert export_onnx(tiled_run, out).images > 0
    onnx_backend = OnnxBackend(out)
    assert onnx_backend.layout == TileLayout(32, 1.0, 0.25)
    image = np.random.default_rng(1).integers(0, 256, (90, 250, 3), dtype=np.uint8)  # larger than any training image
    onnx_pred = Predictor(onnx_backend).predict_arrays([image], [Path("x.png")])[0]
    torch_pred = Predictor(TorchBackend(tiled_run)).predict_arrays([image], [Path("x.png")])[0]
    assert onnx_pred.anomaly_map.shape == torch_pred.anomaly_map.shape == (90, 250)
    np.testing.assert_allclose(onnx_pred.anomaly_map, torch_pred.anomaly_map, atol=1e-4)
    assert onnx_pred.score == pytest.approx(torch_pred.score, abs=1e-5)


def test_images_of_several_sizes_are_evaluated_each_at_its_own_aspect(tmp_path: Path):
    """A square-geometry run with ``train.eval_geometry=aspect`` on test images of two sizes: maps and masks at each
    image's aspect with about 256² pixels, metrics over all of them, and the report drawn."""
    from PIL import Image

    from pfadseg.evaluate import evaluate_run
    from pfadseg.report import evaluation_cases
    from pfadseg.visualize import labelled_rows

    data = write_tiny_mvtec(tmp_path / "data", size=48)
    for folder in ("test/scratch", "ground_truth/scratch"):  # one defective image and its mask become 48 × 96
        path = next(iter(sorted((data / "widget" / folder).glob("*.png"))))
        Image.open(path).resize((96, 48), Image.NEAREST).save(path)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
                 "--image-size", "32", "--out", str(run), "--quiet", "--set", "train.eval_geometry=aspect"]) == 0
    evaluation = evaluate_run(run, progress=False)
    assert isinstance(evaluation.maps, list) and [m.shape for m in evaluation.masks] == [m.shape for m in evaluation.maps]
    for sample, anomaly_map in zip(evaluation.samples, evaluation.maps):
        native = Image.open(sample.image_path).size[::-1]
        assert native in {(48, 48), (48, 96)}
        assert_aspect_with_256_squared_pixels(anomaly_map.shape, native)
    assert all(0.0 <= v <= 1.0 for v in evaluation.metrics.values())
    wide = next(i for i, m in enumerate(evaluation.maps) if m.shape[1] > m.shape[0])
    cases = evaluation_cases(evaluation, [0, wide])  # the report's and the demo's pictures
    assert [c.image.shape[:2] for c in cases] == [evaluation.maps[0].shape, evaluation.maps[wide].shape]
    assert labelled_rows(cases, threshold=0.5).size[1] > 0


def test_predict_and_info_on_a_tiled_run_say_how_it_tiles(tiled_run: Path, tmp_path: Path, capsys):
    image = next(iter(sorted((tiled_run.parent / "data" / "widget" / "test" / "scratch").glob("*.png"))))
    assert main(["predict", "--run", str(tiled_run), str(image), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "tiles/s" in capsys.readouterr().out
    assert np.load(tmp_path / "out" / f"{image.stem}_map.npy").shape == STRIP  # the native-size map
    assert main(["info", "--run", str(tiled_run)]) == 0
    assert "tiles of the images scaled by 1" in capsys.readouterr().out


@pytest.mark.parametrize("height,width", [(48, 96), (96, 48), (500, 1250), (1024, 1024), (333, 100), (7, 3000)])
def test_aspect_inputs_keep_the_aspect_with_the_shorter_side_at_the_training_size(height, width):
    h, w = WholeImage(160).scaled_size(height, width)
    assert h % 32 == 0 and w % 32 == 0
    assert min(h, w) == 160
    short, long = sorted((height, width))
    assert abs(max(h, w) - 160 * long / short) <= 16  # the longer side in proportion, to the nearest multiple of 32
    assert (h >= w) == (height >= width)
    with pytest.raises(ValueError, match="at least 64"):
        WholeImage(32)


def test_aspect_batches_come_from_one_size_in_proportion_to_its_images():
    sizes = [(2, 4)] * 6 + [(4, 2)] * 3 + [(3, 3)] * 1
    images = [np.full((*size, 3), i, dtype=np.uint8) for i, size in enumerate(sizes)]
    groups = SizeGroups(images, torch.device("cpu"))
    maker = BatchMaker(groups, synthesizer=None, augmentation=None, batch_size=4, seed=5)
    drawn = [maker.indices() for _ in range(3000)]
    for indices in drawn[:200]:
        batch = groups.take(indices)
        assert len({images[i].shape for i in indices.tolist()}) == 1
        assert torch.equal(batch[:, 0, 0, 0], indices.to(torch.uint8))  # each image is the one its index names
    shares = np.bincount([sizes.index(images[int(d[0])].shape[:2]) for d in drawn], minlength=10)
    assert shares[0] / 3000 == pytest.approx(0.6, abs=0.03) and shares[6] / 3000 == pytest.approx(0.3, abs=0.03)
    again = BatchMaker(groups, synthesizer=None, augmentation=None, batch_size=4, seed=5)
    assert all(torch.equal(a, again.indices()) for a in drawn[:50])


@pytest.mark.parametrize("height,width", [(5, 7), (4, 4), (2, 1), (9, 10)])
def test_the_pools_written_for_export_equal_adaptive_pooling(height, width):
    import torch.nn.functional as F

    from pfadseg.models.layers import sliced_average_pool

    x = torch.randn(2, 3, height, width)
    for grid in (1, 2):
        torch.testing.assert_close(sliced_average_pool(x, grid), F.adaptive_avg_pool2d(x, grid), rtol=0, atol=1e-6)


def test_anomalies_on_non_square_images_use_the_textures_resized_to_the_image():
    import torch.nn.functional as F

    from pfadseg.data.synthesis import AnomalySynthesizer, SynthesisConfig

    textures = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    resized = F.interpolate(textures.float() / 255, size=(32, 80), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    images = torch.rand(4, 3, 32, 80)
    config = SynthesisConfig(anomaly_probability=1.0, texture_augmentation=False)
    ours = AnomalySynthesizer(textures, config).synthesize(images, torch.Generator().manual_seed(2))
    expected = AnomalySynthesizer(resized, config).synthesize(images, torch.Generator().manual_seed(2))
    assert ours.masks.sum() > 0
    torch.testing.assert_close(ours.images, expected.images, rtol=0, atol=1e-6)


ASPECT_SIZES = {1: (48, 96), 2: (80, 48)}  # every third training image (by name) wide, the next tall; the rest 48²


@pytest.fixture(scope="module")
def aspect_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A debug run in the `aspect` geometry (shorter side 64) on images of three aspects, with a fused memory bank."""
    from PIL import Image

    root = tmp_path_factory.mktemp("aspect")
    data = write_tiny_mvtec(root / "data", size=48)
    for i, path in enumerate(sorted((data / "widget" / "train" / "good").glob("*.png"))):
        if i % 3:
            Image.open(path).resize(ASPECT_SIZES[i % 3][::-1]).save(path)
    for folder in ("test/scratch", "ground_truth/scratch"):  # one defective image and its mask 48 × 96
        path = next(iter(sorted((data / "widget" / folder).glob("*.png"))))
        Image.open(path).resize((96, 48), Image.NEAREST).save(path)
    run = root / "run"
    assert main(["train", "--data", str(data), "--category", "widget", "--preset", "debug", "--teacher", "efficientnet_lite0",
                 "--image-size", "64", "--holdout", "0.25", "--out", str(run), "--quiet", "--set", "data.geometry=aspect",
                 "--set", "bank.enabled=true"]) == 0
    return run


def test_an_aspect_run_scores_whole_images_at_their_aspect_and_predicts_as_it_evaluates(aspect_run: Path, capsys):
    from PIL import Image

    from pfadseg.evaluate import evaluate_run
    from pfadseg.predict import Predictor
    from pfadseg.torch_backend import TorchBackend

    metrics = json.loads((aspect_run / "metrics.json").read_text())
    assert metrics["output"] == "fused" and set(metrics["image_auroc_by_type"]) == {"scratch"}
    evaluation = evaluate_run(aspect_run, progress=False)
    predictor = Predictor(TorchBackend(aspect_run))
    assert_scores_follow_the_fusion_rule(evaluation, aspect_run)  # each whole image's maps, scored per area
    for sample, anomaly_map, score in zip(evaluation.samples, evaluation.maps, evaluation.scores):
        native = Image.open(sample.image_path).size[::-1]
        assert_aspect_with_256_squared_pixels(anomaly_map.shape, native)
        prediction = predictor.predict_file(sample.image_path)
        assert prediction.anomaly_map.shape == native and prediction.score == pytest.approx(float(score), abs=1e-5)
    assert main(["info", "--run", str(aspect_run)]) == 0
    assert "whole images at their aspect" in capsys.readouterr().out


def test_an_aspect_run_exports_one_onnx_file_for_every_image_size(aspect_run: Path, tmp_path: Path):
    pytest.importorskip("onnxruntime")
    from pfadseg.export import export_onnx
    from pfadseg.onnx_backend import OnnxBackend
    from pfadseg.predict import Predictor
    from pfadseg.torch_backend import TorchBackend

    out = tmp_path / "aspect.onnx"
    assert export_onnx(aspect_run, out).images > 0
    backend = OnnxBackend(out)
    assert backend.layout == WholeImage(64)
    weight = TorchBackend(aspect_run).knn_score_weight  # the fused score's rule travels in the file
    assert weight is not None and backend.knn_score_weight == pytest.approx(weight)
    rng = np.random.default_rng(4)
    for shape in ((90, 40), (40, 150), (64, 64)):  # portrait, landscape, square: sizes the run never saw
        image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
        onnx_pred = Predictor(backend).predict_arrays([image], [Path("x.png")])[0]
        torch_pred = Predictor(TorchBackend(aspect_run)).predict_arrays([image], [Path("x.png")])[0]
        assert onnx_pred.anomaly_map.shape == shape
        np.testing.assert_allclose(onnx_pred.anomaly_map, torch_pred.anomaly_map, atol=1e-4)
        assert onnx_pred.score == pytest.approx(torch_pred.score, abs=1e-5)
