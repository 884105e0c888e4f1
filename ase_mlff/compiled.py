"""``torch.compile`` of a potential's forward, with an eager fallback.

    evaluator = compiled(model)                    # compiles at the first call
    output = evaluate(evaluator, lambda m: compute(m, batch, neighbors))

The forward (numbers, edge_index, edge_vectors) -> per-atom energies is
compiled with dynamic shapes, so neither the atom count nor the edge count
(which changes during MD) causes a recompilation; autograd through it
(forces, stress) uses the compiled backward.
"""

from __future__ import annotations

import time
import warnings

import torch


class CompiledModel:
    """``torch.compile`` of a potential's forward, with an eager fallback.

    Compilation happens at the first call; its time is kept in ``seconds``.
    If it fails (no C compiler, an unsupported backend) one warning says so
    and the eager model is used from then on: results are never lost to it.
    """

    def __init__(self, model):
        self.model = model
        with warnings.catch_warnings():
            # torch's inductor imports its own deprecated torch.jit helpers (torch 2.13): not ours to fix
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method. is deprecated",
                                    category=DeprecationWarning)
            self.compiled = torch.compile(model, dynamic=True)
        self.ready = False
        self.seconds: float | None = None
        self.failed: str | None = None

    def first_call(self, run):
        start = time.perf_counter()
        try:
            result = run(self)
        except Exception as error:  # compilation errors come in many types
            first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            self.failed = f"{type(error).__name__}: {first}"
            warnings.warn(f"torch.compile is unavailable here ({self.failed}); running the model eagerly",
                          RuntimeWarning, stacklevel=3)
            self.compiled = self.model
            result = run(self.model)
        self.seconds = time.perf_counter() - start
        self.ready = True
        return result

    def __call__(self, *args):
        if self.compiled is self.model:
            return self.model(*args)
        with warnings.catch_warnings():
            # dynamo's tracing reads .grad of the (non-leaf) edge vectors, which torch warns about
            warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf",
                                    category=UserWarning)
            return self.compiled(*args)

    def __getattr__(self, name):  # cutoff, species, ... of the underlying model
        return getattr(self.__dict__["model"], name)


def compiled(model) -> CompiledModel:
    return CompiledModel(model)


def evaluate(evaluator, run):
    """``run(evaluator)``; the first call of a :class:`CompiledModel` is guarded by its fallback."""
    if isinstance(evaluator, CompiledModel) and not evaluator.ready:
        return evaluator.first_call(run)
    return run(evaluator)
