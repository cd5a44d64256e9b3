"""``splitdnn worker | gateway | serve | infer``: the runtime's commands."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from splitdnn.cli.common import FetchedWeightsOpt, WeightsSha256Opt, app, fail, stderr, stdout

ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, help="ONNX Runtime intra-op threads (default: ORT's choice)")]


def split_endpoints(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def host_port(text: str, option: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        fail(f"{option}: expected HOST:PORT, got {text!r}")
    return host, int(port)


def parse_exit_head(text: str) -> Any:
    """``BLOCK:FILE:THRESHOLD`` -> ExitHead."""
    from splitdnn.runtime.serve import ExitHead

    parts = text.split(":")
    try:
        block, threshold = int(parts[0]), float(parts[-1])
        file = Path(":".join(parts[1:-1]))
    except (ValueError, IndexError):
        fail(f"--exit-head: expected BLOCK:FILE:THRESHOLD, got {text!r}")
    if len(parts) < 3 or not file.is_file() or not 0 <= threshold <= 1:
        fail(f"--exit-head: expected BLOCK:FILE:THRESHOLD with an existing file and a "
             f"threshold in [0, 1], got {text!r}")
    return ExitHead(block, file, threshold)


@app.command()
def worker(
    block: Annotated[Path, typer.Option("--block", exists=True, dir_okay=False,
                                        help="The block's ONNX file")],
    listen: Annotated[str, typer.Option("--listen", help="ZeroMQ endpoint to bind (PULL)")],
    next_: Annotated[str | None, typer.Option(
        "--next", help="Next stage's endpoints, comma-separated (PUSH load-balances over "
                       "replicas); omit on the last stage, which answers to reply_to")] = None,
    stage: Annotated[str, typer.Option("--stage", help="Stage label in traces and metrics")]
    = "0",
    exit_head: Annotated[Path | None, typer.Option(
        "--exit-head", exists=True, dir_okay=False, help="Early-exit head (ONNX)")] = None,
    exit_threshold: Annotated[float, typer.Option(
        "--exit-threshold", min=0.0, max=1.0, help="Top softmax probability that takes the "
                                                   "exit")] = 0.9,
    exit_index: Annotated[int, typer.Option("--exit-index", min=0,
                                            help="Index reported for this exit")] = 0,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1,
                                           help="Most requests per run")] = 1,
    max_delay_ms: Annotated[float, typer.Option(
        "--max-delay-ms", min=0.0, help="Longest wait for a batch to fill")] = 0.0,
    threads: ThreadsOpt = None,
    spinning: Annotated[bool, typer.Option(
        "--spinning/--no-spinning", help="ORT thread spinning (off: workers share cores)")]
    = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve /metrics, /healthz, /readyz on this port")] = None,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1,
                                           help="Largest accepted message")] = 64 * 2**20,
) -> None:
    """Run one block: receive on --listen, forward to --next or answer to the reply address."""
    from splitdnn.runtime.worker import WorkerConfig, run_worker

    config = WorkerConfig(
        block=block, listen=listen, next=split_endpoints(next_), stage=stage,
        exit_head=exit_head, exit_threshold=exit_threshold, exit_index=exit_index,
        max_batch=max_batch, max_delay_ms=max_delay_ms, threads=threads, spinning=spinning,
        metrics_port=metrics_port, max_bytes=max_bytes,
    )
    try:
        run_worker(config, on_ready=lambda: stderr.print(f"worker {stage} ready on {listen}"))
    except Exception as error:  # a block ORT cannot load, an endpoint that cannot be bound
        fail(f"worker {stage}: {error}")


@app.command()
def gateway(
    manifest: Annotated[Path, typer.Option("--manifest", exists=True,
                                           help="Split directory or its manifest.json")],
    first: Annotated[str, typer.Option("--first", help="First stage's endpoints, "
                                                       "comma-separated")],
    results: Annotated[str, typer.Option("--results", help="Endpoint to bind for results")],
    advertise: Annotated[str | None, typer.Option(
        "--advertise", help="Results endpoint as workers reach it (default: --results)")]
    = None,
    zmq_listen: Annotated[str | None, typer.Option(
        "--zmq", help="Native ZeroMQ endpoint to bind for clients")] = None,
    http: Annotated[str, typer.Option("--http", help="HOST:PORT for OIP v2")]
    = "0.0.0.0:8000",
    name: Annotated[str | None, typer.Option("--name", help="Model name in URLs")] = None,
    max_inflight: Annotated[int, typer.Option("--max-inflight", min=1)] = 64,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001,
                                           help="Longest deadline, seconds")] = 30.0,
    cross: Annotated[str | None, typer.Option(
        "--cross-endpoint", help="First stage of a cross path (CrossLink), comma-separated")]
    = None,
    cross_share: Annotated[float, typer.Option(
        "--cross-share", min=0.0, max=1.0,
        help="Share of the requests sent through the cross path while loaded")] = 0.0,
    cross_load_threshold: Annotated[int, typer.Option(
        "--cross-load-threshold", min=0,
        help="Offload only while more requests than this are in flight (0: always)")] = 0,
) -> None:
    """Serve the Open Inference Protocol v2 in front of already running stages."""
    from splitdnn.graph.blocks import BlockManifest
    from splitdnn.runtime.gateway import Gateway, GatewayConfig
    from splitdnn.runtime.serve import model_name

    if cross_share > 0 and not cross:
        fail("--cross-share: needs --cross-endpoint")
    directory = manifest if manifest.is_dir() else manifest.parent
    data = BlockManifest.load(directory)
    host, port = host_port(http, "--http")
    config = GatewayConfig(
        model=name or model_name(str(data.data["model"])), input=data.data["input"],
        output=data.data["output"], first=split_endpoints(first), results=results,
        results_advertised=advertise, zmq_listen=zmq_listen, http_host=host, http_port=port,
        batch_free=all(block.get("batch_free") for block in data.blocks),
        max_inflight=max_inflight, timeout_s=timeout,
        cross=split_endpoints(cross) if cross else [], cross_share=cross_share,
        cross_load_threshold=cross_load_threshold,
    )

    async def run() -> None:
        from splitdnn.runtime.serve import _signal_event

        stop = _signal_event()
        server = Gateway(config)
        await server.start()
        stderr.print(f"gateway for {config.model} on {server.http_url}")
        await stop.wait()
        await server.stop()

    asyncio.run(run())


@app.command()
def serve(
    directory: Annotated[Path, typer.Argument(exists=True, file_okay=False,
                                              help="A directory written by `splitdnn split`")],
    http: Annotated[str, typer.Option("--http", help="HOST:PORT for the OIP v2 gateway")]
    = "127.0.0.1:8000",
    transport: Annotated[str, typer.Option("--transport", help="ipc or tcp between stages")]
    = "ipc",
    threads: Annotated[int, typer.Option("--threads", min=1,
                                         help="ORT threads per worker")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1)] = 8,
    max_delay_ms: Annotated[float, typer.Option("--max-delay-ms", min=0.0)] = 0.0,
    spinning: Annotated[bool, typer.Option(
        "--spinning/--no-spinning", help="ORT thread spinning in the workers (lower latency "
                                         "when one request is in flight; off by default)")]
    = False,
    exit_heads: Annotated[list[str] | None, typer.Option(
        "--exit-head", help="BLOCK:FILE:THRESHOLD, an early exit after a block (repeatable)")]
    = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in URLs")] = None,
) -> None:
    """Serve a split locally: one worker process per block plus the gateway."""
    from splitdnn.runtime.serve import ServeOptions, WorkerDied, serve_split

    if transport not in ("ipc", "tcp"):
        fail(f"--transport: expected ipc or tcp, got {transport!r}")
    if not (directory / "manifest.json").is_file():
        fail(f"{directory}: no manifest.json (write one with `splitdnn split`)")
    host, port = host_port(http, "--http")
    options = ServeOptions(http_host=host, http_port=port, transport=transport, name=name,
                           threads=threads, max_batch=max_batch, max_delay_ms=max_delay_ms,
                           spinning=spinning,
                           exits=[parse_exit_head(text) for text in exit_heads or []])

    def started(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    def died(reason: str) -> None:
        stderr.print(f"[bold red]error:[/] {reason}", highlight=False)

    try:
        asyncio.run(serve_split(directory, options, started, died))
    except (WorkerDied, OSError) as error:
        fail(str(error), code=1)


@app.command()
def infer(
    url: Annotated[str, typer.Argument(help="Gateway: http://HOST:PORT or tcp://, ipc://")],
    input_file: Annotated[Path, typer.Option("--input", exists=True, dir_okay=False,
                                             help="Input tensor (.npy)")],
    output_file: Annotated[Path | None, typer.Option(
        "--output", help="Write the output tensor here (.npy)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name (default: the "
                                                               "gateway's only model)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001)] = 30.0,
    json_tensors: Annotated[bool, typer.Option(
        "--json-tensors", help="HTTP: plain JSON tensors instead of the binary extension")]
    = False,
) -> None:
    """Send one tensor to a gateway and print (or save) the result."""
    import numpy as np

    from splitdnn.runtime.client import Client, InferenceError

    try:
        array = np.load(input_file, allow_pickle=False)
    except ValueError as error:
        fail(f"--input: {input_file} is not a plain .npy array: {error}")
    try:
        with Client(url, model=model, timeout_s=timeout, binary=not json_tensors) as client:
            result = client.infer_result(array)
    except (InferenceError, ValueError, OSError) as error:
        fail(str(error), code=1)
    if output_file is not None:
        np.save(output_file, result.output)
    summary = {"shape": list(result.output.shape), "dtype": result.output.dtype.name,
               "exit": result.exit}
    if result.output.ndim == 2:
        summary["top1"] = result.output.argmax(axis=1).tolist()
    stdout.print_json(json.dumps(summary)) if sys.stdout.isatty() else print(json.dumps(summary))


def demo_serving(directory: Path, requests: int = 8) -> None:
    """Serve a split, send requests over HTTP and ZeroMQ, compare with the whole model."""
    import statistics
    import time

    import numpy as np
    from rich.table import Table

    from splitdnn.graph.blocks import BlockManifest
    from splitdnn.graph.onnx_runtime import cpu_session
    from splitdnn.runtime.client import Client
    from splitdnn.runtime.serve import ServeOptions, ServeThread

    manifest = BlockManifest.load(directory)
    shape, dtype = manifest.data["input"]["shape"], manifest.data["input"]["dtype"]
    inputs = [np.random.default_rng(seed).standard_normal(shape).astype(dtype)
              for seed in range(requests)]
    whole = cpu_session(str(manifest.data["source"]["file"]), optimization="all")
    table = Table(title=f"{requests} requests through the served blocks")
    for column in ("path", "median ms", "max abs error vs whole model"):
        table.add_column(column, justify="left" if column == "path" else "right")
    with stderr.status(f"serving {directory}: one worker per block + gateway ..."), \
            ServeThread(directory, ServeOptions(http_port=0)) as served:
        expected = [whole.run(None, {whole.get_inputs()[0].name: x})[0] for x in inputs]
        for label, url in (("OIP v2 HTTP", served.info["gateway"]),
                           ("native ZeroMQ", served.info["zmq"])):
            with Client(url) as client:
                times, errors = [], []
                for x, want in zip(inputs, expected, strict=True):
                    began = time.perf_counter()
                    got = client.infer(x)
                    times.append(1000 * (time.perf_counter() - began))
                    errors.append(float(np.max(np.abs(got - want))))
            table.add_row(label, f"{statistics.median(times):.1f}", f"{max(errors):.3g}")
    stdout.print(f"gateway was {served.info['gateway']}, workers "
                 f"{', '.join(served.info['workers'])}", highlight=False)
    stdout.print(table)


@app.command("fetch-block")
def fetch_block(
    model: Annotated[str, typer.Option(
        "--model", help="torchvision:NAME, https://... (with --sha256), pvc://CLAIM/PATH or a "
                        "path")],
    layers: Annotated[str, typer.Option("--layers", help="The stage's layer range FIRST,LAST")],
    out: Annotated[Path, typer.Option("--out", help="Directory for block.onnx")],
    sha256: Annotated[str | None, typer.Option("--sha256", help="The model file's sha256")]
    = None,
    block_sha256: Annotated[str | None, typer.Option(
        "--block-sha256", help="The block's sha256 from the plan; a mismatch fails")] = None,
    input_shape: Annotated[str | None, typer.Option("--input-shape",
                                                    help="e.g. 1,3,224,224")] = None,
    exit_head: Annotated[str | None, typer.Option(
        "--exit-head", help="The stage's early-exit head (https://... or pvc://CLAIM/PATH), "
                            "written as exit.onnx beside the block")] = None,
    exit_sha256: Annotated[str | None, typer.Option(
        "--exit-sha256", help="The exit head's sha256 (required for https); a mismatch "
                              "fails")] = None,
    weights: FetchedWeightsOpt = None,
    weights_sha256: WeightsSha256Opt = None,
) -> None:
    """Fetch a model and write one stage's block, checking digests (a stage pod's init step)."""
    from splitdnn.cli.common import parse_int_list
    from splitdnn.graph import GraphError
    from splitdnn.runtime.artifacts import (
        ArtifactError,
        extract_block,
        fetch_exit_head,
        fetch_model,
    )

    bounds = parse_int_list(layers, "--layers")
    if len(bounds) != 2 or bounds[0] > bounds[1] or bounds[0] < 0:
        fail(f"--layers: expected FIRST,LAST with 0 <= FIRST <= LAST, got {layers!r}")
    shape = tuple(parse_int_list(input_shape, "--input-shape")) if input_shape else None
    try:
        path, shape = fetch_model(model, sha256, shape, weights, weights_sha256)
        block = extract_block(path, model, (bounds[0], bounds[1]), out, shape, block_sha256)
        head = fetch_exit_head(exit_head, exit_sha256, out) if exit_head else None
    except (ArtifactError, GraphError) as error:
        fail(str(error))
    stdout.print(f"wrote {block} (layers {bounds[0]}-{bounds[1]} of {model})"
                 + (f" and the exit head {head}" if head else ""), highlight=False)
