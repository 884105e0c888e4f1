"""The ZBL short-range prior (ase_mlff.models.repulsion): the physics of the pair term, that it is zero
where the training data were, its derivatives, and that it survives model files, compiled graphs and training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from click.testing import CliRunner
from conftest import make_model, water

from ase_mlff import MLFFCalculator, load_model, save_model
from ase_mlff.cli import main
from ase_mlff.io import read_model_record
from ase_mlff.models import LennardJones
from ase_mlff.models.repulsion import radii_from_data, shortest_distances, zbl_energy

COULOMB = 14.399645  # e²/4πε₀, eV·Å (CODATA; independent of ase.units, which differ in the 6th digit)
A0 = 0.529177  # Bohr radius, Å


def reference_pair(r: float, za: int, zb: int, inner: float, outer: float) -> float:
    """The switched ZBL pair energy written out from the paper's constants (Ziegler, Biersack, Littmark 1985)."""
    if r >= outer:
        return 0.0
    a = 0.88534 * A0 / (za**0.23 + zb**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    t = min(max((r - inner) / (outer - inner), 0.0), 1.0)
    return COULOMB * za * zb / r * phi * (1.0 - t**3 * (10 - 15 * t + 6 * t * t))


def energy_forces(model, atoms, stress=False):
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
    out = [atoms.get_potential_energy(), atoms.get_forces(), atoms.get_potential_energies()]
    if stress:
        out.append(atoms.get_stress(voigt=False))
    return out


RADII = {("H", "H"): (0.9, 1.3), ("H", "O"): (0.6, 0.85), ("O", "O"): (1.7, 2.3)}


def squeezed_water() -> Atoms:
    """Two water molecules with an H–H contact of 0.7 Å and an O–H one of 0.75 Å: inside the prior."""
    a = molecule("H2O")
    b = molecule("H2O")
    b.positions += a.positions[1] - b.positions[2] + np.array([0.7, 0.0, 0.0])
    return a + b


def test_zbl_is_the_bare_coulomb_repulsion_at_short_range_and_screened_further_out():
    r = torch.tensor([1e-4, 0.5, 1.0], dtype=torch.float64)
    for za, zb in ((1, 1), (1, 8), (8, 8), (14, 42)):
        e = zbl_energy(r, za, zb)
        assert float(e[0] * r[0] / (COULOMB * za * zb)) == pytest.approx(1.0, abs=2e-3)  # φ(0) = 1
        for k in (1, 2):
            assert float(e[k]) == pytest.approx(reference_pair(float(r[k]), za, zb, 10.0, 11.0), rel=1e-5)
    # a hand value: two protons 0.5 Å apart, φ(x = 2.138) = 0.2054
    assert float(zbl_energy(torch.tensor(0.5, dtype=torch.float64), 1, 1)) == pytest.approx(5.913, abs=2e-3)


def test_the_prior_adds_exactly_the_switched_pair_sum():
    base = make_model("schnet", ("H", "O"), cutoff=4.0)
    atoms = squeezed_water()
    e0, f0, ei0 = energy_forces(base, atoms)
    base.set_repulsion(RADII)
    e1, f1, ei1 = energy_forces(base, atoms)
    expected = 0.0
    per_atom = np.zeros(len(atoms))
    for i in range(len(atoms)):
        for j in range(i + 1, len(atoms)):
            key = tuple(sorted((atoms[i].symbol, atoms[j].symbol), key=lambda s: {"H": 1, "O": 8}[s]))
            u = reference_pair(atoms.get_distance(i, j), atoms.numbers[i], atoms.numbers[j], *RADII[key])
            expected += u
            per_atom[[i, j]] += 0.5 * u
    assert expected > 1.0  # the contacts are inside the prior
    assert e1 - e0 == pytest.approx(expected, rel=1e-5)
    np.testing.assert_allclose(ei1 - ei0, per_atom, rtol=1e-5, atol=1e-12)
    assert np.abs(f1 - f0).max() > 1.0


def test_forces_and_stress_are_the_derivatives_of_the_energy():
    model = make_model("painn", ("H", "O"), cutoff=3.0)
    model.set_repulsion(RADII)
    atoms = squeezed_water()
    atoms.center(vacuum=1.2)
    atoms.pbc = True  # a cell small enough that periodic images also come close
    atoms.rattle(0.02, seed=3)
    e, f, _, sigma = energy_forces(model, atoms, stress=True)
    h = 1e-5
    for i, c in ((1, 0), (4, 1), (5, 2), (0, 0)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[i, c] += h
        minus.positions[i, c] -= h
        fd = -(energy_forces(model, plus)[0] - energy_forces(model, minus)[0]) / (2 * h)
        assert f[i, c] == pytest.approx(fd, abs=1e-5 * max(1.0, abs(fd)))
    volume = atoms.get_volume()
    for a, b in ((0, 0), (1, 2)):
        strained = []
        for sign in (1, -1):
            eps = np.zeros((3, 3))
            eps[a, b] = eps[b, a] = sign * h
            s = atoms.copy()
            s.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
            strained.append(energy_forces(model, s)[0])
        fd = (strained[0] - strained[1]) / (2 * h) / volume / (1 if a == b else 2)
        assert sigma[a, b] == pytest.approx(fd, abs=1e-6)


def test_the_switch_is_smooth_through_both_radii():
    model = LennardJones(["H"], epsilon=0.0, sigma=1.0, cutoff=3.0)  # nothing but the prior
    model.set_repulsion({("H", "H"): (0.8, 1.2)})

    def energy(r):
        return energy_forces(model, Atoms("H2", positions=[[0, 0, 0], [r, 0, 0]]))[:2]

    for radius in (0.8, 1.2):
        h = 1e-7
        (e_in, f_in), (e_out, f_out) = energy(radius - h), energy(radius + h)
        # no step in the energy (what changes over 2h is the force's work) nor in the force
        assert e_in - e_out == pytest.approx(2 * h * f_in[1, 0], abs=1e-10)
        assert f_in[1, 0] == pytest.approx(f_out[1, 0], abs=1e-5)
    assert energy(1.2)[0] == 0.0 and energy(2.0)[0] == 0.0 and not energy(1.5)[1].any()
    assert energy(0.5)[0] == pytest.approx(reference_pair(0.5, 1, 1, 0.8, 1.2), rel=1e-5)


def test_half_and_full_lists_give_the_same_pair_potential_with_the_prior():
    model = LennardJones(["Ar"], epsilon=0.01, sigma=3.4, cutoff=8.0)
    model.set_repulsion({("Ar", "Ar"): (2.0, 3.0)})
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [2.4, 0, 0], [0, 2.8, 0.3]], cell=[6, 6, 6], pbc=True)
    full = MLFFCalculator(model, dtype="float64", skin=0.0)
    calc = MLFFCalculator(model, dtype="float64")  # skin lists: half lists for LJ
    for c in (full, calc):
        atoms.calc = c
        c.results = {}
    atoms.calc = full
    e_full, f_full = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = calc
    assert atoms.get_potential_energy() == pytest.approx(e_full, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f_full, atol=1e-10)


def test_radii_from_data_leave_every_training_frame_unchanged():
    frames = [water(k) for k in range(2)]
    seen = shortest_distances(frames, 4.0)
    radii = radii_from_data(frames, ["H", "O"], 4.0)
    assert set(radii) == {("H", "H"), ("H", "O"), ("O", "O")}
    for key, (inner, outer) in radii.items():
        assert outer <= seen[key] < outer + 0.01 and inner == pytest.approx(0.75 * outer)
    # the O-H bond is the shortest contact of water, O-O the longest
    assert radii[("H", "O")][1] < radii[("H", "H")][1] < radii[("O", "O")][1]
    model = make_model("schnet", ("H", "O"), cutoff=4.0)
    before = [energy_forces(model, a) for a in frames]
    model.set_repulsion(radii)
    for a, (e, f, _) in zip(frames, before):
        e1, f1, _ = energy_forces(model, a)
        assert e1 == e and np.array_equal(f1, f)  # exactly: the prior is 0 with 0 gradient there


def test_model_files_keep_the_prior_and_say_so(tmp_path):
    model = make_model("schnet", ("H", "O"), cutoff=4.0)
    plain = read_model_record(save_model(model, tmp_path / "plain.pt"))
    assert plain["format_version"] == 1 and "repulsion" not in plain  # readable by releases before it
    model.set_repulsion(RADII)
    path = save_model(model, tmp_path / "zbl.pt")
    record = read_model_record(path)
    assert record["format_version"] == 2
    assert record["repulsion"] == {"kind": "zbl", "pairs": [["H", "H", 0.9, 1.3], ["H", "O", 0.6, 0.85],
                                                            ["O", "O", 1.7, 2.3]]}
    assert not any("repulsion" in k for k in record["state_dict"])
    loaded = load_model(path)
    atoms = squeezed_water()
    for a, b in zip(energy_forces(model, atoms), energy_forces(loaded, atoms)):
        np.testing.assert_array_equal(a, b)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "repulsion         ZBL" in result.output and "H-O 0.60-0.85" in result.output
    # a damaged entry is refused with the field named
    record["repulsion"] = {"kind": "zbl", "pairs": [["H", "O", 0.9, 0.5]]}
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"field 'repulsion'.*0 <= inner < outer"):
        load_model(tmp_path / "bad.pt")
    record["repulsion"] = {"kind": "morse", "pairs": []}
    torch.save(record, tmp_path / "bad2.pt")
    with pytest.raises(ValueError, match=r"field 'repulsion'"):
        load_model(tmp_path / "bad2.pt")


def test_bad_radii_are_refused_with_the_pair_named():
    model = make_model("schnet", ("H", "O"), cutoff=4.0)
    with pytest.raises(ValueError, match="model covers only H, O"):
        model.set_repulsion({("H", "C"): (0.5, 1.0)})
    with pytest.raises(ValueError, match="H-O must satisfy 0 <= inner < outer"):
        model.set_repulsion({("O", "H"): (1.0, 1.0)})


def test_the_compiled_evaluation_includes_the_prior(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)  # its graph, run eagerly
    model = make_model("schnet", ("H", "O"), cutoff=4.0)
    model.set_repulsion(RADII)
    atoms = squeezed_water()
    e, f, _ = energy_forces(model, atoms)
    atoms.calc = MLFFCalculator(model, dtype="float64", compile=True)
    assert atoms.get_potential_energy() == pytest.approx(e, rel=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), f, atol=1e-8)


@pytest.fixture
def water_file(tmp_path):
    """Six rattled copies of the two water fixture frames, labelled by a small seeded SchNet."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    labeller = make_model("schnet", ("H", "O"), cutoff=3.0)
    frames = []
    for k in range(6):
        a = water(k % 2)
        a.rattle(0.01, seed=k)
        e, f, _ = energy_forces(labeller, a)
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    path = tmp_path / "water6.extxyz"
    write(path, frames)
    return path


def test_train_with_the_zbl_prior_writes_it_and_resumes(tmp_path, water_file):
    out = tmp_path / "w.pt"
    args = ["train", str(water_file), "-o", str(out), "--arch", "schnet", "--cutoff", "3", "--features", "8",
            "--interactions", "1", "--rbf", "6", "--n-val", "2", "--n-test", "1", "--batch-size", "2",
            "--threads", "1", "--repulsion", "zbl", "-q"]
    result = CliRunner().invoke(main, args + ["--epochs", "1"])
    assert result.exit_code == 0, result.output
    record = read_model_record(out)
    pairs = {(a, b): (r_in, r_out) for a, b, r_in, r_out in record["repulsion"]["pairs"]}
    assert set(pairs) == {("H", "H"), ("H", "O"), ("O", "O")}
    assert record["metadata"]["training"]["config"]["repulsion"] == "zbl"
    result = CliRunner().invoke(main, args + ["--epochs", "2", "--resume"])
    assert result.exit_code == 0, result.output
    assert read_model_record(out)["repulsion"]["pairs"] == record["repulsion"]["pairs"]
    result = CliRunner().invoke(main, [a for a in args if a not in ("--repulsion", "zbl")] + ["--epochs", "3",
                                                                                                "--resume"])
    assert result.exit_code != 0 and "repulsion='zbl'" in result.output
