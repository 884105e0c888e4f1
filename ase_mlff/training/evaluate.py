"""Error metrics of a model on reference data, a printable table and a parity plot.

All errors are prediction − reference. Energies are compared as totals (meV)
and per atom (meV/atom = ΔE_b / n_b); forces per Cartesian component (meV/Å),
over all atoms and per element.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols

from ..batch import resolve_device, resolve_dtype
from .data import Dataset, check_labels
from .frames import FrameCache, predict


def error_metrics(data: Dataset, energy: np.ndarray, forces: list[np.ndarray] | None) -> dict:
    """MAE/RMSE of energies (meV, meV/atom) and forces (meV/Å, total and per element)."""
    error = (np.asarray(energy) - data.energy) * 1e3  # [B], meV
    per_atom = error / data.n_atoms
    metrics = {
        "n_frames": len(data),
        "energy_mae_meV": float(np.abs(error).mean()),
        "energy_rmse_meV": float(np.sqrt((error**2).mean())),
        "energy_mae_meV_per_atom": float(np.abs(per_atom).mean()),
        "energy_rmse_meV_per_atom": float(np.sqrt((per_atom**2).mean())),
    }
    if forces is not None and data.forces is not None:
        delta = (np.concatenate(list(forces)) - data.forces.values) * 1e3  # [N, 3], meV/Å
        numbers = data.atoms.numbers
        metrics["forces_mae_meV_per_A"] = float(np.abs(delta).mean())
        metrics["forces_rmse_meV_per_A"] = float(np.sqrt((delta**2).mean()))
        metrics["forces_per_element"] = {
            chemical_symbols[z]: {
                "mae_meV_per_A": float(np.abs(delta[numbers == z]).mean()),
                "rmse_meV_per_A": float(np.sqrt((delta[numbers == z] ** 2).mean())),
                "n_atoms": int((numbers == z).sum()),
            }
            for z in sorted(set(numbers.tolist()))
        }
    return metrics


def evaluate_model(model: torch.nn.Module, data: Dataset, batch_size: int = 32,
                   device: str = "auto", dtype: str = "float32") -> tuple[dict, np.ndarray, list | None]:
    """(metrics, predicted energies [B] eV, predicted forces per frame eV/Å) of ``model`` on ``data``.

    Raises:
        ValueError: NaN/inf reference labels (naming the frames of the file), elements
            the model does not cover, or a batch size below 1.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be at least 1 frame, got {batch_size}")
    check_labels(data, "reference data")
    model.check_numbers({int(z) for z in np.unique(data.atoms.numbers)})
    torch_dtype, torch_device = resolve_dtype(dtype), resolve_device(device)
    model = model.to(device=torch_device, dtype=torch_dtype).eval()
    cache = FrameCache(data, model.cutoff, torch_dtype, torch_device)
    energy, forces = predict(model, cache, batch_size, forces=data.has_forces)
    return error_metrics(data, energy, forces), energy, forces


def format_table(metrics: dict, title: str = "") -> str:
    """The metrics as an aligned text table."""
    rows = [("energy MAE", metrics["energy_mae_meV"], "meV"),
            ("energy RMSE", metrics["energy_rmse_meV"], "meV"),
            ("energy MAE per atom", metrics["energy_mae_meV_per_atom"], "meV/atom"),
            ("energy RMSE per atom", metrics["energy_rmse_meV_per_atom"], "meV/atom")]
    if "forces_mae_meV_per_A" in metrics:
        rows += [("forces MAE", metrics["forces_mae_meV_per_A"], "meV/Å"),
                 ("forces RMSE", metrics["forces_rmse_meV_per_A"], "meV/Å")]
        for element, values in metrics["forces_per_element"].items():
            rows += [(f"forces MAE {element} ({values['n_atoms']} atoms)", values["mae_meV_per_A"], "meV/Å"),
                     (f"forces RMSE {element}", values["rmse_meV_per_A"], "meV/Å")]
    width = max(len(r[0]) for r in rows)
    lines = [title] if title else []
    lines.append(f"{'frames':<{width}}  {metrics['n_frames']:>10d}")
    lines += [f"{name:<{width}}  {value:>10.3f}  {unit}" for name, value, unit in rows]
    return "\n".join(lines)


def parity_plot(data: Dataset, energy: np.ndarray, forces: list[np.ndarray] | None,
                path: str | os.PathLike, title: str = "") -> Path:
    """Predicted vs reference energies (per atom) and force components, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("parity plots need matplotlib: pip install 'ase-mlff[plot]' "
                          "(or pip install matplotlib)") from None
    panels = 2 if forces is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.6), squeeze=False)
    reference = data.energy / data.n_atoms
    predicted = np.asarray(energy) / data.n_atoms
    offset = reference.mean()
    pairs = [(axes[0, 0], (reference - offset) * 1e3, (predicted - offset) * 1e3,
              f"energy − {offset:.4f} eV/atom (meV/atom)")]
    if forces is not None:
        pairs.append((axes[0, 1], data.forces.values.ravel(), np.concatenate(forces).ravel(),
                      "force component (eV/Å)"))
    for axis, x, y, label in pairs:
        low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        axis.plot([low, high], [low, high], color="0.6", lw=1)
        axis.scatter(x, y, s=4, alpha=0.5)
        axis.set_xlabel(f"reference {label}")
        axis.set_ylabel(f"predicted {label}")
        axis.set_aspect("equal", adjustable="box")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
