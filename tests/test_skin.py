"""The calculator's neighbor-list reuse between calls must be exact.

Reference: the same calculator with skin=0, which rebuilds the list on every
call. Both see identical edge sets, so results agree to float64 round-off.
"""

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from ase_mlff import MLFFCalculator
from ase_mlff.models import LennardJones, SchNet


def _trajectory(atoms, calc, steps, temperature_K, seed=0):
    """Positions along a short, hot NVE run (so atoms cross the skin/2 limit)."""
    atoms = atoms.copy()
    atoms.calc = calc
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    frames = []
    dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
    dyn.attach(lambda: frames.append(atoms.positions.copy()), interval=1)
    dyn.run(steps)
    return frames


@pytest.mark.parametrize("skin", [0.3, 1.0])
def test_periodic_reuse_matches_rebuild(skin):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.2, seed=3)
    model = LennardJones(["Ar"], epsilon=0.0104, sigma=3.4, cutoff=6.0)
    reuse = MLFFCalculator(model, dtype="float64", skin=skin)
    fresh = MLFFCalculator(model, dtype="float64", skin=0.0)
    frames = _trajectory(atoms, reuse, 60, temperature_K=3000)
    # the run must have moved atoms past skin/2, or this test proves nothing
    moved = np.linalg.norm(frames[-1] - frames[0], axis=1).max()
    assert moved > skin / 2
    for positions in frames[::5]:
        a, b = atoms.copy(), atoms.copy()
        a.positions = b.positions = positions
        a.calc, b.calc = reuse, fresh
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-12)


def test_molecule_reuse_matches_rebuild():
    torch.manual_seed(0)
    model = SchNet(["H", "C", "O"], cutoff=3.0, n_features=16, n_interactions=2)
    atoms = molecule("CH3CH2OH")  # diameter close to 3 Å: pairs cross the cutoff
    reuse = MLFFCalculator(model, dtype="float64", skin=0.5)
    fresh = MLFFCalculator(model, dtype="float64", skin=0.0)
    for positions in _trajectory(atoms, reuse, 40, temperature_K=2000)[::4]:
        a, b = atoms.copy(), atoms.copy()
        a.positions = b.positions = positions
        a.calc, b.calc = reuse, fresh
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)


def test_reuse_matches_rebuild_while_the_cell_deforms():
    # a cell filter's calls: cell and positions change together; the list follows the deformation
    # (rebuilt only when the rule of ase_mlff.skin_lists says so) and stays exact
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.1, seed=4)
    model = LennardJones(["Ar"], epsilon=0.0104, sigma=3.4, cutoff=6.0)
    reuse = MLFFCalculator(model, dtype="float64", skin=1.0)
    fresh = MLFFCalculator(model, dtype="float64", skin=0.0)
    rng = np.random.default_rng(5)
    cell0 = atoms.cell.array.copy()
    strain = np.zeros((3, 3))
    calls = 40
    for k in range(calls):
        step = rng.normal(scale=0.004, size=(3, 3))
        strain += 0.5 * (step + step.T)
        a = atoms.copy()
        a.set_cell(cell0 @ (np.eye(3) + strain), scale_atoms=True)
        a.positions += rng.normal(scale=0.02, size=a.positions.shape) * k / calls
        b = a.copy()
        a.calc, b.calc = reuse, fresh
        assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-12)
        np.testing.assert_allclose(a.get_stress(), b.get_stress(), atol=1e-12)
    assert np.abs(strain).max() > 0.02  # the cell did deform
    # reused, and rebuilt when due (each structure is two calls: energy and forces, then stress)
    assert reuse._skin_list.deforming and 1 <= reuse._skin_list.rebuilds < fresh._skin_list.rebuilds // 4, (
        reuse._skin_list.rebuilds, fresh._skin_list.rebuilds)


def test_negative_skin_rejected():
    with pytest.raises(ValueError, match="skin"):
        MLFFCalculator(LennardJones(["Ar"]), skin=-1.0)
