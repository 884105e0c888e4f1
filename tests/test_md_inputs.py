"""Bad input to ``mlff-md run``: one clear line each, a non-zero exit, no traceback, no files."""

from __future__ import annotations

import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import write
from test_md_fixtures import ar_files, ethanol_files, invoke, one_line_error  # noqa: F401

RUN = ("run", "-q", "--seed", "1")


def _no_outputs(tmp_path, prefix="bad"):
    return not any(tmp_path.glob(f"{prefix}.*"))


def test_missing_structure(tmp_path, ar_files):
    _, model = ar_files
    line = one_line_error(invoke(*RUN, tmp_path / "nope.xyz", "-m", model, "-o", tmp_path / "bad"))
    assert "nope.xyz does not exist" in line
    assert _no_outputs(tmp_path)


def test_missing_structure_with_frame_index(tmp_path, ar_files):
    _, model = ar_files
    line = one_line_error(invoke(*RUN, f"{tmp_path / 'nope.traj'}@-1", "-m", model, "-o", tmp_path / "bad"))
    assert "nope.traj does not exist" in line


def test_unreadable_structure(tmp_path, ar_files):
    _, model = ar_files
    garbage = tmp_path / "garbage.xyz"
    garbage.write_text("this is\nnot a structure file\n")
    line = one_line_error(invoke(*RUN, garbage, "-m", model, "-o", tmp_path / "bad"))
    assert "could not read a structure from" in line and "xyz" in line
    assert _no_outputs(tmp_path)


def test_missing_model(tmp_path, ar_files):
    structure, _ = ar_files
    line = one_line_error(invoke(*RUN, structure, "-m", tmp_path / "none.pt", "-o", tmp_path / "bad"))
    assert "none.pt does not exist" in line and "bundled" in line


def test_element_not_covered(tmp_path, ar_files):
    _, model = ar_files
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    line = one_line_error(invoke(*RUN, structure, "-m", model, "-o", tmp_path / "bad"))
    assert "H, C, O not covered" in line and "Ar" in line and "ar-lj.pt" in line
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_non_positive_steps(tmp_path, ar_files, steps):
    structure, model = ar_files
    line = one_line_error(invoke(*RUN, structure, "-m", model, "--steps", steps, "-o", tmp_path / "bad"))
    assert "--steps" in line and "positive" in line
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize("timestep", ["0", "-0.5"])
def test_non_positive_timestep(tmp_path, ar_files, timestep):
    structure, model = ar_files
    line = one_line_error(invoke(*RUN, structure, "-m", model, "--timestep-fs", timestep,
                                 "-o", tmp_path / "bad"))
    assert "--timestep-fs" in line and "positive" in line


def test_large_timestep_with_hydrogen_warns(tmp_path, ethanol_files):
    structure, model = ethanol_files
    result = invoke(*RUN, structure, "-m", model, "--timestep-fs", "3", "--steps", "10",
                    "-o", tmp_path / "h", "--max-drift", "1e9")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "3 fs" in warnings[0] and "hydrogen" in warnings[0]
    # the same timestep without hydrogen is fine
    result = invoke(*RUN, structure, "-m", model, "--timestep-fs", "0.5", "--steps", "10",
                    "-o", tmp_path / "h2", "--max-drift", "1e9")
    assert "Warning" not in result.stderr


def test_overlapping_atoms(tmp_path, ethanol_files):
    _, model = ethanol_files
    atoms = molecule("CH3CH2OH")
    atoms.positions[3] = atoms.positions[0] + [0.1, 0.0, 0.0]
    structure = tmp_path / "overlap.xyz"
    write(structure, atoms)
    line = one_line_error(invoke(*RUN, structure, "-m", model, "-o", tmp_path / "bad"))
    assert "0.100 Å apart" in line and "overlapping" in line
    assert _no_outputs(tmp_path)


def test_overlap_across_periodic_boundary(tmp_path, ar_files):
    _, model = ar_files
    atoms = Atoms("Ar2", positions=[[0.1, 5, 5], [9.9, 5, 5]], cell=[10, 10, 10], pbc=True)
    structure = tmp_path / "pbc.extxyz"
    write(structure, atoms)
    line = one_line_error(invoke(*RUN, structure, "-m", model, "-o", tmp_path / "bad"))
    assert "0.200 Å apart" in line


def test_frame_past_the_end_and_bad_index(tmp_path, ar_files):
    structure, model = ar_files
    assert invoke(*RUN, structure, "-m", model, "--steps", "20", "--timestep-fs", "5",
                  "-o", tmp_path / "ok").exit_code == 0
    line = one_line_error(invoke(*RUN, f"{tmp_path / 'ok.traj'}@5", "-m", model, "-o", tmp_path / "bad"))
    assert "frame 5 does not exist" in line
    line = one_line_error(invoke(*RUN, f"{tmp_path / 'ok.traj'}@abc", "-m", model, "-o", tmp_path / "bad"))
    assert "not a frame index" in line


def test_input_velocities_missing(tmp_path, ar_files):
    structure, model = ar_files
    line = one_line_error(invoke(*RUN, structure, "-m", model, "--velocities", "input", "-o", tmp_path / "bad"))
    assert "no velocities" in line


def test_restart_from_non_mlff_file(tmp_path, ar_files):
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = [1, 2]
    line = one_line_error(invoke("run", "--restart", tmp_path / "other.h5"))
    assert "not an ase-mlff MD file" in line
    line = one_line_error(invoke("report", tmp_path / "missing.h5"))
    assert "does not exist" in line
