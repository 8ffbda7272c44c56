"""Whether two run directories hold the same model and results, bit for bit.

Usage: python benchmarks/compare_runs.py RUN_A RUN_B

Compares every tensor of ``model.safetensors`` exactly, and ``metrics.json`` and
``thresholds.json`` as parsed JSON; prints what differs and exits 1 if anything does. Used to
check that a restructuring changed no result: train the same seeded run before and after.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def differences(a: Path, b: Path) -> list[str]:
    found = []
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    if wa.keys() != wb.keys():
        found.append(f"weights: different keys ({len(wa.keys() ^ wb.keys())} not in both)")
    found += [f"weights: {k} differs" for k in sorted(wa.keys() & wb.keys()) if not torch.equal(wa[k], wb[k])]
    for name in ("metrics.json", "thresholds.json"):
        ja, jb = (json.loads((run / name).read_text()) if (run / name).is_file() else None for run in (a, b))
        if ja != jb:
            found.append(f"{name} differs")
    return found


def main() -> int:
    a, b = (Path(p) for p in sys.argv[1:3])
    found = differences(a, b)
    print("\n".join(found) if found else f"identical: {a} and {b} (every weight, metrics.json, thresholds.json)")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
