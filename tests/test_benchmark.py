"""The benchmark command: variants, reuse of finished runs, results files and the HTML report."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from pfadseg.benchmark import ABLATION_VARIANTS, dataset_from_yaml, variant_config
from pfadseg.cli import main
from pfadseg.errors import PfadsegError
from pfadseg.metrics import METRIC_KEYS
from pfadseg.models.architecture import MODEL_PRESETS

REPO = Path(__file__).resolve().parents[1]


def test_variants_span_table_4():
    assert variant_config("pfadseg") == MODEL_PRESETS["pfadseg"]
    assert variant_config("destseg") == MODEL_PRESETS["destseg"]
    mixed = variant_config("rcm+pcar", teacher="efficientnet_lite0")
    assert (mixed.block.aff, mixed.block.pcar, mixed.head.kind, mixed.teacher) == (False, True, "rcm", "efficientnet_lite0")
    assert variant_config("aff").head.kind == "aspp" and variant_config("aff").block.aff
    configs = {variant_config(v) for v in ABLATION_VARIANTS}
    assert len(configs) == 7  # seven distinct architectures
    for bad in ("rcm+foo", "", "pfadseg+rcm"):
        with pytest.raises(PfadsegError, match="unknown model variant"):
            variant_config(bad)


def test_magnetic_tile_yaml_names_the_documented_split():
    dataset = dataset_from_yaml(REPO / "benchmarks" / "magnetic_tile.yaml")
    assert dataset.name == "magnetic_tile"
    assert (dataset.data.format, dataset.data.normal_dir, dataset.data.split) == ("folder", "MT_Free", "every:5")


class _Collector(HTMLParser):
    """Counts tags and remembers what would make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, int] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith("data:"):
                self.external.append(value)


def test_benchmark_end_to_end_reuses_finished_runs(tiny_mvtec: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench"
    args = ["benchmark", "--data", str(tiny_mvtec), "--categories", "widget", "--models", "pfadseg,destseg", "--seeds", "0,1",
            "--preset", "debug", "--teacher", "efficientnet_lite0", "--out", str(out), "--quiet"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    runs = results["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("pfadseg", 0), ("pfadseg", 1), ("destseg", 0), ("destseg", 1)]
    for r in runs:  # each record is its run's own metrics.json, with config and wall time
        saved = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert r["metrics"] == {k: saved[k] for k in METRIC_KEYS} and r["branches"] == saved["branches"]
        assert r["output"] == saved["output"] == "segmentation" and r["metrics"] == r["branches"]["segmentation"]
        assert r["seconds"] > 0 and r["config"]["seed"] == r["seed"]
        assert r["curves"]["image_roc"]["x"][0] == 0 and r["curves"]["image_roc"]["y"][-1] == 1
    # the summary is the mean and sample std of the two seeds
    row = next(s for s in results["summary"] if s["variant"] == "destseg")
    values = [r["metrics"]["pixel_ap"] for r in runs if r["variant"] == "destseg"]
    assert row["pixel_ap"]["mean"] == pytest.approx(np.mean(values))
    assert row["pixel_ap"]["std"] == pytest.approx(np.std(values, ddof=1))
    md = (out / "results.md").read_text()
    assert "| widget | destseg | 0,1 |" in md and "torch" in md

    page = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    assert parser.tags.get("svg") == 2 and parser.tags.get("polyline") == 8  # ROC + PR, one line per run
    # 3 best defective + 2 highest-scoring good images (no defective left for "worst"), all inline
    assert parser.tags.get("img") == 5 and not parser.external

    # A second call reuses the four finished runs (same files, nothing retrained).
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")}
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 4
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/model.safetensors")} == before


def test_benchmark_refuses_a_run_directory_with_another_configuration(tiny_mvtec: Path, tmp_path: Path, capsys):
    out = tmp_path / "bench"
    base = ["benchmark", "--data", str(tiny_mvtec), "--categories", "widget", "--models", "destseg", "--seeds", "0",
            "--preset", "debug", "--teacher", "efficientnet_lite0", "--out", str(out), "--quiet"]
    assert main(base) == 0
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert main(base + ["--set", "train.lr_student=0.3"]) == 1
    err = capsys.readouterr().err
    assert "another configuration" in err and "widget-destseg-s0" in err and err.count("\n") == 1
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["--models", "pfadseg,bogus"], "unknown model variant 'bogus'"),
    (["--seeds", "0,x"], "--seeds must be comma-separated integers"),
    (["--preset", "hour"], "unknown training preset 'hour'"),
])
def test_benchmark_bad_arguments_fail_before_any_run(tiny_mvtec: Path, tmp_path: Path, capsys, argv, message):
    out = tmp_path / "bench"
    assert main(["benchmark", "--data", str(tiny_mvtec), "--categories", "widget", "--out", str(out), "--quiet"] + argv) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
