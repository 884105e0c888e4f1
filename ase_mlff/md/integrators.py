"""Integrators as functions over a batched :class:`~.state.MDState`.

Each advances every system by one step ``dt`` (ASE time units), calls the
force field once, and updates ``state.step``. Positions and momenta are
float64; targets are per system (``state.thermostat["kT"]``: [B] eV).
Fixed atoms have zero force and zero momentum, so they never move.

``state.thermostat["work"]`` [B] accumulates the energy each thermostat put
into the system, so that E_pot + E_kin − work (Bussi, Langevin) or the
extended Hamiltonian (Nosé-Hoover chain) is conserved by the exact dynamics;
its drift measures the integration error as the total energy does in NVE.

Velocity Verlet (Swope et al., J. Chem. Phys. 76, 637 (1982)), in ASE's
operation order (with fused operations, equal to rounding) so that a single
system repeats ``ase.md.verlet.VelocityVerlet``:

======================================  ====================================
equation                                code (``velocity_verlet``)
======================================  ====================================
p ← p + (dt/2) F(r)                     ``torch.add(p, F, alpha=0.5 * dt)``
r ← r + dt p / m                        ``torch.addcdiv(r, p, m, value=dt)``
p ← p + (dt/2) F(r)                     after ``force_field(state)``
======================================  ====================================

Langevin, BAOAB splitting (Leimkuhler & Matthews, Appl. Math. Res. Express
2013, 34): exact Ornstein-Uhlenbeck step in the middle, one force call per
step, configurational sampling correct to O(dt²) (not ASE's ``Langevin``
scheme, which is Vanden-Eijnden & Ciccotti's):

======================================  ====================================
B: p ← p + (dt/2) F                     ``p + 0.5 * dt * F``
A: r ← r + (dt/2) p/m                   ``r + 0.5 * dt * p / m``
O: p ← c p + √((1−c²) m k_B T) ξ,       ``c = exp(-friction * dt)``, ξ from
   c = e^{−γ dt}                        :func:`.noise.gaussian` (stream LANGEVIN)
A, then F(r), then B                    as above
======================================  ====================================

Bussi stochastic velocity rescaling (Bussi, Donadio & Parrinello, J. Chem.
Phys. 126, 014101 (2007), eq. A7), applied before a Velocity Verlet step as
ASE's ``Bussi`` does:

===============================================  ==============================
K' = K + (1−c)(K̄ (R₁² + Σ_{i=2}^{N_f} R_i²)/N_f − K)  ``c = exp(-dt / taut)``,
     + 2 R₁ √(c(1−c) K K̄ / N_f)                   K̄ = N_f k_B T / 2; R from
p ← √(K'/K) p                                    noise streams BUSSI_FIRST/SECOND
===============================================  ==============================

Nosé-Hoover chain (Martyna, Klein & Tuckerman, J. Chem. Phys. 97, 2635
(1992); Trotter factorisation of Martyna et al., Mol. Phys. 87, 1117
(1996)), chain length M, masses Q₁ = N_f k_B T τ², Q_j = k_B T τ²:

============================================  =================================
G₁ = 2K − N_f k_B T; G_j = p_{j−1}²/Q_{j−1} − k_B T   ``_chain_forces``
half step of the chain: p_M += (δ/2) G_M; for        ``_chain_half_step``,
j = M−1..1: p_j ← p_j e^{−δ p_{j+1}/(4Q_{j+1})},
p_j += (δ/2) G_j, same scaling again; η += δ p/Q;
p ← p e^{−δ p₁/Q₁}; then back up the chain           δ = dt/2
H' = E_pot + K + Σ p_j²/2Q_j + N_f k_B T η₁          ``work`` holds −(the thermostat
     + k_B T Σ_{j≥2} η_j (conserved)                terms) so E_pot + K − work = H'
============================================  =================================

NPT (:mod:`.barostat`, stochastic cell rescaling) with the Bussi thermostat,
one force call per step:

============================================  =================================
Bussi rescaling over dt (as above)            ``_bussi_rescale``
p ← p + (dt/2) F(r)                           ``npt_step``
e from P(r, p), σ(r) (exact: forces, stress   ``barostat.strain_increment``
  and momenta all belong to these positions)
h ← h e^e, r ← r e^e, p ← p e^{−e}            ``barostat.deform``
r ← r + dt p / m;  F, U, σ at the new r, h    ``force_field(state)``
p ← p + (dt/2) F                              work += ΔK + ΔU + P₀ΔV of the deformation
============================================  =================================

The barostat acts where the stress of the current positions is known, right
after the first kick; a palindromic placement (barostat half steps at both
ends of the step) would use either a stress or forces of positions that have
since been deformed, with one force call per step. Both are first order in
dt for the cell (Euler-Maruyama), as is the stochastic cell equation itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import noise
from .state import MDState, kinetic_energy

#: Nosé-Hoover chain length (ASE's default too)
CHAIN_LENGTH = 3


def _atoms(values: torch.Tensor, state: MDState) -> torch.Tensor:
    """[B] per-system values to [N, 1] per-atom columns."""
    return values[state.system].unsqueeze(1)


def velocity_verlet(state: MDState, force_field, dt: float) -> None:
    # fused (one operation per line: for a molecule each costs as much as its arithmetic)
    p = torch.add(state.momenta, state.forces, alpha=0.5 * dt)
    state.positions = torch.addcdiv(state.positions, p, state.masses.unsqueeze(1), value=dt)
    state.momenta = p
    force_field(state)
    state.momenta = torch.add(state.momenta, state.forces, alpha=0.5 * dt)
    state.step += 1


def langevin_baoab(state: MDState, force_field, dt: float) -> None:
    m = state.masses.unsqueeze(1)
    kT = _atoms(state.thermostat["kT"], state)
    c = torch.exp(-_atoms(state.thermostat["friction"], state) * dt)
    p = state.momenta + 0.5 * dt * state.forces
    r = state.positions + 0.5 * dt * p / m
    before = kinetic_energy(state, p)
    n = p.shape[0]
    local = state.local_index()
    xi = noise.gaussian(state.seeds, state.system.repeat_interleave(3),
                        (3 * local.unsqueeze(1) + torch.arange(3, device=p.device)).reshape(-1),
                        state.step + 1, noise.LANGEVIN).view(n, 3)
    p = (c * p + torch.sqrt((1.0 - c * c) * m * kT) * xi) * state.free.unsqueeze(1)
    state.thermostat["work"] = state.thermostat["work"] + kinetic_energy(state, p) - before
    state.positions = r + 0.5 * dt * p / m
    state.momenta = p
    force_field(state)
    state.momenta = state.momenta + 0.5 * dt * state.forces
    state.step += 1


def bussi(state: MDState, force_field, dt: float) -> None:
    _bussi_rescale(state, dt)
    velocity_verlet(state, force_field, dt)


def _bussi_rescale(state: MDState, dt: float) -> None:
    """Bussi's stochastic rescaling of the momenta over ``dt`` (work accumulated)."""
    kinetic = kinetic_energy(state)  # [B]
    dof = state.dof
    target = 0.5 * dof * state.thermostat["kT"]
    c = torch.exp(-dt / state.thermostat["taut"])
    step = state.step + 1
    r1 = noise.gaussian(state.seeds, torch.arange(state.n_systems, device=dof.device),
                        torch.zeros(state.n_systems, dtype=torch.long, device=dof.device), step, noise.BUSSI_FIRST)
    if "noise_owner" not in state.thermostat:  # dropped when systems stop (see MDState.select)
        state.thermostat["noise_owner"], state.thermostat["noise_local"] = bussi_noise_index(dof)
    others = state.thermostat["noise_owner"], state.thermostat["noise_local"]
    r_rest = noise.gaussian(state.seeds, others[0], others[1], step, noise.BUSSI_SECOND)
    sum_rest = torch.zeros_like(kinetic).index_add_(0, others[0], r_rest.square())  # Σ_{i=2}^{N_f} R_i²
    safe = kinetic.clamp(min=1e-300)
    new = (kinetic + (1.0 - c) * (target * (sum_rest + r1 * r1) / dof - kinetic)
           + 2.0 * r1 * torch.sqrt(kinetic * target / dof * (1.0 - c) * c))
    alpha = torch.where(kinetic > 0, torch.sqrt(new.clamp(min=0.0) / safe), torch.ones_like(kinetic))
    state.momenta = state.momenta * _atoms(alpha, state)
    state.thermostat["work"] = state.thermostat["work"] + (alpha * alpha - 1.0) * kinetic


def bussi_noise_index(dof: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(owner, local) of the N_f − 1 numbers Σ R_i² needs per system."""
    counts = (dof.round().long() - 1).clamp(min=0)
    owner = torch.repeat_interleave(torch.arange(len(dof), device=dof.device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(owner), device=dof.device) - first[owner]
    return owner, local


def _chain_forces(state: MDState, kinetic: torch.Tensor, j: int) -> torch.Tensor:
    th = state.thermostat
    if j == 0:
        return 2.0 * kinetic - state.dof * th["kT"]
    return th["p_eta"][:, j - 1].square() / th["Q"][:, j - 1] - th["kT"]


def _chain_half_step(state: MDState, delta: float) -> None:
    """Propagate the chain and scale the momenta over ``delta`` (= dt/2)."""
    th = state.thermostat
    p_eta, Q = th["p_eta"].clone(), th["Q"]
    M = p_eta.shape[1]
    kinetic = kinetic_energy(state)
    th["p_eta"] = p_eta
    p_eta[:, M - 1] += 0.5 * delta * _chain_forces(state, kinetic, M - 1)
    for j in range(M - 2, -1, -1):
        scale = torch.exp(-0.25 * delta * p_eta[:, j + 1] / Q[:, j + 1])
        p_eta[:, j] = (p_eta[:, j] * scale + 0.5 * delta * _chain_forces(state, kinetic, j)) * scale
    th["eta"] = th["eta"] + delta * p_eta / Q
    scale = torch.exp(-delta * p_eta[:, 0] / Q[:, 0])  # [B]
    state.momenta = state.momenta * _atoms(scale, state)
    kinetic = kinetic * scale * scale
    for j in range(M - 1):
        s = torch.exp(-0.25 * delta * p_eta[:, j + 1] / Q[:, j + 1])
        p_eta[:, j] = (p_eta[:, j] * s + 0.5 * delta * _chain_forces(state, kinetic, j)) * s
    p_eta[:, M - 1] += 0.5 * delta * _chain_forces(state, kinetic, M - 1)


def chain_energy(state: MDState) -> torch.Tensor:
    """[B] eV: Σ p_j²/2Q_j + N_f k_B T η₁ + k_B T Σ_{j≥2} η_j."""
    th = state.thermostat
    kinetic = (0.5 * th["p_eta"].square() / th["Q"]).sum(1)
    return kinetic + state.dof * th["kT"] * th["eta"][:, 0] + th["kT"] * th["eta"][:, 1:].sum(1)


def nose_hoover_chain(state: MDState, force_field, dt: float) -> None:
    _chain_half_step(state, 0.5 * dt)
    velocity_verlet(state, force_field, dt)
    _chain_half_step(state, 0.5 * dt)
    state.thermostat["work"] = -chain_energy(state)


@dataclass(frozen=True)
class Integrator:
    """An integrator bound to its timestep: ``integrator(state, force_field)``."""

    name: str
    dt: float  # ASE time units
    cell_dof: str = "isotropic"  # NPT only

    def __call__(self, state: MDState, force_field) -> None:
        if self.name == "npt":
            from .barostat import npt_step

            npt_step(state, force_field, self.dt, self.cell_dof, _bussi_rescale)
        else:
            STEPS[self.name](state, force_field, self.dt)


STEPS = {"nve": velocity_verlet, "langevin": langevin_baoab, "bussi": bussi,
         "nose-hoover": nose_hoover_chain}


def init_thermostat(state: MDState, ensemble: str, kT: torch.Tensor, friction: torch.Tensor,
                    taut: torch.Tensor) -> None:
    """Per-system thermostat tensors for ``ensemble`` (targets in ASE units)."""
    th = {"kT": kT, "work": torch.zeros_like(kT)}
    if ensemble == "langevin":
        th["friction"] = friction
    if ensemble in ("bussi", "npt"):
        th["taut"] = taut
    if ensemble == "nose-hoover":
        Q = (kT * taut * taut).unsqueeze(1).repeat(1, CHAIN_LENGTH)
        Q[:, 0] = Q[:, 0] * state.dof
        th.update(Q=Q, eta=torch.zeros_like(Q), p_eta=torch.zeros_like(Q))
    state.thermostat = th
