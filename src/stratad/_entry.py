"""The ``stratad`` command's entry point: process settings first, then the command line.

Kept apart from :mod:`stratad.cli` because importing the CLI imports torch, and the OpenMP wait
policy must be in the environment before libgomp loads.
"""

from __future__ import annotations


def main() -> None:
    from stratad.runtime import configure_runtime

    configure_runtime()
    from stratad.cli import main as cli_main

    cli_main()
