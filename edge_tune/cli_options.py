"""The options several commands share (`edge-tune` and `edge-tune bench`), defined once: the same
name, type, default and help everywhere unless a command says otherwise."""

from __future__ import annotations

from pathlib import Path

import click

BUNDLE_HELP = "Bundle directory [$EDGE_TUNE_BUNDLE, else the shipped mini-world bundle]."


def bundle_option(*names: str, help: str = BUNDLE_HELP):
    """--bundle DIR (`names` may add the parameter name, e.g. "bundle_dir")."""
    return click.option("--bundle", *names, type=click.Path(path_type=Path), help=help)


def cache_dir_option():
    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        help="Image-feature cache [$EDGE_TUNE_CACHE, else ~/.cache/edge-tune].",
    )


def provider_option(help: str = "Execution provider."):
    return click.option("--provider", default="auto", show_default=True, help=help)


def threads_option(help: str = "ORT intra-op threads.", **defaults):
    return click.option("--threads", type=click.IntRange(1), help=help, **defaults)


def json_option(help: str = "Print one JSON object on stdout."):
    return click.option("--json", "as_json", is_flag=True, help=help)
