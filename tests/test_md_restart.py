"""Nothing is lost: restarts repeat the uninterrupted run, killed and stopped runs leave readable files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import ase.io
import h5py
import numpy as np
import pytest
from test_md_fixtures import ar_files, frames, invoke  # noqa: F401

from ase_mlff.md.h5 import FRAME_FIELDS, read_frames

RUN_AR = ("run", "--timestep-fs", "5", "--temperature", "30", "--seed", "11", "-q")


def assert_same_frames(a, b, upto=None):
    """Bit-for-bit: the restart starts from the exact float64 positions and momenta of the
    checkpoint and repeats the same floating-point operations (same machine, same threads)."""
    for name in FRAME_FIELDS:
        x, y = frames(a, name), frames(b, name)
        if upto is not None:
            x, y = x[: upto + 1], y[: upto + 1]
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("ensemble", ["nve", "langevin", "bussi", "nose-hoover"])
def test_restart_reproduces_uninterrupted_run(tmp_path, ar_files, ensemble):
    structure, model = ar_files
    common = (*RUN_AR, "--ensemble", ensemble, "-m", model)
    assert invoke(*common, structure, "--steps", 120, "-o", tmp_path / "full").exit_code == 0
    assert invoke(*common, structure, "--steps", 70, "-o", tmp_path / "part").exit_code == 0
    with h5py.File(tmp_path / "part.h5", "r") as f:
        assert f["checkpoint"].attrs["step"] == 70
    result = invoke("run", "-q", "--restart", tmp_path / "part.h5", "--steps", 120)
    assert result.exit_code == 0, result.output
    assert_same_frames(tmp_path / "full.h5", tmp_path / "part.h5")
    full = ase.io.read(tmp_path / "full.traj", ":")
    part = ase.io.read(tmp_path / "part.traj", ":")
    assert len(full) == len(part) == 13
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a.positions, b.positions)
    assert "restarted at step 70" in (tmp_path / "part.log").read_text()
    with h5py.File(tmp_path / "part.h5", "r") as f:
        assert f.attrs["status"] == "completed" and f.attrs["last_restart_step"] == 70


@pytest.mark.parametrize("ensemble", ["nve", "bussi"])
def test_restart_is_bit_for_bit_through_the_stored_sums(tmp_path, ar_files, ensemble, monkeypatch):
    """The edge vectors differentiated through what the kept lists store (neighbors.edge_vectors; only
    lists of ``REUSE_MIN_EDGES`` or more edges take it: this small one when lowered to 1) repeat the
    uninterrupted run bit for bit too: their sums are deterministic."""
    from ase_mlff import neighbors

    calls = []
    reused = neighbors._reused_edge_vectors
    monkeypatch.setattr(neighbors, "REUSE_MIN_EDGES", 1)
    monkeypatch.setattr(neighbors, "_reused_edge_vectors", lambda *a: calls.append(1) or reused(*a))
    structure, model = ar_files
    common = (*RUN_AR, "--ensemble", ensemble, "-m", model, "--traj-interval", "0")
    assert invoke(*common, structure, "--steps", 120, "-o", tmp_path / "full").exit_code == 0
    assert invoke(*common, structure, "--steps", 70, "-o", tmp_path / "part").exit_code == 0
    result = invoke("run", "-q", "--restart", tmp_path / "part.h5", "--steps", 120)
    assert result.exit_code == 0, result.output
    assert len(calls) >= 240  # every force call of the three runs
    assert_same_frames(tmp_path / "full.h5", tmp_path / "part.h5")


def test_restart_refuses_a_different_model_and_a_finished_run(tmp_path, ar_files):
    from ase_mlff import save_model
    from ase_mlff.models import LennardJones

    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 20, "-o", tmp_path / "r").exit_code == 0
    result = invoke("run", "--restart", tmp_path / "r.h5")
    assert result.exit_code == 1 and "already reached step 20" in result.output
    result = invoke("run", "--restart", tmp_path / "r.h5", "--steps", 40, "--ensemble", "langevin",
                    "--temperature", 10)
    assert result.exit_code == 2 and "drop --ensemble, --temperature (" in result.output
    save_model(LennardJones(["Ar"], epsilon=0.02, sigma=3.4), model)  # the file changes
    result = invoke("run", "--restart", tmp_path / "r.h5", "--steps", 40)
    assert result.exit_code == 1 and "not the model this run started with" in result.output


def _start(tmp_path, structure, model, prefix, steps):
    env = dict(os.environ, MLFF_NUM_THREADS="1")
    args = [sys.executable, "-m", "ase_mlff.cli", *RUN_AR, str(structure), "-m", str(model),
            "--steps", str(steps), "-o", str(tmp_path / prefix), "--flush-every", "1",
            "--log-interval", "10"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(log, step, process, timeout=180.0):
    """Wait until the run has logged ``step`` (the log is line-buffered)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        if log.exists():
            rows = [line for line in log.read_text().splitlines() if line and not line.startswith("#")]
            if rows and int(rows[-1].split()[0]) >= step:
                return
        time.sleep(0.2)
    process.kill()
    process.communicate()
    raise AssertionError(f"no step {step} in {log} after {timeout} s")


def test_sigkill_leaves_readable_file_that_restarts(tmp_path, ar_files):
    structure, model = ar_files
    process = _start(tmp_path, structure, model, "killed", 10_000_000)
    _wait_for_step(tmp_path / "killed.log", 150, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)  # reaps it and closes the pipes
    assert process.returncode == -signal.SIGKILL
    # readable with h5py, the reader and ase.io; a kill inside a flush can leave datasets resized past
    # the last n_frames written, and the readers then stop at n_frames (test_h5_readers_stop_at_n_frames)
    with h5py.File(tmp_path / "killed.h5", "r") as f:
        assert f.attrs["status"] == "running"
        # the system's count is what the readers go by; a flush updates it before the file's total,
        # so a kill between the two leaves the total one flush behind (seen under load), never ahead
        n = f["systems/0"].attrs["n_frames"]
        assert f.attrs["n_frames"] <= n
        assert n >= 10
        assert min(f["systems/0/frames"][name].shape[0] for name in FRAME_FIELDS) >= n
        checkpoint = int(f["checkpoint"].attrs["step"])
        steps = f["systems/0/frames/step"][:n]
    np.testing.assert_array_equal(steps, np.arange(0, 10 * n, 10))
    # the frames reach the disk before the checkpoint pointer moves, so the checkpoint is the last
    # recorded frame or, killed between the two (test_kill_between_frames_and_checkpoint_pointer),
    # the one before it, whose later frames the restart drops and writes again
    assert checkpoint in steps[-2:]
    assert len(read_frames(tmp_path / "killed.h5")) == n
    assert len(ase.io.read(tmp_path / "killed.h5", ":")) == n
    assert len(ase.io.read(tmp_path / "killed.traj", ":")) >= 1
    # and the run continues from it as if nothing happened
    final = checkpoint + 40
    result = invoke("run", "-q", "--restart", tmp_path / "killed.h5", "--steps", final)
    assert result.exit_code == 0, result.output
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", final, "-o", tmp_path / "ref").exit_code == 0
    assert_same_frames(tmp_path / "ref.h5", tmp_path / "killed.h5")
    assert len(ase.io.read(tmp_path / "killed.traj", ":")) == len(ase.io.read(tmp_path / "ref.traj", ":"))


def test_kill_between_frames_and_checkpoint_pointer(tmp_path, ar_files, monkeypatch):
    """The window a SIGKILL can hit in every flush, made deterministic: a copy of the file taken
    right after the flush that puts the frames and the new checkpoint slot on disk, before the
    pointer to that slot moves. It must hold the previous checkpoint, and restart from it to the
    uninterrupted run's frames (the frame past the checkpoint dropped and written again)."""
    import shutil

    from ase_mlff.md.h5 import H5Writer, read_checkpoint

    structure, model = ar_files
    snapshot = tmp_path / "killed.h5"
    original = H5Writer._write_checkpoint

    def write_checkpoint(self, state):
        if state["step"] != 40:
            return original(self, state)
        flush = self.file.flush

        def flush_and_copy():
            flush()
            shutil.copy(self.path, snapshot)  # what the kernel holds of the file at this moment

        self.file.flush = flush_and_copy
        try:
            original(self, state)
        finally:
            del self.file.flush

    monkeypatch.setattr(H5Writer, "_write_checkpoint", write_checkpoint)
    common = (*RUN_AR, structure, "-m", model, "--flush-every", "1", "--traj-interval", "0")
    assert invoke(*common, "--steps", 60, "-o", tmp_path / "run").exit_code == 0
    monkeypatch.undo()
    with h5py.File(snapshot, "r") as f:
        assert int(f["systems/0"].attrs["n_frames"]) == 5  # steps 0..40
        assert f["systems/0/frames/step"][4] == 40
    assert read_checkpoint(snapshot)["step"] == 30
    shutil.copy(tmp_path / "run.log", tmp_path / "killed.log")
    result = invoke("run", "-q", "--restart", snapshot, "--steps", 60)
    assert result.exit_code == 0, result.output
    assert "restarted at step 30" in (tmp_path / "killed.log").read_text()
    assert_same_frames(tmp_path / "run.h5", snapshot)


def test_sigterm_closes_files_cleanly(tmp_path, ar_files):
    structure, model = ar_files
    process = _start(tmp_path, structure, model, "term", 10_000_000)
    _wait_for_step(tmp_path / "term.log", 100, process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    with h5py.File(tmp_path / "term.h5", "r") as f:
        assert f.attrs["status"] == "interrupted"
        stop = int(f.attrs["last_step"])
        assert int(f["checkpoint"].attrs["step"]) == stop
        assert f["systems/0/frames/step"][-1] == stop - stop % 10
    assert "# interrupted: stopped by SIGTERM" in (tmp_path / "term.log").read_text()
    assert len(ase.io.read(tmp_path / "term.traj", ":")) == stop // 10 + 1


def test_sigint_stops_at_a_step_boundary_and_restarts(tmp_path):
    """Ctrl-C during a force call: the step finishes, files close with a consistent checkpoint."""
    from test_md_fixtures import AR_EPSILON, AR_SIGMA, argon_cluster

    from ase_mlff import MLFFCalculator
    from ase_mlff.md import restart_md, run_md
    from ase_mlff.models import LennardJones

    class Interrupting(LennardJones):
        calls = 0

        def forward(self, *args):
            energies = super().forward(*args)
            Interrupting.calls += 1
            if Interrupting.calls == 35:
                os.kill(os.getpid(), signal.SIGINT)
            return energies

    def lj():
        return MLFFCalculator(Interrupting(["Ar"], AR_EPSILON, AR_SIGMA, cutoff=3 * AR_SIGMA), dtype="float64")

    previous = signal.getsignal(signal.SIGINT)
    result = run_md(argon_cluster(), lj(), timestep_fs=5.0, temperature_K=30.0, steps=80, seed=2,
                    output=tmp_path / "int", handle_signals=True)
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    assert result.status == "interrupted" and "SIGINT" in result.message and result.exit_code == 130
    assert result.last_step == 34  # call k computes step k-1; the stop comes right after it
    with h5py.File(tmp_path / "int.h5", "r") as f:
        assert f.attrs["status"] == "interrupted" and f["checkpoint"].attrs["step"] == 34
    Interrupting.calls = -10**9  # no more interrupts
    assert restart_md(tmp_path / "int.h5", lj()).status == "completed"
    Interrupting.calls = -10**9
    run_md(argon_cluster(), lj(), timestep_fs=5.0, temperature_K=30.0, steps=80, seed=2,
           output=tmp_path / "ref")
    assert_same_frames(tmp_path / "ref.h5", tmp_path / "int.h5")


def test_h5_readers_stop_at_n_frames(tmp_path, ar_files):
    """As a SIGKILL inside a flush leaves it: one dataset resized and written past n_frames."""
    from ase_mlff.md.h5 import read_series

    structure, model = ar_files
    assert invoke(*RUN_AR, structure, "-m", model, "--steps", 40, "-o", tmp_path / "k").exit_code == 0
    with h5py.File(tmp_path / "k.h5", "r+") as f:
        n = int(f["systems/0"].attrs["n_frames"])
        step = f["systems/0/frames/step"]
        step.resize(n + 1, axis=0)
        step[n] = 10 * n
    assert len(read_series(tmp_path / "k.h5")["step"]) == n
    assert len(read_frames(tmp_path / "k.h5")) == n
    assert len(ase.io.read(tmp_path / "k.h5", ":")) == n
