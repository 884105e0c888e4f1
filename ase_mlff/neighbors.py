"""Batched neighbor list: torch-cluster with a batch vector, plus periodic images.

torch-cluster's ``radius`` finds pairs within a distance for many structures
at once (a batch vector keeps them apart), but knows nothing about periodic
boundaries and silently keeps at most ``max_num_neighbors`` neighbors per
atom. This module adds both missing pieces:

* periodic images: positions are wrapped into the cell, each atom is copied
  to every integer cell shift that can bring it within the cutoff of the cell
  (cells smaller than the cutoff get many images, triclinic and mixed-pbc
  cells included), and the cell shift of each pair is recorded relative to
  the *unwrapped* positions the user gave;
* the cap: it starts from a bound derived from the data and is raised and the
  search repeated whenever any atom reaches it, so no neighbor is ever lost.

When torch-cluster is not installed, or for small inputs where a dense search
is cheaper than building a tree, a pure-torch search over the same images
gives the same pairs (``backend="torch"``). It is O(N·M) in time, chunked to
bound memory: fine up to a few thousand atoms, slow beyond that.

Conventions follow ``ase.neighborlist.neighbor_list("ijS")``: for an edge
(i, j, S) the vector is ``positions[j] - positions[i] + S @ cell`` and every
pair appears in both directions. Distances are strictly below the cutoff.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import torch

from .batch import Batch

try:  # optional: the fast path
    import torch_cluster as _torch_cluster
except ImportError:  # pragma: no cover - depends on the environment
    _torch_cluster = None

BACKENDS = ("auto", "torch-cluster", "torch")

# Below this many candidate (atom, image) pairs the dense torch search beats
# building a tree (measured in benchmarks/neighbors.py).
_DENSE_PAIRS_LIMIT = 20_000
# Elements of the largest distance block the dense search builds at once.
_DENSE_CHUNK = 4_000_000


def has_torch_cluster() -> bool:
    return _torch_cluster is not None


@dataclass(frozen=True)
class Neighbors:
    """Edges of a batch.

    Attributes:
        edge_index: [2, n_edges] int64, (center i, neighbor j), both directions.
        shifts: [n_edges, 3] int64, cell shift S of j relative to i.
        periodic: whether any shift can be non-zero (False for open molecules).
    """

    edge_index: torch.Tensor
    shifts: torch.Tensor
    periodic: bool

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]


def edge_vectors(
    positions: torch.Tensor, cell: torch.Tensor, system: torch.Tensor, neighbors: Neighbors
) -> torch.Tensor:
    """Differentiable edge vectors r_j - r_i + S·cell, [n_edges, 3] in Å.

    Rebuilt from (possibly strained) positions and cell on every call, so that
    autograd sees how each edge depends on both.
    """
    i, j = neighbors.edge_index
    vectors = positions[j] - positions[i]
    if neighbors.periodic:
        shift_vectors = torch.bmm(
            neighbors.shifts.to(cell.dtype).unsqueeze(1), cell[system[i]]
        ).squeeze(1)
        vectors = vectors + shift_vectors
    return vectors


class NeighborList:
    """Neighbor-list builder that remembers the neighbor cap between calls.

    Args:
        cutoff: radius in Å; pairs with distance < cutoff are returned.
        backend: "auto" (torch-cluster for large inputs when installed, the
            dense torch search otherwise), "torch-cluster", or "torch".
    """

    def __init__(self, cutoff: float, backend: str = "auto"):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {BACKENDS}")
        if backend == "torch-cluster" and _torch_cluster is None:
            raise ValueError(
                "backend='torch-cluster' needs torch-cluster: "
                "pip install --no-build-isolation torch-cluster (after torch), "
                "or use backend='auto'/'torch'"
            )
        self.cutoff = float(cutoff)
        self.backend = backend
        self._max_neighbors_hint = 0

    def __call__(self, batch: Batch) -> Neighbors:
        return self.build(batch)

    def build(self, batch: Batch) -> Neighbors:
        with torch.no_grad():
            images = _periodic_images(batch, self.cutoff)
            candidates = _dense_pair_count(batch.n_atoms, images.n_per_system)
            use_cluster = self.backend == "torch-cluster" or (
                self.backend == "auto"
                and _torch_cluster is not None
                and candidates > _DENSE_PAIRS_LIMIT
            )
            if use_cluster:
                center, image = self._search_cluster(batch, images)
            else:
                center, image = _search_dense(batch, images, self.cutoff)
            return _finish(batch, images, center, image, self.cutoff)

    def _search_cluster(self, batch: Batch, images: "_Images"):
        # An atom has at most as many neighbors as its structure has images.
        bound = int(images.n_per_system.max())
        cap = min(bound, max(self._max_neighbors_hint, _density_guess(batch, images, self.cutoff)))
        # Search a hair wider than the cutoff so rounding inside torch-cluster
        # cannot drop a pair; _finish applies the exact cutoff.
        radius = self.cutoff * (1 + 1e-6)
        threads = max(1, torch.get_num_threads())
        while True:
            center, image = _torch_cluster.radius(
                images.positions,
                images.centers,
                radius,
                batch_x=images.system,
                batch_y=batch.system,
                max_num_neighbors=cap,
                num_workers=threads,
            )
            counts = torch.bincount(center, minlength=batch.positions.shape[0])
            most = int(counts.max()) if counts.numel() else 0
            if most < cap or cap >= bound:
                break
            # some atom may have been truncated at the cap: widen and redo
            cap = min(bound, 2 * cap)
        self._max_neighbors_hint = max(self._max_neighbors_hint, most + most // 4 + 1)
        return center, image


def neighbor_list(batch: Batch, cutoff: float, backend: str = "auto") -> Neighbors:
    """One-shot neighbor list; see :class:`NeighborList`."""
    return NeighborList(cutoff, backend)(batch)


@dataclass(frozen=True)
class _Images:
    """Periodic copies of the (wrapped) atoms that can lie within the cutoff."""

    centers: torch.Tensor  # [n_atoms, 3] Å, positions wrapped into the cell
    wrap: torch.Tensor  # [n_atoms, 3] int64, positions = centers + wrap @ cell
    positions: torch.Tensor  # [n_images, 3] Å
    atom: torch.Tensor  # [n_images] index of the atom each image copies
    shift: torch.Tensor  # [n_images, 3] int64, relative to the wrapped atom
    system: torch.Tensor  # [n_images], sorted
    n_per_system: torch.Tensor  # [n_systems]
    periodic: bool


def _complete_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells with degenerate non-periodic vectors completed to a basis.

    Fractional coordinates are only needed along periodic axes; a slab or wire
    may carry zero vectors along its open axes, which are replaced by unit
    vectors orthogonal to the periodic ones.
    """
    out = cell.clone()
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
    dets = torch.linalg.det(cell).abs()
    for b in torch.nonzero(dets < 1e-10).flatten().tolist():
        periodic = [int(k) for k in torch.nonzero(pbc[b]).flatten()]
        if not periodic:
            out[b] = eye
            continue
        basis = [cell[b, k] / cell[b, k].norm() for k in periodic]
        if len(basis) == 1:
            a = basis[0]
            trial = eye[int(torch.argmin(a.abs()))]
            second = torch.linalg.cross(a, trial)
            basis.append(second / second.norm())
        if len(basis) == 2:
            third = torch.linalg.cross(basis[0], basis[1])
            basis.append(third / third.norm())
        extra = iter(basis[len(periodic):])
        for k in range(3):
            if k not in periodic:
                out[b, k] = next(extra)
    return out


def _periodic_images(batch: Batch, cutoff: float) -> _Images:
    pbc = batch.pbc
    system = batch.system
    positions = batch.positions
    if not bool(pbc.any()):
        zeros = torch.zeros_like(positions, dtype=torch.long)
        return _Images(positions, zeros, positions, torch.arange(positions.shape[0], device=positions.device),
                       zeros, system, batch.n_atoms, False)

    cell = _complete_cell(batch.cell, pbc)
    inverse = torch.linalg.inv(cell)  # [B, 3, 3]
    frac = torch.bmm(positions.unsqueeze(1), inverse[system]).squeeze(1)  # [N, 3]
    wrap = torch.where(pbc[system], torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    centers = positions - torch.bmm(wrap.unsqueeze(1), batch.cell[system]).squeeze(1)

    # plane spacing d_k = V / |a_l x a_m|: an image further than cutoff/d_k
    # (in fractional units) from the cell along a periodic axis k cannot
    # reach any atom inside it.
    cross = torch.linalg.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]])  # [B,3,3]
    volume = torch.linalg.det(cell).abs().unsqueeze(1)
    reach = cutoff * cross.norm(dim=2) / volume  # [B, 3], fractional
    reach = torch.where(pbc, reach, torch.zeros_like(reach))
    n_max = torch.ceil(reach).long().amax(0).tolist()  # images per axis, whole batch

    ranges = [range(-n, n + 1) for n in n_max]
    shifts = torch.tensor(list(product(*ranges)), dtype=positions.dtype, device=positions.device)  # [S, 3]
    # candidate image (atom a, shift s) is kept if inside the reach on every axis
    shifted = frac.unsqueeze(1) + shifts.unsqueeze(0)  # [N, S, 3]
    r = reach[system].unsqueeze(1)
    keep = ((shifted >= -r) & (shifted < 1 + r)) | ~pbc[system].unsqueeze(1)
    keep = keep.all(dim=2) & ((shifts.unsqueeze(0) == 0) | pbc[system].unsqueeze(1)).all(dim=2)
    atom, which = torch.nonzero(keep, as_tuple=True)  # atom-major, so systems stay sorted
    image_shift = shifts[which]
    image_positions = centers[atom] + torch.bmm(image_shift.unsqueeze(1), batch.cell[system[atom]]).squeeze(1)
    image_system = system[atom]
    n_per_system = torch.bincount(image_system, minlength=batch.n_systems)
    return _Images(centers, wrap.long(), image_positions, atom, image_shift.long(),
                   image_system, n_per_system, True)


def _dense_pair_count(n_atoms: torch.Tensor, n_images: torch.Tensor) -> int:
    return int((n_atoms * n_images).sum())


def _density_guess(batch: Batch, images: _Images, cutoff: float) -> int:
    """A cap that is rarely exceeded: twice the mean count in a cutoff sphere."""
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    if images.periodic and bool(batch.pbc.all()):
        volume = torch.linalg.det(batch.cell).abs().clamp_min(1e-6)
        density = float((batch.n_atoms / volume).max())
        return int(2 * density * sphere) + 16
    return 128


def _first_index(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _search_dense(batch: Batch, images: _Images, cutoff: float):
    """All (atom, image) pairs of each structure, padded per structure."""
    n_atoms, n_images = batch.n_atoms, images.n_per_system
    n_sys = batch.n_systems
    max_n, max_m = int(n_atoms.max()), int(n_images.max())
    atom_first, image_first = _first_index(n_atoms), _first_index(n_images)
    dev, dtype = images.positions.device, images.positions.dtype

    # padding sits far away, with opposite signs so padding never pairs with padding
    centers = torch.full((n_sys, max_n, 3), 1e10, dtype=dtype, device=dev)
    local_atom = torch.arange(batch.positions.shape[0], device=dev) - atom_first[batch.system]
    centers[batch.system, local_atom] = images.centers
    others = torch.full((n_sys, max_m, 3), -1e10, dtype=dtype, device=dev)
    local_image = torch.arange(images.positions.shape[0], device=dev) - image_first[images.system]
    others[images.system, local_image] = images.positions

    cutoff2 = cutoff * cutoff * (1 + 2e-6)
    chunk = max(1, _DENSE_CHUNK // max(1, n_sys * max_m))
    found_b, found_a, found_m = [], [], []
    for start in range(0, max_n, chunk):
        diff = centers[:, start:start + chunk, None, :] - others[:, None, :, :]
        close = diff.square().sum(-1) < cutoff2
        b, a, m = torch.nonzero(close, as_tuple=True)
        found_b.append(b)
        found_a.append(a + start)
        found_m.append(m)
    b, a, m = torch.cat(found_b), torch.cat(found_a), torch.cat(found_m)
    return atom_first[b] + a, image_first[b] + m


def _finish(batch: Batch, images: _Images, center, image, cutoff: float) -> Neighbors:
    """Image indices to (i, j, S) on the unwrapped positions; exact cutoff."""
    j = images.atom[image]
    shift = images.shift[image]
    if images.periodic:
        # image of j = r_j - wrap_j·cell + s·cell; center i = r_i - wrap_i·cell
        shift = shift - images.wrap[j] + images.wrap[center]
        not_self = (center != j) | (images.shift[image] != 0).any(dim=1)
    else:
        not_self = center != j
    center, j, shift = center[not_self], j[not_self], shift[not_self]
    edge_index = torch.stack([center, j])
    neighbors = Neighbors(edge_index, shift, images.periodic)
    distance2 = edge_vectors(batch.positions, batch.cell, batch.system, neighbors).square().sum(1)
    inside = distance2 < cutoff * cutoff
    if not bool(inside.all()):
        neighbors = Neighbors(edge_index[:, inside], shift[inside], images.periodic)
    return neighbors
