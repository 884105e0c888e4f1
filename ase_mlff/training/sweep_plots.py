"""PNG plots of a sweep: the learning curves of all trials, each hyperparameter against the error.

Needs matplotlib (``pip install "ase-mlff[plot]"``); importing this module without
it raises ImportError with that hint, and :func:`~ase_mlff.training.sweep.write_results`
then skips the plots with one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    raise ImportError('sweep plots need matplotlib: pip install "ase-mlff[plot]"') from None

from .sweep import METRICS

#: the log column of each --metric
_LOG_COLUMNS = {"forces_mae": "val_forces_mae_meV_per_A", "energy_mae": "val_energy_mae_meV_per_atom"}
_UNITS = {"forces_mae": "meV/Å", "energy_mae": "meV/atom"}


def _log_scale_if_wide(axis, values) -> None:
    """Log y axis when the errors span more than a factor 3 (a narrow range reads better linear)."""
    values = [v for v in values if v is not None and v > 0]
    if values and max(values) > 3 * min(values):
        axis.set_yscale("log")


def _metric(study) -> str:
    metric = study.user_attrs.get("metric", "forces_mae")
    return metric if metric in METRICS else "forces_mae"


def plot_learning_curves(study, path: Path) -> Path:
    """Validation error per epoch of every trial whose log is on this machine (log scale)."""
    metric = _metric(study)
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    plotted = []
    for trial in study.trials:
        log = Path(trial.user_attrs.get("folder", "")) / "model.log.csv"
        if not log.is_file():
            continue
        table = np.genfromtxt(log, delimiter=",", names=True, ndmin=1)
        if table.size == 0:
            continue
        style = ".-" if trial.state.name == "COMPLETE" else ".:"  # a trial pruned at once is one dot
        plotted.extend(np.atleast_1d(table[_LOG_COLUMNS[metric]]).tolist())
        axis.plot(table["epoch"], table[_LOG_COLUMNS[metric]], style, lw=1.2,
                  label=f"{trial.number} ({trial.state.name.lower()})")
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"validation {metric.replace('_', ' ')} ({_UNITS[metric]})")
    _log_scale_if_wide(axis, plotted)
    if len(study.trials) <= 20:
        axis.legend(fontsize=7, title="trial")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_hyperparameters(study, path: Path) -> Path:
    """One panel per hyperparameter: its value against the trial's final validation error."""
    metric = _metric(study)
    attr = _LOG_COLUMNS[metric]
    names = sorted({name for t in study.trials for name in t.params})
    columns = max(1, min(3, len(names)))
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.3 * rows), squeeze=False)
    for axis, name in zip(axes.flat, names):
        points = [(t.params[name], t.user_attrs.get(attr), t.state.name) for t in study.trials
                  if name in t.params and t.user_attrs.get(attr) is not None]
        for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
            chosen = [(x, y) for x, y, s in points if s == state]
            if chosen:
                xs = [str(x) if isinstance(x, str) else x for x, _ in chosen]
                axis.scatter(xs, [y for _, y in chosen], marker=marker, label=state.lower())
        numeric = [x for x, _, _ in points if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if numeric and min(numeric) > 0 and max(numeric) / min(numeric) > 20:
            axis.set_xscale("log")
        axis.set_xlabel(name)
        axis.set_ylabel(f"{metric.replace('_', ' ')} ({_UNITS[metric]})")
        _log_scale_if_wide(axis, [y for _, y, _ in points])
    for axis in list(axes.flat)[len(names):]:
        axis.axis("off")
    if names:
        axes.flat[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
