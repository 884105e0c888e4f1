"""Issue #8: every user error of ``mlff-md`` is one line naming the fix, never a traceback.

CliRunner catches an uncaught exception instead of printing its traceback, so
"no 'Traceback' in the output" alone could not fail: :func:`fails_with` also
requires that the command ended through click's own error exit (SystemExit),
which is what a handled error does and an escaped KeyError does not.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.io import read, write
from click.testing import CliRunner

from ase_mlff.cli import main
from ase_mlff.io import save_model
from ase_mlff.models import SchNet

DATA = Path(__file__).parent / "data"
ETHANOL3 = DATA / "ethanol_rmd17_3frames.extxyz.gz"
ETHANOL50 = DATA / "ethanol_rmd17_50frames.extxyz.gz"


def fails_with(result, *fragments: str) -> str:
    """The command failed through click (exit code != 0), in one 'Error:' line holding every fragment."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"escaped {result.exception!r}"
    assert "Traceback" not in result.output
    lines = result.output.rstrip("\n").splitlines()
    assert lines and lines[-1].startswith("Error: "), result.output
    assert sum(line.startswith("Error: ") for line in lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = SchNet(["H", "C", "O"], n_features=8, n_interactions=1, n_rbf=6)
    model.set_energy_reference({"H": -13.7, "C": -1030.0, "O": -2041.0}, scale=0.5, shift=0.0)
    return save_model(model, tmp_path_factory.mktemp("errors") / "good.pt")


def edited(good: Path, folder: Path, name: str, **changes) -> Path:
    """A copy of ``good`` with fields replaced (None: removed)."""
    record = torch.load(good, weights_only=True)
    for key, value in changes.items():
        if value is None:
            record.pop(key)
        else:
            record[key] = value
    path = folder / name
    torch.save(record, path)
    return path


# -- 1. model files with a valid header but bad contents --------------------------------------

BAD_CONTENTS = {
    "no_state_dict": (dict(state_dict=None), "lacks the field 'state_dict'"),
    "bogus_hyperparameters": (dict(hyperparameters={"species": ["H"], "n_layers": 3}),
                              "hyperparameters unknown ['n_layers'] for architecture schnet"),
    "integer_architecture": (dict(architecture=7), "field 'architecture' is 7 (int)"),
    "string_species": (dict(species="HCO"), "field 'species' is 'HCO' (str)"),
}


def _commands(path: Path, tmp_path: Path) -> dict[str, list[str]]:
    structure = tmp_path / "ethanol.xyz"
    write(structure, read(ETHANOL3, index=0))
    return {"info": ["info", str(path)],
            "eval": ["eval", str(path), str(ETHANOL3), "--device", "cpu"],
            "run": ["run", str(structure), "-m", str(path), "--steps", "1", "--device", "cpu",
                    "-o", str(tmp_path / "md"), "-q"]}


@pytest.mark.parametrize("case", sorted(BAD_CONTENTS))
@pytest.mark.parametrize("command", ["info", "eval", "run"])
def test_model_file_with_bad_contents(good_model, tmp_path, case, command):
    changes, message = BAD_CONTENTS[case]
    path = edited(good_model, tmp_path, f"{case}.pt", **changes)
    line = fails_with(CliRunner().invoke(main, _commands(path, tmp_path)[command]), path.name, message)
    assert "re-save the model with ase_mlff.save_model or retrain it" in line


def test_weights_of_another_shape_name_the_tensor(good_model, tmp_path):
    hyper = dict(torch.load(good_model, weights_only=True)["hyperparameters"], n_features=16)
    path = edited(good_model, tmp_path, "wider.pt", hyperparameters=hyper)
    fails_with(CliRunner().invoke(main, ["eval", str(path), str(ETHANOL3)]),
               "weights do not match the architecture", "tensor(s) of another shape",
               "embedding.weight is [3, 8] in the file but [3, 16] for these hyperparameters")


@pytest.mark.parametrize("command", ["info", "eval", "run"])
def test_text_file_renamed_pt_is_not_a_model_file(tmp_path, command):
    path = tmp_path / "notes.pt"
    path.write_text("101 reasons to train a model\n")
    line = fails_with(CliRunner().invoke(main, _commands(path, tmp_path)[command]),
                      "notes.pt is not an ase-mlff model file: it is not a torch zip archive",
                      "written by ase_mlff.save_model or 'mlff-md train'")
    assert "failed: 101" not in line


def test_truncated_and_pickled_files_never_suggest_weights_only_false(good_model, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good_model.read_bytes()[:2000])
    line = fails_with(CliRunner().invoke(main, ["info", str(truncated)]), "truncated or damaged torch archive")
    assert "weights_only" not in line
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    line = fails_with(CliRunner().invoke(main, ["info", str(pickled)]),
                      "pickled Python object (torch.nn.modules.linear.Linear)", "never unpickled")
    assert "weights_only" not in line


# -- 2. devices other than cpu and cuda ------------------------------------------------------

@pytest.mark.parametrize("device", ["meta", "mps", "nonsense"])
def test_unsupported_devices_are_refused(good_model, tmp_path, device):
    runner = CliRunner()
    fails_with(runner.invoke(main, ["eval", str(good_model), str(ETHANOL3), "--device", device]),
               "'--device'", device, "use auto, cpu, cuda or cuda:N")
    fails_with(runner.invoke(main, ["train", str(ETHANOL3), "-o", str(tmp_path / "m.pt"), "--device", device]),
               "'--device'", device, "use auto, cpu, cuda or cuda:N")
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_cuda_without_cuda_is_refused(good_model):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    fails_with(CliRunner().invoke(main, ["eval", str(good_model), str(ETHANOL3), "--device", "cuda"]),
               "CUDA is not available")


# -- 3. resume, batch sizes, unwritable outputs, data errors, info escaping --------------------

TRAIN = ["--arch", "schnet", "--features", "8", "--interactions", "1", "--rbf", "6", "--n-val", "5",
         "--n-test", "5", "--device", "cpu", "--threads", "1", "-q"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 1-epoch run: model, checkpoint and split file."""
    out = tmp_path_factory.mktemp("trained") / "run.pt"
    result = CliRunner().invoke(main, ["train", str(ETHANOL50), "-o", str(out), "--epochs", "1", *TRAIN])
    assert result.exit_code == 0, result.output
    return out


def _resume(trained: Path, checkpoint_bytes: bytes | None = None, checkpoint_from: Path | None = None):
    ckpt = Path(str(trained) + ".ckpt")
    original = ckpt.read_bytes()
    try:
        ckpt.write_bytes(checkpoint_from.read_bytes() if checkpoint_from else checkpoint_bytes)
        return CliRunner().invoke(main, ["train", str(ETHANOL50), "-o", str(trained), "--epochs", "2",
                                         "--resume", *TRAIN])
    finally:
        ckpt.write_bytes(original)


def test_resume_from_something_that_is_not_a_checkpoint(trained, tmp_path):
    fails_with(_resume(trained, b"epoch 3\n"), "not an ase-mlff training checkpoint",
               "not a torch zip archive", "without --resume")
    # the model file copied over the checkpoint: a valid torch file of the wrong kind
    fails_with(_resume(trained, checkpoint_from=trained), "is a model file, not a training checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    fails_with(_resume(trained, checkpoint_from=foreign), "not an ase-mlff training checkpoint",
               "lacks ['best_epoch'")


def test_resume_from_a_truncated_checkpoint(trained):
    whole = Path(str(trained) + ".ckpt").read_bytes()
    fails_with(_resume(trained, whole[: len(whole) // 2]), "truncated or damaged torch archive",
               "without --resume")


def test_resume_with_a_checkpoint_of_another_model(trained, tmp_path):
    state = torch.load(str(trained) + ".ckpt", weights_only=True)
    state["model"] = {k + "_renamed": v for k, v in state["model"].items()}
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    fails_with(_resume(trained, checkpoint_from=other), "does not fit this model (model weights: missing [",
               "unexpected tensors", "without --resume")


@pytest.mark.parametrize("size", ["0", "-3"])
def test_eval_batch_size_below_one(good_model, size):
    fails_with(CliRunner().invoke(main, ["eval", str(good_model), str(ETHANOL3), "--batch-size", size]),
               "'--batch-size'", f"{size} is not in the range x>=1")


def _unwritable_folders(tmp_path: Path) -> list[Path]:
    """Folders nobody can create files in. Root ignores permission bits, so a chmod'ed
    folder only counts for other users; /sys refuses new files to everyone."""
    folders = []
    if Path("/sys").is_dir():
        folders.append(Path("/sys"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        folders.append(locked)
    return folders


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_eval_refuses_unwritable_outputs_before_the_work(good_model, tmp_path, option):
    runner = CliRunner()
    missing = tmp_path / "no" / "such" / "folder" / "out"
    fails_with(runner.invoke(main, ["eval", str(good_model), str(ETHANOL3), option, str(missing)]),
               option, "does not exist", "mkdir -p")
    assert not (tmp_path / "no").exists()  # refused, not created
    fails_with(runner.invoke(main, ["eval", str(good_model), str(ETHANOL3), option, str(tmp_path)]),
               "is a folder; give a file name")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    fails_with(runner.invoke(main, ["eval", str(good_model), str(ETHANOL3), option, str(a_file / "out")]),
               f"{a_file} is a file, not a folder")
    for folder in _unwritable_folders(tmp_path):
        result = runner.invoke(main, ["eval", str(good_model), str(ETHANOL3), option, str(folder / "out")])
        fails_with(result, f"cannot create files in {folder}", "choose a writable folder")
        assert "energy MAE" not in result.output  # the check came before the evaluation


def test_train_refuses_unwritable_outputs_before_training(tmp_path):
    runner = CliRunner()

    def train(out):
        return runner.invoke(main, ["train", str(ETHANOL3), "-o", str(out), *TRAIN])

    fails_with(train(tmp_path), "--output", "is a folder; give a file name")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    fails_with(train(a_file / "model.pt"), f"{a_file} is a file, not a folder")
    fails_with(train(tmp_path / "missing" / "model.pt"), "does not exist", "mkdir -p")
    (tmp_path / "model.pt.ckpt").mkdir()
    fails_with(train(tmp_path / "model.pt"), "model.pt.ckpt (written beside --output) is a folder")
    for folder in _unwritable_folders(tmp_path):
        fails_with(train(folder / "model.pt"), f"cannot create files in {folder}")
    assert not [p for p in tmp_path.rglob("*") if p.suffix in (".pt", ".json", ".csv")]  # nothing trained


def _with_labels(tmp_path: Path, name: str, nan_energy=(), nan_forces=(), duplicate=None) -> Path:
    frames = read(ETHANOL50, index=":")
    for k in nan_energy:
        frames[k].calc.results["energy"] = np.nan
    for k in nan_forces:
        frames[k].calc.results["forces"][0, 1] = np.nan
    if duplicate is not None:
        source, target = duplicate
        frames[target].positions = frames[source].positions
    path = tmp_path / name
    write(path, frames)
    return path


def test_training_data_errors_cite_frames_of_the_file(tmp_path):
    # with --split the frames are known: frame 41 of the file is validation frame 1, training frame 30
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": list(range(10, 40)) + [41], "val": [40, 42, 43], "test": [44]}))
    runner = CliRunner()

    def train(data):
        return runner.invoke(main, ["train", str(data), "-o", str(tmp_path / "m.pt"), "--split", str(split),
                                    "--overwrite", *TRAIN])

    fails_with(train(_with_labels(tmp_path, "nan.extxyz", nan_energy=[41])), "frames [41] of the file")
    fails_with(train(_with_labels(tmp_path, "nanf.extxyz", nan_forces=[42])), "validation set",
               "frames [42] of the file")
    fails_with(train(_with_labels(tmp_path, "dup.extxyz", duplicate=(12, 44))),
               "training + validation + test frames", "frames of the file: 12=44")


@pytest.mark.parametrize("label", ["energy", "forces"])
def test_eval_on_nan_references_names_the_frames(good_model, tmp_path, label):
    bad = {"nan_energy": [2, 7]} if label == "energy" else {"nan_forces": [7]}
    path = _with_labels(tmp_path, f"nan_{label}.extxyz", **bad)
    fails_with(CliRunner().invoke(main, ["eval", str(good_model), str(path)]),
               "NaN or infinite", f"frames {bad.popitem()[1]} of the file")


def test_eval_subset_with_nan_names_the_frame_of_the_file(trained, tmp_path):
    test_frames = json.loads(trained.with_name("run.split.json").read_text())["test"]
    model = torch.load(trained, weights_only=True)
    out = tmp_path / "t.pt"
    data = _with_labels(tmp_path, "same_geometry.extxyz", nan_energy=[test_frames[-1]])
    # the stored split only applies to the same data: point the model at the edited file's hash
    from ase_mlff.training.data import read_dataset

    model["metadata"]["training"]["data_sha256"] = read_dataset(data).fingerprint()
    torch.save(model, out)
    fails_with(CliRunner().invoke(main, ["eval", str(out), str(data), "--subset", "test"]),
               f"frames [{test_frames[-1]}] of the file")


def test_info_escapes_control_characters_in_metadata(good_model, tmp_path):
    record = torch.load(good_model, weights_only=True)
    record["metadata"] = {"author": "\x1b[2J\x1b[31mevil\rX", "note\x1b]0;title\x07": "ok"}
    path = tmp_path / "escapes.pt"
    torch.save(record, path)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\r" not in result.output and "\x07" not in result.output
    assert "\\x1b[2J\\x1b[31mevil\\rX" in result.output
    assert "note\\x1b]0;title\\x07" in result.output


def test_info_with_free_form_training_metadata(good_model, tmp_path):
    record = torch.load(good_model, weights_only=True)
    record["metadata"] = {"training": "by hand", "metrics": {"test": {"mae": 3}}}
    path = tmp_path / "freeform.pt"
    torch.save(record, path)
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert 'training          "by hand"' in result.output
    assert 'test set metrics: {"mae": 3}' in result.output
