"""Several processes, one training run: PyTorch DDP as `torchrun` starts it (NCCL on GPUs, gloo on
CPUs). Each process computes its share of the global batch; DDP averages the gradients, so a step
equals one process's step on the whole batch. Every process reads the data and checks it (so bad
input stops all of them with the same message); only rank 0 writes files and reports progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..devices import resolve_device
from ..errors import UserError


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def writes(self) -> bool:
        """Only rank 0 writes files and reports progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def share(self, global_batch: int) -> range:
        """The global batch positions this process computes: rank r takes r, r + world, ..."""
        return range(self.rank, global_batch, self.world)


def start(device_name: str) -> tuple[Processes, torch.device]:
    """Join the torchrun job if there is one; the device of this process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Processes(), resolve_device(device_name)
    processes = Processes(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise UserError(f"torchrun training runs on CUDA or CPU devices, not on {device.type}")
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))  # processes must not fight for cores
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=processes.rank, world_size=world)
    return processes, device


def wait_for_all(processes: Processes) -> None:
    """Every process reaches this point before any goes on (e.g. before leaving the job while
    rank 0 still writes the model file); tearing down the group early aborts the others."""
    if processes.distributed:
        dist.barrier()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def total(value: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The sum of `value` over all processes (itself when alone)."""
    if processes.distributed:
        value = value.clone()
        dist.all_reduce(value)
    return value
