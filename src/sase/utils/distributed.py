"""Several processes, one run: the world torchrun describes, its process group, and what rank 0 alone does.

`torchrun --nproc_per_node N -m sase search|train|compare ...` starts N copies of the command; each
reads its place from the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE)
and joins one process group: NCCL on CUDA (each process on the GPU of its local rank), gloo on the CPU.
Across nodes, torchrun's own rendezvous flags (--nnodes, --rdzv-backend, --rdzv-endpoint) do the rest.

Every process runs the whole command on its share of each batch; gradients are averaged across
processes, so every process holds the same weights and α. `--batch-size` stays the global batch: a
run on N processes takes the same steps, on the same images, as a run on one. Files, logs and progress
bars are written by rank 0 alone. Without torchrun the world is one process and nothing here does
anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

TIMEOUT_ENV = "SASE_DIST_TIMEOUT"  # seconds a process waits for the others (default 300)
DEFAULT_TIMEOUT = 300


@dataclass(frozen=True)
class World:
    """Where this process stands among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    torchrun: bool = False  # started by torchrun: the process group is joined even by a single process

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files and prints its progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether this run goes through the process group (and DistributedDataParallel)."""
        return self.size > 1 or self.torchrun


def world() -> World:
    """This process's place, from torchrun's environment (one process without it)."""
    env = os.environ
    try:
        size = int(env.get("WORLD_SIZE", 1))
        return World(rank=int(env.get("RANK", 0)), size=size, local_rank=int(env.get("LOCAL_RANK", 0)),
                     local_size=int(env.get("LOCAL_WORLD_SIZE", size)), torchrun="TORCHELASTIC_RUN_ID" in env)
    except ValueError:
        raise ValueError("RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE must be integers (torchrun sets them)") \
            from None


def timeout() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{TIMEOUT_ENV} must be a whole number of seconds, got {value!r}")
    return int(value)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (once per process); the device this process computes on.

    On CUDA each process takes the GPU of its local rank. A misconfigured world is one line: more
    processes on a node than GPUs, a GPU index given under torchrun, processes that cannot reach
    each other within the timeout.
    """
    w = world()
    if not w.distributed:
        return device
    if device.type == "cuda":
        if device.index is not None:
            raise ValueError(f"--device {device} under torchrun: each process takes the GPU of its local rank; "
                             "give --device cuda (or auto)")
        count = torch.cuda.device_count()
        if count < w.local_size:
            raise ValueError(f"{w.local_size} processes on this node (--nproc_per_node) but torch sees {count} CUDA "
                             f"device{'s' if count != 1 else ''}; start at most {count} per node, or use --device cpu")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        seconds = timeout()
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=seconds))
            barrier()  # every process has joined: a missing one fails here, within the timeout, not mid-run
        except (RuntimeError, ValueError, dist.DistError) as err:
            reason = " ".join(str(err).split())[:200]
            raise ValueError(f"process {w.rank} of {w.size} could not reach the others within {seconds} s "
                             f"({TIMEOUT_ENV} sets it): {reason}") from None
    return device


def leave() -> None:
    """Leave the process group at the end of a command (NCCL warns of leaked resources otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def check_batch(batch_size: int, what: str = "--batch-size") -> int:
    """This process's share of a global batch; one line when the batch does not split evenly."""
    w = world()
    if batch_size % w.size:
        raise ValueError(f"{what} {batch_size} does not split evenly over {w.size} processes: the batch is the "
                         f"global one; give a multiple of {w.size}")
    return batch_size // w.size


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def average_(tensors: Sequence[Tensor | None]) -> None:
    """Replace each tensor by its mean over the processes, in place (one all-reduce for all of them)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    present = [t for t in tensors if t is not None]
    if not present:
        return
    flat = torch.cat([t.reshape(-1) for t in present])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in present:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def sum_(tensor: Tensor) -> Tensor:
    """`tensor` summed over the processes, in place."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def broadcast_buffers(module: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every process: before an evaluation or a checkpoint.

    Each process updates its own running statistics from its share of the batch; rank 0's are the run's.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for b in module.buffers():
            dist.broadcast(b, 0)


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, 0)
    return box[0]
