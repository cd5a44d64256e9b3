"""``splitdnn profile | netprofile | predict | predict-eval``: measuring and predicting costs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, failure_exit_code, stderr, stdout
from splitdnn.cli.graph import InputShapeOpt, ModelArg, WeightsOpt, load_graph, user_errors

SIZES_DEFAULT = "1KB..64MB"


@contextmanager
def profile_errors() -> Iterator[None]:
    """Profile, prediction and link errors (all ValueErrors with the field named) exit 2."""
    from splitdnn.profiling.store import ProfileError

    try:
        with user_errors():
            yield
    except ProfileError as error:
        fail(str(error))


@app.command()
def profile(
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Profile file to write (JSON)")],
    sample_fraction: Annotated[
        float, typer.Option("--sample-fraction",
                            help="Fraction P of the model's distinct segments to time")] = 1.0,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed runs per segment (median)")] = 10,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed runs first")] = 3,
    hardware_class: Annotated[
        str | None, typer.Option("--hardware-class",
                                 help="Class name (default from provider, threads, CPU quota)")
    ] = None,
    provider: Annotated[str, typer.Option(
        "--provider", help="cpu, cuda, or auto (cuda where a block worker here would use it, "
                           "else cpu)")] = "cpu",
    threads: Annotated[
        int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the sample and the inputs")] = 0,
    min_sample_ms: Annotated[
        float, typer.Option("--min-sample-ms",
                            help="Each timed sample repeats the segment until it lasts this "
                                 "long (use a few CFS periods under a CPU quota)")] = 0.0,
    statistic: Annotated[
        str, typer.Option("--statistic",
                          help="median of the samples, or min (least disturbed; for machines "
                               "shared with other work)")] = "median",
    energy: Annotated[
        bool, typer.Option("--energy/--no-energy", help="Read an energy meter where one exists")
    ] = True,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    sha256: Annotated[str | None, typer.Option(
        "--sha256", help="sha256 of the ONNX file (required for https:// models)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Time a random fraction of a model's segments (and their energy, where measurable).

    MODEL may also be https://... (with --sha256) or pvc://CLAIM/PATH.onnx, fetched as a
    stage pod's init container fetches it."""
    from splitdnn.profiling.profiler import meter_for, profile_model, resolve_provider

    with profile_errors():
        provider = resolve_provider(provider)
        graph = load_graph(fetched_model(model, sha256), input_shape, weights)
        meter = meter_for(provider, energy)
        with _progress_bar() as bar:
            task = bar.add_task(f"profiling {model}", total=None)

            def advance(done: int, total: int, key: str) -> None:
                bar.update(task, completed=done, total=total, description=key[:48] or "done")

            result = profile_model(graph, sample_fraction, repeats, warmup, hardware_class,
                                   provider, threads, seed, meter, advance, min_sample_ms,
                                   statistic)
    result.save(out)
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    stdout.print(_profile_table(result.to_dict(), out))


def fetched_model(model: str, sha256: str | None) -> str:
    """A local .onnx path for https:// and pvc:// models (digest checked); others as given."""
    if not model.startswith(("https://", "http://", "pvc://")):
        return model
    from splitdnn.runtime.artifacts import ArtifactError, fetch_model

    try:
        return str(fetch_model(model, sha256)[0])
    except ArtifactError as error:
        raise fail(f"MODEL: {error}", failure_exit_code(error)) from error


def _progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=stderr, transient=True)


def _profile_table(data: dict[str, Any], out: Path) -> Table:
    entries = data["entries"]
    meter = data["runtime"].get("energy_meter") or "none (energy null)"
    table = Table(title=f"{data['hardware_class']} on {data['node']}: {len(entries)} signatures "
                        f"-> {out} (energy meter: {meter})")
    for column in ("signature", "latency ms", "energy mJ", "samples"):
        table.add_column(column, justify="left" if column == "signature" else "right")
    for key, entry in entries.items():
        energy = entry["energy_mj"]
        table.add_row(key, f"{entry['latency_ms']:.3f}",
                      "-" if energy is None else f"{energy:.2f}", str(entry["samples"]))
    return table


@app.command()
def netprofile(
    serve: Annotated[
        str | None, typer.Option("--serve", help="Answer peers on this ZeroMQ endpoint "
                                                 "(tcp://*:5555, ipc:///tmp/link)")] = None,
    peer: Annotated[
        str | None, typer.Option("--peer", help="Measure the link to a server at this endpoint")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Link profile to write (JSON)")] = None,
    sizes: Annotated[
        str, typer.Option("--sizes", help="1KB..64MB (powers of two) or 1KB,1MB,... "
                                          "(KB = 1024 bytes)")] = SIZES_DEFAULT,
    repeats: Annotated[int, typer.Option("--repeats", help="Round trips per size (median)")] = 10,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a reply")] = 30.0,
    once: Annotated[bool, typer.Option("--once", help="Serve one peer, then exit")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure message transfer time over ZeroMQ and fit link models (run --serve on one side)."""
    from splitdnn.profiling.link import LinkServer, measure_link, parse_sizes

    if (serve is None) == (peer is None):
        fail("give exactly one of --serve ENDPOINT or --peer ENDPOINT")
    with profile_errors():
        if serve is not None:
            server = LinkServer(serve, sessions=1 if once else None)
            stderr.print(f"serving link measurements on {serve} (Ctrl-C to stop)")
            try:
                server.serve()
            except KeyboardInterrupt:
                server.stop()
            return
        if out is None:
            fail("--peer needs --out FILE for the link profile")
        assert peer is not None and out is not None
        size_list = parse_sizes(sizes)
        with stderr.status(f"measuring {len(size_list)} sizes against {peer} ..."):
            result = measure_link(peer, size_list, repeats, timeout)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(_link_table(result, out))


def _link_table(data: dict[str, Any], out: Path) -> Table:
    from splitdnn.profiling.link import predict_transfer_ms

    linear = data["fits"]["linear"]
    polynomial = data["fits"].get("polynomial")
    caption = (f"linear: {linear['latency_ms']:.3f} ms + bytes / {linear['bandwidth_mb_s']:.0f} "
               f"MB/s, MAPE {linear['mape']:.1f} %")
    if polynomial is not None:
        caption += f"\ndegree-{polynomial['degree']} polynomial: MAPE {polynomial['mape']:.1f} %"
    table = Table(title=f"{data['endpoint']} -> {out}", caption=caption)
    for column in ("size", "round trip ms", "polynomial ms", "linear ms"):
        table.add_column(column, justify="right")
    linear_only = {"fits": {"linear": linear}}
    for size, rtt in zip(data["sizes_bytes"], data["rtt_ms"], strict=True):
        table.add_row(binary_size(size), f"{rtt:.3f}",
                      f"{predict_transfer_ms(data, size):.3f}" if polynomial else "-",
                      f"{predict_transfer_ms(linear_only, size):.3f}")
    return table


def binary_size(size: int) -> str:
    """``64 MB`` for 2**26 bytes: the units ``--sizes`` takes (KB = 1024 bytes)."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


ProfilesOpt = Annotated[
    Path, typer.Option("--profiles", help="Profile store: a directory of profile files")]


@app.command()
def predict(
    model: ModelArg,
    profiles: ProfilesOpt,
    hardware_class: Annotated[
        str, typer.Option("--hardware-class", help="Class to predict for (must be in the store)")],
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the CF validation split")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Every segment's latency (and energy) on a hardware class, measured or predicted by CF."""
    from splitdnn.predict import predict_model
    from splitdnn.profiling.store import ProfileStore

    with profile_errors():
        store = ProfileStore(profiles)
        graph = load_graph(model, input_shape, weights)
        result = predict_model(store.profiles, hardware_class, graph, seed)
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(_prediction_table(result))


def _prediction_table(data: dict[str, Any]) -> Table:
    energy = data["total_energy_mj"]
    table = Table(title=f"{data['model']} on {data['hardware_class']}: "
                        f"{data['total_latency_ms']:.2f} ms"
                        + ("" if energy is None else f", {energy:.1f} mJ")
                        + f" ({data['measured']} of {len(data['segments'])} segments measured, "
                          f"CF rank {data['rank']} over {len(data['classes'])} classes)")
    for column in ("segment", "layers", "signature", "latency ms", "energy mJ", "source"):
        table.add_column(column, justify="left" if column in ("signature", "source") else "right")
    for segment in data["segments"]:
        table.add_row(str(segment["index"]), f"{segment['first_layer']}-{segment['last_layer']}",
                      segment["signature"], f"{segment['latency_ms']:.3f}",
                      "-" if segment["energy_mj"] is None else f"{segment['energy_mj']:.2f}",
                      segment["source"])
    return table


@app.command("predict-eval")
def predict_eval(
    profiles: ProfilesOpt,
    fraction: Annotated[
        float, typer.Option("--fraction", help="Share P of each class's entries kept")] = 0.3,
    seed: Annotated[int, typer.Option("--seed", help="Seed of which entries are hidden")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Hide all but a fraction of each class's entries; compare CF and the baseline on them."""
    from splitdnn.predict import evaluate
    from splitdnn.profiling.store import ProfileStore

    with profile_errors():
        result = evaluate(ProfileStore(profiles).profiles, fraction, seed)
    if as_json:
        print(json.dumps(result))
        return
    stdout.print(_evaluation_table(result))


def _evaluation_table(data: dict[str, Any]) -> Table:
    table = Table(title=f"P = {data['fraction']}: {data['n_hidden']} hidden entries "
                        f"({data['cold_signatures']} signatures hidden on every class), "
                        f"CF rank {data['rank']}")
    for column in ("class", "hidden", "CF RMSE ms", "CF MAPE %", "baseline RMSE ms",
                   "baseline MAPE %"):
        table.add_column(column, justify="left" if column == "class" else "right")
    rows = [*data["per_class"].items(), ("all", {**data, "n_hidden": data["n_hidden"]})]
    for name, entry in rows:
        table.add_row(name, str(entry["n_hidden"]), f"{entry['cf']['rmse_ms']:.3f}",
                      f"{entry['cf']['mape']:.1f}", f"{entry['baseline']['rmse_ms']:.3f}",
                      f"{entry['baseline']['mape']:.1f}", end_section=name == rows[-2][0])
    return table
