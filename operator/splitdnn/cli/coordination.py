"""``splitdnn code-search``: find the best CoDE path between a local and a host model.

Trains links for the paths Algorithm 1 of paper 000 picks (or every candidate with
``--exhaustive``) and prints the best path with its accuracy, average accuracy, throughput
gain and reward. Exit code 2 for bad input, naming the option.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, stdout

if TYPE_CHECKING:
    from splitdnn.coordination.search import SearchResult
    from splitdnn.coordination.session import Session

LINKS = ("conv", "bottleneck", "reduced")


def search_json(result: SearchResult) -> dict[str, object]:
    """The contract: ``{"best": {...}, "trained": [...], "trainings": n}``."""
    best = result.best
    return {"best": best.as_json() if best is not None else None,
            "trained": [e.as_json() for e in result.trained],
            "trainings": result.trainings}


def search_table(session: Session, result: SearchResult) -> Table:
    """One row per trained path, in training order."""
    baseline = session.throughputs[0].baseline
    table = Table(title=f"{result.mode} search: A_0 = {session.main_accuracy:.4f}, "
                        f"Th_0 = {baseline:.0f} samples/s, {result.candidates} paths "
                        f"beat Th_0, {result.trainings} trained ({result.stopped})")
    for column in ("stage", "path", "predicted", "accuracy", "A_av", "Th_p/Th_0", "gain/s",
                   "reward"):
        table.add_column(column, justify="right")
    for stage, e in enumerate(result.trained, start=1):
        predicted = "-" if e.predicted_accuracy is None else f"{e.predicted_accuracy:.4f}"
        table.add_row(str(stage), str(e.path), predicted, f"{e.accuracy:.4f}",
                      f"{e.avg_accuracy:.4f}", f"{e.throughput.ratio:.3f}",
                      f"{e.throughput.gain:.0f}", f"{e.reward:.1f}")
    return table


@app.command("code-search")
def code_search_command(
    local: Annotated[str, typer.Option("--local", help="Local model: digits-cnn:ROLE or "
                                       "torchvision:NAME")],
    host: Annotated[str, typer.Option("--host", help="Host model (as --local)")],
    data: Annotated[str, typer.Option("--data", help="Dataset, e.g. sklearn:digits")],
    blocks_local: Annotated[int, typer.Option("--blocks-local", min=2,
                                              help="N_l: local blocks")] = 4,
    blocks_host: Annotated[int, typer.Option("--blocks-host", min=1,
                                             help="N_h: host blocks")] = 4,
    a_min: Annotated[float, typer.Option("--a-min", min=0.0, max=1.0,
                                         help="A_min of the reward")] = 0.9,
    k: Annotated[float, typer.Option("--k", min=0.0, help="Sigmoid steepness k")] = 50.0,
    s: Annotated[int, typer.Option("--s", min=1, help="Offloaded samples per batch")] = 8,
    local_batch: Annotated[int, typer.Option("--local-batch", min=1, help="b_l")] = 32,
    host_batch: Annotated[int, typer.Option("--host-batch", min=1, help="b_h")] = 32,
    c_stop: Annotated[int, typer.Option("--c-stop", min=1,
                                        help="Stop after this many stages without gain")] = 3,
    epsilon: Annotated[float, typer.Option("--epsilon", min=0.0,
                                           help="Least reward improvement that counts")] = 0.0,
    exhaustive: Annotated[bool, typer.Option("--exhaustive",
                                             help="Train every candidate (ground truth)")] = False,
    link: Annotated[str, typer.Option("--link", help="conv | bottleneck | reduced")] = "conv",
    width: Annotated[int | None, typer.Option("--width", min=1,
                                              help="Inner width of reduced links")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Link training epochs")] = 5,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=1e-6, max=1.0,
                                                 help="Adam step size")] = 1e-2,
    skip: Annotated[bool, typer.Option("--skip/--no-skip",
                                       help="Also consider local skip-connections")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Search the CoDE paths [lout, hin, hout, lin] for the highest reward (paper 000)."""
    if link not in LINKS:
        fail(f"--link: expected one of {', '.join(LINKS)}, got {link!r}")
    if (link == "reduced") != (width is not None):
        fail("--width: give it exactly when --link is reduced")
    from splitdnn.coordination.errors import CoordinationError
    from splitdnn.coordination.search import Objective, code_search, exhaustive_search
    from splitdnn.coordination.session import prepare
    from splitdnn.coordination.throughput import StreamSetting
    from splitdnn.coordination.training import TrainingConfig

    try:
        setting = StreamSetting(local_batch=local_batch, host_batch=host_batch, offloaded=s)
        session = prepare(local, host, data, blocks_local, blocks_host, setting,
                          link, width, TrainingConfig(epochs, learning_rate), skip)  # type: ignore[arg-type]
        objective = Objective(session.main_accuracy, a_min, k)
        result = exhaustive_search(session.throughputs, session.evaluator(), objective) \
            if exhaustive else code_search(session.throughputs, session.evaluator(), objective,
                                           c_stop, epsilon)
    except CoordinationError as error:
        fail(str(error).replace("s: offloaded", "--s: offloaded", 1))
    if as_json:
        print(json.dumps(search_json(result)))
        return
    stdout.print(search_table(session, result))
    best = result.best
    if best is None:
        stdout.print("no path beats the main path's throughput; keep the local model alone")
    else:
        stdout.print(f"best path {best.path}: accuracy {best.accuracy:.4f}, average accuracy "
                     f"{best.avg_accuracy:.4f}, throughput x{best.throughput.ratio:.3f} "
                     f"(+{best.throughput.gain:.0f} samples/s), reward {best.reward:.1f}",
                     highlight=False)
