"""The shared skin lists (ase_mlff.skin_lists): exact under deformation, canonical order, batches that shrink.

Reference: a fresh ``NeighborList`` at the cutoff on the same geometry (itself
tested against ASE's), compared pair for pair and, for the order, against a
lexicographic sort of (i, j, shift).
"""

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ase_mlff.batch import atoms_to_batch
from ase_mlff.compiled import compiled
from ase_mlff.forces import compute
from ase_mlff.models import LennardJones, SchNet
from ase_mlff.neighbors import NeighborList, edge_vectors, one_per_pair, shift_codes, takes_wide_lists
from ase_mlff.skin_lists import BatchedNeighbors

CUTOFF, SKIN = 5.0, 1.0


def _structures() -> list[Atoms]:
    small = bulk("Ar", "fcc", a=5.3)  # one atom, a cell smaller than the cutoff: many images
    box = bulk("Ar", "fcc", a=5.4, cubic=True) * (2, 2, 2)
    box.cell[0, 1] += 0.4  # triclinic
    box.rattle(0.1, seed=1)
    water = molecule("H2O")
    water.center(vacuum=3.0)  # open
    return [small, box, water, bulk("Ar", "fcc", a=5.6, cubic=True) * (1, 1, 2)]


def _rows(edge_index: torch.Tensor, shifts: torch.Tensor) -> np.ndarray:
    return np.concatenate([edge_index.T.numpy(), shifts.numpy()], 1)


def _sorted(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def _moved(batch, rng, step: int):
    """Positions rattled and cells strained (symmetric, up to ~3 %) by an amount growing with ``step``."""
    strain = rng.normal(scale=0.004 * step, size=(batch.n_systems, 3, 3))
    deformation = torch.linalg.matrix_exp(torch.from_numpy(0.5 * (strain + strain.transpose(0, 2, 1))))
    positions = torch.bmm(batch.positions.unsqueeze(1), deformation[batch.system]).squeeze(1)
    positions = positions + torch.from_numpy(rng.normal(scale=0.04, size=positions.shape))
    return batch.replace(positions=positions, cell=torch.bmm(batch.cell, deformation))


@pytest.mark.parametrize("half", [False, True], ids=["full", "half"])
def test_deforming_lists_equal_fresh_lists_in_canonical_order(half):
    """With ``half``: exactly the edges ``one_per_pair`` keeps of a fresh full list, each pair once
    (the one-atom cell's own images included), through reuse and partial rebuilds."""
    batch = atoms_to_batch(_structures())
    lists, fresh = BatchedNeighbors(CUTOFF, SKIN, deforming=True, half=half), NeighborList(CUTOFF)
    rng = np.random.default_rng(0)
    kept = 0
    for step in range(15):
        now = _moved(batch, rng, step)
        before = lists.rebuilds
        got = lists(now)
        kept += lists.rebuilds == before
        assert got.half == half
        rows = _rows(got.edge_index, got.shifts)
        want = fresh(now)
        if half:  # every pair twice in the full list, once in the half list
            one = one_per_pair(want.edge_index, want.shifts)
            assert 2 * int(one.sum()) == want.n_edges > 0
            want = dataclasses.replace(want, edge_index=want.edge_index[:, one], shifts=want.shifts[one])
        np.testing.assert_array_equal(rows, _sorted(rows))  # canonical: sorted by (i, j, shift)
        np.testing.assert_array_equal(rows, _sorted(_rows(want.edge_index, want.shifts)))
        wide = _rows(lists.edge_index, lists.shifts)
        np.testing.assert_array_equal(wide, _sorted(wide))  # also after partial rebuilds (merged)
    assert 0 < kept < 14  # lists were reused, and strains forced rebuilds


def test_select_keeps_the_other_systems_lists_exact():
    structures = _structures()
    batch = atoms_to_batch(structures)
    lists, fresh = BatchedNeighbors(CUTOFF, SKIN, deforming=True), NeighborList(CUTOFF)
    rng = np.random.default_rng(1)
    lists(_moved(batch, rng, 1))
    keep = [1, 3]
    sub = atoms_to_batch([structures[k] for k in keep])
    lists.select(torch.tensor(keep))
    before = lists.rebuilds
    for _ in range(4):
        now = _moved(sub, rng, 0)  # small moves: no rebuild is due
        got, want = lists(now), fresh(now)
        np.testing.assert_array_equal(_rows(got.edge_index, got.shifts),
                                      _sorted(_rows(want.edge_index, want.shifts)))
        # each edge's row of the S·cell table, moved to its new system, as computed afresh
        assert torch.equal(got.shift_code, shift_codes(now.system[got.edge_index[0]], got.shifts, got.reach))
        torch.testing.assert_close(edge_vectors(now.positions, now.cell, now.system, got),
                                   edge_vectors(now.positions, now.cell, now.system,
                                                dataclasses.replace(got, shift_code=None)), rtol=0, atol=1e-12)
    assert lists.rebuilds == before  # the kept lists served, renumbered


def test_fixed_cells_without_pairs_near_the_cutoff_skip_the_filter_and_stay_exact():
    water = molecule("H2O")  # every pair far inside the cutoff: nothing can cross it
    water.center(vacuum=3.0)
    batch = atoms_to_batch([water, water.copy()])
    lists = BatchedNeighbors(CUTOFF, SKIN)
    rng = np.random.default_rng(2)
    for _ in range(5):
        now = batch.replace(positions=batch.positions + torch.from_numpy(rng.normal(scale=0.05,
                                                                                      size=batch.positions.shape)))
        got, want = lists(now), NeighborList(CUTOFF)(now)
        assert not lists._needs_filter
        np.testing.assert_array_equal(_rows(got.edge_index, got.shifts), _sorted(_rows(want.edge_index, want.shifts)))
    assert lists.rebuilds == 1


def test_pairs_leave_and_enter_as_the_cells_expand_and_shrink_without_a_rebuild():
    """Uniform strains of up to ±3 %: pairs cross the cutoff only through the deformation (no atom moves
    relative to its cell), which the skin covers, so the lists are kept and must still be exact."""
    rng = np.random.default_rng(3)
    gas = Atoms("Ar40", positions=rng.uniform(0, 10, size=(40, 3)), cell=[10, 10.5, 11], pbc=True)  # spread pairs
    structures = [gas, *_structures()]
    batch = atoms_to_batch(structures)
    lists, fresh = BatchedNeighbors(CUTOFF, SKIN, deforming=True), NeighborList(CUTOFF)
    lists(batch)
    seen = set()
    for scale in (1.01, 1.02, 1.03, 1.0, 0.99, 0.98, 0.97):
        now = batch.replace(positions=batch.positions * scale, cell=batch.cell * scale)
        before = lists.rebuilds
        got, want = lists(now), fresh(now)
        assert lists.rebuilds == before  # the deformation alone stays within the skin
        np.testing.assert_array_equal(_rows(got.edge_index, got.shifts), _sorted(_rows(want.edge_index, want.shifts)))
        seen.add(want.n_edges)
    assert len(seen) == 7  # every strain moved pairs across the cutoff, or this test proves nothing



class _ShiftedLJ(LennardJones):
    """Overrides the pair energy without saying it is still zero beyond the cutoff."""

    def atomic_outputs(self, species, edge_index, edge_vectors, half: bool = False):
        return super().atomic_outputs(species, edge_index, edge_vectors, half=half) + 1.0


def test_only_models_that_zero_pairs_beyond_the_cutoff_get_unpruned_lists():
    assert takes_wide_lists(LennardJones()) and takes_wide_lists(compiled(LennardJones()))
    assert not takes_wide_lists(SchNet(["H", "O"], cutoff=4.0))
    assert not takes_wide_lists(_ShiftedLJ())  # a subclass must declare it again
    assert BatchedNeighbors.for_model(LennardJones(), SKIN).prune is False
    assert BatchedNeighbors.for_model(_ShiftedLJ(), SKIN).prune is True


@pytest.mark.parametrize("smooth", [True, False], ids=["smooth", "shifted"])
@pytest.mark.parametrize("deforming", [False, True], ids=["fixed", "deforming"])
def test_unpruned_lists_hold_pairs_beyond_the_cutoff_and_give_the_exact_lists_numbers(smooth, deforming):
    """Lennard-Jones on the lists at cutoff + skin (pairs beyond the cutoff included) equals it on a fresh
    list at the cutoff: energies, forces and stress to rounding, through reuse and rebuilds (the shifted
    form must mask what the smooth switch zeroes by itself)."""
    model = LennardJones(["Ar"], epsilon=0.01, sigma=3.4, cutoff=CUTOFF, smooth=smooth)
    structures = [s for s in _structures() if s.pbc.all()]
    batch = atoms_to_batch(structures)
    lists = BatchedNeighbors.for_model(model, SKIN, deforming=deforming)
    fresh = NeighborList(CUTOFF)
    rng = np.random.default_rng(4)
    beyond = 0
    for step in range(15):
        now = _moved(batch, rng, step) if deforming else batch
        now = now.replace(positions=now.positions + torch.from_numpy(rng.normal(scale=0.03 * step,
                                                                                size=batch.positions.shape)))
        got = lists(now)
        lengths = torch.linalg.vector_norm(edge_vectors(now.positions, now.cell, now.system, got), dim=1)
        beyond += int((lengths >= CUTOFF).sum())
        a = compute(model, now, got, forces=True, stress=True)
        b = compute(model, now, fresh(now), forces=True, stress=True)
        torch.testing.assert_close(a.energies, b.energies, rtol=0, atol=1e-13)
        torch.testing.assert_close(a.forces, b.forces, rtol=0, atol=1e-13)
        torch.testing.assert_close(a.stress, b.stress, rtol=0, atol=1e-15)
    assert beyond > 0 and lists.rebuilds > 1  # pairs beyond the cutoff were evaluated, lists were rebuilt



@pytest.mark.parametrize("deforming", [False, True], ids=["fixed", "deforming"])
@pytest.mark.parametrize("name", ["lennard-jones", "schnet"])
def test_kept_lists_give_autograds_numbers_through_what_they_store(monkeypatch, name, deforming):
    """The eager force path on a kept list (``Neighbors.ordered``) differentiates the edge vectors through
    the stored centre sums and, for fixed cells, stored S·cell: the numbers of the plain autograd path
    (summed in another order), while the list, and so what it stores, stays the same object across calls;
    cells that change between calls (deforming) never meet a stale S·cell; the stress differentiates
    S·cell as before. Training (a second derivative) takes the plain path."""
    from ase_mlff import neighbors as neighbors_module

    monkeypatch.setattr(neighbors_module, "REUSE_MIN_EDGES", 1)  # these small systems too
    model = (LennardJones(["Ar", "H", "O"], epsilon=0.01, sigma=3.4, cutoff=CUTOFF) if name == "lennard-jones"
             else SchNet(["Ar", "H", "O"], cutoff=CUTOFF).double())
    rng = np.random.default_rng(5)
    for structures, stress in ((_structures(), False), ([s for s in _structures() if s.pbc.all()], True)):
        batch = atoms_to_batch(structures)
        lists = BatchedNeighbors.for_model(model, SKIN, deforming=deforming)
        served, stored = set(), 0
        for step in range(8):
            now = _moved(batch, rng, step) if deforming else batch.replace(
                positions=batch.positions + torch.from_numpy(rng.normal(scale=0.02, size=batch.positions.shape)))
            got = lists(now)
            assert got.ordered
            served.add(id(got))
            a = compute(model, now, got, forces=True, stress=stress)
            stored += "offsets" in got.cache
            b = compute(model, now, dataclasses.replace(got, ordered=False), forces=True, stress=stress)
            torch.testing.assert_close(a.energies, b.energies, rtol=0, atol=1e-13)
            torch.testing.assert_close(a.forces, b.forces, rtol=0, atol=1e-12)
            if stress:
                torch.testing.assert_close(a.stress, b.stress, rtol=0, atol=1e-15)
        assert any(isinstance(key, tuple) and key[0] == "centres" for key in got.cache)
        # S·cell is stored only for cells that are not differentiated; a fixed-cell list is served again
        assert stored == (0 if stress else 8)
        if not deforming:
            assert len(served) < 8
    if name == "schnet":  # a force loss: differentiated twice, through the plain path
        out = compute(model, now, got, forces=True, training=True)
        out.forces.square().sum().backward()
        assert sum(float(p.grad.abs().sum()) for p in model.parameters() if p.grad is not None) > 0
