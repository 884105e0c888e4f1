"""``mlff-md sweep``: an Optuna hyperparameter search, one full training run per trial."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from .cli import _check_folder, _choose_split, _count, _fail, _metadata_items, _read, _with_split, _with_units


@click.command()
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--space", required=True, type=click.Path(dir_okay=False),
              help="Search space, TOML or JSON: per hyperparameter a list or {low, high, log}.")
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False),
              help="Folder of the study: trial_NNNN/ per trial, trials.csv, best.pt, plots.")
@click.option("--sampler", type=click.Choice(["tpe", "grid"]), default="tpe", show_default=True)
@click.option("--trials", "n_trials", type=click.IntRange(min=1), default=None,
              help="Trials this process runs (default: the whole grid; 20 with tpe).")
@click.option("--trial-time", "trial_time_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Training time budget of each trial, seconds.")
@click.option("--metric", type=click.Choice(["forces_mae", "energy_mae"]), default=None,
              help="Validation error minimised (default: forces_mae, energy_mae without forces).")
@click.option("--pruner", type=click.Choice(["median", "none"]), default="median", show_default=True,
              help="Stop trials whose validation curve falls behind the median of earlier trials.")
@click.option("--storage", default=None, help="Optuna storage URL (default: sqlite:///<output>/study.db).")
@click.option("--study-name", default="mlff-sweep", show_default=True)
@click.option("--sampler-seed", type=int, default=None, help="Seed of the sampler (default: random).")
@click.option("--arch", "architecture", default="painn", show_default=True, help="Architecture: painn or schnet.")
@_with_units
@_with_split
@click.option("--seed", default=0, show_default=True, help="Seed of the split and of every trial's weights.")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="A training setting shared by all trials, e.g. --set patience=20 --set batch_size=10.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads of this process.")
def sweep(data, space, output, sampler, n_trials, trial_time_s, metric, pruner, storage, study_name,
          sampler_seed, architecture, energy_unit, length_unit, split_file, split_tag, n_train, n_val, n_test,
          val_block, seed, settings, device, dtype, threads):
    """Search hyperparameters of a potential trained on DATA with Optuna (needs ase-mlff[sweep]).

    Several processes (on one machine, or on several with --storage a shared
    database URL) given the same --study-name and -o run trials of one study.
    """
    from ..threads import set_threads
    from . import sweep as sweeps

    try:
        sweeps.import_optuna()
        parameters = sweeps.load_space(space)
        base = sweeps.base_settings({"architecture": architecture.lower(), "seed": seed, "device": device,
                                     "dtype": dtype, **_metadata_items(settings)})
        if sampler == "grid":
            sweeps.grid(parameters)
        set_threads(threads)
    except (ValueError, FileNotFoundError, ImportError, TypeError) as error:
        raise _fail(error) from None
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    _check_folder(folder, f"--output {folder}")
    dataset = _read(data, energy_unit, length_unit)
    metric = metric or ("forces_mae" if dataset.has_forces else "energy_mae")
    if metric == "forces_mae" and not dataset.has_forces:
        raise click.ClickException(f"--metric forces_mae: {data} has no forces; use --metric energy_mae")
    if n_trials is None and sampler == "tpe":
        n_trials = 20
    storage = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    try:
        # the same split options as mlff-md train; a random split (the default) is drawn by
        # shared_split, once for every process of the study
        given = (_choose_split(dataset, data, split_file, split_tag, n_train, n_val, n_test, val_block, seed)
                 if split_file or split_tag or n_train is not None else None)
        split = sweeps.shared_split(folder, dataset, _count(n_val, "--n-val"), _count(n_test, "--n-test"),
                                    seed, study_name, given)
        job = sweeps.Sweep(dataset, split, parameters, base, folder, metric=metric, trial_time_s=trial_time_s,
                           echo=click.echo)
        with warnings.catch_warnings():
            # energy-only data warns once per trial: once here is enough
            warnings.filterwarnings("ignore", message=".*never seen forces.*")
            study = sweeps.run_study(job, storage, study_name, sampler=sampler, n_trials=n_trials,
                                     pruner=pruner, sampler_seed=sampler_seed)
        click.echo(sweeps.format_rows(sweeps.trial_rows(study)))
        written = sweeps.write_results(study, folder, echo=click.echo)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        raise _fail(error) from None
    click.echo("written: " + ", ".join(str(p) for p in written.values()) + f"; study {study_name} in {storage}")
