"""Labelled comparison pictures and the results page that the benchmark and the demo share."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from pfadseg.benchmark import BenchmarkResults
from pfadseg.config import preset_config
from pfadseg.data.datasets import Sample
from pfadseg.evaluate import BranchResult, Evaluation
from pfadseg.metrics import evaluate_maps
from pfadseg.thresholds import THRESHOLDS_FILE
from pfadseg.visualize import GAP, Case, colorize, decision, labelled_rows

WHITE = np.array([255, 255, 255])
TILE_COLOUR = (40, 170, 200)


def _case(height: int, width: int, score: float) -> Case:
    """A flat image of one colour, no defect, a map rising from left to right."""
    image = np.broadcast_to(np.array(TILE_COLOUR, np.uint8), (height, width, 3)).copy()
    anomaly_map = np.broadcast_to(np.linspace(0, 1, width), (height, width))
    return Case(image, np.zeros((height, width), bool), anomaly_map, "good", score)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def test_labelled_rows_have_titles_above_tiles_and_a_colour_bar():
    h, w = 60, 90
    picture = np.asarray(labelled_rows([_case(h, w, 0.2), _case(h, w, 0.8)], threshold=0.5)).astype(int)
    tile = (picture == TILE_COLOUR).all(axis=-1)
    # The image and the ground truth (no defect: the plain image) of both rows, at full size, in two columns.
    columns, rows = _runs(tile.any(axis=0)), _runs(tile.any(axis=1))
    assert [b - a for a, b in columns] == [w, w] and [b - a for a, b in rows] == [h, h]
    (top1, bottom1), (top2, _) = rows
    above_row = top2 - bottom1  # the space a caption takes between two rows
    header = picture[: top1 - above_row]
    assert len(header) > 0, "the first row should sit lower than the others, under the column titles"
    pitch = columns[1][0] - columns[0][0]
    third_column = (columns[1][0] + pitch, columns[1][0] + pitch + w)  # the heat map: not the image's colour
    for left, right in [*columns, third_column]:
        assert (header[:, left:right] != WHITE).any(), "a title above every column"
    # Right of the anomaly maps: a bar of the map's colours from 1 at the top to 0 at the bottom, beside the first row.
    expected = colorize(np.linspace(1, 0, h))
    bar = [x for x in range(third_column[1], picture.shape[1]) if np.abs(picture[top1 : top1 + h, x] - expected).max() <= 1]
    assert bar, "no colour bar"
    assert (picture[top1 - 5 : top1 + h + 5, bar[-1] + 2 :] != WHITE).any(), "the colour bar needs tick labels"


def test_captions_say_ng_at_or_above_the_threshold():
    assert decision(0.5, 0.5) == "NG" and decision(0.9, 0.5) == "NG" and decision(0.49, 0.5) == "OK"
    ng = np.asarray(labelled_rows([_case(60, 200, 0.9)], threshold=0.5)).astype(int)
    ok = np.asarray(labelled_rows([_case(60, 200, 0.1)], threshold=0.5)).astype(int)
    changed = (ng != ok).any(axis=-1)  # the caption only: score and decision
    assert changed.any()
    red = lambda p: (p[..., 0] > 150) & (p[..., 1] < 80) & (p[..., 2] < 80)  # noqa: E731
    green = lambda p: (p[..., 1] > 100) & (p[..., 0] < 80) & (p[..., 2] < 110)  # noqa: E731
    assert red(ng)[changed].sum() > 20 and not green(ng)[changed].any()
    assert green(ok)[changed].sum() > 20 and not red(ok)[changed].any()


class _StrictPage(HTMLParser):
    """Collects headings and images, and every end tag that does not close the innermost open element."""

    VOID = {"meta", "img", "br"}

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []
        self.headings: list[str] = []
        self.images: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):  # <line .../> in SVG
        pass

    def handle_endtag(self, tag):
        if self.open and self.open[-1] == tag:
            self.open.pop()
        else:
            self.errors.append(f"</{tag}> inside {self.open}")

    def handle_data(self, data):
        if self.open and self.open[-1] == "h2":
            self.headings.append(data)


def _evaluation(root: Path, rng: np.random.Generator, size: int = 32, fused: bool = False) -> Evaluation:
    """Four good and four defective test images on disk, with masks, maps and scores that roughly agree;
    ``fused``: as a run with a memory bank reports them (segmentation, kNN and fused maps)."""
    samples, masks, maps = [], [], []
    for n in range(8):
        defective = n % 2 == 1
        path = root / f"{n}.png"
        Image.fromarray(rng.integers(0, 255, (size, size, 3), np.uint8)).save(path)
        samples.append(Sample(path, int(defective), "scratch" if defective else "good", None, path.name))
        mask = np.zeros((size, size), bool)
        mask[8:16, 4 + n : 20 + n] = defective
        masks.append(mask)
        maps.append(np.clip(0.6 * mask + 0.5 * rng.random((size, size)), 0, 1).astype(np.float32))
    maps_array, masks_array = np.stack(maps), np.stack(masks)
    scores = maps_array.max(axis=(1, 2))
    labels = np.array([s.label for s in samples])
    branch = lambda m, s: BranchResult(m, s, evaluate_maps(m, masks_array, s, labels))  # noqa: E731
    branches = {"segmentation": branch(maps_array, scores), "student_teacher": branch(maps_array, scores)}
    if fused:
        knn = np.roll(maps_array, 1, axis=-1)
        branches |= {"knn": branch(knn, scores), "fused": branch(maps_array + 0.5 * knn, 1.5 * scores)}
    return Evaluation(samples, "fused" if fused else "segmentation", branches, masks_array)


def test_recorded_runs_make_a_self_contained_report(tmp_path: Path):
    rng = np.random.default_rng(0)
    out = tmp_path / "out"
    results = BenchmarkResults(out, "debug", title="pfadseg demo")
    thresholds = {"fabric": 0.3, "washer": 0.95}
    for dataset, threshold in thresholds.items():
        run_dir = out / "runs" / dataset
        run_dir.mkdir(parents=True)
        (run_dir / THRESHOLDS_FILE).write_text(json.dumps({"image": threshold, "pixel": 0.5}))
        (tmp_path / dataset).mkdir()
        results.add(dataset, "pfadseg", 0, preset_config("pfadseg", "debug"), run_dir,
                    _evaluation(tmp_path / dataset, rng, fused=dataset == "washer"), gallery=dataset)

    saved = json.loads((out / "results.json").read_text())
    assert [r["dataset"] for r in saved["runs"]] == list(thresholds)
    page = _StrictPage()
    page.feed((out / "report.html").read_text())
    page.close()
    assert not page.errors and not page.open
    assert set(thresholds) <= set(page.headings)
    cases = []
    for dataset, threshold in thresholds.items():
        gallery = json.loads((out / "gallery" / f"{dataset}.json").read_text())
        assert all(c["decision"] == ("NG" if c["score"] >= threshold else "OK") for c in gallery["cases"])
        cases += gallery["cases"]
    assert {c["decision"] for c in cases} == {"OK", "NG"}
    assert len(page.images) == len(cases) > 0
    widths = []
    for src in page.images:  # inline, and each a labelled picture wider than its three tiles
        assert src.startswith("data:image/jpeg;base64,")
        widths.append(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).width)
        assert widths[-1] > 3 * 32
    # the fused run's pictures show the segmentation and kNN maps too: two tiles (and their gaps) wider
    plain, fused = (widths[i] for i in (0, -1))
    assert fused - plain == 2 * (32 + GAP)
    table = (out / "results.md").read_text()
    assert "| washer | fused (output) |" in table and "| washer | knn |" in table and "| fabric | segmentation (output) |" in table
