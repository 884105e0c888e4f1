"""Bad input and hard numbers (issue #8): non-finite structures, float32 far from the origin."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import EPS32, ethanol, make_model, water

from ase_mlff import MLFFCalculator
from ase_mlff.batch import atoms_to_batch
from ase_mlff.forces import model_dtype
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
