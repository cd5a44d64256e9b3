"""The gateway: the Open Inference Protocol v2 (KServe/Triton REST) in front of the stages.

It assigns request ids and deadlines, sends each request to the first stage over ZeroMQ,
matches results coming back by id (late and duplicate results are dropped and counted),
answers 504 when a deadline passes and 503 when too many requests are in flight or the
pipeline is down. Besides HTTP it offers a native ZeroMQ ROUTER endpoint that takes and
returns wire-format messages, for clients that want the fast path.

With a *cross path* (a CrossLink, CoDE) the gateway sends a share of its requests to another
first stage — the head of a path that borrows a host service's blocks — while its load, the
requests in flight counting the new one, exceeds a threshold. Results come back to the same
results socket; an HTTP response says ``"route": "cross"`` in its parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq
import zmq.asyncio
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from splitdnn.runtime.metrics import RuntimeMetrics
from splitdnn.runtime.oip import OipError, decode_infer_request, encode_infer_response
from splitdnn.runtime.peers import PeerSet
from splitdnn.runtime.wire import (
    DEFAULT_HWM,
    DEFAULT_MAX_BYTES,
    Message,
    WireError,
    configure_socket,
    decode,
    encode,
    error_reply,
)

log = logging.getLogger("splitdnn.gateway")
STAGE = "gateway"
CROSS_STAGE = "gateway-cross"  # metrics label of the requests sent through the cross path
REMEMBERED_IDS = 4096


@dataclass
class GatewayConfig:
    """Where the gateway listens and what model it serves (from the split manifest)."""

    model: str
    input: dict[str, Any]
    output: dict[str, Any]
    first: list[str]
    results: str
    results_advertised: str | None = None
    zmq_listen: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    batch_free: bool = False
    max_inflight: int = 64
    timeout_s: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES
    hwm: int = DEFAULT_HWM
    exits: list[int] = field(default_factory=list)
    cross: list[str] = field(default_factory=list)
    cross_share: float = 0.0
    cross_load_threshold: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.cross_share <= 1.0:
            raise ValueError(f"cross share: expected 0 <= share <= 1, got {self.cross_share}")
        if self.cross_load_threshold < 0:
            raise ValueError(f"cross load threshold: expected >= 0, got "
                             f"{self.cross_load_threshold}")


class CrossRouter:
    """Which requests take the cross path: ``share`` of those arriving while more than
    ``threshold`` requests (this one included) are in flight, spread evenly (every fourth
    for 0.25) by a credit that grows by ``share`` per such request."""

    def __init__(self, share: float, threshold: int) -> None:
        self.share, self.threshold = share, threshold
        self.credit = 0.0

    def take(self, in_flight: int) -> bool:
        """Decide for a request arriving with ``in_flight`` others already pending."""
        if self.share <= 0 or in_flight + 1 <= self.threshold:
            return False
        self.credit += self.share
        if self.credit >= 1.0 - 1e-9:
            self.credit -= 1.0
            return True
        return False


class GatewayError(Exception):
    """An inference that cannot be answered with a result: HTTP status plus message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferResult:
    output: np.ndarray
    exit: int | None
    trace: list[dict[str, Any]]
    cross: bool = False


class Gateway:
    """The request/response side of the pipeline; run with :meth:`start` inside an event loop."""

    def __init__(self, config: GatewayConfig, metrics: RuntimeMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or RuntimeMetrics()
        self.context = zmq.asyncio.Context()
        self.pending: dict[str, asyncio.Future[Message]] = {}
        self.finished: OrderedDict[str, str] = OrderedDict()  # id -> "answered" | "late"
        self.ids = itertools.count()
        self.prefix = f"{os.getpid():x}-{int(time.time() * 1000) % 10**9:x}-"
        self.down_reason: str | None = None
        self.accepting = True
        self.tasks: list[asyncio.Task[None]] = []
        self.native_tasks: set[asyncio.Task[None]] = set()
        self.runner: web.AppRunner | None = None
        self.http_url = ""
        self.router_cross = CrossRouter(config.cross_share, config.cross_load_threshold)
        self.cross_peers: PeerSet | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        self.to_first = self._socket(zmq.PUSH)
        self.first_peers = PeerSet(self.to_first, self.config.first)
        self.tasks.append(asyncio.create_task(self._refresh_peers(self.first_peers)))
        if self.config.cross:
            self.to_cross = self._socket(zmq.PUSH)
            self.cross_peers = PeerSet(self.to_cross, self.config.cross)
            self.tasks.append(asyncio.create_task(self._refresh_peers(self.cross_peers)))
        self.results = self._socket(zmq.PULL)
        self.results.bind(self.config.results)
        self.tasks.append(asyncio.create_task(self._collect_results()))
        if self.config.zmq_listen:
            self.router = self._socket(zmq.ROUTER)
            self.router.bind(self.config.zmq_listen)
            self.tasks.append(asyncio.create_task(self._serve_native()))
        self.runner = web.AppRunner(self.http_app(), access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.config.http_host, self.config.http_port)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.http_url = f"http://{host}:{port}"

    async def stop(self, drain_s: float = 10.0) -> None:
        """Refuse new requests, wait for those in flight (up to ``drain_s``), then close."""
        self.accepting = False
        until = time.monotonic() + drain_s
        while self.pending and time.monotonic() < until:
            await asyncio.sleep(0.02)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.runner is not None:
            await self.runner.cleanup()
        self.context.destroy(linger=0)

    async def _refresh_peers(self, peers: PeerSet) -> None:
        while peers.named:
            await asyncio.sleep(peers.refresh_s)
            peers.apply(await asyncio.to_thread(peers.resolve))

    def _socket(self, kind: int) -> zmq.asyncio.Socket:
        socket = self.context.socket(kind)
        configure_socket(socket, self.config.max_bytes, self.config.hwm)
        return socket

    def mark_down(self, reason: str) -> None:
        """The pipeline broke (a stage died): fail what is in flight, refuse new requests."""
        self.down_reason = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(GatewayError(503, reason))

    def mark_up(self) -> None:
        self.down_reason = None

    @property
    def ready(self) -> bool:
        return self.accepting and self.down_reason is None

    # ---- the core: one request through the pipeline ---------------------------------------
    async def infer(self, tensor: np.ndarray, timeout_s: float | None = None) -> InferResult:
        """Send one tensor through the stages and wait for its result or an error."""
        self._admit()
        timeout = min(timeout_s or self.config.timeout_s, self.config.timeout_s)
        request_id = f"{self.prefix}{next(self.ids)}"
        reply_to = self.config.results_advertised or self.config.results
        message = Message(request_id, reply_to, time.time() + timeout, [tensor])
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        cross = self._cross_available() and self.router_cross.take(len(self.pending))
        self.pending[request_id] = future
        self.metrics.queue_depth.labels(STAGE).set(len(self.pending))
        started = time.monotonic()
        try:
            reply = await asyncio.wait_for(self._send_and_wait(message, future, cross), timeout)
        except TimeoutError:
            self._forget(request_id, "late")
            self._count("timeout")
            raise GatewayError(504, f"no result within the deadline of {timeout:g} s") from None
        except GatewayError as error:
            self._forget(request_id, "late")
            self._count("unavailable" if error.status == 503 else "error")
            raise
        self._forget(request_id, "answered")
        self.metrics.latency.labels(STAGE).observe(time.monotonic() - started)
        if reply.error is not None:
            self._count("error")
            raise GatewayError(_status_for(reply.error["code"]),
                               f"{reply.error['code']}: {reply.error['message']}")
        self._count("exit" if reply.exit is not None else "ok")
        return InferResult(reply.tensors[0], reply.exit, reply.trace, cross)

    def _cross_available(self) -> bool:
        """A cross path is configured and has an endpoint to send to (else: the main path)."""
        peers = self.cross_peers
        return peers is not None and bool(peers.static or peers.connected)

    def _admit(self) -> None:
        if not self.accepting:
            raise GatewayError(503, "the gateway is shutting down")
        if self.down_reason is not None:
            raise GatewayError(503, self.down_reason)
        if len(self.pending) >= self.config.max_inflight:
            self._count("rejected")
            raise GatewayError(503, f"too many requests in flight "
                                    f"({self.config.max_inflight}); retry later")

    async def _send_and_wait(self, message: Message, future: asyncio.Future[Message],
                             cross: bool = False) -> Message:
        socket, stage = (self.to_cross, CROSS_STAGE) if cross else (self.to_first, STAGE)
        await socket.send_multipart(encode(message), copy=False)
        self.metrics.sent_bytes.labels(stage).inc(message.tensors[0].nbytes)
        if cross:
            self.metrics.requests.labels(CROSS_STAGE, "sent").inc()
        return await future

    def _forget(self, request_id: str, how: str) -> None:
        self.pending.pop(request_id, None)
        self.finished[request_id] = how
        if len(self.finished) > REMEMBERED_IDS:
            self.finished.popitem(last=False)
        self.metrics.queue_depth.labels(STAGE).set(len(self.pending))

    def _count(self, outcome: str) -> None:
        self.metrics.requests.labels(STAGE, outcome).inc()

    async def _collect_results(self) -> None:
        while True:
            frames = await self.results.recv_multipart(copy=False)
            try:
                message = decode(frames, self.config.max_bytes, now=float("-inf"))
            except WireError as error:
                self.metrics.dropped.labels(STAGE, error.reason).inc()
                continue
            future = self.pending.get(message.id)
            if future is None or future.done():
                reason = {"answered": "duplicate", "late": "late"}.get(
                    self.finished.get(message.id, ""), "unknown_id")
                self.metrics.dropped.labels(STAGE, reason).inc()
                continue
            future.set_result(message)

    # ---- native ZeroMQ endpoint ------------------------------------------------------------
    async def _serve_native(self) -> None:
        while True:
            identity, *frames = await self.router.recv_multipart(copy=False)
            task = asyncio.create_task(self._answer_native(identity, frames))
            self.native_tasks.add(task)
            task.add_done_callback(self.native_tasks.discard)

    async def _answer_native(self, identity: Any, frames: list[Any]) -> None:
        try:
            request = decode(frames, self.config.max_bytes)
        except WireError as error:
            self.metrics.dropped.labels(STAGE, error.reason).inc()
            return  # a DEALER client with a broken header cannot match a reply anyway
        try:
            if len(request.tensors) != 1:
                raise GatewayError(400, "a request must carry exactly one tensor")
            check_input(self.config, request.tensors[0])
            result = await self.infer(request.tensors[0], request.deadline - time.time())
            reply = Message(request.id, request.reply_to, request.deadline, [result.output],
                            result.trace, result.exit)
        except GatewayError as error:
            reply = error_reply(request.id, request.reply_to, str(error.status), str(error))
        await self.router.send_multipart([identity, *encode(reply)], copy=False)

    # ---- HTTP: Open Inference Protocol v2 ------------------------------------------------
    def http_app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_bytes * 4 + 2**20)
        name = self.config.model
        app.add_routes([
            web.get("/v2/health/live", self._live),
            web.get("/v2/health/ready", self._ready),
            web.get("/healthz", self._live),
            web.get("/readyz", self._ready),
            web.get("/metrics", self._metrics),
            web.get("/v2", self._server_metadata),
            web.post("/v2/repository/index", self._repository_index),
            web.get(f"/v2/models/{name}", self._model_metadata),
            web.get(f"/v2/models/{name}/versions/1", self._model_metadata),
            web.get(f"/v2/models/{name}/ready", self._ready),
            web.get(f"/v2/models/{name}/versions/1/ready", self._ready),
            web.post(f"/v2/models/{name}/infer", self._infer),
            web.post(f"/v2/models/{name}/versions/1/infer", self._infer),
            web.route("*", "/v2/models/{other}/{tail:.*}", self._unknown_model),
            web.get("/v2/models/{other}", self._unknown_model),
        ])
        return app

    async def _live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def _ready(self, _: web.Request) -> web.Response:
        body: dict[str, Any] = {"ready": self.ready}
        if self.down_reason:
            body["reason"] = self.down_reason
        return web.json_response(body, status=200 if self.ready else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _server_metadata(self, _: web.Request) -> web.Response:
        return web.json_response({"name": "splitdnn", "version": "0.1.0",
                                  "extensions": ["binary_tensor_data", "model_repository"]})

    async def _repository_index(self, _: web.Request) -> web.Response:
        state = "READY" if self.ready else "UNAVAILABLE"
        return web.json_response([{"name": self.config.model, "version": "1", "state": state}])

    async def _model_metadata(self, _: web.Request) -> web.Response:
        return web.json_response(model_metadata(self.config))

    async def _unknown_model(self, request: web.Request) -> web.Response:
        other = request.match_info["other"]
        return web.json_response({"error": f"unknown model {other!r}; this gateway serves "
                                           f"{self.config.model!r}"}, status=404)

    async def _infer(self, request: web.Request) -> web.Response:
        try:
            body = await request.read()
            parsed = decode_infer_request(body, request.headers, self.config.input)
            check_input(self.config, parsed.tensor)
            result = await self.infer(parsed.tensor, parsed.timeout_s)
        except OipError as error:
            self._count("bad_request")
            return web.json_response({"error": str(error)}, status=400)
        except GatewayError as error:
            return web.json_response({"error": str(error)}, status=error.status)
        parameters: dict[str, Any] = {} if result.exit is None else {"exit": result.exit}
        if result.cross:
            parameters["route"] = "cross"
        payload, headers = encode_infer_response(
            self.config.model, parsed.request_id, self.config.output["name"], result.output,
            parsed.binary_output, parameters,
        )
        return web.Response(body=payload, headers=headers)


def check_input(config: GatewayConfig, tensor: np.ndarray) -> None:
    """Reject an input whose dtype or shape the first block cannot take (400)."""
    want = config.input
    if tensor.dtype.name != want["dtype"]:
        raise GatewayError(400, f"input {want['name']!r}: datatype {tensor.dtype.name}, "
                                f"expected {want['dtype']}")
    shape = list(want["shape"])
    free_batch = config.batch_free and len(tensor.shape) == len(shape) and tensor.shape[0] >= 1
    if list(tensor.shape) != shape and not (free_batch and list(tensor.shape[1:]) == shape[1:]):
        dims = ["N" if config.batch_free and axis == 0 else str(dim)
                for axis, dim in enumerate(shape)]
        raise GatewayError(400, f"input {want['name']!r}: shape {list(tensor.shape)}, "
                                f"expected [{', '.join(dims)}]")


def model_metadata(config: GatewayConfig) -> dict[str, Any]:
    """The OIP v2 model metadata object (shapes with -1 for a free batch dimension)."""
    from splitdnn.runtime.oip import oip_datatype

    def tensor(spec: dict[str, Any]) -> dict[str, Any]:
        shape = list(spec["shape"])
        if config.batch_free and shape:
            shape[0] = -1
        return {"name": spec["name"], "datatype": oip_datatype(spec["dtype"]), "shape": shape}

    return {"name": config.model, "versions": ["1"], "platform": "splitdnn_onnxruntime",
            "inputs": [tensor(config.input)], "outputs": [tensor(config.output)]}


def _status_for(code: str) -> int:
    return {"bad_input": 400, "expired": 504, "503": 503, "504": 504}.get(code, 500)

