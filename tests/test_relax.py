"""Batched FIRE and the Fréchet cell filter (``ase_mlff.optimize``) against ASE, and ``mlff-md relax``.

The reference is ASE's own ``FIRE`` (with ``FrechetCellFilter`` for cells)
on ``MLFFCalculator`` with the same model in float64. Both do the same
arithmetic on the same forces, so the runs take the same branches and the
same number of steps; positions differ only by rounding: 1e-12 Å for
positions-only runs, and 1e-9 Å with the cell, where ASE goes through
scipy's logm/expm of the deformation on every step and we keep its
logarithm (differences of 1e-15 per step, grown over ~60 steps by the
optimizer's sensitivity).
"""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.constraints import FixAtoms, FixCom
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from conftest import make_model, silicon
from test_md_fixtures import invoke, one_line_error

from ase_mlff import MLFFCalculator, save_model
from ase_mlff.models import LennardJones
from ase_mlff.optimize import FireParameters, relax
from ase_mlff.optimize.cellfilter import expm_frechet
from ase_mlff.optimize.neighbors import SkinNeighbors

ARGON = LennardJones(["Ar"], epsilon=0.0104, sigma=3.4, cutoff=8.0)


def argon(seed: int, a: float = 5.4, repeat=(2, 2, 2), shear: float = 0.0) -> Atoms:
    """Rattled fcc argon (a = 5.4 Å, near the LJ minimum at 5.3 Å), optionally sheared."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True) * repeat
    atoms.rattle(0.1, seed=seed)
    atoms.cell[0, 1] += shear
    return atoms


def cluster() -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.3, cubic=True)
    atoms.pbc, atoms.cell = False, np.zeros((3, 3))
    atoms.rattle(0.05, seed=4)
    return atoms


def calc(model=ARGON, **kwargs) -> MLFFCalculator:
    return MLFFCalculator(model, dtype="float64", **kwargs)


def ase_fire(atoms: Atoms, model, fmax: float, steps: int, cell: bool = False, pressure_bar: float = 0.0):
    ref = atoms.copy()
    ref.calc = calc(model)
    target = FrechetCellFilter(ref, scalar_pressure=pressure_bar * units.bar) if cell else ref
    optimizer = FIRE(target, logfile=None)
    converged = optimizer.run(fmax=fmax, steps=steps)
    return ref, optimizer.nsteps, converged


@pytest.mark.parametrize("cell, pressure_bar", [(False, 0.0), (True, 0.0), (True, 2000.0)])
def test_one_structure_matches_ase(cell, pressure_bar):
    atoms = argon(1, shear=0.2 if cell else 0.0)
    ref, n_ase, ok_ase = ase_fire(atoms, ARGON, 1e-3, 500, cell, pressure_bar)
    result = relax(atoms, calc(), fmax=1e-3, cell=cell, pressure_bar=pressure_bar, steps=500)[0]
    assert ok_ase and result.converged
    assert result.steps == n_ase > 20
    tol = 1e-9 if cell else 1e-12  # see the module docstring
    np.testing.assert_allclose(result.atoms.positions, ref.positions, atol=tol, rtol=0)
    np.testing.assert_allclose(result.atoms.cell.array, ref.cell.array, atol=tol, rtol=0)
    assert result.energy == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    assert result.atoms.get_potential_energy() == result.energy
    np.testing.assert_allclose(result.atoms.get_forces(), ref.get_forces(), atol=1e-9)
    assert result.fmax < 1e-3 and result.atoms.info["converged"] is True
    assert np.abs(result.atoms.get_forces()).max() < 1e-3 * 1.1  # the filter's rows are F·F_def (F_def ≈ 1)
    if cell:
        stress = ref.get_stress(voigt=False)
        target = -pressure_bar * units.bar * np.eye(3)
        assert result.smax == pytest.approx(np.abs(stress - target).max(), abs=1e-12)
        # relaxed under p: the pressure −tr σ/3 is p to within the criterion (cell forces / N below fmax)
        assert -np.trace(stress) / 3 / units.bar == pytest.approx(pressure_bar, abs=50)
        assert atoms.cell.volume != pytest.approx(result.atoms.cell.volume, rel=1e-3)  # the cell did move
    else:
        assert result.smax is None
        np.testing.assert_array_equal(result.atoms.cell.array, atoms.cell.array)


def test_silicon_schnet_follows_ase_step_by_step():
    """A network (random SchNet) on a triclinic Si cell: 25 steps of FIRE+filter, not yet converged."""
    model = make_model("schnet", species=("Si",), cutoff=4.0)
    atoms = silicon(2)  # 18 atoms, triclinic
    ref, n_ase, ok_ase = ase_fire(atoms, model, 1e-6, 25, cell=True)
    result = relax(atoms, calc(model), fmax=1e-6, cell=True, steps=25)[0]
    assert not ok_ase and not result.converged and result.steps == n_ase == 25
    np.testing.assert_allclose(result.atoms.positions, ref.positions, atol=1e-9, rtol=0)
    np.testing.assert_allclose(result.atoms.cell.array, ref.cell.array, atol=1e-9, rtol=0)
    assert np.abs(result.atoms.positions - atoms.positions).max() > 0.01  # it did move


def test_expm_frechet_against_scipy():
    from scipy.linalg import expm_frechet as scipy_frechet

    rng = np.random.default_rng(0)
    a, e = rng.normal(size=(4, 3, 3)) * 0.3, rng.normal(size=(4, 3, 3))
    ours = expm_frechet(torch.from_numpy(a), torch.from_numpy(e)).numpy()
    for k in range(4):
        np.testing.assert_allclose(ours[k], scipy_frechet(a[k], e[k], compute_expm=False), atol=1e-13)


@pytest.mark.parametrize("reuse", [False, True], ids=["autograd", "stored sums"])
@pytest.mark.parametrize("cell", [False, True])
def test_batch_of_mixed_sizes_equals_each_alone(cell, reuse, monkeypatch):
    """Also with the edge vectors differentiated through what the kept lists store (neighbors.edge_vectors,
    which only lists of ``REUSE_MIN_EDGES`` or more edges take: these small ones when lowered to 1)."""
    if reuse:
        from ase_mlff import neighbors

        monkeypatch.setattr(neighbors, "REUSE_MIN_EDGES", 1)
    structures = [argon(3), argon(4, repeat=(1, 1, 2)), argon(5, a=5.2, repeat=(2, 1, 1), shear=0.1)]
    if not cell:
        structures.append(cluster())
    together = relax(structures, calc(), fmax=1e-3, cell=cell)
    assert len({r.steps for r in together}) > 1  # they converge at different steps
    for atoms, in_batch in zip(structures, together):
        alone = relax(atoms, calc(), fmax=1e-3, cell=cell)[0]
        assert in_batch.converged and alone.converged
        assert in_batch.steps == alone.steps
        # float64 sums over a different set of edges: rounding only (grown over tens of steps)
        np.testing.assert_allclose(in_batch.atoms.positions, alone.atoms.positions, atol=1e-10, rtol=0)
        np.testing.assert_allclose(in_batch.atoms.cell.array, alone.atoms.cell.array, atol=1e-10, rtol=0)
    if not cell:  # the molecule has no stress; the cells do
        assert "stress" not in together[-1].atoms.calc.results
        assert together[0].atoms.get_stress().shape == (6,)


@pytest.mark.parametrize("name", ["lennard-jones", "schnet"])
def test_final_stress_comes_from_the_kept_lists_and_equals_a_fresh_evaluation(name, monkeypatch):
    """A positions-only relaxation evaluates the stress of its final cells once more, on the lists each
    cell had when it left the batch (converged at different steps) or still has (not converged): no
    neighbor search, and the stress of a fresh MLFFCalculator on the relaxed structures (Lennard-Jones
    gets the wide lists as they are; SchNet's are pruned to its cutoff first)."""
    from ase_mlff import neighbors
    from ase_mlff.optimize import driver

    model = ARGON if name == "lennard-jones" else make_model("schnet", species=("Ar",), cutoff=6.0)
    structures = [argon(3), argon(4, repeat=(1, 1, 2)), argon(5, a=5.2, repeat=(2, 1, 1), shear=0.1), cluster()]
    searches, at_final = [], []
    build, final_stress = neighbors.NeighborList.build, driver._Relaxation._final_stress
    monkeypatch.setattr(neighbors.NeighborList, "build", lambda self, batch: searches.append(1) or build(self, batch))
    monkeypatch.setattr(driver._Relaxation, "_final_stress",
                        lambda self, *a: at_final.append(len(searches)) or final_stress(self, *a))
    lengths = []
    final = SkinNeighbors.final

    def measured(self, wanted, sub):
        got = final(self, wanted, sub)
        vectors = neighbors.edge_vectors(sub.positions, sub.cell, sub.system, got)
        lengths.append(torch.linalg.vector_norm(vectors, dim=1))
        return got

    monkeypatch.setattr(SkinNeighbors, "final", measured)
    results = relax(structures, calc(model), fmax=1e-3, steps=40)
    monkeypatch.undo()
    # the wide lists as they are for LJ (pairs beyond its cutoff included), pruned to the cutoff for SchNet
    assert (float(lengths[0].max()) >= model.cutoff) == (name == "lennard-jones")
    if name == "lennard-jones":  # systems left the batch at different steps, one is still relaxing
        assert len({r.steps for r in results}) > 1 and not all(r.converged for r in results)
    assert at_final == [len(searches)] and len(searches) >= 1  # no search for the final stress
    for result in results[:3]:
        atoms = result.atoms.copy()
        atoms.calc = calc(model)
        np.testing.assert_allclose(result.atoms.get_stress(), atoms.get_stress(), atol=1e-12, rtol=0)
    assert "stress" not in results[3].atoms.calc.results  # the molecule


class _FailingOnKrypton(LennardJones):
    """LJ whose krypton atoms get a NaN energy from the third call on (a model that breaks mid-run)."""

    zero_beyond_cutoff = True
    calls = 0

    def atomic_outputs(self, species, edge_index, edge_vectors, half: bool = False):
        y = super().atomic_outputs(species, edge_index, edge_vectors, half=half)
        type(self).calls += 1
        if type(self).calls >= 3:
            y = torch.where(species == self.species.index("Kr"), float("nan"), y)
        return y


def test_a_structure_that_breaks_stops_and_the_others_final_stress_stands():
    """Non-finite energy or forces stop that structure (not relaxed, marked), the others relax on, and
    their final stress, from the kept lists, is that of a fresh evaluation."""
    model = _FailingOnKrypton(["Ar", "Kr"], epsilon=0.0104, sigma=3.4, cutoff=8.0)
    structures = [argon(3), argon(4, repeat=(1, 1, 2))]
    structures[1].symbols[0] = "Kr"
    results = relax(structures, calc(model), fmax=1e-3)
    assert results[0].converged and not results[1].converged
    assert results[1].message == "non-finite energy or forces at step 2; not relaxed"
    assert not results[1].atoms.info["converged"]
    atoms = results[0].atoms.copy()
    atoms.calc = calc()
    np.testing.assert_allclose(results[0].atoms.get_stress(), atoms.get_stress(), atol=1e-12, rtol=0)


def test_not_converged_is_reported_and_marked():
    results = relax([argon(6), argon(7, repeat=(1, 1, 1), a=5.3)], calc(), fmax=1e-4, steps=3)
    r = results[0]
    assert not r.converged and r.steps == 3 and r.fmax > 1e-4
    assert r.atoms.info["converged"] is False and r.atoms.info["relax_steps"] == 3
    assert "not converged within 3 steps" in r.message
    ref, n, ok = ase_fire(argon(6), ARGON, 1e-4, 3)
    assert not ok and n == 3
    np.testing.assert_allclose(r.atoms.positions, ref.positions, atol=1e-12)


def test_fixed_atoms_stay_and_match_ase():
    atoms = argon(8)
    atoms.set_constraint(FixAtoms(indices=[0, 5]))
    ref, n_ase, _ = ase_fire(atoms, ARGON, 1e-3, 500)
    result = relax(atoms, calc(), fmax=1e-3)[0]
    assert result.steps == n_ase
    np.testing.assert_array_equal(result.atoms.positions[[0, 5]], atoms.positions[[0, 5]])
    np.testing.assert_allclose(result.atoms.positions, ref.positions, atol=1e-12)
    with pytest.raises(ValueError, match="FixAtoms together with cell=True"):
        relax(atoms, calc(), cell=True)
    atoms.set_constraint(FixCom())
    with pytest.raises(ValueError, match="FixCom is not supported"):
        relax(atoms, calc())


def test_bad_arguments():
    with pytest.raises(ValueError, match="periodic in all three directions"):
        relax(cluster(), calc(), cell=True)
    with pytest.raises(ValueError, match="pass cell=True"):
        relax(argon(1), calc(), pressure_bar=10.0)
    with pytest.raises(ValueError, match="fmax must be"):
        relax(argon(1), calc(), fmax=0.0)
    with pytest.raises(ValueError, match="steps must be"):
        relax(argon(1), calc(), steps=-1)
    with pytest.raises(ValueError, match="not covered"):
        relax(bulk("Si"), calc())
    with pytest.raises(TypeError, match="MLFFCalculator"):
        relax(argon(1), object())
    with pytest.raises(ValueError, match="FIRE parameter dt"):
        FireParameters(dt=0)


def test_model_path_and_bundled_name(tmp_path):
    save_model(ARGON, tmp_path / "lj.pt")
    by_path = relax(argon(1), str(tmp_path / "lj.pt"), fmax=0.05)[0]
    by_object = relax(argon(1), MLFFCalculator(ARGON), fmax=0.05)[0]  # float32, as from a file
    assert by_path.steps == by_object.steps
    np.testing.assert_allclose(by_path.atoms.positions, by_object.atoms.positions, atol=1e-6)
    from conftest import ethanol

    named = relax(ethanol(0), "ethanol-painn", fmax=0.05, steps=2)[0]
    chosen = relax(ethanol(0), None, fmax=0.05, steps=2)[0]  # ethanol-painn is what is chosen
    np.testing.assert_allclose(named.atoms.positions, chosen.atoms.positions, atol=1e-12)


def test_trajectories_one_per_structure(tmp_path):
    structures = [argon(1), argon(2, repeat=(1, 1, 2))]
    results = relax(structures, calc(), fmax=1e-3, trajectory=tmp_path / "relax.traj")
    for k, r in enumerate(results):
        assert r.trajectory == tmp_path / f"relax.{k}.traj"
        frames = ase.io.read(r.trajectory, ":")
        assert len(frames) == r.steps + 1  # the start and every step, as ASE's optimizers write
        np.testing.assert_allclose(frames[-1].positions, r.atoms.positions, atol=1e-14)
        assert frames[-1].get_potential_energy() == pytest.approx(r.energy, abs=1e-12)
    with pytest.raises(FileExistsError, match="relax.0.traj"):
        relax(structures, calc(), trajectory=tmp_path / "relax.traj")
    relax(structures, calc(), steps=2, trajectory=tmp_path / "relax.traj", overwrite=True)
    assert len(ase.io.read(tmp_path / "relax.1.traj", ":")) == 3


def test_crash_leaves_no_partial_trajectory(tmp_path, monkeypatch):
    from ase_mlff.optimize import driver

    calls = {"n": 0}
    real = driver.compute

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "compute", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        relax(argon(1), calc(), trajectory=tmp_path / "relax.traj")
    assert list(tmp_path.iterdir()) == []


# -- mlff-md relax -----------------------------------------------------------------
@pytest.fixture
def argon_files(tmp_path):
    ase.io.write(tmp_path / "frames.extxyz", [argon(1), argon(2, repeat=(1, 1, 2))])
    ase.io.write(tmp_path / "cluster.xyz", cluster())
    save_model(ARGON, tmp_path / "lj.pt")
    return tmp_path


def test_cli_round_trip(argon_files):
    d = argon_files
    out = d / "relaxed.extxyz"
    result = invoke("relax", f"{d / 'frames.extxyz'}@:", d / "cluster.xyz", "-m", d / "lj.pt", "--dtype",
                    "float64", "--fmax", "0.001", "-o", out, "--trajectory", d / "relax.traj")
    assert result.exit_code == 0, result.output
    relaxed = ase.io.read(out, ":")
    assert len(relaxed) == 3 and all(a.info["converged"] for a in relaxed)
    reference = relax([argon(1), argon(2, repeat=(1, 1, 2)), cluster()], calc(), fmax=1e-3)
    for a, r in zip(relaxed, reference):
        np.testing.assert_allclose(a.positions, r.atoms.positions, atol=1e-8)  # extxyz keeps ~1e-8 Å
        assert a.get_potential_energy() == pytest.approx(r.energy, abs=1e-8)
        assert a.info["relax_steps"] == r.steps
    table = result.output
    assert "frames.extxyz@0" in table and "cluster.xyz" in table and "summary: 3 converged" in table
    assert [(d / f"relax.{k}.traj").exists() for k in range(3)] == [True] * 3
    before = out.read_bytes()
    again = invoke("relax", d / "cluster.xyz", "-m", d / "lj.pt", "-o", out)
    assert "exists" in one_line_error(again) and "--overwrite" in one_line_error(again)
    assert out.read_bytes() == before
    assert invoke("relax", d / "cluster.xyz", "-m", d / "lj.pt", "-o", out, "--overwrite").exit_code == 0
    assert len(ase.io.read(out, ":")) == 1


def test_cli_not_converged_exits_1_and_marks(argon_files):
    d = argon_files
    result = invoke("relax", f"{d / 'frames.extxyz'}@0", "-m", d / "lj.pt", "--steps", "3", "--fmax", "1e-4",
                    "-o", d / "out.extxyz")
    assert result.exit_code == 1, result.output
    assert " NO " in result.output and "1 NOT converged" in result.output
    assert ase.io.read(d / "out.extxyz").info["converged"] is False


def test_cli_cell_and_pressure(argon_files):
    d = argon_files
    result = invoke("relax", f"{d / 'frames.extxyz'}@0", "-m", d / "lj.pt", "--dtype", "float64", "--cell",
                    "--pressure-bar", "1000", "--fmax", "0.001", "-o", d / "out.traj")
    assert result.exit_code == 0, result.output
    assert "smax" in result.output
    a = ase.io.read(d / "out.traj")
    r = relax(argon(1), calc(), fmax=1e-3, cell=True, pressure_bar=1000)[0]
    np.testing.assert_allclose(a.cell.array, r.atoms.cell.array, atol=1e-12)


@pytest.mark.parametrize("args, message", [
    (("cluster.xyz", "--cell"), "periodic in all three directions"),
    (("frames.extxyz@:", "-o", "out.vasp"), "holds one structure"),
    (("cluster.xyz", "-o", "out.unknownext"), "cannot tell the file format"),
    (("cluster.xyz", "--pressure-bar", "10"), "add --cell"),
    (("missing.xyz",), "does not exist"),
    (("cluster.xyz", "--fmax", "-1"), "finite positive"),
])
def test_cli_bad_input_one_line(argon_files, monkeypatch, args, message):
    monkeypatch.chdir(argon_files)
    result = invoke("relax", *args, "-m", "lj.pt")
    assert message in one_line_error(result)
    assert not (argon_files / "relaxed.extxyz").exists()


def _pairs(edge_index, shifts, offset=0):
    rows = np.concatenate([edge_index.T.numpy() + offset, shifts.numpy()], 1)
    return rows[np.lexsort(rows.T[::-1])]


def test_skin_lists_hold_the_pairs_of_fresh_lists_as_cells_deform():
    """Deform two cells (up to a few % strain) and move atoms: the kept lists give exactly the fresh pairs."""
    from ase_mlff.batch import atoms_to_batch
    from ase_mlff.neighbors import NeighborList
    from ase_mlff.optimize.cellfilter import deformed
    from ase_mlff.optimize.neighbors import SkinNeighbors

    structures = [argon(1, a=5.0), argon(2, repeat=(1, 1, 2), shear=0.3)]
    batch = atoms_to_batch(structures)
    u0, cell0 = batch.positions.clone(), batch.cell.clone()
    lists, fresh = SkinNeighbors(6.0, 1.0), NeighborList(6.0)
    active = torch.ones(2, dtype=torch.bool)
    rng = np.random.default_rng(0)
    kept = 0
    for step in range(12):
        strain = torch.from_numpy(rng.normal(scale=0.01 * step, size=(2, 3, 3)))
        gradient = torch.linalg.matrix_exp(0.5 * (strain + strain.transpose(1, 2)))
        u = u0 + torch.from_numpy(rng.normal(scale=0.05, size=u0.shape))
        positions, cell = deformed(u, cell0, gradient, batch.system)
        now = batch.replace(positions=positions, cell=cell)
        before = lists.rebuilds
        got = lists(now, gradient, active, b"all")
        kept += lists.rebuilds == before
        want = fresh(now)
        np.testing.assert_array_equal(_pairs(got.edge_index, got.shifts), _pairs(want.edge_index, want.shifts))
    assert 0 < kept < 11  # some steps reused the lists, larger strains forced rebuilds
