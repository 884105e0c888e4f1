"""Atoms -> Batch: layout, dtype/device decisions, and the errors users see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import ethanol, molybdenum, water

from ase_mlff.batch import atoms_to_batch, dtype_name, resolve_device, resolve_dtype


def test_mixed_sizes_and_boundary_conditions_are_stacked_unchanged():
    structures = [ethanol(0), molybdenum(0), water(0), Atoms("H", positions=[[1, 2, 3]])]
    batch = atoms_to_batch(structures, dtype=torch.float64)
    sizes = [len(a) for a in structures]
    assert batch.n_systems == 4
    assert batch.n_atoms.tolist() == sizes
    assert batch.system.tolist() == sum(([k] * n for k, n in enumerate(sizes)), [])
    # positions are taken as given: not wrapped (the water fixture is unwrapped)
    np.testing.assert_array_equal(batch.positions.numpy(), np.concatenate([a.positions for a in structures]))
    np.testing.assert_array_equal(batch.numbers.numpy(), np.concatenate([a.numbers for a in structures]))
    np.testing.assert_array_equal(batch.cell.numpy(), np.stack([a.cell.array for a in structures]))
    assert batch.pbc.tolist() == [[False] * 3, [True] * 3, [True] * 3, [False] * 3]
    assert batch.numbers.dtype == torch.int64 and batch.system.dtype == torch.int64
    assert batch.cell[0].abs().sum() == 0  # molecules carry no cell


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_is_applied_to_every_float_tensor(dtype):
    batch = atoms_to_batch([ethanol(1), molybdenum(1)], dtype=dtype)
    assert batch.positions.dtype == dtype and batch.cell.dtype == dtype
    assert batch.pbc.dtype == torch.bool


def test_replace_returns_a_new_batch():
    batch = atoms_to_batch(ethanol(0))
    moved = batch.replace(positions=batch.positions + 1.0)
    assert torch.equal(moved.positions, batch.positions + 1.0)
    assert moved.numbers is batch.numbers and moved is not batch


def test_single_atoms_equals_a_list_of_one():
    a, b = atoms_to_batch(ethanol(2)), atoms_to_batch([ethanol(2)])
    for field in a.__dataclass_fields__:
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("structures, error, message", [
    ([], ValueError, "at least one Atoms"),
    ([Atoms()], ValueError, "structure 0 has no atoms"),
    (["H2O"], TypeError, "structure 0 is a str, not ase.Atoms"),
    ([Atoms("H", pbc=True)], ValueError, "zero cell vector"),
    ([Atoms("H", cell=[[1, 0, 0], [0, 1, 0], [0, 0, 0]], pbc=(True, True, True))], ValueError,
     r"periodic along \[0, 1, 2\]"),
    ([Atoms("H", cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)], ValueError, "linearly dependent"),
])
def test_invalid_structures_are_rejected_with_the_reason(structures, error, message):
    with pytest.raises(error, match=message):
        atoms_to_batch(structures)


def test_open_axes_may_have_zero_cell_vectors():
    slab = Atoms("H2", positions=[[0, 0, 0], [0.5, 0.5, 1]], cell=[[2, 0, 0], [0, 2, 0], [0, 0, 0]],
                 pbc=(True, True, False))
    assert atoms_to_batch(slab).pbc.tolist() == [[True, True, False]]


def test_resolve_dtype():
    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype(torch.float64) is torch.float64
    assert dtype_name(torch.float32) == "float32"
    with pytest.raises(ValueError, match=r"\['float32', 'float64'\], got 'float16'"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match="float32 or float64"):
        resolve_dtype(torch.int64)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.gpu
def test_batch_on_cuda():
    batch = atoms_to_batch([ethanol(0), molybdenum(0)], device="cuda")
    assert batch.positions.is_cuda and batch.system.is_cuda and batch.n_atoms.is_cuda
