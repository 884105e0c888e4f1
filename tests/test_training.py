"""Training: data readers, splits, reference energies, the trainer, resume, errors.

Everything is tiny and seeded: models with a handful of features, a few dozen
frames, a few epochs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from click.testing import CliRunner

from ase_mlff.batch import atoms_to_batch
from ase_mlff.cli import main
from ase_mlff.forces import compute
from ase_mlff.io import load_model, read_model_record
from ase_mlff.models import LennardJones
from ase_mlff.neighbors import NeighborList
from ase_mlff.training.data import Dataset, check_dataset, from_atoms, read_dataset
from ase_mlff.training.frames import FrameCache
from ase_mlff.training.reference import fit_energy_reference
from ase_mlff.training.splits import Split, load_split, random_split, save_split, tagged_split
from ase_mlff.training.trainer import TrainConfig, Trainer
from ase_mlff.units import ENERGY_UNITS

DATA = Path(__file__).parent / "data"
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"
WATER = DATA / "water_deepmd_2frames.extxyz.gz"
KCAL = ENERGY_UNITS["kcal/mol"]

TINY = dict(n_features=8, n_interactions=1, n_rbf=6, batch_size=5, ema_decay=0.5)


def lj_dataset(n_frames: int = 24, seed: int = 0) -> Dataset:
    """Argon trimers and tetramers labelled by the analytic Lennard-Jones oracle."""
    rng = np.random.default_rng(seed)
    oracle = LennardJones(["Ar"], epsilon=0.0104, sigma=3.4, cutoff=6.0).double()
    frames = []
    for k in range(n_frames):
        n = 3 + k % 2
        while True:
            positions = rng.uniform(0.0, 4.5, size=(n, 3))
            d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(n, 1)]
            if d.min() > 3.3:  # stay out of the steep repulsive wall
                break
        atoms = Atoms("Ar" * n, positions=positions)
        batch = atoms_to_batch(atoms, torch.float64)
        out = compute(oracle, batch, NeighborList(oracle.cutoff)(batch))
        atoms.calc = SinglePointCalculator(atoms, energy=float(out.energy[0].detach()),
                                           forces=out.forces.detach().numpy())
        frames.append(atoms)
    return from_atoms(frames, source="lj")


def as_file(data: Dataset) -> Dataset:
    """The frames of ``data`` as if they were a whole file (frame k is frame k of the file)."""
    return Dataset(data.atoms, data.energy, data.forces, data.info, data.source)


def config(**changes) -> TrainConfig:
    values = dict(architecture="schnet", cutoff=6.0, device="cpu", max_epochs=3, **TINY)
    values.update(changes)
    return TrainConfig(**values)


# -- readers -------------------------------------------------------------------------

def test_extxyz_reader_keeps_labels_and_tags():
    data = read_dataset(ETHANOL)
    frames = read(ETHANOL, index=":")
    assert len(data) == 50 and data.species == ["H", "C", "O"]
    assert data.energy[3] == frames[3].get_potential_energy()
    np.testing.assert_array_equal(data.forces[7], frames[7].get_forces())
    assert "train01" in data.info[0]["rmd17_splits"]


@pytest.mark.parametrize("suffix", [".traj", ".db"])
def test_ase_trajectory_and_database(tmp_path, suffix):
    frames = read(ETHANOL, index=":3")
    path = tmp_path / f"frames{suffix}"
    write(path, frames)
    data = read_dataset(path)
    np.testing.assert_array_equal(data.energy, [a.get_potential_energy() for a in frames])
    np.testing.assert_array_equal(data.forces[2], frames[2].get_forces())


@pytest.mark.parametrize("layout", [("R", "E", "F", "z"), ("coords", "energies", "forces", "nuclear_charges")])
def test_npz_layouts_in_kcal_per_mol(tmp_path, layout):
    reference = read_dataset(ETHANOL, index=":5")
    positions = np.stack([a.positions for a in reference.atoms])
    path = tmp_path / "md17.npz"
    np.savez(path, **{layout[0]: positions, layout[1]: reference.energy / KCAL,
                      layout[2]: np.stack(reference.forces) / KCAL,
                      layout[3]: reference.atoms[0].numbers})
    data = read_dataset(path, energy_unit="kcal/mol")
    # kcal/mol -> eV is a multiplication by ase.units.kcal/ase.units.mol, for energies and forces
    np.testing.assert_allclose(data.energy, reference.energy, rtol=1e-14)
    np.testing.assert_allclose(data.forces[4], reference.forces[4], rtol=1e-14)
    np.testing.assert_array_equal(data.atoms[2].positions, positions[2])


def test_hartree_and_bohr_conversion(tmp_path):
    reference = read_dataset(ETHANOL, index=":2")
    from ase.units import Bohr, Hartree

    path = tmp_path / "au.npz"
    np.savez(path, R=np.stack([a.positions for a in reference.atoms]) / Bohr, E=reference.energy / Hartree,
             F=np.stack(reference.forces) / (Hartree / Bohr), z=reference.atoms[0].numbers)
    data = read_dataset(path, energy_unit="Hartree", length_unit="Bohr")
    np.testing.assert_allclose(data.atoms[1].positions, reference.atoms[1].positions, rtol=1e-12)
    np.testing.assert_allclose(data.forces[1], reference.forces[1], rtol=1e-12)


def test_hdf5_written_by_the_md_driver(tmp_path):
    from ase_mlff.md.h5 import FRAME_FIELDS_V2, H5Writer, SystemInfo

    # two systems in one run (periodic water, a free ethanol): frames follow in system order
    runs = [read(WATER, index=":"), read(ETHANOL, index=":3")]
    systems = [SystemInfo(label=f"s{k}", numbers=run[0].numbers, masses=run[0].get_masses(),
                          cell=np.asarray(run[0].cell[:]), pbc=np.asarray(run[0].pbc),
                          fixed=np.zeros(0, dtype=np.int64), dof=3.0 * len(run[0]), seed=k, attrs={})
               for k, run in enumerate(runs)]
    path = tmp_path / "run.h5"
    writer = H5Writer(path, systems, {"model": "test"})
    for k, run in enumerate(runs):
        for step, atoms in enumerate(run):
            writer.append(k, {**dict.fromkeys(FRAME_FIELDS_V2, 0), "step": step, "positions": atoms.positions,
                              "forces": atoms.get_forces(), "potential_energy": atoms.get_potential_energy()})
    writer.close()
    data = read_dataset(path)
    frames = runs[0] + runs[1]
    assert len(data) == 5 and data.atoms[1].pbc.all() and not data.atoms[2].pbc.any()
    for k, atoms in enumerate(frames):
        np.testing.assert_array_equal(data.atoms[k].numbers, atoms.numbers)
        np.testing.assert_allclose(data.atoms[k].positions, atoms.positions, rtol=0, atol=0)
        np.testing.assert_allclose(data.forces[k], atoms.get_forces(), rtol=0, atol=0)
        assert data.energy[k] == atoms.get_potential_energy()
    np.testing.assert_allclose(data.atoms[1].cell.array, runs[0][0].cell.array)


def test_hdf5_version_1_file():
    # a real version-1 file (one system at the root), written before multi-system runs
    from conftest import DATA

    from ase_mlff.md.h5 import read_frames

    path = DATA / "md_v1_argon.h5"
    data = read_dataset(path)
    frames = read_frames(path)
    assert len(data) == len(frames) == 5
    np.testing.assert_array_equal(data.atoms[3].positions, frames[3].positions)
    np.testing.assert_array_equal(data.forces[3], frames[3].get_forces())
    assert data.energy[3] == frames[3].get_potential_energy()


def test_missing_file_and_unknown_unit(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.xyz"):
        read_dataset(tmp_path / "nothere.xyz")
    with pytest.raises(ValueError, match="unknown energy unit 'kcal'"):
        read_dataset(ETHANOL, energy_unit="kcal")


# -- checks ------------------------------------------------------------------------

def test_nan_duplicates_and_uncovered_elements_are_errors():
    data = read_dataset(ETHANOL, index=":6")
    broken = Dataset(data.atoms, data.energy.copy(), data.forces, data.info, "broken")
    broken.energy[2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite .*frames \[2\]"):
        check_dataset(broken)
    doubled = as_file(data.subset([0, 1, 2, 1]))  # a file whose frame 3 repeats frame 1
    with pytest.raises(ValueError, match="duplicate an earlier frame.*1=3"):
        check_dataset(doubled)
    with pytest.raises(ValueError, match="element.s. C .*covering H, O"):
        check_dataset(data, species=["H", "O"])
    check_dataset(data, species=["H", "C", "O"])  # the clean data passes


def test_checks_of_a_subset_name_frames_of_the_file():
    data = read_dataset(ETHANOL, index=":12")
    broken = Dataset(data.atoms, data.energy.copy(), data.forces, data.info, "broken")
    broken.energy[9] = np.inf
    # the subset's frame 1 is frame 9 of the file: the message names 9, which a user can find
    with pytest.raises(ValueError, match=r"frames \[9\] of the file"):
        check_dataset(broken.subset([4, 9, 11]))
    with pytest.raises(ValueError, match=r"first: frame 7 of the file"):
        check_dataset(data.subset([7, 2]).subset([0]), species=["H", "O"])


def test_trainer_refuses_test_elements_the_model_lacks():
    water = molecule("H2O")
    water.calc = SinglePointCalculator(water, energy=-14.0, forces=np.zeros((3, 3)))
    hydrogen = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    hydrogen.calc = SinglePointCalculator(hydrogen, energy=-6.7, forces=np.zeros((2, 3)))
    shifted = hydrogen.copy()
    shifted.positions[1, 2] = 0.8
    shifted.calc = SinglePointCalculator(shifted, energy=-6.6, forces=np.zeros((2, 3)))
    data = from_atoms([hydrogen, shifted, water])
    split = Split(train=[0], val=[1], test=[2])
    with pytest.raises(ValueError, match="test set .* element.s. O"):
        Trainer(data, split, config(), "unused.pt", echo=None)


def test_trainer_refuses_a_frame_in_both_train_and_test():
    data = read_dataset(ETHANOL, index=":8")
    leaky = as_file(data.subset([0, 1, 2, 3, 4, 5, 6, 7, 2]))  # frame 8 repeats frame 2
    with pytest.raises(ValueError, match="training \\+ validation \\+ test .*2=8"):
        Trainer(leaky, Split(train=[0, 1, 2, 3, 4], val=[5, 6], test=[7, 8]), config(cutoff=5.0),
                "unused.pt", echo=None)


# -- splits ------------------------------------------------------------------------

def test_random_split_reproducible_disjoint_and_saved(tmp_path):
    a, b = random_split(100, n_val=0.1, n_test=15, seed=3), random_split(100, n_val=0.1, n_test=15, seed=3)
    assert a == b and a != random_split(100, n_val=0.1, n_test=15, seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (75, 10, 15)
    assert sorted(a.train + a.val + a.test) == list(range(100))
    path = save_split(a, tmp_path / "m.split.json", {"data": "x"})
    assert load_split(path) == a and json.loads(path.read_text())["data"] == "x"
    with pytest.raises(ValueError, match="cannot give"):
        random_split(10, n_val=5, n_test=5)


def test_tagged_split_follows_the_rmd17_tags():
    data = read_dataset(ETHANOL)
    tags = [info["rmd17_splits"] for info in data.info]
    split = tagged_split(tags, "train01", "test01", n_val=10, val_block=5, seed=0)
    assert split.train == [k for k, t in enumerate(tags) if "train01" in t.split(",")]
    assert split.test == [k for k, t in enumerate(tags) if "test01" in t.split(",")]
    assert len(split.train) == 30 and len(split.test) == 5 and len(split.val) == 10
    assert not {"train01", "test01"} & set(",".join(tags[k] for k in split.val).split(","))
    assert split == tagged_split(tags, "train01", "test01", n_val=10, val_block=5, seed=0)


# -- reference energies --------------------------------------------------------------

def test_reference_fit_recovers_per_element_energies():
    rng = np.random.default_rng(1)
    truth = {"H": -13.6, "C": -1029.5, "O": -2040.8}
    frames = []
    for _ in range(30):
        counts = {s: int(rng.integers(1, 5)) for s in truth}
        symbols = "".join(s * n for s, n in counts.items())
        atoms = Atoms(symbols, positions=rng.normal(size=(len(symbols), 3)) * 3)
        energy = sum(truth[s] * n for s, n in counts.items()) + rng.normal(0, 1e-3)
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
        frames.append(atoms)
    reference = fit_energy_reference(from_atoms(frames), ["H", "C", "O"])
    for element, value in truth.items():
        # 1 meV noise over 30 frames with ~10 atoms: the fit is good to a fraction of a meV
        assert reference.element_energy[element] == pytest.approx(value, abs=2e-3)
    assert abs(reference.shift) < 1e-3


# -- frames --------------------------------------------------------------------------

def test_cached_batches_match_fresh_neighbor_lists():
    data = read_dataset(WATER)  # periodic, positions not wrapped
    cache = FrameCache(data, 3.5, torch.float64)
    model = LennardJones(["H", "O"], epsilon=0.01, sigma=2.0, cutoff=3.5).double()
    batch, neighbors, energy, forces = cache.collate([1, 0])
    cached = compute(model, batch, neighbors)
    fresh_batch = atoms_to_batch([data.atoms[1], data.atoms[0]], torch.float64)
    fresh = compute(model, fresh_batch, NeighborList(3.5)(fresh_batch))
    torch.testing.assert_close(cached.energy, fresh.energy, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(cached.forces, fresh.forces, rtol=1e-10, atol=1e-10)
    assert energy.tolist() == [data.energy[1], data.energy[0]]


# -- training ------------------------------------------------------------------------

def test_tiny_model_learns_lennard_jones(tmp_path):
    data = lj_dataset()
    split = random_split(len(data), n_val=6, n_test=0, seed=0)
    trainer = Trainer(data, split, config(max_epochs=25, learning_rate=5e-3, ema_decay=0.0),
                      tmp_path / "lj.pt", echo=None)
    first, _ = trainer._validate()
    result = trainer.fit()
    log = np.genfromtxt(tmp_path / "lj.log.csv", delimiter=",", names=True)
    assert len(log) == result.epochs
    # the fit must improve the validation loss several-fold over the initial (reference-only) model
    assert log["val_loss"].min() < first / 3
    model = load_model(tmp_path / "lj.pt")
    assert model.metadata["training"]["best_epoch"] == int(log["epoch"][np.argmin(log["val_loss"])])


def test_energy_only_data_trains_and_marks_the_model(tmp_path):
    data = lj_dataset(12)
    energy_only = Dataset(data.atoms, data.energy, None, data.info, "energies")
    split = random_split(len(data), n_val=3, n_test=0, seed=0)
    lines = []
    # no warning (warnings are errors here): the model file carries the mark and warns its users
    trainer = Trainer(energy_only, split, config(max_epochs=2), tmp_path / "e.pt", echo=lines.append)
    assert "energies has no forces: energy-only training" in lines[0]
    trainer.fit()
    record = read_model_record(tmp_path / "e.pt")
    assert record["metadata"]["training"]["forces_trained"] is False
    assert "forces_mae_meV_per_A" not in record["metadata"]["metrics"]["validation"]


def _train_args(out, *extra):
    return ["train", str(ETHANOL), "--arch", "schnet", "-o", str(out), "--features", "8",
            "--interactions", "1", "--rbf", "6", "--batch-size", "10", "--n-val", "5", "--n-test", "5",
            "--seed", "1", "--device", "cpu", "--threads", "1", "--ema-decay", "0.5", "-q", *extra]


def test_cli_train_stops_after_the_epoch_on_sigterm_and_resumes_from_there(tmp_path, monkeypatch):
    import os
    import signal

    from ase_mlff.training.trainer import Trainer

    train_epoch, calls = Trainer._train_epoch, []

    def signalled(self):  # SIGTERM arrives during the second epoch, as from a scheduler or `kill`
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return train_epoch(self)

    monkeypatch.setattr(Trainer, "_train_epoch", signalled)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "m.pt"
    result = CliRunner().invoke(main, _train_args(out, "--epochs", "50"))
    assert result.exit_code == 0, result.output
    assert "SIGTERM: stopping after this epoch" in result.output
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    training = read_model_record(out)["metadata"]["training"]
    assert (training["stopped_because"], training["epochs"]) == ("interrupted", 2)
    assert "test" in read_model_record(out)["metadata"]["metrics"]  # the final evaluation ran
    monkeypatch.setattr(Trainer, "_train_epoch", train_epoch)
    resumed = CliRunner().invoke(main, _train_args(out, "--epochs", "3", "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert read_model_record(out)["metadata"]["training"]["epochs"] == 3  # continued from epoch 2


def test_cli_train_saves_split_refuses_overwrite_and_resumes(tmp_path):
    runner = CliRunner()
    straight = tmp_path / "straight.pt"
    result = runner.invoke(main, _train_args(straight, "--epochs", "4"))
    assert result.exit_code == 0, result.output
    split = load_split(tmp_path / "straight.split.json")
    assert (len(split.train), len(split.val), len(split.test)) == (40, 5, 5)

    again = runner.invoke(main, _train_args(straight, "--epochs", "4"))
    assert again.exit_code != 0 and "exists; pass --overwrite" in again.output

    # an interrupted run (2 epochs) resumed to 4 epochs ends where the straight run ends
    resumed = tmp_path / "resumed.pt"
    assert runner.invoke(main, _train_args(resumed, "--epochs", "2")).exit_code == 0
    result = runner.invoke(main, _train_args(resumed, "--epochs", "4", "--resume"))
    assert result.exit_code == 0, result.output
    log = np.genfromtxt(tmp_path / "resumed.log.csv", delimiter=",", names=True)
    assert log["epoch"].tolist() == [1, 2, 3, 4]
    ckpt_a = torch.load(str(straight) + ".ckpt", weights_only=True)
    ckpt_b = torch.load(str(resumed) + ".ckpt", weights_only=True)
    for key, value in ckpt_a["model"].items():
        torch.testing.assert_close(ckpt_b["model"][key], value, rtol=0, atol=0)


def test_cli_tagged_split_and_clear_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "tagged.pt"
    result = runner.invoke(main, _train_args(out, "--epochs", "1", "--split-tag", "rmd17_splits:train01:test01",
                                             "--val-block", "5"))
    assert result.exit_code == 0, result.output
    meta = load_model(out).metadata
    assert meta["training"]["split"]["n_train"] == 30 and meta["training"]["split"]["n_test"] == 5
    bad = runner.invoke(main, _train_args(tmp_path / "x.pt", "--species", "H,O"))
    assert bad.exit_code != 0 and "element(s) C" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(main, ["train", str(tmp_path / "none.xyz"), "-o", str(tmp_path / "y.pt")])
    assert missing.exit_code != 0 and "does not exist" in missing.output


@pytest.mark.gpu
def test_one_epoch_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    data = lj_dataset(8)
    trainer = Trainer(data, random_split(8, n_val=2, n_test=0), config(max_epochs=1, device="cuda"),
                      tmp_path / "cuda.pt", echo=None)
    result = trainer.fit()
    assert result.epochs == 1 and (tmp_path / "cuda.pt").exists()


def _finetune_args(out, parent, *extra):
    return ["train", str(ETHANOL), "-o", str(out), "--init-from", str(parent), "--batch-size", "10",
            "--split", str(parent.with_name(parent.stem + ".split.json")), "--seed", "1", "--device", "cpu",
            "--threads", "1", "--ema-decay", "0.5", "-q", *extra]


def test_cli_init_from_starts_from_the_parent_and_resumes(tmp_path):
    import hashlib

    runner = CliRunner()
    parent = tmp_path / "parent.pt"
    assert runner.invoke(main, _train_args(parent, "--epochs", "3")).exit_code == 0
    tuned = tmp_path / "tuned.pt"
    # architecture and widths come from the file: none is given here
    result = runner.invoke(main, _finetune_args(tuned, parent, "--epochs", "2", "--lr", "2e-3",
                                                "--loss-beta", "0.99"))
    assert result.exit_code == 0, result.output
    old, new = read_model_record(parent), read_model_record(tuned)
    assert new["architecture"] == "schnet" and new["hyperparameters"] == old["hyperparameters"]
    assert new["energy_reference"] == old["energy_reference"]  # kept, not refitted
    start = new["metadata"]["training"]["init_from"]
    assert start["sha256"] == hashlib.sha256(parent.read_bytes()).hexdigest()
    assert start["epochs"] == 3 and "init_from" not in old["metadata"]["training"]
    shown = runner.invoke(main, ["info", str(tuned)])
    assert shown.exit_code == 0 and f"started from      {parent}" in shown.output
    # epoch 0 of the log is the parent, judged by the new loss on the same validation frames
    log = np.genfromtxt(tmp_path / "tuned.log.csv", delimiter=",", names=True)
    assert log["epoch"].tolist() == [0, 1, 2]
    parent_log = np.genfromtxt(tmp_path / "parent.log.csv", delimiter=",", names=True)
    best = parent_log["best"].astype(bool)
    assert log["val_forces_mae_meV_per_A"][0] == pytest.approx(
        parent_log["val_forces_mae_meV_per_A"][best][-1], abs=2e-3)
    # the run moved the weights (a fresh optimizer from the parent's point)
    ckpt = torch.load(str(tuned) + ".ckpt", weights_only=True)
    moved = max(float((ckpt["model"][k] - v).abs().max()) for k, v in old["state_dict"].items()
                if v.is_floating_point())
    assert moved > 1e-4
    # resuming a fine-tuning run needs neither --init-from nor the parent's file
    parent.rename(tmp_path / "gone.pt")
    args = _finetune_args(tuned, parent, "--epochs", "3", "--lr", "2e-3", "--loss-beta", "0.99", "--resume",
                          "--arch", "schnet", "--features", "8", "--interactions", "1", "--rbf", "6")
    i = args.index("--init-from")
    del args[i:i + 2]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    final = read_model_record(tuned)
    assert final["energy_reference"] == old["energy_reference"]
    assert final["metadata"]["training"]["init_from"]["sha256"] == start["sha256"]
    assert np.genfromtxt(tmp_path / "tuned.log.csv", delimiter=",", names=True)["epoch"].tolist() == [0, 1, 2, 3]


def test_cli_init_from_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    parent = tmp_path / "parent.pt"
    assert runner.invoke(main, _train_args(parent, "--epochs", "1")).exit_code == 0
    other = runner.invoke(main, _finetune_args(tmp_path / "x.pt", parent, "--features", "16"))
    assert other.exit_code != 0 and "n_features=8" in other.output and "n_features=16" in other.output
    assert "Traceback" not in other.output
    same = runner.invoke(main, _finetune_args(parent, parent))
    assert same.exit_code != 0 and "is also --output" in same.output
    # a bundled potential named by its name is its file too: --overwrite must not replace it
    monkeypatch.setenv("MLFF_POTENTIALS", str(tmp_path))
    before = parent.read_bytes()
    by_name = runner.invoke(main, ["train", str(ETHANOL), "-o", str(parent), "--init-from", "parent",
                                   "--overwrite", "-q"])
    assert by_name.exit_code != 0 and "is also --output" in by_name.output
    assert parent.read_bytes() == before
    missing = runner.invoke(main, _finetune_args(tmp_path / "y.pt", tmp_path / "none.pt"))
    assert missing.exit_code != 0 and "--init-from" in missing.output and "Traceback" not in missing.output
