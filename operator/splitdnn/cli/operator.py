"""``splitdnn operator`` and the small commands the operator's pods run.

- ``operator``: the kopf operator (flags as the Helm chart passes them).
- ``model-facts`` (``splitdnn.cli.analysis``): the analysis Job's command.
- ``block-digests``: the digest Job's command: the sha256 of the blocks a plan's stages run,
  so that the plan can state them and each stage's init container check them.
- ``plan-gateway``: the gateway of a rolled-out plan: writes the split manifest from the
  environment and runs ``splitdnn gateway`` advertising the pod's own IP for results.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from splitdnn.cli.common import (
    FetchedWeightsOpt,
    WeightsSha256Opt,
    app,
    fail,
    failure_exit_code,
    parse_int_list,
)

LOG_LEVELS = ("debug", "info", "warning", "error")


@app.command()
def operator(
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", help="Namespace to watch (repeatable)")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", help="Watch every namespace (cluster-wide)")] = False,
    standalone: Annotated[bool, typer.Option(
        "--standalone", help="No peering: assume this is the only operator")] = False,
    peering: Annotated[str | None, typer.Option(
        "--peering", help="KopfPeering name for HA with standbys")] = None,
    priority: Annotated[int, typer.Option(
        "--priority", help="Peering priority (the highest operator is active)")] = 0,
    liveness_port: Annotated[int | None, typer.Option(
        "--liveness-port", help="Serve /healthz on this port")] = None,
    watch_timeout: Annotated[int, typer.Option(
        "--watch-timeout", min=1, help="Server-side watch timeout, seconds")] = 300,
    log_level: Annotated[str, typer.Option(
        "--log-level", help="debug, info, warning or error")] = "info",
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", help="Serve operator metrics (/metrics) on this port")] = None,
) -> None:
    """Run the splitdnn operator (kopf): DNNService -> profiling -> SplitPlan -> stage pods."""
    if all_namespaces == bool(namespace):
        fail("give exactly one of --all-namespaces or --namespace NS (repeatable)")
    if standalone == (peering is not None):
        fail("give exactly one of --standalone or --peering NAME")
    if log_level.lower() not in LOG_LEVELS:
        fail(f"--log-level: expected one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from splitdnn.controller.operator import run_operator

    run_operator(namespaces=namespace or [], peering=peering, priority=priority,
                 liveness_port=liveness_port, watch_timeout=watch_timeout,
                 metrics_port=metrics_port)


@app.command("block-digests")
def block_digests(
    model: Annotated[str, typer.Argument(help="torchvision:NAME, https://..., pvc://... or a "
                                              "path to an .onnx file")],
    layers: Annotated[str, typer.Option(
        "--layers", help="Comma-separated inclusive layer ranges FIRST-LAST, e.g. 0-12,13-48")],
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", help="Comma-separated input shape, e.g. 1,3,224,224")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="The model file's sha256")]
    = None,
    weights: FetchedWeightsOpt = None,
    weights_sha256: WeightsSha256Opt = None,
) -> None:
    """Print one JSON line: the sha256 of each range's block, as ``fetch-block`` cuts it."""
    from splitdnn.graph import GraphError
    from splitdnn.runtime.artifacts import ArtifactError, block_sha256s, fetch_model

    ranges = [parse_layer_range(text) for text in layers.split(",") if text.strip()]
    if not ranges:
        fail("--layers: expected at least one FIRST-LAST range")
    shape = tuple(parse_int_list(input_shape, "--input-shape")) if input_shape else None
    try:
        path, shape = fetch_model(model, sha256, shape, weights, weights_sha256)
        digests = block_sha256s(path, model, ranges, shape)
    except (ArtifactError, GraphError) as error:
        fail(str(error), failure_exit_code(error))
    print(json.dumps({"blocks": {f"{a}-{b}": digests[(a, b)] for a, b in ranges}}))


def parse_layer_range(text: str) -> tuple[int, int]:
    first, _, last = text.strip().partition("-")
    if not (first.isdigit() and last.isdigit()) or int(first) > int(last):
        fail(f"--layers: expected FIRST-LAST with FIRST <= LAST, got {text.strip()!r}")
    return int(first), int(last)


@app.command("plan-gateway")
def plan_gateway(
    first: Annotated[str, typer.Option("--first", help="First stage's endpoints")],
    http: Annotated[str, typer.Option("--http", help="HOST:PORT for OIP v2")] = "0.0.0.0:8000",
    results_port: Annotated[int, typer.Option("--results-port", help="Port for results")]
    = 5600,
    name: Annotated[str | None, typer.Option("--name", help="Model name in URLs")] = None,
    manifest_env: Annotated[str, typer.Option(
        "--manifest-env", help="Environment variable holding the split manifest JSON")]
    = "SPLITDNN_GATEWAY_MANIFEST",
    cross: Annotated[str | None, typer.Option(
        "--cross-endpoint", help="First stage of a CrossLink's cross path")] = None,
    cross_share: Annotated[float, typer.Option(
        "--cross-share", min=0.0, max=1.0, help="Share of requests sent there when loaded")]
    = 0.0,
    cross_load_threshold: Annotated[int, typer.Option(
        "--cross-load-threshold", min=0, help="Requests in flight above which it offloads")]
    = 0,
) -> None:
    """Run the gateway of a rolled-out plan (manifest from the environment, results to POD_IP)."""
    from splitdnn.cli.runtime import gateway

    text = os.environ.get(manifest_env, "")
    if not text:
        fail(f"--manifest-env: ${manifest_env} is empty; it must hold the split manifest JSON")
    pod_ip = os.environ.get("POD_IP")
    if not pod_ip:
        fail("POD_IP is not set; the gateway needs its pod IP to advertise its results endpoint")
    directory = Path("gateway")
    directory.mkdir(exist_ok=True)
    (directory / "manifest.json").write_text(text)
    gateway(manifest=directory, first=first, results=f"tcp://0.0.0.0:{results_port}",
            advertise=f"tcp://{pod_ip}:{results_port}", zmq_listen=None, http=http, name=name,
            max_inflight=64, timeout=30.0, cross=cross, cross_share=cross_share,
            cross_load_threshold=cross_load_threshold)


@app.command("cluster-demo")
def cluster_demo(
    example: Annotated[Path, typer.Option(
        "--example", help="The DNNService to apply")] = Path("manifests/examples/dnnservice.yaml"),
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests to send")] = 20,
) -> None:
    """Devcluster up, CRDs, operator, the ResNet-50 example to Ready, requests, teardown."""
    from splitdnn.cli.common import stdout
    from splitdnn.controller.demo import run_demo

    if not example.is_file():
        fail(f"--example: {example} is not a file (run from the repository root)")
    run_demo(example, requests, stdout)
