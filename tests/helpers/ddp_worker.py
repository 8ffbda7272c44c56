"""One replica of a 2-process data-parallel debug run (started by torchrun from test_distributed.py).

Usage: torchrun --nproc_per_node 2 ddp_worker.py DATA_ROOT OUT_DIR. Trains through the real
pfadseg.training.run.train, then saves this replica's weights as OUT_DIR/rank<R>.safetensors for comparison.
"""

import os
import sys
from pathlib import Path

from pfadseg.checkpoint import save_tensors
from pfadseg.config import merge, preset_config
from pfadseg.training.run import train

data_root, out = sys.argv[1], Path(sys.argv[2])
# lr_student 0.05, not the paper's 0.5: after 3 steps at 0.5 the student's eval-mode BatchNorm statistics
# lag far behind its weights and stage 2 can see NaN (the run then stops with "training diverged").
config = merge(preset_config("pfadseg", "debug"), {
    "model": {"teacher": "efficientnet_lite0"},
    "data": {"root": data_root, "category": "widget"},
    "train": {"student_steps": 3, "segmentation_steps": 3, "lr_student": 0.05},
})
result = train(config, out / "run", progress=False)
save_tensors(out / f"rank{os.environ['RANK']}.safetensors", result.model.state_dict())
