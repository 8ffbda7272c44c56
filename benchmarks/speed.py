"""Speed benchmark: training steps, inference throughput and memory of the pfadseg and destseg
presets, measured side by side against this machine's own matrix-multiply peak.

    python benchmarks/speed.py --out DIR [--presets pfadseg,destseg] [--image-size 256] [--device auto]
    python benchmarks/speed.py --bank-cost 256,160,128 [--bank-preset demo]   # only the memory bank's inference cost

For each preset: stage-1 and stage-2 training step times at batch 16 (fp32 eager, the reference
implementations' way; bf16 autocast with the memory format training uses, and contiguous; bf16
with the segmentation net compiled as ``train.compile`` does), inference images/s at batch 1 and
32 (fp32 eager; bf16 + channels_last; bf16 contiguous; bf16 + channels_last under torch.compile;
for pfadseg also bf16 + channels_last with a full-size memory bank, the fused output's cost),
peak RSS of a fresh process predicting single images from a run directory (as `pfadseg predict`), and achieved FLOP/s (2 x counted MACs x
images/s) as a fraction of the measured bf16 and fp32 matmul peaks. Every figure is the median
of several timed repeats after warm-up, with min and max. Writes DIR/speed.json and DIR/speed.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from pfadseg.checkpoint import CONFIG_FILE
from pfadseg.config import BANK_PRESETS, DataConfig, RunConfig, default_bank, dump_yaml, merge, preset_config
from pfadseg.data.augment import augmentation_for_category
from pfadseg.data.synthesis import AnomalySynthesizer
from pfadseg.data.textures import load_texture_source
from pfadseg.environment import environment
from pfadseg.fileio import write_json_atomic, write_text_atomic
from pfadseg.models import build_model
from pfadseg.models.fusion import Fusion
from pfadseg.models.memory_bank import TEACHER_STRIDES, BankConfig, MemoryBank
from pfadseg.models.summary import summarize
from pfadseg.rundir import save_model
from pfadseg.training.batches import BatchMaker
from pfadseg.training.runtime import Precision, resolve_device
from pfadseg.training.trainer import Trainer

TEACHER = "efficientnet_lite0"  # the offline teacher: ImageNet weights without a download


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class GpuUtilisation:
    """The GPU's busy percentage while a block runs: ``nvidia-smi`` samples it every 100 ms in the background."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.samples: list[float] = []
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> GpuUtilisation:
        if self.device.type == "cuda" and shutil.which("nvidia-smi"):
            index = str(self.device.index or 0)
            self._process = subprocess.Popen(["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                              "-lms", "100"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.terminate()
            out, _ = self._process.communicate()
            self.samples = [float(line) for line in out.split() if line.strip().replace(".", "", 1).isdigit()]

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def timed(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median, min and max seconds of ``repeats`` calls after ``warmup`` untimed ones (and, on a GPU, its mean utilisation)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    with GpuUtilisation(device) as gpu:
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - started)
    result = {"median": statistics.median(times), "min": min(times), "max": max(times), "repeats": repeats}
    if gpu.mean is not None:
        result["gpu_utilisation_percent"] = gpu.mean
    return result


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 4096) -> float:
    """Measured FLOP/s of an n x n matrix product in ``dtype``: the machine's practical ceiling."""
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    t = timed(lambda: a @ b, device, warmup=2, repeats=5)
    return 2 * n**3 / t["median"]


def inference(model: torch.nn.Module, precision: Precision, device: torch.device, size: int, batch: int,
              compile_model: bool, warmup: int, repeats: int) -> dict[str, float]:
    """images/s of the whole model (teacher, student, segmentation net, map and score) at one batch size."""
    model = model.to(memory_format=precision.memory_format()).eval()
    forward = torch.compile(model) if compile_model else model
    x = torch.rand(batch, 3, size, size, device=device).contiguous(memory_format=precision.memory_format())

    @torch.inference_mode()
    def run() -> None:
        with precision.autocast(device):
            forward(x)

    compile_started = time.perf_counter()
    run()  # first call: compiles when asked
    compile_seconds = time.perf_counter() - compile_started
    t = timed(run, device, warmup, repeats)
    return {"images_per_second": batch / t["median"], "seconds": t, "first_call_seconds": compile_seconds}


@contextlib.contextmanager
def step_trainer(preset: str, precision: Precision, device: torch.device, size: int, batch: int,
                 compile_segmentation: bool = False) -> Iterator[Trainer]:
    """The real Trainer of ``preset`` (Lite0 teacher) on random images, with a throw-away run directory."""
    config = merge(preset_config(preset, "paper"), {"model": {"teacher": TEACHER},
                                                     "train": {"image_size": size, "batch_size": batch, "compile": compile_segmentation}})
    torch.manual_seed(0)
    model = build_model(config.model).to(device)
    images = torch.randint(0, 256, (max(2 * batch, 32), 3, size, size), dtype=torch.uint8, device=device)
    textures = load_texture_source(DataConfig(), size, 0).to(device)
    batches = BatchMaker(images, AnomalySynthesizer(textures, config.synthesis), augmentation_for_category("none"), batch, 0,
                         precision.memory_format())
    with tempfile.TemporaryDirectory() as tmp:
        yield Trainer(model, config, batches, precision, Path(tmp), device)


def training_steps(preset: str, precision: Precision, device: torch.device, size: int, batch: int,
                   warmup: int, repeats: int, compile_segmentation: bool = False) -> dict[str, dict]:
    """Seconds per stage-1 and stage-2 step (synthesis, forward, backward, SGD) of the real Trainer.

    ``compile_segmentation``: as ``train.compile``; the first stage-2 step (the compilation) is timed apart.
    """
    with step_trainer(preset, precision, device, size, batch, compile_segmentation) as trainer:
        stage1 = timed(trainer.student_step, device, warmup, repeats)
        started = time.perf_counter()
        trainer.segmentation_step()
        first_stage2 = time.perf_counter() - started
        stage2 = timed(trainer.segmentation_step, device, warmup, repeats)
    return {"memory_format": trainer.formats.describe(), "stage1": stage1, "stage2": stage2, "first_stage2_step_seconds": first_stage2}


def rss_probe(run_dir: str) -> None:
    """(Run in a fresh process.) Load a run as `pfadseg predict` does and predict single images; print the peak RSS in MB."""
    import numpy as np

    from pfadseg.api import load

    detector = load(run_dir)
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    for _ in range(3):
        detector.predict_arrays([image], [Path("probe.png")])
    print(json.dumps({"peak_rss_mb": own_peak_rss_mb()}))


def own_peak_rss_mb() -> float:
    """This process's peak RSS since exec (VmHWM). ru_maxrss would also count the parent's RSS at fork."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: the best available


def peak_rss(model: torch.nn.Module, config: RunConfig) -> float:
    """Peak RSS of a fresh process that predicts at batch 1 from a run directory holding ``model``."""
    with tempfile.TemporaryDirectory() as tmp:
        write_text_atomic(Path(tmp) / CONFIG_FILE, dump_yaml(config))
        save_model(model, config, Path(tmp))
        out = subprocess.run([sys.executable, __file__, "--rss-probe", tmp], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def random_bank(model: torch.nn.Module, config: BankConfig, device: torch.device) -> tuple[MemoryBank, Fusion]:
    """A full-size bank (``config.max_size`` random patch features at ``config.strides``) and a fusion for ``model``:
    the search costs what a real bank's does."""
    dim = sum(model.teacher.channels[TEACHER_STRIDES.index(s)] for s in config.strides)
    return MemoryBank(torch.randn(config.max_size, dim), config).to(device), Fusion().to(device)


def bank_cost(sizes: list[int], bank_config: BankConfig, device: torch.device, rounds: int,
              log: Callable[[str], None]) -> dict[int, dict[str, float]]:
    """Inference images/s of the pfadseg model at batch 32, bf16 + channels_last, without and with a full-size bank, per input size.

    The two are timed in alternation, one batch each per round, so that drifts of the machine's speed
    during the measurement fall on both alike; the ratio is of the medians.
    """
    bf16 = Precision(torch.bfloat16, True)
    result = {}
    for size in sizes:
        model = build_model(merge(preset_config("pfadseg", "paper"), {"model": {"teacher": TEACHER}}).model).to(device)
        model = model.to(memory_format=bf16.memory_format()).eval()
        bank, fusion = random_bank(model, bank_config, device)
        x = torch.rand(32, 3, size, size, device=device).contiguous(memory_format=bf16.memory_format())

        @torch.inference_mode()
        def run(with_bank: bool) -> None:
            model.memory_bank, model.fusion = (bank, fusion) if with_bank else (None, None)
            with bf16.autocast(device):
                model(x)

        times: dict[bool, list[float]] = {False: [], True: []}
        for with_bank in (False, True):  # warm-up
            run(with_bank)
        for _ in range(rounds):
            for with_bank in (False, True):
                times[with_bank].append(timed(lambda: run(with_bank), device, 0, 1)["median"])
        plain, banked = (32 / statistics.median(times[b]) for b in (False, True))
        result[size] = {"without_bank": plain, "with_bank": banked, "kept": banked / plain, "rounds": rounds}
        log(f"{size}x{size}: {plain:.2f} -> {banked:.2f} images/s with the bank ({100 * banked / plain:.1f} % kept; "
            f"median of {rounds} alternating rounds)")
    return result


def benchmark(presets: list[str], size: int, device: torch.device, compiled: list[str], log: Callable[[str], None]) -> dict:
    bf16 = Precision(torch.bfloat16, True)
    bf16_contiguous = Precision(torch.bfloat16, False)
    fp32 = Precision(None, False)
    result: dict = {"image_size": size, "device": str(device), "environment": environment(),
                    "peak_flops": {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}}
    log(f"matmul peak: fp32 {result['peak_flops']['fp32'] / 1e9:.0f} GFLOP/s, bf16 {result['peak_flops']['bf16'] / 1e9:.0f} GFLOP/s")
    for preset in presets:
        config = merge(preset_config(preset, "paper"), {"model": {"teacher": TEACHER}, "train": {"image_size": size}})
        model = build_model(config.model).to(device)
        macs = summarize(model, size)["macs_per_image"]["inference"]
        entry: dict = {"macs_per_image": macs, "inference": {}, "training": {}}
        modes = [("fp32 eager", fp32, False), ("bf16 + channels_last", bf16, False), ("bf16 contiguous", bf16_contiguous, False)]
        if preset in compiled:
            modes.append(("bf16 + channels_last + compile", bf16, True))
        bank_config = BankConfig()
        if preset == "pfadseg":  # the product presets' fused output: a full-size bank searched for every patch
            modes.append((f"bf16 + channels_last + memory bank ({bank_config.max_size} patches)", bf16, False))
        for name, precision, use_compile in modes:
            if "memory bank" in name:
                model.memory_bank, model.fusion = random_bank(model, bank_config, device)
            row = {}
            # Compiling takes minutes per input shape on a 2-core CPU: the compiled model is timed at batch 32 only.
            for batch, repeats in ((32, 3),) if use_compile else ((1, 10), (32, 3)):
                try:
                    row[f"batch{batch}"] = inference(model, precision, device, size, batch, use_compile, 1, repeats)
                except Exception as err:  # torch.compile needs a C++ compiler; say so instead of hiding the row
                    row[f"batch{batch}"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
                log(f"{preset} inference {name} batch {batch}: {row[f'batch{batch}']}")
            entry["inference"][name] = row
        model.memory_bank = model.fusion = None
        for name, precision, compile_segmentation in (("fp32 eager", fp32, False), ("bf16", bf16, False),
                                                      ("bf16 contiguous", bf16_contiguous, False), ("bf16 + compile (stage 2)", bf16, True)):
            entry["training"][name] = training_steps(preset, precision, device, size, 16, 1, 5, compile_segmentation)
            log(f"{preset} training {name}: {entry['training'][name]}")
        if device.type == "cpu":
            entry["peak_rss_mb_batch1"] = peak_rss(model.to(memory_format=torch.contiguous_format), config)
        result[preset] = entry
    return result


def busy(seconds: dict) -> str:
    """The GPU's mean utilisation during the timed repeats, as a table value."""
    value = seconds.get("gpu_utilisation_percent")
    return f"{value:.0f}" if value is not None else "n/a"


def markdown(result: dict, presets: list[str]) -> str:
    peak = result["peak_flops"]
    gpu = result["device"].startswith("cuda")
    gpu_head, gpu_rule = (" GPU busy % |", "---:|") if gpu else ("", "")
    lines = [f"# Speed at {result['image_size']}×{result['image_size']} on {result['device']} "
             f"({result['environment']['machine']['cpu']}, {result['environment']['machine']['cpu_threads']} threads)", "",
             f"Measured matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s. "
             "Medians of timed repeats after warm-up; [min–max] in brackets.", "",
             "## Inference", "",
             "| preset | mode | batch 1 img/s | batch 32 img/s | × fp32 (b32) | TFLOP/s (b32) | % bf16 peak | % fp32 peak |" + gpu_head,
             "|---|---|---:|---:|---:|---:|---:|---:|" + gpu_rule]
    for preset in presets:
        entry = result[preset]
        base = entry["inference"]["fp32 eager"]["batch32"].get("images_per_second")
        for mode, row in entry["inference"].items():
            b1, b32 = row.get("batch1", {}), row["batch32"]
            if "error" in b32 or "error" in b1:
                lines.append(f"| {preset} | {mode} | {b1.get('error', '')} | {b32.get('error', '')} | | | | |")
                continue
            flops = 2 * entry["macs_per_image"] * b32["images_per_second"]
            spread = b32["seconds"]
            batch1 = f"{b1['images_per_second']:.2f}" if b1 else "not timed"
            usage = f" {busy(spread)} |" if gpu else ""
            lines.append(f"| {preset} | {mode} | {batch1} | {b32['images_per_second']:.2f} "
                         f"[{32 / spread['max']:.2f}–{32 / spread['min']:.2f}] | {b32['images_per_second'] / base:.2f} | "
                         f"{flops / 1e12:.3f} | {100 * flops / peak['bf16']:.0f} | {100 * flops / peak['fp32']:.0f} |" + usage)
    lines += ["", "## Training steps (batch 16)", "",
              "| preset | precision | memory formats | stage 1 s/step | stage 2 s/step | × fp32 (1) | × fp32 (2) |"
              + (" GPU busy % (1 / 2) |" if gpu else ""),
              "|---|---|---|---:|---:|---:|---:|" + gpu_rule]
    for preset in presets:
        steps = result[preset]["training"]
        ref = steps["fp32 eager"]
        for name, s in steps.items():
            cells = [f"{s[k]['median']:.2f} [{s[k]['min']:.2f}–{s[k]['max']:.2f}]" for k in ("stage1", "stage2")]
            gains = [f"{ref[k]['median'] / s[k]['median']:.2f}" for k in ("stage1", "stage2")]
            usage = f" {busy(s['stage1'])} / {busy(s['stage2'])} |" if gpu else ""
            lines.append(f"| {preset} | {name} | {s['memory_format']} | {' | '.join(cells)} | {' | '.join(gains)} |" + usage)
    for preset in presets:
        for name, s in result[preset]["training"].items():
            if "compile" in name:
                lines.append(f"\n{preset}, {name}: the first stage-2 step, which compiles, took {s['first_stage2_step_seconds']:.0f} s.")
    lines += ["", "## Memory and cost", "", "| preset | GMAC/image | peak RSS, predict at batch 1 from a run directory (MB) |", "|---|---:|---:|"]
    for preset in presets:
        entry = result[preset]
        lines.append(f"| {preset} | {entry['macs_per_image'] / 1e9:.2f} | {entry.get('peak_rss_mb_batch1', float('nan')):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--presets", default="pfadseg,destseg")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--compile", default="pfadseg", help="presets also timed under torch.compile (comma-separated; '' for none)")
    parser.add_argument("--bank-cost", metavar="SIZES", help="only the memory bank's inference cost at these comma-separated "
                        "input sizes (batch 32, bf16), e.g. 256,160,128")
    parser.add_argument("--bank-preset", default="cpu30", choices=list(BANK_PRESETS),
                        help="--bank-cost: the training preset whose bank settings are timed (default cpu30)")
    parser.add_argument("--rounds", type=int, default=9, help="--bank-cost: alternating timed rounds per size (default 9)")
    parser.add_argument("--rss-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_probe:
        rss_probe(args.rss_probe)
        return 0
    if args.bank_cost:
        bank_cost([int(v) for v in args.bank_cost.split(",")], default_bank("pfadseg", args.bank_preset), resolve_device(args.device),
                  args.rounds, lambda m: print(m, flush=True))
        return 0
    if args.out is None:
        parser.error("--out is required")
    presets = [p for p in args.presets.split(",") if p]
    compiled = [p for p in args.compile.split(",") if p]
    result = benchmark(presets, args.image_size, resolve_device(args.device), compiled, lambda m: print(m, flush=True))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "speed.json", result)
    write_text_atomic(args.out / "speed.md", markdown(result, presets))
    print(markdown(result, presets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
