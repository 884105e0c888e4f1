"""Shared fixtures of the MD tests: tiny seeded systems and models written to tmp_path.

Nothing here depends on the shipped potentials: models are a Lennard-Jones
oracle for argon (smooth cutoff) and a tiny untrained SchNet for H/C/O.
"""

from __future__ import annotations

import h5py
import pytest
import torch
from ase.build import molecule
from ase.cluster import Icosahedron
from ase.io import write
from click.testing import CliRunner

from ase_mlff import save_model
from ase_mlff.cli import main
from ase_mlff.models import LennardJones, SchNet

# argon: ε = 10.4 meV, σ = 3.4 Å; a 13-atom icosahedron near its minimum
AR_EPSILON, AR_SIGMA = 0.0104, 3.4


def argon_cluster():
    return Icosahedron("Ar", 2, latticeconstant=5.26)


def argon_model():
    return LennardJones(["Ar"], epsilon=AR_EPSILON, sigma=AR_SIGMA)


def tiny_schnet(seed: int = 0, species=("H", "C", "O")):
    torch.manual_seed(seed)
    return SchNet(list(species), cutoff=4.0, n_features=16, n_interactions=2, n_rbf=10)


@pytest.fixture
def ar_files(tmp_path):
    """(structure path, model path) for the argon cluster."""
    structure = tmp_path / "ar13.xyz"
    write(structure, argon_cluster())
    model = save_model(argon_model(), tmp_path / "ar-lj.pt")
    return structure, model


@pytest.fixture
def ethanol_files(tmp_path):
    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    model = save_model(tiny_schnet(), tmp_path / "hco-schnet.pt")
    return structure, model


def invoke(*args, env=None):
    """Run ``mlff-md`` in-process; stdout and stderr are kept apart."""
    runner = CliRunner()
    return runner.invoke(main, [str(a) for a in args], env=env, catch_exceptions=True)


def one_line_error(result) -> str:
    """The user-facing error of a failed command: exactly one 'Error:' line, no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    text = result.output  # click >= 8.2: stdout and stderr interleaved as on a terminal
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    return errors[0]


def frames(path, name, system: int = 0):
    """One dataset of a system's frames (version-2 layout: /systems/<k>/frames)."""
    with h5py.File(path, "r") as f:
        return f["systems"][str(system)]["frames"][name][:]

