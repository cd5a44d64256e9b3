"""``splitdnn code-search``: find the best CoDE path between a local and a host model.

Trains links for the paths Algorithm 1 of paper 000 picks (or every candidate with
``--exhaustive``) and prints the best path with its accuracy, average accuracy, throughput
gain and reward. Exit code 2 for bad input, naming the option.

``splitdnn code-train`` and ``splitdnn code-block`` are what a CrossLink runs: the training
(or search) Job, and the init step of each stage of the deployed path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, failure_exit_code, stdout

if TYPE_CHECKING:
    from splitdnn.coordination.export import LinkArtifact
    from splitdnn.coordination.paths import Path as CodePath
    from splitdnn.coordination.search import SearchResult
    from splitdnn.coordination.session import Session

LINKS = ("conv", "bottleneck", "reduced")
DataOpt = Annotated[str, typer.Option(
    "--data", help="Dataset: sklearn:digits, or a .npz file (x float32 [N,C,H,W], y labels) "
                   "at https://URL (with --data-sha256) or pvc://CLAIM/PATH")]
DataShaOpt = Annotated[str | None, typer.Option(
    "--data-sha256", help="Hex SHA-256 of the dataset file (required for https://)")]
LocalOpt = Annotated[str, typer.Option("--local", help="Local model: digits-cnn:ROLE or "
                                       "torchvision:NAME")]
HostOpt = Annotated[str, typer.Option("--host", help="Host model (as --local)")]


def data_sha256(text: str | None) -> str | None:
    """``--data-sha256``: 64 hex digits, lower-cased."""
    if text is None:
        return None
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        fail(f"--data-sha256: expected 64 hex digits, got {text!r}")
    return text.lower()


def coordination_failure(error: Exception) -> typer.Exit:
    """Exit 2 naming the option for bad input; 75 (``TEMPORARY_FAILURE``) when a dataset
    could not be fetched (the input may be right: the Job and then the operator retry)."""
    return fail(str(error).replace("s: offloaded", "--s: offloaded", 1),
                failure_exit_code(error))


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
    local: LocalOpt,
    host: HostOpt,
    data: DataOpt,
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
    data_digest: DataShaOpt = None,
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
                          link, width, TrainingConfig(epochs, learning_rate), skip,  # type: ignore[arg-type]
                          data_sha256=data_sha256(data_digest))
        objective = Objective(session.main_accuracy, a_min, k)
        result = exhaustive_search(session.throughputs, session.evaluator(), objective) \
            if exhaustive else code_search(session.throughputs, session.evaluator(), objective,
                                           c_stop, epsilon)
    except CoordinationError as error:
        raise coordination_failure(error) from error
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


# ---- a CrossLink's Jobs and stage pods ---------------------------------------------------
ShapeOpt = Annotated[str | None, typer.Option(
    help="Input shape as the DNNService gives it, batch first (e.g. 1,3,32,32); "
         "default: the model's own")]


def sample_shape(text: str | None, option: str) -> tuple[int, ...] | None:
    """``N,C,H,W`` (a DNNService's inputShape) to the per-sample ``(C, H, W)``."""
    from splitdnn.cli.common import parse_int_list

    if text is None:
        return None
    values = parse_int_list(text, option)
    if len(values) < 2 or any(v < 1 for v in values):
        fail(f"{option}: expected a batch-first shape of positive sizes, got {text!r}")
    return tuple(values[1:])


def path_option(text: str, local_blocks: int, host_blocks: int) -> CodePath:
    """``lout,hin,hout,lin`` or ``lout,lin`` (a skip path), validated."""
    from splitdnn.cli.common import parse_int_list
    from splitdnn.coordination import CoordinationError, parse_path

    try:
        return parse_path(parse_int_list(text, "--path"), local_blocks, host_blocks)
    except CoordinationError as error:
        fail(f"--path: {error}")
    raise AssertionError  # fail() exits


def link_entries(artifacts: list[LinkArtifact]) -> dict[str, dict[str, object]]:
    """Links for the JSON result: sha256, size and the ONNX bytes in base64."""
    import base64

    return {a.name: {"sha256": a.sha256, "bytes": a.file.stat().st_size,
                     "base64": base64.b64encode(a.file.read_bytes()).decode()}
            for a in artifacts}


@app.command("code-train")
def code_train_command(
    local: LocalOpt,
    host: HostOpt,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Directory for the link ONNX files")],
    path: Annotated[str | None, typer.Option(
        "--path", help="lout,hin,hout,lin (or lout,lin for a skip path); omit to search")]
    = None,
    blocks_local: Annotated[int, typer.Option("--blocks-local", min=2)] = 4,
    blocks_host: Annotated[int, typer.Option("--blocks-host", min=1)] = 4,
    local_input_shape: ShapeOpt = None,
    host_input_shape: ShapeOpt = None,
    a_min: Annotated[float, typer.Option("--a-min", min=0.0, max=1.0)] = 0.9,
    k: Annotated[float, typer.Option("--k", min=0.0)] = 50.0,
    s: Annotated[int, typer.Option("--s", min=1, help="Offloaded samples per batch")] = 8,
    local_batch: Annotated[int, typer.Option("--local-batch", min=1)] = 32,
    host_batch: Annotated[int, typer.Option("--host-batch", min=1)] = 32,
    c_stop: Annotated[int, typer.Option("--c-stop", min=1)] = 3,
    epsilon: Annotated[float, typer.Option("--epsilon", min=0.0)] = 0.0,
    exhaustive: Annotated[bool, typer.Option("--exhaustive")] = False,
    link: Annotated[str, typer.Option("--link", help="conv | bottleneck | reduced")] = "conv",
    width: Annotated[int | None, typer.Option("--width", min=1)] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 5,
    learning_rate: Annotated[float, typer.Option("--learning-rate", min=1e-6, max=1.0)] = 1e-2,
    repeats: Annotated[int, typer.Option("--repeats", min=1,
                                         help="Timings per block (least is kept)")] = 5,
    data_digest: DataShaOpt = None,
) -> None:
    """Train a path's links with every block frozen (or search the path first) and export
    them to ONNX; prints one JSON line: path, accuracy, average accuracy, throughput gain,
    reward and the links with their sha256 (what a CrossLink's training Job returns)."""
    if link not in LINKS:
        fail(f"--link: expected one of {', '.join(LINKS)}, got {link!r}")
    if (link == "reduced") != (width is not None):
        fail("--width: give it exactly when --link is reduced")
    shapes = (sample_shape(local_input_shape, "--local-input-shape"),
              sample_shape(host_input_shape, "--host-input-shape"))
    chosen = path_option(path, blocks_local, blocks_host) if path else None
    digest = data_sha256(data_digest)
    from splitdnn.coordination.errors import CoordinationError
    from splitdnn.coordination.export import export_links
    from splitdnn.coordination.search import (
        Objective,
        code_search,
        evaluation,
        exhaustive_search,
    )
    from splitdnn.coordination.session import prepare
    from splitdnn.coordination.throughput import StreamSetting
    from splitdnn.coordination.training import TrainingConfig

    try:
        setting = StreamSetting(local_batch=local_batch, host_batch=host_batch, offloaded=s)
        session = prepare(local, host, data, blocks_local, blocks_host, setting, link,  # type: ignore[arg-type]
                          width, TrainingConfig(epochs, learning_rate), repeats=repeats,
                          paths=[chosen] if chosen else None, input_shapes=shapes,
                          data_sha256=digest)
        objective = Objective(session.main_accuracy, a_min, k)
        if chosen is None:
            result = exhaustive_search(session.throughputs, session.evaluator(), objective) \
                if exhaustive else code_search(session.throughputs, session.evaluator(),
                                               objective, c_stop, epsilon)
            if result.best is None:
                raise fail("--path: no path beats the local model's throughput; nothing to "
                           "deploy")
            best, trainings = result.best, result.trainings
        else:
            best = evaluation(session.throughput(chosen), session.train(chosen).accuracy, None,
                              objective)
            trainings = 1
        session.train(best.path)
        artifacts = export_links(session.models[best.path], session.local, session.host, out)
    except CoordinationError as error:
        raise coordination_failure(error) from error
    print(json.dumps({**best.as_json(), "main_accuracy": round(session.main_accuracy, 6),
                      "trainings": trainings, "links": link_entries(artifacts)}))


@app.command("code-block")
def code_block_command(
    local: Annotated[str, typer.Option("--local", help="Local model")],
    path: Annotated[str, typer.Option("--path", help="lout,hin,hout,lin or lout,lin")],
    stage: Annotated[str, typer.Option("--stage", help="head | cross | tail")],
    out: Annotated[Path, typer.Option("--out", help="Directory for block.onnx")],
    host: Annotated[str | None, typer.Option("--host", help="Host model (cross paths)")]
    = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Dataset the digits-cnn models were trained on")] = None,
    data_digest: DataShaOpt = None,
    blocks_local: Annotated[int, typer.Option("--blocks-local", min=2)] = 4,
    blocks_host: Annotated[int, typer.Option("--blocks-host", min=1)] = 4,
    local_input_shape: ShapeOpt = None,
    host_input_shape: ShapeOpt = None,
    links: Annotated[Path | None, typer.Option(
        "--links", help="Directory holding entry.onnx (and exit.onnx)")] = None,
    link_sha256: Annotated[list[str] | None, typer.Option(
        "--link-sha256", help="NAME=HEX, the digest a link must have (repeatable)")] = None,
) -> None:
    """Write one stage of a CrossLink's path as ONNX (a cross-path stage pod's init step):
    the local head or tail blocks, or entry link + host blocks + exit link with the links'
    digests checked."""
    if stage not in ("head", "cross", "tail"):
        fail(f"--stage: expected head, cross or tail, got {stage!r}")
    digests: dict[str, str] = {}
    for item in link_sha256 or []:
        name, _, digest = item.partition("=")
        if not name or len(digest) != 64:
            fail(f"--link-sha256: expected NAME=<64 hex digits>, got {item!r}")
        digests[name] = digest.lower()
    parsed = path_option(path, blocks_local, blocks_host)
    if stage == "cross" and not parsed.is_skip and host is None:
        fail("--host: a cross path's cross stage needs the host model")
    from splitdnn.coordination.blocks import decompose
    from splitdnn.coordination.data import load_dataset
    from splitdnn.coordination.errors import CoordinationError
    from splitdnn.coordination.export import build_stage
    from splitdnn.coordination.models import load_model

    try:
        tasks = load_dataset(data, data_sha256(data_digest)) if data else None
        loaded = load_model(local, tasks, sample_shape(local_input_shape, "--local-input-shape"))
        local_model = decompose(loaded.module, blocks_local, loaded.input_shape, local)
        host_model = None
        if stage == "cross" and host is not None and not parsed.is_skip:
            loaded = load_model(host, tasks, sample_shape(host_input_shape,
                                                          "--host-input-shape"))
            host_model = decompose(loaded.module, blocks_host, loaded.input_shape, host)
        block = build_stage(stage, parsed, local_model, host_model, links, digests, out)  # type: ignore[arg-type]
    except CoordinationError as error:
        raise coordination_failure(error) from error
    stdout.print(f"wrote {block} ({stage} of path {parsed})", highlight=False)
