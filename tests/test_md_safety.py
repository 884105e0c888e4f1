"""Nothing lost, nothing silently wrong: live outputs, damaged files, real verdicts (issue 8)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from test_md_fixtures import AR_EPSILON, AR_SIGMA, ar_files, frames, invoke, one_line_error  # noqa: F401

from ase_mlff.md.lock import OutputLock
from ase_mlff.models import LennardJones

RUN_AR = ("run", "--timestep-fs", "5", "--temperature", "30", "--seed", "7", "-q")


def _snapshot(folder, prefix):
    return {p.name: p.read_bytes() if p.is_file() else "folder" for p in folder.glob(f"{prefix}.*")
            if p.suffix != ".lock"}


def test_restart_or_overwrite_into_a_live_run_is_refused_before_anything_is_touched(tmp_path, ar_files):
    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 40, "-o", tmp_path / "live").exit_code == 0
    before = _snapshot(tmp_path, "live")
    with OutputLock(tmp_path / "live.lock"):  # as a run that is still going holds it
        line = one_line_error(invoke("run", "-q", "--restart", tmp_path / "live.h5", "--steps", 80))
        assert "another run" in line and "pid" in line
        line = one_line_error(invoke(*RUN_AR, structure, "-m", model, "--steps", 40, "-o", tmp_path / "live",
                                     "--overwrite"))
        assert "another run" in line
        assert _snapshot(tmp_path, "live") == before
    # once it is gone, the restart goes ahead
    assert invoke("run", "-q", "--restart", tmp_path / "live.h5", "--steps", 80).exit_code == 0
    assert not (tmp_path / "live.lock").exists()


def test_overwrite_when_an_output_is_a_folder_deletes_nothing(tmp_path, ar_files):
    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 20, "-o", tmp_path / "f").exit_code == 0
    (tmp_path / "f.log").unlink()
    (tmp_path / "f.log").mkdir()
    before = _snapshot(tmp_path, "f")
    line = one_line_error(invoke(*RUN_AR, structure, "-m", model, "--steps", 20, "-o", tmp_path / "f",
                                 "--overwrite"))
    assert "is a directory" in line
    assert _snapshot(tmp_path, "f") == before


def test_output_prefix_forms(tmp_path, ar_files):
    structure, model = ar_files
    out = tmp_path / "out"
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 10, "-o", f"{out}/").exit_code == 0
    assert (out / "simulation.h5").exists() and not (out / ".h5").exists()
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 10, "-o", tmp_path / "b.hdf5").exit_code == 0
    assert (tmp_path / "b.h5").exists()


def test_unwritable_output_folder_is_one_line(tmp_path, ar_files):
    structure, model = ar_files
    line = one_line_error(invoke(*RUN_AR, structure, "-m", model, "--steps", 10, "-o", "/sys/run"))
    assert "cannot write outputs into /sys" in line
    line = one_line_error(invoke(*RUN_AR, structure, "-m", model, "--device", "meta"))
    assert "meta devices are not supported" in line


@pytest.mark.parametrize("damage", ["format_version", "frames", "checkpoint"])
def test_damaged_run_files_give_one_line(tmp_path, ar_files, damage):
    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 20, "-o", tmp_path / "d").exit_code == 0
    with h5py.File(tmp_path / "d.h5", "a") as f:
        if damage == "format_version":
            f.attrs["format_version"] = "two"
        elif damage == "frames":
            del f["systems/0/frames"]
        else:
            del f["checkpoint"][f["checkpoint"].attrs["slot"]]["momenta"]
    for args in (("report", tmp_path / "d.h5"), ("convert", tmp_path / "d.h5", tmp_path / "o.xyz"),
                 ("run", "-q", "--restart", tmp_path / "d.h5", "--steps", 40)):
        if damage == "checkpoint" and args[0] != "run":
            continue
        line = one_line_error(invoke(*args))
        assert "d.h5" in line, line


def test_report_plot_into_an_unwritable_path_is_refused_first(tmp_path, ar_files):
    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 20, "-o", tmp_path / "p").exit_code == 0
    line = one_line_error(invoke("report", tmp_path / "p.h5", "--plot", tmp_path / "missing" / "p.png"))
    assert "does not exist" in line


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_bad_drift_thresholds_and_timesteps(tmp_path, ar_files, value):
    structure, model = ar_files
    assert "--max-drift" in one_line_error(invoke(*RUN_AR, structure, "-m", model, "--max-drift", value))
    assert "--timestep-fs" in one_line_error(invoke("run", structure, "-m", model, "--timestep-fs", "inf"))


class _Drifting(LennardJones):
    """A broken potential whose energy creeps up by a constant every evaluation (forces unchanged):
    the total energy then drifts linearly, as with a non-conservative model."""

    def __init__(self):
        super().__init__(["Ar"], AR_EPSILON, AR_SIGMA)
        self.calls = 0

    def forward(self, numbers, edge_index, edge_vectors):
        self.calls += 1
        return super().forward(numbers, edge_index, edge_vectors) + 1e-5 * self.calls


def test_a_drifting_model_fails_the_check_and_exits_1(tmp_path):
    from test_md_fixtures import argon_cluster

    from ase_mlff import MLFFCalculator
    from ase_mlff.md import run_md

    # 1e-5 eV per atom per 5 fs step: 2 meV/atom/ps, twice the default threshold
    result = run_md(argon_cluster(), MLFFCalculator(_Drifting(), dtype="float64"), timestep_fs=5.0,
                    temperature_K=30.0, steps=400, seed=7, output=tmp_path / "dr")
    assert result.report.verdict == "FAIL" and result.exit_code == 1, result.report.format()
    with h5py.File(tmp_path / "dr.h5") as f:
        assert f["systems/0/report"].attrs["verdict"] == "FAIL" and f.attrs["energy_conservation"] == "FAIL"
    result = invoke("report", tmp_path / "dr.h5", "--max-drift", "10")
    assert result.exit_code == 0 and "PASS" in result.output
    total = frames(tmp_path / "dr.h5", "total_energy")
    assert np.all(np.diff(total) > 0)
