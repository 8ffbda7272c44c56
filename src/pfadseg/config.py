"""Run configuration: typed dataclasses, presets, YAML files and ``section.key=value`` overrides."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from pfadseg.data.datasets import DataConfig
from pfadseg.data.synthesis import SynthesisConfig
from pfadseg.errors import PfadsegError
from pfadseg.models.architecture import MODEL_PRESETS, ModelConfig
from pfadseg.models.memory_bank import BankConfig


@dataclass(frozen=True)
class TrainConfig:
    """The two-stage recipe (docs/design.md §6) and how it runs on the machine."""

    image_size: int = 256
    batch_size: int = 16
    student_steps: int = 3000
    segmentation_steps: int = 4000
    lr_student: float = 0.5
    lr_seg_blocks: float = 0.1
    lr_seg_head: float = 0.01
    seg_warmup_steps: int = 0  # linear learning-rate warm-up over the first stage-2 steps (0: none, as published)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: each stage's rates fall to 0 by its last step
    seg_average_last: float = 0.0  # the segmentation net keeps its mean weights over this fraction of the last stage-2 steps (0: the last)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    focal_gamma: float = 4.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False  # torch.compile the segmentation net for stage 2 (faster after a one-off compilation)
    checkpoint_every: int = 200
    log_every: int = 10
    eval_size: int = 256  # maps and masks are compared at this size (both papers' protocol)
    # The grid of the pixel metrics: square (eval_size², both papers'), aspect (each image's aspect with eval_size² pixels),
    # native (each image's own pixels); auto: square for the square geometry, aspect for tiles and aspect.
    eval_geometry: Literal["auto", "square", "aspect", "native"] = "auto"
    eval_batch_size: int = 16

    def __post_init__(self) -> None:
        if not 0.0 <= self.seg_average_last <= 1.0:
            raise ValueError(f"seg_average_last is a fraction of the stage-2 steps, 0 to 1; got {self.seg_average_last}")


@dataclass(frozen=True)
class CalibrationConfig:
    """OK/NG thresholds, set after training on normal images held out from train/good."""

    target_fpr: float = 0.01  # false-alarm rate the image and pixel thresholds aim at
    holdout: float = 0.1  # fraction of train/good kept out of training for calibration (0: no calibration)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    seed: int = 0
    device: str = "auto"


TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # The published recipe (docs/design.md §6): hours per category on a 2-core CPU, minutes on a GPU.
    "paper": {},
    # The short budgets below shrink the input, batch and step counts, train the whole segmentation
    # net at lr 0.4 (0.1 / 0.01 move too little in a few hundred steps) and warm stage 2 up over its
    # first 10 % of steps; the evidence for each is in README "Training presets" and docs/benchmarks.md.
    # About 10 minutes per category on a 2-core CPU.
    "fast": {"image_size": 128, "batch_size": 8, "student_steps": 300, "segmentation_steps": 300,
             "lr_seg_blocks": 0.4, "lr_seg_head": 0.4, "seg_warmup_steps": 30, "checkpoint_every": 100},
    # About 25 minutes per category on a 2-core CPU: a larger input and about twice fast's steps.
    "cpu30": {"image_size": 160, "batch_size": 8, "student_steps": 600, "segmentation_steps": 700,
              "lr_seg_blocks": 0.4, "lr_seg_head": 0.4, "seg_warmup_steps": 70, "checkpoint_every": 100},
    # `pfadseg demo`: both built-in categories in under 10 minutes on a 2-core CPU. At 150 noisy stage-2 steps the
    # segmentation net keeps the mean of its last quarter's weights, which makes the result far less seed-dependent.
    "demo": {"image_size": 128, "batch_size": 8, "student_steps": 150, "segmentation_steps": 150,
             "lr_seg_blocks": 0.4, "lr_seg_head": 0.4, "seg_warmup_steps": 15, "seg_average_last": 0.25, "checkpoint_every": 100},
    # A few steps at 64²: for tests (about a minute, mostly reading and evaluating).
    "debug": {"image_size": 64, "batch_size": 4, "student_steps": 4, "segmentation_steps": 4, "checkpoint_every": 2, "log_every": 1},
}


#: Training budgets whose PFADSeg runs fuse a memory bank by default, with their bank settings (`paper` and the `destseg`
#: model keep the paper's output). The demo's small parts at 128² need the finer 1/4 grid, which textures do not want;
#: its four times as many patches are searched in a smaller bank (docs/design.md §14).
BANK_PRESETS: dict[str, dict[str, Any]] = {"fast": {}, "cpu30": {}, "demo": {"strides": (4, 8, 16), "max_size": 2048}}


def evaluation_geometry(config: RunConfig) -> str:
    """``train.eval_geometry`` with ``auto`` resolved for the run's input geometry."""
    if config.train.eval_geometry != "auto":
        return config.train.eval_geometry
    return "square" if config.data.geometry == "square" else "aspect"


def default_bank(model_preset: str, train_preset: str) -> BankConfig:
    """The memory-bank setting of a model preset (or benchmark variant) under a training preset."""
    if model_preset != "pfadseg" or train_preset not in BANK_PRESETS:
        return BankConfig()
    return BankConfig(enabled=True, **BANK_PRESETS[train_preset])


def preset_config(model_preset: str = "pfadseg", train_preset: str = "paper") -> RunConfig:
    """A RunConfig from a model preset (architecture) and a training preset (budget)."""
    if model_preset not in MODEL_PRESETS:
        raise PfadsegError(f"unknown model preset {model_preset!r}; known: {', '.join(MODEL_PRESETS)}")
    if train_preset not in TRAIN_PRESETS:
        raise PfadsegError(f"unknown training preset {train_preset!r}; known: {', '.join(TRAIN_PRESETS)}")
    return RunConfig(model=MODEL_PRESETS[model_preset], train=TrainConfig(**TRAIN_PRESETS[train_preset]),
                     bank=default_bank(model_preset, train_preset))


def to_dict(config: Any) -> Any:
    """Dataclasses → plain dicts/lists (tuples become lists), for YAML and JSON."""
    if is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in fields(config)}
    if isinstance(config, (tuple, list)):
        return [to_dict(v) for v in config]
    return config


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML/command-line value to the field's declared type, or fail naming the key."""
    origin = typing.get_origin(hint)
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise PfadsegError(f"config key {key}: expected a mapping, got {value!r}")
        return from_dict(hint, value, prefix=key + ".")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise PfadsegError(f"config key {key}: {value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(v, inner, key) for v in items)
    try:
        if hint is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return hint(value)
    except (TypeError, ValueError):
        raise PfadsegError(f"config key {key}: cannot read {value!r} as {getattr(hint, '__name__', hint)}") from None


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (partial) dict; missing keys keep their defaults, unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PfadsegError(f"unknown config key {prefix}{unknown[0]}; known in {prefix or 'top level'}: {', '.join(sorted(known))}")
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


def merge(config: Any, updates: dict[str, Any], prefix: str = "") -> Any:
    """A copy of dataclass ``config`` with nested ``updates`` applied (partial dicts allowed)."""
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, value in updates.items():
        if key not in hints:
            known = ", ".join(f.name for f in fields(config))
            raise PfadsegError(f"unknown config key {prefix}{key}; known in {prefix or 'top level'}: {known}")
        current = getattr(config, key)
        if is_dataclass(current) and isinstance(value, dict):
            changes[key] = merge(current, value, prefix + key + ".")
        else:
            changes[key] = _coerce(value, hints[key], prefix + key)
    try:
        return replace(config, **changes)
    except ValueError as err:  # a dataclass's own validation (__post_init__)
        raise PfadsegError(f"invalid configuration in {prefix.rstrip('.') or 'top level'}: {err}") from None


def parse_override(text: str) -> dict[str, Any]:
    """``train.batch_size=8`` → ``{"train": {"batch_size": 8}}`` (the value is read as YAML)."""
    if "=" not in text:
        raise PfadsegError(f"override {text!r} must look like section.key=value")
    path, raw = text.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw else ""
    for part in reversed(path.strip().split(".")):
        value = {part: value}
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise PfadsegError(f"{path}: cannot read config ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise PfadsegError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PfadsegError(f"{path}: expected a YAML mapping at the top level")
    return data


def dump_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def run_config_from_yaml(path: str | Path) -> RunConfig:
    """A saved run's configuration. Runs saved before calibration existed held nothing out (holdout 0)."""
    data = load_yaml(path)
    data.setdefault("calibration", {"holdout": 0.0})
    data.get("train", {}).pop("loss_from_logits", None)  # a training option of older runs, since removed; inference never used it
    return from_dict(RunConfig, data)

