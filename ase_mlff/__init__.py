"""ase-mlff: machine-learned force fields as first-class ASE calculators."""

from ._version import __version__

__all__ = ["MLFFCalculator", "__version__", "load_model", "save_model"]

# Imported on first use (PEP 562), not here: ASE imports ase_mlff.md.h5format
# through the ``ase.ioformats`` entry point whenever anyone imports ase.io, and
# that must not pull in torch.
_LAZY = {"MLFFCalculator": ".calculator", "load_model": ".io", "save_model": ".io"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ase_mlff' has no attribute {name!r}")
