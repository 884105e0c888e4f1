"""NPT (stochastic cell rescaling + Bussi): settings, files, restarts, batches, neighbor lists, physics.

Argon with the Lennard-Jones oracle (ε = 10.4 meV, σ = 3.4 Å, cutoff 10.2 Å)
in small fcc boxes; float64 throughout, so bit-for-bit and round-off
statements hold. The deeper canonical checks (density against an equation
of state, volume fluctuations) are in tests/test_lj_verification.py.
"""

from __future__ import annotations

import ase.io
import h5py
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.units import bar, fs, kB
from test_md_fixtures import AR_EPSILON, AR_SIGMA, argon_cluster, frames, invoke

from ase_mlff import MLFFCalculator, save_model
from ase_mlff.md import noise, restart_md, run_md
from ase_mlff.md.h5 import FRAME_FIELDS_V3, read_frames, read_series
from ase_mlff.md.settings import MDSettings
from ase_mlff.models import LennardJones
from ase_mlff.neighbors import edge_vectors, neighbor_list, one_per_pair


def _calc():
    return MLFFCalculator(LennardJones(["Ar"], AR_EPSILON, AR_SIGMA), dtype="float64")


def _argon(scale=1.0, repeat=2):
    """fcc argon, 4·repeat³ atoms, lattice constant 5.26 Å × scale (about zero pressure at 30-60 K)."""
    return bulk("Ar", "fcc", a=5.26 * scale, cubic=True).repeat((repeat,) * 3)


NPT = dict(ensemble="npt", timestep_fs=5.0, temperature_K=40.0, taut_fs=100.0, pressure_bar=1.0, taup_fs=500.0)


# -- settings and input ---------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("pressure_bar", float("nan"), "target pressure must be a finite"),
    ("taup_fs", 0.0, "barostat time constant must be a finite positive"),
    ("taup_fs", float("inf"), "barostat time constant must be a finite positive"),
    ("compressibility_per_bar", -1e-5, "compressibility must be a finite positive"),
    ("cell_dof", "shear", "unknown cell_dof 'shear'; valid: isotropic, anisotropic, triclinic"),
])
def test_settings_refuse_bad_npt_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        MDSettings(ensemble="npt", **{field: value})
    assert MDSettings(ensemble="npt", pressure_bar=-500).pressure_bar == -500.0  # tension is allowed


def test_npt_needs_a_3d_periodic_structure_without_constraints(tmp_path):
    from ase.constraints import FixAtoms

    with pytest.raises(ValueError, match="NPT needs a structure periodic in all three directions"):
        run_md(argon_cluster(), _calc(), steps=2, output=tmp_path / "a", **NPT)
    slab = _argon()
    slab.pbc = [True, True, False]
    with pytest.raises(ValueError, match=r"pbc=\[True, True, False\].*--ensemble bussi"):
        run_md(slab, _calc(), steps=2, output=tmp_path / "b", **NPT)
    fixed = _argon()
    fixed.set_constraint(FixAtoms(indices=[0]))
    with pytest.raises(ValueError, match="NPT does not support constraints"):
        run_md(fixed, _calc(), steps=2, output=tmp_path / "c", **NPT)
    with pytest.raises(ValueError, match="taup_fs of system 1 is 0.0; it must be finite and positive"):
        run_md([_argon(), _argon()], _calc(), steps=2, output=tmp_path / "d", **{**NPT, "taup_fs": [100.0, 0.0]})


def test_cli_npt_options_and_errors(tmp_path):
    structure = tmp_path / "ar.xyz"
    ase.io.write(structure, _argon())
    model = save_model(LennardJones(["Ar"], AR_EPSILON, AR_SIGMA), tmp_path / "ar.pt")
    base = ("run", "-q", structure, "-m", model, "--ensemble", "npt", "--timestep-fs", 5, "--temperature", 40,
            "--seed", 3, "--steps", 20, "--dtype", "float64")
    result = invoke(*base, "--taup-fs", 0, "-o", tmp_path / "bad")
    assert result.exit_code == 1 and "barostat time constant must be a finite positive" in result.output
    result = invoke(*base, "--cell-dof", "shear", "-o", tmp_path / "bad2")
    assert result.exit_code == 2 and "shear" in result.output
    cluster = tmp_path / "cluster.xyz"
    ase.io.write(cluster, argon_cluster())
    result = invoke(*base[:2], cluster, *base[3:], "-o", tmp_path / "bad3")
    assert result.exit_code == 1 and "NPT needs a structure periodic" in result.output
    result = invoke(*base, "--pressure-bar", 100, "--taup-fs", 300, "--compressibility-per-bar", 2e-4,
                    "--cell-dof", "anisotropic", "--h5-interval", 5, "-o", tmp_path / "ok")
    assert result.exit_code == 0, result.output
    assert "Energy conservation (NPT" in result.output and "Pressure: mean" in result.output
    with h5py.File(tmp_path / "ok.h5") as f:
        assert (f.attrs["pressure_bar"], f.attrs["taup_fs"], f.attrs["cell_dof"]) == (100.0, 300.0, "anisotropic")
        assert f.attrs["compressibility_per_bar"] == 2e-4 and f["systems/0"].attrs["pressure_bar"] == 100.0
    result = invoke("run", "-q", "--restart", tmp_path / "ok.h5", "--steps", 30, "--pressure-bar", 5)
    assert result.exit_code == 2 and "drop --pressure-bar" in result.output
    report = invoke("report", tmp_path / "ok.h5")
    assert report.exit_code == 0 and "effective energy" in report.output and "density" in report.output


# -- files ----------------------------------------------------------------------------------------
def test_hdf5_v3_layout_traj_cells_and_pressure(tmp_path):
    result = run_md(_argon(0.97), _calc(), steps=40, seed=4, output=tmp_path / "r", h5_interval=5,
                    traj_interval=10, **{**NPT, "taup_fs": 200.0})
    assert result.status == "completed"
    with h5py.File(tmp_path / "r.h5") as f:
        assert f.attrs["format_version"] == 3 and f.attrs["ensemble"] == "npt"
        g = f["systems/0/frames"]
        for name, (per_atom, shape, dtype, unit) in FRAME_FIELDS_V3.items():
            assert g[name].shape == (9, *((32,) if per_atom else ()), *shape) and g[name].attrs["units"] == unit
            assert g[name].dtype == dtype
        assert f["checkpoint"][f["checkpoint"].attrs["slot"]]["cell"].shape == (1, 3, 3)
    s = read_series(tmp_path / "r.h5")
    np.testing.assert_allclose(s["volume"], np.abs(np.linalg.det(s["cell"])), rtol=1e-14)
    assert s["volume"][-1] > 1.01 * s["volume"][0]  # compressed by 3 %: it expands
    images = read_frames(tmp_path / "r.h5")
    for atoms, cell in zip(images, s["cell"]):
        np.testing.assert_array_equal(atoms.cell.array, cell)
    traj = ase.io.read(tmp_path / "r.traj", ":")
    assert len(traj) == 5
    for i, atoms in enumerate(traj):  # each .traj frame: its cell, and a pressure from its stress and momenta
        k = int(np.searchsorted(s["step"], 10 * i))
        np.testing.assert_array_equal(atoms.cell.array, s["cell"][k])
        stress = atoms.get_stress(voigt=False)
        dof = 3 * len(atoms) - 3
        kinetic_term = len(atoms) * 2 * atoms.get_kinetic_energy() / dof / atoms.get_volume()  # N k T_inst / V
        np.testing.assert_allclose(s["pressure"][k], -np.trace(stress) / 3 + kinetic_term, rtol=1e-12)
    # the calculator agrees: potential stress of the frame, and ASE's ideal-gas term for N_f = 3N
    atoms = images[-1]
    atoms.calc = _calc()
    ase_pressure = -np.trace(atoms.get_stress(voigt=False, include_ideal_gas=True)) / 3
    plain = 2 * atoms.get_kinetic_energy() / (3 * atoms.get_volume())
    np.testing.assert_allclose(s["pressure"][-1], ase_pressure + plain * (3 * 32 / 93 - 1), rtol=1e-9)


def test_version_2_files_stay_readable_and_restartable(tmp_path):
    import shutil

    from conftest import DATA

    for name in ("md_v2_argon.h5", "md_v2_argon.traj", "md_v1_ar-lj.pt"):
        shutil.copy(DATA / name, tmp_path / name)
    run = tmp_path / "md_v2_argon.h5"
    images = ase.io.read(run, ":")  # the ASE plugin
    assert [a.info["step"] for a in images] == [0, 10, 20, 30, 40]
    s = read_series(run)
    assert s["cell"].shape == (5, 3, 3) and "pressure" not in s  # the fixed cell, repeated
    np.testing.assert_allclose(s["volume"], 10.52 ** 3)
    assert invoke("report", run).exit_code == 0
    assert invoke("convert", run, tmp_path / "out.xyz").exit_code == 0
    result = invoke("run", "-q", "--restart", run, "--steps", 60, "-m", tmp_path / "md_v1_ar-lj.pt")
    assert result.exit_code == 0, result.output
    with h5py.File(run) as f:
        assert f.attrs["format_version"] == 2 and "cell" not in f["systems/0/frames"]
        np.testing.assert_array_equal(f["systems/0/frames/step"][:], np.arange(0, 61, 10))


# -- restarts and batches -------------------------------------------------------------------------
@pytest.mark.parametrize("cell_dof", ["isotropic", "triclinic"])
def test_npt_restart_is_bit_for_bit(tmp_path, cell_dof):
    common = dict(seed=9, h5_interval=5, traj_interval=10, cell_dof=cell_dof, **{**NPT, "taup_fs": 200.0})
    run_md(_argon(0.98), _calc(), steps=60, output=tmp_path / "full", **common)
    run_md(_argon(0.98), _calc(), steps=35, output=tmp_path / "part", **common)
    result = restart_md(tmp_path / "part.h5", _calc(), steps=60)
    assert result.status == "completed"
    for name in FRAME_FIELDS_V3:
        np.testing.assert_array_equal(frames(tmp_path / "full.h5", name), frames(tmp_path / "part.h5", name),
                                      err_msg=name)
    full, part = ase.io.read(tmp_path / "full.traj", ":"), ase.io.read(tmp_path / "part.traj", ":")
    assert len(full) == len(part) == 7
    for a, b in zip(full, part):
        np.testing.assert_array_equal(a.cell.array, b.cell.array)
        np.testing.assert_array_equal(a.positions, b.positions)


def test_one_system_alone_equals_the_same_system_in_a_batch(tmp_path):
    structures = [_argon(1.0, 2), _argon(0.97, 2), bulk("Ar", "fcc", a=5.3).repeat((3, 3, 3))]
    seeds = noise.system_seeds(13, 3)
    common = dict(steps=60, h5_interval=10, traj_interval=0, cell_dof="triclinic",
                  **{**NPT, "taup_fs": 200.0, "pressure_bar": [1.0, 50.0, -20.0]})
    run_md(structures, _calc(), seeds=seeds, seed=13, output=tmp_path / "batch", **common)
    one = {**common, "pressure_bar": 50.0}
    run_md(structures[1], _calc(), seeds=[seeds[1]], seed=13, output=tmp_path / "one", **one)
    for name in ("positions", "cell", "pressure", "conserved_energy"):
        # float64 round-off of sums over different batches, grown over 60 steps
        np.testing.assert_allclose(frames(tmp_path / "batch.h5", name, system=1), frames(tmp_path / "one.h5", name),
                                   rtol=1e-9, atol=1e-9, err_msg=name)


# -- neighbor lists under a deforming cell --------------------------------------------------------
def test_skin_lists_stay_exact_while_the_cell_deforms(tmp_path):
    from ase_mlff.md.barostat import init_barostat
    from ase_mlff.md.driver import _force_field, _integrator
    from ase_mlff.md.integrators import init_thermostat
    from ase_mlff.md.state import state_from_atoms
    from ase_mlff.md.velocities import maxwell_boltzmann

    calc = MLFFCalculator(LennardJones(["Ar"], AR_EPSILON, AR_SIGMA), dtype="float64", skin=0.6)
    # the one-atom primitive cell sits at the origin: no displacement shows its deformation, only the
    # images' shifts do (a displacement-only rule would never rebuild it)
    structures = [_argon(0.95), bulk("Ar", "fcc", a=5.4).repeat((2, 2, 3)), bulk("Ar", "fcc", a=5.6)]
    state = state_from_atoms(structures, torch.device("cpu"), noise.system_seeds(2, 3))
    temperature = torch.tensor([60.0, 60.0, 60.0], dtype=torch.float64)
    maxwell_boltzmann(state, temperature, zero_momentum=True)
    kT = kB * temperature
    init_thermostat(state, "npt", kT, kT * 0, torch.full((3,), 50 * fs, dtype=torch.float64))
    # an aggressive barostat (τ_p = 200 fs with twice water's compressibility) and pressures far from
    # the boxes': a compressed one under 2 kbar of tension, dilated ones under 3 kbar
    init_barostat(state, torch.tensor([-2000.0, 3000.0, 3000.0], dtype=torch.float64) * bar,
                  torch.full((3,), 200 * fs, dtype=torch.float64), torch.full((3,), 9e-5, dtype=torch.float64) / bar)
    force_field = _force_field(calc, False, int(state.positions.shape[0]), stress=True)
    force_field(state)
    step = _integrator(MDSettings(ensemble="npt", timestep_fs=5.0, cell_dof="triclinic"))
    cell0 = state.cell.clone()
    cutoff = calc.model.cutoff
    builds = force_field.neighbors.rebuilds
    beyond = 0
    for _ in range(150):
        step(state, force_field)
        used = force_field.neighbors(state)
        fresh = neighbor_list(state.batch(), cutoff)
        assert used.half  # LJ takes half lists: each pair once, the edge one_per_pair keeps
        kept = one_per_pair(fresh.edge_index, fresh.shifts)
        key = lambda index, shifts: set(zip(*index.tolist(), *shifts.T.tolist()))  # noqa: E731
        # LJ zeroes pairs beyond its cutoff itself and gets the lists unpruned (cutoff + skin): they
        # must hold every pair of the fresh list, and nothing else closer than the cutoff
        assert not force_field.neighbors.prune
        missing = key(fresh.edge_index[:, kept], fresh.shifts[kept]) - key(used.edge_index, used.shifts)
        assert not missing, f"step {state.step}: {sorted(missing)[:3]}"
        lengths = torch.linalg.vector_norm(edge_vectors(state.positions, state.cell, state.system, used), dim=1)
        assert int((lengths < cutoff).sum()) == int(kept.sum()), f"step {state.step}"
        beyond += int((lengths >= cutoff).sum())
    change = torch.linalg.matrix_norm(torch.linalg.solve(cell0, state.cell) - torch.eye(3, dtype=torch.float64))
    assert bool((change > 0.02).all()), change  # the cells did deform
    assert 0 < force_field.neighbors.rebuilds - builds < 150  # lists were reused, and rebuilt when due
    assert beyond > 0  # the model did get pairs beyond its cutoff


# -- physics: sign, units, barostat off, effective energy -----------------------------------------
def test_first_step_volume_change_has_the_sign_and_size_of_the_equation(tmp_path):
    # at 0.5 K the noise is small: ln(V1/V0) = (β_T/τ_p)(P − P₀) dt ± √(2 kT β_T dt/(V τ_p))
    beta, taup, dt = 4.5e-5, 500.0, 5.0
    run_md(_argon(0.97), _calc(), steps=1, seed=1, output=tmp_path / "r", h5_interval=1, traj_interval=0,
           **{**NPT, "temperature_K": 0.5, "taup_fs": taup, "compressibility_per_bar": beta})
    s = read_series(tmp_path / "r.h5")
    pressure, volume = s["pressure"][0] / bar, s["volume"][0]
    assert pressure > 1000  # compressed
    expected = beta / taup * (pressure - 1.0) * dt
    sigma = np.sqrt(2 * kB * 0.5 * (beta / bar) * dt * fs / (volume * taup * fs))
    assert abs(np.log(s["volume"][1] / volume) - expected) < 5 * sigma + 0.05 * abs(expected)
    assert 5 * sigma < expected


def test_barostat_off_keeps_the_cell_and_follows_bussi(tmp_path):
    common = dict(steps=60, seed=2, h5_interval=10, traj_interval=0, timestep_fs=5.0, temperature_K=40.0,
                  taut_fs=100.0)
    run_md(_argon(0.97), _calc(), ensemble="npt", taup_fs=1e30, output=tmp_path / "off", **common)
    run_md(_argon(0.97), _calc(), ensemble="bussi", output=tmp_path / "nvt", **common)
    cells = frames(tmp_path / "off.h5", "cell")
    np.testing.assert_allclose(cells, np.broadcast_to(cells[0], cells.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(frames(tmp_path / "off.h5", "positions"), frames(tmp_path / "nvt.h5", "positions"),
                               rtol=0, atol=1e-9)


@pytest.mark.parametrize("cell_dof", ["isotropic", "anisotropic", "triclinic"])
def test_effective_energy_is_conserved_like_nve(tmp_path, cell_dof):
    # the barostat moves the volume by several percent, and H̃ = U + K + P₀V − work stays
    # within a small fraction of the kinetic-energy fluctuation (what a broken work term would not do)
    run_md(_argon(0.97), _calc(), steps=200, seed=5, output=tmp_path / "r", h5_interval=5, traj_interval=0,
           cell_dof=cell_dof, **{**NPT, "timestep_fs": 2.0, "taup_fs": 300.0})
    s = read_series(tmp_path / "r.h5")
    assert np.ptp(s["volume"]) > 0.02 * s["volume"][0]
    kinetic_std = np.std(s["kinetic_energy"])
    assert np.ptp(s["conserved_energy"]) < 0.01 * kinetic_std, (np.ptp(s["conserved_energy"]), kinetic_std)
    # without the barostat's work the "conserved" energy would wander by about its PV change
    assert np.ptp(s["total_energy"] + NPT["pressure_bar"] * bar * s["volume"]) > 0.3 * kinetic_std
    assert s["report"]["verdict"] != "FAIL" and s["report"]["kind"] == "npt"


def test_cell_blowup_is_detected_and_named(tmp_path):
    # -100 kbar of tension, more than a Lennard-Jones solid holds, with a 50 fs barostat: the cell
    # explodes within a few steps; the other system runs on
    result = run_md([_argon(), _argon()], _calc(), steps=100, seed=1, output=tmp_path / "b", h5_interval=10,
                    traj_interval=0, **{**NPT, "taup_fs": [50.0, 500.0], "pressure_bar": [-1e5, 1.0]})
    bad, good = result.systems
    assert bad["status"] == "blew-up" and good["status"] == "completed"
    assert bad["message"].startswith("system 0: simulation blew up at step 10: the cell volume")
    assert "exploded; use a larger --taup-fs" in bad["message"]
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["systems/0"].attrs["status"] == "blew-up" and f["systems/1/frames/step"][-1] == 100


def test_cell_limits_volume_window_and_flattening():
    # the checks themselves, on a state whose cell is set by hand: volume outside [V₀/8, 8 V₀] (code 6),
    # a lattice-plane spacing below half its initial value at constant volume (code 7)
    from ase_mlff.md.barostat import init_barostat
    from ase_mlff.md.forcefield import ForceField
    from ase_mlff.md.loop import Simulation
    from ase_mlff.md.state import state_from_atoms

    state = state_from_atoms([_argon()] * 4, torch.device("cpu"), [1, 2, 3, 4])
    one = torch.ones(4, dtype=torch.float64)
    init_barostat(state, one * bar, one * 100 * fs, one * 4.5e-5 / bar)
    state.thermostat.update(max_temperature=one * 1e4, first_nonfinite_step=torch.full((4,), -1))
    state.forces = torch.zeros_like(state.positions)
    flatten = torch.diag(torch.tensor([0.45, 1 / 0.45 ** 0.5, 1 / 0.45 ** 0.5], dtype=torch.float64))
    state.cell = torch.stack([state.cell[0], state.cell[1] * 2.05, state.cell[2] @ flatten, state.cell[3] * 0.49])
    sim = Simulation.__new__(Simulation)
    sim.state, sim._energies = state, []
    sim.force_field = ForceField(LennardJones(["Ar"]))  # no list built yet: no contact check
    assert sim._blowup_codes().tolist() == [0, 6, 7, 6]


# -- slow: the mean pressure ----------------------------------------------------------------------
@pytest.mark.slow
def test_mean_pressure_equals_the_target_within_its_standard_error(tmp_path):
    from ase_mlff.md.report import block_standard_error

    target = 200.0
    run_md(_argon(1.0, 3), _calc(), steps=12_000, seed=8, output=tmp_path / "p", h5_interval=10, traj_interval=0,
           **{**NPT, "temperature_K": 60.0, "taup_fs": 500.0, "pressure_bar": target})
    s = read_series(tmp_path / "p.h5")
    pressure = s["pressure"][200:] / bar  # after 10 ps of equilibration
    sem = block_standard_error(pressure)
    assert abs(pressure.mean() - target) < 3 * sem, (pressure.mean(), sem)
    assert sem < 0.2 * np.std(pressure)  # the run was long enough for the error bar to mean something


@pytest.mark.slow
def test_ideal_gas_volume_distribution_is_exact(tmp_path):
    # U = 0 (Lennard-Jones with ε = 0): the NPT volume density is V^N exp(−P₀V/k_BT) exactly, a Gamma
    # law with mean (N + 1) k_BT/P₀ and relative width 1/√(N + 1). With zero total momentum
    # (n_dof = 3N − 3) the plain 2K/(3V) kinetic term would give N k_BT/P₀ instead, 11 % low for
    # N = 8: this separates the kinetic-term conventions, and checks the noise amplitude
    from ase import Atoms

    from ase_mlff.md.report import block_standard_error

    n, temperature, target = 8, 300.0, 100.0
    exact = (n + 1) * kB * temperature / (target * bar)
    side = exact ** (1 / 3)
    gas = Atoms("Ar8", positions=np.random.default_rng(0).uniform(0, side, (n, 3)), cell=[side] * 3, pbc=True)
    calc = MLFFCalculator(LennardJones(["Ar"], epsilon=0.0, sigma=1.0), dtype="float64")
    replicas = 8
    run_md(gas, calc, ensemble="npt", temperature_K=temperature, taut_fs=50, taup_fs=200, pressure_bar=target,
           compressibility_per_bar=1 / target, timestep_fs=5, steps=8000, seed=3, replicas=replicas,
           output=tmp_path / "gas", h5_interval=10, traj_interval=0)
    volumes = [read_series(tmp_path / "gas.h5", k)["volume"][50:] for k in range(replicas)]
    pressures = [read_series(tmp_path / "gas.h5", k)["pressure"][50:] / bar for k in range(replicas)]
    mean = np.mean([v.mean() for v in volumes])
    sem = np.sqrt(np.sum([block_standard_error(v) ** 2 for v in volumes])) / replicas
    assert abs(mean - exact) < 3 * sem and sem < 0.03 * exact, (mean / exact, sem / exact)
    width = np.mean([v.std() / v.mean() for v in volumes])
    assert abs(width - 1 / np.sqrt(n + 1)) < 0.1 / np.sqrt(n + 1), width
    p_mean = np.mean([p.mean() for p in pressures])
    p_sem = np.sqrt(np.sum([block_standard_error(p) ** 2 for p in pressures])) / replicas
    assert abs(p_mean - target) < 3 * p_sem, (p_mean, p_sem)


@pytest.mark.gpu
def test_cuda_npt_batch_matches_cpu(tmp_path):
    # the barostat's noise, strain and matrix exponentials on the device: the same run as on the CPU
    model = LennardJones(["Ar"], AR_EPSILON, AR_SIGMA)
    structures = [_argon(0.97), bulk("Ar", "fcc", a=5.3).repeat((3, 3, 3))]
    common = dict(steps=50, seed=2, traj_interval=0, h5_interval=10, cell_dof="triclinic", **NPT)
    run_md(structures, MLFFCalculator(model, device="cpu", dtype="float64"), output=tmp_path / "cpu", **common)
    run_md(structures, MLFFCalculator(model, device="cuda", dtype="float64"), output=tmp_path / "gpu", **common)
    for k in range(2):
        for name in ("positions", "cell", "pressure"):
            np.testing.assert_allclose(frames(tmp_path / "gpu.h5", name, k), frames(tmp_path / "cpu.h5", name, k),
                                       rtol=1e-8, atol=1e-8, err_msg=name)
