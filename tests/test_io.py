"""Model files: round trips (in process and in a fresh one), safety, and the errors users see."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ARCHITECTURES, ethanol, make_model, molybdenum

from ase_mlff import MLFFCalculator, load_model, save_model
from ase_mlff.bundled import bundled_potentials, resolve_model_path
from ase_mlff.io import FORMAT, FORMAT_VERSION, read_model_record
from ase_mlff.models import LennardJones, SchNet


def evaluate(model, atoms, dtype="float64"):
    atoms = atoms.copy()
    atoms.calc = MLFFCalculator(model, device="cpu", dtype=dtype)
    out = [atoms.get_potential_energy(), atoms.get_forces()]
    if atoms.pbc.all():
        out.append(atoms.get_stress())
    return out


def species_model(architecture):
    return make_model(architecture, ("H", "C", "O", "Mo"), cutoff=4.0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_round_trip_in_process(tmp_path, architecture):
    model = species_model(architecture)
    path = save_model(model, tmp_path / "model.pt", metadata={"note": "test", "epochs": 3})
    loaded = load_model(path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.species == model.species and loaded.cutoff == model.cutoff
    assert loaded.hyperparameters() == model.hyperparameters()
    assert loaded.energy_reference() == model.energy_reference()
    assert loaded.metadata == {"note": "test", "epochs": 3}
    assert loaded.element_energy.dtype == torch.float64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    for atoms in (ethanol(0), molybdenum(1)):
        for a, b in zip(evaluate(model, atoms), evaluate(loaded, atoms)):
            np.testing.assert_array_equal(a, b)  # same weights, same float64 arithmetic


def test_float32_model_keeps_its_dtype_and_reference(tmp_path):
    model = species_model("schnet").float()
    loaded = load_model(save_model(model, tmp_path / "m32.pt"))
    assert next(loaded.parameters()).dtype == torch.float32
    assert read_model_record(tmp_path / "m32.pt")["dtype"] == "float32"
    assert loaded.element_energy.dtype == torch.float64
    assert loaded.energy_reference() == model.energy_reference()  # float64 values, bit for bit
    # scale and shift keep float64 storage too (a shift of ~10^2 eV would lose 1e-5 eV in float32)
    assert loaded.scale.dtype == loaded.shift.dtype == torch.float64


def test_unregistered_architecture_is_refused_before_writing(tmp_path):
    class Custom(SchNet):
        architecture = "my_schnet"

    with pytest.raises(ValueError, match="'my_schnet' is not in ase_mlff.models.ARCHITECTURES"):
        save_model(Custom(["H"], n_features=8, n_interactions=1), tmp_path / "custom.pt")
    assert not (tmp_path / "custom.pt").exists()


_FRESH_PROCESS = """
import json, sys
import torch
torch.set_num_threads(1)
from ase.io import read
from ase_mlff import MLFFCalculator, load_model
out = {}
for name in sys.argv[2:]:
    model = load_model(name)
    for k, path in enumerate([sys.argv[1] + "/ethanol_rmd17_3frames.extxyz.gz",
                              sys.argv[1] + "/mo_mlearn_small.extxyz.gz"]):
        atoms = read(path, index=1)
        atoms.calc = MLFFCalculator(model, device="cpu", dtype="float64")
        out[f"{name}:{k}"] = [atoms.get_potential_energy(), atoms.get_forces().tolist()]
print(json.dumps(out))
"""


def test_round_trip_in_a_fresh_process(tmp_path):
    # a new interpreter proves nothing from this process (class objects,
    # cached modules) is needed to rebuild the model from its file
    from conftest import DATA

    paths = [str(save_model(species_model(a), tmp_path / f"{a}.pt")) for a in ARCHITECTURES]
    env = dict(os.environ, MLFF_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, str(DATA), *paths], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    fresh = json.loads(run.stdout.strip().splitlines()[-1])
    for architecture, path in zip(ARCHITECTURES, paths):
        model = species_model(architecture)
        for k, atoms in enumerate([ethanol(1), molybdenum(1)]):
            energy, forces = evaluate(model, atoms)[:2]
            got_energy, got_forces = fresh[f"{path}:{k}"]
            # float64 evaluated by the same code: equal up to summation order
            assert got_energy == pytest.approx(energy, rel=1e-14, abs=1e-12)
            np.testing.assert_allclose(got_forces, forces, rtol=1e-12, atol=1e-13)


def test_numpy_hyperparameters_still_give_a_loadable_file(tmp_path):
    # e.g. a sweep over np.arange(...) widths: numpy scalars are not plain data
    # and would make the file unreadable with weights_only=True
    model = SchNet(["H", "O"], cutoff=np.float32(4.0), n_features=np.int64(8), n_interactions=np.int64(1),
                   n_rbf=np.int64(6))
    loaded = load_model(save_model(model, tmp_path / "numpy.pt"))
    assert loaded.hyperparameters() == {"species": ["H", "O"], "cutoff": 4.0, "n_features": 8,
                                        "n_interactions": 1, "n_rbf": 6}
    assert all(type(v) in (int, float, list) for v in loaded.hyperparameters().values())


def test_file_is_plain_data_with_the_documented_layout(tmp_path):
    path = save_model(LennardJones(["Ar"], 0.01, 3.4), tmp_path / "lj.pt")
    record = torch.load(path, weights_only=True)  # no pickled classes
    assert record["format"] == FORMAT and record["format_version"] == 1  # no repulsion: readable by older releases
    assert record["architecture"] == "lennard_jones"
    assert record["units"] == {"energy": "eV", "length": "Å"}
    assert record["species"] == ["Ar"] and record["cutoff"] == pytest.approx(10.2)
    json.dumps({k: v for k, v in record.items() if k != "state_dict"})  # everything else is JSON


def test_no_temporary_files_are_left_and_permissions_are_ordinary(tmp_path):
    path = save_model(LennardJones(["Ar"]), tmp_path / "sub" / "lj.pt")
    assert sorted(p.name for p in path.parent.iterdir()) == ["lj.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_overwrite_refusal_and_argument_errors(tmp_path):
    path = save_model(LennardJones(["Ar"]), tmp_path / "lj.pt")
    with pytest.raises(FileExistsError, match="lj.pt exists"):
        save_model(LennardJones(["Ar"]), path, overwrite=False)
    with pytest.raises(ValueError, match="metadata must be JSON-compatible"):
        save_model(LennardJones(["Ar"]), tmp_path / "x.pt", metadata={"bad": object()})
    with pytest.raises(TypeError, match="needs an ase_mlff Potential, got Linear"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


# -- files that are not (readable) model files -------------------------------------------------
def test_missing_file_names_the_bundled_potentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFF_POTENTIALS", str(tmp_path))
    save_model(LennardJones(["Ar"]), tmp_path / "argon.pt")
    with pytest.raises(FileNotFoundError, match=r"nope.pt does not exist .* \(bundled: argon\)"):
        load_model("nope.pt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_model_record(tmp_path / "nope.pt")


def test_bundled_name_resolves_through_the_potentials_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFF_POTENTIALS", str(tmp_path))
    save_model(LennardJones(["Ar"], 0.01, 3.0), tmp_path / "argon.pt")
    assert list(bundled_potentials()) == ["argon"]
    assert resolve_model_path("argon") == tmp_path / "argon.pt"
    assert load_model("argon").sigma == 3.0


def test_directory_text_and_foreign_torch_files_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_model(tmp_path)
    text = tmp_path / "notes.pt"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match="notes.pt is not an ase-mlff model file: it is not a torch zip archive"):
        load_model(text)
    foreign = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(ValueError, match="torch file but not an ase-mlff model file"):
        load_model(foreign)
    whole_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), whole_module)  # a pickled class: refused, never unpickled
    with pytest.raises(ValueError, match=r"pickled Python object \(torch.nn.modules.linear.Linear\)") as caught:
        load_model(whole_module)
    # torch's advice to retry with weights_only=False would switch the safety off: never quoted
    assert "weights_only" not in str(caught.value)


class _Payload:
    """Unpickling this object would create a file: the classic pickle exploit, harmless here."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_runs_code_from_the_file(tmp_path):
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        torch.save({"format": FORMAT, "format_version": 1, "payload": _Payload(str(marker))}, handle,
                   pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert not marker.exists()
    with pytest.raises(ValueError, match="not an ase-mlff model file"):
        load_model(path)
    assert not marker.exists()


def edited_record(tmp_path, **changes):
    record = torch.load(save_model(LennardJones(["Ar"]), tmp_path / "lj.pt"), weights_only=True)
    record.update(changes)
    path = tmp_path / "edited.pt"
    torch.save(record, path)
    return path


def test_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match=r"unknown architecture 'mace'; valid architectures: \["):
        load_model(edited_record(tmp_path, architecture="mace"))


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    path = edited_record(tmp_path, format_version=FORMAT_VERSION + 1, package_version="9.0")
    with pytest.raises(ValueError, match=rf"format version {FORMAT_VERSION + 1}, written by ase-mlff 9.0.*"
                                         rf"reads up to version {FORMAT_VERSION}: upgrade"):
        load_model(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    record = torch.load(save_model(species_model("schnet"), tmp_path / "s.pt"), weights_only=True)
    record["hyperparameters"]["n_features"] = 8
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="weights do not match the architecture"):
        load_model(tmp_path / "bad.pt")


def test_other_units_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not supported; convert to eV and Å"):
        load_model(edited_record(tmp_path, units={"energy": "kcal/mol", "length": "Å"}))


def test_calculator_accepts_a_path_and_records_it(tmp_path):
    path = save_model(species_model("painn"), tmp_path / "painn.pt")
    calc = MLFFCalculator(path, device="cpu", dtype="float64")
    assert calc.parameters["model"] == str(path)
    atoms = ethanol(0)
    atoms.calc = calc
    assert atoms.get_potential_energy() == evaluate(species_model("painn"), ethanol(0))[0]


@pytest.mark.gpu
def test_model_saved_from_cuda_loads_on_the_cpu(tmp_path):
    model = species_model("painn")
    on_gpu = type(model)(**model.hyperparameters()).double()
    on_gpu.load_state_dict(model.state_dict())
    on_gpu = on_gpu.to("cuda")
    path = save_model(on_gpu, tmp_path / "cuda.pt")
    loaded = load_model(path)
    assert all(t.device.type == "cpu" for t in loaded.state_dict().values())
    for a, b in zip(evaluate(model, molybdenum(1)), evaluate(loaded, molybdenum(1))):
        np.testing.assert_array_equal(a, b)
