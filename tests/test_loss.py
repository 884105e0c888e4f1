"""The training loss: the weighted form, the convex form (1 − β) L_E + β L_F, and the
per-atom / per-structure energy terms, against the formulas written out in numpy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from ase_mlff.cli import main
from ase_mlff.forces import compute
from ase_mlff.io import read_model_record
from ase_mlff.training.data import read_dataset
from ase_mlff.training.splits import random_split
from ase_mlff.training.trainer import TrainConfig, Trainer

ETHANOL = Path(__file__).parent / "data" / "ethanol_rmd17_50frames.extxyz.gz"


def _trainer(tmp_path, **loss) -> Trainer:
    data = read_dataset(ETHANOL)
    split = random_split(len(data), n_val=5, n_test=0, seed=0)
    config = TrainConfig(architecture="schnet", n_features=8, n_interactions=1, n_rbf=6, dtype="float64",
                         device="cpu", **loss)
    return Trainer(data, split, config, tmp_path / "m.pt", echo=None)


def _loss_and_gradient(trainer: Trainer, frames=(0, 3, 7, 11)):
    batch, neighbors, energy_ref, forces_ref = trainer.train_cache.collate(list(frames))
    out = compute(trainer.model, batch, neighbors, forces=True, training=True)
    loss = trainer._loss(out.energy, energy_ref, batch.n_atoms, out.forces, forces_ref)
    gradient = torch.autograd.grad(loss, list(trainer.model.parameters()))
    return loss, torch.cat([g.flatten() for g in gradient]), (out, energy_ref, forces_ref, batch)


def test_beta_sets_the_weights_and_their_gradient(tmp_path):
    config = TrainConfig(loss_beta=0.8)
    assert (config.energy_weight, config.forces_weight) == pytest.approx((0.2, 0.8))
    loss_beta, grad_beta, _ = _loss_and_gradient(_trainer(tmp_path, loss_beta=0.8))
    loss_w, grad_w, _ = _loss_and_gradient(_trainer(tmp_path, energy_weight=0.2, forces_weight=0.8))
    torch.testing.assert_close(loss_beta, loss_w, rtol=1e-14, atol=0)
    torch.testing.assert_close(grad_beta, grad_w, rtol=1e-13, atol=1e-16)
    # weights (1, 10) are beta = 10/11 with an 11 times larger loss and gradient
    loss_110, grad_110, _ = _loss_and_gradient(_trainer(tmp_path, energy_weight=1.0, forces_weight=10.0))
    loss_b, grad_b, _ = _loss_and_gradient(_trainer(tmp_path, loss_beta=10 / 11))
    torch.testing.assert_close(loss_110, 11 * loss_b, rtol=1e-13, atol=0)
    torch.testing.assert_close(grad_110, 11 * grad_b, rtol=1e-12, atol=1e-15)
    assert float(grad_b.abs().max()) > 1e-6  # not a comparison of zeros


@pytest.mark.parametrize("energy_loss", ["per-atom", "per-structure"])
def test_loss_value_is_the_documented_formula(tmp_path, energy_loss):
    trainer = _trainer(tmp_path, energy_weight=0.3, forces_weight=0.7, energy_loss=energy_loss)
    loss, _, (out, energy_ref, forces_ref, batch) = _loss_and_gradient(trainer)
    scale2 = float(trainer.reference.scale) ** 2
    d_energy = (out.energy - energy_ref).detach().numpy()  # eV
    if energy_loss == "per-atom":
        d_energy = d_energy / batch.n_atoms.numpy()
    d_forces = (out.forces - forces_ref).detach().numpy()
    expected = 0.3 * np.mean(d_energy**2) / scale2 + 0.7 * np.mean(d_forces**2) / scale2
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-12)
    # and the validation loss of the same model follows the same energy form
    val_loss, metrics = trainer._validate()
    rmse = metrics["energy_rmse_meV_per_atom" if energy_loss == "per-atom" else "energy_rmse_meV"] * 1e-3
    assert val_loss == pytest.approx(0.3 * rmse**2 / scale2 + 0.7 * (metrics["forces_rmse_meV_per_A"] * 1e-3) ** 2
                                     / scale2, rel=1e-12)


def test_bad_loss_settings():
    with pytest.raises(ValueError, match=r"loss_beta must be in \[0, 1\]"):
        TrainConfig(loss_beta=1.5)
    with pytest.raises(ValueError, match="unknown energy_loss 'per-molecule'"):
        TrainConfig(energy_loss="per-molecule")


def test_cli_beta_excludes_weights_and_is_stored(tmp_path):
    runner = CliRunner()
    args = ["train", str(ETHANOL), "--arch", "schnet", "-o", str(tmp_path / "m.pt"), "--features", "8",
            "--interactions", "1", "--rbf", "6", "--n-val", "5", "--n-test", "5", "--epochs", "1",
            "--device", "cpu", "--threads", "1", "-q"]
    result = runner.invoke(main, [*args, "--loss-beta", "0.9", "--forces-weight", "5"])
    assert result.exit_code != 0 and "--loss-beta sets both loss weights; drop --forces-weight" in result.output
    result = runner.invoke(main, [*args, "--loss-beta", "0.9", "--energy-loss", "per-structure"])
    assert result.exit_code == 0, result.output
    config = read_model_record(tmp_path / "m.pt")["metadata"]["training"]["config"]
    assert config["loss_beta"] == 0.9 and config["energy_loss"] == "per-structure"
    assert config["energy_weight"] == pytest.approx(0.1) and config["forces_weight"] == pytest.approx(0.9)
    shown = runner.invoke(main, ["info", str(tmp_path / "m.pt")]).output
    assert "(β 0.9), energy loss per-structure" in shown
