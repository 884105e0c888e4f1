"""``mlff-md``: the command-line entry point.

Each subsystem defines its commands beside its code (``ase_mlff/md/cli.py``,
``ase_mlff/training/cli.py``); this module only gathers them.
"""

from __future__ import annotations

import click

from ._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlff-md")
def main() -> None:
    """Molecular dynamics, training and evaluation with machine-learned force fields."""


# Subcommand registration (one line per subsystem module), e.g.
#   from .md.cli import run, report, convert
#   for command in (run, report, convert): main.add_command(command)

from .md.cli import convert, report, run  # noqa: E402

for _command in (run, report, convert):
    main.add_command(_command)

from .training.cli import evaluate, info, train  # noqa: E402

for _command in (train, evaluate, info):
    main.add_command(_command)

from .training.sweep_cli import sweep  # noqa: E402

main.add_command(sweep)

from .spk.cli import import_model  # noqa: E402

main.add_command(import_model)

from .optimize.cli import relax_command  # noqa: E402

main.add_command(relax_command)

if __name__ == "__main__":  # pragma: no cover
    main()
