"""Write the SchNetPack fixtures of tests/test_spk_import.py: small model files and their outputs.

Runs in a side environment with SchNetPack (see ../shared/PEERS.md), never in the tests;
once with 2.1.1 and once with 2.0.4 (its package alone, ahead on the path):

    spk-venv/bin/python tests/make_spk_fixtures.py
    pip install --no-deps --target /tmp/spk204 schnetpack==2.0.4
    PYTHONPATH=/tmp/spk204 spk-venv/bin/python tests/make_spk_fixtures.py

Each run (re)writes the models of its version and merges their outputs into
reference.json.

For each option combination below it builds a ``NeuralNetworkPotential`` with
random weights (biases and offsets made non-zero, so that they are tested),
saves it with ``torch.save(model, path)`` as ``spktrain`` does, and records
what SchNetPack's own ``SpkCalculator`` returns for ethanol, a periodic water
box and a Si cell, in float32 and float64, in eV, eV/Å and eV/Å³ (ASE's units).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data.dataloader as _dataloader

# schnetpack 2.1.1 imports T_co, which torch renamed _T_co
_dataloader.T_co = getattr(_dataloader, "T_co", None) or _dataloader._T_co
# the calculator unpickles the files written below (never do this for a file from elsewhere)
os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

import ase.io  # noqa: E402
import schnetpack as spk  # noqa: E402
import schnetpack.transform as trn  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from schnetpack.interfaces.ase_interface import SpkCalculator  # noqa: E402

OUT = Path(__file__).parent / "data" / "spk"
ZMAX = 100


def structures():
    """ethanol (open), 8 waters in a periodic box, an 8-atom Si cell (rattled, slightly sheared)."""
    ethanol = molecule("CH3CH2OH")
    rng = np.random.default_rng(7)
    water = molecule("H2O")
    box = None
    for corner in np.indices((2, 2, 2)).reshape(3, -1).T:
        w = water.copy()
        w.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        w.translate(corner * 3.1 + 1.5)
        box = w if box is None else box + w
    box.cell = np.diag([6.2, 6.2, 6.2])
    box.pbc = True
    box.rattle(0.05, seed=1)
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.rattle(0.1, seed=2)
    silicon.set_cell(silicon.cell.array @ np.array([[1, 0.03, 0], [0, 1, 0.02], [0.01, 0, 1]]),
                     scale_atoms=True)
    return {"ethanol": ethanol, "water": box, "silicon": silicon}


def offsets(seed: int, mean: float | None = None) -> trn.AddOffsets:
    """AddOffsets with random atomrefs (and a mean), set after construction: the constructor
    cannot take an atomref tensor (``tensor or ...``) and spells the mean differently in 2.0."""
    module = trn.AddOffsets("energy", add_atomrefs=True, add_mean=mean is not None)
    g = torch.Generator().manual_seed(seed)
    module.atomref = -100.0 * torch.rand(ZMAX, generator=g)  # [zmax], float32 as in trained files
    module._atomrefs_initialized = True
    if mean is not None:
        module.mean = torch.tensor([mean])
        module._mean_initialized = True
    return module


def _mean_offset(mean: float) -> trn.AddOffsets:
    module = trn.AddOffsets("energy", add_mean=True)
    module.mean = torch.tensor([mean])
    module._mean_initialized = True
    return module


def build(name: str) -> tuple[torch.nn.Module, float, dict]:
    """(model, cutoff in the model's length unit, units for SpkCalculator)."""
    units = {"energy_unit": "kcal/mol", "position_unit": "Angstrom"}
    if name == "schnet_gaussian":
        cutoff = 5.0
        representation = spk.representation.SchNet(
            n_atom_basis=16, n_interactions=2, radial_basis=spk.nn.GaussianRBF(n_rbf=12, cutoff=cutoff),
            cutoff_fn=spk.nn.CosineCutoff(cutoff))
        head = spk.atomistic.Atomwise(n_in=16, output_key="energy")
        forces = spk.atomistic.Forces(calc_stress=True)
        post = [trn.CastTo64(), offsets(1, mean=-3.5)]
        inputs = [spk.atomistic.Strain(), spk.atomistic.PairwiseDistances()]
    elif name == "schnet_bessel_shared":
        cutoff = 4.5
        representation = spk.representation.SchNet(
            n_atom_basis=24, n_interactions=3, n_filters=20,
            radial_basis=spk.nn.BesselRBF(n_rbf=10, cutoff=cutoff), cutoff_fn=spk.nn.CosineCutoff(cutoff),
            shared_interactions=True, activation=F.silu)
        head = spk.atomistic.Atomwise(n_in=24, n_layers=3, n_hidden=16, activation=spk.nn.shifted_softplus,
                                      output_key="energy")
        forces = spk.atomistic.Forces()
        post = [trn.CastTo64(), trn.ScaleProperty("energy", scale=torch.tensor([2.5])),
                trn.ScaleProperty("forces", scale=torch.tensor([2.5])),
                _mean_offset(1.25)]
        inputs = [spk.atomistic.PairwiseDistances()]
        units = {"energy_unit": "eV", "position_unit": "Angstrom"}
    elif name == "painn":
        cutoff = 5.0
        representation = spk.representation.PaiNN(
            n_atom_basis=16, n_interactions=3, radial_basis=spk.nn.BesselRBF(n_rbf=12, cutoff=cutoff),
            cutoff_fn=spk.nn.CosineCutoff(cutoff), shared_filters=True)
        head = spk.atomistic.Atomwise(n_in=16, output_key="energy")
        forces = spk.atomistic.Forces(calc_stress=True)
        post = [trn.CastTo64(), offsets(2)]
        inputs = [spk.atomistic.Strain(), spk.atomistic.PairwiseDistances()]
    elif name == "painn_gaussian_bohr":
        cutoff = 9.0  # Bohr
        representation = spk.representation.PaiNN(
            n_atom_basis=16, n_interactions=2, radial_basis=spk.nn.GaussianRBF(n_rbf=10, cutoff=8.0, start=0.5),
            cutoff_fn=spk.nn.CosineCutoff(cutoff), shared_interactions=True,
            activation=spk.nn.shifted_softplus)
        head = spk.atomistic.Atomwise(n_in=16, n_layers=3, n_hidden=[12, 8], output_key="energy")
        forces = spk.atomistic.Forces()
        post = [trn.CastTo64(), _mean_offset(-0.75)]
        inputs = [spk.atomistic.PairwiseDistances()]
        units = {"energy_unit": "eV", "position_unit": "Bohr"}
    elif name == "schnet_spk20":  # written by SchNetPack 2.0.4
        cutoff = 5.0
        representation = spk.representation.SchNet(
            n_atom_basis=16, n_interactions=2, n_filters=24, radial_basis=spk.nn.GaussianRBF(n_rbf=16, cutoff=cutoff),
            cutoff_fn=spk.nn.CosineCutoff(cutoff))
        head = spk.atomistic.Atomwise(n_in=16, output_key="energy")
        forces = spk.atomistic.Forces(calc_stress=True)
        post = [trn.CastTo64(), offsets(3, mean=2.0)]
        inputs = [spk.atomistic.Strain(), spk.atomistic.PairwiseDistances()]
    elif name == "painn_trained":  # SchNetPack's rmd17 recipe in miniature, trained briefly below
        cutoff = 5.0
        representation = spk.representation.PaiNN(
            n_atom_basis=24, n_interactions=3, radial_basis=spk.nn.GaussianRBF(n_rbf=20, cutoff=cutoff),
            cutoff_fn=spk.nn.CosineCutoff(cutoff))
        head = spk.atomistic.Atomwise(n_in=24, output_key="energy")
        forces = spk.atomistic.Forces()
        post = [trn.CastTo64(), _mean_offset(0.0)]
        inputs = [spk.atomistic.PairwiseDistances()]
    else:
        raise ValueError(name)
    model = spk.model.NeuralNetworkPotential(representation=representation, input_modules=inputs,
                                             output_modules=[head, forces], postprocessors=post)
    if name == "painn_trained":
        train_briefly(model, cutoff)
        return model, cutoff, units
    with torch.no_grad():  # random init leaves biases at zero: make them non-zero so they are tested
        for name_, p in model.named_parameters():
            if name_.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model, cutoff, units


def train_briefly(model, cutoff: float, steps: int = 150) -> None:
    """Fit ``model`` for a few Adam steps to 30 rMD17 ethanol frames (energies and forces, kcal/mol, Å).

    The weights then look like trained ones (not an initialisation) and AddOffsets
    holds the data's mean energy per atom, as spktrain would set it.
    """
    from schnetpack.interfaces.ase_interface import AtomsConverter

    kcal = 23.060547830619026  # kcal/mol per eV (ASE units)
    frames = ase.io.read(Path(__file__).parent / "data" / "ethanol_rmd17_50frames.extxyz.gz", ":30")
    energies = torch.tensor([a.get_potential_energy() * kcal for a in frames])  # [30], kcal/mol
    forces = torch.tensor(np.concatenate([a.get_forces() * kcal for a in frames]))  # [270, 3]
    mean = float(energies.mean()) / len(frames[0])
    model.postprocessors[1].mean = torch.tensor([mean])
    for atoms in frames:
        atoms.calc = None
    batch = AtomsConverter(neighbor_list=trn.ASENeighborList(cutoff=cutoff), dtype=torch.float32)(frames)
    target = (energies - mean * len(frames[0])).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    model.do_postprocessing = False  # as in training: offsets are the model's, not the loss's
    for _ in range(steps):
        optimizer.zero_grad()
        out = model({k: v.clone() for k, v in batch.items()})
        loss = 0.01 * (out["energy"] - target).square().mean() + (out["forces"] - forces.float()).square().mean()
        loss.backward()
        optimizer.step()
    print(f"painn_trained: force RMSE {float((out['forces'] - forces.float()).detach().square().mean().sqrt()):.2f} "
          "kcal/mol/Å after training")
    model.do_postprocessing = True
    model.eval()


def reference(path: Path, cutoff: float, units: dict, atoms, dtype: torch.dtype) -> dict:
    """SpkCalculator's results for ``atoms`` in eV, eV/Å, eV/Å³.

    SpkCalculator 2.1.1 does not convert positions to the model's length unit
    (it divides forces by the factor but feeds the model Å), so for a model
    in Bohr it is given positions in Bohr and its forces and stress are
    converted here.
    """
    length = spk.units.convert_units(units["position_unit"], "Angstrom")  # Å per model length unit
    periodic = bool(atoms.pbc.all())
    atoms = atoms.copy()
    atoms.positions = atoms.positions / length
    atoms.cell = atoms.cell.array / length
    calc = SpkCalculator(str(path), neighbor_list=trn.ASENeighborList(cutoff=cutoff), dtype=dtype,
                         stress_key="stress" if periodic else None, energy_unit=units["energy_unit"],
                         position_unit="Angstrom")
    calc.calculate(atoms, ["energy", "forces", "stress"] if periodic else ["energy", "forces"])
    out = {"energy": float(calc.results["energy"]),
           "forces": (np.asarray(calc.results["forces"]) / length).tolist()}
    if periodic:  # full 3x3, eV/Å³
        out["stress"] = (np.asarray(calc.results["stress"]).reshape(3, 3) / length**3).tolist()
    return out


#: the models each SchNetPack version writes
MODELS = {"2.1": ("schnet_gaussian", "schnet_bessel_shared", "painn", "painn_gaussian_bohr", "painn_trained"),
          "2.0": ("schnet_spk20",)}


def main() -> None:
    version = importlib.metadata.version("schnetpack")  # 2.0.4 has no schnetpack.__version__
    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    frames = structures()
    ase.io.write(OUT / "structures.extxyz", list(frames.values()))
    # the references are for the structures as the tests read them (extxyz rounds to 1e-8 Å)
    frames = dict(zip(frames, ase.io.read(OUT / "structures.extxyz", ":")))
    table_path = OUT / "reference.json"
    table = json.loads(table_path.read_text()) if table_path.exists() else {"models": {}}
    table.update({"torch_version": torch.__version__, "structures": list(frames)})
    for name in MODELS[".".join(version.split(".")[:2])]:
        model, cutoff, units = build(name)
        path = OUT / name
        torch.save(model, path)
        entry = {"schnetpack_version": version, "units": units, "cutoff": cutoff, "outputs": {}}
        for dtype in (torch.float32, torch.float64):
            entry["outputs"][str(dtype).split(".")[-1]] = {
                key: reference(path, cutoff, units, atoms, dtype) for key, atoms in frames.items()}
        table["models"][name] = entry
        print(f"{name}: {path.stat().st_size / 1024:.0f} KiB")
    table_path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
