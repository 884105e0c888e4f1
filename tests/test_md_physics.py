"""Physics of the driver: NVE energy conservation measured, initial velocities, blow-ups.

The NVE checks use a Lennard-Jones argon cluster with a short smooth cutoff
(1.5σ, switched from 0.66 r_c), so pairs keep crossing the switching region,
and derive their thresholds instead of tuning them:

* Velocity Verlet's energy error is O(dt²): halving dt must divide the RMS
  fluctuation of E_tot by 4. Tolerance ±20 %: O(dt⁴) corrections and the
  two runs sampling different (chaotic) trajectories.
* A symplectic integrator on a smooth potential has no secular drift (the
  shadow Hamiltonian is conserved), so the drift accumulated over the run,
  |slope|·T, must stay below the RMS fluctuation. A bounded oscillation can
  reach |slope|·T ≈ 6·RMS only if it is a single square step, so the check
  can fail, and it does for the same model with a discontinuous force at r_c.
* float32 round-off in the energy (ε₃₂·|E_pot| ≈ 1e-7 meV/atom here) is far
  below the O(dt²) fluctuation (~1e-3 meV/atom), so float32 and float64 runs
  must show the same fluctuation.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase.build import molecule
from test_md_fixtures import argon_cluster, frames

from ase_mlff import MLFFCalculator
from ase_mlff.md import run_md
from ase_mlff.md.report import energy_conservation
from ase_mlff.models import LennardJones
from ase_mlff.units import kB

SIGMA, EPSILON = 3.4, 0.0104


def nve(tmp_path, dt_fs, duration_fs, smooth=True, dtype="float64", name="nve"):
    model = LennardJones(["Ar"], EPSILON, SIGMA, cutoff=1.5 * SIGMA, smooth=smooth)
    steps = int(round(duration_fs / dt_fs))
    result = run_md(argon_cluster(), MLFFCalculator(model, dtype=dtype, num_threads=1),
                    timestep_fs=dt_fs, temperature_K=60.0, steps=steps, seed=5,
                    output=tmp_path / f"{name}-{dt_fs}-{smooth}-{dtype}", h5_interval=max(1, steps // 150),
                    traj_interval=0)
    assert result.status == "completed", result.message
    return result.report


def drift_over_run(report):
    return abs(report.drift_meV_per_atom_per_ps) * report.duration_ps


def test_nve_energy_error_is_second_order_and_does_not_drift(tmp_path):
    coarse, fine = nve(tmp_path, 20.0, 6000.0), nve(tmp_path, 10.0, 6000.0)
    ratio = coarse.rms_fluctuation_meV_per_atom / fine.rms_fluctuation_meV_per_atom
    assert 3.2 < ratio < 4.8, ratio
    for report in (coarse, fine):
        assert drift_over_run(report) < report.rms_fluctuation_meV_per_atom, report
        assert report.passed  # default --max-drift


def test_nve_check_catches_a_force_discontinuity(tmp_path):
    # smooth=False shifts the energy to zero at r_c but the force jumps there: each crossing
    # is an O(dt) energy kick, so the error scales as dt (ratio ~2) instead of dt² (ratio 4)
    coarse = nve(tmp_path, 20.0, 6000.0, smooth=False)
    fine = nve(tmp_path, 10.0, 6000.0, smooth=False)
    ratio = coarse.rms_fluctuation_meV_per_atom / fine.rms_fluctuation_meV_per_atom
    assert not 3.2 < ratio < 4.8 or drift_over_run(fine) > fine.rms_fluctuation_meV_per_atom


def test_float32_model_conserves_energy_like_float64(tmp_path):
    r64 = nve(tmp_path, 10.0, 3000.0, dtype="float64")
    r32 = nve(tmp_path, 10.0, 3000.0, dtype="float32")
    assert r32.rms_fluctuation_meV_per_atom == pytest.approx(r64.rms_fluctuation_meV_per_atom, rel=0.05)
    assert drift_over_run(r32) < r32.rms_fluctuation_meV_per_atom


def test_conservation_statistics_against_synthetic_series():
    # E_tot = E0 + s·t + a·cos(ω(t - T/2)): the oscillation is even about the middle of the run,
    # so it adds nothing to the least-squares slope; residual RMS = a/√2
    t = np.linspace(0.0, 2.0, 2001)  # ps
    n, s, a = 10, 0.5e-3 * 10, 0.2e-3 * 10  # drift 0.5 meV/atom/ps, amplitude 0.2 meV/atom
    total = -5.0 + s * t + a * np.cos(2 * np.pi * 7 * (t - 1.0))
    kinetic = 0.3 + 0.01 * np.cos(2 * np.pi * 3 * t)
    report = energy_conservation(t, total, kinetic, n, max_drift=1.0)
    assert report.drift_meV_per_atom_per_ps == pytest.approx(0.5, rel=0.01)
    assert report.rms_fluctuation_meV_per_atom == pytest.approx(0.2 / np.sqrt(2), rel=0.02)
    assert report.max_deviation_meV_per_atom == pytest.approx(np.max(np.abs(total - total[0])) * 100)
    assert report.drift_to_kinetic_fluctuation == pytest.approx(
        0.5e-3 * 10 * 2.0 / np.std(kinetic), rel=0.01)
    assert report.passed and report.verdict == "PASS"
    assert not energy_conservation(t, total, kinetic, n, max_drift=0.4).passed


def initialize_velocities(atoms, temperature_K, seed, zero_momentum=True):
    """Set the momenta of ``atoms`` as run_md does (system seed ``seed``); returns the dof."""
    import torch

    from ase_mlff.md.state import state_from_atoms
    from ase_mlff.md.velocities import maxwell_boltzmann

    state = state_from_atoms([atoms], torch.device("cpu"), [seed])
    maxwell_boltzmann(state, torch.tensor([float(temperature_K)], dtype=torch.float64), zero_momentum)
    atoms.set_momenta(state.momenta.numpy())
    return float(state.dof[0])


def test_maxwell_boltzmann_velocities_have_no_drift_or_rotation():
    atoms = molecule("CH3CH2OH")
    dof = initialize_velocities(atoms, 300.0, 1)
    assert dof == 3 * 9 - 6  # drift and rotation removed, and not counted
    assert np.abs(atoms.get_momenta().sum(0)).max() < 1e-12
    assert np.abs(atoms.get_angular_momentum()).max() < 1e-10
    again = molecule("CH3CH2OH")
    initialize_velocities(again, 300.0, 1)
    np.testing.assert_array_equal(atoms.get_momenta(), again.get_momenta())
    # periodic systems keep their rotation-like modes (angular momentum is not conserved there)
    bulk = argon_cluster()
    bulk.cell, bulk.pbc = [20, 20, 20], True
    assert initialize_velocities(bulk, 300.0, 1) == 3 * 13 - 3
    assert np.abs(bulk.get_momenta().sum(0)).max() < 1e-12
    # Langevin conserves neither: every degree of freedom counts
    assert initialize_velocities(molecule("CH3CH2OH"), 300.0, 1, zero_momentum=False) == 27


def test_initial_velocities_start_at_the_temperature_and_are_gaussian():
    atoms = molecule("CH3CH2OH")
    dof = initialize_velocities(atoms, 300.0, 3)
    assert 2 * atoms.get_kinetic_energy() / (dof * kB) == pytest.approx(300.0, rel=1e-12)
    # over many draws each component of v·sqrt(m/kT) is a normal of variance dof/3N: check mean,
    # variance and kurtosis within ~4 standard errors of 400 x 27 samples
    samples = []
    for seed in range(400):
        atoms = molecule("CH3CH2OH")
        initialize_velocities(atoms, 300.0, 1000 + seed)
        samples.append(atoms.get_velocities() * np.sqrt(atoms.get_masses()[:, None] / (kB * 300.0)))
    z = np.concatenate(samples).ravel()
    n = len(z)
    assert abs(z.mean()) < 4 / np.sqrt(n)
    # the rescaling to E_kin = n_dof kT/2 makes Σz² = n_dof per draw, so the variance is
    # n_dof/3N (a wrong degree-of-freedom count would show here); the shape shows in the kurtosis
    assert np.var(z) == pytest.approx(dof / 27, abs=4 * np.sqrt(2 / n))
    kurtosis = np.mean(z**4) / np.var(z) ** 2
    assert kurtosis == pytest.approx(3.0, abs=4 * np.sqrt(24 / n) + 0.1)


class _FailingLJ(LennardJones):
    """Lennard-Jones that returns NaN from the ``fail_at``-th evaluation on."""

    def __init__(self, fail_at):
        super().__init__(["Ar"], EPSILON, SIGMA, cutoff=3 * SIGMA)
        self.calls, self.fail_at = 0, fail_at

    def forward(self, numbers, edge_index, edge_vectors):
        self.calls += 1
        energies = super().forward(numbers, edge_index, edge_vectors)
        return energies * float("nan") if self.calls >= self.fail_at else energies


def test_blow_up_on_non_finite_energy_keeps_good_frames(tmp_path):
    model = _FailingLJ(fail_at=58)
    calc = MLFFCalculator(model, dtype="float64", num_threads=1)
    calc.model.calls = 0  # the calculator evaluates a private copy
    result = run_md(argon_cluster(), calc, timestep_fs=5.0, temperature_K=30.0,
                    steps=200, seed=1, output=tmp_path / "nan", h5_interval=5, traj_interval=5)
    # evaluation k (1-based) belongs to step k-1: the first NaN is at step 57
    assert result.status == "blew-up" and result.exit_code != 0
    assert "step 57" in result.message and "potential energy is not finite" in result.message
    steps = frames(tmp_path / "nan.h5", "step")
    np.testing.assert_array_equal(steps, np.arange(0, 56, 5))
    assert np.isfinite(frames(tmp_path / "nan.h5", "total_energy")).all()
    import ase.io
    import h5py

    assert len(ase.io.read(tmp_path / "nan.traj", ":")) == len(steps)
    with h5py.File(tmp_path / "nan.h5", "r") as f:
        assert f.attrs["status"] == "blew-up"
    assert "blew-up" in (tmp_path / "nan.log").read_text()


def test_blow_up_on_runaway_temperature(tmp_path):
    # 40 fs steps on argon squeezed to 0.8 of its spacing: the first steps throw atoms into
    # the repulsive wall and the temperature runs away
    atoms = argon_cluster()
    atoms.positions *= 0.8
    model = LennardJones(["Ar"], EPSILON, SIGMA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = run_md(atoms, MLFFCalculator(model, dtype="float64", num_threads=1), timestep_fs=40.0,
                        temperature_K=30.0, steps=500, seed=1, output=tmp_path / "hot")
    assert result.status == "blew-up", result.message
    assert "temperature" in result.message or "flew apart" in result.message


def test_blow_up_when_atoms_fly_apart(tmp_path):
    # two argon atoms launched apart at 2 Å/fs with a 5 Å cutoff never come back
    from ase import Atoms

    atoms = Atoms("Ar2", positions=[[0, 0, 0], [4.0, 0, 0]])
    atoms.set_velocities(np.array([[-1.0, 0, 0], [1.0, 0, 0]]) * 0.02 / 0.09822694788464063)
    model = LennardJones(["Ar"], EPSILON, SIGMA, cutoff=5.0)
    result = run_md(atoms, MLFFCalculator(model, dtype="float64", num_threads=1), timestep_fs=5.0,
                    temperature_K=1e6, steps=5000, seed=1, velocities="input", output=tmp_path / "fly")
    assert result.status == "blew-up" and "flew apart" in result.message, result.message


@pytest.mark.slow
def test_long_nve_float32_drift_below_default_threshold(tmp_path):
    # 200 ps: the drift accumulated over a long run stays inside the O(dt²) fluctuation
    report = nve(tmp_path, 10.0, 200_000.0, dtype="float32", name="long")
    assert drift_over_run(report) < report.rms_fluctuation_meV_per_atom, report
    assert report.passed


@pytest.mark.slow
@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose-hoover"])
def test_thermostats_reach_target_temperature(tmp_path, ensemble):
    # mean temperature within 5 standard errors (block-averaged over 20 blocks) of the target
    model = LennardJones(["Ar"], EPSILON, SIGMA)
    result = run_md(argon_cluster(), MLFFCalculator(model, dtype="float64", num_threads=1),
                    ensemble=ensemble, timestep_fs=10.0, temperature_K=20.0, friction_per_fs=0.01,
                    taut_fs=200.0, steps=40_000, seed=3, output=tmp_path / ensemble, traj_interval=0)
    assert result.status == "completed", result.message
    temperature = frames(tmp_path / f"{ensemble}.h5", "temperature")
    temperature = temperature[len(temperature) // 10:]
    blocks = np.array_split(temperature, 20)
    means = np.array([b.mean() for b in blocks])
    error = means.std(ddof=1) / np.sqrt(len(means))
    assert abs(temperature.mean() - 20.0) < 5 * error + 0.5, (temperature.mean(), error)
