"""SchNetPack 2 model files: read without running code, and the same numbers as SchNetPack.

The fixtures in tests/data/spk/ (small random SchNetPack 2.1.1 models and what
SchNetPack's own SpkCalculator returns for them) are written by
tests/make_spk_fixtures.py in a side environment; these tests need no SchNetPack.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.stress import voigt_6_to_full_3x3_stress
from click.testing import CliRunner

from ase_mlff import MLFFCalculator, load_model
from ase_mlff.cli import main
from ase_mlff.spk import is_schnetpack_file, load_schnetpack, read_pickled_model
from ase_mlff.spk.convert import convert

DATA = Path(__file__).parent / "data" / "spk"
REFERENCE = json.loads((DATA / "reference.json").read_text())
FRAMES = dict(zip(REFERENCE["structures"], ase.io.read(DATA / "structures.extxyz", ":")))
MODELS = sorted(REFERENCE["models"])
_LENGTH = {"Angstrom": "Å", "Bohr": "Bohr"}
# SchNetPack's ScaleProperty postprocessors scale the energy and the forces but
# not the stress SpkCalculator derives (it is dY/dε of the unscaled output): ours is
# dE/dε, so it is SchNetPack's times the energy scale
SPK_STRESS_UNSCALED = {"schnet_bessel_shared": 2.5}


def _units(name: str) -> tuple[str, str]:
    units = REFERENCE["models"][name]["units"]
    return units["energy_unit"], _LENGTH[units["position_unit"]]


def _tolerances(dtype: str, n_atoms: int) -> dict:
    if dtype == "float64":  # same function, same float64 operations up to their order
        return {"energy": 1e-10, "forces": 1e-10, "stress": 1e-10}
    # float32: forces and stress are float32 gradients of O(1) eV/Å; SchNetPack sums the
    # per-atom energies in float32 (eps·|E_i| per atom)
    return {"energy": 1e-6 * n_atoms, "forces": 1e-5, "stress": 1e-6}


def _compare(calc: MLFFCalculator, name: str, dtype: str, structure: str) -> dict:
    """Largest |ours − SpkCalculator's| per property."""
    expected = REFERENCE["models"][name]["outputs"][dtype][structure]
    return {key: _difference(found, expected[key], key, name) for key, found in _ours(calc, structure).items()
            if key in expected}


def _ours(calc: MLFFCalculator, structure: str) -> dict:
    atoms = FRAMES[structure].copy()
    atoms.calc = calc
    found = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        found["stress"] = voigt_6_to_full_3x3_stress(atoms.get_stress())
    return found


def _difference(found, expected, key: str, name: str) -> float:
    expected = np.asarray(expected) * (SPK_STRESS_UNSCALED.get(name, 1.0) if key == "stress" else 1.0)
    return float(np.abs(np.asarray(found) - expected).max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", MODELS)
def test_same_energies_forces_stress_as_spkcalculator(name, dtype):
    model = load_schnetpack(DATA / name, *_units(name))
    calc = MLFFCalculator(model, dtype=dtype)
    outputs = REFERENCE["models"][name]["outputs"]
    for structure, atoms in FRAMES.items():
        tolerance = _tolerances(dtype, len(atoms))
        for key, found in _ours(calc, structure).items():
            error = _difference(found, outputs[dtype][structure][key], key, name)
            if dtype == "float32":
                # SpkCalculator rounds positions (not only edge vectors) to float32, so its float32
                # results carry an error of their own, measured against its float64 ones: ours must be
                # as close to its float64 results as the tolerance, and to its float32 ones within both
                spk_error = _difference(outputs["float32"][structure][key], outputs["float64"][structure][key],
                                        key, "")
                truth = _difference(found, outputs["float64"][structure][key], key, name)
                assert truth < tolerance[key], f"{name} {structure} {key}: {truth:.2e} from float64"
                error -= spk_error
            assert error < tolerance[key], f"{name} {dtype} {structure} {key}: {error:.2e}"


def test_calculator_reads_a_schnetpack_file_directly_in_spkcalculator_units():
    assert is_schnetpack_file(DATA / "painn") and _units("painn") == ("kcal/mol", "Å")
    with pytest.warns(UserWarning, match=r"read in kcal/mol and Å \(SpkCalculator's defaults"):
        calc = MLFFCalculator(str(DATA / "painn"), dtype="float64")
    for structure in FRAMES:
        assert max(_compare(calc, "painn", "float64", structure).values()) < 1e-10


def test_import_command_writes_an_equivalent_model_file_with_provenance(tmp_path):
    name = "painn_gaussian_bohr"
    energy_unit, length_unit = _units(name)
    output = tmp_path / "model.pt"
    result = CliRunner().invoke(main, ["import", str(DATA / name), "-o", str(output), "--energy-unit",
                                       energy_unit, "--length-unit", length_unit, "--species", "H,C,O,Si"])
    assert result.exit_code == 0, result.output
    model = load_model(output)
    assert model.species == ["H", "C", "O", "Si"]
    assert not is_schnetpack_file(output)  # our format: plain data, names SchNetPack only in metadata
    source = model.metadata["imported_from"]
    assert source["sha256"] == hashlib.sha256((DATA / name).read_bytes()).hexdigest()
    assert source["schnetpack_version"] == REFERENCE["models"][name]["schnetpack_version"] == "2.1.1"
    assert "schnetpack.representation.painn.PaiNN" in source["classes"]
    assert (source["energy_unit"], source["length_unit"]) == (energy_unit, length_unit)
    calc = MLFFCalculator(str(output), dtype="float64")
    for structure in FRAMES:
        assert max(_compare(calc, name, "float64", structure).values()) < 1e-10


def test_schnetpack_20_files_load_but_do_not_record_their_version():
    assert REFERENCE["models"]["schnet_spk20"]["schnetpack_version"].startswith("2.0.")
    model = load_schnetpack(DATA / "schnet_spk20")
    assert model.metadata["imported_from"]["schnetpack_version"] is None
    assert model.hyperparameters()["n_filters"] == 24


def test_import_refuses_an_existing_output_and_unknown_units(tmp_path):
    output = tmp_path / "model.pt"
    output.write_text("keep me")
    result = CliRunner().invoke(main, ["import", str(DATA / "painn"), "-o", str(output)])
    assert result.exit_code != 0 and "exists" in result.output and output.read_text() == "keep me"
    result = CliRunner().invoke(main, ["import", str(DATA / "painn"), "-o", str(tmp_path / "m.pt"),
                                       "--energy-unit", "kcal"])
    assert result.exit_code != 0 and "kcal/mol" in result.output


def test_md_run_takes_a_schnetpack_file(tmp_path):
    structure = tmp_path / "ethanol.xyz"
    ase.io.write(structure, FRAMES["ethanol"])
    with pytest.warns(UserWarning, match="mlff-md import"):
        result = CliRunner().invoke(main, ["run", str(structure), "-m", str(DATA / "schnet_gaussian"),
                                           "--steps", "4", "--timestep-fs", "0.1", "-o", str(tmp_path / "run"),
                                           "-q", "--traj-interval", "0", "--log-interval", "2"])
    assert result.exit_code == 0, result.output


# -- never run code from the file ---------------------------------------------------------------

def _with_pickle(template: Path, path: Path, data: bytes) -> Path:
    """A copy of the torch zip archive ``template`` whose data.pkl is ``data``."""
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            target.writestr(item, data if item.filename.endswith("/data.pkl") else source.read(item))
    return path


def _evil_pickle(marker: Path) -> bytes:
    """Runs ``touch marker`` when unpickled normally, then names a SchNetPack class."""

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    body = pickle.dumps(Evil(), protocol=2)
    assert body.endswith(b".")
    return body[:-1] + b"0" + b"cschnetpack.model.base\nNeuralNetworkPotential\n."  # POP, GLOBAL, STOP


def test_crafted_file_that_runs_code_when_unpickled_is_refused_without_running_it(tmp_path):
    armed, marker = tmp_path / "armed", tmp_path / "marker"
    # the payload is live: plain pickle.loads runs it (in a child process; schnetpack import may fail after)
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=_evil_pickle(armed), capture_output=True, timeout=60)
    assert armed.exists()

    path = _with_pickle(DATA / "schnet_gaussian", tmp_path / "best_model", _evil_pickle(marker))
    assert is_schnetpack_file(path)
    system = f"{os.system.__module__}.system"  # posix.system
    for load in (read_pickled_model, MLFFCalculator, load_model):
        with pytest.raises(ValueError, match=rf"refused to unpickle {system}: not a known SchNetPack") as error:
            load(path)
        assert "\n" not in str(error.value)
    result = CliRunner().invoke(main, ["import", str(path), "-o", str(tmp_path / "m.pt")])
    assert result.exit_code != 0 and system in result.output
    assert not marker.exists()


def test_unsupported_schnetpack_classes_are_named_with_what_is_supported(tmp_path):
    data = b"\x80\x02cschnetpack.representation.so3net\nSO3net\n."
    path = _with_pickle(DATA / "painn", tmp_path / "so3net_model", data)
    with pytest.raises(ValueError, match=r"unsupported SchNetPack class schnetpack.representation.so3net."
                                         r"SO3net; supported are SchNet or PaiNN"):
        MLFFCalculator(str(path))


def test_a_model_without_an_energy_output_is_refused():
    pickled = read_pickled_model(DATA / "schnet_gaussian")
    head = pickled.root.child("output_modules").children()[0]
    head.state["output_key"] = "dipole"
    with pytest.raises(ValueError, match=r"no Atomwise energy output .*supported are SchNet and PaiNN"):
        convert(pickled)


def test_shared_weights_are_one_record_and_become_copies():
    # SchNetPack shares interactions by putting one module in the list n times
    pickled = read_pickled_model(DATA / "schnet_bessel_shared")
    blocks = pickled.root.child("representation").child("interactions").children()
    assert len(blocks) == 3 and all(b is blocks[0] for b in blocks)
    model = load_schnetpack(DATA / "schnet_bessel_shared", *_units("schnet_bessel_shared"))
    assert model.hyperparameters()["n_filters"] == 20
    assert all((b.to_messages.weight == model.blocks[0].to_messages.weight).all() for b in model.blocks)


def _postprocessor(pickled, name):
    return next(p for p in pickled.root.child("postprocessors").children() if p.name == name)


def test_variants_that_would_change_the_numbers_are_refused():
    # energy scaled but not the forces: SchNetPack's forces would not be -dE/dr
    pickled = read_pickled_model(DATA / "schnet_bessel_shared")
    posts = pickled.root.child("postprocessors")
    posts.state["_modules"] = {k: v for k, v in posts.state["_modules"].items()
                               if v.state.get("input_key") != "forces"}
    with pytest.raises(ValueError, match=r"energy is scaled by 2.5 but the forces by 1.0"):
        convert(pickled)
    # trained (unequal) Gaussian widths
    pickled = read_pickled_model(DATA / "schnet_gaussian")
    widths = pickled.root.child("representation").child("radial_basis").state["_buffers"]["widths"]
    widths[0] += 0.1
    with pytest.raises(ValueError, match=r"GaussianRBF with unequal \(trained\) widths"):
        convert(pickled)
    # an intensive mean cannot be a per-atom energy
    pickled = read_pickled_model(DATA / "schnet_gaussian")
    _postprocessor(pickled, "AddOffsets").state["is_extensive"] = False
    with pytest.raises(ValueError, match=r"AddOffsets with is_extensive=False"):
        convert(pickled)
    # mean aggregation is not an energy
    pickled = read_pickled_model(DATA / "painn")
    pickled.root.child("output_modules").children()[0].state["aggregation_mode"] = "avg"
    with pytest.raises(ValueError, match=r"Atomwise aggregation 'avg'"):
        convert(pickled)


def test_a_damaged_record_gives_one_line_not_a_traceback(tmp_path):
    data = b"\x80\x02cschnetpack.model.base\nNeuralNetworkPotential\n)\x81}b."  # NEWOBJ, empty state
    path = _with_pickle(DATA / "painn", tmp_path / "empty_model", data)
    with pytest.raises(ValueError, match=r"empty_model: .*supported are SchNet and PaiNN") as error:
        load_schnetpack(path)
    assert "\n" not in str(error.value)
