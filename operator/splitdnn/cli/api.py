"""``splitdnn crds``: CustomResourceDefinitions generated from the API models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from splitdnn.cli.common import app, stdout


@app.command()
def crds(
    out: Annotated[Path, typer.Option("--out", help="Directory for the CRD YAML files")] = Path(
        "crds"
    ),
    chart: Annotated[
        Path | None,
        typer.Option("--chart", help="Helm chart whose templates/crds/ gets the same CRDs"),
    ] = Path("charts/splitdnn"),
) -> None:
    """Write the CustomResourceDefinitions generated from the API models."""
    from splitdnn.api.crdgen import write_crds

    chart_dir = chart if chart is not None and chart.is_dir() else None
    for path in write_crds(out, chart_dir):
        stdout.print(f"wrote {path}", highlight=False)
