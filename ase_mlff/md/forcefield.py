"""Forces for a batched MD state: per-system Verlet-skin neighbor lists and one model call.

The lists (:class:`~ase_mlff.skin_lists.BatchedNeighbors`, shared with the
relaxation) are exact by construction, also while NPT deforms the cells, and
keep their edges in canonical (i, j, shift) order, so restarts repeat the
uninterrupted run bit for bit; the rebuild rule and its proof are in
:mod:`ase_mlff.skin_lists`.
"""

from __future__ import annotations

import torch

from ..batch import Batch
from ..compiled import compiled
from ..forces import compute
from ..neighbors import Neighbors
from ..skin_lists import BatchedNeighbors
from .state import MDState


class ForceField:
    """Energy [B] and forces [N, 3] (float64, eV and eV/Å) of an MD state from a potential.

    Args:
        model: an ase_mlff ``Potential`` (its dtype and device are the network's).
        skin, backend: see :class:`BatchedNeighbors`.
        stress: also set ``state.stress`` [B, 3, 3] eV/Å³ (same autograd call) and let the
            cells deform between calls (NPT).
        compile: evaluate the network under ``torch.compile`` (dynamic atom and
            edge counts); falls back to eager with one warning where compilation fails.
        evaluator: an already compiled model to use (the calculator's).
        dtype: of the edge vectors the network gets (default: its weights').
    """

    def __init__(self, model, skin: float = 1.0, backend: str = "auto", compile: bool = False,
                 evaluator=None, dtype: torch.dtype | None = None, stress: bool = False):
        self.model = model
        self.stress = bool(stress)
        self.neighbors = BatchedNeighbors.for_model(model, skin, backend, deforming=self.stress)
        self.evaluator = evaluator if evaluator is not None else (compiled(model) if compile else model)
        from ..forces import model_dtype

        # the network's: edge vectors are rounded to it, nothing else (an analytic model has no
        # weights to say it, so the calculator's dtype decides)
        self.dtype = dtype or model_dtype(model) or torch.float64
        self._free: torch.Tensor | None = None  # the state.free that _fixed describes
        self._fixed = True

    def __call__(self, state: MDState) -> None:
        """Set ``state.energy`` and ``state.forces`` (zero on fixed atoms)."""
        neighbors = self.neighbors(state)
        output = self._evaluate(state.batch(), neighbors)
        forces = output.forces.to(torch.float64)  # both no-ops for a float64 batch, the engine's
        state.forces = forces * state.free.unsqueeze(1) if self._has_fixed(state) else forces
        state.energy = output.energy.to(torch.float64).detach()
        if self.stress:
            state.stress = output.stress.to(torch.float64).detach()

    def _has_fixed(self, state: MDState) -> bool:
        """Whether ``state`` holds fixed atoms; asked of the device once per ``free`` tensor (it is
        replaced, never changed in place, when systems leave the batch)."""
        if state.free is not self._free:
            self._free, self._fixed = state.free, not bool(state.free.all())
        return self._fixed

    def _evaluate(self, batch: Batch, neighbors: Neighbors):
        return compute(self.evaluator, batch, neighbors, forces=True, stress=self.stress, dtype=self.dtype)
