"""Training compositions: recorded by training, warned about by the calculator and
``mlff-md run``, respected by bundled-potential selection, shown by ``mlff-md info``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.io import read, write
from ase.md.verlet import VelocityVerlet
from test_md_fixtures import invoke, one_line_error

from ase_mlff import MLFFCalculator, save_model
from ase_mlff.compositions import (
    OutOfTrainingWarning,
    composition,
    composition_of_numbers,
    training_compositions,
    training_data_record,
)
from ase_mlff.io import read_model_record
from ase_mlff.md.driver import run_md
from ase_mlff.md.selection import choose_potential
from ase_mlff.models import LennardJones
from ase_mlff.training.data import Dataset, read_dataset
from ase_mlff.training.splits import Split
from ase_mlff.training.trainer import TrainConfig, Trainer

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"
WATER = DATA / "water_deepmd_2frames.extxyz.gz"
WATER_BOX = ROOT / "examples" / "water.xyz"  # 64 H2O, periodic
MESSAGE = "was trained on C2H6O; this structure is CH2O: predictions outside the training data may be far off"


def ethanol_record(n_frames: int = 10) -> dict:
    return {"training_data": {"compositions": ["C2H6O"], "elements": ["C", "H", "O"], "n_frames": n_frames}}


def lj_model(path: Path, metadata: dict | None = None, species=("H", "C", "O")) -> Path:
    """A cheap H/C/O model file (Lennard-Jones: no network to evaluate) with the given metadata."""
    save_model(LennardJones(list(species), epsilon=0.001, sigma=1.0, cutoff=3.0), path, metadata=metadata)
    return path


def acetic_acid() -> Atoms:
    return molecule("CH3COOH")  # C2H4O2, composition CH2O: same elements as ethanol, another molecule


# -- composition -------------------------------------------------------------------------------
def test_composition_is_the_reduced_hill_formula():
    assert composition(molecule("CH3CH2OH")) == "C2H6O"
    assert composition(acetic_acid()) == "CH2O"  # C2H4O2 reduced
    assert composition(molecule("H2O")) == "H2O"
    box = read(WATER_BOX)
    assert len(box) == 192 and box.pbc.all() and composition(box) == "H2O"  # 64 H2O
    assert composition(bulk("NaCl", "rocksalt", a=5.64, cubic=True)) == "ClNa"  # Na4Cl4; Hill: alphabetical
    # the fast count equals ASE's own reduced Hill formula on arbitrary mixtures
    rng = np.random.default_rng(0)
    for _ in range(200):
        numbers = rng.choice([1, 6, 7, 8, 17, 26, 79], size=rng.integers(1, 30))
        numbers = np.concatenate([numbers] * int(rng.integers(1, 4)))  # multiples must reduce
        expected = Atoms(numbers=numbers).get_chemical_formula(mode="hill", empirical=True)
        assert composition_of_numbers(numbers) == expected, numbers


def test_training_compositions_reads_only_well_formed_records():
    assert training_compositions(ethanol_record()) == ["C2H6O"]
    for metadata in (None, {}, {"training_data": "C2H6O"}, {"training_data": {"compositions": []}},
                     {"training_data": {"compositions": "C2H6O"}}, {"training_data": {"compositions": [1]}}):
        assert training_compositions(metadata) is None, metadata
    frames = [molecule("CH3CH2OH"), molecule("H2O"), read(WATER_BOX)]
    assert training_data_record(frames) == {"compositions": ["C2H6O", "H2O"], "elements": ["C", "H", "O"],
                                            "n_frames": 3}


# -- training records its training split ---------------------------------------------------------
def test_trainer_records_the_compositions_of_the_training_split_only(tmp_path):
    ethanol, water = read_dataset(ETHANOL), read_dataset(WATER)
    data = Dataset(atoms=ethanol.atoms[:8] + water.atoms, energy=np.concatenate([ethanol.energy[:8], water.energy]),
                   forces=ethanol.forces[:8] + water.forces)
    # water frames only in validation and test: the model was not trained on H2O
    split = Split(train=list(range(6)), val=[6, 7, 8], test=[9])
    config = TrainConfig(architecture="schnet", cutoff=4.0, device="cpu", max_epochs=1, n_features=8,
                         n_interactions=1, n_rbf=6, batch_size=5, ema_decay=0.5)
    Trainer(data, split, config, tmp_path / "m.pt", echo=None).fit()
    metadata = read_model_record(tmp_path / "m.pt")["metadata"]
    assert metadata["training_data"] == {"compositions": ["C2H6O"], "elements": ["C", "H", "O"], "n_frames": 6}


def test_bundled_potentials_record_their_training_data():
    # independent of the record: the split files beside the models give the training frame count
    for name, expected in (("ethanol-painn", "C2H6O"), ("ethanol-schnet", "C2H6O"), ("water-painn", "H2O"),
                           ("water-schnet", "H2O")):
        record = read_model_record(ROOT / "potentials" / f"{name}.pt")
        n_train = len(json.loads((ROOT / "potentials" / f"{name}.split.json").read_text())["train"])
        assert record["metadata"]["training_data"] == {
            "compositions": [expected], "elements": sorted(record["species"]), "n_frames": n_train}


# -- the calculator warns once per composition ----------------------------------------------------
def test_calculator_warns_once_per_composition(tmp_path):
    calc = MLFFCalculator(lj_model(tmp_path / "eth.pt", ethanol_record()), dtype="float64")
    ethanol = molecule("CH3CH2OH")
    ethanol.calc = calc
    ethanol.get_forces()  # trained composition: no warning (warnings are errors in this suite)
    acid = acetic_acid()
    acid.calc = calc
    with pytest.warns(OutOfTrainingWarning, match=f"^eth {MESSAGE}") as caught:
        acid.get_forces()
    assert len(caught) == 1
    acid.positions[0] += 0.05
    acid.get_forces()  # same composition: silent
    other = acetic_acid()
    other.rattle(0.01, seed=1)
    other.calc = calc
    other.get_potential_energy()  # another Atoms of a composition already warned about: silent
    with pytest.warns(OutOfTrainingWarning, match="this structure is H2O") as caught:
        calc.calculate_batch([ethanol, acetic_acid(), molecule("H2O")])
    assert len(caught) == 1  # only the new composition
    calc.calculate_batch([molecule("H2O"), acetic_acid()])  # nothing new: silent


def test_models_without_the_record_never_warn(tmp_path):
    calc = MLFFCalculator(lj_model(tmp_path / "old.pt"))
    calc.get_forces(acetic_acid())
    calc.calculate_batch([acetic_acid(), molecule("H2O")])


def test_composition_is_not_recomputed_during_md(tmp_path, monkeypatch):
    import ase_mlff.calculator

    calls = []
    real = ase_mlff.calculator.composition
    monkeypatch.setattr(ase_mlff.calculator, "composition", lambda atoms: calls.append(1) or real(atoms))
    atoms = molecule("CH3CH2OH")
    atoms.calc = MLFFCalculator(lj_model(tmp_path / "eth.pt", ethanol_record()), dtype="float64")
    VelocityVerlet(atoms, timestep=0.1).run(5)
    assert len(calls) == 1  # numbers never changed: one look at the composition, not one per step


def test_run_md_warns_once_per_composition(tmp_path):
    calc = MLFFCalculator(lj_model(tmp_path / "eth.pt", ethanol_record()), dtype="float64")
    with pytest.warns(OutOfTrainingWarning, match=MESSAGE) as caught:
        run_md([acetic_acid(), molecule("CH3CH2OH"), acetic_acid()], calc, steps=2, seed=1,
               output=tmp_path / "md", traj_interval=0)
    assert len([w for w in caught if w.category is OutOfTrainingWarning]) == 1


# -- mlff-md run: selection and the warning line --------------------------------------------------
def test_run_refuses_to_guess_a_bundled_potential_outside_its_training_data(tmp_path):
    structure = tmp_path / "acetic.xyz"
    write(structure, acetic_acid())
    # before training compositions were recorded this silently picked ethanol-painn (same elements)
    line = one_line_error(invoke("run", structure, "--steps", 4, "-o", tmp_path / "x"))
    assert "no bundled potential was trained on the composition CH2O" in line
    for listed in ("ethanol-painn (H, C, O; trained on C2H6O)", "ethanol-schnet (H, C, O; trained on C2H6O)",
                   "water-painn (H, O; trained on H2O)", "water-schnet (H, O; trained on H2O)",
                   "give one with -m NAME to run it anyway"):
        assert listed in line, line
    assert not (tmp_path / "x.h5").exists()


def test_run_with_m_warns_once_per_composition_and_proceeds(tmp_path):
    acid, ethanol = tmp_path / "acetic.xyz", tmp_path / "ethanol.xyz"
    write(acid, acetic_acid())
    write(ethanol, molecule("CH3CH2OH"))
    result = invoke("run", acid, ethanol, acid, "-m", "ethanol-painn", "--steps", 4, "-q", "--seed", 1,
                    "-o", tmp_path / "run", "--max-drift", "1e9")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("Warning:")]
    assert warned == [f"Warning: {acid}: ethanol-painn {MESSAGE} (force errors of tens of times the test error)"]
    assert (tmp_path / "run.h5").exists()


@pytest.mark.parametrize("make, expected", [(lambda: molecule("CH3CH2OH"), "ethanol-painn"),
                                            (lambda: read(WATER_BOX), "water-painn")])
def test_run_picks_the_potential_trained_on_the_composition(tmp_path, make, expected):
    structure = tmp_path / "s.xyz"
    write(structure, make())
    result = invoke("run", structure, "--steps", 2, "-q", "--seed", 1, "-o", tmp_path / "s", "--max-drift", "1e9")
    assert result.exit_code == 0, result.output
    assert f"using bundled potential {expected} " in result.output
    assert "Warning:" not in result.output


def test_selection_of_many_structures_needs_one_potential_trained_on_all(tmp_path, monkeypatch):
    folder = tmp_path / "potentials"
    lj_model(folder / "eth.pt", ethanol_record())
    lj_model(folder / "wat.pt", {"training_data": {"compositions": ["H2O"], "elements": ["H", "O"]}}, ("H", "O"))
    monkeypatch.setenv("MLFF_POTENTIALS", str(folder))
    ethanol, water = molecule("CH3CH2OH").numbers, molecule("H2O").numbers
    assert choose_potential(ethanol)[0] == "eth"
    assert choose_potential(water)[0] == "wat"  # eth covers H and O too, but was not trained on water
    both = np.concatenate([ethanol, water])
    with pytest.raises(ValueError, match=r"trained on all of the structures' compositions C2H6O, H2O "
                                         r"\(run them separately\).*-m NAME"):
        choose_potential(both, ["C2H6O", "H2O"])
    with pytest.raises(ValueError, match=r"composition\(s\) CH2O among the structures; bundled: "
                                         r"eth \(H, C, O; trained on C2H6O\); wat \(H, O; trained on H2O\)"):
        choose_potential(np.concatenate([ethanol, acetic_acid().numbers]), ["C2H6O", "CH2O"])
    lj_model(folder / "organic.pt", None, ("H", "C", "N", "O"))  # no record: chosen by its elements
    assert choose_potential(both, ["C2H6O", "H2O"])[0] == "organic"


# -- mlff-md info ------------------------------------------------------------------------------
def test_info_says_what_the_model_was_trained_on(tmp_path):
    shown = invoke("info", "ethanol-painn").output.splitlines()
    assert "trained on        C2H6O (1000 frames; elements C, H, O)" in shown
    old = invoke("info", lj_model(tmp_path / "old.pt")).output.splitlines()
    assert "trained on        not recorded (imported or older model): no out-of-training warnings" in old
    odd = invoke("info", lj_model(tmp_path / "odd.pt", {"training_data": {"compositions": "C2H6O"}}))
    assert odd.exit_code == 0 and "not recorded" in odd.output
