"""Batched neighbor list in pure torch: periodic images, then a cell list.

For every structure of a :class:`~ase_mlff.batch.Batch` (molecules, slabs,
wires and bulk cells can be mixed) the list holds every pair closer than the
cutoff, in both directions, with the integer cell shift of the neighbor:

* periodic images: positions are wrapped into the cell, and each atom is
  copied to every integer cell shift that can bring it within the cutoff of
  the cell (cells smaller than the cutoff get many images; triclinic and
  mixed-pbc cells included). Shifts are reported relative to the *unwrapped*
  positions the user gave.
* search: the images are sorted into a grid of cells half a cutoff wide
  (a cell list, as in vesin and matscipy). For each atom, only the columns of
  cells whose xy-distance to it is below the cutoff are visited, and in each
  column only the z-range the cutoff sphere can reach; because the images
  are sorted by cell, that range is one contiguous slice. About twice as
  many candidates as true neighbors are then compared, in chunks of bounded
  memory. Cost is O(N) in time and memory.
* tiny inputs (a molecule, a few small cells) compare all (atom, image)
  pairs at once instead: fewer, larger tensor operations win there.

Results are exact: candidates are collected with a margin that covers
floating-point rounding, and pairs within that margin of the cutoff are
decided with the very formula the models see (:func:`edge_vectors`), so the
pairs do not depend on the search path (tests compare them pair for pair with
ASE). The search runs in the batch's dtype, float64 from the calculator; a
float32 model then gets those vectors rounded to float32, which can move a
pair by one float32 ulp across the cutoff, where every model's cutoff
function (and its derivative) is zero.

``backend="torch-cluster"`` replaces the search by torch-cluster
(``torch_cluster.radius`` with batch vectors over the same images, with a cap
on neighbors per atom that is raised and the search repeated until nothing
is cut off). ``"auto"`` uses it for tensors on a GPU when it is installed
(its CUDA kernel is what it is built for). On the CPU its KD-tree was slower
than the cell list from 1,536 atoms up in ``benchmarks/neighbors.py``
(1.3-1.8x on 12k-98k atoms; on a few hundred open atoms it was faster), so
there ``"auto"`` takes the cell list. Every path gives the same pairs.

Conventions follow ``ase.neighborlist.neighbor_list("ijS")``: for an edge
(i, j, S) the vector is ``positions[j] - positions[i] + S @ cell`` and every
pair appears in both directions. Distances are strictly below the cutoff.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import warnings
from dataclasses import dataclass, field
from itertools import product

import torch

from .batch import Batch

# optional: torch-cluster's search, chosen automatically only for tensors on a GPU. Imported at
# first use, not here: it imports scipy.cluster (about a second), which a CPU run never needs.
_HAS_TORCH_CLUSTER = importlib.util.find_spec("torch_cluster") is not None


def _torch_cluster():
    import torch_cluster

    return torch_cluster

BACKENDS = ("auto", "torch-cluster", "torch")

# Up to this many (atom, image) pairs, comparing them all beats binning
# (crossover measured in benchmarks/neighbors.py).
_DENSE_PAIRS_LIMIT = 20_000
# ... and for batches, up to this many pairs in each structure's block.
_DENSE_BLOCK_LIMIT = 4096
# Elements of the largest distance block the dense search builds at once.
_DENSE_CHUNK = 4_000_000
# Cells per cutoff along each axis of the cell list: narrower cells visit
# fewer candidates (about 2.5 per true pair at 2) but more columns per atom
# (25 at 2, 9 at 1); 2 is a compromise, not tuned further.
_CELLS_PER_CUTOFF = 2
# Candidate pairs compared per chunk of the cell list (bounds memory and
# keeps the working set in cache).
_CELL_CHUNK = 1 << 19


def has_torch_cluster() -> bool:
    return _HAS_TORCH_CLUSTER


@dataclass(frozen=True)
class Neighbors:
    """Edges of a batch.

    Attributes:
        edge_index: [2, n_edges] int64, (center i, neighbor j), both directions
            (one, with ``half``).
        shifts: [n_edges, 3] int64, cell shift S of j relative to i.
        periodic: whether any shift can be non-zero (False for open molecules).
        half: the list holds each pair once, the edge :func:`one_per_pair` keeps, instead of
            both directions: only for models that say they take it (``Potential.half_lists``;
            a pair potential evaluates each pair once anyway, and a half list halves the edge
            vectors and the skin lists' filtering). Only the skin lists build them.
    """

    edge_index: torch.Tensor
    shifts: torch.Tensor
    periodic: bool
    #: a bound on |S| component-wise (the largest, from the builders), or None: see :func:`shift_vectors`
    reach: int | None = None
    #: [E] each edge's row of :func:`shift_table` with this ``reach`` (:func:`shift_codes`), kept by
    #: whoever holds the list between calls (the skin lists) for the batch it was built for; None:
    #: computed per call
    shift_code: torch.Tensor | None = None
    half: bool = False
    #: edges sorted by centre i and the list kept between calls (the skin lists): :func:`edge_vectors`
    #: may then store what it derives from the edges (``cache``) and reuse it, see there
    ordered: bool = False
    #: what :func:`edge_vectors` derived from these edges (``reuse``); a new, empty one for every
    #: Neighbors made, also by ``dataclasses.replace``
    cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]


def one_per_pair(edge_index: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Mask [E] keeping one edge of every pair (i, j, S) / (j, i, −S) of a full list: i < j, and for
    an atom's own periodic images (i = j) the edge whose ``directions`` row [E, 3] has its first
    non-zero component positive.

    With the integer shifts as ``directions`` (the skin lists' half lists) the choice depends
    on indices and shifts only, not on the geometry, so the same edge stays kept while atoms
    move and cells deform; with the edge vectors it is :func:`ase_mlff.models.layers.half_edges`.
    """
    i, j = edge_index
    x, y, z = directions.unbind(1)
    positive = torch.where(x != 0, x > 0, torch.where(y != 0, y > 0, z > 0))
    return (i < j) | ((i == j) & positive)


def takes_half_lists(model) -> bool:
    """Whether ``model`` (or the model inside a compiled one) evaluates half lists (``Neighbors.half``):
    its class says so (``half_lists``) and its ``forward`` and ``atomic_outputs`` take ``half`` (a
    subclass that overrides either with the signature of before half lists gets full lists)."""
    model = getattr(model, "model", model)
    if not getattr(model, "half_lists", False):
        return False
    try:
        return all("half" in inspect.signature(getattr(model, name)).parameters
                   for name in ("forward", "atomic_outputs"))
    except (AttributeError, TypeError, ValueError):  # no such method, or no signature to read
        return False


def takes_wide_lists(model) -> bool:
    """Whether ``model`` (or the model inside a compiled one) may be given pairs beyond its cutoff,
    which it zeroes itself (``Potential.zero_beyond_cutoff``), declared by the most derived class
    that defines ``atomic_outputs`` or ``forward``: a subclass that changes either without saying
    so again gets exact lists."""
    model = getattr(model, "model", model)
    for klass in type(model).__mro__:
        own = vars(klass)
        if "atomic_outputs" in own or "forward" in own:
            return bool(own.get("zero_beyond_cutoff", False))
    return False


#: edges from which :func:`edge_vectors` with ``reuse`` takes its stored sums (fewer, and autograd's
#: scatter-adds cost less than the sparse product's set-up)
REUSE_MIN_EDGES = 8192


def edge_vectors(
    positions: torch.Tensor, cell: torch.Tensor, system: torch.Tensor, neighbors: Neighbors,
    reuse: bool = False,
) -> torch.Tensor:
    """Differentiable edge vectors r_j - r_i + S·cell, [n_edges, 3] in Å.

    Rebuilt from (possibly strained) positions and cell on every call, so that
    autograd sees how each edge depends on both.

    ``reuse`` (the eager force path, once differentiated: not for a second derivative): for a
    list kept between calls (``Neighbors.ordered``) of at least :data:`REUSE_MIN_EDGES` edges
    on the CPU, the gradient in the positions goes through :class:`_PairDifferences`, and
    with a cell that is not differentiated (no stress) S·cell is computed once per cell and
    stored with the list (checked against the cell of each call). The same numbers to rounding
    (the per-atom sums are taken in another order, as deterministically), in fewer passes over
    the edges: a relaxation of 64 Mo cells with Lennard-Jones took ~10 % less time.
    """
    if reuse and _reusable(positions, neighbors):
        return _reused_edge_vectors(positions, cell, neighbors)
    i, j = neighbors.edge_index
    # index_select, not advanced indexing: the same values at half the cost on the CPU
    vectors = positions.index_select(0, j) - positions.index_select(0, i)
    if neighbors.periodic:
        if neighbors.shift_code is not None and neighbors.reach is not None:
            return vectors + shift_table(cell, neighbors.reach).index_select(0, neighbors.shift_code)
        vectors = vectors + shift_vectors(cell, system.index_select(0, i), neighbors.shifts, neighbors.reach)
    return vectors


def _reusable(positions: torch.Tensor, neighbors: Neighbors) -> bool:
    return (neighbors.ordered and neighbors.n_edges >= REUSE_MIN_EDGES and positions.device.type == "cpu"
            and positions.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and (not neighbors.periodic or (neighbors.shift_code is not None and neighbors.reach is not None)))


def _reused_edge_vectors(positions: torch.Tensor, cell: torch.Tensor, neighbors: Neighbors) -> torch.Tensor:
    cache = neighbors.cache
    key = ("centres", positions.dtype, positions.shape[0])
    centres = cache.get(key)
    if centres is None:
        centres = cache[key] = centre_sums(neighbors.edge_index[0], positions.shape[0], positions.dtype)
    flat = cache.get("flat")
    if flat is None:  # [2, 3E]: the x, y, z of each edge's i and j in the flattened [3N] positions
        flat = cache["flat"] = (neighbors.edge_index.unsqueeze(2) * 3
                                + torch.arange(3, device=positions.device)).reshape(2, -1)
    offsets = None
    if neighbors.periodic:
        if cell.requires_grad:  # the stress: S·cell differentiated by autograd, as without reuse
            table = shift_table(cell, neighbors.reach)
            return (_PairDifferences.apply(positions, flat, None, centres)
                    + table.index_select(0, neighbors.shift_code))
        stored = cache.get("offsets")
        if stored is None or stored[0].dtype != cell.dtype or not torch.equal(stored[0], cell):
            offsets = shift_table(cell, neighbors.reach).index_select(0, neighbors.shift_code)
            stored = cache["offsets"] = (cell.clone(), offsets)
        offsets = stored[1]
    return _PairDifferences.apply(positions, flat, offsets, centres)


def centre_sums(centres: torch.Tensor, n_atoms: int, dtype: torch.dtype) -> torch.Tensor:
    """[n_atoms, E] CSR matrix C with C[a, e] = −1 where edge e's centre is a (``centres`` [E] sorted):
    C @ g sums −g over each atom's edges, one contiguous run of rows of g per atom."""
    n_edges = centres.shape[0]
    rows = torch.zeros(n_atoms + 1, dtype=torch.long, device=centres.device)
    torch.cumsum(torch.bincount(centres, minlength=n_atoms), 0, out=rows[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR support is "beta" in torch: its warning, once
        return torch.sparse_csr_tensor(rows, torch.arange(n_edges, device=centres.device),
                                       torch.full((n_edges,), -1.0, dtype=dtype, device=centres.device),
                                       (n_atoms, n_edges), check_invariants=False)


class _PairDifferences(torch.autograd.Function):
    """r_j − r_i (+ ``offsets``, not differentiated) of edges sorted by centre i, [E, 3].

    Autograd's backward of the two gathers is two scatter-adds of [E, 3] rows and a negation;
    with the edges sorted by centre, the centres' part is the product of the stored matrix of
    :func:`centre_sums` with the gradient (each atom's edges are contiguous), and only the
    neighbours' part is a scatter-add. Gathers and scatter-add go through the flattened
    positions, at the stored indices ``flat`` [2, 3E] of the components of each edge's i and j
    (1-D gathers and scatter-adds are faster than those of rows of 3). 64 Mo cells (110k
    edges, one thread), forward and backward 1.9-2.5 against 3.9-5.4 ms.
    Once differentiable: a second derivative (training on forces) takes the autograd path.
    """

    @staticmethod
    def forward(ctx, positions, flat, offsets, centres):
        n_edges = flat.shape[1] // 3
        values = positions.reshape(-1)
        vectors = values.index_select(0, flat[1]).sub_(values.index_select(0, flat[0])).view(n_edges, 3)
        if offsets is not None:
            vectors.add_(offsets)
        ctx.save_for_backward(flat)
        ctx.centres = centres
        return vectors

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (flat,) = ctx.saved_tensors
        out = torch.mm(ctx.centres, grad)  # [N, 3], contiguous
        out.view(-1).index_add_(0, flat[1], grad.reshape(-1))
        return out, None, None, None


def shift_vectors(cell: torch.Tensor, edge_system: torch.Tensor, shifts: torch.Tensor,
                  reach: int | None = None) -> torch.Tensor:
    """S·cell of each edge, [E, 3] Å, differentiable in ``cell`` [B, 3, 3].

    With ``reach`` (every |S| component at most that) it is gathered from a [B·K, 3] table
    of the K = (2·reach + 1)³ shifts within reach: one [E, 3] gather instead of a [E, 3, 3]
    gather and E tiny matrix products, forward and backward (on 64 Mo cells, 184k edges:
    5.4 vs 9.4 ms forward, 8 vs 26-56 ms with the gradient for the stress). Without it (inside
    compiled graphs, where the compiler fuses the product) one row times matrix per edge.
    """
    if reach is None:
        return torch.bmm(shifts.to(cell.dtype).unsqueeze(1), cell.index_select(0, edge_system)).squeeze(1)
    return shift_table(cell, reach).index_select(0, shift_codes(edge_system, shifts, reach))


def shift_table(cell: torch.Tensor, reach: int) -> torch.Tensor:
    """[B·K, 3] Å: S·cell_b for every system b and the K = (2·reach + 1)³ shifts S within reach."""
    width = 2 * reach + 1
    grid = torch.arange(width ** 3, device=cell.device)
    shifts = torch.stack([grid // (width * width), grid // width % width, grid % width], 1) - reach
    return torch.einsum("kc,bcd->bkd", shifts.to(cell.dtype), cell).reshape(-1, 3)


def shift_codes(edge_system: torch.Tensor, shifts: torch.Tensor, reach: int) -> torch.Tensor:
    """[E] each edge's row of :func:`shift_table` (its system and shift)."""
    width = 2 * reach + 1
    s = shifts + reach
    return edge_system * width ** 3 + (s[:, 0] * width + s[:, 1]) * width + s[:, 2]


def largest_shift(shifts: torch.Tensor) -> int:
    """The largest |S| component of [E, 3] shifts (0 without edges): a ``reach``, one host sync."""
    return int(shifts.abs().max()) if shifts.numel() else 0


class NeighborList:
    """Neighbor-list builder (holds torch-cluster's neighbor cap between calls).

    Args:
        cutoff: radius in Å; pairs with distance < cutoff are returned.
        backend: "torch" (the pure-torch search: all pairs for tiny inputs, a
            cell list beyond), "torch-cluster" (its ``radius`` search), or
            "auto": torch-cluster for tensors on a GPU when it is installed,
            the pure-torch search on the CPU (faster there; see the module doc).
    """

    def __init__(self, cutoff: float, backend: str = "auto"):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {BACKENDS}")
        if backend == "torch-cluster" and not _HAS_TORCH_CLUSTER:
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
            n_atoms = batch.positions.shape[0]
            use_cluster = self.backend == "torch-cluster" or (
                self.backend == "auto" and _HAS_TORCH_CLUSTER and batch.positions.is_cuda)
            if (self.backend != "torch-cluster" and batch.n_systems == 1
                    and n_atoms * n_atoms <= _DENSE_PAIRS_LIMIT and not bool(batch.pbc.any())):
                return _small_molecule(batch.positions, self.cutoff)
            margin = _rounding_margin(batch, self.cutoff)
            reach2 = self.cutoff**2 + margin  # candidates: every pair that might be < cutoff
            images = _periodic_images(batch, math.sqrt(reach2))
            if use_cluster:
                center, image = self._search_cluster(batch, images, math.sqrt(reach2))
                d2 = (images.positions[image] - images.centers[center]).square().sum(1)
            elif _dense_is_cheaper(batch, images):
                center, image, d2 = _search_dense(batch, images, reach2)
            else:
                center, image, d2 = _search_cells(batch, images, reach2)
            return _finish(batch, images, center, image, d2, self.cutoff, margin)

    def _search_cluster(self, batch: Batch, images: _Images, radius: float):
        n_per_system = torch.bincount(images.system, minlength=batch.n_systems)
        # An atom has at most as many neighbors as its structure has images.
        bound = int(n_per_system.max())
        cap = min(bound, max(self._max_neighbors_hint, _density_guess(batch, images, self.cutoff)))
        while True:
            # radius already carries the rounding margin; _finish applies the exact cutoff
            center, image = _torch_cluster().radius(
                images.positions, images.centers, radius,
                batch_x=images.system, batch_y=batch.system, max_num_neighbors=cap,
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
    wrap: torch.Tensor | None  # [n_atoms, 3] integer: positions = centers + wrap @ cell; None if all 0
    positions: torch.Tensor  # [n_images, 3] Å
    atom: torch.Tensor  # [n_images] index of the atom each image copies
    shift: torch.Tensor | None  # [n_images, 3] integer (int8 if it fits), relative to the
    #                             *unwrapped* atom; None if open
    system: torch.Tensor  # [n_images], sorted
    self_image: torch.Tensor  # [n_atoms] index of each atom's zero-shift image
    periodic: bool


def _complete_cell(cell: torch.Tensor, pbc: torch.Tensor) -> torch.Tensor:
    """Cells with degenerate non-periodic vectors completed to a basis.

    Fractional coordinates are only needed along periodic axes; a slab or wire
    may carry zero vectors along its open axes, which are replaced by unit
    vectors orthogonal to the periodic ones.
    """
    dets = _triple_product(cell).abs()
    degenerate = torch.nonzero(dets < 1e-10).flatten().tolist()
    if not degenerate:
        return cell
    out = cell.clone()
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
    for b in degenerate:
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


def _triple_product(cell: torch.Tensor) -> torch.Tensor:
    """Signed volumes a·(b×c) of cells [B, 3, 3] (cheaper than linalg.det for 3×3)."""
    return (cell[:, 0] * torch.linalg.cross(cell[:, 1], cell[:, 2])).sum(-1)


def _row_times(rows: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """rows[n] @ matrices[n] for [N, 3] rows and [N or 1, 3, 3] matrices.

    Written out elementwise: for 3×3 products, BLAS calls cost more in
    dispatch (and thread wake-ups) than the arithmetic.
    """
    return (rows.unsqueeze(-1) * matrices).sum(-2)


def _per_atom(table: torch.Tensor, system: torch.Tensor) -> torch.Tensor:
    """table[system] for per-structure tensors; a broadcastable view for one structure."""
    return table if table.shape[0] == 1 else table[system]


def _periodic_images(batch: Batch, cutoff: float) -> _Images:
    """Images within ``cutoff`` of their structure's cell (the atoms themselves if open)."""
    pbc = batch.pbc
    system = batch.system
    positions = batch.positions
    n_atoms = positions.shape[0]
    if not bool(pbc.any()):
        atoms = torch.arange(n_atoms, device=positions.device)
        return _Images(positions, None, positions, atoms, None, system, atoms, False)

    cell = _complete_cell(batch.cell, pbc)
    # rows b×c, c×a, a×b: their transpose over the volume is the inverse cell
    # (3×3 by hand: LAPACK's batched inverse costs milliseconds here)
    cross = torch.linalg.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]])  # [B, 3, 3]
    signed_volume = (cell[:, 0] * cross[:, 0]).sum(-1)  # [B]
    inverse = cross.transpose(1, 2) / signed_volume[:, None, None]  # [B, 3, 3]
    frac = _row_times(positions, _per_atom(inverse, system))  # [N, 3]
    pbc_atom = _per_atom(pbc, system)  # [N or 1, 3]
    wrap = torch.where(pbc_atom, torch.floor(frac), torch.zeros_like(frac))
    frac = frac - wrap
    centers = positions - _row_times(wrap, _per_atom(batch.cell, system))

    # plane spacing d_k = V / |a_l x a_m|: an image further than cutoff/d_k
    # (in fractional units) from the cell along a periodic axis k cannot
    # reach any atom inside it. The margin covers rounding of the search.
    volume = signed_volume.abs().unsqueeze(1)
    reach = (cutoff * (1 + 1e-6)) * cross.norm(dim=2) / volume  # [B, 3], fractional
    reach = torch.where(pbc, reach, torch.zeros_like(reach))
    n_max = torch.ceil(reach).long().amax(0).tolist()  # images per axis, whole batch

    # candidate image (atom a, shift s) is kept if inside the reach on every
    # axis: one [N, 2n+1] test per axis, combined by broadcasting
    reach_atom = _per_atom(reach, system)
    keep_axes = []
    for k, n in enumerate(n_max):
        offsets = torch.arange(-n, n + 1, device=positions.device, dtype=positions.dtype)
        shifted = frac[:, k:k + 1] + offsets  # [N, 2n+1]
        r = reach_atom[:, k:k + 1]
        periodic_k = pbc_atom[:, k:k + 1]
        # along open axes positions are not wrapped: only the zero shift, wherever it is
        keep_k = ((shifted >= -r) & (shifted <= 1 + r)) | ~periodic_k
        if n > 0:
            keep_k = keep_k & ((offsets == 0) | periodic_k)
        keep_axes.append(keep_k)
    keep = (keep_axes[0][:, :, None, None] & keep_axes[1][:, None, :, None]
            & keep_axes[2][:, None, None, :]).reshape(n_atoms, -1)  # [N, S]
    atom, which = torch.nonzero(keep, as_tuple=True)  # atom-major, so systems stay sorted
    shifts = torch.tensor(list(product(*[range(-n, n + 1) for n in n_max])),
                          dtype=torch.long, device=positions.device)  # [S, 3]
    shift_vectors = shifts.to(positions.dtype) @ batch.cell  # [B, S, 3] Å
    image_system = system[atom]
    if batch.n_systems == 1:
        image_positions = centers[atom] + shift_vectors[0, which]
    else:
        image_positions = centers[atom] + shift_vectors[image_system, which]
    zero = (n_max[0] * (2 * n_max[1] + 1) + n_max[1]) * (2 * n_max[2] + 1) + n_max[2]
    self_image = torch.nonzero(which == zero).squeeze(1)  # one per atom, in atom order
    wrap = wrap.long()
    any_wrap = bool(wrap.any())
    image_shift = shifts[which]
    if any_wrap:  # shifts relative to the unwrapped position r_j = center_j + wrap_j·cell
        image_shift = image_shift - wrap[atom]
    # the smallest integer type that holds shift + wrap: gathering millions of
    # int64 triples per edge is the costliest step of a large list otherwise
    bound = int(image_shift.abs().max()) + (int(wrap.abs().max()) if any_wrap else 0)
    compact = next(t for t in (torch.int8, torch.int16, torch.int32, torch.long)
                   if bound < torch.iinfo(t).max)
    image_shift, wrap = image_shift.to(compact), wrap.to(compact)
    return _Images(centers, wrap if any_wrap else None, image_positions, atom, image_shift,
                   image_system, self_image, True)


def _rounding_margin(batch: Batch, cutoff: float) -> float:
    """Bound on |d² from wrapped images − d² from edge_vectors|, in Å².

    The two agree mathematically but round differently; with coordinates up
    to X the two vectors differ by a few ulp of X, so d² moves by about
    2·cutoff·(few ulp of X). X bounds positions and images: |r| plus the cell
    diagonal plus twice the cutoff. 64 ulp leaves a wide safety factor.
    Both sides are computed in the batch's dtype (float64 from the calculator,
    whatever the model's), so its epsilon is the one that matters: at
    X = 10⁶ Å and a 5 Å cutoff the margin is 7e-8 Å².
    """
    eps = torch.finfo(batch.positions.dtype).eps
    largest = float(batch.positions.abs().max()) if batch.positions.numel() else 0.0
    if bool(batch.pbc.any()):
        largest += float(batch.cell.norm(dim=2).sum(1).max()) + 2 * cutoff
    return 64 * eps * (cutoff * largest + cutoff**2)


def _dense_is_cheaper(batch: Batch, images: _Images) -> bool:
    """Whether comparing all (atom, image) pairs beats the cell list (measured crossovers).

    The dense search pads every structure to the largest, so its cost is
    n_structures × max atoms × max images: cheap for one small input, and for
    many small molecules (a calculate_batch of 512 ethanols: 41k pairs, half
    the time of the cell list), whose per-structure blocks stay tiny.
    """
    if batch.n_systems == 1:
        return batch.positions.shape[0] * images.positions.shape[0] <= _DENSE_PAIRS_LIMIT
    n_images = torch.bincount(images.system, minlength=batch.n_systems)
    block = int(batch.n_atoms.max()) * int(n_images.max())
    padded = batch.n_systems * block
    return padded <= _DENSE_PAIRS_LIMIT or (block <= _DENSE_BLOCK_LIMIT and padded <= _DENSE_CHUNK)


def _density_guess(batch: Batch, images: _Images, cutoff: float) -> int:
    """A cap that is rarely exceeded: twice the mean count in a cutoff sphere."""
    sphere = 4.0 / 3.0 * math.pi * cutoff**3
    if images.periodic and bool(batch.pbc.all()):
        volume = torch.linalg.det(batch.cell).abs().clamp_min(1e-6)
        density = float((batch.n_atoms / volume).max())
        return int(2 * density * sphere) + 16
    return 128


def _small_molecule(positions: torch.Tensor, cutoff: float) -> Neighbors:
    """One open molecule: all pairs in a handful of tensor operations.

    The vectors are r_j − r_i exactly as :func:`edge_vectors` forms them, so
    the cutoff test needs no rounding margin.
    """
    vectors = positions[None, :, :] - positions[:, None, :]  # [N, N, 3], vectors[i, j] = r_j - r_i
    close = vectors.square().sum(-1) < cutoff * cutoff
    close.fill_diagonal_(False)
    edge_index = torch.nonzero(close).t().contiguous()
    shifts = torch.zeros((edge_index.shape[1], 3), dtype=torch.long, device=positions.device)
    return Neighbors(edge_index, shifts, False)


def _first_index(counts: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(counts, 0) - counts


def _search_dense(batch: Batch, images: _Images, reach2: float):
    """All (atom, image) pairs of each structure: (center, image, d²) with d² < reach2."""
    centers, others = images.centers, images.positions
    if batch.n_systems == 1:
        chunk = max(1, _DENSE_CHUNK // max(1, others.shape[0]))
        found_a, found_m, found_d2 = [], [], []
        for start in range(0, centers.shape[0], chunk):
            d2 = (others[None, :, :] - centers[start:start + chunk, None, :]).square().sum(-1)
            a, m = torch.nonzero(d2 < reach2, as_tuple=True)
            found_a.append(a + start)
            found_m.append(m)
            found_d2.append(d2[a, m])
        if len(found_a) == 1:
            return found_a[0], found_m[0], found_d2[0]
        return torch.cat(found_a), torch.cat(found_m), torch.cat(found_d2)

    # many structures: pad each to the largest, padding far away with
    # opposite signs so that padding never pairs with padding
    n_atoms = batch.n_atoms
    n_images = torch.bincount(images.system, minlength=batch.n_systems)
    n_sys = batch.n_systems
    max_n, max_m = int(n_atoms.max()), int(n_images.max())
    atom_first, image_first = _first_index(n_atoms), _first_index(n_images)
    dev, dtype = others.device, others.dtype
    padded_centers = torch.full((n_sys, max_n, 3), 1e10, dtype=dtype, device=dev)
    local_atom = torch.arange(centers.shape[0], device=dev) - atom_first[batch.system]
    padded_centers[batch.system, local_atom] = centers
    padded_others = torch.full((n_sys, max_m, 3), -1e10, dtype=dtype, device=dev)
    local_image = torch.arange(others.shape[0], device=dev) - image_first[images.system]
    padded_others[images.system, local_image] = others

    chunk = max(1, _DENSE_CHUNK // max(1, n_sys * max_m))
    found_b, found_a, found_m, found_d2 = [], [], [], []
    for start in range(0, max_n, chunk):
        diff = padded_others[:, None, :, :] - padded_centers[:, start:start + chunk, None, :]
        d2 = diff.square().sum(-1)
        b, a, m = torch.nonzero(d2 < reach2, as_tuple=True)
        found_b.append(b)
        found_a.append(a + start)
        found_m.append(m)
        found_d2.append(d2[b, a, m])
    b, a, m = torch.cat(found_b), torch.cat(found_a), torch.cat(found_m)
    return atom_first[b] + a, image_first[b] + m, torch.cat(found_d2)


def _search_cells(batch: Batch, images: _Images, reach2: float):
    """Cell-list search: (center, image, d²) of every pair with d² < reach2.

    Images are binned into cells of width w ≈ cutoff/2 on a grid spanning
    each structure's images, and sorted by cell id = x-major, z fastest, so
    that the cells of one (x, y) column form one contiguous slice. For an
    atom at grid coordinates g and a column at offsets (dx, dy), the nearest
    xy-distance ρ between them bounds the z half-range to h = √(reach² − ρ²);
    the cells from ⌊g_z − h/w⌋ to ⌊g_z + h/w⌋ of that column are one slice
    [begin, end) of the sorted images.
    """
    positions, centers = images.positions, images.centers
    device = positions.device
    n_sys = batch.n_systems
    reach = math.sqrt(reach2)

    # per-structure grid over its images (centers are among them: the
    # zero-shift image of an atom is the wrapped atom itself)
    if n_sys == 1:
        low, high = positions.amin(0, keepdim=True), positions.amax(0, keepdim=True)
    else:
        index = images.system.unsqueeze(1).expand(-1, 3)
        low = positions.new_full((n_sys, 3), math.inf).scatter_reduce_(0, index, positions, "amin")
        high = positions.new_full((n_sys, 3), -math.inf).scatter_reduce_(0, index, positions, "amax")
    extent = (high - low).clamp_min(0)
    width = reach / _CELLS_PER_CUTOFF
    while True:  # sparse structures (few atoms spread wide) get coarser cells
        dims = torch.floor(extent / width).long() + 1  # [B, 3]
        n_cells = dims.prod(1)
        total_cells = int(n_cells.sum())
        if total_cells <= 8 * positions.shape[0] + 4096:
            break
        width *= 2
    columns = math.ceil(reach / width)  # neighbor columns on each side
    first_cell = torch.cumsum(n_cells, 0) - n_cells  # [B]
    stride_x = dims[:, 1] * dims[:, 2]  # [B]

    def cell_of(grid, system):
        g = torch.minimum(grid.long().clamp_min(0), _per_atom(dims, system) - 1)
        base = _per_atom(first_cell, system) + g[:, 0] * _per_atom(stride_x, system)
        return g, base + g[:, 1] * _per_atom(dims[:, 2], system) + g[:, 2]

    _, image_cell = cell_of(torch.floor((positions - _per_atom(low, images.system)) / width),
                            images.system)
    order = torch.argsort(image_cell)
    # one contiguous vector per axis: 1-D gathers are the fast path
    sorted_x, sorted_y, sorted_z = positions.index_select(0, order).t().contiguous()
    center_x, center_y, center_z = centers.t().contiguous()
    slice_start = torch.zeros(total_cells + 1, dtype=torch.long, device=device)
    slice_start[1:] = torch.cumsum(torch.bincount(image_cell, minlength=total_cells), 0)

    # the columns an atom visits: offsets along x and y, handled separately
    # per axis ([N, 2, W]) and combined by broadcasting ([N, W, W])
    system = batch.system
    n_atoms = centers.shape[0]
    grid = (centers - _per_atom(low, system)) / width  # [N, 3], in cell widths
    cell, _ = cell_of(torch.floor(grid), system)
    within = (grid - cell)[:, :2, None]  # [N, 2, 1], position inside its cell, 0..1
    offsets = torch.arange(-columns, columns + 1, device=device)  # [W]
    dims_atom = _per_atom(dims, system)
    column_xy = cell[:, :2, None] + offsets  # [N, 2, W]
    exists = (column_xy >= 0) & (column_xy < dims_atom[:, :2, None])
    # distance (in cell widths) from the atom to the nearest face of each column
    gap = (offsets - within).clamp_min(0) + (within - offsets - 1).clamp_min(0)
    gap2 = torch.where(exists, gap.square(), math.inf)
    half_height2 = reach2 / width**2 - gap2[:, 0, :, None] - gap2[:, 1, None, :]  # [N, W, W]
    visit = half_height2 >= 0
    half_height = half_height2.clamp_min(0).sqrt()
    z = grid[:, 2, None, None]
    z_low = torch.floor(z - half_height).long().clamp_min(0)
    z_high = torch.minimum(torch.floor(z + half_height).long(), dims_atom[:, 2, None, None] - 1)
    column_xy = torch.minimum(column_xy.clamp_min(0), dims_atom[:, :2, None] - 1)
    column_x = (_per_atom(first_cell, system)[:, None] + column_xy[:, 0] * _per_atom(stride_x, system)[:, None])
    column = column_x[:, :, None] + (column_xy[:, 1] * dims_atom[:, 2, None])[:, None, :]  # [N, W, W]
    begin = slice_start[column + z_low].reshape(n_atoms, -1)  # [N, K]: slice of sorted images
    end = slice_start[column + z_high + 1].reshape(n_atoms, -1)
    count = torch.where(visit.reshape(n_atoms, -1), end - begin, 0)

    per_atom = count.sum(1)  # [N]
    cumulative = torch.cumsum(per_atom, 0)
    n_candidates = int(cumulative[-1]) if n_atoms else 0
    if n_candidates <= _CELL_CHUNK:
        bounds, cum = [0, n_atoms], [0] * n_atoms + [n_candidates]
    else:  # chunks of about _CELL_CHUNK candidates, whole atoms each
        targets = torch.arange(_CELL_CHUNK, n_candidates, _CELL_CHUNK, device=device)
        ends = torch.searchsorted(cumulative, targets, right=True).tolist()
        bounds = sorted({0, n_atoms, *[min(e, n_atoms) for e in ends]})
        cum = [0] + cumulative.tolist()

    found_center, found_image, found_d2 = [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        n = cum[b] - cum[a]
        if n == 0:
            continue
        # sorted image index of each candidate: a running count (cumsum of
        # steps of 1) that jumps to the begin of each non-empty slice
        counts = count[a:b].reshape(-1)
        slices = torch.nonzero(counts).squeeze(1)
        length = counts.index_select(0, slices)
        first = begin[a:b].reshape(-1).index_select(0, slices)
        step = torch.ones(n, dtype=torch.long, device=device)
        jump = first.clone()
        jump[1:] -= first[:-1] + length[:-1] - 1
        step.index_copy_(0, torch.cumsum(length, 0) - length, jump)
        candidate = torch.cumsum(step, 0)
        # center of each candidate: a + how many later atoms have started by then
        atom_start = torch.cumsum(per_atom[a:b], 0)[:-1]
        atom_start = atom_start[atom_start < n]
        mark = torch.zeros(n, dtype=torch.long, device=device)
        mark.index_put_((atom_start,), torch.ones_like(atom_start), accumulate=True)
        center = torch.cumsum(mark, 0).add_(a)
        d = sorted_x.index_select(0, candidate).sub_(center_x.index_select(0, center))
        d2 = d.square_()
        d = sorted_y.index_select(0, candidate).sub_(center_y.index_select(0, center))
        d2.addcmul_(d, d)
        d = sorted_z.index_select(0, candidate).sub_(center_z.index_select(0, center))
        d2.addcmul_(d, d)
        close = torch.nonzero(d2 < reach2).squeeze(1)
        found_center.append(center.index_select(0, close))
        found_image.append(candidate.index_select(0, close))
        found_d2.append(d2.index_select(0, close))
    if not found_center:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, positions.new_zeros(0)
    if len(found_center) == 1:
        center, candidate, d2 = found_center[0], found_image[0], found_d2[0]
    else:
        center, candidate, d2 = torch.cat(found_center), torch.cat(found_image), torch.cat(found_d2)
    return center, order.index_select(0, candidate), d2


def _finish(batch: Batch, images: _Images, center, image, d2, cutoff: float, margin: float) -> Neighbors:
    """Candidate (center, image, d²) to exact (i, j, S) on the unwrapped positions.

    d² was computed from wrapped centers and images; pairs within ``margin``
    of the cutoff are decided again with :func:`edge_vectors`, the formula
    the models use, so the result is exactly "distance < cutoff" there.
    """
    cutoff2 = cutoff * cutoff
    inside = (d2 < cutoff2 - margin) & (d2 != 0)
    n_zero = d2.numel() - int(torch.count_nonzero(d2))
    if n_zero != batch.positions.shape[0]:
        # more zero distances than self pairs: distinct atoms (or images) coincide
        zero = torch.nonzero(d2 == 0).squeeze(1)
        not_self = image[zero] != images.self_image[center[zero]]
        inside[zero[not_self]] = True
    border = torch.nonzero(d2 >= cutoff2 - margin).squeeze(1)  # candidates are all < cutoff2 + margin
    if border.numel():
        exact = _edges(images, center, image, border)
        exact_d2 = edge_vectors(batch.positions, batch.cell, batch.system, exact).square().sum(1)
        inside[border] = exact_d2 < cutoff2
    keep = torch.nonzero(inside).squeeze(1)
    return _edges(images, center, image, keep)


def _edges(images: _Images, center: torch.Tensor, image: torch.Tensor,
           keep: torch.Tensor | None = None) -> Neighbors:
    """Neighbors of the (center, image) pairs, or of those selected by ``keep``."""
    n_edges = center.shape[0] if keep is None else keep.shape[0]
    edge_index = torch.empty((2, n_edges), dtype=torch.long, device=center.device)
    if keep is None:
        edge_index[0] = center
    else:
        torch.index_select(center, 0, keep, out=edge_index[0])
        image = image.index_select(0, keep)
    torch.index_select(images.atom, 0, image, out=edge_index[1])
    if not images.periodic:
        return Neighbors(edge_index, torch.zeros((n_edges, 3), dtype=torch.long, device=center.device),
                         False)
    # image of j = r_j + shift·cell (shift stored relative to the unwrapped r_j);
    # center i = r_i − wrap_i·cell
    shift = images.shift.index_select(0, image)
    if images.wrap is not None:
        shift += images.wrap.index_select(0, edge_index[0])
    shift = shift.long()
    return Neighbors(edge_index, shift, True, largest_shift(shift))
