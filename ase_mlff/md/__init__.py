"""Molecular dynamics on top of the calculator: driver, HDF5 output, reports.

Kept import-light: ASE imports :mod:`ase_mlff.md.h5format` whenever ase.io is
imported, which imports this package first.
"""

__all__ = ["restart_md", "run_md"]


def __getattr__(name: str):
    if name in __all__:
        from . import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'ase_mlff.md' has no attribute {name!r}")
