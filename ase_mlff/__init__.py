"""ase-mlff: machine-learned force fields as first-class ASE calculators."""

from ._version import __version__
from .calculator import MLFFCalculator
from .io import load_model, save_model

__all__ = ["MLFFCalculator", "__version__", "load_model", "save_model"]
