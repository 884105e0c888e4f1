"""Ahead-of-time compiled evaluations (AOTInductor packages), kept on disk between processes.

``torch.compile`` traces the model again in every new process (several
seconds even when inductor's cache holds the compiled kernels). For the CPU,
:class:`~ase_mlff.compiled.CompiledModel` therefore first asks this module for a
package of the same one-graph evaluation (:func:`ase_mlff.compiled._function`):

1. trace it to an aten graph with symbolic sizes (``make_fx``), the model's
   parameters and buffers passed in as inputs (``torch.func.functional_call``),
   so that the package holds the computation, not the weights;
2. ``torch.export`` that graph with dynamic atom, edge and system counts;
3. compile it with AOTInductor into ``<cache>/<key>.pt2``.

The key hashes what the graph depends on: the torch and ase-mlff versions, the
source of the modules that define the computation, the model's class,
module tree and hyperparameters, the names, shapes and dtypes of its tensors,
the kind of call (forces, stress, periodic, dtype, half list), the model's size branch,
the device type and torch's thread count (inductor's CPU kernels are
generated for the count at their build: a package built with two threads,
run on one core, was 3× slower than the eager model). A later
process with the same key loads the package in milliseconds. A new package is
checked against the eager evaluation on the batch that built it (it was traced
on two copies of that batch, so at other sizes). Where a model cannot be
exported this way, or its package disagrees, a ``<key>.failed`` note keeps the
reason and :class:`CompiledModel` uses ``torch.compile``, quietly: both give
the same results. A size-dependent branch of a model (SchNet's and PaiNN's pair-wise
filters from 1,024 edges, ``Potential.pairwise``) is fixed in a traced graph,
so each branch has its own package, traced on that branch and keyed by it: a
cache filled by one small molecule does not slow down a later batch of 64
(it did, by 1.4×, while one package served both).

The cache is ``$MLFF_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/ase-mlff/aoti``, else
``~/.cache/ase-mlff/aoti``; ``MLFF_COMPILE_CACHE=off`` switches packages off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

#: modules whose source defines the packaged computation (a change makes a new key)
_SOURCES = ("aot.py", "compiled.py", "forces.py", "neighbors.py", "models")
_MIN_ATOMS, _MIN_EDGES = 2, 2  # smaller calls (a lone atom, no pairs) go to torch.compile


def cache_dir() -> Path | None:
    """Where packages live (module doc); None when switched off."""
    setting = os.environ.get("MLFF_COMPILE_CACHE")
    if setting is not None:
        return None if setting.strip().lower() in ("", "0", "off", "no", "false") else Path(setting)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ase-mlff" / "aoti"


def _source_hash() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in _SOURCES:
        path = root / name
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(file.name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


_SOURCE_HASH = _source_hash()  # of the code this process runs (read at import, not at each key)


def _state(model) -> tuple[list[str], list[torch.Tensor]]:
    named = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, _ in named], [tensor for _, tensor in named]


def key(model, kind: tuple, device: torch.device, pairwise: bool | None = None) -> str:
    from ._version import __version__

    names, tensors = _state(model)
    hyper = model.hyperparameters() if hasattr(model, "hyperparameters") else None
    record = {"torch": torch.__version__, "ase_mlff": __version__, "source": _SOURCE_HASH,
              "class": f"{type(model).__module__}.{type(model).__qualname__}", "modules": repr(model),
              "hyperparameters": json.dumps(hyper, sort_keys=True, default=str),
              "tensors": [(n, list(t.shape), str(t.dtype)) for n, t in zip(names, tensors)],
              "kind": [str(k) for k in kind], "pairwise": pairwise, "device": device.type,
              # inductor writes the thread count into the CPU kernels it generates (a package built
              # with 2 threads ran 3x slower than eager on 1 core): one package per count
              "threads": torch.get_num_threads() if device.type == "cpu" else None}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


class Package:
    """A loaded package: call it with the evaluation's inputs; None for sizes it was not built for."""

    def __init__(self, runner, tensors: list[torch.Tensor], kind: tuple):
        self.runner, self.tensors = runner, tensors
        self.forces, self.stress = kind[0], kind[1]

    def __call__(self, positions, cell, system, numbers, edge_index, shifts):
        if positions.shape[0] < _MIN_ATOMS or edge_index.shape[1] < _MIN_EDGES:
            return None
        energy, energies, d_positions, d_strain = self.runner(self.tensors, positions, cell, system, numbers,
                                                              edge_index, shifts)
        return energy, energies, d_positions if self.forces else None, d_strain if self.stress else None


def traceable(args: tuple) -> bool:
    """Whether a batch can seed a package: two copies of it must reach the smallest sizes exported
    (a lone atom or a batch without pairs is answered by torch.compile, and the package waits for a
    later batch instead of being marked as failed for good)."""
    positions, edge_index = args[0], args[4]
    return 2 * positions.shape[0] >= _MIN_ATOMS and 2 * edge_index.shape[1] >= _MIN_EDGES


def load_or_build(model, kind: tuple, args: tuple, pairwise: bool | None = None) -> Package | None:
    """The package for ``model``, this kind of call and the model's size branch (module doc), built from
    ``args`` if new; None where packages are off, not possible for this model, or failed to build (the
    reason kept on disk).

    Args:
        pairwise: the branch of the model's :meth:`~ase_mlff.models.base.Potential.pairwise` that
            ``args`` take (None: a model without one); the package is traced on it and keyed by it.
    """
    folder = cache_dir()
    device = args[0].device
    if folder is None or device.type != "cpu":  # CUDA packages: not yet run anywhere, so not offered
        return None
    name = key(model, kind, device, pairwise)
    path, failed = folder / f"{name}.pt2", folder / f"{name}.failed"
    if failed.exists():
        return None
    names, tensors = _state(model)
    built = not path.exists()
    if built:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with warnings.catch_warnings():  # tracing and inductor's own deprecation notices: not the user's
                warnings.simplefilter("ignore")
                _build(model, kind, args, names, tensors, path, pairwise)
        except Exception as error:  # tracing and export fail in many ways; torch.compile takes over
            from .compiled import summary

            _note(failed, summary(error, 300))
            return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            package = Package(torch._inductor.aoti_load_package(str(path)), tensors, kind)
    except Exception:  # a damaged or foreign file: rebuilt next time
        path.unlink(missing_ok=True)
        return None
    if built:  # the package must give what the eager evaluation gives, at sizes it was not traced at
        problem = _disagreement(model, kind, args, package)
        if problem:
            path.unlink(missing_ok=True)
            _note(failed, problem)
            return None
    return package


def _disagreement(model, kind: tuple, args: tuple, package: Package) -> str | None:
    """Why the package's results differ from the eager evaluation's on ``args`` (None: they agree to
    rounding of the network's dtype)."""
    from .compiled import _function

    ours = package(*args)
    if ours is None:
        return None  # too small to check here; such calls never reach the package
    with torch.enable_grad():
        reference = _function(model, *kind)(*args)
    eps = torch.finfo(kind[3]).eps
    for name, a, b in zip(("energy", "energies", "dE/dr", "dE/dstrain"), ours, reference):
        if (a is None) != (b is None) or (a is not None and (
                a.shape != b.shape or not torch.allclose(a, b.detach(), rtol=1e3 * eps, atol=1e3 * eps))):
            return f"package check: {name} differs from the eager evaluation"
    return None


def _note(failed: Path, reason: str) -> None:
    try:
        failed.write_text(reason + "\n")
    except OSError:
        pass


def _doubled(args: tuple) -> tuple:
    """The inputs of two copies of the batch: every size at least 2 and distinct from the others, so that
    tracing specialises none of them."""
    positions, cell, system, numbers, edge_index, shifts = args
    n_atoms, n_systems = positions.shape[0], cell.shape[0]
    return (torch.cat([positions, positions]), torch.cat([cell, cell]), torch.cat([system, system + n_systems]),
            torch.cat([numbers, numbers]), torch.cat([edge_index, edge_index + n_atoms], 1),
            torch.cat([shifts, shifts]))


def _build(model, kind: tuple, args: tuple, names: list[str], tensors: list[torch.Tensor], path: Path,
           pairwise: bool | None) -> None:
    from torch.fx.experimental.proxy_tensor import make_fx

    from .compiled import _function

    def network(numbers, edge_index, vectors, **half):
        return torch.func.functional_call(model, dict(zip(names, state)), (numbers, edge_index, vectors), half)

    def evaluate(state_, *inputs):
        nonlocal state
        state = state_
        e, e_i, d_positions, d_strain = _function(network, *kind)(*inputs)
        none = e.new_zeros(0)  # AOTInductor returns tensors only; shapes [0] stand for "not computed"
        return e, e_i, none if d_positions is None else d_positions, none if d_strain is None else d_strain

    state = tensors
    example = _doubled(args)
    # traced on the branch of ``args``, not the one two copies of them would take
    pin = model.pinned(pairwise) if pairwise is not None else contextlib.nullcontext()
    with torch.no_grad(), pin:
        graph = make_fx(evaluate, tracing_mode="symbolic")(tensors, *example)

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.graph_module = graph

        def forward(self, state_, positions, cell, system, numbers, edge_index, shifts):
            return self.graph_module(state_, positions, cell, system, numbers, edge_index, shifts)

    atoms = torch.export.Dim("atoms", min=_MIN_ATOMS)
    edges = torch.export.Dim("edges", min=_MIN_EDGES)
    systems = torch.export.Dim("systems", min=1)
    dynamic = ([None] * len(tensors), {0: atoms}, {0: systems}, {0: atoms}, {0: atoms}, {1: edges}, {0: edges})
    program = torch.export.export(Exported(), (tensors, *example), dynamic_shapes=dynamic, strict=False)
    with tempfile.TemporaryDirectory(dir=path.parent) as work:  # atomic: a half-written package never shows
        built = Path(work) / path.name
        torch._inductor.aoti_compile_and_package(program, package_path=str(built))
        os.replace(built, path)
