"""Fit a potential to reference energies and forces.

Loss per batch, in units of scale² (scale = RMS force component of the
training set, so both terms start near 1):

    L = w_E · L_E + w_F · L_F
    L_E = mean_b((E_b − E_b^ref) / n_b)² / scale²        (energy_loss="per-atom", the default)
    L_E = mean_b(E_b − E_b^ref)² / scale²                (energy_loss="per-structure")
    L_F = mean_{i,α}(F_iα − F_iα^ref)² / scale²

The convex form of the equivariant-model papers, L = (1 − β) · L_E + β · L_F with
β in [0, 1] (``loss_beta``), is the same loss with w_E = 1 − β, w_F = β. Weights
(w_E, w_F) and β = w_F / (w_E + w_F) have the same minimum; their gradients differ
by the factor w_E + w_F (the default 1, 10 is β = 10/11 with a gradient 11 times
larger, which Adam's normalisation mostly absorbs; gradient clipping does not).

| step                               | code                                            |
|------------------------------------|-------------------------------------------------|
| E_ref[Z], scale, shift             | :func:`~ase_mlff.training.reference.fit_energy_reference` |
| F = −∂E/∂r with the graph kept     | ``forces.compute(..., training=True)``          |
| Adam / AdamW, gradient-norm clip   | ``torch.optim``, ``clip_grad_norm_``            |
| EMA of weights θ̄ ← d·θ̄ + (1−d)·θ   | ``_ema_update`` (validation and the saved model use θ̄) |
| LR × factor on a validation plateau | ``ReduceLROnPlateau``                          |
| early stop, epoch and time budgets  | ``Trainer.fit``                                 |
| several processes (torchrun)        | :mod:`~ase_mlff.training.distributed`            |

The best model on the validation loss is written (atomically) every time it
improves, and a checkpoint after every epoch, so an interrupted run loses at
most one epoch and ``resume=True`` continues it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from ..batch import resolve_device, resolve_dtype
from ..compositions import TRAINING_DATA_KEY, training_data_record
from ..files import atomic_write
from ..forces import compute
from ..io import save_model
from ..models import Potential, get_architecture
from .data import Dataset, check_dataset
from .distributed import SINGLE, Distributed
from .evaluate import error_metrics
from .frames import FrameCache, predict
from .reference import EnergyReference, fit_energy_reference
from .splits import Split

OPTIMIZERS = ("adam", "adamw")
ENERGY_LOSSES = ("per-atom", "per-structure")
#: what a checkpoint written by :meth:`Trainer.save_checkpoint` holds
_CHECKPOINT_KEYS = ("epoch", "best_loss", "best_epoch", "elapsed_s", "data_hash", "config", "split",
                    "model", "ema", "optimizer", "scheduler")


@dataclass
class TrainConfig:
    """Hyperparameters of a training run (all JSON-compatible)."""

    architecture: str = "painn"
    species: list[str] | None = None  # None: the elements of the data
    cutoff: float = 5.0  # Å
    n_features: int = 64
    n_interactions: int = 3
    n_rbf: int = 20
    energy_weight: float = 1.0
    forces_weight: float = 10.0
    loss_beta: float | None = None  # convex form: sets energy_weight = 1 − β, forces_weight = β
    energy_loss: str = "per-atom"  # or "per-structure" (total-energy errors)
    optimizer: str = "adam"
    learning_rate: float = 5e-4
    weight_decay: float = 0.0
    batch_size: int = 10
    max_epochs: int = 1000
    max_time_min: float | None = None
    patience: int = 60  # epochs without a better validation loss before stopping
    lr_patience: int = 15  # epochs on a plateau before the learning rate drops
    lr_factor: float = 0.5
    min_learning_rate: float = 1e-6
    ema_decay: float = 0.99
    grad_clip: float = 10.0
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    # a model file whose weights (and energy reference) start the run: fine-tuning or a warm
    # restart with new optimizer settings; its architecture and hyperparameters are used
    init_from: str | None = None
    # "zbl": the switched ZBL repulsion below each pair's shortest distance in the training frames
    # (ase_mlff.models.repulsion); None or "none": no prior
    repulsion: str | None = None

    def __post_init__(self):
        get_architecture(self.architecture)
        if self.repulsion == "none":
            self.repulsion = None
        if self.repulsion not in (None, "zbl"):
            raise ValueError(f"unknown repulsion {self.repulsion!r}; valid: 'zbl' or None")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {OPTIMIZERS}")
        for name in ("learning_rate", "batch_size", "max_epochs", "cutoff"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.energy_loss not in ENERGY_LOSSES:
            raise ValueError(f"unknown energy_loss {self.energy_loss!r}; valid: {ENERGY_LOSSES}")
        if self.loss_beta is not None:
            if not 0 <= self.loss_beta <= 1:
                raise ValueError(f"loss_beta must be in [0, 1] (L = (1 − β) L_E + β L_F), got {self.loss_beta}")
            self.energy_weight, self.forces_weight = 1.0 - self.loss_beta, float(self.loss_beta)
        if self.energy_weight < 0 or self.forces_weight < 0 or self.energy_weight + self.forces_weight == 0:
            raise ValueError(f"loss weights must be non-negative and not both zero, got energy "
                             f"{self.energy_weight}, forces {self.forces_weight}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_time_min is not None and not self.max_time_min > 0:
            raise ValueError(f"max_time_min must be positive, got {self.max_time_min}")

    def model_hyperparameters(self) -> dict:
        if self.architecture == "lennard_jones":
            return {"cutoff": self.cutoff}
        return dict(cutoff=self.cutoff, n_features=self.n_features,
                    n_interactions=self.n_interactions, n_rbf=self.n_rbf)


@dataclass
class TrainResult:
    model: Potential  # best model (EMA weights), on the CPU
    epochs: int
    best_epoch: int
    wall_time_s: float
    stopped_because: str
    metrics: dict = field(default_factory=dict)  # {"validation": ..., "test": ...}


#: what the epoch callback of :meth:`Trainer.fit` receives: epoch, validation loss and metrics
EpochCallback = Callable[[int, float, dict], "str | None"]


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for target, source in zip(ema.parameters(), model.parameters()):
            target.lerp_(source, 1.0 - decay)


def _log_row(writer, epoch: int, time_s: float, lr: float, train_loss: float, val_loss: float,
             metrics: dict, best: bool) -> None:
    """One row of the per-epoch CSV log (columns written by :meth:`Trainer.fit`)."""
    writer.writerow([epoch, f"{time_s:.1f}", f"{lr:.3e}", f"{train_loss:.6g}", f"{val_loss:.6g}",
                     f"{metrics['energy_mae_meV_per_atom']:.4f}",
                     f"{metrics.get('forces_mae_meV_per_A', float('nan')):.3f}", int(best),
                     f"{metrics['energy_mae_meV']:.3f}"])


def _model_reference(model: Potential) -> EnergyReference:
    return EnergyReference(model.energy_reference(), float(model.scale), float(model.shift))


def _parent_model(config: TrainConfig, data_species: list[str]) -> tuple[Potential, dict]:
    """The model of ``config.init_from`` (weights, reference, architecture) and a record of it.

    Raises:
        ValueError: the file is not a model, or ``config`` asks for another architecture,
            other hyperparameters or species than the file has (one line, naming them).
    """
    import hashlib

    from ..bundled import resolve_model_path
    from ..io import load_model

    path = resolve_model_path(config.init_from)
    model = load_model(path)
    hyper = model.hyperparameters()
    asked = {"architecture": config.architecture, **config.model_hyperparameters()}
    has = {"architecture": model.architecture, **{k: hyper.get(k) for k in asked if k != "architecture"}}
    if config.species is not None:
        asked["species"], has["species"] = list(config.species), list(model.species)
    changed = [k for k in asked if asked[k] != has[k]]
    if changed:
        raise ValueError(f"--init-from {config.init_from} is a {model.architecture} model with "
                         + ", ".join(f"{k}={has[k]!r}" for k in changed) + " but this run asks for "
                         + ", ".join(f"{k}={asked[k]!r}" for k in changed)
                         + "; drop those options (they are taken from the file) or start without --init-from")
    missing = sorted(set(data_species) - set(model.species))
    if missing:
        raise ValueError(f"--init-from {config.init_from} covers {', '.join(model.species)} but the "
                         f"training data has {', '.join(missing)}; fine-tune a model that covers every element")
    training = model.metadata.get("training", {}) if isinstance(model.metadata, dict) else {}
    training = training if isinstance(training, dict) else {}
    record = {
        "file": str(config.init_from),
        "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest(),
        **{k: training[k] for k in ("data_sha256", "epochs", "wall_time_s", "config") if k in training},
    }
    if training.get("init_from"):  # a chain of fine-tunings keeps its history
        record["init_from"] = training["init_from"]
    model.metadata = {}  # the new run writes its own; the parent's is summarised in the record
    return model.train(), json.loads(json.dumps(record))


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch thread(s)"


class Trainer:
    """One training run: data, split, model, optimizer state and the files it writes.

    Args:
        data: all frames of the data file (the split indexes into it).
        split: which frames train, validate and test.
        config: hyperparameters.
        output: model file to write (best model on validation).
        checkpoint: checkpoint file (resume state), default ``<output>.ckpt``.
        log_csv: per-epoch CSV log, default ``<output stem>.log.csv``.
        metadata: extra JSON-compatible metadata stored in the model file.
        echo: where progress lines go (None: silent).
        tensorboard_dir: also log scalars to TensorBoard there.
        distributed: this process's rank among several (torchrun); rank 0 alone writes
            files and prints, ``batch_size`` is the global batch over all ranks.
    """

    def __init__(self, data: Dataset, split: Split, config: TrainConfig, output: str | os.PathLike,
                 checkpoint: str | os.PathLike | None = None, log_csv: str | os.PathLike | None = None,
                 metadata: dict | None = None, echo: Callable[[str], None] | None = print,
                 tensorboard_dir: str | None = None, distributed: Distributed = SINGLE):
        self.config = config
        self.dist = distributed
        self.output = Path(output)
        self.checkpoint = Path(checkpoint) if checkpoint else self.output.with_name(self.output.name + ".ckpt")
        self.log_csv = Path(log_csv) if log_csv else self.output.with_name(self.output.stem + ".log.csv")
        self.extra_metadata = dict(metadata or {})
        self.echo = (echo if distributed.is_main else None) or (lambda line: None)
        self.tensorboard_dir = tensorboard_dir
        split.check_range(len(data), data.source)
        self.split = split
        self.data = data
        self.train_data = data.subset(split.train)
        self.val_data = data.subset(split.val) if split.val else None
        self.test_data = data.subset(split.test) if split.test else None
        self.training_data = training_data_record(self.train_data.atoms)  # compositions, elements

        self.device = resolve_device(distributed.device(config.device))
        self.dtype = resolve_dtype(config.dtype)
        torch.manual_seed(config.seed)
        self.parent = None  # what --init-from started from: file, sha256, its training
        if config.init_from:
            self.model, self.parent = _parent_model(config, self.train_data.species)
            species = self.model.species
        else:
            species = config.species or self.train_data.species
            cls = get_architecture(config.architecture)
            self.model = cls(species, **config.model_hyperparameters())
        if config.repulsion == "zbl":
            from ..models.repulsion import radii_from_data

            self.model.set_repulsion(radii_from_data(self.train_data.atoms, self.model.species, self.model.cutoff))
        check_dataset(self.train_data, species, "training set")
        for name, subset in (("validation set", self.val_data), ("test set", self.test_data)):
            if subset is not None:
                check_dataset(subset, species, name)
        # a geometry in both the training and the test set would leak: check the union too
        check_dataset(data.subset(split.train + split.val + split.test), species,
                      "training + validation + test frames")
        if self.val_data is None:
            raise ValueError("the split has no validation frames; the best model is chosen on "
                             "validation, so give --n-val > 0 or a 'val' list in the split file")
        self.use_forces = data.has_forces and config.forces_weight > 0
        if not data.has_forces and config.energy_weight == 0:
            raise ValueError("the data has no forces and the energy weight is 0: nothing to learn")

        if self.parent is None:
            self.reference = fit_energy_reference(self.train_data, self.model.species)
            self.model.set_energy_reference(self.reference.element_energy, self.reference.scale,
                                            self.reference.shift)
        else:  # the parent's reference and scale: the run starts from the parent's predictions
            self.reference = _model_reference(self.model)
        self.model.to(device=self.device, dtype=self.dtype)
        self.ema = copy.deepcopy(self.model)
        # what the optimizer step calls: the model itself, or DDP around it (same parameters)
        self.step_model = distributed.wrap(self.model, self.device)
        self.train_cache = FrameCache(self.train_data, self.model.cutoff, self.dtype, self.device)
        # each rank predicts one contiguous block of the validation frames
        val_block = list(distributed.block(len(self.val_data)))
        self.val_cache = (FrameCache(self.val_data.subset(val_block), self.model.cutoff, self.dtype, self.device)
                          if val_block else None)
        parameters = list(self.model.parameters())
        if config.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate,
                                               weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(parameters, lr=config.learning_rate,
                                              weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.lr_factor, patience=config.lr_patience,
            min_lr=config.min_learning_rate)
        self.epoch = 0
        self.best_loss = math.inf
        self.best_epoch = 0
        self.elapsed_s = 0.0  # training time over all sessions (resumes add up)
        self.data_hash = data.fingerprint()
        if not data.has_forces:  # not a warning: the model file says it and warns whoever uses it
            self.echo(f"{data.source} has no forces: energy-only training (the model file is marked "
                      "forces_trained: false)")

    # -- loss ----------------------------------------------------------------------
    def _loss(self, energy, energy_ref, n_atoms, forces, forces_ref, n_frames: int | None = None,
              n_force_atoms: int | None = None) -> torch.Tensor:
        """L of the frames given, as sums over them divided by the counts of the whole batch.

        ``n_frames`` and ``n_force_atoms`` are the global batch's frames and atoms
        (default: those given), so the shares of several ranks add up to the loss
        of the global batch.
        """
        scale2 = float(self.reference.scale) ** 2
        n_frames = len(energy) if n_frames is None else n_frames
        n_force_atoms = int(n_atoms.sum()) if n_force_atoms is None else n_force_atoms
        loss = energy.new_zeros(())
        if self.config.energy_weight > 0:
            error = energy - energy_ref  # [B], eV, float64
            if self.config.energy_loss == "per-atom":
                error = error / n_atoms  # eV/atom
            loss = loss + self.config.energy_weight * error.square().sum() / (n_frames * scale2)
        if self.use_forces:
            squared = (forces - forces_ref).double().square().sum()  # (eV/Å)²
            loss = loss + self.config.forces_weight * squared / (3 * n_force_atoms * scale2)
        return loss

    def _validate(self) -> tuple[float, dict]:
        model = self.ema
        energy, forces = np.zeros(0), []
        if self.val_cache is not None:
            energy, forces = predict(model, self.val_cache, batch_size=max(32, self.config.batch_size),
                                     forces=self.use_forces)
        if self.dist.active:  # the blocks of all ranks, in rank order: the whole validation set
            parts = self.dist.gather((energy, forces))
            energy = np.concatenate([p[0] for p in parts])
            forces = None if not self.use_forces else [f for p in parts for f in p[1]]
        metrics = error_metrics(self.val_data, energy, forces)
        scale2 = float(self.reference.scale) ** 2
        energy_rmse = (metrics["energy_rmse_meV_per_atom"] if self.config.energy_loss == "per-atom"
                       else metrics["energy_rmse_meV"])
        loss = self.config.energy_weight * (energy_rmse * 1e-3) ** 2 / scale2
        if self.use_forces:
            loss += self.config.forces_weight * (metrics["forces_rmse_meV_per_A"] * 1e-3) ** 2 / scale2
        return loss, metrics

    # -- one epoch -----------------------------------------------------------------
    def _train_epoch(self) -> float:
        model, config, dist = self.model.train(), self.config, self.dist
        order = np.random.default_rng([config.seed, self.epoch]).permutation(self.train_cache.n_frames)
        n_atoms = self.train_data.n_atoms  # [n_train] numpy: the global counts need no device sync
        total, frames = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            chunk = order[start:start + config.batch_size].tolist()
            # this rank's share; the loss divides by the global batch's counts
            mine, weight = dist.shard(chunk), float(dist.world_size)
            if not mine:  # a short last batch: every rank must still join DDP's all-reduce
                mine, weight = chunk[:1], 0.0
            batch, neighbors, energy_ref, forces_ref = self.train_cache.collate(mine)
            out = compute(self.step_model, batch, neighbors, forces=self.use_forces, training=True)
            loss = self._loss(out.energy, energy_ref, batch.n_atoms, out.forces, forces_ref,
                              n_frames=len(chunk), n_force_atoms=int(n_atoms[chunk].sum()))
            self.optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients: × W makes the mean the global batch's gradient
            (loss * weight).backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            self.optimizer.step()
            _ema_update(self.ema, model, config.ema_decay)
            total += float(loss.detach()) * len(chunk) * (weight > 0)
            frames += len(chunk)
        return dist.sum(total) / frames

    # -- files ---------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "epoch": self.epoch, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
            "elapsed_s": self.elapsed_s, "data_hash": self.data_hash,
            "config": asdict(self.config), "split": self.split.to_dict(),
            "model": self.model.state_dict(), "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "parent": self.parent,
        }

    def save_checkpoint(self) -> None:
        if not self.dist.is_main:
            return
        state = self._state()
        atomic_write(self.checkpoint, lambda tmp: torch.save(state, tmp), private=True)

    def load_checkpoint(self) -> None:
        """Continue from ``self.checkpoint`` (same data, split and hyperparameters).

        Raises:
            FileNotFoundError: no checkpoint.
            ValueError: not a checkpoint (another file, truncated, damaged), or one of
                another run (data, split, settings or model differ); one line each.
        """
        from ..io import FORMAT, load_plain, state_dict_mismatch

        if not self.checkpoint.exists():
            raise FileNotFoundError(f"no checkpoint {self.checkpoint} to resume from; "
                                    "start without --resume")
        fresh = "start the run again without --resume (with --overwrite)"
        state = load_plain(self.checkpoint, "an ase-mlff training checkpoint", fresh, map_location=self.device)
        if isinstance(state, dict) and state.get("format") == FORMAT:
            raise ValueError(f"{self.checkpoint} is a model file, not a training checkpoint (those are "
                             f"written next to the model as <model>.ckpt); {fresh}")
        missing = sorted(set(_CHECKPOINT_KEYS) - set(state)) if isinstance(state, dict) else list(_CHECKPOINT_KEYS)
        if missing or not isinstance(state["split"], dict) or not isinstance(state["config"], dict):
            raise ValueError(f"{self.checkpoint} is not an ase-mlff training checkpoint (it lacks "
                             f"{missing or 'a split and config dict'}); {fresh}")
        if state["data_hash"] != self.data_hash:
            raise ValueError(f"checkpoint {self.checkpoint} was trained on other data "
                             f"(hash {str(state['data_hash'])[:12]}, this data {self.data_hash[:12]}); "
                             f"give the same data file or {fresh}")
        if state["split"].get("train") != self.split.train or state["split"].get("val") != self.split.val:
            raise ValueError(f"checkpoint {self.checkpoint} used another train/validation split; {fresh}")
        parent = state.get("parent")
        if self.parent is not None and (parent or {}).get("sha256") != self.parent["sha256"]:
            raise ValueError(f"checkpoint {self.checkpoint} did not start from {self.config.init_from} "
                             f"(--init-from); resume without --init-from, or {fresh}")
        # the parent's weights are in the checkpoint: resuming does not need its file
        fixed = {k: v for k, v in state["config"].items()
                 if k not in ("max_epochs", "max_time_min", "patience", "device", "init_from")}
        fixed.setdefault("repulsion", None)  # checkpoints from before the prior had none
        mine = {k: v for k, v in asdict(self.config).items() if k in fixed}
        if fixed != mine:
            changed = sorted(k for k in fixed if fixed.get(k) != mine.get(k))
            raise ValueError(f"checkpoint {self.checkpoint} was trained with other settings "
                             f"({', '.join(f'{k}={fixed[k]!r}' for k in changed)}); resume with the same ones")
        for key, module in (("model", self.model), ("ema", self.ema)):
            detail = state_dict_mismatch(module, state[key]) if isinstance(state[key], dict) else "not a dict"
            if detail:
                raise ValueError(f"checkpoint {self.checkpoint} does not fit this model ({key} weights: "
                                 f"{detail}); {fresh}")
        try:
            self.model.load_state_dict(state["model"])
            self.ema.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as error:
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            raise ValueError(f"checkpoint {self.checkpoint} does not fit this model ({detail}); "
                             f"{fresh}") from None
        # the loss scale and the recorded reference are the checkpoint model's (a fine-tuning
        # run keeps its parent's, which the data alone would not reproduce)
        self.reference = _model_reference(self.model)
        self.parent, self.config.init_from = parent, state["config"].get("init_from")
        self.epoch, self.best_loss = int(state["epoch"]), float(state["best_loss"])
        self.best_epoch, self.elapsed_s = int(state["best_epoch"]), float(state["elapsed_s"])

    def _metadata(self, metrics: dict, stopped_because: str) -> dict:
        config = asdict(self.config)
        metadata = {
            **self.extra_metadata,
            "training": {
                "data": str(self.data.source),
                "data_sha256": self.data_hash,
                "n_frames": len(self.data),
                "split": {"n_train": len(self.split.train), "n_val": len(self.split.val),
                          "n_test": len(self.split.test), "method": self.split.method,
                          "train": self.split.train, "val": self.split.val, "test": self.split.test},
                "config": config,
                "energy_reference": asdict(self.reference),
                "epochs": self.epoch,
                "best_epoch": self.best_epoch,
                "wall_time_s": round(self.elapsed_s, 1),
                "stopped_because": stopped_because,
                "hardware": hardware_description(self.device)
                + (f", {self.dist.world_size} processes (DDP)" if self.dist.active else ""),
                "torch_version": str(torch.__version__),
                "ase_mlff_version": __version__,
                "forces_trained": self.use_forces,
                **({"init_from": self.parent} if self.parent else {}),
            },
            "metrics": metrics,
            # what the model may be trusted on: calculators warn outside these compositions
            TRAINING_DATA_KEY: self.training_data,
        }
        # a JSON round trip leaves plain Python types only (model files load with weights_only)
        return json.loads(json.dumps(metadata))

    def _save_best(self, metrics: dict, stopped_because: str = "running") -> None:
        if not self.dist.is_main:
            return
        model = copy.deepcopy(self.ema).to("cpu")
        save_model(model, self.output, self._metadata(metrics, stopped_because))

    # -- the loop ------------------------------------------------------------------
    def fit(self, on_epoch: EpochCallback | None = None) -> TrainResult:
        """Train until a stopping rule fires; returns the best model and its metrics.

        Args:
            on_epoch: called (on rank 0) after each epoch's validation with
                ``(epoch, val_loss, metrics)``; a string it returns stops training
                with that reason (a hyperparameter sweep prunes trials this way).
        """
        config, main = self.config, self.dist.is_main
        new_log = self.epoch == 0 or not self.log_csv.exists()
        log = open(self.log_csv if main else os.devnull, "w" if new_log else "a", newline="")
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["epoch", "time_s", "learning_rate", "train_loss", "val_loss",
                             "val_energy_mae_meV_per_atom", "val_forces_mae_meV_per_A", "best",
                             "val_energy_mae_meV"])
        tensorboard = None
        if self.tensorboard_dir and main:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("TensorBoard logging needs tensorboard: pip install tensorboard") from None
            tensorboard = SummaryWriter(self.tensorboard_dir)
        budget_s = None if config.max_time_min is None else 60.0 * config.max_time_min
        session_start, epoch_s = time.perf_counter(), 0.0
        before = self.elapsed_s
        ranks = (f" × {self.dist.world_size} processes (global batch {config.batch_size})"
                 if self.dist.active else "")
        self.echo(f"training {config.architecture} on {len(self.split.train)} frames "
                  f"(validation {len(self.split.val)}, test {len(self.split.test)}), "
                  f"{sum(p.numel() for p in self.model.parameters())} parameters, device {self.device}{ranks}")
        stopped = "max_epochs"
        if self.parent is not None and self.epoch == 0:
            # the parent is the model to beat: epoch 0 of the log, and the output until an
            # epoch improves on it (fine-tuning never leaves a worse model than it started from)
            self.best_loss, metrics = self._validate()
            self._save_best({"validation": metrics})
            _log_row(writer, 0, 0.0, self.optimizer.param_groups[0]["lr"], float("nan"), self.best_loss,
                     metrics, True)
            self.echo(f"starting from {config.init_from}: val {self.best_loss:.4g}  "
                      f"E {metrics['energy_mae_meV']:.2f} meV"
                      + (f"  F {metrics['forces_mae_meV_per_A']:.2f} meV/Å" if self.use_forces else ""))
        try:
            while self.epoch < config.max_epochs:
                # clocks differ between ranks: rank 0 decides for all
                if self.dist.broadcast(budget_s is not None and self.elapsed_s + epoch_s > budget_s):
                    stopped = "max_time"
                    break
                tick = time.perf_counter()
                train_loss = self._train_epoch()
                val_loss, metrics = self._validate()
                self.epoch += 1
                self.scheduler.step(val_loss)
                improved = val_loss < self.best_loss
                if improved:
                    self.best_loss, self.best_epoch = val_loss, self.epoch
                epoch_s = time.perf_counter() - tick
                self.elapsed_s = before + time.perf_counter() - session_start
                if improved:
                    self._save_best({"validation": metrics})
                self.save_checkpoint()
                lr = self.optimizer.param_groups[0]["lr"]
                forces_mae = metrics.get("forces_mae_meV_per_A", float("nan"))
                _log_row(writer, self.epoch, self.elapsed_s, lr, train_loss, val_loss, metrics, improved)
                log.flush()
                if tensorboard is not None:
                    for key, value in (("loss/train", train_loss), ("loss/val", val_loss),
                                       ("val/energy_mae_meV_per_atom", metrics["energy_mae_meV_per_atom"]),
                                       ("val/forces_mae_meV_per_A", forces_mae), ("lr", lr)):
                        tensorboard.add_scalar(key, value, self.epoch)
                self.echo(f"epoch {self.epoch:5d}  {self.elapsed_s / 60:6.1f} min  lr {lr:.2e}  "
                          f"train {train_loss:.4g}  val {val_loss:.4g}  "
                          f"E {metrics['energy_mae_meV']:.2f} meV ({metrics['energy_mae_meV_per_atom']:.3f} "
                          f"meV/atom)  " + (f"F {forces_mae:.2f} meV/Å" if self.use_forces else "F not trained")
                          + ("  *" if improved else ""))
                reason = None
                if self.epoch - self.best_epoch >= config.patience:
                    reason = "early_stopping"
                elif lr <= config.min_learning_rate * (1 + 1e-9) and self.epoch - self.best_epoch >= config.lr_patience:
                    reason = "min_learning_rate"
                elif on_epoch is not None and main:
                    reason = on_epoch(self.epoch, val_loss, metrics)
                reason = self.dist.broadcast(reason)
                if reason:
                    stopped = reason
                    break
        finally:
            log.close()
            if tensorboard is not None:
                tensorboard.close()
        return self._finish(stopped)

    def _finish(self, stopped: str) -> TrainResult:
        from ..io import load_model

        if not self.dist.is_main:
            # rank 0 evaluates and writes the final model and sends it (no shared file system needed)
            shared = self.dist.broadcast(None)
            if shared is None:
                raise RuntimeError(f"rank 0 wrote no model to {self.output}")
            metrics, weights = shared
            best = copy.deepcopy(self.ema).to("cpu")
            best.load_state_dict(weights)
            return TrainResult(best, self.epoch, self.best_epoch, self.elapsed_s, stopped, metrics)
        if not self.output.exists():
            self.dist.broadcast(None)
            raise RuntimeError(f"no epoch finished, so no model was written to {self.output}")
        best = load_model(self.output)
        best_device = copy.deepcopy(best).to(device=self.device, dtype=self.dtype)
        metrics = {}
        for name, subset in (("validation", self.val_data), ("test", self.test_data)):
            if subset is None:
                continue
            cache = FrameCache(subset, best.cutoff, self.dtype, self.device)
            energy, forces = predict(best_device, cache, forces=subset.has_forces)
            metrics[name] = error_metrics(subset, energy, forces)
        save_model(best, self.output, self._metadata(metrics, stopped))
        if self.dist.active:
            self.dist.broadcast((metrics, best.state_dict()))
        self.echo(f"stopped after {self.epoch} epochs ({stopped}); best epoch {self.best_epoch}; "
                  f"model written to {self.output}")
        return TrainResult(load_model(self.output), self.epoch, self.best_epoch, self.elapsed_s,
                           stopped, metrics)
