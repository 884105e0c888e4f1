"""The examples run from a clone alone: no data outside examples/, and the scripts work.

Each script runs in a temporary copy of examples/, where anything the copy
reaches outside itself (../../shared, the repository) is simply absent, through
the `mlff-md` console script of the current environment, with shortened
settings (EPOCHS, MAX_TIME, STEPS) so that the whole module takes well under
a minute on two cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.sh")) + sorted(EXAMPLES.glob("*.py"))
BIN = Path(sys.executable).parent

# A parent-directory step, the project's shared folder, or an absolute path
# (a "/" that starts a word after a quote, space, "=", "(" or ":"), e.g.
# ../../shared/data, /work/shared, DATA=/home/me/x. Units such as eV/Å do not match.
OUTSIDE = re.compile(r"\.\.[/\\]|\bshared/|(?:^|[\s\"'=(:])/[A-Za-z]")
# data files the examples name: structures and training data
DATA_NAME = re.compile(r"(?<![\w./])[\w.][\w./-]*\.(?:extxyz\.gz|extxyz|xyz)(?![\w.])")


def test_examples_exist():
    # the checks below loop over these; an empty glob would make them pass vacuously
    assert {p.name for p in SCRIPTS} >= {"train_eval_run.sh", "nve_ethanol.sh", "langevin_water.sh",
                                         "ethanol_calculator.py", "nve_check.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_no_path_outside_the_repository(script):
    # a reference to ../shared or an absolute path works on the author's machine only
    lines = script.read_text().splitlines()
    hits = [f"{script.name}:{k}: {line.strip()}" for k, line in enumerate(lines, 1)
            if not (k == 1 and line.startswith("#!")) and OUTSIDE.search(line)]
    assert not hits, "examples must use files inside examples/ only:\n" + "\n".join(hits)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_named_data_files_ship_with_the_examples(script):
    # names are relative to examples/ (where the shell scripts cd to) or, spelled
    # examples/..., to the repository root (the usage lines of the Python scripts)
    names = set(DATA_NAME.findall(script.read_text()))
    missing = [name for name in sorted(names)
               if not (EXAMPLES / name.removeprefix("examples/")).is_file()]
    assert not missing, f"{script.name} names {missing}, which are not in examples/"


def _run_copy(tmp_path: Path, script: str, **settings: str) -> subprocess.CompletedProcess:
    """Run examples/<script> from a copy of examples/ with its outputs left out."""
    copy = tmp_path / "examples"
    shutil.copytree(EXAMPLES, copy, ignore=shutil.ignore_patterns(
        "walkthrough*", "*.h5", "*.traj", "*.log", "*.png", "__pycache__"))
    assert (BIN / "mlff-md").exists(), f"no mlff-md console script next to {sys.executable}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           # one thread: these are 9-192 atom systems on a machine whose cores are shared
           "MLFF_NUM_THREADS": "1", **settings}
    # run from elsewhere: the scripts must find their inputs relative to themselves
    result = subprocess.run(["bash", str(copy / script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (f"{script} failed ({result.returncode})\n"
                                    f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def test_train_eval_run_walkthrough(tmp_path):
    # 1 epoch and 100 NVE steps: the model is poor (forces MAE ~0.9 eV/Å), but smooth; a FAIL of
    # the drift check would exit 1. Longer runs end in a blow-up, rightly: this model pulls two
    # atoms within 0.5 Å of each other at step 180 (with 5 epochs too)
    result = _run_copy(tmp_path, "train_eval_run.sh", EPOCHS="1", MAX_TIME="1", STEPS="100")
    copy = tmp_path / "examples"
    # the shipped subset gives the walk-through's split: 200 train01, 50 untagged, 54 test01 frames
    split = json.loads((copy / "walkthrough.split.json").read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (200, 50, 54)
    assert "stopped after 1 epochs" in result.stdout
    assert "test set" in result.stdout
    with h5py.File(copy / "walkthrough_nve.h5", "r") as h5:
        assert h5.attrs["status"] == "completed"
        assert int(h5.attrs["last_step"]) == 100
    assert "Energy conservation" in result.stdout


# NVE ends with a drift check that exits 1 on FAIL. Over a few fs the fitted
# slope is set by the energy's oscillation, not by drift (measured with the
# bundled PaiNN and seed 1: 1.8 meV/atom/ps at 100 steps, 0.21 at 200, 0.19 at
# 400; the report now calls runs this short UNDECIDED), so the NVE example runs
# 200 steps, inside the 1 meV/atom/ps limit either way; Langevin has no verdict.
@pytest.mark.parametrize("script, output, steps", [("nve_ethanol.sh", "nve_ethanol", 200),
                                                   ("langevin_water.sh", "langevin_water", 20)])
def test_md_example(tmp_path, script, output, steps):
    _run_copy(tmp_path, script, STEPS=str(steps))
    with h5py.File(tmp_path / "examples" / f"{output}.h5", "r") as h5:
        assert h5.attrs["status"] == "completed"
        assert int(h5.attrs["last_step"]) == steps
