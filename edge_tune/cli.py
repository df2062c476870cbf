"""The `edge-tune` command line: a thin click layer over the library.

Every command parses options, calls one library function and renders its result. `EdgeTuneError`
is turned into one line (`Error: <path>: <what>. <fix>`) in `main`, and nothing else is caught.
"""

from __future__ import annotations

import sys

import click

from edge_tune.errors import EdgeTuneError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edge-tune")
def cli() -> None:
    """Tune CLIP to your classes on the device, with forward passes only."""


# --- export / info (bundle) -------------------------------------------------------------------


# --- eval (data, objective) -------------------------------------------------------------------


# --- fit / predict ----------------------------------------------------------------------------


# --- bench ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning user errors into one line and exit code 1."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except EdgeTuneError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
