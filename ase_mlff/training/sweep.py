"""Hyperparameter sweeps with Optuna: a search space file, one full training run per trial.

The search space is a TOML or JSON table, one entry per hyperparameter (the
:class:`~ase_mlff.training.trainer.TrainConfig` field names, or the ``mlff-md
train`` option names ``lr``, ``epochs``, ``features``, ``interactions``, ``rbf``,
``beta``)::

    lr = { low = 1e-4, high = 3e-3, log = true }   # a range: float, or int when low and high are
    batch_size = [5, 10, 20]                       # a list: categorical (the grid sampler needs lists)
    features = [32, 64]
    beta = [0.9, 0.99]

Each trial trains into ``<output>/trial_NNNN/`` (model.pt, its checkpoint and
log) with its own time budget, reports the validation error of every epoch to
Optuna (``trial.report``) and stops early when the pruner says so. The study
lives in an Optuna storage (default ``sqlite:///<output>/study.db``); processes
on one machine, or on several machines sharing a database URL, run trials of
the same study.

TOML needs Python ≥ 3.11 (``tomllib``) or the ``tomli`` package; JSON works everywhere.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..files import atomic_write
from .data import Dataset
from .splits import Split, load_split, random_split
from .trainer import TrainConfig, Trainer

#: option-style names accepted in a space file, and the TrainConfig field each sets
ALIASES = {"lr": "learning_rate", "epochs": "max_epochs", "features": "n_features",
           "interactions": "n_interactions", "rbf": "n_rbf", "beta": "loss_beta", "arch": "architecture",
           "max_time": "max_time_min"}
#: fields that a sweep sets itself or that are no hyperparameters
FIXED = ("species", "device", "dtype", "seed")
#: --metric choices: the validation metric minimised, and the metrics key it reads
METRICS = {"forces_mae": "forces_mae_meV_per_A", "energy_mae": "energy_mae_meV_per_atom"}
INSTALL_HINT = 'hyperparameter sweeps need optuna: pip install "ase-mlff[sweep]"'


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return optuna


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter: a list of choices, or a range ``low``..``high``."""

    name: str  # TrainConfig field
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def integer(self) -> bool:
        return self.choices is None and all(isinstance(v, int) for v in (self.low, self.high)) and \
            (self.step is None or isinstance(self.step, int))

    def suggest(self, trial):
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)


def _field(name: str, where: str) -> str:
    field = ALIASES.get(name, name)
    valid = sorted(f.name for f in fields(TrainConfig) if f.name not in FIXED)
    if field in FIXED or field not in valid:
        raise ValueError(f"{where}: {name!r} is not a hyperparameter to search; valid: "
                         f"{', '.join(valid)} (or {', '.join(sorted(ALIASES))})")
    return field


def parse_space(table: dict, where: str = "search space") -> tuple[Parameter, ...]:
    """Parameters from a parsed space file (see the module docstring for the layout)."""
    if not isinstance(table, dict) or not table:
        raise ValueError(f"{where}: expected a table of hyperparameters, e.g. lr = {{low = 1e-4, high = 1e-2, "
                         "log = true}} or batch_size = [5, 10]")
    out, seen = [], {}
    for name, spec in table.items():
        field = _field(name, where)
        if field in seen:
            raise ValueError(f"{where}: {name!r} and {seen[field]!r} both set {field}; keep one")
        seen[field] = name
        if isinstance(spec, list):
            if not spec or not all(isinstance(v, (int, float, str, bool)) for v in spec):
                raise ValueError(f"{where}: {name} must list at least one number or string, got {spec!r}")
            out.append(Parameter(field, choices=tuple(spec)))
        elif isinstance(spec, dict):
            unknown = sorted(set(spec) - {"low", "high", "log", "step"})
            numbers = [spec.get(k) for k in ("low", "high")]
            if unknown or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                raise ValueError(f"{where}: {name} = {spec!r}: a range is {{low = ..., high = ...}} with "
                                 "optional log = true and step = ...")
            low, high = numbers
            if not low <= high or (spec.get("log") and not low > 0):
                raise ValueError(f"{where}: {name}: need low <= high (and low > 0 with log = true), got "
                                 f"low {low}, high {high}")
            out.append(Parameter(field, low=low, high=high, log=bool(spec.get("log", False)),
                                 step=spec.get("step")))
        else:
            raise ValueError(f"{where}: {name} = {spec!r}: give a list of values or a range {{low, high}}")
    if "loss_beta" in seen and ({"energy_weight", "forces_weight"} & set(seen)):
        raise ValueError(f"{where}: loss_beta sets both loss weights; search either beta or the weights")
    return tuple(out)


def load_space(path: str | os.PathLike) -> tuple[Parameter, ...]:
    """Read a search space from ``.toml`` or ``.json``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: another suffix, a syntax error or an invalid entry (one line each).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"search space file {path} not found")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            table = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from None
    elif path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ValueError(f"{path}: reading TOML on Python {sys.version_info[0]}.{sys.version_info[1]} "
                                 "needs tomli (pip install tomli); or write the space as JSON") from None
        try:
            table = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML ({error})") from None
    else:
        raise ValueError(f"{path}: search space files are .toml or .json, not {path.suffix or 'no suffix'!r}")
    return parse_space(table, str(path))


def grid(space: tuple[Parameter, ...]) -> dict[str, list]:
    """The grid sampler's search space; every parameter must be a list."""
    ranges = [p.name for p in space if p.choices is None]
    if ranges:
        raise ValueError(f"the grid sampler needs a list of values for every parameter, and "
                         f"{', '.join(ranges)} {'is a range' if len(ranges) == 1 else 'are ranges'} "
                         "(list the values, or use --sampler tpe)")
    return {p.name: list(p.choices) for p in space}


def storage_for(url: str):
    """An Optuna RDB storage; SQLite waits for a lock instead of failing at once (several processes)."""
    optuna = import_optuna()
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def shared_split(folder: Path, data: Dataset, n_val, n_test, seed: int, study_name: str,
                 given: Split | None = None) -> Split:
    """The split every trial (of every process) uses, stored as ``<folder>/sweep.json`` by whoever
    comes first; a later process checks that it runs the same study on the same data (and, with
    ``given``, e.g. ``--split``, the same split). Without ``given``: a random split."""
    path = folder / "sweep.json"
    split = given if given is not None else random_split(len(data), n_val=n_val, n_test=n_test, seed=seed)
    split.check_range(len(data), str(data.source))
    record = {"study_name": study_name, "data": str(data.source), "data_sha256": data.fingerprint(),
              **split.to_dict()}
    if not path.exists():
        tmp = folder / f".sweep.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, indent=1))
        try:
            os.link(tmp, path)  # atomic create-if-absent: one process wins, the others read its file
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a sweep record ({error}); choose another -o") from None
    if stored.get("study_name") != study_name or stored.get("data_sha256") != record["data_sha256"]:
        raise ValueError(f"-o {folder} holds study {stored.get('study_name')!r} on "
                         f"{stored.get('data')} (sha256 {str(stored.get('data_sha256'))[:12]}); this is "
                         f"study {study_name!r} on {data.source}: choose another -o")
    stored_split = load_split(path)
    if given is not None and (stored_split.train, stored_split.val, stored_split.test) != (
            given.train, given.val, given.test):
        raise ValueError(f"-o {folder} holds study {study_name!r} with another split than this command's "
                         "--split/--split-tag/--n-train give "
                         f"({len(stored_split.train)}/{len(stored_split.val)}/{len(stored_split.test)} "
                         f"train/val/test frames there, {len(given.train)}/{len(given.val)}/{len(given.test)} "
                         "here): choose another -o or the same split options")
    return stored_split


@dataclass
class Sweep:
    """Everything a trial needs besides its own hyperparameters."""

    data: Dataset
    split: Split
    space: tuple[Parameter, ...]
    base: dict  # TrainConfig fields common to every trial
    output: Path
    metric: str = "forces_mae"
    trial_time_s: float | None = None
    echo: Callable[[str], None] = print

    def objective(self, trial) -> float:
        optuna = import_optuna()
        params = {p.name: p.suggest(trial) for p in self.space}
        folder = self.output / f"trial_{trial.number:04d}"
        try:
            folder.mkdir(parents=True, exist_ok=False)  # never train over another trial's files
        except FileExistsError:
            raise FileExistsError(f"{folder} exists, but the study has no trial {trial.number} that wrote it "
                                  f"(a study deleted or a storage changed?); use a new -o or move it away") from None
        settings = {**self.base, **params}
        if self.trial_time_s is not None:
            settings["max_time_min"] = self.trial_time_s / 60.0
        config = TrainConfig(**settings)
        trial.set_user_attr("folder", str(folder.resolve()))
        trainer = Trainer(self.data, self.split, config, folder / "model.pt", echo=None)
        key = METRICS[self.metric]

        def on_epoch(epoch: int, val_loss: float, metrics: dict) -> str | None:
            trial.report(metrics[key], epoch)
            return "pruned" if trial.should_prune() else None

        result = trainer.fit(on_epoch)
        validation = result.metrics["validation"]
        for name, value in (("val_energy_mae_meV_per_atom", validation["energy_mae_meV_per_atom"]),
                            ("val_forces_mae_meV_per_A", validation.get("forces_mae_meV_per_A")),
                            ("time_s", round(result.wall_time_s, 2)), ("epochs", result.epochs),
                            ("stopped_because", result.stopped_because)):
            trial.set_user_attr(name, value)
        self.echo(f"trial {trial.number}: {params} -> validation {self.metric} {validation[key]:.4g} "
                  f"after {result.epochs} epochs ({result.stopped_because}, {result.wall_time_s:.1f} s)")
        if result.stopped_because == "pruned":
            raise optuna.TrialPruned()
        return validation[key]


def run_study(sweep: Sweep, storage: str, study_name: str, sampler: str = "tpe", n_trials: int | None = None,
              pruner: str = "median", sampler_seed: int | None = None):
    """Run ``n_trials`` trials of the study in this process (several processes may share it)."""
    optuna = import_optuna()
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "grid":
        chosen = optuna.samplers.GridSampler(grid(sweep.space), seed=sampler_seed)
    elif sampler == "tpe":
        chosen = optuna.samplers.TPESampler(seed=sampler_seed)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; valid: grid, tpe")
    # no pruning before 2 trials have finished nor in a trial's first 2 epochs (their errors are noise)
    chosen_pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2) if pruner == "median"
                     else optuna.pruners.NopPruner())
    for attempt in range(5):  # two processes creating one new SQLite study can collide once
        try:
            study = optuna.create_study(storage=storage_for(storage), study_name=study_name, sampler=chosen,
                                        pruner=chosen_pruner, direction="minimize", load_if_exists=True)
            break
        except (SQLAlchemyError, optuna.exceptions.DuplicatedStudyError):
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    study.set_user_attr("metric", sweep.metric)
    # a hyperparameter combination TrainConfig refuses fails that trial, not the sweep
    study.optimize(sweep.objective, n_trials=n_trials, catch=(ValueError,), gc_after_trial=False)
    return study


def trial_rows(study) -> list[dict]:
    """One row per trial of the study: number, state, hyperparameters, validation errors, time."""
    names = sorted({name for t in study.trials for name in t.params})
    rows = []
    for t in study.trials:
        attrs = t.user_attrs
        rows.append({"trial": t.number, "state": t.state.name,
                     **{name: t.params.get(name, "") for name in names},
                     "val_energy_mae_meV_per_atom": attrs.get("val_energy_mae_meV_per_atom"),
                     "val_forces_mae_meV_per_A": attrs.get("val_forces_mae_meV_per_A"),
                     "epochs": attrs.get("epochs"), "time_s": attrs.get("time_s")})
    return rows


def format_rows(rows: list[dict]) -> str:
    """The rows as an aligned text table (floats to 4 significant digits)."""
    if not rows:
        return "no trials"

    def cell(value) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}" if math.isfinite(value) else str(value)
        return str(value)

    columns = list(rows[0])
    table = [columns] + [[cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(line[k]) for line in table) for k in range(len(columns))]
    return "\n".join("  ".join(text.rjust(w) for text, w in zip(line, widths)) for line in table)


def write_results(study, output: Path, echo: Callable[[str], None] = print) -> dict:
    """trials.csv, best.pt (a copy of the best trial's model) and the PNG plots; returns their paths."""
    import csv
    import io

    rows = trial_rows(study)
    written = {}
    if rows:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        written["table"] = atomic_write(output / "trials.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if complete:
        best = min(complete, key=lambda t: t.value)
        source = Path(best.user_attrs.get("folder", "")) / "model.pt"
        if source.is_file():
            written["best"] = atomic_write(output / "best.pt", lambda tmp: shutil.copyfile(source, tmp))
            echo(f"best trial {best.number} ({best.params}): validation {study.user_attrs.get('metric')} "
                 f"{best.value:.4g}; its model copied to {written['best']}")
        else:
            echo(f"best trial {best.number} trained on another machine: its model is {source} there")
    try:
        from .sweep_plots import plot_hyperparameters, plot_learning_curves
    except ImportError as error:  # matplotlib missing
        echo(f"plots skipped: {error}")
        return written
    written["learning_curves"] = plot_learning_curves(study, output / "learning_curves.png")
    written["hyperparameters"] = plot_hyperparameters(study, output / "hyperparameters.png")
    return written


def base_settings(items: dict) -> dict:
    """TrainConfig fields from ``--set KEY=VALUE`` (aliases allowed), checked by building a config."""
    settings = {}
    for key, value in items.items():
        settings[ALIASES.get(key, key)] = value
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ValueError(f"--set {unknown[0]}: no such setting; valid: {', '.join(sorted(valid))}")
    asdict(TrainConfig(**settings))
    return settings
