"""Relax many structures in one batch: FIRE on positions and, with ``cell=True``, the Fréchet cell filter.

    from ase_mlff.optimize import relax
    results = relax([atoms1, atoms2], "model.pt", fmax=0.01, cell=True, pressure_bar=0.0)
    results[0].atoms, results[0].converged, results[0].steps, results[0].fmax

Per step, every structure still relaxing goes through one
:func:`ase_mlff.forces.compute` call (energy, forces and, for cells,
stress), with per-system Verlet-skin neighbor lists that stay exact while
the cells deform (:mod:`.neighbors`; the calculator's ``skin``). Then each
structure is checked on its own: converged or out of steps, it stops and
leaves the batch; the rest take one batched FIRE step
(:mod:`.fire`) on their positions, or on the filter's coordinates
(:mod:`.cellfilter`). Geometry is float64 on the calculator's device; the
network runs in the calculator's dtype.

Step counting and the convergence test are ASE's (``Optimizer.irun``): the
structure is evaluated, tested (max row norm of the forces, or of the
filter's generalised forces, strictly below ``fmax``), and stepped; ``steps``
is the number of FIRE steps taken, at most ``steps``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase import units as ase_units
from ase.constraints import FixAtoms
from ase.stress import full_3x3_to_voigt_6_stress

from ..batch import Batch, atoms_to_batch
from ..forces import compute
from ..neighbors import NeighborList
from .cellfilter import deformation, deformed, filter_forces, largest_row_norm
from .fire import FireParameters, fire_state, fire_step
from .neighbors import SkinNeighbors
from .output import Trajectories, check_free, trajectory_paths

__all__ = ["RelaxResult", "relax"]


@dataclass
class RelaxResult:
    """Outcome for one structure.

    Attributes:
        atoms: a relaxed copy of the input (info, constraints kept) with the final energy, forces
            and (3-D periodic cells) stress in a ``SinglePointCalculator``; ``info["converged"]``
            and ``info["relax_steps"]``, ``["relax_fmax"]`` (and ``["relax_smax"]``) say how it ended.
        converged: whether the criterion was met within ``steps``.
        steps: FIRE steps taken.
        fmax: final value of the convergence criterion, eV/Å: max |F_i| over atoms; with
            ``cell=True`` ASE's ``FrechetCellFilter`` criterion, the largest row of
            [F_i·F_def; cell forces / n_atoms], which is what ``fmax`` is compared with.
        smax: final max |σ − σ_target| over the stress components, eV/Å³ (σ_target = −p I);
            None without ``cell``.
        energy: final potential energy, eV (without the pV term).
        label: the structure's name.
        message: "converged", "not converged within N steps" or what stopped it.
        trajectory: the structure's ``.traj`` file, or None.
    """

    atoms: Atoms
    converged: bool
    steps: int
    fmax: float
    smax: float | None
    energy: float
    label: str
    message: str
    trajectory: Path | None = None


def _calculator(calculator, structures: list[Atoms]):
    """An MLFFCalculator from what ``relax`` was given (None: the bundled potential for these structures)."""
    from ..calculator import MLFFCalculator
    from ..compositions import composition
    from ..models import Potential

    if isinstance(calculator, MLFFCalculator):
        return calculator
    if isinstance(calculator, (Potential, str, os.PathLike)):
        return MLFFCalculator(calculator)
    if calculator is None:
        from ..md.selection import choose_potential

        numbers = sorted({int(z) for a in structures for z in a.numbers})
        _, path = choose_potential(numbers, [composition(a) for a in structures])
        return MLFFCalculator(path)
    raise TypeError(f"relax needs an MLFFCalculator, an ase_mlff Potential, a model path or a bundled potential "
                    f"name (or None), got a {type(calculator).__name__}; for other ASE calculators use "
                    "ase.optimize.FIRE")


def _fixed(atoms: Atoms, prefix: str, cell: bool) -> np.ndarray:
    """[n] bool, atoms held by FixAtoms; any other constraint (or FixAtoms with a cell) is refused."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if not isinstance(constraint, FixAtoms):
            raise ValueError(f"{prefix}constraint {type(constraint).__name__} is not supported by relax (only "
                             "FixAtoms); remove it with atoms.set_constraint() or use ase.optimize.FIRE")
        if cell:
            raise ValueError(f"{prefix}FixAtoms together with cell=True is not supported; relax the positions "
                             "only (cell=False) or remove the constraint")
        fixed[constraint.index] = True
    return fixed


def _check(structures, labels, fmax, cell, pressure_bar, steps, model) -> list[np.ndarray]:
    if not (isinstance(fmax, (int, float)) and 0 < fmax < float("inf")):
        raise ValueError(f"fmax must be a finite positive force in eV/Å, got {fmax!r}")
    if not (isinstance(steps, (int, np.integer)) and steps >= 0):
        raise ValueError(f"steps must be a whole number >= 0, got {steps!r}")
    if not np.isfinite(pressure_bar):
        raise ValueError(f"pressure_bar must be finite, got {pressure_bar}")
    if pressure_bar != 0 and not cell:
        raise ValueError(f"pressure_bar={pressure_bar} acts on the cell only; pass cell=True (--cell) to relax "
                         "the cell under it")
    fixed = []
    for atoms, label in zip(structures, labels):
        prefix = f"{label}: " if len(structures) > 1 else ""
        if cell and not atoms.pbc.all():
            raise ValueError(f"{prefix}relaxing the cell needs a structure periodic in all three directions, "
                             f"but pbc is {atoms.pbc.tolist()}; drop cell=True (--cell) or give it a 3-D cell")
        try:
            model.check_numbers(sorted({int(z) for z in atoms.numbers}))
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None
        fixed.append(_fixed(atoms, prefix, cell))
    return fixed


def relax(structures: Atoms | Sequence[Atoms], calculator=None, *, fmax: float = 0.01, cell: bool = False,
          pressure_bar: float = 0.0, steps: int = 1000, trajectory: str | os.PathLike | None = None,
          overwrite: bool = False, labels: Sequence[str] | None = None,
          exp_cell_factor: float | None = None, fire: FireParameters | None = None) -> list[RelaxResult]:
    """Relax structures (mixed sizes; molecules and cells) together with batched FIRE.

    Args:
        structures: one Atoms or a sequence; not modified.
        calculator: an :class:`~ase_mlff.MLFFCalculator`, an ase_mlff ``Potential``, a model
            file or a bundled potential name; None picks the bundled potential covering the
            structures (as ``mlff-md run``). Its device, dtype and neighbor backend apply.
        fmax: convergence threshold, eV/Å (ASE's ``fmax``; for cells applied to the filter).
        cell: relax the cell too, through the Fréchet cell filter (3-D periodic structures only).
        pressure_bar: external pressure for the cell, bar (1 GPa = 10⁴ bar).
        steps: most FIRE steps per structure.
        trajectory: write every step's structure to this ``.traj`` file (one structure) or to
            ``<stem>.<k>.traj`` per structure (many).
        overwrite: replace existing trajectory files (otherwise refused).
        labels: a name per structure for messages (default "structure k").
        exp_cell_factor: the filter's cell scaling c (default, as ASE: the structure's number of atoms).
        fire: FIRE parameters (default: ASE's).

    Returns:
        One :class:`RelaxResult` per structure, in order.
    """
    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    if not structures:
        raise ValueError("relax needs at least one structure")
    for k, a in enumerate(structures):
        if not isinstance(a, Atoms):
            raise TypeError(f"structure {k} is a {type(a).__name__}, not ase.Atoms")
    labels = [f"structure {k}" for k in range(len(structures))] if labels is None else [str(x) for x in labels]
    if len(labels) != len(structures):
        raise ValueError(f"got {len(labels)} labels for {len(structures)} structures")
    if exp_cell_factor is not None and not exp_cell_factor > 0:
        raise ValueError(f"exp_cell_factor must be positive, got {exp_cell_factor}")
    calc = _calculator(calculator, structures)
    fixed = _check(structures, labels, fmax, cell, float(pressure_bar), steps, calc.model)
    for atoms in structures:
        calc.warn_outside_training(atoms)
    paths = None
    if trajectory is not None:
        paths = trajectory_paths(trajectory, len(structures))
        check_free(paths, overwrite, "trajectory file")
    if calc.device.type == "cpu":  # the calculator's size-aware thread default (see ase_mlff.threads)
        from ..threads import set_threads

        calc.num_threads = set_threads(calc._requested_threads, n_atoms=sum(len(a) for a in structures),
                                       compiled=calc.compile)
    writer = Trajectories(paths, structures) if paths is not None else None
    try:
        run = _Relaxation(structures, calc, fixed, cell, float(pressure_bar) * ase_units.bar, exp_cell_factor,
                          fire or FireParameters(), writer)
        run.loop(float(fmax), int(steps))
        results = run.results(labels, int(steps))
        if writer is not None:
            for result, path in zip(results, writer.close()):
                result.trajectory = path
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    return results


class _Relaxation:
    """The batched state of one :func:`relax` call and its loop."""

    def __init__(self, structures, calc, fixed, cell, pressure, exp_cell_factor, fire, writer):
        self.structures, self.calc, self.cell, self.pressure = structures, calc, cell, pressure
        self.fire, self.writer = fire, writer
        batch = atoms_to_batch(structures, dtype=torch.float64, device=calc.device)
        self.batch = batch
        self.n = batch.positions.shape[0]
        self.b = batch.n_systems
        device = batch.positions.device
        self.free = torch.from_numpy(~np.concatenate(fixed)).to(device).unsqueeze(1)  # [N, 1]
        self.reference_positions = batch.positions.clone()  # u, [N, 3] Å
        self.reference_cell = batch.cell.clone()  # cell₀, [B, 3, 3] Å
        self.log_strain = batch.cell.new_zeros((self.b, 3, 3))  # X = c log F
        self.factor = (batch.n_atoms.to(torch.float64) if exp_cell_factor is None
                       else batch.cell.new_full((self.b,), float(exp_cell_factor)))
        self.row_system = batch.system
        if cell:
            cell_rows = torch.arange(self.b, device=device).repeat_interleave(3)
            self.row_system = torch.cat([batch.system, cell_rows])
        self.periodic = batch.pbc.all(1)  # [B]
        # the filter needs the stress on every step; positions alone need it only at the end
        self.want_stress = cell
        backend = calc.parameters.get("neighbor_backend", "auto")
        self.neighbor_list = NeighborList(calc.model.cutoff, backend)
        self.skin_lists = SkinNeighbors.for_model(calc.model, float(calc.parameters.get("skin", 1.0)), backend,
                                                  system=batch.system)
        self.state = fire_state(self.row_system.shape[0], self.b, fire, batch.positions)
        self.energy = batch.cell.new_zeros(self.b)
        self.forces = batch.positions.new_zeros((self.n, 3))
        self.stress = batch.cell.new_zeros((self.b, 3, 3))
        self.criterion = batch.cell.new_full((self.b,), float("inf"))
        self.converged = torch.zeros(self.b, dtype=torch.bool, device=device)
        self.steps = torch.zeros(self.b, dtype=torch.long, device=device)
        self.stopped = ["" for _ in range(self.b)]
        self._subset = None

    # -- geometry ------------------------------------------------------------------
    def geometry(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(positions [N, 3], cell [B, 3, 3], deformation gradient F [B, 3, 3] or None)."""
        if not self.cell:
            return self.reference_positions, self.reference_cell, None
        gradient = deformation(self.log_strain, self.factor)
        positions, cell = deformed(self.reference_positions, self.reference_cell, gradient, self.batch.system)
        return positions, cell, gradient

    def _active_batch(self, active: torch.Tensor, positions, cell) -> tuple[Batch, torch.Tensor]:
        """The sub-batch of the ``active`` systems and its atoms' indices [n]; index tensors cached per set."""
        key = active.cpu().numpy().tobytes()
        if self._subset is None or self._subset[0] != key:
            atoms = torch.nonzero(active[self.batch.system]).squeeze(1)
            remap = torch.cumsum(active.long(), 0) - 1
            self._subset = (key, atoms, torch.nonzero(active).squeeze(1), remap[self.batch.system[atoms]])
        _, atoms, systems, system = self._subset
        b = self.batch
        sub = Batch(positions=positions.index_select(0, atoms), numbers=b.numbers.index_select(0, atoms),
                    cell=cell.index_select(0, systems), pbc=b.pbc.index_select(0, systems), system=system,
                    n_atoms=b.n_atoms.index_select(0, systems))
        return sub, atoms

    # -- the loop ------------------------------------------------------------------
    def evaluate(self, active: torch.Tensor, positions, cell, gradient) -> None:
        """Energy, forces (zero on fixed atoms) and stress of the active systems, into the full tensors."""
        sub, atoms = self._active_batch(active, positions, cell)
        neighbors = self.skin_lists(sub, gradient, active, self._subset[0])
        stress = self.want_stress
        calc = self.calc
        out = compute(calc.evaluator, sub, neighbors, forces=True, stress=stress, dtype=calc.dtype)
        systems = self._subset[2]
        self.energy.index_copy_(0, systems, out.energy.detach().to(torch.float64))
        self.forces.index_copy_(0, atoms, out.forces.detach().to(torch.float64) * self.free.index_select(0, atoms))
        if stress:
            self.stress.index_copy_(0, systems, out.stress.detach().to(torch.float64))

    def generalised_forces(self, cell, gradient) -> torch.Tensor:
        """[R, 3]: the forces, or with the filter [G_u; G_X rows]."""
        if not self.cell:
            return self.forces
        on_positions, on_log = filter_forces(self.forces, self.stress, cell, self.log_strain, self.factor,
                                             gradient, self.batch.system, self.pressure)
        return torch.cat([on_positions, on_log.reshape(-1, 3)])

    def loop(self, fmax: float, max_steps: int) -> None:
        active = torch.ones(self.b, dtype=torch.bool, device=self.batch.positions.device)
        for step in range(max_steps + 1):
            positions, cell, gradient = self.geometry()
            self.evaluate(active, positions, cell, gradient)
            rows = self.generalised_forces(cell, gradient)
            criterion = largest_row_norm(rows, self.row_system, self.b)
            self.criterion = torch.where(active, criterion, self.criterion)
            if self.writer is not None:
                self._write_frames(active, positions, cell)
            finite = torch.isfinite(self.criterion) & torch.isfinite(self.energy)
            done = active & (self.criterion < fmax)
            broken = active & ~finite
            self.converged |= done
            self.steps = torch.where(active, torch.full_like(self.steps, step), self.steps)
            for k in torch.nonzero(broken).squeeze(1).tolist():
                self.stopped[k] = f"non-finite energy or forces at step {step}; not relaxed"
            active = active & ~done & ~broken
            if step == max_steps or not bool(active.any()):
                break
            dr = fire_step(self.state, rows, self.row_system, active, self.fire)
            self.reference_positions = self.reference_positions + dr[: self.n]
            if self.cell:
                self.log_strain = self.log_strain + dr[self.n:].reshape(self.b, 3, 3)

    def _write_frames(self, active, positions, cell) -> None:
        positions = positions.detach().cpu().numpy()
        cells = cell.detach().cpu().numpy()
        energy = self.energy.cpu().numpy()
        forces = self.forces.cpu().numpy()
        stress = self.stress.cpu().numpy()
        bounds = np.cumsum([0] + [len(a) for a in self.structures])
        for k in torch.nonzero(active).squeeze(1).tolist():
            lo, hi = bounds[k], bounds[k + 1]
            s = full_3x3_to_voigt_6_stress(stress[k]) if self.want_stress else None
            self.writer.write(k, positions[lo:hi], cells[k], float(energy[k]), forces[lo:hi], s)

    # -- results ------------------------------------------------------------------
    def _final_stress(self, positions, cell) -> None:
        """Stress of the final periodic structures of a positions-only run (one more model call, on the
        lists each structure had at its last evaluation: :meth:`SkinNeighbors.final`)."""
        if self.want_stress or not bool(self.periodic.any()):
            return
        sub, _ = self._active_batch(self.periodic, positions, cell)
        neighbors = self.skin_lists.final(self.periodic, sub)
        if neighbors is None:  # a structure that blew up: a fresh search, as for anything else
            neighbors = self.neighbor_list(sub)
        calc = self.calc
        out = compute(calc.evaluator, sub, neighbors, forces=True, stress=True, dtype=calc.dtype)
        self.stress[self._subset[2]] = out.stress.detach().to(torch.float64)

    def results(self, labels, max_steps: int) -> list[RelaxResult]:
        from ase.calculators.singlepoint import SinglePointCalculator

        positions, cell, _ = self.geometry()
        self._final_stress(positions, cell)
        positions = positions.detach().cpu().numpy()
        cells = cell.detach().cpu().numpy()
        energy, forces = self.energy.cpu().numpy(), self.forces.cpu().numpy()
        stress = self.stress.cpu().numpy()
        criterion, converged = self.criterion.cpu().numpy(), self.converged.cpu().numpy()
        steps = self.steps.cpu().numpy()
        periodic = self.periodic.cpu().numpy()
        target = -self.pressure * np.eye(3)
        bounds = np.cumsum([0] + [len(a) for a in self.structures])
        results = []
        for k, original in enumerate(self.structures):
            lo, hi = bounds[k], bounds[k + 1]
            atoms = original.copy()
            atoms.cell = cells[k]
            atoms.arrays["positions"][:] = positions[lo:hi]  # as relaxed (FixAtoms atoms never moved)
            values = {"energy": float(energy[k]), "free_energy": float(energy[k]), "forces": forces[lo:hi].copy()}
            if periodic[k]:
                values["stress"] = full_3x3_to_voigt_6_stress(stress[k])
            atoms.calc = SinglePointCalculator(atoms, **values)
            smax = float(np.abs(stress[k] - target).max()) if self.cell else None
            ok = bool(converged[k])
            message = ("converged" if ok else self.stopped[k] or f"not converged within {max_steps} steps")
            atoms.info.update({"converged": ok, "relax_steps": int(steps[k]), "relax_fmax": float(criterion[k])})
            if smax is not None:
                atoms.info["relax_smax"] = smax
            results.append(RelaxResult(atoms, ok, int(steps[k]), float(criterion[k]), smax, float(energy[k]),
                                       labels[k], message))
        return results
