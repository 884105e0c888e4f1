"""Bad input and hard numbers (issue #8): non-finite structures, float32 far from the
origin, overlaps with periodic images, and NVE verdicts from runs too short to judge.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import EPS32, ethanol, make_model, water

from ase_mlff import MLFFCalculator
from ase_mlff.batch import atoms_to_batch
from ase_mlff.forces import model_dtype
from ase_mlff.md.report import MIN_SWINGS, energy_conservation
from ase_mlff.md.validate import MIN_DISTANCE, check_settings, check_structure
from ase_mlff.neighbors import neighbor_list


def calculator(species, dtype="float64", architecture="schnet"):
    return MLFFCalculator(make_model(architecture, species), device="cpu", dtype=dtype, num_threads=1)


# -- non-finite input -------------------------------------------------------------------
def with_position(atoms, index, value):
    atoms = atoms.copy()
    atoms.positions[index] = value
    return atoms


@pytest.mark.parametrize("system, value", [("ethanol", [np.nan, 0, 0]), ("water", [0, np.inf, 0])])
def test_non_finite_position_is_an_error_naming_structure_and_atom(system, value):
    # before: the molecule gave a finite energy (the NaN atom dropped out of the
    # neighbor list), the periodic cell an error from deep inside torch
    good = ethanol(0) if system == "ethanol" else water(0)
    species = ("H", "C", "O") if system == "ethanol" else ("H", "O")
    bad = with_position(good, 3, value)
    shown = "[" + ", ".join(f"{v:g}" for v in value) + "]"
    message = rf"structure 0: atom 3 \({bad.get_chemical_symbols()[3]}\) has a non-finite position " \
              + shown.replace("[", r"\[").replace("]", r"\]") + r"; fix the structure"
    calc = calculator(species)
    bad.calc = calc
    with pytest.raises(ValueError, match=message):
        bad.get_potential_energy()
    with pytest.raises(ValueError, match=message.replace("structure 0", "structure 1")):
        calc.calculate_batch([good, bad])
    # nothing stale is cached: the same calculator is fine on good input afterwards
    good = good.copy()
    good.calc = calc
    assert np.isfinite(good.get_potential_energy())


def test_non_finite_position_in_md_is_caught_when_only_positions_change():
    # in MD the calculator reuses its batch and skips atoms_to_batch: the check must still run
    atoms = ethanol(0)
    atoms.calc = calculator(("H", "C", "O"))
    atoms.get_forces()
    moved = atoms.positions.copy()
    moved[5] = [np.nan, np.nan, np.nan]
    atoms.positions = moved
    with pytest.raises(ValueError, match=r"atom 5 \(H\) has a non-finite position \[nan, nan, nan\]"):
        atoms.get_forces()


def test_several_non_finite_atoms_are_counted():
    atoms = ethanol(0)
    atoms.positions[[2, 4, 7]] = np.nan
    with pytest.raises(ValueError, match=r"atom 2 .* \(and 2 more atoms\)"):
        atoms_to_batch(atoms)


def test_non_finite_cell_is_an_error_naming_the_cell_vector():
    bulk = water(0)
    bulk.cell[1, 1] = np.nan  # before: "SVD did not converge"
    bulk.calc = calculator(("H", "O"))
    with pytest.raises(ValueError, match=r"structure 0: cell vector 1 is not finite \[0, nan, 0\] "
                                         r"\(pbc \[True, True, True\]\); fix the cell"):
        bulk.get_potential_energy()
    # an open axis does not use its vector, but 0 · inf is NaN in a mixed batch's edge vectors
    slab = Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, np.inf]],
                 pbc=(True, True, False))
    with pytest.raises(ValueError, match=r"cell vector 2 is not finite .* set it to zero \(atoms.cell\[2\] = 0\)"):
        calculator(("H", "O")).calculate_batch([ethanol(0), slab][1:])


# -- float32 far from the origin --------------------------------------------------------
def test_model_dtype_is_that_of_the_weights_not_of_the_float64_reference():
    assert model_dtype(make_model("schnet", dtype=torch.float32)) is torch.float32
    assert model_dtype(make_model("painn", dtype=torch.float64)) is torch.float64
    assert model_dtype(make_model("lennard_jones", dtype=torch.float32)) is None  # nothing says
    assert model_dtype(torch.nn.Linear(2, 2).to(torch.float32)) is torch.float32


def test_batch_keeps_float64_coordinates_for_a_float32_network():
    calc = calculator(("H", "C", "O"), dtype="float32")
    batch = calc._make_batch(ethanol(0))
    assert batch.positions.dtype == batch.cell.dtype == torch.float64


@pytest.mark.parametrize("architecture", ["schnet", "painn"])
@pytest.mark.parametrize("system, offset", [("ethanol", 1e3), ("ethanol", 1e6), ("water", "100 cells")])
def test_float32_forces_are_translation_invariant_far_from_the_origin(architecture, system, offset):
    # before: float32 positions carried eps32·|r| of rounding into every edge vector: force
    # errors of 1.5e-3 eV/Å at +1e3 Å, 2.7 eV/Å at +1e6 Å, 7e-3 eV/Å for water 100 cells out
    atoms = ethanol(0) if system == "ethanol" else water(0)
    species = ("H", "C", "O") if system == "ethanol" else ("H", "O")
    model = make_model(architecture, species)
    shifted = atoms.copy()
    shifted.positions += offset if system == "ethanol" else 100 * atoms.cell.array.sum(0)
    exact = atoms.copy()
    exact.calc = MLFFCalculator(model, device="cpu", dtype="float64", num_threads=1)
    e64, f64 = exact.get_potential_energy(), exact.get_forces()
    shifted.calc = MLFFCalculator(model, device="cpu", dtype="float32", num_threads=1)
    e32, f32 = shifted.get_potential_energy(), shifted.get_forces()
    assert f32.dtype == np.float64
    # The tolerances of tests/test_models.py for float32 against float64 at the origin,
    # without their term for rounding the positions to float32 (eps32·|r|, 1e7 times these
    # at 1e6 Å): only the network's own float32 rounding is left, ~16 operations deep, over
    # sums of ~n_neighbors pair terms.
    network = exact.get_potential_energies() - model.element_energy[atoms.numbers].numpy()
    neighbors = neighbor_list(atoms_to_batch(atoms), model.cutoff).n_edges / len(atoms)
    tol_f = EPS32 * np.abs(f64).max() * 16 * np.sqrt(neighbors)
    tol_e = EPS32 * 16 * np.abs(network).sum()
    assert np.abs(f32 - f64).max() < tol_f, (np.abs(f32 - f64).max(), tol_f)
    assert abs(e32 - e64) < tol_e, (e32 - e64, tol_e)


def test_float32_stress_of_a_cell_far_from_the_origin():
    # before: 8e-6 eV/Å³ off (of 0.02) at 100 cells out, 200 times the error at the origin
    atoms = water(0)
    model = make_model("schnet", ("H", "O"))
    shifted = atoms.copy()
    shifted.positions += 100 * atoms.cell.array.sum(0)
    atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64", num_threads=1)
    shifted.calc = MLFFCalculator(model, device="cpu", dtype="float32", num_threads=1)
    s64, s32 = atoms.get_stress(), shifted.get_stress()
    # σ = Σ r_ij ⊗ F_ij / V over all edges, each term of size up to r_c·max|F| and rounded
    # ~16 operations deep; independent roundings add up like a random walk (√n_edges)
    n_edges = neighbor_list(atoms_to_batch(atoms), model.cutoff).n_edges
    tol = EPS32 * 16 * np.sqrt(n_edges) * model.cutoff * np.abs(atoms.get_forces()).max() / atoms.get_volume()
    assert np.abs(s32 - s64).max() < tol, (np.abs(s32 - s64).max(), tol)


def test_training_batches_in_the_network_dtype_still_work():
    # FrameCache hands compute float32 positions for a float32 model: accepted as they are
    from ase_mlff.forces import compute

    model = make_model("schnet", ("H", "C", "O"), dtype=torch.float32)
    batch = atoms_to_batch(ethanol(0), dtype=torch.float32)
    out = compute(model, batch, neighbor_list(batch, model.cutoff), forces=True)
    exact = atoms_to_batch(ethanol(0))
    ref = compute(model.double(), exact, neighbor_list(exact, model.cutoff), forces=True)
    assert out.forces.dtype == torch.float32
    # positions near the origin (|r| < 2 Å): the test_models float32 tolerance
    tol = EPS32 * float(ref.forces.abs().max()) * (16 * 3 + 2 / 0.1)
    assert float((out.forces.double() - ref.forces).abs().max()) < tol


# -- overlaps with periodic images ------------------------------------------------------
def test_atom_closer_than_min_distance_to_its_own_image_is_refused():
    tiny = Atoms("H", positions=[[0, 0, 0]], cell=[0.3, 0.3, 0.3], pbc=True)  # before: it ran
    with pytest.raises(ValueError, match=r"atom 0 \(H\) is 0.300 Å from its own periodic image "
                                         r"\(cell shift \[.*\]\), closer than 0.5 Å: the cell \[0.3, 0.3, 0.3, "
                                         r"90.0, 90.0, 90.0\].* is too small"):
        check_structure(tiny, 0.5)
    # only along the periodic axis that is too short
    wire = Atoms("H", positions=[[0, 0, 0]], cell=[0.4, 0.3, 0.3], pbc=(True, False, False))
    with pytest.raises(ValueError, match=r"0.400 Å from its own periodic image \(cell shift \[-?1, 0, 0\]\)"):
        check_structure(wire, 0.5)
    check_structure(Atoms("H", cell=[0.3, 0.3, 0.3], pbc=False), 0.5)  # open: no images
    check_structure(Atoms("H", cell=[MIN_DISTANCE + 0.01] * 3, pbc=True), 0.5)


def test_overlap_across_the_boundary_names_the_shift_and_the_cell():
    atoms = Atoms("Ar2", positions=[[0.1, 5, 5], [9.9, 5, 5]], cell=[10, 10, 10], pbc=True)
    with pytest.raises(ValueError, match=r"atoms 0 \(Ar\) and 1 \(Ar\) are 0.200 Å apart across the periodic "
                                         r"boundary \(cell shift \[-1, 0, 0\], cell \[10.0"):
        check_structure(atoms, 0.5)
    check_structure(water(0), 0.5)
    check_structure(ethanol(0), 0.5)


def test_check_structure_names_a_non_finite_atom_or_cell():
    with pytest.raises(ValueError, match=r"atom 3 \(H\) has a non-finite position"):
        check_structure(with_position(ethanol(0), 3, [np.nan, 0, 0]), 0.5)
    bulk = water(0)
    bulk.cell[0, 0] = np.inf
    with pytest.raises(ValueError, match="is not finite"):
        check_structure(bulk, 0.5)


def settings(**changes):
    values = dict(ensemble="nve", velocities="maxwell-boltzmann", steps=10, timestep_fs=0.5,
                  temperature_K=300.0, friction_per_fs=0.01, taut_fs=100.0, h5_interval=1,
                  log_interval=1, flush_every=1, traj_interval=0, max_drift_meV_per_atom_per_ps=1.0)
    values.update(changes)
    return SimpleNamespace(**values)


def check(**changes):
    check_settings(settings(**changes), ("nve", "langevin"), ("maxwell-boltzmann", "input"))


@pytest.mark.parametrize("max_drift", [float("nan"), -0.5])
def test_drift_threshold_must_be_a_non_negative_number(max_drift):
    with pytest.raises(ValueError, match=rf"--max-drift\) must be a number >= 0 meV/atom/ps, got {max_drift}"):
        check(max_drift_meV_per_atom_per_ps=max_drift)


def test_timestep_must_be_finite():
    with pytest.raises(ValueError, match="the timestep must be a finite positive number of fs, got inf fs"):
        check(timestep_fs=float("inf"))


def test_valid_settings_pass_with_or_without_a_drift_threshold():
    check()
    check(max_drift_meV_per_atom_per_ps=0.0)
    legacy = settings()
    del legacy.max_drift_meV_per_atom_per_ps  # settings objects from before the threshold existed
    check_settings(legacy, ("nve",), ("maxwell-boltzmann",))


# -- NVE verdicts from short runs -------------------------------------------------------
N_ATOMS = 9
AMPLITUDE = 0.2  # meV/atom, a Verlet total-energy oscillation of ethanol at 0.5 fs
PERIOD_PS = 0.005  # half the C-H stretch period: the total energy oscillates twice per period


def series(duration_ps, drift=0.0, frame_ps=0.0005, phase=1.3, period_ps=PERIOD_PS, amplitude=AMPLITUDE):
    """(t ps, E_tot eV, E_kin eV) of drift·t + a bounded oscillation, per atom in meV."""
    t = np.arange(0.0, duration_ps + frame_ps / 2, frame_ps)
    per_atom = drift * t + amplitude * np.cos(2 * np.pi * t / period_ps + phase)  # meV/atom
    total = -1000.0 + per_atom * N_ATOMS * 1e-3
    kinetic = 0.3 + 0.05 * np.sin(2 * np.pi * t / (2 * PERIOD_PS))
    return t, total, kinetic


def test_short_bounded_oscillation_is_undecided_not_a_failure():
    t, total, kinetic = series(0.0095)  # 20 steps of 0.5 fs
    report = energy_conservation(t, total, kinetic, N_ATOMS, max_drift=1.0)
    # the least-squares slope alone is far beyond the threshold: before, this was a FAIL
    assert abs(report.drift_meV_per_atom_per_ps) > 1.0
    assert report.passed is None and report.verdict == "UNDECIDED"
    assert report.slope_uncertainty_meV_per_atom_per_ps == pytest.approx(
        6 * report.rms_fluctuation_meV_per_atom / report.duration_ps)
    assert (getattr(report, "passed", True) is False) is False  # callers exit 0
    text = report.format()
    assert "UNDECIDED: run too short to judge drift (20 frames over 0.0095 ps; slope uncertainty ±" in text
    # a PASS needs 6σ/T <= 1 meV/atom/ps: T >= 6σ, in ps
    needed = 6 * report.rms_fluctuation_meV_per_atom / 1.0
    assert f"vs threshold 1): run longer (without drift, a run of about {needed:.3g} ps" in text
    assert report.as_dict()["verdict"] == "UNDECIDED" and None not in report.as_dict().values()


def test_window_shorter_than_one_oscillation_is_undecided():
    # 3 steps: the line follows part of one oscillation, whatever its residual says
    t, total, kinetic = series(0.0015)
    report = energy_conservation(t, total, kinetic, N_ATOMS, max_drift=1.0)
    assert abs(report.drift_meV_per_atom_per_ps) > 1.0 + report.slope_uncertainty_meV_per_atom_per_ps
    assert report.fluctuation_swings < MIN_SWINGS
    assert report.passed is None
    assert "swung" in report.format() and "part of one oscillation" in report.format()


def test_long_run_of_the_same_oscillation_passes():
    t, total, kinetic = series(2.0, frame_ps=0.001)
    report = energy_conservation(t, total, kinetic, N_ATOMS, max_drift=1.0)
    assert report.passed is True and report.verdict == "PASS"
    assert "PASS: |drift| + uncertainty" in report.format()


def test_strong_drift_fails_even_in_a_short_run():
    t, total, kinetic = series(0.0095, drift=500.0)  # 4.75 meV/atom over the run, 24x the oscillation
    report = energy_conservation(t, total, kinetic, N_ATOMS, max_drift=1.0)
    assert report.passed is False and report.verdict == "FAIL"
    assert "FAIL: |drift| - uncertainty" in report.format()


def test_slope_uncertainty_bounds_the_slope_of_any_bounded_oscillation():
    # the derivation in ase_mlff/md/report.py: random sums of oscillations, no drift, each
    # over more than a period; the fitted slope must stay within ±u
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 1.0, 400)
    for _ in range(300):
        k = rng.integers(1, 4)
        periods = rng.uniform(0.02, 0.9, k)
        energy = sum(rng.uniform(0.1, 1) * np.cos(2 * np.pi * t / p + rng.uniform(0, 2 * np.pi))
                     for p in periods)
        report = energy_conservation(t, energy * N_ATOMS * 1e-3, 0 * t + 1, N_ATOMS)
        if report.fluctuation_swings >= MIN_SWINGS:
            assert abs(report.drift_meV_per_atom_per_ps) <= report.slope_uncertainty_meV_per_atom_per_ps
    # ... and the bound is reached by a single step at mid-run (its worst case)
    step = np.where(t < 0.5, -1.0, 1.0)
    report = energy_conservation(t, step * N_ATOMS * 1e-3, 0 * t + 1, N_ATOMS)
    assert report.drift_meV_per_atom_per_ps == pytest.approx(report.slope_uncertainty_meV_per_atom_per_ps,
                                                             rel=0.02)


def test_exactly_linear_series_is_decided_at_once():
    t = np.linspace(0.0, 0.001, 3)
    report = energy_conservation(t, 2.0 * t * N_ATOMS * 1e-3, 0 * t + 1, N_ATOMS, max_drift=1.0)
    assert report.passed is False and report.slope_uncertainty_meV_per_atom_per_ps < 1e-9


def test_undecided_report_can_be_stored_as_hdf5_attributes(tmp_path):
    import h5py

    t, total, kinetic = series(0.0095)
    report = energy_conservation(t, total, kinetic, N_ATOMS)
    with h5py.File(tmp_path / "r.h5", "w") as f:
        for key, value in report.as_dict().items():  # as the driver stores /report
            f.attrs[key] = value
        assert f.attrs["verdict"] == "UNDECIDED" and "passed" not in f.attrs
