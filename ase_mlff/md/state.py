"""The batched MD state: many systems as flat float64 tensors on one device.

Positions and momenta are integrated in float64 whatever the network's
dtype (the network sees float32 edge vectors if it runs in float32; see
:mod:`ase_mlff.forces`). Units are ASE's: Å, amu, eV and ASE time, so that
``p += dt·F`` and ``r += dt·p/m`` need no conversion factors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from ase import Atoms

from .. import units
from ..batch import Batch, atoms_to_batch


@dataclass
class MDState:
    """Many systems advancing together.

    Attributes:
        positions: [N, 3] Å, float64, unwrapped.
        momenta: [N, 3] amu·Å/ASE-time, float64 (zero on fixed atoms).
        masses: [N] amu, float64.
        numbers: [N] int64.
        cell: [B, 3, 3] Å, float64. pbc: [B, 3] bool.
        system: [N] int64, index (0..B-1) of each atom's system, sorted.
        n_atoms: [B] int64.
        free: [N] bool, False for atoms held by ``FixAtoms``.
        dof: [B] float64, degrees of freedom counted by the temperature.
        seeds: [B] int64, each system's noise seed (see :mod:`.noise`).
        system_id: [B] int64, index of the system in the run (kept when others stop).
        forces: [N, 3] eV/Å, float64. energy: [B] eV, float64 (at ``positions``).
        stress: [B, 3, 3] eV/Å³, float64, ASE sign (at ``positions``; NPT only, else None).
        step: steps done.
        thermostat: per-ensemble tensors ([B, ...]) that a restart must restore.
    """

    positions: torch.Tensor
    momenta: torch.Tensor
    masses: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    system: torch.Tensor
    n_atoms: torch.Tensor
    free: torch.Tensor
    dof: torch.Tensor
    seeds: torch.Tensor
    system_id: torch.Tensor
    forces: torch.Tensor | None = None
    energy: torch.Tensor | None = None
    stress: torch.Tensor | None = None
    step: int = 0
    thermostat: dict = field(default_factory=dict)

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    def batch(self) -> Batch:
        """The geometry as the model stages take it (float64 positions and cell)."""
        return Batch(positions=self.positions, numbers=self.numbers, cell=self.cell, pbc=self.pbc,
                     system=self.system, n_atoms=self.n_atoms)

    def local_index(self) -> torch.Tensor:
        """[N] index of each atom within its system."""
        first = torch.cumsum(self.n_atoms, 0) - self.n_atoms
        return torch.arange(self.positions.shape[0], device=self.device) - first[self.system]

    def select(self, keep: torch.Tensor) -> MDState:
        """The state of the systems ``keep`` ([K] indices into 0..B-1), renumbered 0..K-1."""
        atom_mask = torch.isin(self.system, keep)
        renumber = torch.full((self.n_systems,), -1, dtype=torch.int64, device=self.device)
        renumber[keep] = torch.arange(len(keep), device=self.device)
        per_atom = {name: getattr(self, name)[atom_mask]
                    for name in ("positions", "momenta", "masses", "numbers", "free")}
        return MDState(
            **per_atom, cell=self.cell[keep], pbc=self.pbc[keep], system=renumber[self.system[atom_mask]],
            n_atoms=self.n_atoms[keep], dof=self.dof[keep], seeds=self.seeds[keep],
            system_id=self.system_id[keep],
            forces=None if self.forces is None else self.forces[atom_mask],
            energy=None if self.energy is None else self.energy[keep],
            stress=None if self.stress is None else self.stress[keep], step=self.step,
            # Bussi's noise index is per degree of freedom, not per system: rebuilt on use
            thermostat={k: v[keep] for k, v in self.thermostat.items() if not k.startswith("noise_")})


def kinetic_energy(state: MDState, momenta: torch.Tensor | None = None) -> torch.Tensor:
    """[B] eV: Σ p²/2m per system (of ``momenta``, default the state's)."""
    momenta = state.momenta if momenta is None else momenta
    per_atom = 0.5 * (momenta.square().sum(1) / state.masses)
    return torch.zeros_like(state.dof).index_add_(0, state.system, per_atom)


def max_radius(state: MDState) -> torch.Tensor:
    """[B] Å, the largest distance of an atom from its system's centre of mass."""
    m = state.masses.unsqueeze(1)
    mass = torch.zeros_like(state.dof).index_add_(0, state.system, state.masses)
    com = torch.zeros_like(state.cell[:, 0]).index_add_(0, state.system, m * state.positions) / mass.unsqueeze(1)
    r = torch.linalg.vector_norm(state.positions - com[state.system], dim=1)
    return torch.zeros_like(mass).scatter_reduce_(0, state.system, r, "amax", include_self=False)


def temperature(state: MDState, kinetic: torch.Tensor | None = None) -> torch.Tensor:
    """[B] K: 2 E_kin / (n_dof k_B)."""
    kinetic = kinetic_energy(state) if kinetic is None else kinetic
    return 2.0 * kinetic / (state.dof.clamp(min=1.0) * units.kB)


def fixed_atoms(atoms: Atoms, label: str) -> np.ndarray:
    """Indices held by ``FixAtoms``; any other constraint is refused."""
    from ase.constraints import FixAtoms

    fixed = []
    for constraint in atoms.constraints:
        if not isinstance(constraint, FixAtoms):
            where = f"{label}: " if label else ""
            raise ValueError(f"{where}the constraint {type(constraint).__name__} is not supported by "
                             "mlff-md (only FixAtoms is); remove it or run with ASE's integrators")
        fixed.extend(int(i) for i in constraint.get_indices())
    return np.array(sorted(set(fixed)), dtype=np.int64)


def count_dof(n_free: int, n_atoms: int, periodic: bool, zero_momentum: bool,
              zero_rotation: bool) -> float:
    """Degrees of freedom of one system's kinetic energy.

    3 per free atom, less 3 when the total momentum is zero and stays zero
    (no fixed atom, a momentum-conserving integrator) and less 3 when a
    molecule's angular momentum is zero and stays zero. A Langevin
    thermostat conserves neither, so it counts 3 per free atom.
    """
    dof = 3 * n_free
    if zero_momentum and n_free == n_atoms and n_atoms > 1:
        dof -= 3
        if zero_rotation and not periodic:
            dof -= 3
    return float(max(dof, 1))


def state_from_atoms(structures: Sequence[Atoms], device: torch.device, seeds: Sequence[int],
                     labels: Sequence[str] | None = None) -> MDState:
    """An MDState at rest (zero momenta, dof = 3 per free atom) for the structures.

    Masses are the structures' own (isotopes are honoured); ``FixAtoms``
    holds atoms in place; velocities are set by :mod:`.velocities`.
    """
    labels = list(labels) if labels is not None else [f"structure {k}" for k in range(len(structures))]
    batch = atoms_to_batch(list(structures), dtype=torch.float64, device=device)
    masses = np.concatenate([a.get_masses() for a in structures])
    if not (np.isfinite(masses).all() and (masses > 0).all()):
        k = int(np.flatnonzero(~(masses > 0))[0])
        raise ValueError(f"atom {k} of the input has mass {masses[k]}; masses must be positive (amu)")
    free = np.ones(len(masses), dtype=bool)
    offset = 0
    dof = []
    for atoms, label in zip(structures, labels):
        fixed = fixed_atoms(atoms, label)
        free[offset + fixed] = False
        dof.append(float(max(3 * (len(atoms) - len(fixed)), 1)))
        offset += len(atoms)
    n = batch.positions.shape[0]
    return MDState(
        positions=batch.positions.clone(), momenta=torch.zeros((n, 3), dtype=torch.float64, device=device),
        masses=torch.from_numpy(masses).to(device), numbers=batch.numbers, cell=batch.cell, pbc=batch.pbc,
        system=batch.system, n_atoms=batch.n_atoms, free=torch.from_numpy(free).to(device),
        dof=torch.tensor(dof, dtype=torch.float64, device=device),
        seeds=torch.tensor(list(seeds), dtype=torch.int64, device=device),
        system_id=torch.arange(len(structures), device=device))
