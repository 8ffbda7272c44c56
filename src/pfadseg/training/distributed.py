"""Data-parallel training under ``torchrun``: process group, the replicas' roles, buffer sync.

``torchrun --nproc_per_node N -m pfadseg train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; each trains a DistributedDataParallel replica on its own
slice of every global batch (gloo on CPU, NCCL on GPU). Rank 0 alone logs, checkpoints,
evaluates and writes the run directory. Started without torchrun, nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from pfadseg.errors import PfadsegError


@dataclass(frozen=True)
class Distributed:
    """This process's place among the replicas (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """The module as DistributedDataParallel (gradients averaged over replicas), or itself."""
        if not self.enabled:
            return module
        device_ids = [module_device(module).index] if module_device(module).type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BatchNorm running statistics) to every replica, as DDP does before each forward."""
        if self.enabled:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def per_rank_batch(self, batch_size: int) -> int:
        """The global batch of the recipe, split evenly over the replicas."""
        if batch_size % self.world_size:
            raise PfadsegError(f"batch size {batch_size} does not split over {self.world_size} processes; use a multiple")
        return batch_size // self.world_size


def module_device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def init_distributed(device_type: str) -> Distributed:
    """Join the process group torchrun describes in the environment (once per process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return Distributed(rank, world_size, local_rank)
