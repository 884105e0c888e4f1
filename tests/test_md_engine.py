"""The batched MD engine against independent references.

* a single system in float64 follows ASE's VelocityVerlet with MLFFCalculator step for step;
* N systems in one batch follow N separate runs (every ensemble, same per-system noise);
* thermostats sample the canonical kinetic-energy distribution (Gamma with n_dof/2);
* masses (isotopes) and FixAtoms are honoured; other constraints are refused;
* one system blowing up stops that system only;
* the counter-based noise equals a numpy uint64 SplitMix64 reference.
"""

from __future__ import annotations

import ase.io
import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.constraints import FixAtoms, FixBondLength
from ase.md.verlet import VelocityVerlet
from conftest import ethanol, water
from test_md_fixtures import AR_EPSILON, AR_SIGMA, argon_cluster, frames, invoke, one_line_error, tiny_schnet

from ase_mlff import MLFFCalculator, load_model, save_model, units
from ase_mlff.md import noise, run_md
from ase_mlff.models import LennardJones


def _calc(model, dtype="float64"):
    return MLFFCalculator(model, dtype=dtype, num_threads=1)


# -- noise ------------------------------------------------------------------------------------
def _splitmix_reference(keys: np.ndarray, counter: np.ndarray) -> np.ndarray:
    z = (keys.astype(np.uint64) + (counter.astype(np.uint64) + np.uint64(1)) * np.uint64(noise._GAMMA))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(noise._M1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(noise._M2)
    return z ^ (z >> np.uint64(31))


def test_noise_is_splitmix64_and_normal():
    keys = torch.tensor([1, -5, 2**62, -(2**63)], dtype=torch.int64)
    counter = torch.tensor([0, 7, 123456789, 2**40], dtype=torch.int64)
    with np.errstate(over="ignore"):
        expected = _splitmix_reference(keys.numpy().view(np.uint64), counter.numpy())
    got = noise._mix(keys + (counter + 1) * noise._GAMMA_S).numpy().view(np.uint64)
    np.testing.assert_array_equal(got, expected)
    n = 200_000
    z = noise.gaussian(torch.tensor([3]), torch.zeros(n, dtype=torch.long), torch.arange(n), 5, noise.LANGEVIN)
    z = z.numpy()
    # mean, variance and kurtosis of a unit normal within ~5 standard errors of n samples
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(np.mean(z**4) - 3) < 5 * np.sqrt(96 / n)
    # streams of other steps, seeds and uses are uncorrelated with this one
    other = noise.gaussian(torch.tensor([3]), torch.zeros(n, dtype=torch.long), torch.arange(n), 6,
                           noise.LANGEVIN).numpy()
    assert abs(np.corrcoef(z, other)[0, 1]) < 5 / np.sqrt(n)


def test_system_noise_does_not_depend_on_the_batch():
    seeds = torch.tensor(noise.system_seeds(11, 3))
    alone = noise.gaussian(seeds[2:], torch.zeros(6, dtype=torch.long), torch.arange(6), 9, noise.LANGEVIN)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 2, 2, 2])
    local = torch.tensor([0, 1, 0, 0, 1, 2, 3, 4, 5])
    batched = noise.gaussian(seeds, owner, local, 9, noise.LANGEVIN)
    torch.testing.assert_close(batched[3:], alone, rtol=0, atol=0)
    assert noise.system_seeds(11, 5)[:3] == noise.system_seeds(11, 3)


# -- equivalence with ASE ---------------------------------------------------------------------
def _ase_verlet(atoms, calc, momenta, steps, dt_fs):
    a = atoms.copy()
    a.calc = calc
    a.set_momenta(momenta, apply_constraint=False)
    dyn = VelocityVerlet(a, timestep=dt_fs * units.fs)
    dyn.run(steps)
    return a


@pytest.mark.parametrize("system, steps", [("ethanol", 1000), ("water", 100),
                                           pytest.param("water", 1000, marks=pytest.mark.slow)])
def test_single_system_nve_follows_ase_velocity_verlet(tmp_path, system, steps):
    # float64, same model, same start: positions within 1e-9 Å after 1,000 steps (ethanol and
    # periodic water; 100 steps of water in the fast suite). Both sides do the same float64
    # operations on the same forces; only the order of the edges differs, so differences stay
    # at round-off.
    if system == "ethanol":
        atoms, model = ethanol(0), load_model("ethanol-painn")
    else:
        atoms, model = water(0), load_model("water-schnet")
    calc = _calc(model)
    result = run_md(atoms, calc, steps=steps, seed=4, output=tmp_path / "e", h5_interval=steps,
                    traj_interval=0, log_interval=steps)
    assert result.status == "completed", result.message
    start = ase.io.read(tmp_path / "e.h5", 0)
    reference = _ase_verlet(atoms, _calc(model), start.get_momenta(), steps, 0.5)
    end = frames(tmp_path / "e.h5", "positions")[-1]
    assert np.abs(end - reference.positions).max() < 1e-9


def test_isotope_masses_are_honoured(tmp_path):
    atoms = ethanol(0)
    masses = atoms.get_masses()
    masses[atoms.numbers == 1] = 2.014  # deuterated
    atoms.set_masses(masses)
    model = tiny_schnet(1)
    # 100 steps: this random network pulls two atoms within 0.5 Å by step 160 (a contact blow-up)
    result = run_md(atoms, _calc(model), steps=100, seed=2, output=tmp_path / "d", h5_interval=100,
                    traj_interval=0)
    assert result.status == "completed", result.message
    start = ase.io.read(tmp_path / "d.h5", 0)
    np.testing.assert_array_equal(start.get_masses(), masses)
    reference = _ase_verlet(atoms, _calc(model), start.get_momenta(), 100, 0.5)
    assert np.abs(frames(tmp_path / "d.h5", "positions")[-1] - reference.positions).max() < 1e-9


def test_fixed_atoms_never_move_and_are_not_counted(tmp_path):
    atoms = ethanol(0)
    atoms.set_constraint(FixAtoms(indices=[0, 3]))
    result = run_md(atoms, _calc(tiny_schnet(1)), ensemble="langevin", steps=100, seed=1,
                    output=tmp_path / "f", h5_interval=10, traj_interval=10)
    assert result.status == "completed"
    positions = frames(tmp_path / "f.h5", "positions")
    np.testing.assert_array_equal(positions[:, [0, 3]], np.broadcast_to(atoms.positions[[0, 3]], (11, 2, 3)))
    assert np.abs(positions[-1] - positions[0]).max() > 1e-3  # the others did move
    with h5py.File(tmp_path / "f.h5") as f:
        assert f["systems/0"].attrs["dof"] == 3 * 7
        np.testing.assert_array_equal(f["systems/0/fixed"][:], [0, 3])
    traj = ase.io.read(tmp_path / "f.traj", -1)
    assert isinstance(traj.constraints[0], FixAtoms)


def test_other_constraints_are_refused(tmp_path):
    atoms = ethanol(0)
    atoms.set_constraint(FixBondLength(0, 1))
    with pytest.raises(ValueError, match="^the constraint FixBondLengths? is not supported"):
        run_md(atoms, _calc(tiny_schnet(1)), steps=10, output=tmp_path / "c")
    assert not (tmp_path / "c.h5").exists()


# -- batches ------------------------------------------------------------------------------------
def _mixed():
    ar = argon_cluster()
    box = Atoms("Ar8", positions=np.random.default_rng(0).uniform(0, 9, (8, 3)), cell=[9.5] * 3, pbc=True)
    box.positions = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * 4.75 + 0.3
    return [ar, box, ar.copy()]


@pytest.mark.parametrize("ensemble", ["nve", "langevin", "bussi", "nose-hoover"])
def test_batch_equals_separate_runs(tmp_path, ensemble):
    # molecules and a periodic cell of mixed sizes in one batch follow their separate runs: the
    # model sees the same edges, and each system's noise is its own (seeded per system)
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    structures = _mixed()
    seeds = noise.system_seeds(21, 3)
    common = dict(ensemble=ensemble, timestep_fs=5.0, temperature_K=[20.0, 40.0, 30.0], steps=200,
                  traj_interval=0, h5_interval=20)
    run_md(structures, _calc(model), seed=21, output=tmp_path / "batch", **common)
    for k, atoms in enumerate(structures):
        one = {**common, "temperature_K": common["temperature_K"][k]}
        run_md(atoms, _calc(model), seeds=[seeds[k]], output=tmp_path / f"one{k}", **one)
        batched = frames(tmp_path / "batch.h5", "positions", system=k)
        alone = frames(tmp_path / f"one{k}.h5", "positions")
        # float64 round-off of sums over different edge sets, grown over 200 steps
        np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-9)


def test_replicas_get_independent_velocities_and_the_same_as_alone(tmp_path):
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    result = run_md(argon_cluster(), _calc(model), ensemble="langevin", replicas=4, steps=20, seed=5,
                    output=tmp_path / "r", traj_interval=10, h5_interval=10)
    assert [s["label"] for s in result.systems] == [f"system 0 replica {r}" for r in range(4)]
    v = [frames(tmp_path / "r.h5", "velocities", system=k)[0] for k in range(4)]
    assert not np.allclose(v[0], v[1])
    for k in range(4):  # each replica opens on its own, as ase gui opens it
        assert len(ase.io.read(tmp_path / f"r.{k}.traj", ":")) == 3
    run_md(argon_cluster(), _calc(model), ensemble="langevin", replicas=2, steps=20, seed=5,
           output=tmp_path / "two", traj_interval=0)
    np.testing.assert_array_equal(frames(tmp_path / "two.h5", "positions", system=1),
                                  frames(tmp_path / "r.h5", "positions", system=1))


class _ExplodingLJ(LennardJones):
    """NaN energies for atoms of one system (marked by an element) after some calls."""

    def __init__(self):
        super().__init__(["Ar", "Kr"], AR_EPSILON, AR_SIGMA)
        self.calls = 0

    def forward(self, numbers, edge_index, edge_vectors):
        self.calls += 1
        energies = super().forward(numbers, edge_index, edge_vectors)
        if self.calls > 30:
            # a constant NaN: a NaN inside the graph would poison every gradient through the sum
            energies = energies + torch.where(numbers == 36, float("nan"), 0.0)
        return energies


def test_one_system_blowing_up_stops_only_that_system(tmp_path):
    bad = argon_cluster()
    bad.numbers[:] = 36
    bad.set_masses([39.948] * len(bad))
    structures = [argon_cluster(), bad, argon_cluster()]
    calc = _calc(_ExplodingLJ())
    result = run_md(structures, calc, steps=100, seed=1, timestep_fs=5.0, temperature_K=30.0,
                    output=tmp_path / "b", h5_interval=10, traj_interval=10)
    assert result.exit_code == 3
    assert [s["status"] for s in result.systems] == ["completed", "blew-up", "completed"]
    # evaluation k (1-based) belongs to step k-1: the first NaN is at step 30
    assert "system 1" in result.systems[1]["message"] and "step 30" in result.systems[1]["message"]
    np.testing.assert_array_equal(frames(tmp_path / "b.h5", "step", system=1), [0, 10, 20])
    assert frames(tmp_path / "b.h5", "step", system=2)[-1] == 100
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["systems/1"].attrs["status"] == "blew-up" and f["systems/0"].attrs["status"] == "completed"


# -- canonical sampling --------------------------------------------------------------------------
@pytest.mark.parametrize("ensemble", ["langevin", "bussi", "nose-hoover"])
def test_thermostats_sample_the_canonical_kinetic_energy(tmp_path, ensemble):
    # 48 replicas of a 13-atom argon cluster at 20 K (solid): E_kin ~ Gamma(n_dof/2, k_B T).
    # Each replica's time average over the second half is one sample of the mean; the replicas
    # are independent, so the standard error comes from their spread: no tuned tolerance.
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    T, replicas = 20.0, 48
    result = run_md(argon_cluster(), _calc(model), ensemble=ensemble, replicas=replicas, steps=3000,
                    timestep_fs=10.0, temperature_K=T, friction_per_fs=0.01, taut_fs=100.0, seed=8,
                    output=tmp_path / "c", traj_interval=0, h5_interval=5, log_interval=3000)
    assert result.status == "completed"
    kT = units.kB * T
    means, variances = [], []
    for k in range(replicas):
        kinetic = frames(tmp_path / "c.h5", "kinetic_energy", system=k)
        kinetic = kinetic[len(kinetic) // 2:]
        means.append(kinetic.mean())
        variances.append(kinetic.var())
    with h5py.File(tmp_path / "c.h5") as f:
        dof = f["systems/0"].attrs["dof"]
    assert dof == (39 if ensemble == "langevin" else 33)
    means, variances = np.array(means), np.array(variances)
    expected_mean, expected_var = 0.5 * dof * kT, 0.5 * dof * kT**2
    assert abs(means.mean() - expected_mean) < 4 * means.std(ddof=1) / np.sqrt(replicas)
    # each replica's variance about its own mean is biased low by the variance of that mean
    corrected = variances + (means - means.mean()) ** 2
    assert abs(corrected.mean() - expected_var) < 4 * corrected.std(ddof=1) / np.sqrt(replicas) \
        + 2 * means.var(ddof=1)


# -- command line -----------------------------------------------------------------------------
def test_cli_many_structures_frames_and_replicas(tmp_path):
    model = save_model(LennardJones(["Ar"], AR_EPSILON, AR_SIGMA), tmp_path / "ar.pt")
    ase.io.write(tmp_path / "a.xyz", argon_cluster())
    frames_in = [argon_cluster(), argon_cluster()]
    frames_in[1].positions *= 1.01
    ase.io.write(tmp_path / "many.extxyz", frames_in)
    result = invoke("run", tmp_path / "a.xyz", f"{tmp_path / 'many.extxyz'}@:", "-m", model, "--steps", 40,
                    "--timestep-fs", 5, "--temperature", 20, "-q", "-o", tmp_path / "m")
    assert result.exit_code == 0, result.output
    assert "summary:" in result.output and "atom-steps/s" in result.output
    assert f"{tmp_path / 'many.extxyz'}@1" in result.output
    with h5py.File(tmp_path / "m.h5") as f:
        assert f.attrs["n_systems"] == 3
        assert [f[f"systems/{k}"].attrs["label"] for k in range(3)] == \
            [str(tmp_path / "a.xyz"), f"{tmp_path / 'many.extxyz'}@0", f"{tmp_path / 'many.extxyz'}@1"]
    assert len(ase.io.read(tmp_path / "m.2.traj", ":")) == 5
    result = invoke("run", tmp_path / "a.xyz", "-m", model, "--steps", 20, "--replicas", 3, "--timestep-fs", 5,
                    "-q", "-o", tmp_path / "rep", "--ensemble", "bussi", "--temperature", 20)
    assert result.exit_code == 0, result.output
    assert "replica 2" in result.output
    assert invoke("report", tmp_path / "rep.h5").exit_code == 0
    out = invoke("convert", tmp_path / "rep.h5", tmp_path / "r1.xyz", "--system", 1)
    assert out.exit_code == 0 and len(ase.io.read(tmp_path / "r1.xyz", ":")) == 3
    line = one_line_error(invoke("run", tmp_path / "a.xyz", tmp_path / "nope.xyz", "-m", model, "-o",
                                 tmp_path / "x"))
    assert "nope.xyz does not exist" in line


def test_cli_restart_of_a_batch_is_bit_for_bit(tmp_path):
    model = save_model(LennardJones(["Ar"], AR_EPSILON, AR_SIGMA), tmp_path / "ar.pt")
    ase.io.write(tmp_path / "a.xyz", argon_cluster())
    heavy = argon_cluster()
    heavy.set_masses([80.0] * len(heavy))
    heavy.set_constraint(FixAtoms(indices=[0]))
    ase.io.write(tmp_path / "heavy.traj", heavy)
    common = ("run", "-m", model, "--timestep-fs", 5, "--temperature", 20, "--seed", 3, "-q",
              "--ensemble", "langevin", "--replicas", 2)
    args = (tmp_path / "a.xyz", tmp_path / "heavy.traj")
    assert invoke(*common, *args, "--steps", 120, "-o", tmp_path / "full").exit_code == 0
    assert invoke(*common, *args, "--steps", 70, "-o", tmp_path / "part").exit_code == 0
    result = invoke("run", "-q", "--restart", tmp_path / "part.h5", "--steps", 120)
    assert result.exit_code == 0, result.output
    for k in range(4):
        for name in ("positions", "velocities", "step", "conserved_energy"):
            np.testing.assert_array_equal(frames(tmp_path / "full.h5", name, k), frames(tmp_path / "part.h5", name, k))
        a = ase.io.read(tmp_path / f"full.{k}.traj", ":")
        b = ase.io.read(tmp_path / f"part.{k}.traj", ":")
        assert len(a) == len(b) == 13
    with h5py.File(tmp_path / "part.h5") as f:
        np.testing.assert_array_equal(f["systems/2/masses"][:], 80.0)
    assert np.ptp(frames(tmp_path / "part.h5", "positions", 3)[:, 0], axis=0).max() == 0  # fixed atom 0


class _CrashingLJ(LennardJones):
    """Raises at the ``crash_at``-th evaluation, as a run killed there would stop."""

    crash_at = 26  # evaluation k is step k-1: after the outputs of steps 10 and 20

    def forward(self, numbers, edge_index, edge_vectors):
        type(self).crash_at -= 1
        if type(self).crash_at == 0:
            raise RuntimeError("killed")
        return super().forward(numbers, edge_index, edge_vectors)


def test_restart_from_step_zero_does_not_duplicate_frame_zero(tmp_path):
    # with the defaults the first checkpoint is the one written right after step 0: a run that
    # dies before its next flush restarts from there, must not record step 0 again, and drops
    # the .traj frames, log lines and HDF5 frames written after that checkpoint
    model = _CrashingLJ(["Ar"], AR_EPSILON, AR_SIGMA)
    with pytest.raises(RuntimeError, match="killed"):
        run_md(argon_cluster(), _calc(model), steps=30, seed=1, output=tmp_path / "zero", timestep_fs=5.0,
               log_interval=10)
    with h5py.File(tmp_path / "zero.h5") as f:
        assert f["checkpoint"].attrs["step"] == 0 and f.attrs["status"] == "crashed"
    assert len(ase.io.read(tmp_path / "zero.traj", ":")) == 3  # steps 0, 10, 20: past the checkpoint
    _CrashingLJ.crash_at = 10**9
    from ase_mlff.md import restart_md

    result = restart_md(tmp_path / "zero.h5", _calc(model), steps=30)
    assert result.status == "completed", result.message
    np.testing.assert_array_equal(frames(tmp_path / "zero.h5", "step"), [0, 10, 20, 30])
    assert [a.info["step"] for a in ase.io.read(tmp_path / "zero.h5", ":")] == [0, 10, 20, 30]
    assert len(ase.io.read(tmp_path / "zero.traj", ":")) == 4
    rows = [line.split()[0] for line in (tmp_path / "zero.log").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert rows == ["0", "10", "20", "30"]


@pytest.mark.gpu
def test_cuda_batch_matches_cpu(tmp_path):
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    cpu = run_md(_mixed(), MLFFCalculator(model, device="cpu", dtype="float64"), steps=50, seed=2,
                 output=tmp_path / "cpu", traj_interval=0)
    gpu = run_md(_mixed(), MLFFCalculator(model, device="cuda", dtype="float64"), steps=50, seed=2,
                 output=tmp_path / "gpu", traj_interval=0)
    assert cpu.status == gpu.status == "completed"
    for k in range(3):
        np.testing.assert_allclose(frames(tmp_path / "gpu.h5", "positions", k),
                                   frames(tmp_path / "cpu.h5", "positions", k), rtol=0, atol=1e-8)


# -- compiled models ----------------------------------------------------------------------------
def test_compile_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch):
    def broken(model, **kwargs):
        def fail(*args):
            raise RuntimeError("no C compiler found\nmore detail")
        return fail

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_compiler)  # no package either
    monkeypatch.setenv("MLFF_COMPILE_CACHE", str(tmp_path / "aoti"))
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    eager = run_md(argon_cluster(), _calc(model), steps=20, seed=1, output=tmp_path / "e", traj_interval=0)
    with pytest.warns(RuntimeWarning, match="torch.compile is unavailable here .RuntimeError: no C compiler"):
        compiled = run_md(argon_cluster(), MLFFCalculator(model, dtype="float64", compile=True), steps=20,
                          seed=1, output=tmp_path / "c", traj_interval=0)
    assert compiled.status == eager.status == "completed"
    np.testing.assert_array_equal(frames(tmp_path / "c.h5", "positions"), frames(tmp_path / "e.h5", "positions"))


def test_compiled_evaluation_is_one_graph_per_kind_and_equals_eager(monkeypatch):
    # energy, forces and stress of a periodic argon cell in float64: the torch.compile graph (edge
    # vectors, network, sum and torch.func derivatives together) equals autograd's to rounding, and
    # neither a changing edge count nor a second structure size compiles again (dynamic shapes)
    from torch._dynamo.utils import counters

    monkeypatch.setenv("MLFF_COMPILE_CACHE", "off")  # torch.compile itself, not a package (test_aot.py)

    from ase_mlff.compiled import CompiledModel

    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA, cutoff=7.0)
    eager, fast = MLFFCalculator(model, dtype="float64"), MLFFCalculator(model, dtype="float64", compile=True)
    rng = np.random.default_rng(3)
    cells = [bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, n)) for n in (2, 2, 3)]
    for atoms in cells:
        atoms.rattle(0.2, rng=rng)  # a different edge count each time
    counters.clear()
    for atoms in cells:
        atoms.calc = eager
        expected = atoms.get_forces(), atoms.get_stress(), atoms.get_potential_energy()
        atoms.calc = fast
        np.testing.assert_allclose(atoms.get_forces(), expected[0], rtol=0, atol=1e-11)
        np.testing.assert_allclose(atoms.get_stress(), expected[1], rtol=0, atol=1e-13)
        assert atoms.get_potential_energy() == pytest.approx(expected[2], abs=1e-10)
    assert isinstance(fast.evaluator, CompiledModel) and fast.evaluator.fused is not None
    assert fast.evaluator.seconds > 0 and fast.evaluator.failed is None
    # one graph per kind of call (forces; forces + stress), never recompiled for sizes
    assert counters["stats"]["unique_graphs"] == 2


@pytest.mark.gpu
def test_compiled_evaluation_on_cuda_equals_eager_cpu(tmp_path):
    # the one-graph compiled path on CUDA (torch.func derivatives included) against eager on the CPU,
    # float64, periodic with stress; then a compiled CUDA MD run against the eager CPU one
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA, cutoff=7.0)
    cpu, gpu = MLFFCalculator(model, device="cpu", dtype="float64"), MLFFCalculator(model, device="cuda",
                                                                                       dtype="float64", compile=True)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.2, rng=np.random.default_rng(4))
    atoms.calc = cpu
    expected = atoms.get_forces(), atoms.get_stress()
    atoms.calc = gpu
    np.testing.assert_allclose(atoms.get_forces(), expected[0], rtol=0, atol=1e-11)
    np.testing.assert_allclose(atoms.get_stress(), expected[1], rtol=0, atol=1e-13)
    assert gpu.evaluator.failed is None
    eager = run_md(_mixed(), cpu, steps=50, seed=2, output=tmp_path / "cpu", traj_interval=0)
    fast = run_md(_mixed(), gpu, steps=50, seed=2, output=tmp_path / "gpu", traj_interval=0)
    assert eager.status == fast.status == "completed"
    for k in range(3):
        np.testing.assert_allclose(frames(tmp_path / "gpu.h5", "positions", k),
                                   frames(tmp_path / "cpu.h5", "positions", k), rtol=0, atol=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ethanol-painn", "ethanol-schnet"])
def test_compiled_model_equals_eager_within_float32_rounding(tmp_path, name):
    # a cold compile takes a minute or two here. Forces of the compiled float32 network equal the
    # eager ones to float32 rounding of sums over ~10 neighbours: eps32 · max|F| · 16 · sqrt(10).
    from conftest import EPS32

    atoms = ethanol(0)
    eager = MLFFCalculator(name, num_threads=1)
    compiled = MLFFCalculator(name, num_threads=1, compile=True)
    structures = [ethanol(k) for k in range(3)]
    for a in structures:
        forces = eager.get_forces(a)
        tol = EPS32 * np.abs(forces).max() * 16 * np.sqrt(10)
        np.testing.assert_allclose(compiled.get_forces(a), forces, rtol=0, atol=tol)
    # MD: the edge count changes as the molecule vibrates, without recompiling
    result = run_md(atoms, compiled, steps=200, seed=1, output=tmp_path / "c", traj_interval=0)
    assert result.status == "completed" and result.compile_s is None  # compiled by the calls above


# -- version-1 files ----------------------------------------------------------------------------
def test_version_1_files_stay_readable_and_restartable(tmp_path):
    import shutil

    from conftest import DATA

    for name in ("md_v1_argon.h5", "md_v1_argon.traj"):
        shutil.copy(DATA / name, tmp_path / name)
    run = tmp_path / "md_v1_argon.h5"
    with h5py.File(run) as f:
        assert f.attrs["format_version"] == 1 and "frames" in f
        steps_v1 = f["frames/step"][:]
    images = ase.io.read(run, ":")  # the ASE plugin
    assert [a.info["step"] for a in images] == steps_v1.tolist() == [0, 10, 20, 30, 40]
    result = invoke("report", run)
    assert result.exit_code == 0 and "Energy conservation" in result.output, result.output
    assert invoke("convert", run, tmp_path / "out.xyz").exit_code == 0
    assert len(ase.io.read(tmp_path / "out.xyz", ":")) == 5
    result = invoke("run", "-q", "--restart", run, "--steps", 80, "-m", DATA / "md_v1_ar-lj.pt")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "md_v1_argon.v1.h5").exists()  # the original is kept
    with h5py.File(run) as f:
        assert f.attrs["format_version"] == 3 and "cell" not in f["systems/0/frames"]  # fixed cell: none per frame
        np.testing.assert_array_equal(f["systems/0/frames/step"][:], np.arange(0, 81, 10))
    # NVE continues the exact state: energy stays conserved across the upgrade
    total = frames(run, "total_energy")
    assert np.ptp(total) < 1e-3 * 13 * 1e-3 * 10
    assert len(ase.io.read(tmp_path / "md_v1_argon.traj", ":")) == 9


def test_atoms_running_into_one_another_stop_that_system(tmp_path):
    """A pair driven closer than validate.MIN_DISTANCE is a blow-up although every number stays finite
    (what a model far outside its training data does: the water model under NPT after 10 ps)."""
    from ase import Atoms

    from ase_mlff.md.validate import MIN_DISTANCE

    # LJ whose minimum lies at 2^(1/6)·0.3 = 0.34 Å: a dimer started 0.6 Å apart falls into it
    model = LennardJones(["Ar"], epsilon=1.0, sigma=0.3, cutoff=3.0)
    dimer = Atoms("Ar2", positions=[[0, 0, 0], [0.6, 0, 0]])
    far = Atoms("Ar2", positions=[[0, 0, 0], [2.9, 0, 0]])  # feels the tail only: stays apart
    result = run_md([far, dimer], _calc(model), steps=200, seed=1, timestep_fs=0.5, temperature_K=1.0,
                    output=tmp_path / "c", h5_interval=10, traj_interval=10)
    assert result.exit_code == 3
    assert [s["status"] for s in result.systems] == ["completed", "blew-up"]
    message = result.systems[1]["message"]
    assert f"closer than {MIN_DISTANCE} Å" in message and "system 1" in message
    distances = np.linalg.norm(np.diff(frames(tmp_path / "c.h5", "positions", system=1), axis=1), axis=-1)
    assert distances.min() >= MIN_DISTANCE  # no frame with the contact was written
