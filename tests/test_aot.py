"""Ahead-of-time packages of the compiled evaluation (ase_mlff.aot): built once, loaded by later
processes, equal to the eager evaluation, and never in the way when they cannot be made."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ethanol, make_model, water

from ase_mlff import MLFFCalculator, aot, save_model
from ase_mlff.compiled import CompiledModel

ROOT = Path(__file__).resolve().parents[1]


def _compare(model, structures, tol):
    eager, fast = MLFFCalculator(model, dtype="float32"), MLFFCalculator(model, dtype="float32", compile=True)
    for atoms in structures:
        atoms.calc = eager
        expected = atoms.get_forces(), atoms.get_potential_energy()
        atoms.calc = fast
        np.testing.assert_allclose(atoms.get_forces(), expected[0], rtol=0, atol=tol)
        assert atoms.get_potential_energy() == pytest.approx(expected[1], abs=tol)
    return fast


@pytest.mark.parametrize("architecture", ["painn", "schnet"])
def test_a_package_is_built_once_equals_eager_and_is_loaded_by_the_next_process(tmp_path, monkeypatch,
                                                                               architecture):
    monkeypatch.setenv("MLFF_COMPILE_CACHE", str(tmp_path / "aoti"))
    model = make_model(architecture, dtype=torch.float32)
    # sizes other than the traced ones (the package is traced on two copies of the first batch)
    fast = _compare(model, [ethanol(0), ethanol(2)], tol=2e-4)
    # more structures in one call than the package was traced with (two copies of one)
    batch = [ethanol(k) for k in range(3)] * 2
    expected = MLFFCalculator(model, dtype="float32").calculate_batch(batch)
    for got, want in zip(fast.calculate_batch(batch), expected):
        np.testing.assert_allclose(got["forces"], want["forces"], rtol=0, atol=2e-4)
        assert got["energy"] == pytest.approx(want["energy"], abs=2e-4)
    assert isinstance(fast.evaluator, CompiledModel)
    packages = list((tmp_path / "aoti").glob("*.pt2"))
    assert len(packages) == 1 and not list((tmp_path / "aoti").glob("*.failed"))
    assert [p for p in fast.evaluator._packages.values() if p is not None]  # answered by the package
    assert not fast.evaluator._graphs  # torch.compile never ran
    built = packages[0].stat().st_mtime_ns
    # a new process with the same model file loads the package instead of building one
    path = save_model(model, tmp_path / "painn.pt")
    script = ("import sys; from ase_mlff import MLFFCalculator; from conftest import ethanol; "
              "c = MLFFCalculator(sys.argv[1], dtype='float32', compile=True); a = ethanol(1); a.calc = c; "
              "a.get_forces(); e = c.evaluator; "
              "print(len(e._graphs), sum(p is not None for p in e._packages.values()))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]
    assert packages[0].stat().st_mtime_ns == built and len(list((tmp_path / "aoti").glob("*.pt2"))) == 1


def test_a_model_that_cannot_be_packaged_runs_under_torch_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFF_COMPILE_CACHE", str(tmp_path / "aoti"))
    calls = []

    def cannot(*args):
        calls.append(1)
        raise RuntimeError("data-dependent branch")

    monkeypatch.setattr(aot, "_build", cannot)
    model = make_model("schnet", species=("H", "O"), dtype=torch.float32)
    fast = _compare(model, [water(0), water(1)], tol=5e-4)
    assert calls == [1]  # tried once, then the note on disk is believed
    (note,) = (tmp_path / "aoti").glob("*.failed")
    assert "data-dependent branch" in note.read_text()
    assert fast.evaluator._graphs  # torch.compile took over
    again = water(0)
    again.calc = MLFFCalculator(model, dtype="float32", compile=True)  # a new evaluator, the same note
    again.get_forces()
    assert calls == [1]


def test_packages_can_be_switched_off_and_keys_follow_what_the_graph_depends_on(monkeypatch):
    monkeypatch.setenv("MLFF_COMPILE_CACHE", "off")
    assert aot.cache_dir() is None
    a, b = make_model("painn", dtype=torch.float32), make_model("painn", seed=1, dtype=torch.float32)
    kind = (True, False, False, torch.float32)
    cpu = torch.device("cpu")
    assert aot.key(a, kind, cpu) == aot.key(b, kind, cpu)  # weights are inputs, not part of the package
    assert aot.key(a, kind, cpu) != aot.key(a, (True, True, True, torch.float32), cpu)
    assert aot.key(a, kind, cpu) != aot.key(make_model("schnet", dtype=torch.float32), kind, cpu)
    threads = torch.get_num_threads()  # inductor's CPU kernels are generated for a thread count
    try:
        torch.set_num_threads(threads + 1)
        other = aot.key(a, kind, cpu)
    finally:
        torch.set_num_threads(threads)
    assert other != aot.key(a, kind, cpu)
    monkeypatch.delenv("MLFF_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert aot.cache_dir() == Path("/somewhere/ase-mlff/aoti")


def test_a_first_call_without_pairs_does_not_rule_a_package_out(tmp_path, monkeypatch):
    # a lone atom cannot seed a package (no edges to export): that call is answered without one, and
    # the next batch with pairs builds the package instead of finding a "failed" note
    from ase import Atoms

    monkeypatch.setenv("MLFF_COMPILE_CACHE", str(tmp_path / "aoti"))
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: function)  # torch.compile's answer, eagerly
    model = make_model("painn", dtype=torch.float32)
    calc = MLFFCalculator(model, dtype="float32", compile=True)
    lone = Atoms("H", positions=[[0.0, 0.0, 0.0]])
    lone.calc = calc
    assert np.all(lone.get_forces() == 0)
    assert not (tmp_path / "aoti").exists() or not list((tmp_path / "aoti").iterdir())
    atoms = ethanol(0)
    atoms.calc = calc
    atoms.get_forces()
    assert len(list((tmp_path / "aoti").glob("*.pt2"))) == 1 and not list((tmp_path / "aoti").glob("*.failed"))


def test_each_size_branch_of_a_model_gets_its_own_package_traced_on_that_branch(tmp_path, monkeypatch):
    # PaiNN evaluates its filters once per pair from pairwise_min_edges edges on; a package is traced on
    # two copies of its first batch, which may cross that size, and keeps the branch it was traced on.
    # The branch of the batch itself is the one traced, and a larger batch gets a package of its own.
    import ase_mlff.models.painn as painn

    monkeypatch.setenv("MLFF_COMPILE_CACHE", str(tmp_path / "aoti"))
    traced = []
    real = painn.one_edge_per_pair
    monkeypatch.setattr(painn, "one_edge_per_pair", lambda *a: traced.append(1) or real(*a))
    model = make_model("painn", dtype=torch.float32)
    one = ethanol(0)
    from ase_mlff.batch import atoms_to_batch
    from ase_mlff.neighbors import NeighborList

    n_edges = NeighborList(model.cutoff)(atoms_to_batch([one])).edge_index.shape[1]
    model.pairwise_min_edges = n_edges + 1  # one molecule below, two copies above
    assert not model.pairwise(n_edges) and model.pairwise(2 * n_edges)
    fast = MLFFCalculator(model, dtype="float32", compile=True)
    eager = MLFFCalculator(model, dtype="float32")
    one.calc = fast
    forces = one.get_forces()
    assert traced == []  # per-edge filters in the package, as the eager call of this size
    one.calc = eager
    np.testing.assert_allclose(forces, one.get_forces(), rtol=0, atol=2e-4)
    batch = [ethanol(1), ethanol(2)]
    got = fast.calculate_batch(batch)
    assert traced  # the second package is traced on the pair-wise branch
    want = eager.calculate_batch(batch)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g["forces"], w["forces"], rtol=0, atol=2e-4)
    assert len(list((tmp_path / "aoti").glob("*.pt2"))) == 2
    assert not fast.evaluator._graphs  # both answered by packages
    kind, cpu = (True, False, False, torch.float32), torch.device("cpu")
    assert aot.key(model, kind, cpu, False) != aot.key(model, kind, cpu, True)


def test_torch_compile_traces_the_pair_wise_branch_in_one_graph(monkeypatch):
    # the once-per-pair selection is a nonzero (its size depends on the data); a graph break there
    # used to leave torch.func.grad, and so the whole evaluation, to run eagerly (CUDA always takes
    # this path; the CPU where packages are off)
    from torch._dynamo.utils import counters

    monkeypatch.setenv("MLFF_COMPILE_CACHE", "off")
    model = make_model("painn", dtype=torch.float32)
    model.pairwise_min_edges = 1  # every call pair-wise
    breaks = sum(counters["graph_break"].values())
    fast = _compare(model, [ethanol(0), ethanol(1)], tol=2e-4)
    assert fast.evaluator._graphs and not [p for p in fast.evaluator._packages.values() if p is not None]
    assert sum(counters["graph_break"].values()) == breaks
