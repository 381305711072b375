"""Data-parallel training through the standard PyTorch engine (DDP), launched with torchrun.

    torchrun --nproc_per_node=8 -m lmscope train --data shakespeare --preset shakespeare-char

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in each process; with WORLD_SIZE > 1 the trainer
joins the process group (nccl on GPUs, gloo on CPUs), puts each process on its own GPU, wraps
the model in DistributedDataParallel (gradients are averaged across processes), gives each
process its slice of the global batch, and lets only rank 0 write files and print.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a tensor over all processes (the value itself when not distributed)."""
        if self.enabled:
            value = value.detach().clone()
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over all processes (the value itself when not distributed)."""
        return self.sum(value) / self.world_size if self.enabled else value

    def device(self) -> torch.device:
        """Where this process's collective operations run: its GPU under nccl, else the CPU."""
        if self.enabled and dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def any(self, flag: bool, device) -> bool:
        """True on every process if `flag` is true on any of them."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def init_distributed() -> Distributed:
    """Join the process group when launched by torchrun with more than one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, local_rank=local_rank, world_size=world_size)


def shutdown(info: Distributed) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
