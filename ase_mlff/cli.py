"""``mlff-md``: the command-line entry point. Subcommands live beside their code."""

from __future__ import annotations

import click

from ._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mlff-md")
def main() -> None:
    """Molecular dynamics, training and evaluation with machine-learned force fields."""


if __name__ == "__main__":  # pragma: no cover
    main()
