"""CPU thread settings: the one knob, chosen deliberately.

PyTorch sizes its intra-op pool from the cores it can see, which inside
containers and batch jobs is often more than the cores the process may use;
oversubscribed threads spin and wait on each other, and a small system (a
9-atom molecule, a few hundred tiny kernels per MD step) then runs many times
slower than on one thread. ase-mlff therefore sets the pool once, when a
calculator is created:

* ``num_threads`` argument of :class:`~ase_mlff.MLFFCalculator` (or
  ``mlff-md run --threads``), else
* the ``MLFF_NUM_THREADS`` environment variable, else
* the number of cores this process is allowed to run on (``os.sched_getaffinity``),
  never more than torch's own default.

Both default choices are measured in ``benchmarks/threads.py``.
"""

from __future__ import annotations

import os

import torch


# torch's own choice, read before anyone (a calculator, a test) changes it, so
# that the default does not ratchet down after one calculator asked for 1.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads() -> int:
    env = os.environ.get("MLFF_NUM_THREADS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"MLFF_NUM_THREADS must be a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"MLFF_NUM_THREADS must be a positive integer, got {env!r}")
        return value
    return max(1, min(_TORCH_DEFAULT_THREADS, available_cores()))


def set_threads(num_threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: :func:`default_threads`); returns the count used."""
    n = default_threads() if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
