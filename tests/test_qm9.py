"""QM9-scale energy-only data: the fast extxyz reader (checked against ASE), the parsed-data
cache, flat datasets and batches, energy-only training and metrics, and what an energy-only
model file says and does (``mlff-md info``, bundled selection, the one-time warning)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import read, write
from test_md_fixtures import invoke

from ase_mlff import MLFFCalculator, save_model
from ase_mlff.batch import atoms_to_batch
from ase_mlff.bundled import bundled_files, bundled_potentials, resolve_model_path
from ase_mlff.compositions import EnergyOnlyWarning, OutOfTrainingWarning, energy_only, forces_trained
from ase_mlff.io import load_model, read_model_record
from ase_mlff.md.selection import choose_potential
from ase_mlff.models import LennardJones
from ase_mlff.neighbors import NeighborList
from ase_mlff.training import cache, extxyz
from ase_mlff.training.data import Dataset, from_atoms, read_dataset
from ase_mlff.training.evaluate import error_metrics
from ase_mlff.training.frames import FrameCache
from ase_mlff.training.splits import random_split
from ase_mlff.training.trainer import TrainConfig, Trainer

DATA = Path(__file__).parent / "data"
QM9 = DATA / "qm9_U0_200.extxyz.gz"  # 200 QM9 molecules with U0, no forces (tests/data/README.md)
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"  # forces, string and comma-valued info keys
WATER = DATA / "water_deepmd_2frames.extxyz.gz"  # periodic: Lattice and pbc="T T T"
SILICON = DATA / "si_mlearn_small.extxyz.gz"  # periodic, triclinic, cell vectors down to 3.9 Å


def _text(path: Path) -> str:
    with gzip.open(path, "rt") as handle:
        return handle.read()


def _ase(text: str) -> Dataset:
    return from_atoms(read(io.StringIO(text), index=":", format="extxyz"))


# -- the fast reader is ASE, exactly --------------------------------------------------------------
@pytest.mark.parametrize("path", [QM9, ETHANOL, WATER], ids=["qm9", "ethanol-forces", "water-periodic"])
def test_fast_reader_equals_ase_exactly(path):
    text = _text(path)
    parsed, reference = extxyz.parse(text), _ase(text)
    assert parsed is not None  # these layouts are the ones the fast reader is for
    frames = reference.atoms
    for name in ("numbers", "positions", "offsets", "cell", "pbc"):
        np.testing.assert_array_equal(getattr(parsed, name), getattr(frames, name), err_msg=name)
    np.testing.assert_array_equal(parsed.energy, reference.energy)
    if reference.forces is None:
        assert parsed.forces is None
    else:
        np.testing.assert_array_equal(parsed.forces, reference.forces.values)
    assert parsed.info == reference.info


def test_the_qm9_fixture_is_what_the_readme_says():
    data = read_dataset(QM9, cache_dir=False)
    assert len(data) == 200 and not data.has_forces
    assert data.species == ["H", "C", "N", "O", "F"]
    assert [info["qm9_index"] for info in data.info[:2]] == [1, 661]  # every 600th molecule of the file
    # U0 of methane, B3LYP/6-31G(2df,p): -40.47893 Hartree
    assert data.energy[0] == pytest.approx(-40.47893 * 27.211386024367243, abs=1e-3)


@pytest.mark.parametrize("change", [
    lambda t: t.replace("pos:R:3", "pos:R:3:charge:R:1", 1),  # a column the reader does not know
    lambda t: t.replace("qm9_index=1 ", 'qm9_index=1 tags="1 2 3" ', 1),  # an array value
    lambda t: t.replace("qm9_index=1 ", "qm9_index=1 stress=0 ", 1),  # another calculator key
    lambda t: "\n".join(t.split("\n")[:7] + [""] + t.split("\n")[7:]),  # a blank line after frame 0
    lambda t: t.replace("qm9_index=1 ", "qm9_index=1 flag ", 1),  # a key without a value
], ids=["column", "array", "calculator-key", "blank-line", "bare-key"])
def test_other_layouts_fall_back_to_ase(tmp_path, change):
    text = change(_text(QM9))
    assert extxyz.parse(text) is None
    path = tmp_path / "odd.extxyz"
    path.write_text(text)
    try:
        reference = _ase(text)
    except Exception:  # ASE refuses it too: then read_dataset must refuse it in one line
        with pytest.raises(ValueError, match="could not read"):
            read_dataset(path, cache_dir=False)
        return
    data = read_dataset(path, cache_dir=False)
    np.testing.assert_array_equal(data.atoms.positions, reference.atoms.positions)
    np.testing.assert_array_equal(data.energy, reference.energy)


def test_flat_dataset_keeps_the_fingerprint_of_atoms_lists():
    """The hash is computed frame by frame as before flat storage (model files store it)."""
    frames = read(ETHANOL, index=":")
    digest = hashlib.sha256()
    for a in frames:
        digest.update(np.ascontiguousarray(a.numbers, dtype=np.int64).tobytes())
        digest.update(np.ascontiguousarray(a.positions, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(a.cell.array, dtype=np.float64).tobytes())
        digest.update(np.ascontiguousarray(a.pbc, dtype=bool).tobytes())
        digest.update(np.float64(a.get_potential_energy()).tobytes())
        digest.update(np.ascontiguousarray(a.get_forces(), dtype=np.float64).tobytes())
    assert read_dataset(ETHANOL, cache_dir=False).fingerprint() == digest.hexdigest()
    assert from_atoms(frames).fingerprint() == digest.hexdigest()


def test_flat_subsets_and_atoms_on_demand():
    data = read_dataset(QM9, cache_dir=False)
    frames = read(QM9, index=":")
    picked = data.subset([7, 3, 150])
    assert picked.file_indices() == [7, 3, 150]
    for k, source in zip(range(3), (7, 3, 150)):
        atoms = picked.atoms[k]
        np.testing.assert_array_equal(atoms.numbers, frames[source].numbers)
        np.testing.assert_array_equal(atoms.positions, frames[source].positions)
        assert picked.energy[k] == frames[source].get_potential_energy()
    picked.atoms[0].positions += 1.0  # a copy: the dataset does not move
    np.testing.assert_array_equal(picked.atoms[0].positions, frames[7].positions)
    np.testing.assert_array_equal(picked.n_atoms, [len(frames[k]) for k in (7, 3, 150)])


def test_batches_sliced_from_flat_frames_match_a_fresh_neighbor_list():
    data = read_dataset(SILICON, cache_dir=False).subset([2, 0, 1])  # triclinic, short cell vectors
    cutoff = 4.0
    frame_cache = FrameCache(data, cutoff, torch.float64)
    batch, neighbors, energy, forces = frame_cache.collate([1, 0])
    assert neighbors.periodic and bool(neighbors.shifts.abs().sum() > 0)
    fresh_batch = atoms_to_batch([data.atoms[1], data.atoms[0]], torch.float64)
    fresh = NeighborList(cutoff)(fresh_batch)

    def edges(n):
        rows = torch.cat([n.edge_index.T, n.shifts], dim=1).tolist()
        return sorted(map(tuple, rows))

    assert edges(neighbors) == edges(fresh)
    torch.testing.assert_close(batch.positions, fresh_batch.positions, rtol=0, atol=0)
    torch.testing.assert_close(energy, torch.tensor(data.energy[[1, 0]], dtype=torch.float64))
    np.testing.assert_array_equal(forces.numpy(), np.concatenate([data.forces[1], data.forces[0]]))


def test_molecule_edges_are_the_neighbor_list_pairs():
    """Open molecules take the all-pairs path by molecule size: the same pairs as NeighborList."""
    data = read_dataset(QM9, cache_dir=False)
    cutoff = 3.0  # shorter than most QM9 molecules: the cutoff test decides many pairs
    frame_cache = FrameCache(data, cutoff, torch.float64)
    assert frame_cache.shifts is None and not frame_cache.periodic
    picked = [199, 0, 57, 3, 120, 64]  # mixed sizes, out of order
    batch, neighbors, _, _ = frame_cache.collate(picked)
    fresh = NeighborList(cutoff)(atoms_to_batch([data.atoms[k] for k in picked], torch.float64))
    assert sorted(map(tuple, neighbors.edge_index.T.tolist())) == sorted(map(tuple, fresh.edge_index.T.tolist()))
    assert 0 < neighbors.n_edges < sum(n * (n - 1) for n in data.n_atoms[picked])
    assert not neighbors.shifts.any()


# -- the cache ------------------------------------------------------------------------------------
def test_cache_miss_hit_stale_and_corrupt(tmp_path):
    source = tmp_path / "qm9.extxyz.gz"
    source.write_bytes(QM9.read_bytes())
    folder = tmp_path / "cache"
    lines = []
    reads = []

    def read_once():
        reads.append(1)
        return _arrays(source)

    first, how = cache.cached_read(source, read_once, "energy", "forces", folder, lines.append)
    assert how == "stored" and len(reads) == 1 and not lines
    entry = cache.entry_path(folder, source)
    assert entry.exists() and sorted(os.listdir(folder)) == [entry.name]  # no temporary left behind

    second, how = cache.cached_read(source, read_once, "energy", "forces", folder, lines.append)
    assert how == "cached" and len(reads) == 1 and not lines
    for name in ("positions", "offsets", "cell", "pbc", "energy"):
        np.testing.assert_array_equal(second[name], first[name])
    np.testing.assert_array_equal(second["numbers"].astype(np.int64), first["numbers"])
    assert second["info"] == first["info"]

    # the source changes (new mtime and content): stale, rebuilt, one line
    text = _text(QM9).replace("qm9_index=1 ", "qm9_index=1000001 ", 1)
    source.write_bytes(gzip.compress(text.encode()))
    os.utime(source, ns=(1, 1))
    third, how = cache.cached_read(source, read_once, "energy", "forces", folder, lines.append)
    assert how == "stored" and len(reads) == 2
    assert len(lines) == 1 and "is stale (the source file changed): rebuilding" in lines[0]
    assert third["info"][0]["qm9_index"] == 1000001

    # a damaged entry: corrupt, rebuilt, one line
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    lines.clear()
    _, how = cache.cached_read(source, read_once, "energy", "forces", folder, lines.append)
    assert how == "stored" and len(reads) == 3
    assert len(lines) == 1 and "is corrupt" in lines[0] and "rebuilding" in lines[0]
    assert cache.load(entry, cache.source_key(source, "energy", "forces"))[0] is not None


def _arrays(path):
    data = read_dataset(path, cache_dir=False)
    frames = data.atoms
    return {"numbers": frames.numbers, "positions": frames.positions, "offsets": frames.offsets,
            "cell": frames.cell, "pbc": frames.pbc, "energy": data.energy, "forces": None, "info": data.info}


def test_read_dataset_through_the_cache_is_the_same_data(tmp_path, capsys):
    folder = tmp_path / "cache"
    plain = read_dataset(ETHANOL, cache_dir=False)
    stored = read_dataset(ETHANOL, cache_dir=folder)
    cached = read_dataset(ETHANOL, cache_dir=folder, energy_unit="kcal/mol")
    assert len(list(folder.iterdir())) == 1
    assert stored.fingerprint() == plain.fingerprint()
    assert stored.info == plain.info
    # units are applied after the cache: the cached values are the file's
    np.testing.assert_allclose(cached.energy, plain.energy * 0.04336410390059322, rtol=1e-12)
    np.testing.assert_allclose(cached.forces.values, plain.forces.values * 0.04336410390059322, rtol=1e-12)
    assert capsys.readouterr().err == ""  # a miss and a hit say nothing


def test_default_cache_folder_and_small_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "ase-mlff"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "ase-mlff"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    read_dataset(QM9)  # 56 kB: below MIN_CACHED_BYTES, so no entry is made anywhere
    assert not (tmp_path / "xdg").exists()
    assert QM9.stat().st_size < cache.MIN_CACHED_BYTES
    assert sorted(p.name for p in DATA.glob("qm9*")) == [QM9.name]  # nothing written beside the data


def test_an_unwritable_cache_costs_one_line_not_the_read(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    lines = []
    data = read_dataset(QM9, cache_dir=blocker / "cache", echo=lines.append)
    assert len(data) == 200
    assert len(lines) == 1 and "could not write the cache" in lines[0]


def test_info_the_cache_cannot_keep_unchanged_is_not_cached(tmp_path):
    # an array value takes the ASE path, whose info holds an ndarray; JSON would make it a list
    path = tmp_path / "tags.extxyz"
    path.write_text(_text(QM9).replace("qm9_index=1 ", 'qm9_index=1 tags="1 2 3" ', 1))
    lines = []
    data = read_dataset(path, cache_dir=tmp_path / "cache", echo=lines.append)
    assert isinstance(data.info[0]["tags"], np.ndarray)
    assert len(lines) == 1 and lines[0].startswith("not cached: a ndarray value in atoms.info")
    assert not list((tmp_path / "cache").glob("*.npz"))


# -- energy-only training and metrics --------------------------------------------------------------
def _energy_only_trainer(tmp_path, epochs=2):
    data = read_dataset(QM9, cache_dir=False)
    split = random_split(len(data), n_val=20, n_test=20, seed=0)
    config = TrainConfig(architecture="schnet", n_features=8, n_interactions=1, n_rbf=6, batch_size=20,
                         max_epochs=epochs, forces_weight=0.0, ema_decay=0.5, learning_rate=1e-3)
    lines = []
    trainer = Trainer(data, split, config, tmp_path / "qm9.pt", echo=lines.append)
    return trainer, lines


def test_energy_only_training_runs_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the suite does this too; said here because it is the point)
        trainer, lines = _energy_only_trainer(tmp_path)
        result = trainer.fit()
    assert any("has no forces: energy-only training" in line for line in lines)
    assert all("F not trained" in line for line in lines if line.startswith("epoch"))
    record = read_model_record(tmp_path / "qm9.pt")
    assert record["metadata"]["training"]["forces_trained"] is False
    assert forces_trained(record["metadata"]) is False and energy_only(record["metadata"])
    test = result.metrics["test"]
    assert "forces_mae_meV_per_A" not in test and test["n_frames"] == 20
    header = (tmp_path / "qm9.log.csv").read_text().splitlines()[0].split(",")
    assert "val_energy_mae_meV" in header and "val_energy_mae_meV_per_atom" in header
    assert record["metadata"]["training_data"]["elements"] == ["C", "F", "H", "N", "O"]


def test_test_mae_is_in_meV_per_molecule(tmp_path):
    """The stored test MAE against an independent evaluation through the ASE calculator."""
    trainer, _ = _energy_only_trainer(tmp_path, epochs=1)
    result = trainer.fit()
    data = read_dataset(QM9, cache_dir=False)
    calc = MLFFCalculator(tmp_path / "qm9.pt", dtype="float32")
    errors, per_atom = [], []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in trainer.split.test:
            atoms = data.atoms[k]
            atoms.calc = calc
            errors.append(atoms.get_potential_energy() - data.energy[k])  # eV
            per_atom.append(errors[-1] / len(atoms))
    assert [w.category for w in caught].count(EnergyOnlyWarning) == 1
    # test molecules of a formula absent from 160 training molecules are outside its compositions
    others = [str(w.message) for w in caught if w.category is OutOfTrainingWarning]
    assert all(" compositions (" in m and ", ...); this structure is " in m for m in others)
    test = result.metrics["test"]
    assert test["energy_mae_meV"] == pytest.approx(1e3 * np.mean(np.abs(errors)), rel=1e-4)
    assert test["energy_mae_meV_per_atom"] == pytest.approx(1e3 * np.mean(np.abs(per_atom)), rel=1e-4)


def test_error_metrics_units():
    data = read_dataset(QM9, cache_dir=False).subset(range(10))
    shifted = data.energy + 0.002  # 2 meV per molecule
    metrics = error_metrics(data, shifted, None)
    assert metrics["energy_mae_meV"] == pytest.approx(2.0)
    assert metrics["energy_mae_meV_per_atom"] == pytest.approx(np.mean(2.0 / data.n_atoms))


def test_cli_train_energy_only_and_the_forces_weight_message(tmp_path):
    args = ["train", QM9, "--arch", "schnet", "--features", "8", "--interactions", "1", "--rbf", "6",
            "--batch-size", "50", "--n-val", "20", "--n-test", "20", "--epochs", "1", "--threads", "1", "-q",
            "--cache-dir", tmp_path / "cache"]
    quiet = invoke(*args, "-o", tmp_path / "a.pt")
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.output.lower()
    assert "energy MAE" in quiet.output and "forces MAE" not in quiet.output
    asked = invoke(*args, "-o", tmp_path / "b.pt", "--forces-weight", "5")
    assert asked.exit_code == 0, asked.output
    assert "warning: --forces-weight 5.0 has nothing to weigh" in asked.output
    assert len(list((tmp_path / "cache").iterdir())) == 1  # --cache-dir caches any size
    evaluated = invoke("eval", tmp_path / "a.pt", QM9, "--subset", "test", "--no-cache")
    assert evaluated.exit_code == 0, evaluated.output
    assert "energy MAE" in evaluated.output and "forces" not in evaluated.output


# -- an energy-only model file: info, selection, the warning ------------------------------------
def _energy_only_lj(path: Path, compositions=("C2H6O",)) -> Path:
    metadata = {"training": {"forces_trained": False},
                "training_data": {"compositions": list(compositions), "elements": ["C", "H", "O"]}}
    save_model(LennardJones(["H", "C", "O"], epsilon=0.001, sigma=1.0, cutoff=3.0), path, metadata=metadata)
    return path


def test_info_says_whether_forces_were_trained(tmp_path):
    shown = invoke("info", _energy_only_lj(tmp_path / "e.pt")).output.splitlines()
    assert sum(line.startswith("forces ") for line in shown) == 1
    assert any(line.startswith("forces            NOT trained: energy-only model") for line in shown)
    trained = invoke("info", "ethanol-painn").output.splitlines()
    assert "forces            trained (energy and force loss)" in trained
    save_model(LennardJones(["Ar"]), tmp_path / "old.pt")
    assert "forces            not recorded (imported or older model)" in invoke("info", tmp_path / "old.pt").output


def test_info_and_the_warning_count_long_composition_lists(tmp_path):
    formulas = [f"C{n if n > 1 else ''}H{2 * n + 2}" for n in range(1, 21)]  # 20 alkanes, as a QM9 model lists hundreds
    model = _energy_only_lj(tmp_path / "many.pt", formulas)
    shown = invoke("info", model).output
    assert "trained on        20 compositions (CH4, C2H6, C3H8, C4H10, C5H12, C6H14, C7H16, C8H18, ...)" in shown
    calc = MLFFCalculator(model, dtype="float64")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calc.get_potential_energy(molecule("H2O"))
    messages = [str(w.message) for w in caught if w.category is OutOfTrainingWarning]
    assert messages == ["many was trained on 20 compositions (CH4, C2H6, C3H8, C4H10, C5H12, C6H14, ...); this "
                        "structure is H2O: predictions outside the training data may be far off (force errors "
                        "of tens of times the test error)"]


def test_selection_never_picks_an_energy_only_potential(tmp_path, monkeypatch):
    folder = tmp_path / "potentials"
    folder.mkdir()
    _energy_only_lj(folder / "aaa-energy-only.pt")  # first by name, trained on ethanol: still never chosen
    monkeypatch.setenv("MLFF_POTENTIALS", str(folder))
    ethanol = molecule("CH3CH2OH").numbers
    with pytest.raises(ValueError, match="no bundled potentials are installed"):
        choose_potential(ethanol)
    save_model(LennardJones(["H", "C", "O"], epsilon=0.001, sigma=1.0, cutoff=3.0), folder / "zzz.pt",
               metadata={"training": {"forces_trained": True},
                         "training_data": {"compositions": ["C2H6O"], "elements": ["C", "H", "O"]}})
    assert choose_potential(ethanol)[0] == "zzz"
    assert list(bundled_potentials()) == ["zzz"]
    assert list(bundled_files()) == ["aaa-energy-only", "zzz"]
    assert resolve_model_path("aaa-energy-only") == folder / "aaa-energy-only.pt"  # still loadable by name


def test_shipped_qm9_potential_is_energy_only_and_never_selected(monkeypatch):
    folder = Path(__file__).resolve().parent.parent / "potentials"
    monkeypatch.setenv("MLFF_POTENTIALS", str(folder))  # this checkout's files, not an installed copy's
    metadata = read_model_record(folder / "qm9-schnet.pt")["metadata"]
    assert energy_only(metadata)
    assert "qm9-schnet" in bundled_files() and "qm9-schnet" not in bundled_potentials()
    assert metadata["training_data"]["elements"] == ["C", "F", "H", "N", "O"]
    # the test molecules it reports were never trained on: the split file beside it says which
    split = json.loads((folder / "qm9-schnet.split.json").read_text())
    assert len(split["test"]) == 10_000 and not set(split["test"]) & set(split["train"] + split["val"])
    assert metadata["training"]["split"]["test"] == split["test"]
    assert metadata["metrics"]["test"]["n_frames"] == 10_000
    ethanol = molecule("CH3CH2OH").numbers  # C, H, O: qm9-schnet covers them, yet is never picked
    assert choose_potential(ethanol)[0] != "qm9-schnet"


def test_calculator_warns_once_for_an_energy_only_model(tmp_path):
    calc = MLFFCalculator(_energy_only_lj(tmp_path / "e.pt"), dtype="float64")
    ethanol = molecule("CH3CH2OH")
    ethanol.calc = calc
    with pytest.warns(EnergyOnlyWarning, match=r"^e was trained on energies only: its forces were never "
                                               r"trained") as caught:
        ethanol.get_forces()
    assert len(caught) == 1
    ethanol.positions[0] += 0.1
    ethanol.get_forces()  # warnings are errors in this suite: a second one would fail here
    calc.calculate_batch([molecule("CH3CH2OH"), molecule("CH3CH2OH")])
    assert load_model(tmp_path / "e.pt").metadata["training"]["forces_trained"] is False


def test_md_run_with_an_energy_only_model_warns_once(tmp_path):
    structure = tmp_path / "ethanol.xyz"
    write(structure, [molecule("CH3CH2OH")])
    result = invoke("run", structure, structure, "-m", _energy_only_lj(tmp_path / "e.pt"), "--steps", 2, "-q",
                    "--seed", 1, "-o", tmp_path / "run", "--max-drift", "1e9")
    assert result.exit_code == 0, result.output
    shown = [line for line in result.output.splitlines() if "energies only" in line]
    assert len(shown) == 1 and shown[0].startswith("Warning: e was trained on energies only")


def test_model_records_the_held_out_test_molecules(tmp_path):
    trainer, _ = _energy_only_trainer(tmp_path, epochs=1)
    trainer.fit()
    stored = read_model_record(tmp_path / "qm9.pt")["metadata"]["training"]["split"]
    assert len(stored["test"]) == 20 and not set(stored["test"]) & set(stored["train"] + stored["val"])
    assert json.loads(json.dumps(stored)) == stored


def test_qm9_recipe_runs_on_the_shipped_molecules(tmp_path):
    from test_examples import _run_copy

    # SchNet only: each mlff-md call is a fresh process (seconds of imports); PaiNN's branch
    # differs by the --arch value alone
    result = _run_copy(tmp_path, "qm9_u0.sh", EPOCHS="1", MAX_TIME="1", ARCH="schnet")
    copy = tmp_path / "examples"
    for arch in ("schnet",):
        split = json.loads((copy / f"qm9_u0_{arch}.split.json").read_text())
        assert (len(split["train"]), len(split["val"]), len(split["test"])) == (180, 3, 17)
        test = json.loads((copy / f"qm9_u0_{arch}_test.json").read_text())
        assert test["n_frames"] == 17 and "forces_mae_meV_per_A" not in test
    assert result.stdout.count("NOT trained: energy-only model") == 1
