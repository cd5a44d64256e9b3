"""Shared pieces of the ``splitdnn`` command line: the typer app, consoles and error exits.

Exit codes: 0 success, 1 a check failed (``verify`` above tolerance), 2 bad input (unknown
model, invalid cut, malformed option) with a message on stderr naming what was wrong, 75
(sysexits' EX_TEMPFAIL) a download the network failed: the input may be right and a retry may
help (the operator runs such a Job again later instead of stalling).
Each area of the product registers its commands on ``app`` from its own module in this
package; ``splitdnn.cli`` imports them all.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="splitdnn",
    help="Split one DNN into blocks across the nodes of an edge cluster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Tables stay readable when piped (rich would fall back to 80 columns).
stdout = Console(width=None if sys.stdout.isatty() else 120)
stderr = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Emit one JSON object on stdout")]
TEMPORARY_FAILURE = 75  # sysexits' EX_TEMPFAIL; controller.status_pass reads it from Job pods
# A torchvision model's state dict where the operator's Jobs and init containers fetch it.
FetchedWeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="State dict of a torchvision model: pvc://CLAIM/PATH, https://... (with "
                      "--weights-sha256) or a path (default: random weights, seed 0)")]
WeightsSha256Opt = Annotated[str | None, typer.Option(
    "--weights-sha256", help="The state dict's sha256 (required for https); a mismatch fails")]


def failure_exit_code(error: Exception) -> int:
    """``TEMPORARY_FAILURE`` where a retry may cure the failure (a download the network failed:
    the input may be right), else 2 (bad input: the operator Jobs' podFailurePolicy fails
    them at once)."""
    from splitdnn.coordination.errors import CoordinationError
    from splitdnn.runtime.artifacts import ArtifactError, network_failure

    retryable = isinstance(error, ArtifactError | CoordinationError) and network_failure(error)
    return TEMPORARY_FAILURE if retryable else 2


def parse_int_list(text: str, option: str) -> list[int]:
    """Parse ``1,3,224,224`` into integers or exit 2 naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        fail(f"{option}: expected comma-separated integers, got {text!r}")
    return values


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print an error to stderr and exit with ``code``."""
    stderr.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def human_bytes(size: int) -> str:
    """``803 KB``-style sizes (decimal units, as the design notes use)."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
