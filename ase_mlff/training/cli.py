"""``mlff-md train``, ``mlff-md eval`` and ``mlff-md info``."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import tempfile
import warnings
from pathlib import Path

import click

from ..units import ENERGY_UNITS, LENGTH_UNITS


def _fail(error: Exception) -> click.ClickException:
    """A library error as a one-line CLI error (some messages quote other tools' multi-line text)."""
    return click.ClickException(" ".join(str(error).split()))


_RANKS = "ase_mlff.distributed"


def _on_ranks(command):
    """``mlff-md train`` on this process's rank: under torchrun it trains data-parallel
    (--batch-size is the global batch, rank 0 writes every file and prints).

    Checks --loss-beta against the explicit weights, joins the process group
    (:func:`~ase_mlff.training.distributed.from_environment`, left in the click
    context for the command), and turns any error of a rank into one line that
    names the rank, so that torchrun's teardown of the others is explained.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from .distributed import from_environment

        context = click.get_current_context()
        if kwargs.get("loss_beta") is not None:
            given = [f"--{name.replace('_', '-')}" for name in ("energy_weight", "forces_weight")
                     if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
            if given:
                raise click.UsageError(f"--loss-beta sets both loss weights; drop {' and '.join(given)} "
                                       "(β = forces_weight / (energy_weight + forces_weight))")
        try:
            dist = context.meta[_RANKS] = from_environment(kwargs["device"])
        except ValueError as error:
            raise _fail(error) from None
        try:
            return command(*args, **kwargs)
        except Exception as error:
            if not dist.active:
                raise
            if isinstance(error, click.ClickException):
                error.message = f"rank {dist.rank} of {dist.world_size}: {error.message}"
                raise
            raise click.ClickException(f"rank {dist.rank} of {dist.world_size}: {type(error).__name__}: "
                                       + " ".join(str(error).split())) from error
        finally:
            dist.close()

    return wrapper


def _check_device(ctx, param, value: str) -> str:
    """auto, cpu, cuda or cuda:N, and CUDA only where it is available; everything else is refused here.

    torch accepts many more device strings (meta, mps, xpu, ...) on which the
    models either cannot run or produce no numbers: refuse them before any work.
    """
    if value == "auto":
        return value
    import torch

    from ..batch import resolve_device

    hint = "use auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a device; {hint}") from None
    if device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{value!r}: {device.type} devices are not supported; {hint}")
    try:
        resolve_device(value)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                                 f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); {hint}")
    return value


def _check_folder(folder: Path, what: str) -> None:
    """``folder`` exists, is a folder, and a file can be created in it (tried, not guessed:
    permission bits do not tell for root, read-only mounts or /sys)."""
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor.exists() and not ancestor.is_dir():
        raise click.ClickException(f"{what}: {ancestor} is a file, not a folder; choose a path in a folder")
    if not folder.exists():
        raise click.ClickException(f"{what}: folder {folder} does not exist; create it first "
                                   f"(mkdir -p {folder}) or choose another path")
    try:
        handle, probe = tempfile.mkstemp(prefix=".mlff-write-test.", dir=folder)
    except OSError as error:
        raise click.ClickException(f"{what}: cannot create files in {folder} ({error.strerror}); "
                                   "choose a writable folder") from None
    os.close(handle)
    os.unlink(probe)


def _check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output file that could not be written."""
    path = Path(path)
    if path.is_dir():
        raise click.ClickException(f"{what} {path} is a folder; give a file name, e.g. {path / 'out'}")
    _check_folder(path.parent, f"{what} {path}")
    if path.exists() and not os.access(path, os.W_OK):
        raise click.ClickException(f"{what} {path} exists and is not writable; choose another name")
    return path


def _count(value: str | None, name: str):
    """'100' -> 100 frames, '0.1' -> 10 % of the frames."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither a frame count nor a fraction", param_hint=name) from None
    if 0 < number < 1:
        return number
    if number < 0 or number != int(number):
        raise click.BadParameter(f"{value!r}: give a whole number of frames or a fraction in (0, 1)",
                                 param_hint=name)
    return int(number)


def _read(path, energy_unit, length_unit, energy_key="energy", forces_key="forces", cache=(None, False)):
    """The data file as a Dataset; ``cache`` is (--cache-dir, --no-cache)."""
    from .data import read_dataset

    cache_dir, no_cache = cache  # a cache that cannot be written costs a line, never the run
    try:
        return read_dataset(path, energy_unit=energy_unit, length_unit=length_unit,
                            energy_key=energy_key, forces_key=forces_key,
                            cache_dir=False if no_cache else cache_dir,
                            echo=lambda line: click.echo(line, err=True))
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from None


def _metadata_items(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--metadata")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


_units = [
    click.option("--energy-unit", type=click.Choice(sorted(ENERGY_UNITS)), default="eV", show_default=True,
                 help="Energy unit of the data file (forces are in this unit per length unit)."),
    click.option("--length-unit", type=click.Choice(sorted(LENGTH_UNITS)), default="Å", show_default=True,
                 help="Length unit of positions and cell in the data file."),
]


def _with_units(function):
    for option in reversed(_units):
        function = option(function)
    return function


_cache_options = [
    click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                 help="Folder of the parsed-data cache (default: $XDG_CACHE_HOME/ase-mlff or "
                      "~/.cache/ase-mlff, for text files of 8 MB or more; a folder given here caches any size)."),
    click.option("--no-cache", is_flag=True, help="Parse the data file without reading or writing the cache."),
]


def _with_cache(function):
    for option in reversed(_cache_options):
        function = option(function)
    return function


_split_options = [
    click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
                 help="JSON file with 'train', 'val' (and 'test') frame-index lists, e.g. a model's "
                      "<name>.split.json."),
    click.option("--split-tag", default=None, metavar="KEY:TRAIN:TEST",
                 help="Split by a per-frame tag in atoms.info, e.g. rmd17_splits:train01:test01; "
                      "validation frames are blocks of frames carrying neither tag."),
    click.option("--n-train", default=None, help="Training frames (count or fraction; default: all the rest)."),
    click.option("--n-val", default="0.1", show_default=True, help="Validation frames (count or fraction)."),
    click.option("--n-test", default="0.1", show_default=True,
                 help="Test frames (count or fraction; random split only)."),
    click.option("--val-block", default=25, show_default=True,
                 help="Consecutive frames per validation block (--split-tag)."),
]


def _with_split(function):
    """The options that choose a split (train and sweep take the same ones): see :func:`_choose_split`."""
    for option in reversed(_split_options):
        function = option(function)
    return function


def _choose_split(dataset, data, split_file, split_tag, n_train, n_val, n_test, val_block, seed):
    """The split the options of :func:`_with_split` name: a file, a per-frame tag, or random."""
    from .splits import load_split, random_split, tagged_split

    if split_file and split_tag:
        raise click.UsageError(f"--split {split_file} and --split-tag {split_tag} both choose the split: give one")
    if split_file:
        split = load_split(split_file)
    elif split_tag:
        parts = split_tag.split(":")
        if len(parts) != 3:
            raise click.BadParameter(f"{split_tag!r}: expected KEY:TRAIN:TEST", param_hint="--split-tag")
        key, train_tag, test_tag = parts
        missing = [k for k, info in enumerate(dataset.info) if key not in info]
        if missing:
            raise ValueError(f"frame {missing[0]} of {data} has no {key!r} in atoms.info")
        n_val_count = _count(n_val, "--n-val")
        if isinstance(n_val_count, float):
            n_val_count = int(round(n_val_count * len(dataset)))
        n_train_count = _count(n_train, "--n-train")
        split = tagged_split([str(info[key]) for info in dataset.info], train_tag, test_tag,
                             n_val=n_val_count, val_block=val_block, seed=seed,
                             n_train=None if n_train_count is None else int(n_train_count))
    else:
        split = random_split(len(dataset), n_val=_count(n_val, "--n-val"), n_test=_count(n_test, "--n-test"),
                             n_train=_count(n_train, "--n-train"), seed=seed)
    split.check_range(len(dataset), str(data))
    return split


@click.command()
@click.argument("data", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(), help="Model file to write (.pt).")
@click.option("--arch", "architecture", default="painn", show_default=True, help="Architecture: painn or schnet.")
@click.option("--species", default=None, help="Comma-separated elements the model covers (default: those in the data).")
@click.option("--cutoff", default=5.0, show_default=True, help="Cutoff radius, Å.")
@click.option("--features", "n_features", default=64, show_default=True, help="Feature width.")
@click.option("--interactions", "n_interactions", default=3, show_default=True, help="Interaction blocks.")
@click.option("--rbf", "n_rbf", default=20, show_default=True, help="Radial basis functions.")
@_with_units
@click.option("--energy-key", default="energy", show_default=True,
              help="atoms.info key of the energy (without a calculator).")
@click.option("--forces-key", default="forces", show_default=True,
              help="atoms.arrays key of the forces (without a calculator).")
@_with_split
@click.option("--seed", default=0, show_default=True, help="Seed of the split, the initial weights and the shuffling.")
@click.option("--energy-weight", default=1.0, show_default=True, help="Weight of the per-atom energy loss.")
@click.option("--forces-weight", default=10.0, show_default=True, help="Weight of the force loss.")
@click.option("--loss-beta", type=click.FloatRange(0, 1), default=None,
              help="Convex loss (1-β)·L_E + β·L_F instead of the two weights (sets them to 1-β, β).")
@click.option("--energy-loss", type=click.Choice(["per-atom", "per-structure"]), default="per-atom",
              show_default=True, help="Energy error per atom (ΔE/n) or per structure (ΔE) in the loss.")
@click.option("--optimizer", type=click.Choice(["adam", "adamw"]), default="adam", show_default=True)
@click.option("--lr", "learning_rate", default=5e-4, show_default=True, help="Initial learning rate.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--batch-size", default=10, show_default=True, type=click.IntRange(min=1),
              help="Frames per optimizer step.")
@click.option("--epochs", "max_epochs", default=1000, show_default=True, help="Maximum number of epochs.")
@click.option("--max-time", "max_time_min", type=float, default=None, help="Training time budget in minutes.")
@click.option("--patience", default=60, show_default=True, help="Epochs without improvement before stopping.")
@click.option("--lr-patience", default=15, show_default=True, help="Plateau epochs before the learning rate halves.")
@click.option("--ema-decay", default=0.99, show_default=True,
              help="Decay of the exponential moving average of weights (0: off).")
@click.option("--grad-clip", default=10.0, show_default=True, help="Gradient-norm clip (0: off).")
@click.option("--repulsion", type=click.Choice(["none", "zbl"]), default="none", show_default=True,
              help="Short-range prior: zbl adds the ZBL nuclear repulsion below the shortest distance of "
                   "each pair of elements in the training frames (zero on every training frame), so MD "
                   "cannot fall into holes where the model saw no data.")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None,
              help="CPU threads (default: MLFF_NUM_THREADS or the cores available).")
@click.option("--metadata", "metadata_items", multiple=True, metavar="KEY=VALUE",
              help="Extra metadata stored in the model file (VALUE parsed as JSON if possible).")
@click.option("--tensorboard", "tensorboard_dir", default=None, type=click.Path(file_okay=False),
              help="Also log to TensorBoard in this folder (needs tensorboard).")
@_with_cache
@click.option("--init-from", default=None, metavar="MODEL",
              help="Start from this model's weights and energy reference (file or bundled name): "
                   "fine-tuning, or a warm restart with a new learning rate or loss. Architecture, "
                   "hyperparameters and species come from the file; the optimizer starts afresh, and "
                   "the output stays that model until an epoch improves on its validation loss.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing model file.")
@click.option("--quiet", "-q", is_flag=True, help="No per-epoch progress lines.")
@_on_ranks
def train(data, output, architecture, species, energy_unit, length_unit, energy_key, forces_key,
          split_file, split_tag, n_train, n_val, n_test, val_block, seed, threads, metadata_items,
          tensorboard_dir, init_from, resume, overwrite, quiet, cache_dir, no_cache, **hyper):
    """Train a potential on DATA (extxyz/db/traj, MD17 .npz, mlff-md .h5) and write --output."""
    from ..threads import set_threads
    from .splits import load_split, save_split
    from .trainer import TrainConfig, Trainer

    dist = click.get_current_context().meta[_RANKS]  # several processes under torchrun: see _on_ranks

    output = _check_output_file(output, "--output")
    if init_from and output.resolve() == _parent_path(init_from).resolve():
        raise click.ClickException(f"--init-from {init_from} is also --output; write the fine-tuned "
                                   "model to another file (the parent stays as it is)")
    split_path = output.with_name(output.stem + ".split.json")
    checkpoint = output.with_name(output.name + ".ckpt")
    log_csv = output.with_name(output.stem + ".log.csv")
    for path in (split_path, checkpoint, log_csv):
        if path.is_dir():
            raise click.ClickException(f"{path} (written beside --output) is a folder; move it away "
                                       "or choose another --output")
    if tensorboard_dir:
        folder = Path(tensorboard_dir)
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        _check_folder(folder, f"--tensorboard {tensorboard_dir}")
    if resume:
        if not checkpoint.exists():
            raise click.ClickException(f"--resume: no checkpoint {checkpoint}; start without --resume")
    elif not overwrite:
        for path in (output, checkpoint):
            if path.exists():
                raise click.ClickException(
                    f"{path} exists; pass --overwrite to replace it"
                    + (" or --resume to continue that run" if path == checkpoint else ""))
    if init_from:
        architecture = _from_parent(init_from, architecture, hyper)
    try:
        set_threads(threads)
        config = TrainConfig(architecture=architecture.lower(), init_from=init_from,
                             species=[s.strip() for s in species.split(",")] if species else None,
                             seed=seed, **hyper)
    except ValueError as error:
        raise _fail(error) from None
    dataset = _read(data, energy_unit, length_unit, energy_key, forces_key, (cache_dir, no_cache))
    if not dataset.has_forces and hyper["forces_weight"] > 0 and (
            click.get_current_context().get_parameter_source("forces_weight")
            is click.core.ParameterSource.COMMANDLINE):
        click.echo(f"warning: --forces-weight {hyper['forces_weight']} has nothing to weigh: {data} has no "
                   "forces, so only the energy loss is trained (drop --forces-weight)", err=True)
    try:
        if resume:
            split = load_split(split_path)
            split.check_range(len(dataset), str(data))
        else:
            split = _choose_split(dataset, data, split_file, split_tag, n_train, n_val, n_test, val_block, seed)
        if not quiet and dist.is_main:
            echo = click.echo
        else:
            def echo(line):
                return None
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            with warnings.catch_warnings(record=True) as caught:
                trainer = Trainer(dataset, split, config, output, checkpoint=checkpoint, log_csv=log_csv,
                                  metadata=_metadata_items(metadata_items), echo=echo,
                                  tensorboard_dir=tensorboard_dir, distributed=dist)
        for warning in caught if dist.is_main else ():
            click.echo(f"warning: {warning.message}", err=True)
        if resume:  # every rank reads the checkpoint
            trainer.load_checkpoint()
            if dist.is_main:
                click.echo(f"resuming after epoch {trainer.epoch} (best epoch {trainer.best_epoch})")
        elif dist.is_main:
            save_split(split, split_path, {"data": str(data), "data_sha256": trainer.data_hash})
        if dist.active:  # torchrun's ranks keep their own SIGTERM exit (distributed.py)
            result = trainer.fit()
        else:
            with _stop_after_epoch(click.echo) as stop:
                result = trainer.fit(on_epoch=stop)
    except (ValueError, FileNotFoundError, ImportError) as error:
        raise _fail(error) from None
    from .evaluate import format_table

    if not dist.is_main:
        return
    for name, metrics in result.metrics.items():
        click.echo(format_table(metrics, f"{name} set ({metrics['n_frames']} frames)"))
    click.echo(f"split written to {split_path}, log to {trainer.log_csv}, checkpoint {checkpoint}")


@contextlib.contextmanager
def _stop_after_epoch(echo):
    """SIGTERM or SIGINT (Ctrl-C) while ``mlff-md train`` runs: finish the epoch, then stop as any
    stopping rule does (``stopped: interrupted``: final model file and metrics written, the
    checkpoint at the same epoch, so ``--resume`` continues from there). A second signal acts as
    it would without this (Ctrl-C twice: stop at once). Signals the caller ignores (a background
    job's SIGINT) stay ignored. Yields the ``on_epoch`` callback of :meth:`Trainer.fit`.
    """
    requested = []
    previous = {}

    def handler(signum, frame):
        if requested:  # the second: as before this handler
            signal.signal(signum, previous[signum])
            signal.raise_signal(signum)
            return
        requested.append(signum)
        echo(f"{signal.Signals(signum).name}: stopping after this epoch, with the final model written "
             f"(send it again to stop at once)", err=True)

    for signum in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, handler)
    try:
        yield lambda epoch, val_loss, metrics: "interrupted" if requested else None
    finally:
        for signum, before in previous.items():
            signal.signal(signum, before)


def _parent_path(init_from: str) -> Path:
    """The file --init-from names (a path or a bundled potential's name)."""
    from ..bundled import resolve_model_path

    try:
        return Path(resolve_model_path(init_from))
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(f"--init-from: {error}") from None


def _from_parent(init_from: str, architecture: str, hyper: dict) -> str:
    """Architecture (returned) and hyperparameters (into ``hyper``) of --init-from's model,
    where the command line leaves them.

    Options given on the command line are kept, so that a conflict with the file is an error.
    """
    from ..io import read_model_record

    try:
        record = read_model_record(_parent_path(init_from))
    except (ValueError, FileNotFoundError) as error:
        raise click.ClickException(f"--init-from: {error}") from None
    given = click.get_current_context().get_parameter_source

    def default(name: str) -> bool:
        return given(name) is not click.core.ParameterSource.COMMANDLINE

    if default("architecture"):
        architecture = record["architecture"]
    stored = record.get("hyperparameters", {})
    for name in ("cutoff", "n_features", "n_interactions", "n_rbf"):
        if default(name) and name in stored:
            hyper[name] = stored[name]
    return architecture


@click.command("eval")
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False))
@_with_units
@click.option("--subset", type=click.Choice(["train", "val", "test"]), default=None,
              help="Evaluate only these frames of DATA, from --split or the split stored in the model.")
@click.option("--split", "split_file", type=click.Path(dir_okay=False), default=None,
              help="Split JSON file for --subset (default: the model's own split).")
@click.option("--plot", type=click.Path(), default=None, help="Write a parity plot PNG here.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the metrics as JSON here.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Frames per model call.")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads.")
@_with_cache
def evaluate(model, data, energy_unit, length_unit, subset, split_file, plot, json_path, batch_size,
             device, dtype, threads, cache_dir, no_cache):
    """Errors of MODEL (file or bundled name) on DATA: energy and force MAE/RMSE."""
    from ..io import load_model
    from ..threads import set_threads
    from .evaluate import evaluate_model, format_table, parity_plot
    from .splits import load_split

    if split_file and not subset:
        raise click.BadParameter("--split needs --subset train|val|test", param_hint="--split")
    # outputs are checked before the work, so a typo does not cost the evaluation
    for path, option in ((json_path, "--json"), (plot, "--plot")):
        if path:
            _check_output_file(path, option)
    try:
        set_threads(threads)
        potential = load_model(model)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from None
    dataset = _read(data, energy_unit, length_unit, cache=(cache_dir, no_cache))
    try:
        if subset:
            if split_file:
                indices = getattr(load_split(split_file), subset)
            else:
                training = potential.metadata.get("training", {})
                if "split" not in training:
                    raise ValueError(f"{model} stores no split; pass --split FILE")
                if training.get("data_sha256") != dataset.fingerprint():
                    raise ValueError(f"{data} is not the data {model} was trained on (hash differs), "
                                     "so its stored split does not apply; pass --split FILE")
                indices = training["split"][subset]
            if not indices:
                raise ValueError(f"the {subset} set of the split is empty")
            dataset = dataset.subset(indices)
        metrics, energy, forces = evaluate_model(potential, dataset, batch_size, device, dtype)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from None
    title = f"{model} on {data}" + (f" ({subset} set)" if subset else "")
    click.echo(format_table(metrics, title))
    try:
        if json_path:
            Path(json_path).write_text(json.dumps(metrics, indent=1))
        if plot:
            parity_plot(dataset, energy, forces, plot, title)
            click.echo(f"parity plot written to {plot}")
    except ImportError as error:
        raise _fail(error) from None
    except OSError as error:
        raise click.ClickException(f"could not write {error.filename or json_path or plot} "
                                   f"({error.strerror or error}); choose a writable path") from None


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record (without weights) as JSON.")
def info(model, as_json):
    """What is inside a model file (or bundled potential): architecture, species, training, metrics."""
    from ..bundled import resolve_model_path
    from ..compositions import TRAINING_DATA_KEY
    from ..io import read_model_record
    from .evaluate import format_table

    try:
        path = resolve_model_path(model)
        record = read_model_record(path)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(error) from None
    n_parameters = sum(v.numel() for k, v in record["state_dict"].items()
                       if v.is_floating_point() and not k.endswith(("element_energy", "scale", "shift",
                                                                    "species_index", "centers", "frequencies")))
    if as_json:
        # json.dumps escapes control characters itself
        public = {k: v for k, v in record.items() if k != "state_dict"}
        click.echo(json.dumps(public, indent=1, default=str))
        return
    meta = record.get("metadata", {})
    reference = record.get("energy_reference", {})
    lines = [
        f"file              {path}",
        f"format            {record['format']} v{record['format_version']} "
        f"(ase-mlff {record.get('package_version', '?')})",
        f"architecture      {record['architecture']}",
        f"species           {', '.join(record['species'])}",
        f"cutoff            {record['cutoff']} Å",
        f"hyperparameters   {json.dumps(record['hyperparameters'], default=str)}",
        f"parameters        {n_parameters}",
        f"dtype             {record.get('dtype')}",
        f"units             {record.get('units')}",
        "energy reference  " + ", ".join(f"{k} {v:.6f} eV" for k, v in reference.get("element_energy", {}).items())
        + f"; scale {reference.get('scale', 1.0):.6g} eV, shift {reference.get('shift', 0.0):.6g} eV",
    ]
    if "repulsion" in record:  # read_model_record checked its layout
        pairs = record["repulsion"]["pairs"]
        lines.append("repulsion         ZBL, switched off between (inner-outer Å) "
                     + ", ".join(f"{a}-{b} {r_in:.2f}-{r_out:.2f}" for a, b, r_in, r_out in pairs))
    for key, value in meta.items():
        if key not in ("training", "metrics", TRAINING_DATA_KEY):
            lines.append(f"{key!s:<17} {value}")
    training = meta.get("training")
    if isinstance(training, dict) and training:
        try:
            lines += _training_lines(training)
        except (TypeError, ValueError, AttributeError):  # free-form metadata in another layout
            lines.append(f"training          {json.dumps(training, default=str)}")
    elif training is not None:
        lines.append(f"training          {json.dumps(training, default=str)}")
    lines.append(f"trained on        {_trained_on(meta)}")
    lines.append(f"forces            {_forces_line(meta)}")
    tables = []
    metrics = meta.get("metrics", {})
    for name, values in (metrics.items() if isinstance(metrics, dict) else []):
        try:
            tables.append(format_table(values, f"{name} set metrics"))
        except (KeyError, TypeError, ValueError, AttributeError):
            tables.append(f"{name} set metrics: {json.dumps(values, default=str)}")
    if metrics and not isinstance(metrics, dict):
        tables.append(f"metrics           {json.dumps(metrics, default=str)}")
    # metadata is free text from whoever wrote the file: escape what a terminal would
    # obey (colours, cursor moves, carriage returns) instead of printing it
    click.echo("\n".join(_printable(line) for line in lines + [row for t in tables for row in t.split("\n")]))


def _trained_on(meta: dict) -> str:
    """'C2H6O (1000 frames; elements C, H, O)', or why there are no out-of-training warnings."""
    from ..compositions import TRAINING_DATA_KEY, training_compositions

    compositions = training_compositions(meta)
    if compositions is None:
        return "not recorded (imported or older model): no out-of-training warnings"
    record = meta[TRAINING_DATA_KEY]
    elements = record.get("elements")
    details = [f"{record['n_frames']} frames" if isinstance(record.get("n_frames"), int) else None,
               f"elements {', '.join(map(str, elements))}" if isinstance(elements, list) else None]
    shown = "; ".join(d for d in details if d)
    listed = ", ".join(compositions[:_LISTED])
    if len(compositions) > _LISTED:  # QM9: hundreds of formulas; `info --json` has them all
        listed = f"{len(compositions)} compositions ({listed}, ...)"
    return listed + (f" ({shown})" if shown else "")


#: compositions ``mlff-md info`` names before it counts the rest
_LISTED = 8


def _forces_line(meta: dict) -> str:
    """Whether the model's forces were trained (the ``forces_trained`` mark of its metadata)."""
    from ..compositions import forces_trained

    trained = forces_trained(meta)
    if trained is None:
        return "not recorded (imported or older model)"
    if trained:
        return "trained (energy and force loss)"
    return ("NOT trained: energy-only model (forces_trained false); its forces, MD and relaxations are "
            "unvalidated, and automatic selection never picks it")


def _training_lines(training: dict) -> list[str]:
    split = training.get("split", {})
    config = training.get("config", {})
    lines = [
        f"training data     {training.get('data')} ({training.get('n_frames')} frames, "
        f"sha256 {str(training.get('data_sha256'))[:16]}...)",
        f"split             train {split.get('n_train')}, val {split.get('n_val')}, test {split.get('n_test')} "
        f"({json.dumps(split.get('method', {}), default=str)})",
        f"trained           {training.get('epochs')} epochs (best {training.get('best_epoch')}), "
        f"{training.get('wall_time_s', 0) / 60:.1f} min on {training.get('hardware')}; "
        f"stopped: {training.get('stopped_because')}",
        f"optimizer         {config.get('optimizer')} lr {config.get('learning_rate')}, "
        f"batch {config.get('batch_size')}, loss weights E {config.get('energy_weight')} "
        f"F {config.get('forces_weight')}"
        + (f" (β {config['loss_beta']})" if config.get("loss_beta") is not None else "")
        + (f", energy loss {config['energy_loss']}" if config.get("energy_loss") else "")
        + f", EMA {config.get('ema_decay')}",
    ]
    parent = training.get("init_from")
    if isinstance(parent, dict):
        lines.append(f"started from      {parent.get('file')} (sha256 {str(parent.get('sha256'))[:16]}..., "
                     f"{parent.get('epochs')} epochs, {float(parent.get('wall_time_s') or 0) / 60:.1f} min)")
    return lines


def _printable(text: str) -> str:
    """Non-printable characters (ESC, CR, other controls) as Python escapes: '\\x1b[31m' stays visible text."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

