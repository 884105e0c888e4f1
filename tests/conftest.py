"""Shared fixtures for the core tests: small seeded models, the data files, tolerances.

Every tolerance here is keyed by dtype and says why it has the size it has.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"

#: float32 machine epsilon; float32 results are compared against float64 ones
#: with tolerances that are multiples of it times the magnitudes involved.
EPS32 = float(torch.finfo(torch.float32).eps)
EPS64 = float(torch.finfo(torch.float64).eps)

# The fixtures are tiny (tens of edges per kernel). On a shared or loaded
# machine two or more intra-op threads then spend their time waiting on each
# other (measured: 30-80x slower per evaluation than one thread on a busy
# 2-core box), so the suite runs single-threaded. Calculators created in tests
# keep it: their default never exceeds torch's current setting.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def read_frames(name: str, index=":"):
    """Frames of one fixture file in tests/data (see tests/data/README.md)."""
    from ase.io import read

    return read(DATA / name, index=index)


def ethanol(k: int = 0):
    return read_frames("ethanol_rmd17_3frames.extxyz.gz", k)


def water(k: int = 0):
    return read_frames("water_deepmd_2frames.extxyz.gz", k)


def silicon(k: int):
    """0: 16 atoms (3.87 Å vector), 1: 12 atoms hexagonal, 2: 18 atoms triclinic,
    3: 24 atoms triclinic surface, 4: 64 atoms monoclinic, 5: 64 atoms AIMD."""
    return read_frames("si_mlearn_small.extxyz.gz", k)


def molybdenum(k: int):
    """0: 2-atom bcc cell (3.17 Å), 1: 6 atoms (2.74 Å), 2: 8 atoms, 3: 12 atoms (60°),
    4: 18 atoms triclinic, 5: 54 atoms strained."""
    return read_frames("mo_mlearn_small.extxyz.gz", k)


def make_model(architecture: str, species=("H", "C", "O"), cutoff: float = 4.0, seed: int = 0,
               dtype=torch.float64, reference: bool = True):
    """A small, seeded, untrained network (or LJ) in ``dtype``.

    Untrained weights give energies of order 0.1-10 eV and forces of order
    0.01-1 eV/Å, so a sign or factor error is not hidden by tiny numbers. With
    ``reference`` the model carries large per-element reference energies and a
    scale/shift, as a trained model does.
    """
    from ase_mlff.models import LennardJones, PaiNN, SchNet

    torch.manual_seed(seed)
    if architecture == "schnet":
        model = SchNet(list(species), cutoff=cutoff, n_features=16, n_interactions=2, n_rbf=12)
    elif architecture == "painn":
        model = PaiNN(list(species), cutoff=cutoff, n_features=16, n_interactions=2, n_rbf=12)
    elif architecture == "lennard_jones":
        model = LennardJones(list(species), epsilon=0.01, sigma=2.0, cutoff=cutoff)
    else:
        raise ValueError(architecture)
    if architecture == "schnet":
        # Untrained SchNet is nearly flat in the geometry; bigger weights make
        # forces of order 1 eV/Å so errors show (PaiNN is steep enough as is).
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(2.0)
    if reference:
        rng = np.random.default_rng(seed)
        model.set_energy_reference({s: -1000.0 * rng.uniform(0.5, 1.5) for s in model.species},
                                   scale=0.7, shift=-1.3)
    return model.to(dtype)


ARCHITECTURES = ("schnet", "painn", "lennard_jones")
NETWORKS = ("schnet", "painn")


@pytest.fixture
def restore_threads():
    """Tests that set torch's thread count put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def compile_cache(tmp_path_factory):
    """Ahead-of-time packages (ase_mlff.aot) go to a folder of this test session, never to ~/.cache."""
    import os

    folder = tmp_path_factory.mktemp("aoti")
    before = os.environ.get("MLFF_COMPILE_CACHE")
    os.environ["MLFF_COMPILE_CACHE"] = str(folder)
    yield folder
    if before is None:
        os.environ.pop("MLFF_COMPILE_CACHE", None)
    else:
        os.environ["MLFF_COMPILE_CACHE"] = before
