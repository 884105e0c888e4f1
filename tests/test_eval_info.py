"""``mlff-md eval`` against a hand computation through the ASE calculator; ``mlff-md info``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read
from click.testing import CliRunner

from ase_mlff.calculator import MLFFCalculator
from ase_mlff.cli import main
from ase_mlff.io import save_model
from ase_mlff.models import SchNet

DATA = Path(__file__).parent / "data"
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(0)
    model = SchNet(["H", "C", "O"], n_features=8, n_interactions=1, n_rbf=6)
    # a reference close to the data, so errors are tens of meV rather than kilo-eV
    model.set_energy_reference({"H": -13.7, "C": -1030.0, "O": -2041.0}, scale=0.5, shift=0.0)
    model.metadata = {"default_priority": 3}
    path = tmp_path_factory.mktemp("eval") / "tiny.pt"
    save_model(model, path)
    return path


def test_eval_matches_a_hand_computation(model_file, tmp_path):
    frames = read(ETHANOL, index="0:12")
    calculator = MLFFCalculator(str(model_file), device="cpu", dtype="float64")
    energy_error, force_errors, symbols = [], [], []
    for atoms in frames:
        reference_energy, reference_forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = calculator
        energy_error.append(atoms.get_potential_energy() - reference_energy)
        force_errors.append(atoms.get_forces() - reference_forces)
        symbols += atoms.get_chemical_symbols()
    energy_error = np.array(energy_error) * 1e3  # meV
    force_errors = np.concatenate(force_errors) * 1e3  # meV/Å
    symbols = np.array(symbols)

    subset = tmp_path / "first12.extxyz"
    from ase.io import write

    write(subset, read(ETHANOL, index="0:12"))
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(main, ["eval", str(model_file), str(subset), "--dtype", "float64",
                                       "--device", "cpu", "--json", str(out), "--batch-size", "5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert metrics["n_frames"] == 12
    # float64 on both paths: only summation order differs
    assert metrics["energy_mae_meV"] == pytest.approx(np.abs(energy_error).mean(), rel=1e-9)
    assert metrics["energy_rmse_meV"] == pytest.approx(np.sqrt((energy_error**2).mean()), rel=1e-9)
    assert metrics["energy_mae_meV_per_atom"] == pytest.approx(np.abs(energy_error).mean() / 9, rel=1e-9)
    assert metrics["forces_mae_meV_per_A"] == pytest.approx(np.abs(force_errors).mean(), rel=1e-9)
    assert metrics["forces_rmse_meV_per_A"] == pytest.approx(np.sqrt((force_errors**2).mean()), rel=1e-9)
    for element in ("H", "C", "O"):
        mine = np.abs(force_errors[symbols == element]).mean()
        assert metrics["forces_per_element"][element]["mae_meV_per_A"] == pytest.approx(mine, rel=1e-9)
    assert "forces MAE C (24 atoms)" in result.output and "meV/Å" in result.output


def test_eval_parity_plot(model_file, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "parity.png"
    result = CliRunner().invoke(main, ["eval", str(model_file), str(ETHANOL), "--plot", str(plot),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_errors_are_one_line(model_file, tmp_path):
    runner = CliRunner()
    missing = runner.invoke(main, ["eval", str(tmp_path / "none.pt"), str(ETHANOL)])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    no_split = runner.invoke(main, ["eval", str(model_file), str(ETHANOL), "--subset", "test"])
    assert no_split.exit_code != 0 and "stores no split" in no_split.output
    hydrocarbon = tmp_path / "ch.pt"
    save_model(SchNet(["H", "C"], n_features=8, n_interactions=1, n_rbf=6), hydrocarbon)
    uncovered = runner.invoke(main, ["eval", str(hydrocarbon), str(ETHANOL)])
    assert uncovered.exit_code != 0 and "element(s) O not covered" in uncovered.output
    assert "Traceback" not in uncovered.output


def test_info_prints_the_record(model_file):
    result = CliRunner().invoke(main, ["info", str(model_file)])
    assert result.exit_code == 0, result.output
    assert "architecture      schnet" in result.output
    assert "species           H, C, O" in result.output
    assert "default_priority  3" in result.output
    assert "O -2041.000000 eV" in result.output
    as_json = CliRunner().invoke(main, ["info", str(model_file), "--json"])
    record = json.loads(as_json.output)
    assert record["hyperparameters"]["n_features"] == 8 and "state_dict" not in record


def test_info_of_a_trained_model_shows_split_and_metrics(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t.pt"
    trained = runner.invoke(main, ["train", str(ETHANOL), "--arch", "schnet", "-o", str(out), "--features", "8",
                                   "--interactions", "1", "--epochs", "1", "--n-val", "5", "--n-test", "5",
                                   "--device", "cpu", "-q"])
    assert trained.exit_code == 0, trained.output
    result = runner.invoke(main, ["info", str(out)])
    assert "split             train 40, val 5, test 5" in result.output
    assert "test set metrics" in result.output
    # eval of the stored test split reproduces the stored test metrics
    evaluated = runner.invoke(main, ["eval", str(out), str(ETHANOL), "--subset", "test", "--json",
                                     str(tmp_path / "m.json")])
    assert evaluated.exit_code == 0, evaluated.output
    stored = json.loads(runner.invoke(main, ["info", str(out), "--json"]).output)["metadata"]["metrics"]["test"]
    assert json.loads((tmp_path / "m.json").read_text())["forces_mae_meV_per_A"] == pytest.approx(
        stored["forces_mae_meV_per_A"], rel=1e-5)


def test_version_is_written_once_in_pyproject(monkeypatch):
    tomllib = pytest.importorskip("tomllib")
    from importlib import metadata

    from ase_mlff import __version__, _version

    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mlff-md, version {declared}"

    # a source tree that was never installed still knows its version
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_version.metadata, "version", not_installed)
    assert _version._version() == declared
