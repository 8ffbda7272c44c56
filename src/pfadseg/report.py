"""The results page of a benchmark (or the demo): one self-contained ``report.html`` (tables, SVG curves, inline pictures).

Built from ``results.json`` and ``gallery/<dataset>.json`` alone, so it can be rebuilt at any time
and opened in any browser without a server or a network.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pfadseg.data.datasets import load_images
from pfadseg.evaluate import Evaluation
from pfadseg.fileio import write_json_atomic, write_text_atomic
from pfadseg.metrics import average_precision
from pfadseg.results import RunRecord, results_table, runs_table
from pfadseg.visualize import Case, decision, labelled_rows

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


# ---------------------------------------------------------------------------------- gallery


def _jpeg_base64(picture: Image.Image) -> str:
    """A picture as base64 JPEG text, for a data: URL."""
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def select_cases(evaluation: Evaluation, count: int = 4) -> list[tuple[str, int, float | None]]:
    """Best and worst test images as (kind, index, per-image pixel AP).

    Best: the defective images whose own map separates their defect best (per-image pixel AP).
    Worst: the defective images it separates worst, and the good images with the highest scores
    (the false alarms a line would see first).
    """
    defective = [i for i, s in enumerate(evaluation.samples) if s.label and evaluation.masks[i].any()]
    ap = {i: average_precision(evaluation.maps[i], evaluation.masks[i]) for i in defective}
    ranked = sorted(defective, key=lambda i: -ap[i])
    good = sorted((i for i, s in enumerate(evaluation.samples) if not s.label), key=lambda i: -evaluation.scores[i])
    best = ranked[:count]
    worst = [i for i in ranked[::-1] if i not in best][: count - count // 2] + good[: count // 2]
    return [("best", i, ap[i]) for i in best] + [("worst", i, ap.get(i)) for i in worst]


def evaluation_cases(evaluation: Evaluation, indices: list[int]) -> list[Case]:
    """The test images at ``indices`` with their ground truth, map, defect type and score, at the evaluation size.

    With a fused output, the segmentation map and the kNN map's share of the fused map (fused − segmentation,
    i.e. the kNN map times its fusion weight, on the same scale) are drawn beside it.
    """
    samples = [evaluation.samples[i] for i in indices]
    images = [load_images([sample], evaluation.maps[i].shape)[0].permute(1, 2, 0).numpy() for i, sample in zip(indices, samples)]
    cases = []
    for image, i, sample in zip(images, indices, samples):
        parts: tuple[tuple[str, np.ndarray], ...] = ()
        if evaluation.output == "fused":
            seg = evaluation.branches["segmentation"].maps[i]
            parts = (("segmentation", seg), ("kNN (weighted)", evaluation.maps[i] - seg))
        cases.append(Case(image, evaluation.masks[i], evaluation.maps[i], sample.defect_type, float(evaluation.scores[i]), parts))
    return cases


def gallery_cases(evaluation: Evaluation, path: Path, dataset: str, variant: str, seed: int, threshold: float) -> None:
    """Render the selected cases of one run as labelled inline JPEGs (OK/NG at the image ``threshold``) into a JSON file."""
    chosen = select_cases(evaluation)
    cases = []
    for (kind, i, ap), case in zip(chosen, evaluation_cases(evaluation, [i for _, i, _ in chosen])):
        sample = evaluation.samples[i]
        cases.append({"kind": kind, "image": sample.rel_path, "defect_type": sample.defect_type, "label": int(sample.label),
                      "score": case.score, "decision": decision(case.score, threshold), "image_ap": ap,
                      "jpeg": _jpeg_base64(labelled_rows([case], threshold))})
    write_json_atomic(path, {"dataset": dataset, "variant": variant, "seed": seed, "image_threshold": threshold, "cases": cases})


# ---------------------------------------------------------------------------------- curves


def svg_plot(title: str, series: list[tuple[str, list[float], list[float]]], xlabel: str, ylabel: str, diagonal: bool = False) -> str:
    """A line plot on [0, 1]² as inline SVG: grid, axes, one polyline per series, legend."""
    w, h, left, top, size = 420, 330, 48, 28, 250
    px = lambda x: left + x * size  # noqa: E731
    py = lambda y: top + (1 - y) * size  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
             f'<title>{html.escape(title)}</title>',
             f'<text x="{left}" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>']
    for t in np.linspace(0, 1, 6):
        parts.append(f'<line x1="{px(t):.1f}" y1="{py(0):.1f}" x2="{px(t):.1f}" y2="{py(1):.1f}" stroke="#ddd"/>')
        parts.append(f'<line x1="{px(0):.1f}" y1="{py(t):.1f}" x2="{px(1):.1f}" y2="{py(t):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{px(t):.1f}" y="{py(0) + 14:.1f}" font-size="10" text-anchor="middle">{t:.1f}</text>')
        parts.append(f'<text x="{px(0) - 6:.1f}" y="{py(t) + 3:.1f}" font-size="10" text-anchor="end">{t:.1f}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{size}" height="{size}" fill="none" stroke="#444"/>')
    if diagonal:
        parts.append(f'<line x1="{px(0)}" y1="{py(0)}" x2="{px(1)}" y2="{py(1)}" stroke="#aaa" stroke-dasharray="4 3"/>')
    for n, (label, xs, ys) in enumerate(series):
        colour = PALETTE[n % len(PALETTE)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.6"/>')
        ly = top + 8 + 14 * n
        parts.append(f'<line x1="{left + size + 10}" y1="{ly}" x2="{left + size + 24}" y2="{ly}" stroke="{colour}" stroke-width="3"/>')
        parts.append(f'<text x="{left + size + 28}" y="{ly + 4}" font-size="10">{html.escape(label)}</text>')
    parts.append(f'<text x="{px(0.5):.1f}" y="{h - 8}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>')
    parts.append(f'<text x="12" y="{py(0.5):.1f}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {py(0.5):.1f})">'
                 f'{html.escape(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------- page


def _markdown_table_to_html(table: str) -> str:
    """The Markdown tables of results.md as HTML (pipes only, first row the header)."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines() if line.strip()]
    header, body = rows[0], rows[2:]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    lines = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.case { display: flex; align-items: center; gap: 1em; margin: 0.5em 0; }
.case img { max-width: calc(100% - 200px - 1em); height: auto; }
.case p { font-size: 13px; margin: 0; width: 200px; flex-shrink: 0; word-break: break-all; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }
"""


def render_report(results: dict[str, Any], galleries: dict[str, dict[str, Any]]) -> str:
    """The whole page as one HTML string."""
    records = [RunRecord(**r) for r in results["runs"]]
    env = results["environment"]
    title = html.escape(results["title"])
    body = [f"<h1>{title}: preset {html.escape(results['preset'])}</h1>",
            f"<p>{html.escape(results['created'])} · {len(records)} runs, {sum(r.seconds or 0 for r in records) / 60:.1f} min of "
            "training and evaluation · "
            f"pfadseg {html.escape(env['versions']['pfadseg'])}, torch {html.escape(env['versions']['torch'])} · "
            f"{html.escape(str(env['machine']['cpu']))}, {env['machine']['cpu_threads']} threads</p>",
            "<p>Mean ± sample standard deviation over seeds, in percent; min/run is the wall time of one run.</p>",
            _markdown_table_to_html(results_table(records)), "<h2>Every run</h2>", _markdown_table_to_html(runs_table(records))]
    for dataset in dict.fromkeys(r.dataset for r in records):
        mine = [r for r in records if r.dataset == dataset]
        body.append(f"<h2>{html.escape(dataset)}</h2><div class='plots'>")
        roc = [(f"{r.variant} s{r.seed}", r.curves["image_roc"]["x"], r.curves["image_roc"]["y"]) for r in mine]
        pr = [(f"{r.variant} s{r.seed}", r.curves["pixel_pr"]["x"], r.curves["pixel_pr"]["y"]) for r in mine]
        body.append(svg_plot(f"{dataset}: image ROC", roc, "false positive rate", "true positive rate", diagonal=True))
        body.append(svg_plot(f"{dataset}: pixel precision-recall", pr, "recall", "precision"))
        body.append("</div>")
        gallery = galleries.get(dataset)
        if gallery:
            body.append(f"<h3>Best and worst cases ({html.escape(gallery['variant'])}, seed {gallery['seed']}; "
                        f"NG at image score &ge; {gallery['image_threshold']:.4f})</h3>")
            for case in gallery["cases"]:
                ap = "" if case["image_ap"] is None else f"<br>image pixel AP {100 * case['image_ap']:.1f}"
                body.append(f"<div class='case'><p><b>{case['kind']}</b><br>{html.escape(case['image'])}{ap}</p>"
                            f"<img alt='{html.escape(case['image'])}' src='data:image/jpeg;base64,{case['jpeg']}'></div>")
    body.append("<h2>Environment</h2><pre>" + html.escape(json.dumps(env, indent=2)) + "</pre>")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>" + "".join(body) + "</body></html>\n")


def write_report(out: Path) -> Path:
    """Rebuild ``out/report.html`` from ``out/results.json`` and ``out/gallery/*.json``."""
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    galleries = {}
    for path in sorted((out / "gallery").glob("*.json")):
        gallery = json.loads(path.read_text(encoding="utf-8"))
        galleries[gallery["dataset"]] = gallery
    write_text_atomic(out / "report.html", render_report(results, galleries))
    return out / "report.html"
