"""Lennard-Jones as a potential with the network interface: the test oracle.

    u(r) = 4ε[(σ/r)¹² − (σ/r)⁶]

with ASE's conventions (``ase.calculators.lj.LennardJones``), so the two can
be compared number for number:

* ``smooth=True``: u(r)·fc(r²), where fc goes from 1 at r_o to 0 at r_c as
  s²(3 − 2s) with s = (r_c² − r²)/(r_c² − r_o²) (C¹: energy and forces continuous);
* ``smooth=False``: u(r) − u(r_c), energies continuous but forces jump at r_c.

Pairs at r ≥ r_c contribute exactly zero (energy and derivatives), so lists
holding pairs beyond the cutoff give the same numbers (``zero_beyond_cutoff``).

Each pair's energy is split evenly between its two atoms.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .base import Potential
from .layers import one_edge_per_pair


class LennardJones(Potential):
    """Analytic Lennard-Jones potential (one ε, σ for all pairs).

    Args:
        species: elements covered (LJ does not distinguish them).
        epsilon: well depth, eV.
        sigma: zero-crossing distance, Å.
        cutoff: Å; defaults to 3σ as in ASE.
        onset: start of the smooth cutoff region, Å; defaults to 0.66·cutoff as in ASE.
        smooth: smooth cutoff (True) or energy shift (False).
    """

    architecture = "lennard_jones"
    half_lists = True  # u(r) once per pair: a half list saves finding one edge of each pair
    # beyond r_c the smooth switch is exactly 0, the shifted form is masked: the skin lists skip
    # their filter (measured on 64 Mo cells, 110k edges at r_c + 1 Å, 92k within r_c: filtering
    # cost more than evaluating the 18k extra pairs)
    zero_beyond_cutoff = True

    def __init__(self, species: Sequence[str | int] = ("Ar",), epsilon: float = 1.0, sigma: float = 1.0,
                 cutoff: float | None = None, onset: float | None = None, smooth: bool = True):
        cutoff = 3.0 * sigma if cutoff is None else float(cutoff)
        super().__init__(species, cutoff)
        self.epsilon, self.sigma, self.smooth = float(epsilon), float(sigma), bool(smooth)
        self.onset = 0.66 * cutoff if onset is None else float(onset)
        if not 0 <= self.onset < cutoff:
            raise ValueError(f"onset must lie in [0, cutoff={cutoff}), got {self.onset}")

    def hyperparameters(self) -> dict:
        return dict(species=self.species, epsilon=self.epsilon, sigma=self.sigma,
                    cutoff=self.cutoff, onset=self.onset, smooth=self.smooth)

    def atomic_outputs(self, species, edge_index, edge_vectors, half: bool = False):
        if not half:  # u(r) once per pair, half to each atom
            edge_index, edge_vectors = one_edge_per_pair(edge_index, edge_vectors)
        # each atom's share u/2 straight away: the constants of u halved (exact: a power of two)
        shift = 4.0 * self.epsilon * ((self.sigma / self.cutoff) ** 6 * ((self.sigma / self.cutoff) ** 6 - 1.0))
        constants = (0.5 * self.epsilon, self.sigma**2, self.onset**2, self.cutoff**2, self.smooth, 0.5 * shift)
        if torch.compiler.is_compiling():  # a compiled graph fuses the plain formula and its derivative itself
            share = _pair_energy(edge_vectors, constants, derivative=False)[0]
        else:
            share = _PairEnergy.apply(edge_vectors, constants)[0]  # [P] eV
        return species.new_zeros(species.shape, dtype=share.dtype).index_add_(0, edge_index[0], share).index_add_(
            0, edge_index[1], share)


def _pair_energy(vectors: torch.Tensor, constants: tuple, derivative: bool):
    """u(r) per pair [P] (eV), and with ``derivative`` also (1/r) du/dr = 2 du/d(r²) [P] (eV/Å²).

    constants: (ε, σ², r_o², r_c², smooth, u(r_c)). Written once for the energy and its
    derivative: :class:`_PairEnergy` calls it without autograd in its forward and, for a
    second derivative, with autograd in its backward.
    """
    epsilon, sigma2, onset2, cutoff2, smooth, shift = constants
    if derivative and smooth and not torch.is_grad_enabled():
        return _smooth_pair_energy_in_place(vectors, constants)
    x, y, z = vectors.unbind(1)
    r2 = x * x + y * y + z * z  # [P], Å² (square().sum(1) reduces a length-3 axis ~10x slower on CPU)
    inverse = 1.0 / r2
    c6 = (sigma2 * inverse) ** 3  # (σ/r)⁶
    c12 = c6 * c6
    u = (4.0 * epsilon) * (c12 - c6)
    if not smooth:  # shifted, and masked beyond the cutoff (the switch is 0 there by itself)
        within = r2 < cutoff2
        u = torch.where(within, u - shift, 0.0)
    if not derivative:
        return (u * _switch(r2, onset2, cutoff2)[0] if smooth else u), None
    du = (24.0 * epsilon) * inverse * (c6 - 2.0 * c12)  # 2 d/d(r²) of 4ε(σ¹²/r¹² − σ⁶/r⁶)
    if not smooth:
        return u, torch.where(within, du, 0.0)
    switch, d_switch = _switch(r2, onset2, cutoff2)
    return u * switch, du * switch + u * d_switch


def _smooth_pair_energy_in_place(vectors: torch.Tensor, constants: tuple):
    """:func:`_pair_energy`'s smooth u and (1/r) du/dr, the same formula in place on its own
    temporaries (no autograd may see them: :class:`_PairEnergy`'s forward). Half the
    allocations: 64 Mo cells (110k pairs) 1.1-1.2 ms against 1.4-1.9 ms, equal to 1e-15."""
    epsilon, sigma2, onset2, cutoff2, _, _ = constants
    x, y, z = vectors.unbind(1)
    r2 = (x * x).addcmul_(y, y).addcmul_(z, z)
    inverse = torch.reciprocal(r2)
    c6 = torch.mul(inverse, sigma2).pow_(3)
    c12 = c6 * c6
    u = torch.sub(c12, c6).mul_(4.0 * epsilon)
    du = torch.sub(c6, c12, alpha=2.0).mul_(inverse).mul_(24.0 * epsilon)
    scale = 1.0 / (cutoff2 - onset2)
    s = r2.neg_().add_(cutoff2).mul_(scale).clamp_(0.0, 1.0)  # r2 is not needed after this
    s2 = s * s
    switch = torch.mul(s, -2.0).add_(3.0).mul_(s2)
    d_switch = s2.sub_(s).mul_(12.0 * scale)
    return u.mul(switch), du.mul_(switch).addcmul_(u, d_switch)


def _switch(r2: torch.Tensor, onset2: float, cutoff2: float):
    """ASE's fc = s²(3 − 2s), s = (r_c² − r²)/(r_c² − r_o²) clamped to [0, 1], and 2 dfc/d(r²).

    dfc/d(r²) = −scale · 6s(1 − s) is exactly 0 where the clamp holds s at 0 or 1, as the
    clamped s is flat there: no mask needed.
    """
    scale = 1.0 / (cutoff2 - onset2)
    s = ((cutoff2 - r2) * scale).clamp(0.0, 1.0)
    s2 = s * s
    return s2 * (3.0 - 2.0 * s), (12.0 * scale) * (s2 - s)


class _PairEnergy(torch.autograd.Function):
    """u of each pair from its vector d [P, 3], with the analytic derivative du/dd = (1/r) du/dr · d.

    Autograd through the dozen element-wise operations of u (and of the switch) cost more
    than u itself; here (1/r) du/dr comes out of the forward, sharing its powers of 1/r², and
    the backward is two products. A second derivative (``create_graph``: Hessians, force
    losses) differentiates the same formula again, with autograd.

    Returns (u [P], (1/r) du/dr [P]); only u is differentiable.
    """

    @staticmethod
    def forward(vectors, constants):
        return _pair_energy(vectors, constants, derivative=True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        vectors, constants = inputs
        ctx.save_for_backward(vectors, output[1])
        ctx.constants = constants
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad, _):
        vectors, du = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: du must be differentiable in the vectors
            du = _pair_energy(vectors, ctx.constants, derivative=True)[1]
        return (grad * du).unsqueeze(1) * vectors, None
