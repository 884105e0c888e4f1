"""Neighbor list, pair for pair against ``ase.neighborlist.neighbor_list("ijS")``.

ASE's list is the independent reference: every test compares the sorted
(i, j, S) triples, both backends, on open molecules, dense periodic water,
small Si/Mo cells, random triclinic cells, cells smaller than the cutoff,
unwrapped positions, mixed boundary conditions (with zero cell vectors on open
axes) and batches that mix all of these.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list
from conftest import ethanol, molybdenum, silicon, water

from ase_mlff.batch import atoms_to_batch
from ase_mlff.neighbors import NeighborList, edge_vectors, has_torch_cluster, neighbor_list

requires_cluster = pytest.mark.skipif(not has_torch_cluster(), reason="torch_cluster is not installed")
BACKENDS = [pytest.param("torch", id="torch"),
            pytest.param("torch-cluster", id="torch-cluster", marks=requires_cluster)]


def ase_pairs(structures, cutoff):
    """ASE's (i, j, S) triples for a list of structures, atom indices offset as in a batch."""
    triples, offset = [], 0
    for atoms in structures:
        i, j, S = ase_neighbor_list("ijS", atoms, cutoff)
        triples += zip((i + offset).tolist(), (j + offset).tolist(), *S.T.tolist())
        offset += len(atoms)
    return sorted(triples)


def our_pairs(neighbors):
    i, j = neighbors.edge_index.tolist()
    return sorted(zip(i, j, *neighbors.shifts.T.tolist()))


def assert_same_pairs(structures, cutoff, backend, dtype=torch.float64):
    structures = [structures] if isinstance(structures, Atoms) else list(structures)
    neighbors = neighbor_list(atoms_to_batch(structures, dtype=dtype), cutoff, backend=backend)
    ours, ref = our_pairs(neighbors), ase_pairs(structures, cutoff)
    if ours != ref:
        missing, extra = set(ref) - set(ours), set(ours) - set(ref)
        raise AssertionError(f"{len(missing)} pairs missing (e.g. {sorted(missing)[:3]}), "
                             f"{len(extra)} extra (e.g. {sorted(extra)[:3]}) of {len(ref)}")
    return neighbors


def random_cell(rng, length, skew=0.35):
    """A triclinic cell of roughly ``length`` Å per side, not close to degenerate."""
    while True:
        cell = length * (np.eye(3) + skew * rng.uniform(-1, 1, (3, 3)))
        volume = abs(np.linalg.det(cell))
        spacing = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
        if spacing.min() > 0.4 * length:  # plane spacing bounded: ASE itself stays cheap
            return cell


# -- open and periodic reference systems ----------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cutoff", [1.2, 2.5, 6.0])
def test_open_molecules(backend, cutoff):
    for k in range(3):
        assert_same_pairs(ethanol(k), cutoff, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dense_periodic_water_with_unwrapped_positions(backend):
    frame = water(0)
    fractional = frame.cell.scaled_positions(frame.positions)
    assert (fractional < 0).any() and (fractional >= 1).any(), "fixture should be unwrapped"
    neighbors = assert_same_pairs(frame, 5.0, backend)
    assert neighbors.n_edges > 9000  # ~50 neighbors per atom: a dense liquid
    assert_same_pairs(water(1), 3.0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cutoff", [3.0, 5.0, 7.5])
def test_small_silicon_and_molybdenum_cells(backend, cutoff):
    # Mo frame 0 is a 2-atom cell of 3.17 Å and frame 1 has 2.74 Å vectors: at
    # 7.5 Å the search reaches three images along each axis.
    for k in range(5):
        assert_same_pairs(silicon(k), cutoff, backend)
        assert_same_pairs(molybdenum(k), cutoff, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_triclinic_cells_smaller_than_cutoff_and_unwrapped(backend):
    rng = np.random.default_rng(7)
    for _ in range(12):
        n = int(rng.integers(1, 9))
        cell = random_cell(rng, length=rng.uniform(1.5, 6.0))
        # fractional coordinates far outside [0, 1): positions are not wrapped
        atoms = Atoms(f"H{n}", scaled_positions=rng.uniform(-4, 5, (n, 3)), cell=cell, pbc=True)
        assert_same_pairs(atoms, rng.uniform(2.0, 6.0), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_handed_cell(backend):
    atoms = silicon(2)
    atoms.set_cell(atoms.cell.array[[2, 1, 0]], scale_atoms=False)
    assert np.linalg.det(atoms.cell.array) < 0
    assert_same_pairs(atoms, 5.0, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_atom_cell_much_smaller_than_cutoff(backend):
    # every neighbor is an image of the atom itself
    atoms = Atoms("Cu", positions=[[0.3, -0.2, 7.1]], cell=random_cell(np.random.default_rng(1), 1.1),
                  pbc=True)
    neighbors = assert_same_pairs(atoms, 4.0, backend)
    assert neighbors.n_edges > 100
    assert (neighbors.edge_index == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pbc", [(True, True, False), (True, False, True), (False, True, False),
                                 (False, False, True), (True, False, False)])
def test_mixed_boundary_conditions(backend, pbc):
    rng = np.random.default_rng(sum(2**k * p for k, p in enumerate(pbc)))
    for zero_open_vectors in (False, True):
        for _ in range(3):
            cell = random_cell(rng, rng.uniform(2.0, 5.0))
            n = int(rng.integers(2, 8))
            atoms = Atoms(f"H{n}", scaled_positions=rng.uniform(-2, 3, (n, 3)), cell=cell, pbc=pbc)
            if zero_open_vectors:  # a slab or wire with no cell along its open axes
                open_axes = [k for k in range(3) if not pbc[k]]
                new = atoms.cell.array.copy()
                new[open_axes] = 0.0
                atoms.set_cell(new, scale_atoms=False)
            assert_same_pairs(atoms, rng.uniform(2.0, 5.0), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pbc", [(True, True, False), (False, True, False), (True, False, True)])
def test_mixed_boundary_conditions_on_a_large_unwrapped_system(backend, pbc):
    # 192 atoms: large enough that a pure-torch search bins the images instead
    # of comparing all pairs; the open axes get zero cell vectors
    atoms = water(0)
    atoms.pbc = pbc
    cell = atoms.cell.array.copy()
    cell[[k for k in range(3) if not pbc[k]]] = 0.0
    atoms.set_cell(cell, scale_atoms=False)
    assert_same_pairs(atoms, 5.5, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_mixing_molecules_cells_and_slabs(backend):
    rng = np.random.default_rng(3)
    slab = Atoms("H5", positions=rng.uniform(-1, 4, (5, 3)),
                 cell=[[3.0, 0, 0], [1.0, 2.8, 0], [0, 0, 0]], pbc=(True, True, False))
    lone = Atoms("H", positions=[[1.0, 2.0, 3.0]])  # no neighbors at all
    structures = [ethanol(0), molybdenum(0), slab, lone, silicon(2), water(0), molybdenum(1)]
    assert_same_pairs(structures, 4.5, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_pairs_differ_only_within_rounding_of_the_cutoff(backend):
    frame, cutoff = water(0), 4.0
    neighbors = neighbor_list(atoms_to_batch(frame, dtype=torch.float32), cutoff, backend=backend)
    ours = set(our_pairs(neighbors))
    # float32 positions near 20 Å carry ~2e-6 Å of rounding; 1e-4 Å is generous
    inner = set(ase_pairs([frame], cutoff - 1e-4))
    outer = set(ase_pairs([frame], cutoff + 1e-4))
    assert inner <= ours <= outer


def test_distances_are_strictly_below_the_cutoff():
    # 3.0 is exact in binary, so the pair at exactly the cutoff is a clean test of "<"
    atoms = Atoms("H3", positions=[[0, 0, 0], [3.0, 0, 0], [0, 2.5, 0]])
    assert ase_pairs([atoms], 3.0) == [(0, 2, 0, 0, 0), (2, 0, 0, 0, 0)]
    for backend in ["torch"] + (["torch-cluster"] if has_torch_cluster() else []):
        assert_same_pairs(atoms, 3.0, backend)


def test_edge_vectors_follow_ase_convention():
    frame = silicon(2)
    batch = atoms_to_batch(frame)
    neighbors = neighbor_list(batch, 5.0, backend="torch")
    i, j, D = ase_neighbor_list("ijD", frame, 5.0)
    order_ours = np.lexsort((*neighbors.shifts.T.numpy(), neighbors.edge_index[1].numpy(),
                             neighbors.edge_index[0].numpy()))
    _, _, S = ase_neighbor_list("ijS", frame, 5.0)
    order_ase = np.lexsort((*S.T, j, i))
    vectors = edge_vectors(batch.positions, batch.cell, batch.system, neighbors).numpy()
    np.testing.assert_allclose(vectors[order_ours], D[order_ase], atol=1e-12)  # float64 rounding


def test_shift_table_vectors_match_ase_on_small_unwrapped_triclinic_cells():
    # shifts of several cells (reach > 1): the table path (the builders set reach) and the
    # per-edge product (reach None, as in compiled graphs) give ASE's D, in a mixed batch
    from ase_mlff.neighbors import Neighbors, largest_shift
    from ase_mlff.skin_lists import BatchedNeighbors

    rng = np.random.default_rng(11)
    frames = []
    for _ in range(4):
        n = int(rng.integers(1, 6))
        frames.append(Atoms(f"H{n}", scaled_positions=rng.uniform(-3, 4, (n, 3)),
                            cell=random_cell(rng, length=rng.uniform(1.5, 3.0)), pbc=True))
    cutoff = 4.0
    batch = atoms_to_batch(frames)
    fresh = neighbor_list(batch, cutoff, backend="torch")
    assert fresh.reach == largest_shift(fresh.shifts) >= 2
    listed = BatchedNeighbors(cutoff, skin=0.5, backend="torch")(batch)
    assert listed.reach >= largest_shift(listed.shifts)
    offsets = np.cumsum([0] + [len(a) for a in frames])
    for neighbors in (fresh, listed, Neighbors(fresh.edge_index, fresh.shifts, True)):
        vectors = edge_vectors(batch.positions, batch.cell, batch.system, neighbors).numpy()
        i, j = neighbors.edge_index.numpy()
        shifts = neighbors.shifts.numpy()
        for k, atoms in enumerate(frames):
            mine = (i >= offsets[k]) & (i < offsets[k + 1])
            ours = sorted((a - offsets[k], b - offsets[k], *np.round(v, 9))
                          for a, b, v in zip(i[mine], j[mine], vectors[mine]))
            ai, aj, D = ase_neighbor_list("ijD", atoms, cutoff)
            theirs = sorted((a, b, *np.round(v, 9)) for a, b, v in zip(ai, aj, D))
            assert len(ours) == len(theirs) and np.allclose(np.array(ours), np.array(theirs), atol=2e-9)
            # and each vector is r_j - r_i + S·cell of its own shift
            expected = (atoms.positions[j[mine] - offsets[k]] - atoms.positions[i[mine] - offsets[k]]
                        + shifts[mine] @ atoms.cell.array)
            np.testing.assert_allclose(vectors[mine], expected, atol=1e-12)


# -- the neighbor cap of torch-cluster ----------------------------------------------------
def dense_cluster(n, spread, periodic):
    """n atoms in a Gaussian blob: far denser than the cell average, so a cap
    estimated from the mean density is too small."""
    rng = np.random.default_rng(n)
    positions = rng.normal(scale=spread, size=(n, 3)) + 15.0
    if periodic:
        return Atoms(f"H{n}", positions=positions, cell=[30.0, 30.0, 30.0], pbc=True)
    return Atoms(f"H{n}", positions=positions)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("periodic", [True, False])
def test_no_neighbor_is_dropped_past_32_or_128(backend, periodic):
    for n, spread, least in [(60, 1.0, 33), (300, 1.5, 129)]:
        atoms = dense_cluster(n, spread, periodic)
        counts = np.bincount(ase_neighbor_list("i", atoms, 5.0), minlength=n)
        assert counts.max() >= least  # the fixture really exceeds torch-cluster's caps
        neighbors = assert_same_pairs(atoms, 5.0, backend)
        np.testing.assert_array_equal(torch.bincount(neighbors.edge_index[0], minlength=n), counts)


@requires_cluster
def test_cap_learned_on_a_sparse_system_is_raised_for_a_dense_one():
    nl = NeighborList(5.0, backend="torch-cluster")
    sparse = Atoms("H4", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    nl(atoms_to_batch(sparse))
    dense = dense_cluster(300, 1.5, periodic=True)
    got = our_pairs(nl(atoms_to_batch(dense)))
    assert got == ase_pairs([dense], 5.0)
    # and back: a sparse system after a dense one is still exact
    assert our_pairs(nl(atoms_to_batch(sparse))) == ase_pairs([sparse], 5.0) == []


@requires_cluster
def test_backends_agree_on_a_mixed_batch():
    structures = [water(1), ethanol(2), molybdenum(3), dense_cluster(300, 1.5, periodic=False)]
    batch = atoms_to_batch(structures)
    a = our_pairs(neighbor_list(batch, 5.0, backend="torch"))
    b = our_pairs(neighbor_list(batch, 5.0, backend="torch-cluster"))
    assert a == b == ase_pairs(structures, 5.0)


def test_auto_backend_gives_the_reference_pairs_whatever_is_installed():
    structures = [water(0), ethanol(0)]
    assert our_pairs(neighbor_list(atoms_to_batch(structures), 5.0)) == ase_pairs(structures, 5.0)


# -- arguments ------------------------------------------------------------------------
def test_invalid_arguments():
    with pytest.raises(ValueError, match="cutoff must be positive"):
        NeighborList(0.0)
    with pytest.raises(ValueError, match="unknown backend 'vesin'"):
        NeighborList(5.0, backend="vesin")


@pytest.mark.skipif(has_torch_cluster(), reason="torch_cluster is installed")
def test_missing_torch_cluster_gives_an_install_hint():
    with pytest.raises(ValueError, match="pip install --no-build-isolation torch-cluster"):
        NeighborList(5.0, backend="torch-cluster")


def test_no_edges_for_isolated_atoms():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0, 0, 5.0]])
    neighbors = neighbor_list(atoms_to_batch(atoms), 4.0, backend="torch")
    assert neighbors.n_edges == 0 and neighbors.edge_index.shape == (2, 0)


def test_fcc_coordination_shells():
    # an independent count: fcc has 12 + 6 + 24 neighbors within its third shell
    atoms = bulk("Cu", "fcc", a=3.6)
    a = 3.6
    for cutoff, expected in [(a / 2**0.5 + 0.1, 12), (a + 0.1, 18), (a * 1.5**0.5 + 0.1, 42)]:
        neighbors = neighbor_list(atoms_to_batch(atoms), cutoff, backend="torch")
        assert neighbors.n_edges == expected


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cuda_pairs_match_ase(backend):
    """On a GPU, "auto" runs torch-cluster's CUDA radius (when installed); both match ASE."""
    structures = [water(0), molybdenum(0), silicon(1), ethanol(0)]
    for dtype in (torch.float64, torch.float32):
        batch = atoms_to_batch(structures, dtype=dtype, device="cuda")
        neighbors = neighbor_list(batch, 5.0, backend=backend)
        assert neighbors.edge_index.is_cuda
        if dtype == torch.float64:  # float32 may differ by pairs within rounding of the cutoff
            assert our_pairs(neighbors) == ase_pairs(structures, 5.0)
        else:
            assert abs(neighbors.n_edges - len(ase_pairs(structures, 5.0))) <= 4
