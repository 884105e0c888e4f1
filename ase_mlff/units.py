"""The one place where units are defined.

Inside ase-mlff everything is in ASE units: Å, eV, amu, and ASE's time unit
(Å·sqrt(amu/eV), about 10.18 fs). Conversions happen at the edges only: CLI
arguments in fs, K and 1/fs, model files that declare their own units, and
training data in kcal/mol or Hartree.
"""

from __future__ import annotations

from ase import units as _ase

fs = _ase.fs  # one femtosecond in ASE time units
ps = 1000.0 * _ase.fs
kB = _ase.kB  # eV/K
bar = _ase.bar  # one bar in eV/Å³
#: g/cm³ per amu/Å³ (density from total mass and volume)
G_PER_CM3 = 1e24 / _ase._Nav

#: Energy units a data set or model file may declare, in eV.
ENERGY_UNITS = {
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": _ase.kcal / _ase.mol,
    "kJ/mol": _ase.kJ / _ase.mol,
    "Hartree": _ase.Hartree,
    "Ha": _ase.Hartree,
}

#: Length units a data set or model file may declare, in Å.
LENGTH_UNITS = {"Å": 1.0, "Ang": 1.0, "A": 1.0, "Bohr": _ase.Bohr, "nm": 10.0}


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    try:
        return ENERGY_UNITS[unit]
    except KeyError:
        raise ValueError(
            f"unknown energy unit {unit!r}; valid units are {sorted(ENERGY_UNITS)}"
        ) from None


def length_factor(unit: str) -> float:
    """Factor that converts a length in ``unit`` to Å."""
    try:
        return LENGTH_UNITS[unit]
    except KeyError:
        raise ValueError(
            f"unknown length unit {unit!r}; valid units are {sorted(LENGTH_UNITS)}"
        ) from None
