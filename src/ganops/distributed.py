"""Data-parallel training plumbing (PyTorch DistributedDataParallel under ``torchrun``), and nothing else.

``torchrun`` starts one process per device (or per core on CPU) and tells each its place through the
environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). :func:`init` reads
it and joins the process group: gloo on CPU, nccl on CUDA. The training loop itself takes ``rank`` and
``world_size`` as plain values (it wraps the nets in DDP when ``world_size > 1``); this module is the edge
that turns the launcher's environment into those values, plus the few collectives the loop needs
(object broadcast and gather, sums, buffer averaging, agreeing on a scalar or a flag).

Single node:  ``ganops train-gan --nproc 2`` (re-launches itself through ``torchrun --standalone``)
Several:      ``torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29400
              -m ganops.cli train-gan`` on every node.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Place:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str = ""  # "" when not distributed

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs to MLflow and writes checkpoints, grids and exports."""
        return self.rank == 0


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: torch.device) -> str:
    """nccl for CUDA tensors, gloo for CPU ones (nccl refuses CPU tensors; gloo is slow on GPUs)."""
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> tuple[Place, torch.device]:
    """Join the process group torchrun described; returns (place, this rank's device).

    A no-op (``Place()``) outside torchrun. On CUDA every rank takes the GPU ``LOCAL_RANK`` of its node.
    """
    import torch.distributed as dist

    if not launched():
        return Place(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = backend_for(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return Place(dist.get_rank(), dist.get_world_size(), local_rank, backend), device


def finish() -> None:
    """Leave the process group (after a barrier, so rank 0's final writes are done before anyone exits)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def world_size() -> int:
    """Ranks in the default process group (1 when there is none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (pickled; for checkpoints: no shared disk needed)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks, in place (gloo has no AVG: divide by the world size yourself)."""
    import torch.distributed as dist

    dist.all_reduce(t)
    return t


def mean_over_ranks(x: torch.Tensor, ddp: bool) -> float:
    """A scalar averaged over the ranks (itself when not data-parallel)."""
    v = x.detach().float().reshape(1).clone()
    if ddp:
        all_sum_(v).div_(world_size())
    return v.item()


def any_rank(flag: bool, ddp: bool) -> bool:
    """True when ``flag`` is true on any rank (a stop request reaches one rank, all must stop together)."""
    if not ddp:
        return flag
    return bool(all_sum_(torch.tensor([float(flag)])).item() > 0)


def finite(*nets: torch.nn.Module) -> bool:
    """Every parameter of every net finite (identical on every rank: checked before anything is written)."""
    return all(bool(torch.isfinite(t).all()) for net in nets for t in net.parameters())


def average_buffers_(*nets: torch.nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over the ranks, in place.

    DDP runs with ``forward_sync_buffers=False`` (D sees a real and a fake batch per step, and buffer
    broadcasts between those forwards break autograd, pytorch#22095), so each rank's BatchNorm keeps its own
    running statistics; averaging them once per step keeps every rank's state identical, so a checkpoint
    written by rank 0 describes all ranks and an export sees statistics of the whole batch.
    """
    bufs = [b for net in nets for b in net.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])  # one all-reduce for all of them
    all_sum_(flat).div_(world_size())
    i = 0
    for b in bufs:
        b.copy_(flat[i : i + b.numel()].view_as(b))
        i += b.numel()


def torchrun_argv(nproc: int, argv: list[str]) -> list[str]:
    """The command that re-runs ``ganops <argv>`` as ``nproc`` ranks on this machine through torchrun."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "ganops.cli", *argv]  # fmt: skip
