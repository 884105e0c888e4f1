"""Physics verification of stress, relaxation and NPT with Lennard-Jones argon (issue 10, part 3).

The references live in ``tests/lj_reference.py`` and import nothing from the
package: the Johnson-Zollweg-Gubbins (JZG) equation of state of the full LJ
fluid, the standard tail corrections, the model's pair function re-derived
from its docstring and the static lattice sums.

Argon: ε = 0.0104 eV (ε/k_B = 120.7 K), σ = 3.4 Å, m = 39.948 u, so the LJ time
τ = σ√(m/ε) = 2.15 ps, the reduced temperature T* = 2 is 241.4 K and P* = 1 is
0.0104/3.4³ eV/Å³ = 424 bar.

Comparing a truncated simulation with the full-potential EOS
------------------------------------------------------------
With ``smooth=False`` the model's pair energy is u(r) − u(r_c) for r < r_c and 0
beyond. The energy is continuous at r_c, so there is no impulsive term and the
virial (= the stress, the strain derivative of the energy) gives the
thermodynamic pressure of the truncated system:

    P_trunc(ρ, T) = ρk_BT − (2π/3)ρ² ∫₀^{r_c} r³ u'(r) g_trunc(r) dr.

For the full potential the integral runs to ∞ with g_full. If g_full = g_trunc
inside r_c and g = 1 beyond, the difference is the tail pressure

    P_full(ρ, T) − P_trunc(ρ, T) = −(2π/3)ρ² ∫_{r_c}^∞ r³ u'(r) dr = P_tail(ρ)
                                 = (16/3)πρ²εσ³[(2/3)(σ/r_c)⁹ − (σ/r_c)³]  (< 0).

So a truncated system held at P has the density ρ of the full fluid at
P + P_tail(ρ): the prediction solves P_JZG(ρ, T) = P + P_tail(ρ)
(``lj_reference.jzg_density(P, T, cutoff=r_c)``). The shift u(r_c) changes no
force and no pressure. What this leaves out: g(r) ≠ 1 beyond r_c, and the small
change of g inside r_c when the attractive tail is removed (the tail's mean
force on an atom vanishes in a uniform fluid, so it is second order). At
ρ* = 0.6, T* = 2, r_c = 4σ the whole tail is P_tail* = −0.094 against P* ≈ 1.8,
worth δρ* = 0.010 (1.7 % of ρ); the neglected part is a fraction of that (see
the findings below for the measured size).

Findings (measured 2026-12-01/02 on a 2-core box shared by five sessions, load 6-10,
so wall times are upper bounds; reduced units)
---------------------------------------------------------------------------------------
* JZG as transcribed: critical point (ρc, Tc, Pc) = (0.3100, 1.3130, 0.1299), the
  published (0.310, 1.313, 0.13); a₁/T equals the exact B₂(T) to ≤ 1.2e-3 for
  T* = 1-5; against Kolafa-Nezbeda at T* = 1.3: 0.16 % at ρ* = 0.2, 8.5 % at the
  near-critical ρ* = 0.4.
* Lattice sums reproduce A₁₂, A₆ of fcc and sc to the tabulated digits; the
  classic bcc A₆ = 12.2533 is not reproduced, the converged sum is 12.25367.
* The calculator's energy, pressure and full stiffness of fcc argon equal the
  lattice sum to 1e-10 relative (both cutoff modes, 2.5σ and 4σ), and its
  pressure equals −dE/dV to ~1e-12 eV/Å³ (relative 2e-9).
* Relaxation (``ase_mlff.optimize.relax``, FIRE + Fréchet filter, still on the
  relax branch when this was written): 2×2×2 fcc from a (3 %, −1 %, 2 %) strain,
  fmax = 1e-4 eV/Å: 82 steps, a from the volume 2.0e-5 relative from the
  lattice-sum minimum, bound from fmax 4.9e-5.
* State point T* = 2, P* = 1.8, r_c = 4σ (smooth=False), 256 atoms: JZG predicts
  ρ* = 0.6035 for the full fluid and 0.5935 for the truncated one (P_tail* =
  −0.092), κ_T* = 0.182. The neglected part of the truncation (g ≠ 1 beyond 4σ,
  |g − 1| ≲ 0.02 there at this density: an estimate, not measured) is ≲ 2 % of
  the tail, δρ* ≲ 2e-4; a 4σ-vs-5σ pair of runs to measure it did not fit the budget.
* Our engine (the npt helper's uncommitted work tree at 00:08 UTC; stochastic cell
  rescaling, τ_p = 1 ps, β_T = κ_T, Bussi τ_T = 0.5 ps, 10 fs steps), 4 replicas × 30 ps, 10 ps discarded, 20
  blocks: ρ* = 0.5972 ± 0.0024 (+1.5 SE from the truncated-fluid prediction,
  −2.6 SE from the full-fluid one); ⟨P*⟩ = 1.792 ± 0.019; ⟨δV*²⟩ = 122 ± 20
  against k_BT⟨V⟩κ_T = 156 (−22 %, 1.7 SE). 3,000 steps of 1,024 atoms: about
  7.5 CPU minutes (29 minutes of wall time on the loaded box).
* ASE's IsotropicMTKNPT (τ_T = 1 ps, τ_P = 2 ps) with our calculator, 256 atoms,
  10 ps discarded. This test as committed (6,000 steps, seed 5, 10 blocks):
  ρ* = 0.5987 ± 0.0032 (+1.6 SE); ⟨P*⟩ = 1.802 ± 0.008 with the (3N − 3)-dof
  kinetic term, 1.798 with 2K/(3V) (they differ by k_BT/V = 0.005);
  ⟨δV*²⟩ = 148 ± 25 against 156 (−5 %); 28 minutes of wall time on the loaded box.
  An earlier exploratory 8,000-step run (seed 1, started at ρ* = 0.6): ρ* =
  0.5942 ± 0.0028, ⟨P*⟩ = 1.804 ± 0.004, ⟨δV*²⟩ = 183 ± 27 against 157 (+16 %).
  The volume's integrated autocorrelation time there is 1.0 ps, the pressure's
  0.16 ps (σ_P* = 0.32): blocks of 4-7 ps are 4-7 correlation times, so the block
  errors may be ~10-20 % too small.
* What these runs cannot do: the tolerance of the density check (4 SE plus the
  EOS allowance, 0.012-0.016) is larger than the whole tail shift (0.010), so a
  single run does not prove the tail correction. The three runs together give
  ρ* = 0.5966 ± 0.0016: +2.0 SE from the truncated-fluid prediction and −4.4 SE
  from the full-fluid one. All three lie above the prediction, by 0.5 % on
  average, which is within the 1 % EOS-pressure allowance (0.0028 in ρ*) but
  not proven to be the EOS's: the 256-atom box (L ≈ 7.5σ < 2r_c) and the block
  errors are the other candidates. The variance checks resolve ±25 %, not better.
"""

from __future__ import annotations

import itertools
import math

import lj_reference as ref
import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_stress
from conftest import EPS64
from scipy.integrate import quad

from ase_mlff import MLFFCalculator
from ase_mlff.models import LennardJones

EPSILON, SIGMA, MASS = 0.0104, 3.4, 39.948  # eV, Å, u
PRESSURE_UNIT = EPSILON / SIGMA**3  # eV/Å³ per reduced pressure unit
TEMPERATURE_UNIT = EPSILON / units.kB  # K per reduced temperature unit


def argon_calculator(cutoff_sigma: float, smooth: bool, onset_sigma: float | None = None):
    onset = None if onset_sigma is None else onset_sigma * SIGMA
    model = LennardJones(["Ar"], EPSILON, SIGMA, cutoff=cutoff_sigma * SIGMA, onset=onset, smooth=smooth)
    return MLFFCalculator(model.to(torch.float64), device="cpu", dtype="float64")


def pair_parameters(cutoff_sigma: float, smooth: bool) -> dict:
    """``lj_reference.model_pair`` arguments for the same model, in eV and Å."""
    return dict(epsilon=EPSILON, sigma=SIGMA, cutoff=cutoff_sigma * SIGMA, smooth=smooth)


def fcc_argon(a: float, repeat: int = 1):
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)
    atoms.set_masses(np.full(len(atoms), MASS))  # ASE's own Ar mass is the same; said here
    return atoms


def liquid_argon(density_reduced: float = 0.6, repeat: int = 3, seed: int = 0):
    """108 atoms at ρ*: an fcc lattice disordered by random displacements of 0.12σ per
    component (0.21σ rms), liquid-like pair distances with none closer than 0.8σ."""
    a = (4 / (density_reduced / SIGMA**3)) ** (1 / 3)
    atoms = fcc_argon(a, repeat)
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(scale=0.12 * SIGMA, size=atoms.positions.shape)
    assert atoms.get_all_distances(mic=True)[np.triu_indices(len(atoms), 1)].min() > 0.8 * SIGMA
    return atoms


# -- the JZG equation of state against independent numbers ----------------------------------
def test_jzg_critical_point_is_the_published_one():
    # JZG quote Tc* = 1.313, ρc* = 0.310, Pc* = 0.13 for their equation: the point
    # where ∂P/∂ρ = ∂²P/∂ρ² = 0 must round to those digits.
    rho_c, t_c, p_c = ref.jzg_critical_point()
    published = ref.JZG_CRITICAL_POINT
    assert t_c == pytest.approx(published["temperature"], abs=5e-4)
    assert rho_c == pytest.approx(published["density"], abs=5e-4)
    assert p_c == pytest.approx(published["pressure"], abs=5e-3)
    assert ref.jzg_dpressure_drho(rho_c, t_c) == pytest.approx(0, abs=1e-9)
    # below Tc the isotherm has a van der Waals loop, above it does not
    rho = np.linspace(0.05, 0.6, 200)
    assert np.any(ref.jzg_dpressure_drho(rho, 0.95 * t_c) < 0)
    assert np.all(ref.jzg_dpressure_drho(rho, 1.05 * t_c) > 0)


def test_second_virial_quadrature_vanishes_at_the_boyle_temperature():
    # the LJ Boyle temperature T_B* = 3.4179 (B₂ = 0); B₂'(T_B) ≈ 0.24, so 1e-4 in T
    # is 3e-5 in B₂
    assert ref.second_virial(3.4179) == pytest.approx(0, abs=5e-5)
    assert ref.second_virial(1.0) < -5  # attractive at low T
    assert ref.second_virial(10.0) > 0


@pytest.mark.parametrize("temperature", [1.0, 1.5, 2.0, 3.0, 5.0])
def test_jzg_low_density_limit_is_the_exact_second_virial_coefficient(temperature):
    # P = ρT + a₁ρ² + O(ρ³), so a₁/T = B₂(T), which JZG fitted to the exact
    # values; 3e-3 is 0.06 % of |B₂(1)| and below 1e-5 of P at ρ* ≤ 0.05
    a, _ = ref.jzg_coefficients(temperature)
    assert a[0] / temperature == pytest.approx(ref.second_virial(temperature), abs=3e-3)
    rho = 1e-4  # the full equation reaches the same limit
    z = ref.jzg_pressure(rho, temperature) / (rho * temperature)
    assert (z - 1) / rho == pytest.approx(ref.second_virial(temperature), abs=5e-3)


@pytest.mark.parametrize("density, pressure, rtol", [
    (0.2, 0.12147936810578708, 0.005),  # vapour-like, away from the critical density
    (0.4, 0.11253334756806482, 0.10),  # near-critical: the two fits differ most there
])
def test_jzg_agrees_with_the_kolafa_nezbeda_equation_at_t_1_3(density, pressure, rtol):
    # An independent equation of state fitted to other simulation data: Kolafa &
    # Nezbeda, Fluid Phase Equilib. 100, 1 (1994), values at T* = 1.3 as quoted with
    # its Fortran code (alexei-matveev/bgy3d, eos.f90, "cp. Fig. 3 of the original
    # paper"). Near the critical point (T* = 1.3 ≈ 0.99 Tc) P is flat and small
    # and MBWR fits are known to be poor; measured: 0.16 % at ρ* = 0.2, 8.5 % at 0.4.
    assert ref.jzg_pressure(density, 1.3) == pytest.approx(pressure, rel=rtol)


@pytest.mark.parametrize("temperature", [1.5, 2.0, 4.0])
def test_jzg_derivatives_are_its_finite_differences(temperature):
    rho, h = np.linspace(0.05, 1.0, 12), 1e-5
    dp = (ref.jzg_pressure(rho + h, temperature) - ref.jzg_pressure(rho - h, temperature)) / (2 * h)
    d2p = (ref.jzg_dpressure_drho(rho + h, temperature) - ref.jzg_dpressure_drho(rho - h, temperature)) / (2 * h)
    # central differences: h²·P'''/6 with |P'''| ≲ 1e3 here, plus round-off
    np.testing.assert_allclose(ref.jzg_dpressure_drho(rho, temperature), dp, rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(ref.jzg_d2pressure_drho2(rho, temperature), d2p, rtol=1e-7, atol=1e-5)
    density = ref.jzg_density(1.5, temperature)
    assert ref.jzg_pressure(density, temperature) == pytest.approx(1.5, rel=1e-12)


def test_reference_refuses_bad_input():
    with pytest.raises(ValueError, match="supercritical"):
        ref.jzg_density(0.1, 1.0)
    with pytest.raises(ValueError, match="positive"):
        ref.jzg_pressure(0.5, 0.0)
    with pytest.raises(ValueError, match="lattice must be one of"):
        ref.lattice_energy("hcp", 1.5, epsilon=1.0, sigma=1.0, cutoff=3.0)
    with pytest.raises(ValueError, match="cannot fill"):
        ref.block_means(np.zeros(3), 5)


# -- tail corrections --------------------------------------------------------------------------
@pytest.mark.parametrize("cutoff", [2.5, 4.0, 5.0])
def test_tail_corrections_are_the_integrals_beyond_the_cutoff(cutoff):
    rho = 0.6
    p = -2 * math.pi / 3 * rho**2 * quad(lambda r: r**3 * ref.lj_derivative(r), cutoff, np.inf,
                                         epsabs=1e-14)[0]
    u = 2 * math.pi * rho * quad(lambda r: r**2 * ref.lj_energy(r), cutoff, np.inf, epsabs=1e-14)[0]
    assert ref.tail_pressure(rho, cutoff) == pytest.approx(p, rel=1e-9)
    assert ref.tail_energy_per_atom(rho, cutoff) == pytest.approx(u, rel=1e-9)
    # in eV/Å³ with argon's ε, σ: the same number times ε/σ³
    assert ref.tail_pressure(rho / SIGMA**3, cutoff * SIGMA, EPSILON, SIGMA) == pytest.approx(
        p * PRESSURE_UNIT, rel=1e-9)


# -- lattice sums ----------------------------------------------------------------------------
#: Lattice constants A₁₂, A₆ (sums of (r_nn/R)^n over a lattice; Lennard-Jones & Ingham 1925,
#: tabulated e.g. in Kittel, *Introduction to Solid State Physics*, ch. 3). The classic bcc
#: A₆ = 12.2533 is off in its 5th digit; converged sums (here, and the high-precision
#: lattice-sum literature) give 12.2537, used below, to the 6 digits kept for all three.
LATTICE_SUMS = {"fcc": (12.1319, 14.4539), "bcc": (9.11418, 12.2537), "sc": (6.20215, 8.40192)}
NEAREST_NEIGHBOR = {"fcc": 1 / math.sqrt(2), "bcc": math.sqrt(3) / 2, "sc": 1.0}  # r_nn / a


@pytest.mark.parametrize("lattice", sorted(LATTICE_SUMS))
def test_lattice_sums_reach_the_lennard_jones_ingham_constants(lattice):
    # E/N = 2ε[A₁₂(σ/r)¹² − A₆(σ/r)⁶] has its minimum at r_nn = σ(2A₁₂/A₆)^{1/6} with
    # E/N = −εA₆²/(2A₁₂). A sum cut at R = 20σ misses 4πn/(3(R/r_nn)³) of A₆ (n: lattice
    # points per r_nn³; ~7e-5 of A₆, so 1e-5 in r_nn), taken off A₆ here as a continuum;
    # what remains is the shells' discreteness at R (< 3e-7 here) and the constants' 6
    # digits: ±5e-6 relative in A₆/A₁₂ is ±1e-6 in r_nn and ±1.5e-5 in E.
    a12, a6 = LATTICE_SUMS[lattice]
    cutoff = 20.0
    pair = dict(epsilon=1.0, sigma=1.0, cutoff=cutoff, smooth=False)
    guess = (2 * a12 / a6) ** (1 / 6) / NEAREST_NEIGHBOR[lattice]
    a = ref.lattice_minimum(lattice, (0.9 * guess, 1.1 * guess), **pair)
    r_nn = a * NEAREST_NEIGHBOR[lattice]
    points_per_volume = ref.atoms_per_cell(lattice) * (r_nn / a) ** 3
    a6_cut = a6 - 4 * math.pi * points_per_volume / (3 * (cutoff / r_nn) ** 3)
    assert r_nn == pytest.approx((2 * a12 / a6_cut) ** (1 / 6), rel=1.5e-6)
    energy = ref.lattice_energy(lattice, a, **pair)[0] + 0.5 * len(ref.lattice_distances(lattice, a, cutoff)) * \
        ref.lj_energy(cutoff)  # undo the shift, so E is the plain truncated sum
    assert energy == pytest.approx(-a6_cut**2 / (2 * a12), rel=1.5e-5)


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("cutoff_sigma", [2.5, 4.0])
def test_calculator_energy_and_pressure_of_fcc_are_the_lattice_sum(smooth, cutoff_sigma):
    # a perfect crystal: energy per atom E(a) and pressure P = −dE/dV, V = a³/4 per atom,
    # from the analytic lattice sum with the model's own pair function
    pair = pair_parameters(cutoff_sigma, smooth)
    for a in (5.0, 5.3, 5.6):
        atoms = fcc_argon(a, repeat=1)  # 4 atoms: the cutoff reaches many images
        atoms.calc = argon_calculator(cutoff_sigma, smooth)
        energy, derivative = ref.lattice_energy("fcc", a, **pair)
        assert atoms.get_potential_energy() / len(atoms) == pytest.approx(energy, rel=1e-12, abs=1e-15)
        pressure = -derivative / (3 * a**2 / 4)  # −dE/dV per atom
        stress = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(-np.diag(stress), pressure, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(stress - np.diag(np.diag(stress)), 0, atol=1e-15)  # cubic: no shear


# -- stress against finite differences of the cell --------------------------------------------
def energy_at_volume(atoms, volume):
    scaled = atoms.copy()
    scaled.calc = atoms.calc
    scaled.set_cell(atoms.cell * (volume / atoms.get_volume()) ** (1 / 3), scale_atoms=True)
    return scaled.get_potential_energy()


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("system", ["liquid", "fcc"])
def test_pressure_is_minus_the_volume_derivative_of_the_energy(system, smooth):
    atoms = liquid_argon() if system == "liquid" else fcc_argon(5.1, repeat=2)
    atoms.calc = argon_calculator(4.0, smooth)
    pressure = -np.trace(atoms.get_stress(voigt=False)) / 3
    volume = atoms.get_volume()
    h = 1e-6 * volume  # relative 1e-6: truncation (h²/6)|E'''| ~ 1e-12 V² eV/Å⁹, negligible
    numerical = -(energy_at_volume(atoms, volume + h) - energy_at_volume(atoms, volume - h)) / (2 * h)
    energy = atoms.get_potential_energy()
    # round-off of the float64 energy difference, |E|·ε64/h (times a safety 10); with
    # smooth=False a pair crossing r_c inside ±h would add a kink of order |u'(r_c)|·r_c/(3V)
    # (~1e-9 eV/Å³ here), and the window is small enough that none does
    tolerance = 10 * abs(energy) * EPS64 / h + 1e-12
    assert abs(pressure) > 1e3 * tolerance  # not trivially small (the liquid box is under tension)
    assert pressure == pytest.approx(numerical, abs=tolerance)


def test_full_stress_tensor_of_truncated_argon_is_the_strain_derivative():
    # test_models checks the smooth model on silicon cells; this is the truncated-shifted
    # model used by the NPT checks, on a liquid box sheared into a triclinic cell, all six
    # components (normal, anisotropic and shear strains) by ASE's finite differences
    atoms = liquid_argon(seed=1)
    atoms.set_cell(atoms.cell.array + [[0, 0, 0], [1.5, 0, 0], [0.7, -1.1, 0]], scale_atoms=True)
    atoms.calc = argon_calculator(4.0, smooth=False)
    stress = atoms.get_stress()
    assert np.abs(stress[3:]).max() > 1e-5  # shear stresses are not trivially zero
    eps = 1e-6
    numerical = calculate_numerical_stress(atoms, eps=eps)
    atol = 10 * abs(atoms.get_potential_energy()) * EPS64 / (eps * atoms.get_volume()) + 1e-12
    np.testing.assert_allclose(stress, numerical, rtol=1e-7, atol=atol)


def lattice_stiffness(lattice: str, a: float, h: float = 1e-4, **pair) -> np.ndarray:
    """Elastic stiffness C [6, 6] (Voigt, engineering shear), eV/Å³ or reduced, of the static
    lattice from central second differences of the reference lattice sum: C_ij = (1/v) ∂²E/∂ε_i∂ε_j."""
    volume = a**3 / ref.atoms_per_cell(lattice)

    def energy(voigt):
        e = voigt
        strain = [[e[0], e[5] / 2, e[4] / 2], [e[5] / 2, e[1], e[3] / 2], [e[4] / 2, e[3] / 2, e[2]]]
        return ref.strained_lattice_energy(lattice, a, strain, **pair)

    stiffness = np.empty((6, 6))
    for i, j in itertools.product(range(6), repeat=2):
        def shifted(si, sj, i=i, j=j):
            e = np.zeros(6)
            e[i] += si * h
            e[j] += sj * h
            return energy(e)
        stiffness[i, j] = (shifted(1, 1) - shifted(1, -1) - shifted(-1, 1) + shifted(-1, -1)) / (4 * h * h * volume)
    return stiffness


@pytest.mark.parametrize("smooth", [False, True])
def test_stress_response_to_strain_is_the_lattice_sum_stiffness(smooth):
    # At the lattice-sum minimum (zero stress) the calculator's stress under a small strain
    # ε must be C·ε with C from second differences of the reference energy (normal,
    # anisotropic and shear strains; C₁₂ = C₄₄ there, the Cauchy relation of central pair
    # forces at zero pressure).
    pair = pair_parameters(3.0, smooth)
    a0 = ref.lattice_minimum("fcc", (4.8, 5.8), **pair)
    stiffness = lattice_stiffness("fcc", a0, **pair)
    assert stiffness[0, 1] == pytest.approx(stiffness[3, 3], rel=1e-5)
    assert stiffness[0, 0] > stiffness[0, 1] > 0
    atoms0 = fcc_argon(a0, repeat=1)
    h = 1e-5
    for i in range(6):
        columns = []
        for sign in (1, -1):
            e = np.zeros(6)
            e[i] = sign * h
            strain = np.array([[e[0], e[5] / 2, e[4] / 2], [e[5] / 2, e[1], e[3] / 2], [e[4] / 2, e[3] / 2, e[2]]])
            atoms = atoms0.copy()
            atoms.set_cell(atoms0.cell.array @ (np.eye(3) + strain), scale_atoms=True)
            atoms.calc = argon_calculator(3.0, smooth)
            columns.append(atoms.get_stress())  # Voigt xx yy zz yz xz xy, ASE's sign (tension > 0)
        # the stress at ±h differs from C·(±h) by O(h²C'), far below this tolerance
        np.testing.assert_allclose((columns[0] - columns[1]) / (2 * h), stiffness[:, i], rtol=2e-5, atol=1e-6)


# -- relaxation ------------------------------------------------------------------------------
def test_relaxed_fcc_lattice_constant_is_the_lattice_sum_minimum():
    """FIRE with the Fréchet cell filter from a strained, rattled 2×2×2 fcc cell (32 atoms).

    Tolerance from ``fmax``: the filter's cell "forces" are G_X ≈ −V(σ + pI)/N, so at
    convergence every stress component is below s = fmax·N/V; the residual strain is then
    |ε_i| ≤ Σ_j |S_ij|·s with S = C⁻¹ of the reference lattice sum (first order in s).
    The volume per atom gives a = (4V/N)^{1/3} with |δa/a| ≤ s/(3B), B = (C₁₁ + 2C₁₂)/3.
    """
    optimize = pytest.importorskip("ase_mlff.optimize", reason="the relax helper's ase_mlff.optimize")
    fmax, cutoff_sigma, smooth = 1e-4, 3.0, True
    pair = pair_parameters(cutoff_sigma, smooth)
    a0 = ref.lattice_minimum("fcc", (4.8, 5.8), **pair)
    start = fcc_argon(a0, repeat=2)
    start.set_cell(start.cell.array @ np.diag([1.03, 0.99, 1.02]), scale_atoms=True)
    start.rattle(0.02, seed=4)
    [result] = optimize.relax(start, argon_calculator(cutoff_sigma, smooth), fmax=fmax, cell=True, steps=3000)
    assert result.converged, result.message
    atoms = result.atoms
    n, volume = len(atoms), atoms.get_volume()
    stress_bound = fmax * n / volume  # eV/Å³
    assert result.smax <= 1.01 * stress_bound  # its own stress report agrees with the criterion
    stiffness = lattice_stiffness("fcc", a0, **pair)
    bulk_modulus = (stiffness[0, 0] + 2 * stiffness[0, 1]) / 3
    a_volume = (4 * volume / n) ** (1 / 3)
    assert a_volume == pytest.approx(a0, rel=stress_bound / (3 * bulk_modulus))
    # the cell, as a strain of the ideal 2a₀ cube (rotation-free: the filter's F is symmetric
    # up to rattle-induced torque, measured through the polar decomposition)
    deformation = np.linalg.solve(2 * a0 * np.eye(3), atoms.cell.array).T
    u, s, vt = np.linalg.svd(deformation)
    strain = vt.T @ np.diag(s) @ vt - np.eye(3)
    voigt = np.array([strain[0, 0], strain[1, 1], strain[2, 2], 2 * strain[1, 2], 2 * strain[0, 2], 2 * strain[0, 1]])
    bound = np.abs(np.linalg.inv(stiffness)).sum(1) * stress_bound
    assert np.all(np.abs(voigt) <= bound), (voigt, bound)
    assert np.abs(atoms.get_forces()).max() <= fmax


# -- NPT: density, pressure and volume fluctuations against the JZG equation ----------------
#: The state point: T* = 2 (241.4 K, supercritical: Tc* = 1.31), P* = 1.8 (764 bar), where the
#: truncated (4σ) fluid has ρ* ≈ 0.61 (a liquid-like density).
STATE = dict(temperature=2.0, pressure=1.8, cutoff=4.0)
#: assumed accuracy of the JZG pressure at liquid-like supercritical states: 1 % of P (the
#: spread of MBWR fits to the simulation data there; an assumption, not the paper's number)
EOS_PRESSURE_ACCURACY = 0.01


def npt_statistics(volumes, pressures, n_atoms: int, temperature_K: float, discard: int,
                   n_blocks: int) -> dict:
    """Block statistics of an NPT run in reduced units.

    Args:
        volumes: [R, F] Å³ (R independent replicas, F frames at equal intervals).
        pressures: [R, F] eV/Å³, instantaneous (kinetic + virial).
        discard: frames dropped at the start of every replica (equilibration).
        n_blocks: blocks per replica; blocks must be long against the volume correlation time.

    Returns: ``density``, ``pressure`` and ``volume`` (means, reduced) with ``*_error`` (standard
    errors over the R·n_blocks blocks), ``volume_variance`` ⟨(V − ⟨V⟩)²⟩ (σ⁶) with its error,
    ``fluctuation_expected_per_kappa`` T*⟨V*⟩ (so ⟨δV*²⟩ = that × κ_T*).
    """
    volumes = np.asarray(volumes, dtype=float)[:, discard:] / SIGMA**3  # reduced
    pressures = np.asarray(pressures, dtype=float)[:, discard:] / PRESSURE_UNIT
    density = n_atoms / volumes
    blocks = lambda x: np.concatenate([ref.block_means(row, n_blocks) for row in x])  # noqa: E731
    out = {}
    for name, series in (("density", density), ("pressure", pressures), ("volume", volumes)):
        out[name], out[name + "_error"] = ref.mean_and_error(blocks(series))
    # squared deviations from the mean over all replicas (one mean: its bias is 1/(R·n_eff))
    out["volume_variance"], out["volume_variance_error"] = ref.mean_and_error(blocks((volumes - out["volume"]) ** 2))
    out["fluctuation_expected_per_kappa"] = temperature_K / TEMPERATURE_UNIT * out["volume"]
    out["samples"] = volumes.size
    return out


def truncated_fluid_prediction(temperature: float, pressure: float, cutoff: float) -> dict:
    """JZG predictions for the fluid truncated at ``cutoff`` (σ) held at (T*, P*), and allowances.

    ``density`` solves P_JZG(ρ) = P + P_tail(ρ); ``compressibility`` κ_T* = 1/(ρ ∂P_trunc/∂ρ) with
    P_trunc = P_JZG − P_tail, so ∂P_trunc/∂ρ = ∂P_JZG/∂ρ − 2P_tail/ρ. ``density_allowance``: the
    EOS accuracy (EOS_PRESSURE_ACCURACY of P_JZG, as a density through ∂P_trunc/∂ρ) plus 10 % of
    the tail's own density shift for what the g = 1 assumption leaves out.
    """
    rho = ref.jzg_density(pressure, temperature, cutoff=cutoff)
    tail = ref.tail_pressure(rho, cutoff)
    slope = ref.jzg_dpressure_drho(rho, temperature) - 2 * tail / rho
    allowance = (EOS_PRESSURE_ACCURACY * ref.jzg_pressure(rho, temperature) + 0.1 * abs(tail)) / slope
    return dict(density=rho, density_untruncated=ref.jzg_density(pressure, temperature),
                compressibility=1 / (rho * slope), tail_pressure=tail, density_allowance=allowance)


def check_npt_against_jzg(stats: dict, prediction: dict, pressure_target: float, pressure_offset: float = 0.0):
    """The three comparisons of the issue, with their tolerances (shared by our engine and ASE's)."""
    # density: 4 standard errors of the run plus the EOS and truncation allowances
    assert abs(stats["density"] - prediction["density"]) <= 4 * stats["density_error"] + \
        prediction["density_allowance"], (stats, prediction)
    # the mean instantaneous pressure is the target (pressure_offset: a kinetic-term convention)
    assert abs(stats["pressure"] - pressure_offset - pressure_target) <= 4 * stats["pressure_error"], stats
    # ⟨δV²⟩ = k_BT⟨V⟩κ_T: 4 standard errors of the block variances plus 5 % for κ_T from the EOS
    expected = stats["fluctuation_expected_per_kappa"] * prediction["compressibility"]
    assert abs(stats["volume_variance"] - expected) <= 4 * stats["volume_variance_error"] + 0.05 * expected, \
        (stats, expected)


def argon_liquid_start(density: float, n_cells: int = 4):
    """256 atoms on an fcc lattice at ρ* (it melts within a picosecond at T* = 2)."""
    return fcc_argon((4 / (density / SIGMA**3)) ** (1 / 3), repeat=n_cells)


#: 30 ps per replica; the first 10 ps (melting the lattice, the cell settling) are discarded
NPT_RUN = dict(replicas=4, steps=3000, timestep_fs=10.0, h5_interval=5, taup_fs=1000.0, taut_fs=500.0,
               discard_frames=200, n_blocks=5)


@pytest.fixture(scope="module")
def engine_npt_run(tmp_path_factory):
    """One batched run of our engine: 4 replicas × 256 atoms, r_c = 4σ, smooth=False."""
    import inspect

    from ase_mlff.md import run_md
    from ase_mlff.md.h5 import read_series

    if "pressure_bar" not in inspect.signature(run_md).parameters:
        pytest.skip("this ase_mlff has no NPT ensemble yet (issue 10, part 1)")
    temperature_K = STATE["temperature"] * TEMPERATURE_UNIT
    prediction = truncated_fluid_prediction(**STATE)
    kappa_per_bar = prediction["compressibility"] / PRESSURE_UNIT * units.bar  # the barostat's β_T = κ_T
    prefix = tmp_path_factory.mktemp("npt") / "argon"
    run = NPT_RUN
    run_md(argon_liquid_start(prediction["density"]), argon_calculator(STATE["cutoff"], smooth=False), ensemble="npt",
           temperature_K=temperature_K, pressure_bar=STATE["pressure"] * PRESSURE_UNIT / units.bar,
           taup_fs=run["taup_fs"], compressibility_per_bar=kappa_per_bar, cell_dof="isotropic",
           taut_fs=run["taut_fs"], steps=run["steps"], timestep_fs=run["timestep_fs"], seed=11,
           output=prefix, h5_interval=run["h5_interval"], traj_interval=run["steps"], replicas=run["replicas"])
    series = [read_series(prefix.with_suffix(".h5"), system=k) for k in range(run["replicas"])]
    volumes = np.array([s["volume"] for s in series])
    pressures = np.array([s["pressure"] for s in series])
    temperatures = np.array([s["temperature"] for s in series])
    stats = npt_statistics(volumes, pressures, series[0]["n_atoms"], temperature_K, run["discard_frames"],
                           run["n_blocks"])
    stats["temperature_K"] = float(temperatures[:, run["discard_frames"]:].mean())
    print("engine NPT:", stats, "\nJZG:", prediction)  # the numbers behind the findings (pytest -rA)
    return stats, prediction


@pytest.mark.slow
def test_engine_npt_density_pressure_and_volume_fluctuations_match_jzg(engine_npt_run):
    stats, prediction = engine_npt_run
    assert stats["temperature_K"] == pytest.approx(STATE["temperature"] * TEMPERATURE_UNIT, rel=0.01)
    # the engine's stored pressure uses N k_B T_inst/V (T_inst with 3N − 3 dof), for which
    # ⟨P⟩ = P₀ holds exactly in its ensemble: no offset
    check_npt_against_jzg(stats, prediction, STATE["pressure"])


def ase_mtk_npt(steps: int, seed: int, temperature_K: float, pressure: float, density: float,
                interval: int = 5):
    """ASE's isotropic MTK barostat (Nosé-Hoover chains) on the same argon, our calculator.

    Returns volumes [F] Å³ and two instantaneous pressures [F] eV/Å³: with the kinetic term 2K/(3V)
    (ASE's ``get_stress(include_ideal_gas=True)``) and with N k_B T_inst/V, T_inst = 2K/((3N − 3)k_B).
    """
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    atoms = argon_liquid_start(density)
    atoms.calc = argon_calculator(STATE["cutoff"], smooth=False)
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    dyn = IsotropicMTKNPT(atoms, timestep=NPT_RUN["timestep_fs"] * units.fs, temperature_K=temperature_K,
                          pressure_au=pressure, tdamp=NPT_RUN["taut_fs"] * 2 * units.fs,
                          pdamp=NPT_RUN["taup_fs"] * 2 * units.fs)
    n = len(atoms)
    frames = []

    def record():
        kinetic = atoms.get_kinetic_energy()
        volume = atoms.get_volume()
        virial = -np.trace(atoms.get_stress(voigt=False)) / 3
        frames.append((volume, virial + 2 * kinetic / (3 * volume), virial + n * 2 * kinetic / ((3 * n - 3) * volume)))

    dyn.attach(record, interval=interval)
    dyn.run(steps)
    return np.array(frames).T


ASE_RUN = dict(steps=6000, discard_frames=200, n_blocks=10)


@pytest.mark.slow
def test_ase_mtk_barostat_validates_the_npt_analysis():
    """The analysis above, applied to ASE's own barostat (IsotropicMTKNPT), must pass too:
    it shows that the comparison itself (tail correction, units, statistics) is right,
    independently of our engine."""
    temperature_K = STATE["temperature"] * TEMPERATURE_UNIT
    prediction = truncated_fluid_prediction(**STATE)
    volumes, pressure_2k, pressure_nf = ase_mtk_npt(ASE_RUN["steps"], 5, temperature_K,
                                                    STATE["pressure"] * PRESSURE_UNIT, prediction["density"])
    stats = npt_statistics(volumes[None], pressure_nf[None], 256, temperature_K, ASE_RUN["discard_frames"],
                           ASE_RUN["n_blocks"])
    stats["pressure_2k"] = float(np.mean(pressure_2k[ASE_RUN["discard_frames"]:]) / PRESSURE_UNIT)
    print("ASE MTK NPT:", stats, "\nJZG:", prediction)
    check_npt_against_jzg(stats, prediction, STATE["pressure"])
