"""DDP plumbing: a run under ``torchrun`` (``WORLD_SIZE`` > 1) joins the process group once."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group described by torchrun's environment (gloo on CPU, nccl on CUDA);
    a single process gets a disabled context."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", "0")))
    world_size = launched_world_size()
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but torch.distributed is not available in this build")
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(),
                       int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_(tensor: torch.Tensor, context: DistContext,
                op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce (a no-op in a single process). On CUDA it is queued, not awaited."""
    if context.enabled:
        dist.all_reduce(tensor, op=op)
    return tensor


def barrier(context: DistContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_object(value: object, context: DistContext) -> object:
    """``value`` from rank 0 on every rank."""
    if not context.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
