"""Lennard-Jones as a potential with the network interface: the test oracle.

    u(r) = 4ε[(σ/r)¹² − (σ/r)⁶]

with ASE's conventions (``ase.calculators.lj.LennardJones``), so the two can
be compared number for number:

* ``smooth=True``: u(r)·fc(r²), where fc goes from 1 at r_o to 0 at r_c as
  s²(3 − 2s) with s = (r_c² − r²)/(r_c² − r_o²) (C¹: energy and forces continuous);
* ``smooth=False``: u(r) − u(r_c), energies continuous but forces jump at r_c.

Each pair's energy is split evenly between its two atoms.
"""

from __future__ import annotations

from collections.abc import Sequence

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
        x, y, z = edge_vectors.unbind(1)
        r2 = x * x + y * y + z * z  # [P], Å² (square().sum(1) reduces a length-3 axis ~10x slower on CPU)
        c6 = (self.sigma**2 / r2) ** 3
        pair = 4.0 * self.epsilon * (c6 * c6 - c6)  # [P], eV
        if self.smooth:
            s = 1.0 - (r2 - self.onset**2) / (self.cutoff**2 - self.onset**2)
            s = s.clamp(0.0, 1.0)
            pair = pair * (s * s * (3.0 - 2.0 * s))
        else:
            c6_cut = (self.sigma / self.cutoff) ** 6
            pair = pair - 4.0 * self.epsilon * (c6_cut**2 - c6_cut)
        half = 0.5 * pair
        return species.new_zeros(species.shape, dtype=r2.dtype).index_add_(0, edge_index[0], half).index_add_(
            0, edge_index[1], half)
