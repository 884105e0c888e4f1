"""A short-range repulsive prior: the ZBL screened nuclear repulsion, switched off where the data begin.

A network trained on configurations near equilibrium has never seen two atoms
closer than the data's shortest contacts, and nothing stops its energy from
falling there: a long MD or NPT run that wanders in can fall into such a hole
(two hydrogens 0.1 Å apart) instead of bouncing back. Peers add a physical
pair repulsion for this (NequIP's and MACE's ZBL, DeePMD-kit's DP-ZBL). Here
each pair of atoms within ``outer`` of each other adds

    u(r) = k Z_a Z_b / r · φ(r/a) · s(r),   a = 0.88534 a₀ / (Z_a^0.23 + Z_b^0.23)
    φ(x) = 0.18175 e^(−3.19980x) + 0.50986 e^(−0.94229x) + 0.28022 e^(−0.40290x) + 0.02817 e^(−0.20162x)

(Ziegler, Biersack & Littmark 1985, "universal" screening; k = e²/4πε₀ =
14.3996 eV·Å, a₀ the Bohr radius), with a switch s = 1 below ``inner``, 0
beyond ``outer``, and 1 − t³(10 − 15t + 6t²), t = (r − inner)/(outer − inner),
between (C², so forces and their derivatives stay continuous). φ(0) = 1: at
short range u is the bare Coulomb repulsion of the nuclei.

With ``outer`` at or below the shortest distance of that pair of elements in
the training data (:func:`radii_from_data`), the prior is exactly zero on every
training frame: it changes nothing the network learned, can be added to a
model after training, and acts only where the model never saw data. The
network's own energy is bounded as two atoms merge (its radial features
saturate), u grows as 1/r, so the hole closes.

Each pair's energy is split evenly between its two atoms, as in
:class:`~ase_mlff.models.lj.LennardJones`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from ase import units
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

#: e²/(4πε₀) in eV·Å
COULOMB = units.Hartree * units.Bohr
#: ZBL universal screening function: (coefficient, exponent) pairs, and the screening-length prefactor
_PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))
_SCREENING = 0.88534 * units.Bohr
#: default inner radius as a share of the outer one (radii_from_data)
INNER_SHARE = 0.75


def zbl_energy(r: torch.Tensor, z_a: torch.Tensor | float, z_b: torch.Tensor | float) -> torch.Tensor:
    """Unswitched ZBL pair energy (eV) at distances r (Å) between nuclei of charges z_a, z_b."""
    z_a, z_b = torch.as_tensor(z_a, dtype=r.dtype), torch.as_tensor(z_b, dtype=r.dtype)
    x = r * (z_a**0.23 + z_b**0.23) / _SCREENING
    phi = sum(c * torch.exp(-d * x) for c, d in _PHI)
    return COULOMB * z_a * z_b / r * phi


def _pair_key(a: str | int, b: str | int) -> tuple[str, str]:
    """("O", "H") -> ("H", "O"): the two elements by atomic number."""
    za, zb = (atomic_numbers[x] if isinstance(x, str) else int(x) for x in (a, b))
    za, zb = sorted((za, zb))
    return chemical_symbols[za], chemical_symbols[zb]


class ZBLRepulsion(nn.Module):
    """Switched ZBL repulsion per pair of elements (module doc).

    Args:
        species: the model's elements, in its order (``Potential.species``).
        radii: {(element, element): (inner, outer)} in Å, 0 ≤ inner < outer; a pair of elements
            not listed gets no repulsion.
    """

    kind = "zbl"

    def __init__(self, species: Sequence[str], radii: Mapping[tuple, Sequence[float]]):
        super().__init__()
        self.species = list(species)
        n = len(self.species)
        self.radii: dict[tuple[str, str], tuple[float, float]] = {}
        for pair, values in radii.items():
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise ValueError(f"repulsion radii are keyed by pairs of elements like ('H', 'O'), got {pair!r}")
            key = _pair_key(*pair)
            missing = [e for e in key if e not in self.species]
            if missing:
                raise ValueError(f"repulsion radii for {key[0]}-{key[1]}, but the model covers only "
                                 f"{', '.join(self.species)}")
            inner, outer = (float(v) for v in values)
            if not (0.0 <= inner < outer < float("inf")):
                raise ValueError(f"repulsion radii of {key[0]}-{key[1]} must satisfy 0 <= inner < outer (Å), "
                                 f"got inner={inner}, outer={outer}")
            self.radii[key] = (inner, outer)
        charge = torch.tensor([float(atomic_numbers[s]) for s in self.species], dtype=torch.float64)
        inner = torch.zeros(n, n, dtype=torch.float64)
        width = torch.ones(n, n, dtype=torch.float64)  # outer − inner; pairs without radii have outer = 0
        outer = torch.zeros(n, n, dtype=torch.float64)
        for (a, b), (r_in, r_out) in self.radii.items():
            i, j = self.species.index(a), self.species.index(b)
            for p, q in ((i, j), (j, i)):
                inner[p, q], outer[p, q], width[p, q] = r_in, r_out, r_out - r_in
        zz = charge[:, None] * charge[None, :]
        screening = (charge[:, None] ** 0.23 + charge[None, :] ** 0.23) / _SCREENING  # 1/a, Å⁻¹
        # plain derived tables, rebuilt from ``radii`` when a file is read: not in the state dict
        for name, table in (("_inner", inner), ("_width", width), ("_outer", outer), ("_coulomb", COULOMB * zz),
                            ("_inverse_screening", screening)):
            self.register_buffer(name, table.reshape(-1), persistent=False)

    def record(self) -> dict:
        """Plain data for a model file (``ase_mlff.io``)."""
        pairs = [[a, b, r_in, r_out] for (a, b), (r_in, r_out) in sorted(self.radii.items())]
        return {"kind": self.kind, "pairs": pairs}

    @classmethod
    def from_record(cls, species: Sequence[str], record: dict) -> ZBLRepulsion:
        return cls(species, {(a, b): (r_in, r_out) for a, b, r_in, r_out in record["pairs"]})

    def forward(self, species: torch.Tensor, edge_index: torch.Tensor, edge_vectors: torch.Tensor,
                half: bool = False) -> torch.Tensor:
        """Per-atom repulsion energies [n_atoms] (eV) from a full list (or a half one, ``half``).

        Every edge is evaluated (no data-dependent selection, so compiled graphs keep static
        shapes); beyond ``outer`` the switch is exactly zero and so is the gradient.
        """
        n = len(self.species)
        pair = species.index_select(0, edge_index[0]) * n + species.index_select(0, edge_index[1])  # [E]
        x, y, z = edge_vectors.unbind(1)
        r = (x * x + y * y + z * z).sqrt()
        dtype = r.dtype
        inner = self._inner.to(dtype).index_select(0, pair)
        width = self._width.to(dtype).index_select(0, pair)
        outer = self._outer.to(dtype).index_select(0, pair)
        # far pairs are evaluated at the outer radius (finite whatever r is; the switch zeroes them)
        near = r < outer
        r_eval = torch.where(near, r, outer.clamp_min(1.0))
        scaled = r_eval * self._inverse_screening.to(dtype).index_select(0, pair)
        phi = sum(c * torch.exp(-d * scaled) for c, d in _PHI)
        t = ((r_eval - inner) / width).clamp(0.0, 1.0)
        switch = 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)
        energy = torch.where(near, self._coulomb.to(dtype).index_select(0, pair) / r_eval * phi * switch, 0.0)
        half_energy = 0.5 * energy
        out = torch.zeros(species.shape[0], dtype=dtype, device=edge_vectors.device)
        out = out.index_add(0, edge_index[0], half_energy)
        return out.index_add(0, edge_index[1], half_energy) if half else out

    def extra_repr(self) -> str:
        return ", ".join(f"{a}-{b}: {r_in:.3f}-{r_out:.3f} Å" for (a, b), (r_in, r_out) in sorted(self.radii.items()))


def shortest_distances(frames: Sequence, cutoff: float, chunk: int = 64) -> dict[tuple[str, str], float]:
    """{(element, element): shortest distance (Å)} of every pair of elements within ``cutoff`` in ``frames``
    (ASE ``Atoms`` or a training :class:`~ase_mlff.training.data.Dataset`'s frames; periodic images count)."""
    from ..batch import atoms_to_batch
    from ..neighbors import NeighborList, edge_vectors

    neighbor_list = NeighborList(cutoff)
    shortest: dict[tuple[str, str], float] = {}
    n_frames = len(frames)
    for start in range(0, n_frames, chunk):
        part = [frames[k] for k in range(start, min(start + chunk, n_frames))]
        batch = atoms_to_batch(part, dtype=torch.float64)
        neighbors = neighbor_list(batch)
        if not neighbors.n_edges:
            continue
        r = torch.linalg.vector_norm(edge_vectors(batch.positions, batch.cell, batch.system, neighbors), dim=1)
        za, zb = batch.numbers[neighbors.edge_index[0]], batch.numbers[neighbors.edge_index[1]]
        low, high = torch.minimum(za, zb), torch.maximum(za, zb)
        code = low * 1000 + high
        for value in torch.unique(code).tolist():
            d = float(r[code == value].min())
            key = (chemical_symbols[value // 1000], chemical_symbols[value % 1000])
            shortest[key] = min(d, shortest.get(key, math.inf))
    return shortest


def radii_from_data(frames: Sequence, species: Sequence[str], cutoff: float,
                    inner_share: float = INNER_SHARE) -> dict[tuple[str, str], tuple[float, float]]:
    """(inner, outer) per pair of ``species``: outer the shortest distance of that pair in ``frames``
    (rounded down to 0.01 Å), inner ``inner_share`` of it. A pair never closer than ``cutoff`` in the
    data gets outer = cutoff: the model never saw it interact at all."""
    if not 0.0 <= inner_share < 1.0:
        raise ValueError(f"inner_share must lie in [0, 1), got {inner_share}")
    seen = shortest_distances(frames, cutoff)
    radii = {}
    for i, a in enumerate(species):
        for b in species[i:]:
            key = _pair_key(a, b)
            outer = math.floor(min(seen.get(key, cutoff), cutoff) * 100.0) / 100.0
            if outer > 0:
                radii[key] = (inner_share * outer, outer)
    return radii
