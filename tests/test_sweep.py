"""Hyperparameter sweeps: space files, pruning through the trainer's callback, and two
processes sharing one SQLite study."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

optuna = pytest.importorskip("optuna")  # the [test] extra installs it; CI runs these tests

from ase_mlff.cli import main  # noqa: E402
from ase_mlff.io import load_model, read_model_record  # noqa: E402
from ase_mlff.training import sweep as sweeps  # noqa: E402
from ase_mlff.training.data import read_dataset  # noqa: E402
from ase_mlff.training.splits import random_split  # noqa: E402

DATA = Path(__file__).parent / "data"
ETHANOL = DATA / "ethanol_rmd17_50frames.extxyz.gz"
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--arch", "schnet", "--set", "interactions=1", "--set", "rbf=6", "--set", "epochs=2",
        "--n-val", "5", "--n-test", "5", "--device", "cpu", "--threads", "1"]


def test_space_files_toml_and_json_agree(tmp_path):
    (tmp_path / "s.toml").write_text('lr = { low = 1e-4, high = 1e-2, log = true }\n'
                                     'batch_size = [5, 10]\nfeatures = { low = 8, high = 32, step = 8 }\n')
    (tmp_path / "s.json").write_text(json.dumps({"lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                 "batch_size": [5, 10],
                                                 "features": {"low": 8, "high": 32, "step": 8}}))
    toml, js = sweeps.load_space(tmp_path / "s.toml"), sweeps.load_space(tmp_path / "s.json")
    assert toml == js
    by_name = {p.name: p for p in toml}
    assert by_name["learning_rate"].log and not by_name["learning_rate"].integer
    assert by_name["n_features"].integer and by_name["batch_size"].choices == (5, 10)
    with pytest.raises(ValueError, match="learning_rate, n_features are ranges"):
        sweeps.grid(toml)
    assert sweeps.grid(sweeps.parse_space({"batch_size": [5, 10], "beta": [0.9]})) == {
        "batch_size": [5, 10], "loss_beta": [0.9]}


@pytest.mark.parametrize("table, message", [
    ({"learning_rat": [1e-3]}, "'learning_rat' is not a hyperparameter"),
    ({"seed": [1, 2]}, "'seed' is not a hyperparameter"),
    ({"lr": {"low": 1e-2, "high": 1e-4}}, "need low <= high"),
    ({"lr": {"low": 0, "high": 1e-2, "log": True}}, "low > 0 with log"),
    ({"lr": {"lo": 1, "high": 2}}, "a range is"),
    ({"lr": []}, "at least one"),
    ({"lr": 1e-3}, "give a list of values or a range"),
    ({"beta": [0.9], "forces_weight": [1.0]}, "search either beta or the weights"),
    ({"lr": [1e-3], "learning_rate": [1e-4]}, "both set learning_rate"),
    ({}, "expected a table"),
])
def test_bad_spaces_are_one_line_errors(table, message):
    with pytest.raises(ValueError, match=message):
        sweeps.parse_space(table)


def test_bad_space_file(tmp_path):
    (tmp_path / "s.toml").write_text("lr = [1e-3")
    with pytest.raises(ValueError, match="not valid TOML"):
        sweeps.load_space(tmp_path / "s.toml")
    (tmp_path / "s.yaml").write_text("lr: [1]")
    with pytest.raises(ValueError, match=r"\.toml or \.json"):
        sweeps.load_space(tmp_path / "s.yaml")


def test_the_pruner_stops_a_trial_through_the_epoch_callback(tmp_path):
    data = read_dataset(ETHANOL)
    split = random_split(len(data), n_val=5, n_test=0, seed=0)
    base = sweeps.base_settings({"architecture": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 6,
                                 "max_epochs": 4, "device": "cpu"})
    job = sweeps.Sweep(data, split, sweeps.parse_space({"lr": [1e-3]}), base, tmp_path, echo=lambda line: None)

    # no pruning: one reported value per epoch, the validation forces MAE of the trainer's log
    study = optuna.create_study(pruner=optuna.pruners.NopPruner())
    study.optimize(job.objective, n_trials=1)
    trial = study.trials[0]
    log = np.genfromtxt(tmp_path / "trial_0000" / "model.log.csv", delimiter=",", names=True)
    assert trial.state.name == "COMPLETE" and sorted(trial.intermediate_values) == [1, 2, 3, 4]
    np.testing.assert_allclose([trial.intermediate_values[k] for k in (1, 2, 3, 4)],
                               log["val_forces_mae_meV_per_A"], rtol=1e-3)
    assert trial.value == pytest.approx(trial.user_attrs["val_forces_mae_meV_per_A"])

    # a pruner that prunes any error above 0 stops the trial after its first epoch
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    job.output = tmp_path / "pruned"
    study.optimize(job.objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and trial.user_attrs["epochs"] == 1
    assert trial.user_attrs["stopped_because"] == "pruned"


def _sweep(out, *extra) -> list[str]:
    return [sys.executable, "-m", "ase_mlff.cli", "sweep", str(ETHANOL), "--space", str(out.parent / "space.json"),
            "-o", str(out), *TINY, *extra]


def test_two_processes_share_one_sqlite_study(tmp_path):
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 1e-4, "high": 3e-3, "log": True},
                                                     "features": [8, 12]}))
    out = tmp_path / "study"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # one sweep in a subprocess, the other in this process at the same time (one interpreter
    # start fewer: the test stays short on a loaded machine)
    other = subprocess.Popen(_sweep(out, "--trials", "2", "--trial-time", "60", "--sampler-seed", "1"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    mine = CliRunner().invoke(main, _sweep(out, "--trials", "2", "--trial-time", "60", "--sampler-seed", "2")[3:])
    output = other.communicate(timeout=240)[0]
    assert other.returncode == 0, output
    assert mine.exit_code == 0, mine.output
    if len((out / "trials.csv").read_text().splitlines()) < 5:  # this process finished first: table again
        sweeps.write_results(optuna.load_study(study_name="mlff-sweep",
                                               storage=sweeps.storage_for(f"sqlite:///{out / 'study.db'}")),
                             out, echo=lambda line: None)

    storage = sweeps.storage_for(f"sqlite:///{out / 'study.db'}")
    study = optuna.load_study(study_name="mlff-sweep", storage=storage)
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert sorted(p.name for p in out.glob("trial_*")) == [f"trial_{k:04d}" for k in range(4)]
    for trial in study.trials:  # each trial trained with its own hyperparameters and the time budget
        config = read_model_record(Path(trial.user_attrs["folder"]) / "model.pt")["metadata"]["training"]["config"]
        assert config["n_features"] == trial.params["n_features"]
        assert config["learning_rate"] == pytest.approx(trial.params["learning_rate"])
        assert config["max_time_min"] == pytest.approx(1.0)
    # the last process to finish saw all four trials; its table lists them and best.pt is the best one
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("trial,state,")
    best = min((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    best_model = load_model(out / "best.pt")
    assert best_model.metadata["training"]["config"]["n_features"] == best.params["n_features"]
    assert (out / "learning_curves.png").stat().st_size > 1000
    assert (out / "hyperparameters.png").stat().st_size > 1000


def test_sweep_cli_errors(tmp_path, monkeypatch):
    runner = CliRunner()
    (tmp_path / "space.json").write_text(json.dumps({"lr": {"low": 1e-4, "high": 1e-2}}))
    base = ["sweep", str(ETHANOL), "--space", str(tmp_path / "space.json"), "-o", str(tmp_path / "s")]
    result = runner.invoke(main, [*base, "--sampler", "grid"])
    assert result.exit_code != 0 and "grid sampler needs a list" in result.output
    result = runner.invoke(main, [*base, "--set", "no_such=1"])
    assert result.exit_code != 0 and "--set no_such: no such setting" in result.output
    # a study folder holds one study on one data set
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({"study_name": "other", "data_sha256": "x"}))
    result = runner.invoke(main, [*base, *TINY, "--trials", "1"])
    assert result.exit_code != 0 and "holds study 'other'" in result.output
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if optuna were not installed
    result = runner.invoke(main, base)
    assert result.exit_code != 0 and 'pip install "ase-mlff[sweep]"' in result.output


def test_sweep_trains_every_trial_on_the_split_given(tmp_path):
    # --split: the frames of a given split (as mlff-md train --split takes), recorded in sweep.json;
    # a second run into the same folder with another split is refused before any trial
    (tmp_path / "space.json").write_text(json.dumps({"lr": [1e-3]}))
    split = {"train": list(range(10, 30)), "val": list(range(40, 46)), "test": list(range(0, 5))}
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "study"
    runner = CliRunner()
    result = runner.invoke(main, _sweep(out, "--split", str(tmp_path / "split.json"), "--sampler", "grid")[3:])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "sweep.json").read_text())
    assert (stored["train"], stored["val"], stored["test"]) == (split["train"], split["val"], split["test"])
    trained = read_model_record(out / "best.pt")["metadata"]["training"]["split"]  # what the trial trained on
    assert (trained["train"], trained["val"], trained["test"]) == (split["train"], split["val"], split["test"])
    (tmp_path / "other.json").write_text(json.dumps({**split, "val": list(range(40, 47))}))
    result = runner.invoke(main, _sweep(out, "--split", str(tmp_path / "other.json"), "--sampler", "grid")[3:])
    assert result.exit_code != 0 and "another split than" in result.output
    (tmp_path / "outside.json").write_text(json.dumps({**split, "val": [10_000]}))
    result = runner.invoke(main, _sweep(tmp_path / "s2", "--split", str(tmp_path / "outside.json"))[3:])
    assert result.exit_code != 0 and "10000" in result.output


def test_sweep_split_tag_is_the_split_train_draws(tmp_path):
    # --split-tag/--val-block as mlff-md train takes them: the study trains on the same frames
    # that `mlff-md train --split-tag` with the same options and seed would use
    from ase_mlff.training.data import read_dataset
    from ase_mlff.training.splits import tagged_split

    (tmp_path / "space.json").write_text(json.dumps({"lr": [1e-3]}))
    out = tmp_path / "study"
    tag = ["--split-tag", "rmd17_splits:train01:test01", "--val-block", "5", "--n-val", "5"]
    result = CliRunner().invoke(main, _sweep(out, "--sampler", "grid", *tag)[3:])
    assert result.exit_code == 0, result.output
    stored = json.loads((out / "sweep.json").read_text())
    expected = tagged_split([str(info["rmd17_splits"]) for info in read_dataset(ETHANOL).info],
                            "train01", "test01", n_val=5, val_block=5, seed=0)
    assert (stored["train"], stored["val"], stored["test"]) == (expected.train, expected.val, expected.test)
    assert len(stored["train"]) == 30 and len(stored["test"]) == 5
    bad = CliRunner().invoke(main, _sweep(tmp_path / "s2", "--split-tag", "rmd17_splits:train01")[3:])
    assert bad.exit_code != 0 and "expected KEY:TRAIN:TEST" in bad.output
    (tmp_path / "split.json").write_text(json.dumps({"train": [1, 2], "val": [3]}))
    both = CliRunner().invoke(main, _sweep(tmp_path / "s3", *tag, "--split", str(tmp_path / "split.json"))[3:])
    assert both.exit_code != 0 and "both choose the split: give one" in both.output
