"""The ASE calculator.

    atoms.calc = MLFFCalculator("model.pt")     # path, bundled name, or a Potential
    atoms.get_potential_energy(); atoms.get_forces(); atoms.get_stress()
    calc.calculate_batch([atoms1, atoms2])      # many structures, one model call
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .batch import Batch, atoms_to_batch, dtype_name, resolve_device, resolve_dtype
from .forces import compute
from .io import load_model
from .models import Potential
from .neighbors import NeighborList
from .threads import set_threads


class MLFFCalculator(Calculator):
    """Energy, forces, stress and per-atom energies from a trained potential.

    Args:
        model: path of a model file, name of a bundled potential, or a
            :class:`~ase_mlff.models.Potential` (used as is, moved to ``device``/``dtype``).
        device: "auto" (CUDA when present), "cpu", "cuda", "cuda:N".
        dtype: "float32" or "float64" for the network; energies are summed in float64.
        neighbor_backend: "auto", "torch-cluster" or "torch" (see :mod:`ase_mlff.neighbors`).
        num_threads: torch CPU threads (see :mod:`ase_mlff.threads`).
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress", "energies")

    def __init__(self, model: str | os.PathLike | Potential, device: str = "auto",
                 dtype: str = "float32", neighbor_backend: str = "auto",
                 num_threads: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(model, Potential):
            name = f"<{model.architecture} in memory>"
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
        if self.device.type == "cpu":
            self.num_threads = set_threads(num_threads)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)  # forces need dE/dr, never dE/dweights
        self.neighbor_list = NeighborList(self.model.cutoff, neighbor_backend)
        # JSON-serialisable, so the calculator can be written into .traj files
        self.parameters.update(model=name, device=str(self.device), dtype=dtype_name(self.dtype),
                               neighbor_backend=neighbor_backend)
        self._batch: Batch | None = None

    # -- ASE contract ------------------------------------------------------------
    def calculate(self, atoms: Atoms | None = None, properties=("energy",),
                  system_changes=tuple(all_changes)) -> None:
        super().calculate(atoms, properties, system_changes)
        try:
            self._calculate(self.atoms, properties, system_changes)
        except Exception:
            self.atoms = None  # nothing valid is cached: the next call recomputes
            raise

    def _calculate(self, atoms: Atoms, properties, system_changes) -> None:
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                f"stress needs a cell that is periodic in all three directions, but pbc is "
                f"{atoms.pbc.tolist()}; set atoms.pbc = True with a 3-D cell, or do not ask for stress"
            )
        batch = self._batch_for(atoms, system_changes)
        output = self._evaluate(batch, stress=want_stress)
        energy = float(output.energy[0].detach())
        results = {
            "energy": energy,
            "free_energy": energy,
            "energies": output.energies.detach().cpu().numpy(),
            "forces": output.forces.detach().cpu().numpy().astype(np.float64),
        }
        if want_stress:
            results["stress"] = full_3x3_to_voigt_6_stress(output.stress[0].detach().cpu().numpy())
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
        output = self._evaluate(batch, stress=want_stress)
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
                r["stress"] = full_3x3_to_voigt_6_stress(output.stress[b].detach().cpu().numpy())
            results.append(r)
        return results

    # -- internals ---------------------------------------------------------------
    def _make_batch(self, structures: Atoms | Sequence[Atoms]) -> Batch:
        batch = atoms_to_batch(structures, dtype=self.dtype, device=self.device)
        self.model.check_numbers(torch.unique(batch.numbers).tolist())
        return batch

    def _batch_for(self, atoms: Atoms, system_changes) -> Batch:
        # In MD only positions change: reuse numbers, cell and system index.
        if self._batch is not None and set(system_changes) <= {"positions"}:
            positions = torch.from_numpy(atoms.positions).to(device=self.device, dtype=self.dtype)
            self._batch = self._batch.replace(positions=positions)
        else:
            self._batch = self._make_batch(atoms)
        return self._batch

    def _evaluate(self, batch: Batch, stress: bool):
        neighbors = self.neighbor_list(batch)
        return compute(self.model, batch, neighbors, forces=True, stress=stress)
