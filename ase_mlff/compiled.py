"""``torch.compile`` of a potential's energy *and* its derivatives, with an eager fallback.

    evaluator = compiled(model)            # compiles at the first call
    output = compute(evaluator, batch, neighbors, forces=True, stress=...)

:func:`ase_mlff.forces.compute` hands a :class:`CompiledModel` the whole
evaluation: edge vectors r_j − r_i + S·cell from the positions (and the
strain), the cast to the network's dtype, the network, the sum per system,
and F = −∂E/∂r, σ = (∂E/∂ε)/V by ``torch.func.grad``, all one graph. Compiling
only the network's forward (what this module did first) left about thirty
small eager operations and the autograd engine around it per call: for a
small molecule they cost as much as the compiled network itself.

Shapes are dynamic, so neither the atom count nor the edge count (which
changes during MD) recompiles. One graph is compiled per kind of call
(forces, stress, periodic or not, dtype), each at its first use; its time
is kept (``seconds``: the first). Where compilation fails (no C compiler, an
unsupported backend) one warning says so and that call, and every later
one, runs eagerly: results are never lost to it. Training (derivatives
that must themselves be differentiable) always runs eagerly.
"""

from __future__ import annotations

import time
import warnings

import torch

from .forces import Output, energy, output
from .neighbors import Neighbors


def _function(model, forces: bool, stress: bool, periodic: bool, dtype: torch.dtype, half: bool = False):
    """(positions, cell, system, numbers, edge_index, shifts) -> (E, E_i, ∂E/∂r or None, ∂E/∂ε or None)."""

    def evaluate(positions, cell, system, numbers, edge_index, shifts):
        neighbors = Neighbors(edge_index, shifts, periodic, half=half)

        def total(r, strain):  # the scalar torch.func differentiates, with E and E_i alongside
            e, e_i = energy(model, r, cell, strain, system, numbers, neighbors, dtype)
            # Σ_i E_i (= Σ_b E_b): its gradient starts from ones over the atoms, not from a per-system
            # gradient gathered back by system index (which AOTInductor sized with the traced system count)
            return e_i.sum(), (e, e_i)

        strain = torch.zeros_like(cell) if stress else None
        if not (forces or stress):
            return *total(positions, strain)[1], None, None
        argnums = (0, 1) if forces and stress else 0 if forces else 1
        grads, (e, e_i) = torch.func.grad(total, argnums=argnums, has_aux=True)(positions, strain)
        if forces and stress:
            return e, e_i, grads[0], grads[1]
        return (e, e_i, grads, None) if forces else (e, e_i, None, grads)

    return evaluate


class CompiledModel:
    """A potential whose evaluation :func:`~ase_mlff.forces.compute` runs compiled (module doc).

    Calling it runs the eager network; ``fused`` is the compiled evaluation (None once
    compilation has failed). Other attributes (cutoff, species, ...) are the model's.
    """

    def __init__(self, model):
        self.model = model
        self._graphs: dict[tuple, object] = {}  # torch.compile'd evaluations, by kind of call
        self._packages: dict[tuple, object] = {}  # ahead-of-time packages (or None), by kind of call
        self.seconds: float | None = None  # of the first compilation, once done
        self.failed: str | None = None

    @property
    def ready(self) -> bool:
        """Whether the first compilation has happened (or failed): later calls are fast."""
        return self.seconds is not None or self.failed is not None

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def fused(self, batch, neighbors: Neighbors, *, forces: bool, stress: bool, dtype: torch.dtype) -> Output:
        key = (bool(forces), bool(stress), bool(neighbors.periodic), dtype, bool(neighbors.half))
        args = (batch.positions, batch.cell, batch.system, batch.numbers, neighbors.edge_index, neighbors.shifts)
        start = time.perf_counter()  # the first compilation imports the compiler: counted too
        pairwise = self._pairwise(neighbors.edge_index.shape[1])
        # one package per size branch of the model and per thread count (ase_mlff.aot)
        package_key = (*key, pairwise, torch.get_num_threads())
        if package_key not in self._packages:  # an ahead-of-time package, on the CPU (ase_mlff.aot)
            from . import aot

            if aot.traceable(args):
                self._packages[package_key] = aot.load_or_build(self.model, key, args, pairwise)
        package = self._packages.get(package_key)
        if package is not None:
            try:
                with torch.no_grad():
                    results = package(*args)
            except Exception:  # sizes or inputs the package cannot take: torch.compile from now on
                results = self._packages[package_key] = None
            if results is not None:
                if self.seconds is None:
                    self.seconds = time.perf_counter() - start
                return output(batch, *results)
        graph = self._graphs.get(key)
        first = graph is None
        if first:
            with warnings.catch_warnings():
                # torch's inductor imports its own deprecated torch.jit helpers (torch 2.13): not ours to fix
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method. is deprecated",
                                        category=DeprecationWarning)
                graph = self._graphs[key] = torch.compile(_function(self.model, *key), dynamic=True)
        try:
            # the pair-wise branch of SchNet and PaiNN selects one edge per pair (a nonzero, whose size
            # depends on the data): traced as such instead of a graph break that left torch.func.grad,
            # and the whole evaluation, to run eagerly (slower than the eager path itself)
            # (no_grad: torch.func.grad differentiates inside)
            with torch.no_grad(), warnings.catch_warnings(), \
                    torch._dynamo.config.patch(capture_dynamic_output_shape_ops=True):
                # dynamo's tracing reads .grad of non-leaf tensors, which torch warns about
                warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf",
                                        category=UserWarning)
                results = graph(*args)
        except Exception as error:  # compilation errors come in many types
            if not first:
                raise
            return self._fall_back(error, batch, neighbors, forces, stress, dtype)
        if first and self.seconds is None:
            self.seconds = time.perf_counter() - start
        return output(batch, *results)

    def _pairwise(self, n_edges: int) -> bool | None:
        """The model's size branch for this many edges (None: it has none)."""
        if getattr(self.model, "pairwise_min_edges", None) is None:
            return None
        return self.model.pairwise(n_edges)

    def _fall_back(self, error, batch, neighbors, forces, stress, dtype) -> Output:
        from .forces import compute

        self.failed = summary(error)
        warnings.warn(f"torch.compile is unavailable here ({self.failed}); running the model eagerly",
                      RuntimeWarning, stacklevel=4)
        self.fused = None  # compute() then evaluates this object eagerly, i.e. the model
        return compute(self, batch, neighbors, forces=forces, stress=stress, dtype=dtype)

    def __getattr__(self, name):  # cutoff, species, parameters(), ... of the underlying model
        return getattr(self.__dict__["model"], name)


def summary(error: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of a compilation error (they come in many types, some with pages of text)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]
    return f"{type(error).__name__}: {line}"


def compiled(model) -> CompiledModel:
    return CompiledModel(model)
