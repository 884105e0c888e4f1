"""Read a pickled SchNetPack model without running code from the file.

``torch.save(model, path)`` writes a zip archive: ``<name>/data.pkl`` is a
pickle of the module tree whose tensors are *persistent ids* naming records
``<name>/data/<key>`` of raw little-endian bytes. ``pickle.load`` would import
and call whatever globals the pickle names (``os.system`` as easily as
``schnetpack.nn.Dense``). :class:`RestrictedUnpickler` instead resolves only
an allow-list of names, and none of them to code:

| what the pickle names                         | becomes                                  |
|-----------------------------------------------|------------------------------------------|
| a SchNetPack / torch ``nn.Module`` class      | :class:`ModuleRecord`: class name + state |
| ``torch._utils._rebuild_tensor_v2``, ...      | a tensor built from the zip's bytes      |
| ``torch.FloatStorage``, ...                   | the storage's dtype                      |
| an activation or init function                | :class:`FunctionRef`: its name only      |
| ``collections.OrderedDict``, ``builtins.set`` | themselves (containers)                  |
| anything else                                 | ``ValueError`` naming it                 |

The same approach as ``torch.load(weights_only=True)`` (torch/_weights_only_unpickler.py),
with module classes admitted as inert records.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

#: SchNetPack classes that may appear in a supported model file (matched by class
#: name: modules moved between SchNetPack 2.0 and 2.1)
SPK_CLASSES = (
    "NeuralNetworkPotential", "AtomisticModel", "PairwiseDistances", "Strain",
    "SchNet", "SchNetInteraction", "PaiNN", "PaiNNInteraction", "PaiNNMixing",
    "Dense", "GaussianRBF", "BesselRBF", "CosineCutoff", "ShiftedSoftplus",
    "Atomwise", "Forces", "CastTo64", "CastTo32", "CastMap", "AddOffsets", "ScaleProperty",
)
#: functions a SchNetPack module stores as attributes (activations, initialisers): kept as names
SPK_FUNCTIONS = ("shifted_softplus", "softplus_inverse")
TORCH_CLASSES = {
    "torch.nn.modules.container": ("ModuleList", "Sequential", "ModuleDict"),
    "torch.nn.modules.linear": ("Identity", "Linear"),
    "torch.nn.modules.sparse": ("Embedding",),
    "torch.nn.modules.activation": ("SiLU", "Tanh", "ReLU", "Softplus"),
}
TORCH_FUNCTIONS = {
    "torch.nn.functional": ("silu", "softplus", "tanh", "relu"),
    "torch.nn.init": ("xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "orthogonal_",
                      "kaiming_uniform_", "kaiming_normal_", "normal_", "uniform_", "constant_"),
    "torch": ("tanh", "relu", "sigmoid"),
}
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_DTYPES = {name: getattr(torch, name) for name in ("float32", "float64", "float16", "int64", "int32", "bool")}
_SUPPORTED = ("SchNet or PaiNN representations with GaussianRBF/BesselRBF and CosineCutoff, an Atomwise "
              "energy head, Forces, and the postprocessors CastTo64, AddOffsets and ScaleProperty")


class ModuleRecord:
    """A pickled ``nn.Module`` as data: its class name and its ``__dict__`` (never a live module).

    Attributes:
        class_name: "schnetpack.representation.schnet.SchNet", for instance.
        state: the pickled ``__dict__``: ``_parameters``, ``_buffers`` and ``_modules``
            (dicts of tensors and records) and plain attributes.
    """

    class_name = "?"

    def __init__(self, *args, **kwargs):  # only reached when a pickle *calls* the class (REDUCE)
        raise pickle.UnpicklingError(f"{self.class_name} is called with arguments in the pickle; "
                                     "module objects are only ever rebuilt from their state")

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.class_name}: state is a {type(state).__name__}, not a dict")
        self.state = state

    @property
    def name(self) -> str:
        """The bare class name ("SchNet")."""
        return self.class_name.rsplit(".", 1)[-1]

    def child(self, key: str):
        return (self.state.get("_modules") or {}).get(key)

    def tensor(self, key: str) -> torch.Tensor | None:
        """A parameter or buffer by name (None when absent)."""
        for table in ("_parameters", "_buffers"):
            found = (self.state.get(table) or {}).get(key)
            if found is not None:
                return found
        return None

    def children(self) -> list:
        return list((self.state.get("_modules") or {}).values())

    def __repr__(self) -> str:
        return f"<{self.class_name} record>"


@dataclass(frozen=True)
class FunctionRef:
    """A function the pickle names (an activation, say), recorded by name and never called."""

    qualname: str

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError(f"the pickle calls {self.qualname}; refused: calls run code")


class _RebuildTensor:
    """``torch._utils._rebuild_tensor_v2``: a view of a storage record (bounds checked by torch).

    A callable without ``__dict__`` or slots, so a pickle's BUILD cannot set attributes on it.
    """

    __slots__ = ()

    def __call__(self, storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                 metadata=None):
        if not isinstance(storage, torch.Tensor):
            raise pickle.UnpicklingError("a tensor's storage is not a storage record")
        return storage.as_strided(tuple(size), tuple(stride), int(storage_offset))


class _RebuildParameter:
    """``torch._utils._rebuild_parameter(_with_state)``: the data tensor (weights are data here)."""

    __slots__ = ()

    def __call__(self, data, requires_grad=False, backward_hooks=None, state=None):
        if not isinstance(data, torch.Tensor):
            raise pickle.UnpicklingError("a parameter's data is not a tensor")
        return data


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickle ``data.pkl`` of a torch zip archive into records and tensors only.

    Args:
        file: the pickle stream.
        archive: the open zip file, for the tensor bytes.
        prefix: the archive's top folder ("best_model/").

    Attributes:
        classes: every global the pickle named, in order of first appearance.
    """

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix
        self.classes: list[str] = []
        self._storages: dict[str, torch.Tensor] = {}
        self._record_types: dict[str, type] = {}

    def find_class(self, module: str, name: str):
        qualname = f"{module}.{name}"
        if qualname not in self.classes:
            self.classes.append(qualname)
        if module in ("__builtin__", "builtins") and name == "set":
            return set
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _RebuildTensor()
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _RebuildParameter()
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if name in TORCH_CLASSES.get(module, ()) or (module.startswith("schnetpack.") and name in SPK_CLASSES):
            return self._record_type(qualname)
        if name in TORCH_FUNCTIONS.get(module, ()) or (module.startswith("schnetpack.") and name in SPK_FUNCTIONS):
            return FunctionRef(qualname)
        if module.split(".")[0] == "schnetpack":
            raise ValueError(f"unsupported SchNetPack class {qualname}; supported are {_SUPPORTED}")
        raise ValueError(f"refused to unpickle {qualname}: not a known SchNetPack or torch class "
                         "(unpickling it could run code from the file)")

    def _record_type(self, qualname: str) -> type:
        if qualname not in self._record_types:
            self._record_types[qualname] = type(qualname.rsplit(".", 1)[-1], (ModuleRecord,),
                                                {"class_name": qualname})
        return self._record_types[qualname]

    def persistent_load(self, pid):
        # torch.serialization._save: ('storage', storage_type, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        _, dtype, key, _location, numel = pid
        if not isinstance(dtype, torch.dtype):
            raise pickle.UnpicklingError(f"storage {key} has no known dtype")
        key = str(key)
        if key not in self._storages:
            try:
                raw = self.archive.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise pickle.UnpicklingError(f"the archive lacks the tensor record data/{key}") from None
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) != int(numel) * itemsize:
                raise pickle.UnpicklingError(f"tensor record data/{key} has {len(raw)} bytes, "
                                             f"expected {numel} × {itemsize}")
            self._storages[key] = (torch.frombuffer(bytearray(raw), dtype=dtype) if raw
                                   else torch.empty(0, dtype=dtype))
        return self._storages[key]


@dataclass(frozen=True)
class PickledModel:
    """What :func:`read_pickled_model` found.

    Attributes:
        root: the top-level record (a ``NeuralNetworkPotential``).
        classes: fully qualified names of every global the pickle named.
    """

    root: object
    classes: tuple[str, ...]


def _data_pkl(archive: zipfile.ZipFile) -> str | None:
    names = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    return names[0] if len(names) == 1 else None


def is_schnetpack_file(path: str | os.PathLike) -> bool:
    """True for a torch zip archive whose pickle imports from SchNetPack.

    Scans the opcodes of data.pkl (``pickletools.genops`` executes nothing): a
    string "schnetpack." in plain data, such as an imported model's metadata,
    does not count.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            name = _data_pkl(archive)
            if name is None:
                return False
            strings: list[str] = []
            for opcode, arg, _ in pickletools.genops(archive.read(name)):
                if opcode.name == "GLOBAL" and str(arg).startswith("schnetpack."):
                    return True
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2 and strings[-2].startswith("schnetpack."):
                    return True
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a zip, a damaged pickle: not ours to read
        return False
    return False


def read_pickled_model(path: str | os.PathLike) -> PickledModel:
    """Unpickle a SchNetPack model file into records, running no code from it.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a torch zip archive, or a class outside the allow-list (one line naming it).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a SchNetPack model file: not a torch zip archive") from None
    with archive:
        name = _data_pkl(archive)
        if name is None:
            raise ValueError(f"{path} is not a SchNetPack model file: the archive holds no data.pkl")
        prefix = name[: -len("data.pkl")]
        byteorder = f"{prefix}byteorder"
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
            raise ValueError(f"{path}: big-endian torch archives are not supported")
        unpickler = RestrictedUnpickler(io.BytesIO(archive.read(name)), archive, prefix)
        try:
            root = unpickler.load()
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        except Exception as error:  # damaged pickles raise many types
            raise ValueError(f"{path} is not a readable SchNetPack model file: "
                             f"{type(error).__name__}: {str(error)[:200]}") from None
    return PickledModel(root, tuple(unpickler.classes))
