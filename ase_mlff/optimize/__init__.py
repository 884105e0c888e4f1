"""Structure relaxation: batched FIRE on positions and, optionally, the cell (Fréchet cell filter).

    from ase_mlff.optimize import relax
    results = relax(structures, "model.pt", fmax=0.01, cell=True)

Modules: :mod:`.fire` (the batched optimizer), :mod:`.cellfilter` (cell
coordinates and their forces), :mod:`.driver` (:func:`relax`),
:mod:`.output` (trajectories and the relaxed structures' file), :mod:`.cli`
(``mlff-md relax``). Kept import-light (torch loads on first use), so that
``mlff-md --help`` stays quick.
"""

__all__ = ["FireParameters", "RelaxResult", "relax"]

_LAZY = {"FireParameters": ".fire", "RelaxResult": ".driver", "relax": ".driver"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'ase_mlff.optimize' has no attribute {name!r}")
