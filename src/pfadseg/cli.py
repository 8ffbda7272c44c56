"""The ``pfadseg`` command: info, train, test, predict, export, calibrate, bank, demo, benchmark, preview-synthesis.

Every user-fixable problem surfaces as one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pfadseg.errors import PfadsegError

TRAIN_PRESET_HELP = ("training budget: paper (the published recipe; hours per category on a 2-core CPU, minutes on a GPU), "
                     "cpu30 (about 30 min per category on a 2-core CPU), fast (about 10 min), demo (about 4 min), "
                     "debug (a few steps at 64x64, for tests: about a minute, mostly reading and evaluating)")
COMPILE_HELP = "run the model through torch.compile: about 1.7x faster on CPU after a one-off compilation of about 2 minutes"


def _add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", required=required, help="dataset root (MVTec layout: ROOT/<category>/train/good, ...)")
    g.add_argument("--category", help="MVTec category (or a name for a folder dataset)")
    g.add_argument("--format", choices=["mvtec", "folder"], help="dataset layout (default mvtec)")
    g.add_argument("--normal-dir", help="folder format: folder of normal images, relative to ROOT")
    g.add_argument("--abnormal-dirs", help="folder format: comma-separated folders or globs of defective images")
    g.add_argument("--images-subdir", help="folder format: images sit in <class dir>/SUB (e.g. Imgs)")
    g.add_argument("--image-ext", help="folder format: comma-separated image extensions (default: all)")
    g.add_argument("--mask-dir", help="folder format: mask tree mirroring the image folders (default: beside the images)")
    g.add_argument("--mask-suffix", help="folder format: added to the image stem to name its mask (e.g. _mask)")
    g.add_argument("--mask-ext", help="folder format: mask extension (default .png)")
    g.add_argument("--split", help="folder format: every:K | random:FRACTION:SEED | list:FILE (default every:5)")
    g.add_argument("--normal-test-dir", help="folder format: separate folder of normal test images (then --split is ignored)")
    g.add_argument("--binarize-at", type=int, help="mask pixels >= this value (0..255) are defective (default 128)")


_DATA_FLAGS = ("data:root", "category", "format", "normal_dir", "abnormal_dirs", "images_subdir", "image_ext",
               "mask_dir", "mask_suffix", "mask_ext", "split", "normal_test_dir", "binarize_at")


def _data_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The data flags that were given, as DataConfig fields."""
    out: dict[str, Any] = {}
    for flag in _DATA_FLAGS:
        attr, _, field_name = flag.partition(":")
        value = getattr(args, attr, None)
        if value is not None:
            out[field_name or attr] = value
    return out


def _config_from_args(args: argparse.Namespace):
    """preset → --config file → explicit flags → --set overrides (a command without a flag leaves its value alone)."""
    from pfadseg.config import load_yaml, merge, parse_override, preset_config

    given = lambda name: getattr(args, name, None)  # noqa: E731 - preview-synthesis has no model or training flags
    config = preset_config(given("model") or "pfadseg", args.preset)
    if args.config:
        config = merge(config, load_yaml(args.config))
    flags: dict[str, Any] = {"data": _data_overrides(args), "train": {}, "model": {}}
    for name in ("image_size", "batch_size", "student_steps", "segmentation_steps", "precision"):
        if given(name) is not None:
            flags["train"][name] = given(name)
    if given("teacher"):
        flags["model"]["teacher"] = given("teacher")
    if given("no_aff"):
        flags["model"]["block"] = {"aff": False}
    if given("no_pcar"):
        flags["model"].setdefault("block", {})["pcar"] = False
    if given("head"):
        flags["model"]["head"] = {"kind": given("head")}
    if given("textures"):
        flags["data"]["textures"] = given("textures")
    for key in ("seed", "device"):
        if given(key) is not None:
            flags[key] = given(key)
    calibration = {key: given(key) for key in ("target_fpr", "holdout") if given(key) is not None}
    if calibration:
        flags["calibration"] = calibration
    config = merge(config, flags)
    for text in args.set or []:
        config = merge(config, parse_override(text))
    return config


# ---------------------------------------------------------------------------------- commands


def cmd_info(args: argparse.Namespace) -> int:
    if args.run:
        return _run_info(args)
    from pfadseg.models import build_model, model_preset
    from pfadseg.models.summary import summarize

    model = build_model(model_preset(args.preset, args.teacher), pretrained=False)  # sizes and shapes need no weights
    info = {"preset": args.preset, **summarize(model, args.image_size)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p, m = info["parameters"], info["macs_per_image"]
    print(f"PFADSeg model, preset {args.preset}, teacher {info['teacher']}, input {args.image_size}×{args.image_size}")
    for part in ("teacher", "student", "segmentation"):
        print(f"  {part:<13} {p[part]:>12,d} parameters {m[part] / 1e9:>8.2f} GMAC")
    print(f"  {'inference':<13} {'':>12} {'':>11}{m['inference'] / 1e9:>8.2f} GMAC per image")
    print(f"  teacher features  {info['teacher_features']}")
    print(f"  student features  {info['student_features']}")
    print(f"  segmentation in {info['segmentation_input']} → out {info['segmentation_output']}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from pfadseg.rundir import describe_run, summarize_run

    summary = summarize_run(args.run)
    print(json.dumps(summary, indent=2) if args.json else describe_run(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pfadseg.training.run import train

    if args.resume:
        if not args.out:
            raise PfadsegError("--resume needs --out RUN, the run directory to continue")
        config = None
    else:
        config = _config_from_args(args)
    out = Path(args.out or _default_run_dir(config))
    result = train(config, out, teacher_weights=args.teacher_weights, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    s = result.summary
    print(f"\nrun: {result.run_dir}  ({result.seconds / 60:.1f} min; student {s.get('student_seconds', 0) / 60:.1f} min, "
          f"segmentation {s.get('segmentation_seconds', 0) / 60:.1f} min)")
    if result.evaluation is not None:
        from pfadseg.evaluate import branches_table

        print(branches_table(result.evaluation))
        print(f"metrics: {result.run_dir / 'metrics.json'}")
    return 0


def _default_run_dir(config) -> str:
    name = config.data.category or Path(config.data.root).name or "run"
    return str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def cmd_test(args: argparse.Namespace) -> int:
    from pfadseg.evaluate import branches_table, evaluate_run, save_maps
    from pfadseg.rundir import load_run_config

    data = None
    overrides = _data_overrides(args)
    if overrides:
        base = load_run_config(args.run).data
        data = replace(base, **overrides)
    from pfadseg.thresholds import decision_rates, format_rates, load_thresholds, thresholds_file

    evaluation = evaluate_run(args.run, data, device=args.device, progress=not args.quiet, compile=args.compile, precision=args.precision)
    print(branches_table(evaluation))
    if args.precision == "fp32" or (Path(args.run) / thresholds_file(args.precision)).is_file():
        thresholds = load_thresholds(args.run, args.precision)
        labels = [s.label for s in evaluation.samples]
        print(f"OK/NG at the run's image threshold {thresholds['image']:.4f}: "
              f"{format_rates(decision_rates(evaluation.scores, labels, thresholds['image']))}")
    else:
        print(f"no OK/NG: the run has no thresholds for {args.precision} scores (pfadseg calibrate --run {args.run} --precision {args.precision})")
    if args.save_maps:
        save_maps(evaluation, Path(args.save_maps))
        print(f"maps: {args.save_maps}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pfadseg.predict import predict_to_folder

    if bool(args.run) == bool(args.model):
        raise PfadsegError("give either --run RUN_DIR or --model FILE.onnx")
    summary = predict_to_folder(args.run or args.model, args.inputs, Path(args.out), device=args.device, batch_size=args.batch_size,
                                progress=not args.quiet, compile=args.compile, precision=args.precision)
    print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pfadseg.export import export_onnx

    report = export_onnx(args.run, args.out, check=not args.no_check, batch_size=args.batch_size)
    print(report.summary())
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from pfadseg.calibration import format_calibration, recalibrate

    print(format_calibration(recalibrate(args.run, args.target_fpr, device=args.device, progress=not args.quiet, precision=args.precision)))
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    from pfadseg.bank import rebuild_bank
    from pfadseg.config import parse_override

    overrides: dict[str, Any] = {}
    for text in args.set or []:
        key, _, value = text.partition("=")
        overrides.update(parse_override(f"{key.removeprefix('bank.')}={value}"))
    rebuild_bank(args.run, overrides, device=args.device, progress=not args.quiet)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pfadseg.config import parse_override
    from pfadseg.demo import run_demo

    overrides = [parse_override(text) for text in args.set or []]
    run_demo(Path(args.out), device=args.device, seed=args.seed, preset=args.preset, progress=not args.quiet, overrides=overrides,
             categories=tuple(c for c in args.categories.split(",") if c))
    return 0


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise PfadsegError(f"{what} must be comma-separated integers, got {text!r}") from None


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pfadseg.benchmark import ABLATION_VARIANTS, dataset_from_yaml, mvtec_datasets, run_benchmark

    datasets = []
    if args.data:
        if not args.categories:
            raise PfadsegError("--data needs --categories NAME[,NAME...] (MVTec layout)")
        datasets += mvtec_datasets(args.data, [c.strip() for c in args.categories.split(",") if c.strip()])
    datasets += [dataset_from_yaml(path) for path in args.dataset_config or []]
    if not datasets:
        raise PfadsegError("no dataset: pass --data ROOT --categories NAMES and/or --dataset-config FILE.yaml")
    variants = list(ABLATION_VARIANTS) if args.ablation else [v.strip() for v in args.models.split(",") if v.strip()]
    run_benchmark(datasets, variants, _int_list(args.seeds, "--seeds"), args.preset, Path(args.out), teacher=args.teacher,
                  teacher_weights=args.teacher_weights, overrides=args.set or [], device=args.device, progress=not args.quiet)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    from pfadseg.data.preview import write_synthesis_preview

    config = _config_from_args(args)
    path = write_synthesis_preview(config.data, config.synthesis, config.train.image_size, config.seed, Path(args.out), rows=args.rows)
    print(f"preview: {path}")
    return 0


# ---------------------------------------------------------------------------------- parser


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="pfadseg", help="architecture preset: pfadseg (AFF+PCAR+RCM, default) or destseg (the baseline)")
    g.add_argument("--teacher", help="teacher backbone: resnet18 (the paper's; ImageNet weights from the torch hub or --teacher-weights) "
                   "or efficientnet_lite0 (weights ship with the lite0 extra: works offline)")
    g.add_argument("--teacher-weights", metavar="FILE", help="state-dict file of the teacher's ImageNet weights (e.g. resnet18-f37072fd.pth)")
    g.add_argument("--no-aff", action="store_true", help="ablation: plain sum instead of AFF in every residual block")
    g.add_argument("--no-pcar", action="store_true", help="ablation: plain 3×3 conv instead of PCAR")
    g.add_argument("--head", choices=["rcm", "aspp"], help="segmentation head (pfadseg: rcm, destseg: aspp)")


def _add_config_args(p: argparse.ArgumentParser, preset_default: str) -> argparse._ArgumentGroup:
    g = p.add_argument_group("configuration")
    g.add_argument("--preset", default=preset_default, help=TRAIN_PRESET_HELP + f" (default {preset_default})")
    g.add_argument("--config", metavar="FILE", help="YAML file with any part of the configuration (the form of a run's config.yaml)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any value, e.g. train.lr_student=0.4 (repeatable)")
    g.add_argument("--textures", metavar="DIR", help="folder of anomaly-source textures, e.g. DTD (default: built-in procedural textures)")
    g.add_argument("--image-size", type=int, help="training size in pixels (default: the preset's)")
    g.add_argument("--seed", type=int, help="fixes initialisation, sampling and synthesis (default 0)")
    return g


def _add_training_args(p: argparse.ArgumentParser) -> None:
    g = _add_config_args(p, "paper")
    g.add_argument("--batch-size", type=int, help="images per step (default: the preset's)")
    g.add_argument("--student-steps", type=int, help="stage-1 iterations (default: the preset's)")
    g.add_argument("--segmentation-steps", type=int, help="stage-2 iterations (default: the preset's)")
    g.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="training precision; auto (default): bf16 autocast where the "
                   "hardware has it. Scores for thresholds and decisions are always computed in fp32")
    g.add_argument("--holdout", type=float, metavar="FRACTION", help="share of the normal training images held out to set the OK/NG "
                   "thresholds (default 0.1; 0: no thresholds). More images resolve lower false-alarm rates")
    g.add_argument("--target-fpr", type=float, help="the OK/NG thresholds aim at this false-alarm rate on the held-out images (default 0.01)")
    g.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")


def _add_inference_args(p: argparse.ArgumentParser, compile: bool = True) -> None:
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="fp32 (default): the precision every threshold is set "
                   "in, so decisions match the ONNX export; bf16: faster on hardware with bf16, needs thresholds of its own "
                   "(pfadseg calibrate --precision bf16)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    if compile:
        p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _info_parser(sub) -> None:
    p = sub.add_parser("info", help="model summary (parameters, feature shapes, MACs), or a run's summary with --run")
    p.add_argument("--run", metavar="RUN_DIR", help="summarise this run: configuration, metrics, thresholds, sizes, versions")
    p.add_argument("--preset", "--model", dest="preset", default="pfadseg", help="architecture preset: pfadseg (default) or destseg")
    p.add_argument("--teacher", default="resnet18", help="teacher backbone: resnet18 (default) or efficientnet_lite0 (no weights are loaded)")
    p.add_argument("--image-size", type=int, default=256, help="input size for shapes and MACs (default 256)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model on normal images; evaluates when the data has a test split")
    _add_data_args(p)
    _add_model_args(p)
    _add_training_args(p)
    p.add_argument("--out", help="run directory (default runs/<category>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)


def _test_parser(sub) -> None:
    p = sub.add_parser("test", help="evaluate a run: image/pixel AUROC, pixel AP, AUPRO, IAP, IAP@90, and its OK/NG decisions")
    p.add_argument("--run", required=True, help="run directory")
    _add_data_args(p)
    p.add_argument("--save-maps", metavar="DIR", help="write each map as DIR/<type>/<stem>.npy and DIR/scores.csv")
    _add_inference_args(p)
    p.set_defaults(func=cmd_test)


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="anomaly maps, overlays, masks and OK/NG decisions for new images")
    p.add_argument("--run", help="run directory (PyTorch)")
    p.add_argument("--model", help="exported .onnx file (onnxruntime; torch is not needed)")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched recursively for images")
    p.add_argument("--out", required=True, help="output folder: <name>_overlay.png, <name>_map.npy, <name>_mask.png, predictions.csv")
    p.add_argument("--batch-size", type=int, default=8, help="images (tiles, for a run in the tiles geometry) per forward pass (default 8)")
    _add_inference_args(p)
    p.set_defaults(func=cmd_predict)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="the run as one ONNX file (uint8 image in; map and score out), checked against PyTorch")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", help="output file (default RUN/model.onnx)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check on the run's test images")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch in the parity check (default 8)")
    p.set_defaults(func=cmd_export)


def _calibrate_parser(sub) -> None:
    p = sub.add_parser("calibrate", help="set a run's OK/NG thresholds again: another false-alarm rate, or thresholds for bf16 scores")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--target-fpr", type=float, help="false-alarm rate on the held-out normal images (default: the run's, 0.01)")
    _add_inference_args(p, compile=False)
    p.set_defaults(func=cmd_calibrate)


def _bank_parser(sub) -> None:
    p = sub.add_parser("bank", help="give a trained run a memory bank of its training patches and fuse its kNN map with the "
                       "segmentation map (then evaluate and set the thresholds again)")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a bank setting, e.g. bank.max_size=8192 (strides, fraction, "
                   "max_size, projection, pool, blur_sigma; repeatable)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_bank)


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the main job: build demo data, train, evaluate, draw pictures and report.html (no downloads)")
    p.add_argument("--out", default="pfadseg_demo", help="output folder (default ./pfadseg_demo)")
    p.add_argument("--preset", default="demo", help="training budget (default demo: about 9 minutes for both categories on a 2-core CPU)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0); the demo data are the same for every seed")
    p.add_argument("--categories", default="", help="comma-separated demo categories (default: fabric,washer); also strip: "
                   "512 × 2048 line-scan strips with cracks, pits and scratches a few pixels wide, for the tiles geometry "
                   "(--set data.geometry=tiles)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any configuration value, e.g. train.seg_warmup_steps=0 "
                   "(repeatable)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_demo)


def _benchmark_parser(sub) -> None:
    p = sub.add_parser("benchmark", help="train and evaluate model variants × datasets × seeds; results.md/json and report.html")
    p.add_argument("--data", help="MVTec-layout root (with --categories)")
    p.add_argument("--categories", help="comma-separated MVTec categories, e.g. bottle,screw")
    p.add_argument("--dataset-config", action="append", metavar="FILE", help="YAML of data settings for a folder dataset (repeatable), "
                   "e.g. benchmarks/magnetic_tile.yaml")
    p.add_argument("--models", default="pfadseg,destseg", help="comma-separated variants: pfadseg, destseg, or '+'-joined subsets of "
                   "aff, pcar, rcm added to destseg (default pfadseg,destseg)")
    p.add_argument("--ablation", action="store_true", help="the paper's Table 4: all seven variants")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--preset", default="fast", help=TRAIN_PRESET_HELP + " (default fast)")
    p.add_argument("--teacher", help="teacher backbone for every run (default: the presets' resnet18)")
    p.add_argument("--teacher-weights", metavar="FILE", help="teacher state-dict file")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any configuration value in every run (repeatable)")
    p.add_argument("--out", required=True, help="benchmark folder: runs/, results.json, results.md, report.html")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_benchmark)


def _preview_parser(sub) -> None:
    p = sub.add_parser("preview-synthesis", help="picture grid of training images: normal / with a synthetic anomaly / its mask")
    _add_data_args(p, required=True)
    _add_config_args(p, "paper")
    p.add_argument("--out", default="synthesis_preview.png", help="PNG file to write (default synthesis_preview.png)")
    p.add_argument("--rows", type=int, default=8, help="training images to show, one per row (default 8)")
    p.set_defaults(func=cmd_preview)


def build_parser() -> argparse.ArgumentParser:
    from pfadseg.version import __version__

    parser = argparse.ArgumentParser(prog="pfadseg", description="PFADSeg anomaly detection and segmentation.")
    parser.add_argument("--version", action="version", version=f"pfadseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_info_parser, _train_parser, _test_parser, _predict_parser, _export_parser, _calibrate_parser, _bank_parser, _demo_parser,
                _benchmark_parser, _preview_parser):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PfadsegError as err:
        print(f"pfadseg: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pfadseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
