"""What defines a run: the settings, their defaults (written here once) and their units.

========================  ========================================================
user quantity (unit)      engine quantity (ASE units)
========================  ========================================================
``timestep_fs`` (fs)      ``dt = timestep_fs * units.fs``
``friction_per_fs`` (1/fs)  ``γ = friction_per_fs / units.fs``
``taut_fs`` (fs)          Bussi / Nosé-Hoover time constant ``τ = taut_fs * units.fs``
``temperature_K`` (K)     ``k_B T = units.kB * temperature_K`` (eV)
``pressure_bar`` (bar)    NPT target ``P₀ = pressure_bar * units.bar`` (eV/Å³)
``taup_fs`` (fs)          barostat time constant ``τ_p = taup_fs * units.fs``
``compressibility_per_bar``  ``β_T = compressibility_per_bar / units.bar`` (Å³/eV)
``cell_dof``              cell degrees of freedom of NPT (see :mod:`.barostat`)
========================  ========================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .report import DEFAULT_MAX_DRIFT
from .validate import check_settings

ENSEMBLES = ("nve", "langevin", "bussi", "nose-hoover", "npt")
#: cell degrees of freedom of the NPT barostat (see :mod:`.barostat`)
CELL_DOFS = ("isotropic", "anisotropic", "triclinic")
VELOCITY_MODES = ("maxwell-boltzmann", "input")


@dataclass(frozen=True)
class MDSettings:
    """Everything that defines a run (stored in the HDF5 file, reused by restarts).

    ``steps`` is the total number of steps of the run, counted from step 0.
    Invalid values raise ``ValueError`` when the settings are made.
    """

    ensemble: str = "nve"
    timestep_fs: float = 0.5
    temperature_K: float = 300.0
    friction_per_fs: float = 0.01
    taut_fs: float = 100.0
    pressure_bar: float = 1.0
    taup_fs: float = 1000.0
    compressibility_per_bar: float = 4.5e-5
    cell_dof: str = "isotropic"
    steps: int = 1000
    seed: int | None = None
    velocities: str = "maxwell-boltzmann"
    traj_interval: int = 10
    h5_interval: int = 10
    log_interval: int = 100
    flush_every: int = 100
    max_drift_meV_per_atom_per_ps: float = DEFAULT_MAX_DRIFT

    def __post_init__(self):
        for f in fields(self):  # numbers from JSON or the command line: store them as declared
            value = getattr(self, f.name)
            if f.type in ("float",) and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        check_settings(self, ENSEMBLES, VELOCITY_MODES, CELL_DOFS)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_metadata(cls, meta: dict) -> MDSettings:
        """The settings stored in a run file's attributes."""
        return cls(**{f.name: meta[f.name] for f in fields(cls) if f.name in meta})


#: the defaults, written once: the Python API and the command line take theirs from here
DEFAULTS = MDSettings()
