"""The block worker: receive a tensor, run one block, pass the result on.

A worker binds a PULL socket, runs its block in ONNX Runtime (micro-batching requests when
the block has a free batch dimension), optionally takes an early exit (always, on a last stage
with an exit head: the pipeline ends there), and PUSHes the result
to the next stage (load-balanced over its replicas) or, on the last stage or a taken exit,
to the reply address in the request. It loads, warms up, then reports ready; a bad message
becomes an error reply (or a counted drop when it has no usable reply address) and the
worker keeps serving. On SIGTERM it drains what is queued, then stops.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from splitdnn.runtime.engine import BlockEngine, top_probability
from splitdnn.runtime.metrics import RuntimeMetrics, serve_metrics
from splitdnn.runtime.peers import PeerSet
from splitdnn.runtime.wire import (
    DEFAULT_HWM,
    DEFAULT_MAX_BYTES,
    DeadlineExpired,
    Message,
    WireError,
    configure_socket,
    decode,
    encode,
    error_reply,
    salvage_reply_address,
)

log = logging.getLogger("splitdnn.worker")
MAX_REPLY_SOCKETS = 64
POLL_MS = 100


@dataclass
class WorkerConfig:
    """Everything one worker process needs; plain data so that it pickles for ``spawn``."""

    block: Path
    listen: str
    next: list[str] = field(default_factory=list)
    stage: str = "0"
    exit_head: Path | None = None
    exit_threshold: float = 1.0
    exit_index: int = 0
    max_batch: int = 1
    max_delay_ms: float = 0.0
    threads: int | None = None
    spinning: bool = False
    metrics_port: int | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    hwm: int = DEFAULT_HWM
    drain_s: float = 5.0


class Worker:
    """One block behind a PULL socket. ``serve()`` runs until :meth:`stop` is called."""

    def __init__(self, config: WorkerConfig, metrics: RuntimeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RuntimeMetrics()
        self.engine = BlockEngine(config.block, config.threads, config.spinning)
        self.exit_head = (BlockEngine(config.exit_head, config.threads, config.spinning)
                          if config.exit_head else None)
        self.batching = self.engine.batch_free and config.max_batch > 1
        self.ready = threading.Event()
        self.stopping = threading.Event()
        self.context = zmq.Context()
        self.inbox = self._socket(zmq.PULL)
        self.inbox.bind(config.listen)
        self.outbox = self._socket(zmq.PUSH) if config.next else None
        self.peers = PeerSet(self.outbox, config.next) if self.outbox is not None else None
        self.reply_sockets: OrderedDict[str, zmq.Socket[Any]] = OrderedDict()
        self.label = config.stage
        self.stopped_at = float("inf")

    def _socket(self, kind: int) -> zmq.Socket[Any]:
        socket = self.context.socket(kind)
        configure_socket(socket, self.config.max_bytes, self.config.hwm)
        return socket

    def warm_up(self) -> None:
        """Run the block (and exit head) once on zeros so the first request is not slow."""
        self.engine.warm_up()
        if self.exit_head is not None:
            self.exit_head.warm_up()
        self.ready.set()

    def stop(self) -> None:
        self.stopped_at = time.monotonic()
        self.stopping.set()

    def serve(self) -> None:
        """Receive, batch, run and send until stopped, then drain what is queued."""
        poller = zmq.Poller()
        poller.register(self.inbox, zmq.POLLIN)
        drain_until: float | None = None
        while True:
            if self.peers is not None:
                self.peers.refresh()
            if self.stopping.is_set() and drain_until is None:
                drain_until = time.monotonic() + self.config.drain_s
                self.ready.clear()
            if not poller.poll(POLL_MS):
                if drain_until is not None:
                    break  # nothing left to drain
                continue
            self._handle(self._collect_batch())
            if drain_until is not None and time.monotonic() > drain_until:
                break
        self.close()

    def close(self) -> None:
        for socket in [self.inbox, self.outbox, *self.reply_sockets.values()]:
            if socket is not None:
                socket.close(linger=0)
        self.context.term()

    def _collect_batch(self) -> list[tuple[Message, float]]:
        """One request, then more while the block can batch, up to max_batch or max_delay."""
        batch: list[tuple[Message, float]] = []
        first = self._receive()
        if first is not None:
            batch.append(first)
        if not self.batching:
            return batch
        until = time.monotonic() + self.config.max_delay_ms / 1000
        while len(batch) < self.config.max_batch:
            remaining_ms = (until - time.monotonic()) * 1000
            if remaining_ms <= 0 and not self.inbox.poll(0):
                break
            if not self.inbox.poll(int(max(remaining_ms, 0))):
                break
            received = self._receive()
            if received is not None:
                batch.append(received)
        return batch

    def _receive(self) -> tuple[Message, float] | None:
        """Decode one message; bad ones are answered or dropped here and give None."""
        frames = self.inbox.recv_multipart(copy=False)
        t_in = time.time()
        try:
            message = decode(frames, self.config.max_bytes, now=t_in)
        except DeadlineExpired:
            self._drop("expired")
            return None
        except WireError as error:
            self._reject(frames, error.reason, str(error))
            return None
        if message.error is None and len(message.tensors) == 1:
            problem = self.engine.check(message.tensors[0])
        else:
            problem = "a request must carry exactly one tensor and no error"
        if problem is not None:
            self._send_reply(error_reply(message.id, message.reply_to, "bad_input",
                                         f"stage {self.label}: {problem}"))
            self.metrics.requests.labels(self.label, "error").inc()
            return None
        return message, t_in

    def _reject(self, frames: list[Any], reason: str, text: str) -> None:
        address = salvage_reply_address(frames)
        if address is None:
            self._drop(reason)
            return
        self.metrics.requests.labels(self.label, "error").inc()
        self._send_reply(error_reply(address[0], address[1], reason,
                                     f"stage {self.label}: {text}"))

    def _drop(self, reason: str) -> None:
        self.metrics.dropped.labels(self.label, reason).inc()
        log.debug("dropped a message at stage %s: %s", self.label, reason)

    def _handle(self, batch: list[tuple[Message, float]]) -> None:
        if not batch:
            return
        self.metrics.queue_depth.labels(self.label).set(len(batch))
        try:
            outputs = self._run([message.tensors[0] for message, _ in batch])
        except Exception as error:  # ORT errors on odd inputs must not kill the worker
            for message, _ in batch:
                self.metrics.requests.labels(self.label, "error").inc()
                self._send_reply(error_reply(message.id, message.reply_to, "inference",
                                             f"stage {self.label}: {error}"))
            return
        finally:
            self.metrics.queue_depth.labels(self.label).set(0)
        self.metrics.batch_size.labels(self.label).observe(len(batch))
        for (message, t_in), (output, exited) in zip(batch, outputs, strict=True):
            self._deliver(message, t_in, output, exited)

    def _run(self, inputs: list[np.ndarray]) -> list[tuple[np.ndarray, bool]]:
        """Block (and exit head) outputs per request, with whether the exit was taken."""
        same_sample_shape = len({tensor.shape[1:] for tensor in inputs}) == 1
        if self.batching and len(inputs) > 1 and same_sample_shape:
            stacked = self.engine.run(np.concatenate(inputs, axis=0))
            sizes = [tensor.shape[0] for tensor in inputs]
            results = np.split(stacked, np.cumsum(sizes)[:-1], axis=0)
        else:  # one request, a fixed-batch block, or other symbolic dimensions that differ
            results = [self.engine.run(tensor) for tensor in inputs]
        if self.exit_head is None:
            return [(result, False) for result in results]
        return [self._maybe_exit(result) for result in results]

    def _maybe_exit(self, features: np.ndarray) -> tuple[np.ndarray, bool]:
        """The head's result when it is confident enough, or always on the last stage (the
        pipeline ends at this exit: the block's features are no answer)."""
        assert self.exit_head is not None
        logits = self.exit_head.run(features)
        if self.outbox is None or bool(
                np.all(top_probability(logits) >= self.config.exit_threshold)):
            return logits, True
        return features, False

    def _deliver(self, message: Message, t_in: float, output: np.ndarray,
                 exited: bool) -> None:
        message.trace.append({"stage": self.label, "t_in": t_in, "t_out": time.time()})
        message.tensors = [output]
        self.metrics.latency.labels(self.label).observe(time.time() - t_in)
        if exited:
            message.exit = self.config.exit_index
            self.metrics.exits.labels(self.label, str(self.config.exit_index)).inc()
        final = exited or self.outbox is None
        sent = self._send_reply(message) if final else self._forward(message)
        if sent:
            outcome = "exit" if exited else ("done" if final else "forwarded")
            self.metrics.requests.labels(self.label, outcome).inc()
            self.metrics.sent_bytes.labels(self.label).inc(output.nbytes)

    def _forward(self, message: Message) -> bool:
        """Send to the next stage, waiting for room until the request's deadline."""
        assert self.outbox is not None
        while not self.outbox.poll(POLL_MS, zmq.POLLOUT):
            if time.time() > message.deadline:
                self._drop("expired")
                return False
            if self.stopping.is_set() and time.monotonic() > self.stopped_at + self.config.drain_s:
                self._drop("shutdown")
                return False
        self.outbox.send_multipart(encode(message), copy=False, flags=zmq.NOBLOCK)
        return True

    def _send_reply(self, message: Message) -> bool:
        """Send to the request's reply address; an unreachable or full one is a counted drop."""
        try:
            socket = self._reply_socket(message.reply_to)
            socket.send_multipart(encode(message), copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError:  # EAGAIN (full or gone) or an endpoint that cannot be connected
            self._drop("reply_unreachable")
            return False
        return True

    def _reply_socket(self, address: str) -> zmq.Socket[Any]:
        socket = self.reply_sockets.pop(address, None)
        if socket is None:
            socket = self._socket(zmq.PUSH)
            try:
                socket.connect(address)
            except zmq.ZMQError:
                socket.close(linger=0)
                raise
            if len(self.reply_sockets) >= MAX_REPLY_SOCKETS:
                _, oldest = self.reply_sockets.popitem(last=False)
                oldest.close(linger=0)
        self.reply_sockets[address] = socket
        return socket


def run_worker(config: WorkerConfig, on_ready: Callable[[], None] | None = None) -> None:
    """Load, warm up, report ready, serve until SIGTERM/SIGINT; the body of a worker process."""
    worker = Worker(config)
    if config.metrics_port is not None:
        serve_metrics(config.metrics_port, worker.metrics.registry, worker.ready.is_set)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    worker.warm_up()
    if on_ready is not None:
        on_ready()
    worker.serve()
