"""Data-parallel training across processes: the process group and what the ranks share.

Launched by ``torchrun`` (or ``python -m torch.distributed.run``), every process
sees ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``
in its environment; :func:`from_environment` joins the process group from them
(gloo on CPUs, NCCL on GPUs with device ``cuda:LOCAL_RANK``). Without
``WORLD_SIZE`` (or with 1) it returns :data:`SINGLE`, on which every operation
is the identity, so the trainer has one code path.

How one optimizer step is shared (B frames of the global batch, W ranks):

| quantity                                   | code                                        |
|--------------------------------------------|---------------------------------------------|
| the same permutation of the training frames | ``rng([seed, epoch])`` on every rank        |
| rank r trains frames ``batch[r::W]``        | :meth:`Distributed.shard`                   |
| global counts B, N (frames, atoms)          | known to every rank from the shared batch   |
| rank loss W · Σ_local / (B or 3N)           | ``Trainer._loss`` with global counts, × W   |
| gradient = mean over ranks = Σ / (B or 3N)  | ``DistributedDataParallel`` all-reduce      |

so the averaged gradient is exactly the single-process gradient of the global
batch, also when the ranks get unequal numbers of frames or atoms. A rank whose
share of a short last batch is empty runs one frame with weight 0 (DDP needs
every rank in every all-reduce). Validation frames are split into contiguous
blocks, one per rank, and the predictions gathered, so the metrics are computed
by the same code on the same numbers as in one process.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
from dataclasses import dataclass

import torch

#: seconds a rank waits in a collective before it gives up (another rank hung)
DEFAULT_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Distributed:
    """This process's place among the training processes.

    Attributes:
        rank: 0 .. world_size − 1; rank 0 alone writes files and prints.
        world_size: number of processes.
        local_rank: rank on this node (selects the GPU).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's share of a global batch: every W-th item from ``rank``, no item twice."""
        return items[self.rank::self.world_size] if self.active else items

    def block(self, n: int) -> range:
        """This rank's contiguous block of ``range(n)`` (blocks in rank order cover it once)."""
        if not self.active:
            return range(n)
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (self.rank < extra))

    def sum(self, value: float) -> float:
        """Sum of ``value`` over all ranks (float64)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device())
        torch.distributed.all_reduce(tensor)
        return float(tensor)

    def gather(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects)."""
        if not self.active:
            return [obj]
        out = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank: decisions (stop, time budget) are taken once."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in ``DistributedDataParallel`` (the identity in one process)."""
        if not self.active:
            return model
        import warnings

        from torch.nn.parallel import DistributedDataParallel

        # a [1, n] weight (the readout's last layer) gets a gradient of strides (1, 1)
        # where the bucket has (n, 1): the same memory layout, reported at every step
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)

    def device(self, requested: str) -> str:
        """The device this rank trains on: ``cuda:LOCAL_RANK`` for auto/cuda under CUDA, else the CPU."""
        if not self.active:
            return requested
        if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
            return "cpu"
        if requested not in ("auto", "cuda"):
            raise ValueError(f"--device {requested}: under torchrun each process takes GPU LOCAL_RANK "
                             f"(here cuda:{self.local_rank}); give --device cuda, auto or cpu")
        return f"cuda:{self.local_rank}"

    def _device(self) -> torch.device:
        backend = torch.distributed.get_backend()
        return torch.device(f"cuda:{self.local_rank}") if backend == "nccl" else torch.device("cpu")

    def close(self) -> None:
        if self.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


SINGLE = Distributed()


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise ValueError(f"WORLD_SIZE is set but {name} is not: launch with torchrun, which sets "
                             "RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _timeout_s() -> float:
    text = os.environ.get("MLFF_DDP_TIMEOUT_S")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"MLFF_DDP_TIMEOUT_S must be a positive number of seconds, got {text!r}")
    return value


def _stop_on_sigterm(rank: int, world_size: int) -> None:
    """SIGTERM (torchrun stopping the job, a scheduler's time limit) as a one-line exit."""

    def handler(signum, frame):
        sys.stderr.write(f"rank {rank} of {world_size}: stopped by SIGTERM (torchrun ends every rank "
                         "when one fails: look for the first failing rank's error above)\n")
        sys.stderr.flush()
        os._exit(143)

    signal.signal(signal.SIGTERM, handler)


def from_environment(device: str = "auto") -> Distributed:
    """Join the process group that torchrun describes in the environment, or :data:`SINGLE`.

    Args:
        device: the ``--device`` option (auto, cpu, cuda): CUDA → NCCL, CPU → gloo.

    Raises:
        ValueError: an incomplete torchrun environment, or a CUDA run with more
            local ranks than GPUs.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return SINGLE
    rank, local_rank = _env_int("RANK"), _env_int("LOCAL_RANK")
    context = Distributed(rank, world_size, local_rank)
    on_cuda = context.device(device).startswith("cuda")
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU (--nproc-per-node)")
        torch.cuda.set_device(local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if on_cuda else "gloo",
                                             timeout=datetime.timedelta(seconds=_timeout_s()))
    _stop_on_sigterm(rank, world_size)
    return context
