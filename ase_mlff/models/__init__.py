"""Architectures (code). Trained models are artifacts: see :mod:`ase_mlff.io`."""

from .base import Potential
from .lj import LennardJones
from .painn import PaiNN
from .schnet import SchNet

#: architecture name (as stored in model files) -> class
ARCHITECTURES = {
    SchNet.architecture: SchNet,
    PaiNN.architecture: PaiNN,
    LennardJones.architecture: LennardJones,
}


def get_architecture(name: str) -> type[Potential]:
    try:
        return ARCHITECTURES[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; valid architectures: {sorted(ARCHITECTURES)}"
        ) from None


__all__ = ["ARCHITECTURES", "LennardJones", "PaiNN", "Potential", "SchNet", "get_architecture"]
