"""Benchmark the block runtime against the whole model in one ONNX Runtime session.

Side by side in one run, on the same cores (rounds interleave the two sides so that load
from other work hits both alike):

- latency with one request in flight: ResNet-18 split into 3 and 4 blocks of similar FLOPs,
  served by `serve` (one worker process per block, the whole thread budget per worker since
  only one runs at a time, spinning off) through the native ZeroMQ client, vs the whole model
  in one session with the same threads (best of spinning on/off); target <= 1.05x;
- throughput with requests in flight: the pipeline (1 thread per worker, micro-batching) vs
  the best whole-model configuration (one session x all threads, one session per core, and
  batches of 8); target >= 0.9x;
- cost per hop for 100 KB and 1 MB tensors over ipc and tcp: pipelines of 1 and 3 Identity
  blocks, (latency(3) - latency(1)) / 2; target <= 0.35 ms at 1 MB on ipc;
- the client protocol: OIP v2 HTTP with JSON tensors, HTTP with the binary extension, and
  the native ZeroMQ endpoint, on the 3-block pipeline.

Prints a markdown section; ``--write FILE`` replaces the ``bench_runtime`` section::

    python bench/bench_runtime.py --write docs/benchmarks.md    # what `make bench-runtime` runs
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from doc_section import load_average, machine_line, write_section
from onnx import TensorProto, helper

from splitdnn.graph import analyse_model, resolve_model, split_model
from splitdnn.graph.blocks import balanced_cuts
from splitdnn.runtime.client import Client
from splitdnn.runtime.engine import BlockEngine
from splitdnn.runtime.serve import ServeOptions, ServeThread

CORES = os.cpu_count() or 2
MODEL = "torchvision:resnet18"


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def latencies(call: Callable[[], Any], count: int, warm_up: int = 3) -> list[float]:
    for _ in range(warm_up):
        call()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return times


def throughput(call: Callable[[], Any], workers: int, seconds: float,
               samples_per_call: int = 1) -> float:
    """Samples per second with ``workers`` threads calling ``call`` back to back."""
    stop_at = time.perf_counter() + seconds
    done = [0] * workers

    def loop(index: int) -> None:
        while time.perf_counter() < stop_at:
            call()
            done[index] += samples_per_call

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(loop, range(workers)))
    return sum(done) / (time.perf_counter() - began)


def split_model_into(work: Path, model: str, blocks: int) -> tuple[Path, Path]:
    resolved = resolve_model(model)
    graph = analyse_model(resolved.onnx_path, resolved.input_shape, source=model)
    out = work / f"{model.split(':')[-1]}-{blocks}"
    if not out.is_dir():
        split_model(graph, balanced_cuts(graph, blocks), out)
    return out, resolved.onnx_path


def split_resnet(work: Path, blocks: int) -> tuple[Path, Path]:
    return split_model_into(work, MODEL, blocks)


def whole_engine(path: Path, threads: int, spinning: bool) -> BlockEngine:
    return BlockEngine(path, threads=threads, spinning=spinning)


LATENCY_CONFIGS = [  # model, blocks, ORT threads (the whole model's and each worker's)
    (MODEL, 3, CORES), (MODEL, 4, CORES), (MODEL, 3, 1), ("torchvision:resnet50", 3, CORES),
]


def traced_latencies(client: Client, x: np.ndarray, count: int) -> tuple[list[float], float]:
    """End-to-end latencies, and the median time not spent between a worker's receive and
    send (client, gateway and the transfers), from the requests' traces."""
    times, outside = [], []
    for _ in range(count):
        began = time.time()
        result = client.infer_result(x)
        ended = time.time()
        inside = sum(hop["t_out"] - hop["t_in"] for hop in result.trace)
        times.append(ended - began)
        outside.append(ended - began - inside)
    return times, statistics.median(outside)


def bench_latency(work: Path, rounds: int, count: int) -> list[dict[str, Any]]:
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    for model, blocks, threads in LATENCY_CONFIGS:
        directory, whole_path = split_model_into(work, model, blocks)
        engines = [whole_engine(whole_path, threads, spin) for spin in (True, False)]
        options = ServeOptions(http_port=0, threads=threads, max_batch=1, max_delay_ms=0)
        whole: list[float] = []
        piped: list[float] = []
        outside: list[float] = []
        with ServeThread(directory, options) as served, Client(served.info["zmq"]) as client:
            latencies(lambda c=client: c.infer(x), 3)
            for _ in range(rounds):
                best = min((latencies(lambda e=e: e.run(x), count) for e in engines),
                           key=statistics.median)
                whole += best
                times, overhead = traced_latencies(client, x, count)
                piped += times
                outside.append(overhead)
        rows.append({"model": model.split(":")[-1], "blocks": blocks, "threads": threads,
                     "whole_ms": median_ms(whole), "pipeline_ms": median_ms(piped),
                     "outside_ms": median_ms(outside),
                     "ratio": statistics.median(piped) / statistics.median(whole)})
    return rows


def whole_throughputs(path: Path, seconds: float) -> dict[str, float]:
    x1 = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    x8 = np.repeat(x1, 8, axis=0)
    shared = whole_engine(path, CORES, spinning=True)
    per_core = [whole_engine(path, 1, spinning=False) for _ in range(CORES)]
    local = threading.local()
    counter = iter(range(10**9))
    lock = threading.Lock()

    def per_core_call() -> None:
        if not hasattr(local, "engine"):
            with lock:
                local.engine = per_core[next(counter)]
        local.engine.run(x1)

    return {
        f"1 session x {CORES} threads": throughput(lambda: shared.run(x1), 1, seconds),
        f"{CORES} sessions x 1 thread": throughput(per_core_call, CORES, seconds),
        f"1 session x {CORES} threads, batch 8": throughput(lambda: shared.run(x8), 1,
                                                             seconds, 8),
    }


def per_thread_client(url: str, x: np.ndarray) -> Callable[[], Any]:
    """A call that sends ``x`` through a client of the calling thread's own."""
    clients = threading.local()

    def call() -> np.ndarray:
        if not hasattr(clients, "client"):
            clients.client = Client(url)
        return clients.client.infer(x)

    return call


def bench_throughput(work: Path, rounds: int, seconds: float, in_flight: int,
                     ) -> list[dict[str, Any]]:
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    for blocks in (2, 3, 4):
        directory, whole_path = split_resnet(work, blocks)
        options = ServeOptions(http_port=0, threads=1, max_batch=8, max_delay_ms=0,
                               max_inflight=in_flight * 2)
        whole: dict[str, list[float]] = {}
        piped: list[float] = []
        with ServeThread(directory, options) as served:
            call = per_thread_client(served.info["zmq"], x)
            throughput(call, in_flight, 1.0)  # warm-up
            for _ in range(rounds):
                for name, rps in whole_throughputs(whole_path, seconds).items():
                    whole.setdefault(name, []).append(rps)
                piped.append(throughput(call, in_flight, seconds))
        best_name = max(whole, key=lambda name: statistics.median(whole[name]))
        best = statistics.median(whole[best_name])
        rows.append({"blocks": blocks, "pipeline_rps": statistics.median(piped),
                     "whole": {name: statistics.median(v) for name, v in whole.items()},
                     "best": best_name, "ratio": statistics.median(piped) / best})
    return rows


def identity_block(path: Path, elements: int) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", elements])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", elements])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def identity_split(work: Path, elements: int, blocks: int) -> Path:
    """A split directory of ``blocks`` Identity blocks (what `serve` takes)."""
    import json

    directory = work / f"identity-{elements}-{blocks}"
    directory.mkdir(parents=True, exist_ok=True)
    spec = {"name": "x", "shape": [1, elements], "dtype": "float32"}
    entries = []
    for index in range(blocks):
        identity_block(directory / f"block_{index}.onnx", elements)
        entries.append({"index": index, "file": f"block_{index}.onnx", "input": spec,
                        "output": spec, "batch_free": True})
    manifest = {"model": "identity", "input": spec, "output": spec, "blocks": entries}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return directory


def bench_hops(work: Path, rounds: int, count: int) -> list[dict[str, Any]]:
    rows = []
    for size in (100_000, 1_000_000):
        elements = size // 4
        x = np.ones((1, elements), np.float32)
        for transport in ("ipc", "tcp"):
            per_length: dict[int, list[float]] = {1: [], 3: []}
            servers = {length: ServeThread(identity_split(work, elements, length),
                                           ServeOptions(http_port=0, transport=transport,
                                                        threads=1, max_batch=1))
                       for length in per_length}
            clients = {length: Client(server.info["zmq"]) for length, server in servers.items()}
            try:
                for _ in range(rounds):
                    for length, client in clients.items():
                        per_length[length] += latencies(lambda c=client, x=x: c.infer(x),
                                                        count)
            finally:
                for client in clients.values():
                    client.close()
                for server in servers.values():
                    server.stop()
            one, three = (statistics.median(per_length[n]) for n in (1, 3))
            rows.append({"bytes": size, "transport": transport, "one_ms": 1000 * one,
                         "three_ms": 1000 * three, "hop_ms": 1000 * (three - one) / 2})
    return rows


def bench_protocols(work: Path, rounds: int, count: int) -> list[dict[str, Any]]:
    directory, _ = split_resnet(work, 3)
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    options = ServeOptions(http_port=0, threads=CORES, max_batch=1)
    results: dict[str, list[float]] = {"native ZeroMQ": [], "HTTP binary": [], "HTTP JSON": []}
    with ServeThread(directory, options) as served:
        clients = {"native ZeroMQ": Client(served.info["zmq"]),
                   "HTTP binary": Client(served.info["gateway"], binary=True),
                   "HTTP JSON": Client(served.info["gateway"], binary=False)}
        for _ in range(rounds):
            for name, client in clients.items():
                results[name] += latencies(lambda c=client: c.infer(x), count)
    base = statistics.median(results["native ZeroMQ"])
    return [{"client": name, "ms": median_ms(times),
             "overhead_ms": 1000 * (statistics.median(times) - base)}
            for name, times in results.items()]


def report(latency: list[dict[str, Any]], through: list[dict[str, Any]],
           hops: list[dict[str, Any]], protocols: list[dict[str, Any]], load: str) -> str:
    lines = [
        f"## Block runtime: served blocks vs the whole model ({date.today().isoformat()})",
        "",
        machine_line(),
        f"Load average before / after: {load} / {load_average()}.",
        "",
        "Latency, one request in flight (median; the pipeline through the native ZeroMQ "
        "client, gateway included, each worker with the whole model's ORT threads since only "
        "one runs at a time, spinning off; the whole model in one session, best of spinning "
        "on/off; target <= 1.05x). *Outside workers* is the part of a request's time not "
        "spent between a worker's receive and send (client, gateway, the transfers), from the "
        "requests' traces:",
        "",
        "| model | blocks | ORT threads | whole model ms | pipeline ms | outside workers ms "
        "| ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {r['model']} | {r['blocks']} | {r['threads']} | {r['whole_ms']:.2f} | "
              f"{r['pipeline_ms']:.2f} | {r['outside_ms']:.2f} | {r['ratio']:.3f}x |"
              for r in latency]
    lines += ["", "Throughput, requests in flight (samples/s; target >= 0.9x the best "
              "whole-model configuration):", "",
              "| blocks | pipeline | best whole model | ratio | all whole-model configs |",
              "|---:|---:|---|---:|---|"]
    for r in through:
        others = ", ".join(f"{name}: {rps:.1f}" for name, rps in r["whole"].items())
        lines.append(f"| {r['blocks']} | {r['pipeline_rps']:.1f} | {r['best']} "
                     f"({r['whole'][r['best']]:.1f}) | {r['ratio']:.3f}x | {others} |")
    lines += ["", "Cost per hop (Identity blocks; (3-block - 1-block latency) / 2; "
              "target <= 0.35 ms at 1 MB on ipc):", "",
              "| tensor | transport | 1 block ms | 3 blocks ms | per hop ms |",
              "|---:|---|---:|---:|---:|"]
    lines += [f"| {r['bytes'] // 1000} KB | {r['transport']} | {r['one_ms']:.3f} | "
              f"{r['three_ms']:.3f} | {r['hop_ms']:.3f} |" for r in hops]
    lines += ["", "Client protocol on the 3-block pipeline (median latency; overhead vs "
              "native ZeroMQ):", "", "| client | ms | overhead ms |", "|---|---:|---:|"]
    lines += [f"| {r['client']} | {r['ms']:.2f} | {r['overhead_ms']:+.2f} |" for r in protocols]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=30, help="requests per latency round")
    parser.add_argument("--seconds", type=float, default=4.0, help="per throughput round")
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--write", type=Path, help="markdown file whose section to replace")
    args = parser.parse_args()
    load = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as scratch:
        work = Path(scratch)
        os.environ.setdefault("SPLITDNN_CACHE_DIR", str(work / "cache"))
        latency = bench_latency(work, args.rounds, args.count)
        through = bench_throughput(work, args.rounds, args.seconds, args.in_flight)
        hops = bench_hops(work, args.rounds, args.count)
        protocols = bench_protocols(work, args.rounds, args.count)
    section = report(latency, through, hops, protocols, load)
    print(section)
    if args.write:
        write_section(args.write, "bench_runtime", section)


if __name__ == "__main__":
    main()
