"""Structure relaxation: batched FIRE on positions and, optionally, the cell (Fréchet cell filter).

    from ase_mlff.optimize import relax
    results = relax(structures, "model.pt", fmax=0.01, cell=True)

Modules: :mod:`.fire` (the batched optimizer), :mod:`.cellfilter` (cell
coordinates and their forces), :mod:`.driver` (:func:`relax`),
:mod:`.output` (trajectories and the relaxed structures' file), :mod:`.cli`
(``mlff-md relax``).
"""

from .driver import RelaxResult, relax
from .fire import FireParameters

__all__ = ["FireParameters", "RelaxResult", "relax"]
