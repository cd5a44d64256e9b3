"""Local serving of a split directory: one worker process per block plus the gateway.

``serve_split`` starts the workers (spawned, not forked), waits until each has loaded and
warmed up its block, starts the gateway in this process and serves until told to stop; then
it drains in-flight requests and stops the workers. A worker that dies is reported, the
requests in flight fail at once with a message naming it, and the gateway reports not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitdnn.graph.blocks import BlockManifest
from splitdnn.runtime.gateway import Gateway, GatewayConfig
from splitdnn.runtime.worker import WorkerConfig, run_worker

READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class ExitHead:
    """An early-exit head after block ``block``: its ONNX file and softmax threshold."""

    block: int
    file: Path
    threshold: float


@dataclass
class ServeOptions:
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    transport: str = "ipc"
    name: str | None = None
    threads: int | None = 1
    spinning: bool = False
    max_batch: int = 8
    max_delay_ms: float = 0.0
    max_inflight: int = 64
    timeout_s: float = 30.0
    exits: list[ExitHead] = field(default_factory=list)


class WorkerDied(RuntimeError):
    pass


def model_name(reference: str) -> str:
    """A URL-safe name for the served model: ``torchvision:resnet18`` -> ``resnet18``."""
    base = reference.rsplit(":", 1)[-1].rsplit("/", 1)[-1].removesuffix(".onnx")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in base).strip("-.")
    return safe or "model"


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class Endpoints:
    """Fresh endpoints for one pipeline: ipc sockets in a private directory, or tcp ports."""

    def __init__(self, transport: str) -> None:
        if transport not in ("ipc", "tcp"):
            raise ValueError(f"--transport: expected ipc or tcp, got {transport!r}")
        self.transport = transport
        self.directory = tempfile.TemporaryDirectory(prefix="splitdnn-")

    def new(self, name: str) -> str:
        if self.transport == "tcp":
            return f"tcp://127.0.0.1:{free_tcp_port()}"
        return f"ipc://{self.directory.name}/{name}"


def worker_configs(manifest: BlockManifest, endpoints: Endpoints,
                   options: ServeOptions) -> list[WorkerConfig]:
    listen = [endpoints.new(f"stage{index}") for index in range(len(manifest.blocks))]
    exits = {head.block: head for head in options.exits}
    configs = []
    for index, block in enumerate(manifest.blocks):
        head = exits.get(index)
        configs.append(WorkerConfig(
            block=manifest.directory / block["file"], listen=listen[index],
            next=listen[index + 1:index + 2], stage=str(index),
            exit_head=head.file if head else None,
            exit_threshold=head.threshold if head else 1.0, exit_index=index,
            max_batch=options.max_batch, max_delay_ms=options.max_delay_ms,
            threads=options.threads, spinning=options.spinning,
        ))
    return configs


def _worker_main(config: WorkerConfig, ready: multiprocessing.connection.Connection) -> None:
    try:
        run_worker(config, on_ready=lambda: ready.send(("ready", None)))
    except Exception as error:
        ready.send(("failed", f"{type(error).__name__}: {error}"))
        raise


class Pipeline:
    """The worker processes of one served split."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        self.configs = configs
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start every worker and wait until each reports ready; a worker that fails or dies
        while loading is reported at once, naming it."""
        pipes = []
        for config in self.configs:
            parent, child = self.context.Pipe(duplex=False)
            process = self.context.Process(target=_worker_main, args=(config, child),
                                           name=f"splitdnn-worker-{config.stage}", daemon=True)
            process.start()
            child.close()  # the worker holds the only write end: its death is EOF here
            self.processes.append(process)
            pipes.append(parent)
        until = time.monotonic() + timeout_s
        for config, process, pipe in zip(self.configs, self.processes, pipes, strict=True):
            if not pipe.poll(max(until - time.monotonic(), 0)):
                raise WorkerDied(f"worker {config.stage} did not become ready in {timeout_s} s")
            try:
                status, detail = pipe.recv()
            except EOFError:
                process.join(5)
                status, detail = "failed", f"it exited with code {process.exitcode}"
            if status != "ready":
                raise WorkerDied(f"worker {config.stage} ({config.block.name}) failed to "
                                 f"start: {detail}")

    def dead(self) -> list[tuple[int, WorkerConfig, int | None]]:
        return [(index, config, process.exitcode) for index, (config, process)
                in enumerate(zip(self.configs, self.processes, strict=True))
                if not process.is_alive()]

    def stop(self, grace_s: float = 5.0) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: the worker drains, then exits
        for process in self.processes:
            process.join(grace_s)
            if process.is_alive():
                process.kill()
                process.join()


def gateway_config(manifest: BlockManifest, first: str, endpoints: Endpoints,
                   options: ServeOptions) -> GatewayConfig:
    return GatewayConfig(
        model=options.name or model_name(str(manifest.data["model"])),
        input=manifest.data["input"], output=manifest.data["output"], first=[first],
        results=endpoints.new("results"), zmq_listen=endpoints.new("gateway"),
        http_host=options.http_host, http_port=options.http_port,
        batch_free=all(block.get("batch_free") for block in manifest.blocks),
        max_inflight=options.max_inflight, timeout_s=options.timeout_s,
        exits=[head.block for head in options.exits],
    )


async def serve_split(directory: Path, options: ServeOptions,
                      on_started: Callable[[dict[str, Any]], Awaitable[None] | None],
                      on_worker_died: Callable[[str], None],
                      stop: asyncio.Event | None = None) -> None:
    """Serve ``directory`` until ``stop`` is set (or SIGINT/SIGTERM when it is None)."""
    manifest = BlockManifest.load(directory)
    endpoints = Endpoints(options.transport)
    pipeline = Pipeline(worker_configs(manifest, endpoints, options))
    stop = stop or _signal_event()
    try:
        await asyncio.to_thread(pipeline.start)
        gateway = Gateway(gateway_config(manifest, pipeline.configs[0].listen, endpoints,
                                         options))
        await gateway.start()
        started = on_started({"gateway": gateway.http_url, "model": gateway.config.model,
                              "zmq": gateway.config.zmq_listen,
                              "workers": [config.listen for config in pipeline.configs]})
        if started is not None:
            await started
        await _watch(pipeline, gateway, stop, on_worker_died)
        await gateway.stop()
    finally:
        await asyncio.to_thread(pipeline.stop)
        endpoints.directory.cleanup()


async def _watch(pipeline: Pipeline, gateway: Gateway, stop: asyncio.Event,
                 on_worker_died: Callable[[str], None]) -> None:
    reported: set[int] = set()
    while not stop.is_set():
        for index, config, code in pipeline.dead():
            if index not in reported:
                reported.add(index)
                reason = (f"worker {index} ({config.block.name} on {config.listen}) died "
                          f"with exit code {code}")
                gateway.mark_down(reason)
                on_worker_died(reason)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, event.set)
    return event


class ServeThread:
    """``serve_split`` on its own event loop in a background thread, for tests, benchmarks
    and embedding: ``info`` is the started line, ``deaths`` the workers reported dead."""

    def __init__(self, directory: Path, options: ServeOptions,
                 start_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.info: dict[str, Any] = {}
        self.deaths: list[str] = []
        self.error: BaseException | None = None
        self._started = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, args=(directory, options),
                                        name="splitdnn-serve", daemon=True)
        self._thread.start()
        if not self._started.wait(start_timeout_s) or self.error is not None:
            self.stop()
            raise WorkerDied(f"serving {directory} did not start: {self.error}")

    def _run(self, directory: Path, options: ServeOptions) -> None:
        def started(info: dict[str, Any]) -> None:
            self.info = info
            self._started.set()

        async def main() -> None:
            self._stop = asyncio.Event()
            await serve_split(directory, options, started, self.deaths.append, self._stop)

        try:
            self._loop.run_until_complete(main())
        except BaseException as error:  # reported by __init__ or stop
            self.error = error
            self._started.set()
        finally:
            self._loop.close()

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise RuntimeError("serving did not stop")

    def __enter__(self) -> ServeThread:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
