"""The physics checklist for SchNet, PaiNN and Lennard-Jones.

Each test compares against something independent of the code under test:
finite differences of the energy (forces, stress), the same structure moved
rigidly, relabelled, wrapped or repeated (invariances), separate evaluations
(batches, far-apart molecules), float64 (for float32), closed-form
Lennard-Jones and ``ase.calculators.lj.LennardJones``.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress
from ase.calculators.lj import LennardJones as AseLennardJones
from ase.stress import voigt_6_to_full_3x3_stress
from conftest import ARCHITECTURES, EPS32, EPS64, ethanol, make_model, molybdenum, silicon, water

from ase_mlff import MLFFCalculator
from ase_mlff.batch import atoms_to_batch
from ase_mlff.forces import compute, energy
from ase_mlff.models import LennardJones, PaiNN, SchNet, get_architecture
from ase_mlff.models.base import species_to_numbers
from ase_mlff.neighbors import neighbor_list

SPECIES = {"ethanol": ("H", "C", "O"), "water": ("H", "O"), "si": ("Si",), "mo": ("Mo",)}


def attach(atoms, model, dtype="float64"):
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, device="cpu", dtype=dtype)
    return atoms


def results(atoms):
    """Energy, forces, per-atom energies and (3-D periodic only) stress, as float64 arrays."""
    out = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
               energies=atoms.get_potential_energies())
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


def rattled(atoms, seed, stdev=0.05):
    atoms = atoms.copy()
    atoms.rattle(stdev, seed=seed)  # break symmetries that make forces vanish
    return atoms


def random_rotation(seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def fd_tolerance(energy, eps, curvature=100.0):
    """Central differences: truncation eps²·|E'''|/6 (|E'''| ≲ curvature eV/Å³ for
    these models) plus round-off |E|·ε64/eps of the large total energy."""
    return curvature * eps**2 / 6 + 10 * abs(energy) * EPS64 / eps


# -- forces and stress against finite differences -----------------------------------------
FD_SYSTEMS = {
    "ethanol": lambda: ethanol(1),
    "si-triclinic": lambda: silicon(2),
    "mo-2-atom-cell": lambda: rattled(molybdenum(0), seed=3),  # cell < cutoff: atoms see own images
    "water": lambda: water(0),
    "si-left-handed": lambda: left_handed(rattled(silicon(2), seed=6)),  # negative det(cell)
}


def left_handed(atoms):
    atoms.set_cell(atoms.cell.array[[1, 0, 2]], scale_atoms=False)
    assert np.linalg.det(atoms.cell.array) < 0
    return atoms


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("system", [s for s in FD_SYSTEMS if s != "si-left-handed"])
def test_forces_are_minus_the_energy_gradient(architecture, system):
    atoms = FD_SYSTEMS[system]()
    species = SPECIES[system.split("-")[0]]
    cutoff = 4.0 if architecture != "lennard_jones" else 5.0
    atoms = attach(atoms, make_model(architecture, species, cutoff=cutoff))
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3  # not trivially zero
    # water has 192 atoms: an O and two H are enough to test the periodic images
    iatoms = [0, 64, 100] if system == "water" else None
    eps = 1e-4
    numerical = calculate_numerical_forces(atoms, eps=eps, iatoms=iatoms)
    expected = forces[iatoms] if iatoms else forces
    np.testing.assert_allclose(expected, numerical, rtol=1e-6,
                               atol=fd_tolerance(atoms.get_potential_energy(), eps))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("system", ["si-triclinic", "mo-2-atom-cell", "water", "si-left-handed"])
def test_stress_is_the_strain_derivative_over_volume(architecture, system):
    atoms = FD_SYSTEMS[system]()
    cutoff = 4.0 if architecture != "lennard_jones" else 5.0
    atoms = attach(atoms, make_model(architecture, SPECIES[system.split("-")[0]], cutoff=cutoff))
    stress = atoms.get_stress()
    assert np.abs(stress).max() > 1e-5
    eps = 1e-5
    numerical = calculate_numerical_stress(atoms, eps=eps)  # ASE's sign and Voigt order
    # strain round-off is |E|·ε64/(eps·V); truncation eps²·|E'''|/V is far smaller
    atol = 10 * abs(atoms.get_potential_energy()) * EPS64 / (eps * atoms.get_volume()) + 1e-9
    np.testing.assert_allclose(stress, numerical, rtol=1e-6, atol=atol)


def test_compressed_lj_crystal_has_positive_pressure():
    # ASE's sign: stress = (1/V) dE/dε, so a compressed solid has negative
    # diagonal stress (positive pressure), a stretched one positive.
    for a0, sign in [(4.6, -1), (6.0, +1)]:
        atoms = attach(bulk("Ar", "fcc", a=a0), LennardJones(["Ar"], 0.0104, 3.4, cutoff=8.0))
        assert np.all(np.sign(atoms.get_stress()[:3]) == sign)


# -- invariances ----------------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rotation_and_translation_of_a_molecule(architecture):
    model = make_model(architecture, SPECIES["ethanol"])
    reference = results(attach(ethanol(0), model))
    for seed in range(2):
        rotation = random_rotation(seed)
        moved = ethanol(0)
        moved.positions = moved.positions @ rotation.T + np.array([3.0, -7.0, 11.0]) * (seed + 1)
        got = results(attach(moved, model))
        # float64: rounding of the rotated coordinates, ~1e-15 relative
        assert got["energy"] == pytest.approx(reference["energy"], abs=1e-9)
        np.testing.assert_allclose(got["forces"], reference["forces"] @ rotation.T, atol=1e-10)
        np.testing.assert_allclose(got["energies"], reference["energies"], atol=1e-9)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_rotation_of_a_periodic_cell_rotates_forces_and_stress(architecture):
    model = make_model(architecture, SPECIES["si"], cutoff=4.5)
    atoms = silicon(2)
    reference = results(attach(atoms, model))
    rotation = random_rotation(5)
    turned = atoms.copy()
    turned.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    turned.positions = atoms.positions @ rotation.T
    got = results(attach(turned, model))
    assert got["energy"] == pytest.approx(reference["energy"], abs=1e-9)
    np.testing.assert_allclose(got["forces"], reference["forces"] @ rotation.T, atol=1e-10)
    sigma = voigt_6_to_full_3x3_stress(reference["stress"])
    np.testing.assert_allclose(voigt_6_to_full_3x3_stress(got["stress"]), rotation @ sigma @ rotation.T,
                               atol=1e-12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_permutation_of_atoms(architecture):
    for atoms, species in [(ethanol(2), SPECIES["ethanol"]), (molybdenum(3), SPECIES["mo"])]:
        atoms = rattled(atoms, seed=1)
        model = make_model(architecture, species)
        reference = results(attach(atoms, model))
        order = np.random.default_rng(0).permutation(len(atoms))
        got = results(attach(atoms[order], model))
        assert got["energy"] == pytest.approx(reference["energy"], abs=1e-9)
        np.testing.assert_allclose(got["forces"], reference["forces"][order], atol=1e-10)
        np.testing.assert_allclose(got["energies"], reference["energies"][order], atol=1e-9)
        if "stress" in reference:
            np.testing.assert_allclose(got["stress"], reference["stress"], atol=1e-12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_periodic_wrap_and_lattice_translations(architecture):
    model = make_model(architecture, SPECIES["water"])
    atoms = water(1)  # positions far outside the cell
    reference = results(attach(atoms, model))
    wrapped = atoms.copy()
    wrapped.wrap()
    shifted = atoms.copy()
    lattice = np.random.default_rng(2).integers(-3, 4, (len(atoms), 3))
    shifted.positions += lattice @ atoms.cell.array
    for other in (wrapped, shifted):
        got = results(attach(other, model))
        # float64 rounding of positions ~20 Å: ~1e-14 Å, times force constants
        assert got["energy"] == pytest.approx(reference["energy"], abs=1e-8)
        np.testing.assert_allclose(got["forces"], reference["forces"], atol=1e-9)
        np.testing.assert_allclose(got["stress"], reference["stress"], atol=1e-11)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("repeat", [(2, 1, 1), (1, 2, 3)])
def test_supercell_is_extensive(architecture, repeat):
    # The 2-atom Mo cell is much smaller than the cutoff: every atom sees many
    # images of itself. A supercell must give n times the energy, the same
    # forces per image, the same per-atom energies and the same stress.
    cell = rattled(molybdenum(0), seed=4, stdev=0.1)
    model = make_model(architecture, SPECIES["mo"], cutoff=5.0)
    small = results(attach(cell, model))
    big = results(attach(cell.repeat(repeat), model))
    n = int(np.prod(repeat))
    assert big["energy"] == pytest.approx(n * small["energy"], abs=1e-9 * n)
    np.testing.assert_allclose(big["forces"], np.tile(small["forces"], (n, 1)), atol=1e-10)
    np.testing.assert_allclose(big["energies"], np.tile(small["energies"], n), atol=1e-9)
    np.testing.assert_allclose(big["stress"], small["stress"], atol=1e-12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_two_far_apart_molecules_add_up(architecture):
    model = make_model(architecture, SPECIES["ethanol"])
    first, second = ethanol(0), ethanol(2)
    second.positions += [40.0, 0.0, 0.0]  # ten cutoffs away
    one, two = results(attach(first, model)), results(attach(second, model))
    both = results(attach(first + second, model))
    assert both["energy"] == pytest.approx(one["energy"] + two["energy"], abs=1e-9)
    np.testing.assert_allclose(both["forces"], np.concatenate([one["forces"], two["forces"]]), atol=1e-12)
    np.testing.assert_allclose(both["energies"], np.concatenate([one["energies"], two["energies"]]),
                               atol=1e-12)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("edges", ["as built", "shuffled", "with shift codes"])
def test_a_batch_evaluated_in_pieces_equals_the_whole_batch(architecture, edges, monkeypatch):
    from ase_mlff import forces as forces_module
    from ase_mlff.neighbors import shift_codes

    species = ("H", "C", "O", "Si", "Mo")
    model = make_model(architecture, species, cutoff=4.0)
    # 72-254 edges each (and none for the lone H): a few systems per piece
    open_and_periodic = [ethanol(0), rattled(molybdenum(0), 1), silicon(2), Atoms("H", positions=[[0, 0, 0]]),
                         ethanol(1), molybdenum(4), ethanol(2), silicon(1), rattled(ethanol(0), 3), molybdenum(3)]
    periodic = [rattled(molybdenum(0), 1), silicon(2), molybdenum(3), silicon(1), molybdenum(4),
                rattled(silicon(2), 2), molybdenum(0)]
    for structures, stress in [(open_and_periodic, False), (periodic, True)]:
        batch = atoms_to_batch(structures)
        neighbors = neighbor_list(batch, model.cutoff)
        if edges == "shuffled":  # builders need not group edges by system
            order = torch.randperm(neighbors.n_edges, generator=torch.Generator().manual_seed(0))
            neighbors = dataclasses.replace(neighbors, edge_index=neighbors.edge_index[:, order],
                                            shifts=neighbors.shifts[order])
        elif edges == "with shift codes" and neighbors.periodic:  # as the skin lists hand them over
            reach = int(neighbors.shifts.abs().max())
            code = shift_codes(batch.system[neighbors.edge_index[0]], neighbors.shifts, reach)
            neighbors = dataclasses.replace(neighbors, reach=reach, shift_code=code)
        whole = compute(model, batch, neighbors, stress=stress, piece_size=0)
        size = neighbors.n_edges // 4
        parts = forces_module.pieces(batch, neighbors, size)
        assert len(parts) >= 3 and sum(n.n_edges for _, n in parts) == neighbors.n_edges
        # balanced: no piece far below the share (a piece ends at a system's end)
        assert min(n.n_edges for _, n in parts) >= size / 4
        calls = []
        monkeypatch.setattr(forces_module, "energy", lambda *a, calls=calls, **k: calls.append(1) or energy(*a, **k))
        pieced = compute(model, batch, neighbors, stress=stress, piece_size=size)
        assert len(calls) == len(parts)
        monkeypatch.undo()
        for name in ("energy", "energies", "forces") + (("stress",) if stress else ()):
            torch.testing.assert_close(getattr(pieced, name), getattr(whole, name), rtol=0, atol=1e-10)


def test_network_batches_are_split_by_default_on_the_cpu_only(monkeypatch):
    from ase_mlff import forces as forces_module

    model = make_model("painn", cutoff=4.0)
    structures = [rattled(ethanol(k % 3), k) for k in range(8)]
    batch = atoms_to_batch(structures)
    neighbors = neighbor_list(batch, model.cutoff)
    monkeypatch.setattr(type(model), "piece_edges_per_thread", neighbors.n_edges // 8)
    calls = []
    monkeypatch.setattr(forces_module, "energy", lambda *a, **k: calls.append(1) or energy(*a, **k))
    compute(model, batch, neighbors)
    assert len(calls) > 1  # split at the default size (×threads) on the CPU
    calls.clear()
    compute(model, batch, neighbors, training=True)  # one graph for the loss
    assert len(calls) == 1
    assert forces_module.piece_edges(model, torch.device("cuda")) == 0
    monkeypatch.undo()
    assert forces_module.piece_edges(make_model("lennard_jones"), torch.device("cpu")) == 0
    assert forces_module.piece_edges(PaiNN(["H"]), torch.device("cpu")) == 2048 * torch.get_num_threads()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_lennard_jones_on_a_half_list_equals_it_on_the_full_list(compiled):
    """Each pair once (``Neighbors.half``, what the skin lists build for LJ) gives the same energy,
    per-atom energies, forces and stress as both directions, open and periodic (a 2-atom Mo cell
    has its atoms' own images within the cutoff), eager and compiled."""
    from ase_mlff.compiled import compiled as compile_model
    from ase_mlff.neighbors import one_per_pair

    model = make_model("lennard_jones", ("H", "C", "O", "Mo"), cutoff=4.0)
    evaluator = compile_model(model) if compiled else model
    for structures, stress in [([ethanol(0), ethanol(1)], False),
                               ([molybdenum(0), rattled(molybdenum(3), 1), molybdenum(4)], True)]:
        batch = atoms_to_batch(structures)
        full = neighbor_list(batch, model.cutoff)
        kept = one_per_pair(full.edge_index, full.shifts)
        half = dataclasses.replace(full, edge_index=full.edge_index[:, kept], shifts=full.shifts[kept], half=True)
        assert 2 * half.n_edges == full.n_edges
        want = compute(model, batch, full, stress=stress)
        got = compute(evaluator, batch, half, stress=stress)
        for name in ("energy", "energies", "forces") + (("stress",) if stress else ()):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=0, atol=1e-10)
    if compiled:
        assert evaluator.failed is None


@pytest.mark.parametrize("architecture", ["schnet", "painn"])
def test_networks_refuse_a_half_list_and_are_never_given_one(architecture):
    from ase_mlff.neighbors import takes_half_lists

    model = make_model(architecture)
    batch = atoms_to_batch([ethanol(0)])
    half = dataclasses.replace(neighbor_list(batch, model.cutoff), half=True)
    with pytest.raises(ValueError, match="needs a full neighbor list"):
        compute(model, batch, half)
    assert not takes_half_lists(model) and takes_half_lists(make_model("lennard_jones"))
    calc = MLFFCalculator(model)
    assert not calc._skin_list.half
    assert MLFFCalculator(make_model("lennard_jones"))._skin_list.half

    class Counting(LennardJones):  # a subclass written before half lists: full lists, as it expects
        def forward(self, numbers, edge_index, edge_vectors):
            return super().forward(numbers, edge_index, edge_vectors)

    class Shifted(LennardJones):  # atomic_outputs overridden the same way
        def atomic_outputs(self, species, edge_index, edge_vectors):
            return super().atomic_outputs(species, edge_index, edge_vectors)

    want = results(attach(ethanol(0), LennardJones(["H", "C", "O"], cutoff=4.0)))["energy"]
    for old_style in (Counting(["H", "C", "O"], cutoff=4.0), Shifted(["H", "C", "O"], cutoff=4.0)):
        calc = MLFFCalculator(old_style, dtype="float64")
        assert not takes_half_lists(old_style) and not calc._skin_list.half
        atoms = ethanol(0)
        atoms.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(want, abs=1e-10)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batch_equals_single_structures(architecture):
    species = ("H", "C", "O", "Si", "Mo")
    model = make_model(architecture, species, cutoff=4.0)
    open_and_periodic = [ethanol(0), rattled(molybdenum(0), 1), silicon(2), water(0),
                         Atoms("H", positions=[[0, 0, 0]]), ethanol(1)]
    periodic = [rattled(molybdenum(0), 1), silicon(2), water(0), molybdenum(3)]
    for structures, stress in [(open_and_periodic, False), (periodic, True)]:
        batch = atoms_to_batch(structures)
        together = compute(model, batch, neighbor_list(batch, model.cutoff), stress=stress)
        offset = 0
        for k, atoms in enumerate(structures):
            single = atoms_to_batch(atoms)
            alone = compute(model, single, neighbor_list(single, model.cutoff), stress=stress)
            n = len(atoms)
            # float64: sums over the same edges in a different order
            assert float(together.energy[k].detach()) == pytest.approx(float(alone.energy[0].detach()),
                                                                       abs=1e-9)
            torch.testing.assert_close(together.forces[offset:offset + n], alone.forces, rtol=0, atol=1e-10)
            torch.testing.assert_close(together.energies[offset:offset + n], alone.energies, rtol=0,
                                       atol=1e-10)
            if stress:
                torch.testing.assert_close(together.stress[k], alone.stress[0], rtol=0, atol=1e-12)
            offset += n


# -- smoothness at the cutoff ------------------------------------------------------------
def dimer_scan(model, distances):
    """Energy and force along x of an H dimer at each distance (float64)."""
    atoms = attach(Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]]), model)
    energies, forces = [], []
    for r in distances:
        atoms.positions = [[0, 0, 0], [r, 0, 0]]
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces()[1, 0])
    return np.array(energies), np.array(forces)


def cutoff_behaviour(model):
    """(energy ratio, force ratio) of [value(rc-δ) - value(far)] at δ and 2δ.

    A C¹ cutoff makes the energy approach its far value as δ² and the force as
    δ (ratios 1/4 and 1/2); a cutoff that only makes the energy continuous
    leaves a force jump (force ratio 1); a discontinuous energy gives ratio 1.
    """
    rc, delta = model.cutoff, 1e-4 * model.cutoff
    distances = [rc - 2 * delta, rc - delta, rc + delta, rc + 10.0]
    energy, force = dimer_scan(model, distances)
    far_energy = energy[3]
    assert energy[2] == far_energy and force[2] == 0.0 == force[3]  # beyond rc: nothing at all
    return ((energy[1] - far_energy) / (energy[0] - far_energy), force[1] / force[0],
            abs(energy[1] - far_energy), abs(force[1]))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_energy_and_force_go_smoothly_to_zero_at_the_cutoff(architecture):
    # no reference energies: a total energy of order 1 eV keeps round-off far
    # below the ~1e-10 eV energy changes at δ = 4e-4 Å
    model = make_model(architecture, ("H",), cutoff=4.0, reference=False)
    energy_ratio, force_ratio, _, _ = cutoff_behaviour(model)
    # leading-order ratios 1/4 and 1/2; the next order is O(δ/ℓ), with ℓ ≳ 0.1 Å
    # the scale of the radial features: < 0.004 here
    assert energy_ratio == pytest.approx(0.25, abs=0.01)
    assert force_ratio == pytest.approx(0.5, abs=0.01)


def test_smoothness_check_detects_a_force_jump():
    # control: ASE's unsmoothed LJ shifts the energy to 0 at rc, but its force jumps
    model = LennardJones(["H"], epsilon=0.01, sigma=2.0, cutoff=4.0, smooth=False)
    energy_ratio, force_ratio, energy_gap, force_gap = cutoff_behaviour(model)
    assert energy_ratio == pytest.approx(0.5, abs=0.01)  # energy continuous, but only linearly
    assert force_ratio == pytest.approx(1.0, abs=0.01)  # force does not go to 0
    assert force_gap > 1e-4  # 24ε/rc·(σ/rc)⁶ ≈ 9e-4 eV/Å


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_force_is_the_derivative_of_the_energy_along_a_scan_through_the_cutoff(architecture):
    model = make_model(architecture, ("H",), cutoff=4.0)
    # not exactly at rc, where E'' jumps and central differences err by O(h)
    distances = np.linspace(0.8, 4.6, 39) + 0.013
    energy, force = dimer_scan(model, distances)
    h = 1e-5
    numerical = -(dimer_scan(model, distances + h)[0] - dimer_scan(model, distances - h)[0]) / (2 * h)
    np.testing.assert_allclose(force, numerical, rtol=1e-5, atol=1e-7)  # central-difference error
    assert np.abs(force[distances < 3.5]).max() > 1e-3  # the scan sees a real interaction


# -- float32 against float64 -------------------------------------------------------------
@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("system", ["ethanol", "water"])
def test_float32_agrees_with_float64(architecture, system):
    atoms = ethanol(0) if system == "ethanol" else water(0)
    model = make_model(architecture, SPECIES[system])
    exact = attach(atoms, model, "float64")
    single = attach(atoms, model, "float32")
    e64, f64 = exact.get_potential_energy(), exact.get_forces()
    e32, f32 = single.get_potential_energy(), single.get_forces()
    network = exact.get_potential_energies() - model.element_energy[atoms.numbers].numpy()
    neighbors = neighbor_list(atoms_to_batch(atoms), model.cutoff).n_edges / len(atoms)
    # Energy: float32 rounding (ε32 per operation, compounded through ~10
    # layers) of the network part only, since the reference is added in
    # float64; plus the first-order effect of rounding positions to float32.
    tol_e = EPS32 * (16 * np.abs(network).sum() + np.abs(f64 * atoms.positions).sum())
    # Forces: sums of ~n_neighbors pair terms, each rounded relative to the
    # largest force; the position rounding enters through force constants of
    # order max|F|/0.1 Å.
    tol_f = EPS32 * np.abs(f64).max() * (16 * np.sqrt(neighbors) + np.abs(atoms.positions).max() / 0.1)
    assert abs(e32 - e64) < tol_e, (e32 - e64, tol_e)
    assert np.abs(f32 - f64).max() < tol_f, (np.abs(f32 - f64).max(), tol_f)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_element_reference_stays_float64_in_a_float32_model(architecture):
    # Reference energies of ~1e3 eV would lose ~3e-5 eV per atom to float32.
    # An isolated atom has no edges: its energy is readout + scale/shift + E_ref.
    model = make_model(architecture, ("H", "O"))
    model.set_energy_reference({"H": -13.605693123, "O": -2041.3456789123}, scale=0.5, shift=0.25)
    assert model.float().element_energy.dtype == torch.float64
    atom = Atoms("O", positions=[[0, 0, 0]])
    e64 = attach(atom, model, "float64").get_potential_energy()
    e32 = attach(atom, model, "float32").get_potential_energy()
    network = e64 - (-2041.3456789123)
    assert abs(e32 - e64) < 4 * EPS32 * (abs(network) + 0.25)  # rounding of the network part only


# -- Lennard-Jones against closed forms and ASE -------------------------------------------
def lj_pair(r, epsilon, sigma, rc, ro, smooth):
    """Closed-form LJ pair energy and dE/dr with ASE's cutoff conventions."""
    x6 = (sigma / r) ** 6
    u, du = 4 * epsilon * (x6**2 - x6), 4 * epsilon * (-12 * x6**2 + 6 * x6) / r
    if not smooth:
        xc = (sigma / rc) ** 6
        return u - 4 * epsilon * (xc**2 - xc), du
    if r < ro:
        return u, du
    s = (rc**2 - r**2) / (rc**2 - ro**2)
    f, df = s * s * (3 - 2 * s), (6 * s - 6 * s * s) * (-2 * r / (rc**2 - ro**2))
    return u * f, du * f + u * df


@pytest.mark.parametrize("smooth", [True, False])
def test_lj_dimer_against_the_closed_form(smooth):
    epsilon, sigma, rc, ro = 0.0104, 3.4, 8.5, 6.0
    model = LennardJones(["Ar"], epsilon, sigma, cutoff=rc, onset=ro, smooth=smooth)
    atoms = attach(Atoms("Ar2", positions=[[0, 0, 0], [1, 0, 0]]), model)
    for r in [3.0, 2 ** (1 / 6) * 3.4, 4.5, 6.5, 7.9, 8.4]:
        atoms.positions = [[0.0, 0.0, 0.0], [r, 0.0, 0.0]]
        u, du = lj_pair(r, epsilon, sigma, rc, ro, smooth)
        assert atoms.get_potential_energy() == pytest.approx(u, rel=1e-12, abs=1e-15)
        np.testing.assert_allclose(atoms.get_forces(), [[du, 0, 0], [-du, 0, 0]], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(atoms.get_potential_energies(), [u / 2, u / 2], rtol=1e-12, atol=1e-15)
    atoms.positions = [[0, 0, 0], [2 ** (1 / 6) * sigma, 0, 0]]
    if smooth:  # the minimum lies below the onset: exactly -ε and no force
        assert atoms.get_potential_energy() == pytest.approx(-epsilon, rel=1e-12)
        assert np.abs(atoms.get_forces()).max() < 1e-14


def lj_systems():
    rng = np.random.default_rng(11)
    cluster = Atoms("Ar13", positions=rng.uniform(0, 7.0, (13, 3)))
    cluster.positions += 0.0  # open, random and tight: repulsive and attractive pairs
    crystal = bulk("Ar", "fcc", a=5.26, cubic=True)
    crystal.rattle(0.1, seed=3)
    triclinic = crystal.copy()
    triclinic.set_cell(crystal.cell.array + [[0, 0, 0], [1.2, 0, 0], [0.5, -0.7, 0]], scale_atoms=True)
    small = bulk("Ar", "fcc", a=5.26)  # 1 atom, primitive cell of 3.7 Å < cutoff
    return {"cluster": cluster, "crystal": crystal, "triclinic": triclinic, "primitive": small}


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("name", ["cluster", "crystal", "triclinic", "primitive"])
def test_lj_matches_ase_lennard_jones(smooth, name):
    atoms = lj_systems()[name]
    parameters = dict(epsilon=0.0104, sigma=3.4, rc=8.0, ro=6.0, smooth=smooth)
    reference = atoms.copy()
    reference.calc = AseLennardJones(**parameters)
    ours = attach(atoms, LennardJones(["Ar"], 0.0104, 3.4, cutoff=8.0, onset=6.0, smooth=smooth))
    # float64 throughout on both sides: agreement to rounding of the pair sums
    assert ours.get_potential_energy() == pytest.approx(reference.get_potential_energy(), rel=1e-12,
                                                        abs=1e-13)
    np.testing.assert_allclose(ours.get_forces(), reference.get_forces(), rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(ours.get_potential_energies(), reference.get_potential_energies(),
                               rtol=1e-9, atol=1e-13)
    if atoms.pbc.all():
        np.testing.assert_allclose(ours.get_stress(), reference.get_stress(), rtol=1e-9, atol=1e-15)


def test_lj_defaults_follow_ase():
    model, ase_calc = LennardJones(["Ar"], sigma=2.0), AseLennardJones(sigma=2.0)
    assert model.cutoff == ase_calc.parameters.rc == 6.0
    assert model.onset == pytest.approx(0.66 * 6.0)
    with pytest.raises(ValueError, match="onset must lie in"):
        LennardJones(["Ar"], cutoff=3.0, onset=3.0)


# -- the Potential interface --------------------------------------------------------------
def test_uncovered_element_error_names_element_and_species():
    model = make_model("schnet", ("H", "C", "O"))
    with pytest.raises(ValueError, match=r"element\(s\) N, S not covered by this schnet model, "
                                         r"which was trained on H, C, O"):
        model.check_numbers([1, 7, 6, 16])
    model.check_numbers([1, 6, 6, 8])


@pytest.mark.parametrize("species, message", [
    ("HCO", r"list of element symbols, got the string 'HCO'; write e.g. species=\['C', 'H', 'O'\]"),
    (["H", "Xx"], "unknown element symbol 'Xx'"),
    ([0], "atomic number 0 out of range"),
    ([], "at least one element"),
])
def test_species_errors(species, message):
    with pytest.raises(ValueError, match=message):
        species_to_numbers(species)


def test_species_are_sorted_unique_numbers():
    assert species_to_numbers(["O", "H", 1, "C", 8]) == [1, 6, 8]
    assert SchNet(["O", "H"], n_features=8).species == ["H", "O"]


def test_invalid_cutoff_and_architecture():
    with pytest.raises(ValueError, match="cutoff must be positive"):
        PaiNN(["H"], cutoff=0.0)
    with pytest.raises(ValueError, match=r"unknown architecture 'nequip'; valid architectures: "
                                         r"\['lennard_jones', 'painn', 'schnet'\]"):
        get_architecture("nequip")
    assert get_architecture("SchNet") is SchNet


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_hyperparameters_rebuild_the_same_model(architecture):
    model = make_model(architecture, ("H", "C", "O"))
    clone = type(model)(**model.hyperparameters()).double()
    clone.load_state_dict(model.state_dict())
    atoms = ethanol(0)
    assert attach(atoms, clone).get_potential_energy() == attach(atoms, model).get_potential_energy()
    assert clone.energy_reference() == model.energy_reference()


def test_energy_reference_scale_and_shift_enter_as_documented():
    # E_i = scale·y_i + shift + E_ref[Z_i]: compare two settings of one model
    model = make_model("painn", ("H", "C", "O"), reference=False)
    atoms = ethanol(0)
    plain = attach(atoms, model).get_potential_energies()
    other = copy.deepcopy(model)
    other.set_energy_reference({"H": -1.5, "C": -20.0, "O": -70.25}, scale=3.0, shift=0.125)
    table = {1: -1.5, 6: -20.0, 8: -70.25}
    expected = 3.0 * plain + 0.125 + np.array([table[z] for z in atoms.numbers])
    np.testing.assert_allclose(attach(atoms, other).get_potential_energies(), expected, rtol=1e-13,
                               atol=1e-12)


# -- one filter per pair ------------------------------------------------------------------
@pytest.mark.parametrize("system", ["ethanol", "mo-2-atom-cell", "si-triclinic"])
def test_half_edges_keeps_exactly_one_edge_of_every_pair(system):
    from ase_mlff.models.layers import half_edges
    from ase_mlff.neighbors import edge_vectors

    batch = atoms_to_batch([FD_SYSTEMS[system]()])
    neighbors = neighbor_list(batch, 5.0)
    vectors = edge_vectors(batch.positions, batch.cell, batch.system, neighbors)
    keep = half_edges(neighbors.edge_index, vectors)
    i, j = neighbors.edge_index
    edges = {(a, b, tuple(np.round(v, 9))) for a, b, v in zip(i.tolist(), j.tolist(), vectors.numpy())}
    kept = {(a, b, tuple(np.round(v, 9))) for a, b, v, k in zip(i.tolist(), j.tolist(), vectors.numpy(), keep)
            if k}
    reverse = {(b, a, tuple(np.round(-np.asarray(v), 9) + 0.0)) for a, b, v in kept}
    assert 2 * len(kept) == len(edges) == len(i)
    assert not kept & reverse and kept | reverse == edges


@pytest.mark.parametrize("min_edges", [0, 10**9], ids=["pairwise", "directed"])
def test_schnet_sends_each_pair_filter_both_ways_as_a_directed_sum_would(monkeypatch, min_edges):
    """Both paths of SchNet (one filter per pair, sent both ways; one per directed edge) equal
    the textbook one filter per directed edge."""
    from ase_mlff.models import schnet

    monkeypatch.setattr(schnet, "PAIRWISE_MIN_EDGES", min_edges)
    model = make_model("schnet", SPECIES["water"]).double()
    atoms = water(0)
    batch = atoms_to_batch([atoms])
    neighbors = neighbor_list(batch, model.cutoff)
    from ase_mlff.neighbors import edge_vectors

    vectors = edge_vectors(batch.positions, batch.cell, batch.system, neighbors)
    species = model.species_index[batch.numbers]
    i, j = neighbors.edge_index
    d = torch.linalg.vector_norm(vectors, dim=1)
    from ase_mlff.models.layers import cosine_cutoff

    rbf, envelope = model.rbf(d), cosine_cutoff(d, model.cutoff).unsqueeze(1)
    x = model.embedding(species)
    width = model.filter_in.weight.shape[0] // model.n_interactions
    for t, (block, out_t) in enumerate(zip(model.blocks, model.filter_out)):
        rows = slice(t * width, (t + 1) * width)
        hidden = torch.nn.functional.linear(rbf, model.filter_in.weight[rows], model.filter_in.bias[rows])
        filters = out_t(model.filter_activation(hidden)) * envelope
        messages = block.to_messages(x)[j] * filters
        x = x + block.update(torch.zeros_like(x[:, : messages.shape[1]]).index_add_(0, i, messages))
    expected = model.readout(x).squeeze(1)
    got = model.atomic_outputs(species, neighbors.edge_index, vectors)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_painn_sends_each_pair_filter_both_ways_as_directed_edges_would(monkeypatch):
    """PaiNN's two paths (one filter per pair, sent both ways along ±r̂; one per directed edge)
    give the same energies, forces and stress: the filter depends on |r| only, and the reverse
    edge's direction is −r̂."""
    from ase_mlff.models import painn

    torch.manual_seed(3)
    model = make_model("painn", SPECIES["water"]).double()
    for p in model.parameters():  # non-zero vector features from the first block on
        p.data.add_(0.05 * torch.randn_like(p))
    batch = atoms_to_batch([water(0), water(1)])
    neighbors = neighbor_list(batch, model.cutoff)
    outputs = {}
    for name, min_edges in [("pairwise", 0), ("directed", 10**9)]:
        monkeypatch.setattr(painn, "PAIRWISE_MIN_EDGES", min_edges)
        outputs[name] = compute(model, batch, neighbors, forces=True, stress=True, dtype=torch.float64)
    a, b = outputs["pairwise"], outputs["directed"]
    assert float(a.forces.abs().max()) > 1e-3  # something to compare
    torch.testing.assert_close(a.energies, b.energies, rtol=0, atol=1e-11)
    torch.testing.assert_close(a.forces, b.forces, rtol=0, atol=1e-11)
    torch.testing.assert_close(a.stress, b.stress, rtol=0, atol=1e-12)
