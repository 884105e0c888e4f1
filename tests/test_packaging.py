"""The wheel ships every subpackage: a plain ``pip install .`` (not editable) only
installs the packages that pyproject.toml lists, so a subpackage missing there
works in a checkout and fails for users (ase_mlff.spk once did)."""

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package also supports 3.10

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "ase_mlff").rglob("__init__.py")}
    missing = sorted(found - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
    for name, folder in config.get("package-dir", {}).items():
        assert (ROOT / folder / "__init__.py").exists(), f"package-dir {name} -> {folder} has no __init__.py"
