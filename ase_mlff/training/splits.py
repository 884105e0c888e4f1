"""Train/validation/test splits: reproducible from a seed, from tags, or from an index file.

A split is three disjoint lists of frame indices into one data file. It is
saved as JSON next to the model (``<model>.split.json``) and in the model's
metadata, so the test frames of a shipped model are known forever.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..files import atomic_write


@dataclass(frozen=True)
class Split:
    """Indices (into the data file) of the training, validation and test frames."""

    train: list[int]
    val: list[int]
    test: list[int]
    method: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("train", "val", "test"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"split {name} set lists a frame twice")
        overlap = (set(self.train) & set(self.val)) | (set(self.train) & set(self.test)) | (
            set(self.val) & set(self.test))
        if overlap:
            raise ValueError(f"split sets overlap in {len(overlap)} frame(s), e.g. {sorted(overlap)[:5]}")
        if not self.train:
            raise ValueError("split has no training frames")

    def check_range(self, n_frames: int, source: str = "data") -> None:
        top = max(self.train + self.val + self.test)
        if top >= n_frames or min(self.train + self.val + self.test) < 0:
            raise ValueError(f"split refers to frame {top} but {source} has {n_frames} frames; "
                             "the split file belongs to another data file")

    def to_dict(self) -> dict:
        return asdict(self)


def _count(value: int | float | None, n: int, name: str) -> int:
    """An absolute count, or a fraction of n when 0 < value < 1."""
    if value is None:
        return 0
    if isinstance(value, float) and 0 < value < 1:
        return int(round(value * n))
    if value < 0 or int(value) != value:
        raise ValueError(f"{name} must be a non-negative count or a fraction in (0, 1), got {value}")
    return int(value)


def random_split(n_frames: int, n_val: int | float = 0.1, n_test: int | float = 0.1,
                 n_train: int | float | None = None, seed: int = 0) -> Split:
    """Shuffle with ``seed``; test first, then validation, then up to ``n_train`` training frames.

    Counts may be fractions of ``n_frames``. Correlated frames (MD snapshots
    a few fs apart) make a random split optimistic: prefer :func:`tagged_split`
    or index files for trajectories.
    """
    test, val = _count(n_test, n_frames, "n_test"), _count(n_val, n_frames, "n_val")
    rest = n_frames - test - val
    train = rest if n_train is None else _count(n_train, n_frames, "n_train")
    if train < 1 or train > rest:
        raise ValueError(
            f"{n_frames} frames cannot give {train or 'any'} training frames after {val} "
            f"validation and {test} test frames; lower n_val/n_test/n_train"
        )
    order = np.random.default_rng(seed).permutation(n_frames).tolist()
    return Split(train=sorted(order[test + val:test + val + train]), val=sorted(order[test:test + val]),
                 test=sorted(order[:test]),
                 method={"kind": "random", "seed": seed, "n_frames": n_frames})


def tagged_split(tags: Sequence[str], train_tag: str, test_tag: str, n_val: int,
                 n_train: int | None = None, val_block: int = 25, seed: int = 0) -> Split:
    """Train and test from per-frame tags; validation as blocks of consecutive untagged frames.

    Args:
        tags: per frame, a comma-separated list of tags (e.g. rMD17's ``rmd17_splits``).
        train_tag: frames carrying it are the training set (first ``n_train`` if given).
        test_tag: frames carrying it are the test set.
        n_val: validation frames, drawn from frames carrying neither tag as
            blocks of ``val_block`` consecutive frames (file order), so that
            validation frames are not all next-door neighbours of training frames.
    """
    sets = [set(t.split(",")) if t else set() for t in tags]
    train = [k for k, s in enumerate(sets) if train_tag in s]
    test = [k for k, s in enumerate(sets) if test_tag in s and train_tag not in s]
    if not train:
        raise ValueError(f"no frame carries the training tag {train_tag!r}; tags seen: "
                         f"{sorted(set().union(*sets))[:20]}")
    if n_train is not None:
        train = train[:n_train]
    pool = [k for k, s in enumerate(sets) if train_tag not in s and test_tag not in s]
    blocks = [pool[i:i + val_block] for i in range(0, len(pool), val_block)]
    order = np.random.default_rng(seed).permutation(len(blocks)).tolist()
    val: list[int] = []
    for b in order:
        if len(val) >= n_val:
            break
        val.extend(blocks[b][: n_val - len(val)])
    if len(val) < n_val:
        raise ValueError(f"only {len(pool)} frames carry neither {train_tag!r} nor {test_tag!r}; "
                         f"cannot take {n_val} validation frames")
    return Split(train=train, val=sorted(val), test=test,
                 method={"kind": "tagged", "train_tag": train_tag, "test_tag": test_tag,
                         "val_block": val_block, "seed": seed, "n_frames": len(tags)})


def save_split(split: Split, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write the split (plus e.g. the data path and hash) as JSON, atomically."""
    path = Path(path)
    record = {**(extra or {}), **split.to_dict()}
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=1)))


def load_split(path: str | os.PathLike) -> Split:
    """A split from JSON with ``train``, ``val`` (or ``validation``) and ``test`` index lists."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"split file {path} is not JSON: {error}") from None
    if "validation" in record and "val" not in record:
        record["val"] = record["validation"]
    missing = [k for k in ("train", "val") if k not in record]
    if missing:
        raise ValueError(f"split file {path} lacks {missing}; it needs lists 'train', 'val' "
                         "and optionally 'test' of frame indices")
    return Split(train=[int(k) for k in record["train"]], val=[int(k) for k in record["val"]],
                 test=[int(k) for k in record.get("test", [])],
                 method=record.get("method", {"kind": "file", "path": str(path)}))
