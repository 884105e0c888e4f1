"""The ASE calculator contract: properties, caching, errors, batches, dtype/device, threads.

The oracle is mostly a fresh calculator on the same structure, in float64:
results may then differ only by the order of float64 sums, so energies
(totals of ~1e4 eV with the reference energies) agree to 1e-9 eV, forces to
1e-11 eV/Å and stresses to 1e-12 eV/Å³.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from ase.io import read
from ase.io.trajectory import Trajectory
from conftest import EPS32, ethanol, make_model, molybdenum, silicon, water

from ase_mlff import MLFFCalculator
from ase_mlff.neighbors import has_torch_cluster
from ase_mlff.threads import default_threads

SPECIES = ("H", "C", "O", "Si", "Mo")


@pytest.fixture(scope="module")
def model():
    return make_model("painn", SPECIES, cutoff=4.0)


def calculator(model, **kwargs):
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("dtype", "float64")
    return MLFFCalculator(model, **kwargs)


class CountingModel:
    """Counts forward passes of a calculator's model (the expensive part)."""

    def __init__(self, calc):
        self.calls = 0
        calc.model.register_forward_hook(self._hook)

    def _hook(self, *args):
        self.calls += 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_implemented_properties_and_their_consistency(model, dtype):
    atoms = rattled_si()
    atoms.calc = calculator(model, dtype=dtype)
    assert set(MLFFCalculator.implemented_properties) == {"energy", "free_energy", "forces", "stress",
                                                           "energies"}
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    assert atoms.get_potential_energies().sum() == pytest.approx(energy, abs=1e-9)  # both summed in float64
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert forces.shape == (len(atoms), 3) and stress.shape == (6,)
    for value in (forces, stress, atoms.get_potential_energies()):  # float64 whatever the network ran in
        assert isinstance(value, np.ndarray) and value.dtype == np.float64
    assert isinstance(energy, float)


def rattled_si():
    atoms = silicon(2)
    atoms.rattle(0.02, seed=0)
    return atoms


def test_results_are_cached_until_the_atoms_change(model):
    atoms = ethanol(0)
    atoms.calc = calc = calculator(model)
    counter = CountingModel(calc)
    first = atoms.get_forces()
    atoms.get_forces()
    atoms.get_potential_energy()
    atoms.get_potential_energies()
    assert counter.calls == 1
    atoms.positions[0, 0] += 0.05
    moved = atoms.get_forces()
    assert counter.calls == 2 and not np.array_equal(first, moved)
    # the returned arrays are copies: editing them does not corrupt the cache
    moved[:] = 0.0
    assert np.abs(atoms.get_forces()).max() > 0 and counter.calls == 2


@pytest.mark.parametrize("change", ["positions", "cell", "numbers", "pbc"])
def test_every_relevant_change_triggers_a_correct_recalculation(model, change):
    # each answer is compared with a fresh calculator on the changed structure
    atoms = rattled_si()
    atoms.calc = calculator(model)
    atoms.get_forces()
    if change == "positions":
        atoms.positions[3] += [0.3, -0.2, 0.1]
    elif change == "cell":
        atoms.set_cell(atoms.cell.array * 1.03, scale_atoms=False)
    elif change == "numbers":
        atoms.numbers[[0, 5]] = 42
    else:
        atoms.pbc = (True, True, False)
    fresh = atoms.copy()
    fresh.calc = calculator(model)
    assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-12)


def test_md_like_position_updates_match_fresh_calculations(model):
    # many small steps and one jump past any neighbor-list skin
    atoms = water(0)
    atoms.calc = calculator(model)
    rng = np.random.default_rng(1)
    for step in range(6):
        atoms.positions += rng.normal(scale=0.6 if step == 3 else 0.05, size=atoms.positions.shape)
        fresh = atoms.copy()
        fresh.calc = calculator(model)
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-11)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-12)


def test_results_are_replaced_whole(model):
    atoms = rattled_si()
    calc = calculator(model)
    calc.calculate(atoms, ["stress"], ["positions", "numbers", "cell", "pbc"])
    assert "stress" in calc.results
    atoms.positions[0] += 0.1
    # a direct calculate() for energy only must not leave the old stress behind
    calc.calculate(atoms, ["energy"], ["positions"])
    assert "stress" not in calc.results
    assert set(calc.results) == {"energy", "free_energy", "energies", "forces"}


@pytest.mark.parametrize("pbc", [False, (True, True, False)])
def test_stress_of_a_non_periodic_structure_is_a_clear_error(model, pbc):
    atoms = ethanol(0) if pbc is False else silicon(3)
    atoms.pbc = pbc
    atoms.calc = calculator(model)
    with pytest.raises(PropertyNotImplementedError, match=r"stress needs a cell that is periodic in all "
                                                          r"three directions, but pbc is \["):
        atoms.get_stress()
    # the calculator is still usable afterwards, and gives the same energy as a fresh one
    fresh = atoms.copy()
    fresh.calc = calculator(model)
    assert atoms.get_potential_energy() == fresh.get_potential_energy()


def test_uncovered_element_error_names_element_and_model_species():
    calc = calculator(make_model("schnet", ("H", "C", "O")))
    atoms = Atoms("CH3Cl", positions=np.random.default_rng(0).uniform(0, 3, (5, 3)))
    atoms.calc = calc
    with pytest.raises(ValueError, match=r"element\(s\) Cl not covered by this schnet model, "
                                         r"which was trained on H, C, O"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match=r"element\(s\) Cl"):
        calc.calculate_batch([ethanol(0), atoms])


def test_argument_errors():
    lj = make_model("lennard_jones", ("Ar",))
    with pytest.raises(ValueError, match=r"dtype must be one of \['float32', 'float64'\], got 'float16'"):
        MLFFCalculator(lj, dtype="float16")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        MLFFCalculator(lj, device="gpu")
    with pytest.raises(TypeError, match="model must be a path, a bundled potential name or an ase_mlff "
                                        "Potential, got int"):
        MLFFCalculator(42)
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        MLFFCalculator(lj, neighbor_backend="fast")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        MLFFCalculator(make_model("lennard_jones", ("Ar",)), device="cuda")


def test_device_auto_picks_what_is_there(model):
    calc = MLFFCalculator(model, device="auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert calc.device.type == expected and calc.parameters["device"].startswith(expected)
    assert calc.parameters["dtype"] == "float32"  # the default


def test_in_memory_model_is_not_modified_and_can_serve_two_dtypes(model):
    original = copy.deepcopy(model)
    atoms = ethanol(0)
    single = calculator(model, dtype="float32")
    double = calculator(model, dtype="float64")
    e64 = double.get_potential_energy(atoms)
    e32 = single.get_potential_energy(atoms)
    # the caller's module keeps its dtype, weights and trainability
    assert next(model.parameters()).dtype == torch.float64
    assert all(p.requires_grad for p in model.parameters())
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    network = abs(e64 - model.element_energy[atoms.numbers].sum().item())
    assert abs(e32 - e64) < 64 * EPS32 * (network + 1.0)  # float32 rounding of the network part


def test_parameters_are_json_and_a_trajectory_round_trips(tmp_path, model):
    atoms = rattled_si()
    atoms.calc = calc = calculator(model)
    json.dumps(calc.todict())
    energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    with Trajectory(tmp_path / "run.traj", "w") as trajectory:
        trajectory.write(atoms)
        atoms.positions[0] += 0.05
        atoms.get_forces()  # a Trajectory stores only results valid for the current positions
        trajectory.write(atoms)
    frames = read(tmp_path / "run.traj", index=":")
    assert len(frames) == 2
    assert frames[0].get_potential_energy() == energy
    np.testing.assert_array_equal(frames[0].get_forces(), forces)
    np.testing.assert_array_equal(frames[0].get_stress(), stress)
    assert frames[1].get_potential_energy() != energy
    assert frames[0].calc.parameters["dtype"] == "float64"


def test_calculate_batch_equals_single_calls(model):
    structures = [ethanol(0), rattled_si(), water(1), Atoms("H", positions=[[0, 0, 0]]),
                  molybdenum(0), ethanol(2)]
    calc = calculator(model)
    batch = calc.calculate_batch(structures)
    assert len(batch) == len(structures)
    for atoms, result in zip(structures, batch):
        atoms = atoms.copy()
        atoms.calc = calculator(model)
        assert result["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        assert result["free_energy"] == result["energy"]
        np.testing.assert_allclose(result["forces"], atoms.get_forces(), atol=1e-11)
        np.testing.assert_allclose(result["energies"], atoms.get_potential_energies(), atol=1e-11)
        assert "stress" not in result


def test_calculate_batch_with_stress(model):
    structures = [rattled_si(), water(0), molybdenum(0), molybdenum(3)]
    calc = calculator(model)
    batch = calc.calculate_batch(structures, properties=("energy", "forces", "stress"))
    for atoms, result in zip(structures, batch):
        atoms = atoms.copy()
        atoms.calc = calculator(model)
        np.testing.assert_allclose(result["stress"], atoms.get_stress(), atol=1e-12)
        assert result["stress"].dtype == np.float64
    with pytest.raises(PropertyNotImplementedError, match=r"structures \[1\] are not periodic"):
        calc.calculate_batch([rattled_si(), ethanol(0)], properties=("stress",))
    with pytest.raises(ValueError, match=r"unknown properties \['dipole'\]"):
        calc.calculate_batch([rattled_si()], properties=("energy", "dipole"))


@pytest.mark.parametrize("backend", [
    "torch", pytest.param("torch-cluster", marks=pytest.mark.skipif(not has_torch_cluster(),
                                                                    reason="torch_cluster is not installed"))])
def test_neighbor_backends_give_the_same_results(model, backend):
    atoms = water(1)
    atoms.calc = calculator(model, neighbor_backend=backend)
    reference = water(1)
    reference.calc = calculator(model, neighbor_backend="auto")
    assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-11)


# -- threads ------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "0", "-2", "1.5"])
def test_invalid_thread_variable_is_a_clear_error(monkeypatch, value, restore_threads):
    monkeypatch.setenv("MLFF_NUM_THREADS", value)
    with pytest.raises(ValueError, match=f"MLFF_NUM_THREADS must be a positive integer, got '{value}'"):
        MLFFCalculator(make_model("lennard_jones", ("Ar",)), device="cpu")


def test_thread_variable_and_argument_are_applied(monkeypatch, restore_threads):
    monkeypatch.setenv("MLFF_NUM_THREADS", "2")
    assert default_threads() == 2
    calc = MLFFCalculator(make_model("lennard_jones", ("Ar",)), device="cpu")
    assert calc.num_threads == 2 and torch.get_num_threads() == 2
    calc = MLFFCalculator(make_model("lennard_jones", ("Ar",)), device="cpu", num_threads=1)
    assert calc.num_threads == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="num_threads must be at least 1, got 0"):
        MLFFCalculator(make_model("lennard_jones", ("Ar",)), device="cpu", num_threads=0)


def test_explicit_threads_and_the_variable_win_over_the_size_rule(monkeypatch, restore_threads):
    from ase.build import bulk

    monkeypatch.delenv("MLFF_NUM_THREADS", raising=False)
    model = make_model("lennard_jones", ("Ar",))
    small = bulk("Ar", "fcc", a=5.26, cubic=True)  # 4 atoms: the size rule says 1
    explicit = MLFFCalculator(model, device="cpu", num_threads=2)
    explicit.get_potential_energy(small)
    assert explicit.num_threads == torch.get_num_threads() == 2
    monkeypatch.setenv("MLFF_NUM_THREADS", "2")
    from_env = MLFFCalculator(model, device="cpu")
    from_env.get_potential_energy(small)
    assert from_env.num_threads == torch.get_num_threads() == 2


def test_thread_defaults_in_a_fresh_interpreter():
    """Size rule (small: 1 thread, large: the cores) and no ratchet after a 1-thread calculator.

    Run in a fresh interpreter: this test session pins torch to one thread.
    """
    script = (
        "import torch; from ase.build import bulk; from ase_mlff import MLFFCalculator\n"
        "from ase_mlff.models import LennardJones\n"
        "from ase_mlff.threads import default_threads, available_cores, SMALL_SYSTEM_ATOMS\n"
        "first = default_threads()\n"
        "MLFFCalculator(LennardJones(['Ar']), device='cpu', num_threads=1)\n"
        "later = default_threads()\n"
        "calc = MLFFCalculator(LennardJones(['Ar'], sigma=3.4, cutoff=6.0), device='cpu')\n"
        "small = bulk('Ar', 'fcc', a=5.26, cubic=True); large = small.repeat(6)\n"
        "assert len(small) < SMALL_SYSTEM_ATOMS <= len(large)\n"
        "calc.get_potential_energy(small); on_small = torch.get_num_threads()\n"
        "calc.get_potential_energy(large); on_large = torch.get_num_threads()\n"
        "print(first, later, available_cores(), on_small, on_large)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MLFF_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    first, later, cores, on_small, on_large = map(int, out.stdout.split())
    if cores < 2:
        pytest.skip("one core: every default is 1")
    assert later == first >= 2  # a 1-thread calculator did not lower the default
    assert on_small == 1
    assert on_large == first


# -- CUDA ---------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_agrees_with_cpu(model, dtype):
    for atoms in (ethanol(0), rattled_si(), water(0)):
        gpu, cpu = atoms.copy(), atoms.copy()
        gpu.calc = MLFFCalculator(model, device="cuda", dtype=dtype)
        cpu.calc = calculator(model, dtype="float64")
        forces = cpu.get_forces()
        # float64: different reduction order only; float32: rounding of the network part
        scale = 1e-9 if dtype == "float64" else 1e3 * EPS32
        network = abs(cpu.get_potential_energy() - model.element_energy[atoms.numbers].sum().item())
        assert gpu.get_potential_energy() == pytest.approx(cpu.get_potential_energy(),
                                                           abs=scale * (network + 1))
        np.testing.assert_allclose(gpu.get_forces(), forces, atol=scale * (np.abs(forces).max() + 1))
        if atoms.pbc.all():
            np.testing.assert_allclose(gpu.get_stress(), cpu.get_stress(), atol=scale)
        assert gpu.calc.model.element_energy.is_cuda


@pytest.mark.gpu
def test_cuda_batch_equals_single_calls(model):
    calc = MLFFCalculator(model, device="cuda", dtype="float64")
    structures = [ethanol(0), rattled_si(), water(1), molybdenum(0)]
    for atoms, result in zip(structures, calc.calculate_batch(structures)):
        single = calc.calculate_batch([atoms])[0]
        assert result["energy"] == pytest.approx(single["energy"], abs=1e-9)
        np.testing.assert_allclose(result["forces"], single["forces"], atol=1e-10)


# -- ASE machinery as the oracle ----------------------------------------------------------------
def test_variable_cell_relaxation_follows_ase_lennard_jones():
    # positions and cell change on every step (stress, cell and neighbor
    # updates): the BFGS path must be the one ASE's own LJ produces (UnitCellFilter:
    # FrechetCellFilter's expm/logm are slow when BLAS threads oversubscribe)
    from ase.build import bulk
    from ase.calculators.lj import LennardJones as AseLennardJones
    from ase.filters import UnitCellFilter
    from ase.optimize import BFGS

    from ase_mlff.models import LennardJones

    finals = []
    for calc in (AseLennardJones(epsilon=0.0104, sigma=3.4, rc=8.0, ro=6.0, smooth=True),
                 calculator(LennardJones(["Ar"], 0.0104, 3.4, cutoff=8.0, onset=6.0))):
        atoms = bulk("Ar", "fcc", a=5.0, cubic=True)
        atoms.rattle(0.05, seed=1)
        atoms.calc = calc
        optimizer = BFGS(UnitCellFilter(atoms), logfile=None)
        optimizer.run(fmax=1e-6, steps=12)  # a fixed number of steps: the path, not convergence
        finals.append((atoms.get_potential_energy(), atoms.cell.array.copy()))
    (energy_ase, cell_ase), (energy, cell) = finals
    assert np.abs(cell_ase - bulk("Ar", "fcc", a=5.0, cubic=True).cell.array).max() > 0.05  # it moved
    assert energy == pytest.approx(energy_ase, abs=1e-12)  # float64 both sides
    np.testing.assert_allclose(cell, cell_ase, atol=1e-9)


def test_compiled_evaluations_keep_one_thread_up_to_their_own_size(monkeypatch):
    from ase_mlff.threads import COMPILED_SMALL_SYSTEM_ATOMS, SMALL_SYSTEM_ATOMS

    monkeypatch.delenv("MLFF_NUM_THREADS", raising=False)
    assert SMALL_SYSTEM_ATOMS < COMPILED_SMALL_SYSTEM_ATOMS
    between = SMALL_SYSTEM_ATOMS  # eager: the cores; compiled: one (inductor's kernels, ase_mlff.threads)
    assert default_threads(between) == default_threads()
    assert default_threads(between, compiled=True) == 1
    assert default_threads(COMPILED_SMALL_SYSTEM_ATOMS, compiled=True) == default_threads()
    monkeypatch.setenv("MLFF_NUM_THREADS", "2")  # the variable still wins
    assert default_threads(between, compiled=True) == 2
