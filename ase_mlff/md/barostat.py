"""Stochastic cell rescaling: the NPT barostat of the batched engine.

Bernetti & Bussi, J. Chem. Phys. 153, 114107 (2020) (isotropic); the
anisotropic and triclinic forms after Del Tatto, Raiteri, Bernetti & Bussi,
Appl. Sci. 12, 1139 (2022). The cell follows a first-order (overdamped)
stochastic equation driven by the difference between the instantaneous and
the target pressure; positions are deformed with the cell and momenta with
its inverse transpose, so that scaled coordinates and scaled momenta are
untouched by the barostat. Everything is per system ([B] targets), in ASE
units: eV, Å, amu, ASE time.

Instantaneous pressure tensor (ASE stress σ = (1/V) ∂U/∂ε, a compressed cell
has σ < 0):

    P = (N / N_f) Σ_i p_i p_iᵀ / (m_i V) · 3  −  σ       (tensor, eV/Å³)
    P = tr P / 3 = N k_B T_inst / V − tr σ / 3         (scalar)

with T_inst = 2K / (N_f k_B) the dof-corrected temperature the run reports
(N atoms, N_f kinetic degrees of freedom: 3N − 3 when the total momentum is
zero and stays zero, as here). This is the kinetic-term convention of the
stored ``pressure`` and of the barostat alike. For N_f = 3N it is the plain
2K/(3V); with N_f = 3N − 3 it adds the kT/V that the Jacobian of the change
of variables contributes (derivation below), so that ⟨P⟩ = P₀ at equilibrium.

Why the kinetic term is N k_B T_inst/V: in the variables (ε = ln V, scaled
positions s = r h⁻¹, scaled momenta π = p hᵀ) the NPT density is
ρ ∝ V^{1 + N − N_f/3} exp(−β(U + K + P₀V)) (V from dV = V dε, V^N from the
positions, V^{−N_f/3} from the momenta). Overdamped dynamics for ε with
mobility D = k_B T β_T/(V τ_p) (Itô; D' = −D cancels the "1") then has the
drift (β_T/τ_p)(P_2K − P₀ + c k_BT/V), P_2K the pressure with 2K/(3V) and
c = N − N_f/3; replacing c k_BT by its instantaneous estimate
(3N − N_f) 2K/(3N_f) gives the P above. With c = 1 this is the form of
Bernetti & Bussi's eq. (3) (their kT/V term); for N_f = 3N (c = 0) it is the
form in the GROMACS manual.

Strain increment over a step dt (Euler-Maruyama, Itô), e symmetric, [B,3,3]:

====================================================  =====================================
equation                                              code (:func:`strain_increment`)
====================================================  =====================================
isotropic: dε = (β_T/τ_p)(P − P₀) dt                  ``rate * (P_iso - P0) * dt`` per axis,
  + √(2 k_BT β_T dt/(V τ_p)) ξ;  e = (dε/3) 1          ``amp * ξ₀ / √3``
anisotropic: e_αα = (β_T/(3τ_p))(P_αα − P₀) dt        ``rate = β_T / (3 τ_p)``,
  + √(2 k_BT β_T dt/(3 V τ_p)) ξ_α;  e_αβ = 0          ``amp = sqrt(2 kT β_T dt / (3 V τ_p))``
triclinic: e = (β_T/(3τ_p))(sym P − P₀ 1) dt          ``(ξ + ξᵀ)/2``: variance 1 on the
  + √(2 k_BT β_T dt/(3 V τ_p)) (ξ + ξᵀ)/2             diagonal, 1/2 off it (Einstein relation
                                                      for a symmetric shear coordinate)
====================================================  =====================================

ξ are standard normals from :func:`.noise.gaussian` (stream BAROSTAT, nine per
system per step: the same noise for a system alone or in a batch, nothing to
store for a restart). The deformation is symmetric, so the barostat never
rotates the cell; a triclinic cell does not stay in ASE's lower-triangular
form (its shape changes, not its orientation). The flat measure in the six
strain components is used for the shear (Del Tatto et al. discuss the choice).

Deformation M = exp(e) (:func:`deform`): h ← h M (cell vectors as rows),
r ← r M, p ← p M⁻ᵀ = p exp(−e); V ← V exp(tr e).

Effective energy (:func:`barostat_work`): the barostat's change of
K + U + P₀V is accumulated in ``thermostat["work"]`` (with the thermostat's),
so H̃ = U + K + P₀V − work stays constant up to integration error:
ΔK and P₀ΔV exactly, ΔU = ∫ V tr(σ de) by the trapezoid rule between the
stress before the deformation and the stress of the next force call.
"""

from __future__ import annotations

import math

import torch

from . import noise
from .settings import CELL_DOFS
from .state import MDState, kinetic_energy


def volume(cell: torch.Tensor) -> torch.Tensor:
    """[B] Å³ of cells [B, 3, 3]."""
    return torch.linalg.det(cell).abs()


def plane_spacings(cell: torch.Tensor) -> torch.Tensor:
    """[B, 3] Å: distance between lattice planes, V / |a_l × a_m| for each cell vector k."""
    cross = torch.stack([torch.linalg.cross(cell[:, 1], cell[:, 2]), torch.linalg.cross(cell[:, 2], cell[:, 0]),
                         torch.linalg.cross(cell[:, 0], cell[:, 1])], 1)  # [B, 3, 3]
    return volume(cell).unsqueeze(1) / torch.linalg.vector_norm(cross, dim=2)


def kinetic_tensor(state: MDState) -> torch.Tensor:
    """[B, 3, 3] eV: Σ_i p_i p_iᵀ / m_i per system (its trace is 2K)."""
    p = state.momenta
    outer = (p.unsqueeze(2) * p.unsqueeze(1)) / state.masses.view(-1, 1, 1)  # [N, 3, 3]
    return torch.zeros_like(state.cell).index_add_(0, state.system, outer)


def pressure_tensor(state: MDState) -> torch.Tensor:
    """[B, 3, 3] eV/Å³: (N / N_f) Σ p pᵀ/(m V) · 3 − σ (module doc), at ``state.stress``."""
    V = volume(state.cell)
    scale = 3.0 * state.n_atoms.to(V.dtype) / state.dof.clamp(min=1.0)  # 3N/N_f: the dof correction
    return (scale / V).view(-1, 1, 1) * kinetic_tensor(state) - state.stress


def pressure(state: MDState) -> torch.Tensor:
    """[B] eV/Å³, the instantaneous scalar pressure tr P / 3 (kinetic term included)."""
    return torch.diagonal(pressure_tensor(state), dim1=1, dim2=2).sum(1) / 3.0


def strain_increment(state: MDState, dt: float, cell_dof: str) -> torch.Tensor:
    """[B, 3, 3] symmetric strain e of one barostat step of length ``dt`` (module doc).

    Uses ``state.stress`` (at the current positions), the current momenta
    and per-system ``thermostat`` tensors ``kT``, ``pressure`` (eV/Å³),
    ``taup`` (ASE time), ``compressibility`` (Å³/eV). The noise index is
    ``state.step + 1``, the step being made.
    """
    th = state.thermostat
    V = volume(state.cell)
    P = pressure_tensor(state)
    P = 0.5 * (P + P.transpose(1, 2))
    eye = torch.eye(3, dtype=P.dtype, device=P.device)
    B = state.n_systems
    rate = (th["compressibility"] / (3.0 * th["taup"])).view(-1, 1, 1)  # [B, 1, 1]
    amp = torch.sqrt(2.0 * th["kT"] * th["compressibility"] * dt / (3.0 * V * th["taup"])).view(-1, 1, 1)
    owner = torch.arange(B, device=P.device).repeat_interleave(9)
    local = torch.arange(9, device=P.device).repeat(B)
    xi = noise.gaussian(state.seeds, owner, local, state.step + 1, noise.BAROSTAT).view(B, 3, 3)
    P0 = th["pressure"].view(-1, 1, 1)
    if cell_dof == "isotropic":
        p_iso = torch.diagonal(P, dim1=1, dim2=2).mean(1).view(-1, 1, 1)
        return (rate * (p_iso - P0) * dt + amp * xi[:, :1, :1] / math.sqrt(3.0)) * eye
    if cell_dof == "anisotropic":
        return (rate * (P - P0) * dt + amp * xi) * eye
    if cell_dof == "triclinic":
        return rate * (P - P0 * eye) * dt + amp * 0.5 * (xi + xi.transpose(1, 2))
    raise ValueError(f"unknown cell_dof {cell_dof!r}; valid: {', '.join(CELL_DOFS)}")


def deform(state: MDState, strain: torch.Tensor) -> None:
    """Apply M = exp(e): cell h M, positions r M, momenta p exp(−e) (per system)."""
    forward = torch.linalg.matrix_exp(strain)  # [B, 3, 3]
    backward = torch.linalg.matrix_exp(-strain)
    state.cell = torch.bmm(state.cell, forward)
    state.positions = torch.bmm(state.positions.unsqueeze(1), forward[state.system]).squeeze(1)
    state.momenta = torch.bmm(state.momenta.unsqueeze(1), backward[state.system]).squeeze(1)


def strain_work(state: MDState, strain: torch.Tensor) -> torch.Tensor:
    """[B] eV: V tr(σ e), the potential-energy change of strain e to first order at ``state.stress``."""
    return volume(state.cell) * (state.stress * strain).sum((1, 2))


def init_barostat(state: MDState, pressure: torch.Tensor, taup: torch.Tensor,
                  compressibility: torch.Tensor) -> None:
    """Per-system barostat tensors (ASE units) and the cell blow-up limits.

    The cell counts as blown up when its volume leaves [V₀/8, 8 V₀] or a
    lattice-plane spacing falls below half its initial value (V₀ and the
    spacings of the starting cell): the volume window is the same factor 2
    in every length.
    """
    th = state.thermostat
    th.update(pressure=pressure, taup=taup, compressibility=compressibility)
    V0 = volume(state.cell)
    th["min_volume"], th["max_volume"] = V0 / 8.0, V0 * 8.0
    th["min_spacing"] = 0.5 * plane_spacings(state.cell)


def npt_step(state: MDState, force_field, dt: float, cell_dof: str, thermostat_step) -> None:
    """One NPT step: Bussi, kick, barostat, drift, forces, kick (see :mod:`.integrators`)."""
    thermostat_step(state, dt)
    m = state.masses.unsqueeze(1)
    state.momenta = state.momenta + 0.5 * dt * state.forces
    strain = strain_increment(state, dt, cell_dof)
    kinetic_before, volume_before = kinetic_energy(state), volume(state.cell)
    work_before = strain_work(state, strain)  # at the stress of these positions
    deform(state, strain)
    kinetic_after = kinetic_energy(state)
    state.positions = state.positions + dt * state.momenta / m
    force_field(state)
    state.momenta = state.momenta + 0.5 * dt * state.forces
    potential = 0.5 * (work_before + strain_work(state, strain))  # trapezoid for ΔU of the deformation
    state.thermostat["work"] = (state.thermostat["work"] + (kinetic_after - kinetic_before) + potential
                                + state.thermostat["pressure"] * (volume(state.cell) - volume_before))
    state.step += 1
