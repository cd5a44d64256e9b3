"""The ``splitdnn`` command line: one typer app, thin wrappers over the library packages.

Each module of this package registers the commands of one area on the shared ``app``
(``splitdnn.cli.common``); importing them here is what puts them on the command line.
"""

from __future__ import annotations

from splitdnn.cli import (  # noqa: F401  (imported for their commands)
    analysis,
    api,
    coordination,
    devcluster,
    graph,
    operator,
    planning,
    profiling,
    runtime,
)
from splitdnn.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()

