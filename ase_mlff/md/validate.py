"""Checks on user input before a run starts: each failure is one clear sentence.

Errors raise ``ValueError`` (the command line prints the message, no
traceback); doubtful but legal choices emit a ``UserWarning``.
"""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms

from ..batch import check_positions

#: atoms closer than this (Å) overlap: no bonded pair is shorter than ~0.74 Å (H₂)
MIN_DISTANCE = 0.5
#: above this timestep (fs) hydrogen vibrations (period ~9 fs) are integrated badly
MAX_TIMESTEP_WITH_H = 2.0


class MDWarning(UserWarning):
    """A legal but doubtful MD setting."""


def check_settings(settings, ensembles, velocity_modes, cell_dofs=("isotropic",)) -> None:
    if settings.ensemble not in ensembles:
        raise ValueError(f"unknown ensemble {settings.ensemble!r}; valid: {', '.join(ensembles)}")
    if settings.velocities not in velocity_modes:
        raise ValueError(f"unknown velocities {settings.velocities!r}; valid: {', '.join(velocity_modes)}")
    if not settings.steps > 0:
        raise ValueError(f"the number of steps must be a positive integer, got {settings.steps}")
    if not (np.isfinite(settings.timestep_fs) and settings.timestep_fs > 0):
        raise ValueError(f"the timestep must be a finite positive number of fs, got "
                         f"{settings.timestep_fs} fs; 0.5 fs is a safe choice with hydrogen")
    if not settings.temperature_K >= 0:
        raise ValueError(f"the temperature must be >= 0 K, got {settings.temperature_K} K")
    if settings.ensemble == "langevin" and not settings.friction_per_fs > 0:
        raise ValueError(f"the Langevin friction must be positive, got {settings.friction_per_fs} 1/fs; "
                         "0.01 1/fs is typical")
    _check_barostat(settings, cell_dofs)
    if settings.ensemble in ("bussi", "nose-hoover", "npt") and not settings.taut_fs > 0:
        raise ValueError(f"the thermostat time constant must be positive, got {settings.taut_fs} fs; "
                         "100 fs is typical")
    if settings.ensemble != "nve" and not settings.temperature_K > 0:
        raise ValueError(f"a thermostat needs a target temperature above 0 K, got {settings.temperature_K} K")
    for name in ("h5_interval", "log_interval", "flush_every"):
        if getattr(settings, name) < 1:
            raise ValueError(f"{name} must be at least 1 step, got {getattr(settings, name)}")
    if settings.traj_interval < 0:
        raise ValueError(f"traj_interval must be >= 0 (0: no .traj frames), got {settings.traj_interval}")
    max_drift = getattr(settings, "max_drift_meV_per_atom_per_ps", None)
    if max_drift is not None and not max_drift >= 0:  # also refuses NaN
        raise ValueError(f"the NVE drift threshold (--max-drift) must be a number >= 0 meV/atom/ps, "
                         f"got {max_drift}; the default is 1.0")


def _check_barostat(settings, cell_dofs) -> None:
    """The NPT settings (validated for every run, as their defaults are stored with every run;
    settings objects without them, from before NPT, pass)."""
    pressure = getattr(settings, "pressure_bar", 1.0)
    if not np.isfinite(pressure):
        raise ValueError(f"the target pressure must be a finite number of bar (negative is allowed), got "
                         f"{pressure} bar")
    taup = getattr(settings, "taup_fs", 1.0)
    if not (np.isfinite(taup) and taup > 0):
        raise ValueError(f"the barostat time constant must be a finite positive number of fs, got "
                         f"{taup} fs; 1000 fs is typical")
    compressibility = getattr(settings, "compressibility_per_bar", 1.0)
    if not (np.isfinite(compressibility) and compressibility > 0):
        raise ValueError(f"the compressibility must be a finite positive number per bar, got "
                         f"{compressibility} 1/bar; 4.5e-5 1/bar is water's")
    cell_dof = getattr(settings, "cell_dof", cell_dofs[0])
    if cell_dof not in cell_dofs:
        raise ValueError(f"unknown cell_dof {cell_dof!r}; valid: {', '.join(cell_dofs)}")


def check_npt_structure(atoms: Atoms) -> None:
    """NPT needs a cell that is periodic in all three directions and no fixed atoms."""
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError(f"NPT needs a structure periodic in all three directions with a full cell; this one "
                         f"has pbc={atoms.pbc.tolist()} and cell rank {atoms.cell.rank}: give it a cell and "
                         "pbc=True, or use --ensemble bussi")
    if atoms.constraints:
        raise ValueError("NPT does not support constraints (the cell deformation would move fixed atoms); "
                         "remove them or use --ensemble bussi")


def check_structure(atoms: Atoms, timestep_fs: float) -> None:
    """Overlapping atoms, periodic images included, and non-finite input (errors);
    a large timestep with H (warning)."""
    if len(atoms) == 0:
        raise ValueError("the structure has no atoms")
    check_positions(atoms.positions, atoms.numbers)
    if not np.isfinite(atoms.cell.array).all():
        raise ValueError(f"the cell {atoms.cell.array.tolist()} is not finite; fix the structure")
    if atoms.pbc.any() and atoms.cell.rank < int(atoms.pbc.sum()):
        raise ValueError(f"the structure is periodic along {atoms.pbc.tolist()} but its cell "
                         f"{atoms.cell.cellpar().round(3).tolist()} does not span those directions; "
                         "give a cell or set pbc=False")
    _check_overlaps(atoms)
    if timestep_fs > MAX_TIMESTEP_WITH_H and 1 in atoms.numbers:
        warnings.warn(f"a timestep of {timestep_fs:g} fs is above {MAX_TIMESTEP_WITH_H:g} fs with "
                      "hydrogen present: X-H vibrations will be integrated badly and energy will "
                      "drift; use --timestep-fs 0.5 (or deuterium masses)", MDWarning, stacklevel=3)


def _check_overlaps(atoms: Atoms) -> None:
    """Error for the closest pair under MIN_DISTANCE, periodic images included.

    ASE's list leaves out only an atom's zero-shift self pair, so an atom
    and its own image in a cell smaller than MIN_DISTANCE count too.
    """
    from ase.neighborlist import neighbor_list

    i, j, d, shift = neighbor_list("ijdS", atoms, MIN_DISTANCE)
    if not len(d):
        return
    k = int(np.argmin(d))
    a, b, distance, image = int(i[k]), int(j[k]), float(d[k]), shift[k].tolist()
    symbols = atoms.get_chemical_symbols()
    cell = f"cell {atoms.cell.cellpar().round(3).tolist()} (lengths in Å, angles in degrees)"
    if a == b:
        raise ValueError(
            f"atom {a} ({symbols[a]}) is {distance:.3f} Å from its own periodic image (cell shift "
            f"{image}), closer than {MIN_DISTANCE} Å: the {cell} is too small along that direction "
            "(wrong units or a missing cell?); fix the cell")
    where = f" across the periodic boundary (cell shift {image}, {cell})" if any(image) else ""
    raise ValueError(
        f"atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are {distance:.3f} Å apart{where}, closer "
        f"than {MIN_DISTANCE} Å: the structure has overlapping atoms (duplicated atoms or a wrong "
        "cell?); fix the structure file")
