"""The ASE calculator.

    atoms.calc = MLFFCalculator("model.pt")     # path, bundled name, or a Potential
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    calc.calculate_batch([atoms1, atoms2])      # many structures, one model call
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .batch import Batch, atoms_to_batch, check_positions, dtype_name, resolve_device, resolve_dtype
from .compiled import compiled
from .compositions import (
    EnergyOnlyWarning,
    OutOfTrainingWarning,
    composition,
    energy_only,
    energy_only_message,
    out_of_training_message,
    training_compositions,
)
from .forces import compute
from .io import load_model
from .models import Potential
from .neighbors import NeighborList
from .skin_lists import BatchedNeighbors
from .threads import set_threads


class MLFFCalculator(Calculator):
    """Energy, forces, stress and per-atom energies from a trained potential.

    Args:
        model: path of a model file, name of a bundled potential, or a
            :class:`~ase_mlff.models.Potential` (used as is, moved to ``device``/``dtype``).
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
        dtype: "float32" or "float64" for the network; positions, cell and edge
            vectors are formed in float64 (so a float32 network loses nothing far
            from the origin), energies are summed and forces returned in float64.
        neighbor_backend: "auto", "torch-cluster" or "torch" (see :mod:`ase_mlff.neighbors`).
        num_threads: torch CPU threads (see :mod:`ase_mlff.threads`).
        compile: evaluate the network under ``torch.compile`` (dynamic atom and
            edge counts; compiled at the first call, eager with one warning where
            compilation is unavailable; see :mod:`ase_mlff.compiled`).
        skin: Å. Between calls the neighbor list (built at cutoff + skin) is
            reused while it still holds every pair within the cutoff: no atom
            moved more than skin/2, or, once the cell changes between calls (a
            cell filter), the rule of :mod:`ase_mlff.skin_lists` for deforming
            cells. Exact by construction; 0 rebuilds it on every call.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "energies")

    def __init__(self, model: str | os.PathLike | Potential, device: str = "auto",
                 dtype: str = "float32", neighbor_backend: str = "auto",
                 num_threads: int | None = None, skin: float = 1.0, compile: bool = False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, Potential):
            name = f"<{model.architecture} in memory>"
            # a private copy: moving it to this calculator's dtype/device and
            # freezing its weights must not change the caller's model (or a
            # second calculator built from it, e.g. one float32 and one float64)
            model = copy.deepcopy(model)
        elif isinstance(model, (str, os.PathLike)):
            name = str(model)
            model = load_model(model)
        else:
            raise TypeError(
                f"model must be a path, a bundled potential name or an ase_mlff Potential, "
                f"got {type(model).__name__}"
            )
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.num_threads = None  # CUDA: torch's CPU pool is not ours to size
        if self.device.type == "cpu":
            self.num_threads = set_threads(num_threads)
        self._requested_threads = num_threads
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # forces need dE/dr, never dE/dweights
        self.compile = bool(compile)
        self.evaluator = compiled(self.model) if self.compile else self.model
        self.neighbor_list = NeighborList(self.model.cutoff, neighbor_backend)
        self._skin_list = BatchedNeighbors.for_model(self.model, skin, neighbor_backend)  # checks skin >= 0
        # JSON-serialisable, so the calculator can be written into .traj files
        self.parameters.update(model=name, device=str(self.device), dtype=dtype_name(self.dtype),
                               neighbor_backend=neighbor_backend, skin=float(skin), compile=self.compile)
        self._batch: Batch | None = None
        self._state: Atoms | None = None  # private copy of the last atoms computed
        # out-of-training warnings: None when the model does not record its training compositions
        self._trained_on = training_compositions(getattr(self.model, "metadata", None))
        self._model_label = Path(getattr(self.model, "source", None) or name).stem
        self._warned: set[str] = set()
        # energy-only model: one EnergyOnlyWarning at the first structure
        self._warn_energy_only = energy_only(getattr(self.model, "metadata", None))
        self._checked_numbers: np.ndarray | None = None

    # -- ASE contract ------------------------------------------------------------
    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, among what the model depends on.

        Exact comparisons of positions, numbers, cell and pbc: ASE's
        ``compare_atoms`` also checks magnetic moments and charges, which no
        model here reads, and its tolerant ``isclose`` calls were a tenth of
        the cost of an MD step on a small molecule. Exact equality can only
        cause a recomputation, never a stale result.
        """
        old = self.atoms
        if old is None or len(old) != len(atoms):
            return list(all_changes)
        changes = []
        if not np.array_equal(old.arrays["positions"], atoms.arrays["positions"]):
            changes.append("positions")
        if not np.array_equal(old.arrays["numbers"], atoms.arrays["numbers"]):
            changes.append("numbers")
        if not np.array_equal(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=tuple(all_changes)) -> None:
        # No call to Calculator.calculate: it would copy the whole Atoms and
        # stat a working directory that this in-process calculator never uses.
        # ASE's get_property sets self.atoms to None before calling us whenever
        # anything changed, so the copy we keep lives in self._state: in MD,
        # where only positions change, it is updated in place instead of
        # copying the whole Atoms every step.
        if atoms is not None:
            state = self._state
            if (state is not None and list(system_changes) == ["positions"]
                    and len(state) == len(atoms)):
                state.arrays["positions"][:] = atoms.arrays["positions"]
            else:
                state = self._state = atoms.copy()
            self.atoms = state
        try:
            self._calculate(self.atoms, properties, system_changes)
        except Exception:
            self.atoms = self._state = None  # nothing valid is cached: the next call recomputes
            raise

    def _calculate(self, atoms: Atoms, properties, system_changes) -> None:
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a cell that is periodic in all three directions, but pbc is "
                f"{atoms.pbc.tolist()}; set atoms.pbc = True with a 3-D cell, or do not ask for stress"
            )
        batch = self._batch_for(atoms, system_changes)
        neighbors = self._skin_list(batch)
        output = compute(self.evaluator, batch, neighbors, forces=True, stress=want_stress, dtype=self.dtype)
        energy = float(output.energy[0].detach())
        results = {
            "energy": energy,
            "free_energy": energy,
            "energies": output.energies.detach().cpu().numpy(),
            "forces": output.forces.detach().cpu().numpy().astype(np.float64),
        }
        if want_stress:
            results["stress"] = full_3x3_to_voigt_6_stress(output.stress[0].detach().cpu().numpy()).astype(np.float64)
        self.results = results  # replaced whole, never merged with stale values

    def calculate_batch(self, structures: Sequence[Atoms],
                        properties: Sequence[str] = ("energy", "forces")) -> list[dict]:
        """Evaluate many structures in one model call.

        Returns one dict per structure with "energy", "free_energy", "energies",
        "forces" and, when asked for (every structure 3-D periodic), "stress".
        """
        structures = list(structures)
        unknown = set(properties) - set(self.implemented_properties)
        if unknown:
            raise ValueError(f"unknown properties {sorted(unknown)}; valid: {self.implemented_properties}")
        want_stress = "stress" in properties
        if want_stress:
            open_ = [k for k, a in enumerate(structures) if not a.pbc.all()]
            if open_:
                raise PropertyNotImplementedError(
                    f"stress needs 3-D periodic cells; structures {open_[:10]} are not periodic in "
                    "all directions: drop 'stress' from properties or give them cells"
                )
        batch = self._make_batch(structures)
        neighbors = self.neighbor_list(batch)
        output = compute(self.evaluator, batch, neighbors, forces=True, stress=want_stress, dtype=self.dtype)
        energy = output.energy.detach().cpu().numpy()
        energies = output.energies.detach().cpu().numpy()
        forces = output.forces.detach().cpu().numpy().astype(np.float64)
        bounds = np.cumsum([0] + [len(a) for a in structures])
        results = []
        for b in range(len(structures)):
            lo, hi = bounds[b], bounds[b + 1]
            r = {"energy": float(energy[b]), "free_energy": float(energy[b]),
                 "energies": energies[lo:hi], "forces": forces[lo:hi]}
            if want_stress:
                r["stress"] = full_3x3_to_voigt_6_stress(output.stress[b].detach().cpu().numpy()).astype(np.float64)
            results.append(r)
        return results

    def warn_outside_training(self, atoms: Atoms) -> None:
        """Warn (:class:`~ase_mlff.compositions.OutOfTrainingWarning`) if ``atoms``' composition
        was never in the model's training data: once per composition and calculator.

        Models that do not record their training compositions never warn. The
        calculator calls this itself whenever the atomic numbers change, so
        MD steps (where only positions change) never pay for it.

        An energy-only model (:func:`~ase_mlff.compositions.energy_only`) warns once,
        at the first structure, with :class:`~ase_mlff.compositions.EnergyOnlyWarning`.
        """
        if self._warn_energy_only:
            self._warn_energy_only = False
            warnings.warn(energy_only_message(self._model_label), EnergyOnlyWarning, stacklevel=2)
        if self._trained_on is None:
            return
        numbers = atoms.numbers
        last = self._checked_numbers
        if last is not None and last.shape == numbers.shape and np.array_equal(last, numbers):
            return
        self._checked_numbers = numbers.copy()
        found = composition(atoms)
        if found not in self._trained_on and found not in self._warned:
            self._warned.add(found)
            warnings.warn(out_of_training_message(self._model_label, self._trained_on, found),
                          OutOfTrainingWarning, stacklevel=2)

    # -- internals ---------------------------------------------------------------
    def _make_batch(self, structures: Atoms | Sequence[Atoms]) -> Batch:
        for atoms in [structures] if isinstance(structures, Atoms) else structures:
            self.warn_outside_training(atoms)
        # float64 whatever self.dtype: see ase_mlff.batch (compute rounds the edge vectors only)
        batch = atoms_to_batch(structures, dtype=torch.float64, device=self.device)
        self.model.check_numbers(torch.unique(batch.numbers).tolist())
        if self.device.type == "cpu":  # size-aware default: see ase_mlff.threads
            self.num_threads = set_threads(self._requested_threads, n_atoms=batch.positions.shape[0],
                                           compiled=self.compile)
        return batch

    def _batch_for(self, atoms: Atoms, system_changes) -> Batch:
        # In MD only positions change: reuse numbers, cell and system index.
        changes = set(system_changes)
        if self._batch is not None and changes <= {"positions"}:
            check_positions(atoms.positions, atoms.numbers)  # atoms_to_batch is skipped here
            positions = torch.from_numpy(atoms.positions).to(device=self.device, dtype=torch.float64)
            self._batch = self._batch.replace(positions=positions)
            return self._batch
        # the skin list depends on positions, cell and pbc only (not the numbers); it
        # forgets itself when the atom count changes
        if self._batch is None or changes - {"positions", "numbers", "cell"}:
            self._skin_list.reset()
        elif "cell" in changes:  # a cell filter: from now on the list follows the cell's deformation
            self._skin_list.follow_deformation()
        self._batch = self._make_batch(atoms)
        return self._batch
