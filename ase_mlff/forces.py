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
           numbers: torch.Tensor, neighbors: Neighbors, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """E [B] and E_i [N] (eV) as functions of the positions and the strain: the one definition of both.

    The eager path (:func:`compute`) differentiates it with ``torch.autograd``, the compiled one
    (:mod:`ase_mlff.compiled`) with ``torch.func`` inside one graph; both see the same operations.
    """
    if strain is not None:
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        positions = positions + torch.bmm(positions.unsqueeze(1), symmetric[system]).squeeze(1)
        cell = cell + torch.bmm(cell, symmetric)
    vectors = edge_vectors(positions, cell, system, neighbors)  # [E, 3], Å, batch dtype
    # rounded only now, after the large coordinates have cancelled in r_j − r_i
    energies = model(numbers, neighbors.edge_index, vectors.to(dtype))  # [N], eV
    return torch.zeros_like(cell[:, 0, 0], dtype=energies.dtype).index_add_(0, system, energies), energies


def compute(model: torch.nn.Module, batch: Batch, neighbors: Neighbors, *, forces: bool = True,
            stress: bool = False, training: bool = False, dtype: torch.dtype | None = None) -> Output:
    """Evaluate ``model`` on ``batch``.

    Args:
        forces: compute F = −dE/dr, [n_atoms, 3] eV/Å in the batch's dtype.
        stress: compute σ (every structure in the batch must be 3-D periodic).
        training: keep the graph of the derivatives so a force loss can be
            back-propagated into the weights.
        dtype: of the edge vectors the model is given; None: :func:`model_dtype`
            (or the batch's dtype for a model without weights or buffers).

    A :class:`~ase_mlff.compiled.CompiledModel` evaluates energy and derivatives in one
    compiled graph (``fused``), except when training.
    """
    dtype = dtype or model_dtype(model) or batch.positions.dtype
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
    total, energies = energy(model, positions, batch.cell, strain, batch.system, batch.numbers, neighbors, dtype)

    if not inputs:
        return Output(total, energies)
    if total.requires_grad:
        grads = torch.autograd.grad(total.sum(), inputs, create_graph=training, allow_unused=True)
    else:  # no edges anywhere: the energy does not depend on the geometry
        grads = [None] * len(inputs)
    grads = [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]
    return output(batch, total, energies, grads[0] if forces else None, grads[-1] if stress else None)


def output(batch: Batch, total: torch.Tensor, energies: torch.Tensor, d_positions: torch.Tensor | None,
           d_strain: torch.Tensor | None) -> Output:
    """:class:`Output` from E and its derivatives: F = −∂E/∂r, σ = (∂E/∂ε)/V."""
    stress = None
    if d_strain is not None:
        volume = torch.linalg.det(batch.cell).abs()  # [B], Å³
        stress = d_strain / volume.view(-1, 1, 1)
    return Output(total, energies, None if d_positions is None else -d_positions, stress)
