"""CPU thread settings: the one knob, chosen deliberately.

PyTorch sizes its intra-op pool from the cores it can see. A small system
(a 9-atom molecule: a few hundred kernels of a few hundred numbers per MD
step) gains nothing from a second thread, and when another process holds
the cores (a second job, a training run, a container that shows more cores
than it grants), the pool's threads spin and wait on each other: we measured
a 9-atom step going from 4.8 ms on one thread to 83 ms on two, on a busy
2-core machine. Large systems do gain from every core. So:

* ``num_threads`` argument of :class:`~ase_mlff.MLFFCalculator` (or
  ``mlff-md run --threads``), if given; else
* the ``MLFF_NUM_THREADS`` environment variable, if set; else
* **one thread** for structures (or batches) under :data:`SMALL_SYSTEM_ATOMS`
  atoms, and the cores this process may run on (``os.sched_getaffinity``,
  never more than torch's own default) for larger ones;
* for a compiled evaluation (``compile=True``), one thread under
  :data:`COMPILED_SMALL_SYSTEM_ATOMS`: inductor's generated CPU kernels are
  many short parallel regions, and on a 2-core machine they ran slower on two
  threads than on one for every batch measured (64 ethanols, 576 atoms: 32
  against 20 ms a force call; 512 ethanols, 4,608 atoms: 253 against 217 ms),
  where the eager model gains from the second (41 against 56 ms; 353 against
  529 ms). Larger systems were not measured and keep the rule above.

The calculator applies the size rule whenever it sees a new structure. The
choice is measured in ``benchmarks/threads.py``.
"""

from __future__ import annotations

import os

import torch

#: below this many atoms per model call, the default is a single thread
SMALL_SYSTEM_ATOMS = 500
#: the same for compiled evaluations (just above the largest batch measured, module doc)
COMPILED_SMALL_SYSTEM_ATOMS = 5000

# torch's own choice, read before anyone (a calculator, a test) changes it, so
# that the default does not ratchet down after one calculator asked for 1.
_TORCH_DEFAULT_THREADS = torch.get_num_threads()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _env_threads() -> int | None:
    env = os.environ.get("MLFF_NUM_THREADS")
    if not env:
        return None
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"MLFF_NUM_THREADS must be a positive integer, got {env!r}") from None
    if value < 1:
        raise ValueError(f"MLFF_NUM_THREADS must be a positive integer, got {env!r}")
    return value


def default_threads(n_atoms: int | None = None, compiled: bool = False) -> int:
    """Threads for a model call on ``n_atoms`` atoms (None: size unknown, all cores), eager or
    ``compiled``."""
    env = _env_threads()
    if env is not None:
        return env
    if n_atoms is not None and n_atoms < (COMPILED_SMALL_SYSTEM_ATOMS if compiled else SMALL_SYSTEM_ATOMS):
        return 1
    return max(1, min(_TORCH_DEFAULT_THREADS, available_cores()))


def set_threads(num_threads: int | None = None, n_atoms: int | None = None, compiled: bool = False) -> int:
    """Set torch's intra-op threads (None: :func:`default_threads`); returns the count used."""
    n = default_threads(n_atoms, compiled) if num_threads is None else int(num_threads)
    if n < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
