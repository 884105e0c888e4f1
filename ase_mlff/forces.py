"""Energy, forces and stress from one autograd pass. The only caller of ``torch.autograd.grad``.

    E_b  = Σ_{i∈b} E_i
    F_i  = −∂E/∂r_i
    σ_b  = (1/V_b) ∂E/∂ε_b      with  r → r(1 + ε_sym),  cell → cell(1 + ε_sym)

The strain ε is symmetrised so that a rotation cannot leak into the virial.
Sign and units follow ASE's ``atoms.get_stress()``: σ = −virial/V in eV/Å³
(a compressed cell has negative diagonal stress, pressure = −tr σ/3).

Precision: positions, cell, strain and the edge vectors r_j − r_i + S·cell
are formed in the batch's dtype (float64 from :func:`~ase_mlff.batch.atoms_to_batch`);
only the edge vectors, a few Å long, are rounded to the model's dtype. A
float32 model then sees the same inputs at 10⁶ Å from the origin as at the
origin (a float32 position there would carry 0.06 Å of rounding), and the
gradients flow back through the cast, so forces and stress come out in the
batch's dtype.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from .batch import Batch
from .neighbors import Neighbors, edge_vectors


@dataclass(frozen=True)
class Output:
    """Results for a batch.

    Attributes:
        energy: [n_systems] eV, float64.
        energies: [n_atoms] eV, float64 (per-atom decomposition).
        forces: [n_atoms, 3] eV/Å, or None.
        stress: [n_systems, 3, 3] eV/Å³, or None.
    """

    energy: torch.Tensor
    energies: torch.Tensor
    forces: torch.Tensor | None = None
    stress: torch.Tensor | None = None


# Potential keeps its energy reference in float64 whatever the network's dtype
# (see models.base.Potential._apply): these buffers say nothing about it.
_REFERENCE_BUFFERS = ("element_energy", "scale", "shift")


def model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The floating dtype ``model`` computes in, or None when nothing in it says.

    That of its floating parameters, else of its floating buffers (radial-basis
    centers and the like) other than the float64 energy reference. An analytic
    model such as ``LennardJones`` has neither.
    """
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and name.rsplit(".", 1)[-1] not in _REFERENCE_BUFFERS:
            return buffer.dtype
    return None


def energy(model, positions: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor | None, system: torch.Tensor,
           numbers: torch.Tensor, neighbors: Neighbors, dtype: torch.dtype,
           reuse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """E [B] and E_i [N] (eV) as functions of the positions and the strain: the one definition of both.

    The eager path (:func:`compute`) differentiates it with ``torch.autograd``, the compiled one
    (:mod:`ase_mlff.compiled`) with ``torch.func`` inside one graph; both see the same operations.
    ``reuse``: the edge vectors' derivative through what a kept list stores
    (:func:`~ase_mlff.neighbors.edge_vectors`; differentiable once).
    """
    if strain is not None:
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.bmm(positions.unsqueeze(1), symmetric[system]).squeeze(1)
        cell = cell + torch.bmm(cell, symmetric)
    vectors = edge_vectors(positions, cell, system, neighbors, reuse)  # [E, 3], Å, batch dtype
    # rounded only now, after the large coordinates have cancelled in r_j − r_i
    half = {"half": True} if neighbors.half else {}  # only models with half_lists get half lists
    energies = model(numbers, neighbors.edge_index, vectors.to(dtype), **half)  # [N], eV
    return torch.zeros_like(cell[:, 0, 0], dtype=energies.dtype).index_add_(0, system, energies), energies


def piece_edges(model: torch.nn.Module, device: torch.device) -> int:
    """Edges per piece in which ``model`` evaluates a large batch on ``device``; 0: all at once.

    On the CPU, a network's ``piece_edges_per_thread`` × torch's threads: its per-edge features
    then stay in the core's cache between the layers that read them. Measured on a 2-core Intel
    Xeon, bundled PaiNN (64 features), forward + backward of 512 ethanols (36,864 edges): eager,
    one thread, 452 ms in one call against 343 ms in pieces of 16-32 molecules (1,150-2,300
    edges); two threads 328 against 263 ms in pieces of 64 (4,600 edges); compiled, one thread,
    286 against 100 ms. Lennard-Jones, with three numbers per edge, is slower in pieces (64 Mo
    cells, 184k edges: 18 ms whole, 47 ms in pieces of 2,048) and is never split; nor is
    anything on a GPU, which wants the whole batch at once.
    """
    per_thread = getattr(getattr(model, "model", model), "piece_edges_per_thread", None)  # through a CompiledModel
    if device.type != "cpu" or not per_thread:
        return 0
    return int(per_thread) * torch.get_num_threads()


def compute(model: torch.nn.Module, batch: Batch, neighbors: Neighbors, *, forces: bool = True,
            stress: bool = False, training: bool = False, dtype: torch.dtype | None = None,
            piece_size: int | None = None) -> Output:
    """Evaluate ``model`` on ``batch``.

    Args:
        forces: compute F = −dE/dr, [n_atoms, 3] eV/Å in the batch's dtype.
        stress: compute σ (every structure in the batch must be 3-D periodic).
        training: keep the graph of the derivatives so a force loss can be
            back-propagated into the weights.
        dtype: of the edge vectors the model is given; None: :func:`model_dtype`
            (or the batch's dtype for a model without weights or buffers).
        piece_size: edges per piece of whole systems in which a large batch is
            evaluated (:func:`pieces`); None: :func:`piece_edges` of the batch's
            device; 0: the whole batch in one evaluation. Never when training.

    A :class:`~ase_mlff.compiled.CompiledModel` evaluates energy and derivatives in one
    compiled graph (``fused``), except when training.
    """
    dtype = dtype or model_dtype(model) or batch.positions.dtype
    if not training and batch.n_systems > 1:
        size = piece_edges(model, batch.positions.device) if piece_size is None else piece_size
        parts = pieces(batch, neighbors, size) if size > 0 and neighbors.n_edges >= 2 * size else None
        if parts is not None:
            return concatenate([compute(model, b, n, forces=forces, stress=stress, dtype=dtype, piece_size=0)
                                for b, n in parts])
    fused = getattr(model, "fused", None)
    if fused is not None and not training:
        return fused(batch, neighbors, forces=forces, stress=stress, dtype=dtype)
    positions, strain = batch.positions, None
    inputs = []
    if forces:
        positions = positions.detach().requires_grad_(True)
        inputs.append(positions)
    if stress:
        strain = torch.zeros_like(batch.cell, requires_grad=True)  # [B, 3, 3]
        inputs.append(strain)
    total, energies = energy(model, positions, batch.cell, strain, batch.system, batch.numbers, neighbors, dtype,
                             reuse=not training)

    if not inputs:
        return Output(total, energies)
    if total.requires_grad:
        grads = torch.autograd.grad(total.sum(), inputs, create_graph=training, allow_unused=True)
    else:  # no edges anywhere: the energy does not depend on the geometry
        grads = [None] * len(inputs)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    return output(batch, total, energies, grads[0] if forces else None, grads[-1] if stress else None)


def pieces(batch: Batch, neighbors: Neighbors, size: int) -> list[tuple[Batch, Neighbors]] | None:
    """``batch`` cut into consecutive runs of whole systems of about ``size`` edges each.

    Each piece takes systems until it holds at least E/⌈E/size⌉ edges (a share); what is left
    at the end becomes a piece if it holds half a share, else joins the last piece, so no piece
    holds fewer than a quarter of ``size`` edges. Each piece's atoms, edges and shift-table rows
    are renumbered from zero; its results, concatenated in order, are those of the whole batch.
    None when the batch does not split (one system holds nearly all edges).
    """
    n_edges, n_systems = neighbors.n_edges, batch.n_systems
    edge_system = batch.system.index_select(0, neighbors.edge_index[0])
    order = None
    if n_edges > 1 and bool((edge_system[1:] < edge_system[:-1]).any()):  # builders need not group them
        order = torch.argsort(edge_system, stable=True)
        edge_system = edge_system.index_select(0, order)
    per_system = torch.bincount(edge_system, minlength=n_systems).tolist()
    share = n_edges / math.ceil(n_edges / size)
    cuts, edges = [0], 0
    for b, count in enumerate(per_system):
        edges += count
        if edges >= share:  # a piece ends after the system that fills its share
            cuts.append(b + 1)
            edges = 0
    if cuts[-1] != n_systems:  # what is left: a piece of its own, or part of the last one if small
        if edges >= share / 2 or len(cuts) == 1:
            cuts.append(n_systems)
        else:
            cuts[-1] = n_systems
    if len(cuts) < 3:
        return None
    atom_offsets = [0, *torch.cumsum(batch.n_atoms, 0).tolist()]
    edge_offsets = [0, *torch.tensor(per_system).cumsum(0).tolist()]
    edge_index, shifts, code = neighbors.edge_index, neighbors.shifts, neighbors.shift_code
    if order is not None:
        edge_index, shifts = edge_index.index_select(1, order), shifts.index_select(0, order)
        code = None if code is None else code.index_select(0, order)
    rows = None if neighbors.reach is None else (2 * neighbors.reach + 1) ** 3  # shift-table rows per system
    parts = []
    for a, b in zip(cuts[:-1], cuts[1:]):
        (pa, pb), (ea, eb) = (atom_offsets[a], atom_offsets[b]), (edge_offsets[a], edge_offsets[b])
        sub = Batch(positions=batch.positions[pa:pb], numbers=batch.numbers[pa:pb], cell=batch.cell[a:b],
                    pbc=batch.pbc[a:b], system=batch.system[pa:pb] - a, n_atoms=batch.n_atoms[a:b])
        sub_code = None if code is None or rows is None else code[ea:eb] - a * rows
        # not ``ordered``: a piece is made anew on every call, so nothing derived from it is reused
        parts.append((sub, dataclasses.replace(neighbors, edge_index=edge_index[:, ea:eb] - pa,
                                                shifts=shifts[ea:eb], shift_code=sub_code, ordered=False)))
    return parts


def concatenate(outputs: list[Output]) -> Output:
    """One :class:`Output` from those of consecutive pieces of a batch."""
    def cat(name):
        values = [getattr(o, name) for o in outputs]
        return None if values[0] is None else torch.cat(values)

    return Output(cat("energy"), cat("energies"), cat("forces"), cat("stress"))


def output(batch: Batch, total: torch.Tensor, energies: torch.Tensor, d_positions: torch.Tensor | None,
           d_strain: torch.Tensor | None) -> Output:
    """:class:`Output` from E and its derivatives: F = −∂E/∂r, σ = (∂E/∂ε)/V."""
    stress = None
    if d_strain is not None:
        volume = torch.linalg.det(batch.cell).abs()  # [B], Å³
        stress = d_strain / volume.view(-1, 1, 1)
    return Output(total, energies, None if d_positions is None else -d_positions, stress)
