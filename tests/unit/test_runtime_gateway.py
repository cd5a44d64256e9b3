"""The gateway against a hand-driven first stage: result matching, late and duplicate
results, error replies, request ids and deadlines, a broken pipeline."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from splitdnn.runtime.client import Client, InferenceError
from splitdnn.runtime.gateway import Gateway, GatewayConfig
from splitdnn.runtime.wire import Message, decode, encode, error_reply


@dataclass
class Stage:
    """Plays the pipeline: receives what the gateway sends and answers as the test says."""

    inbox: zmq.Socket[Any]
    context: zmq.Context[Any]

    def take(self) -> Message:
        assert self.inbox.poll(5000), "the gateway sent nothing"
        return decode(self.inbox.recv_multipart(), now=float("-inf"))

    def answer(self, request: Message, tensor: np.ndarray | None = None,
               error: tuple[str, str] | None = None) -> None:
        if error is not None:
            reply = error_reply(request.id, request.reply_to, *error)
        else:
            reply = Message(request.id, request.reply_to, request.deadline,
                            [tensor if tensor is not None else request.tensors[0] * 2])
        out = self.context.socket(zmq.PUSH)
        out.connect(request.reply_to)
        out.send_multipart(encode(reply))
        out.close(linger=2000)


@dataclass
class Running:
    gateway: Gateway
    stage: Stage
    loop: asyncio.AbstractEventLoop

    def dropped(self, reason: str) -> float:
        value = self.gateway.metrics.registry.get_sample_value(
            "splitdnn_dropped_messages_total", {"stage": "gateway", "reason": reason})
        return value or 0.0


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    context: zmq.Context[Any] = zmq.Context()
    inbox = context.socket(zmq.PULL)
    inbox.bind(f"ipc://{tmp_path}/first")
    config = GatewayConfig(
        model="toy", input={"name": "x", "shape": [1, 4], "dtype": "float32"},
        output={"name": "y", "shape": [1, 4], "dtype": "float32"},
        first=[f"ipc://{tmp_path}/first"], results=f"ipc://{tmp_path}/results",
        zmq_listen=f"ipc://{tmp_path}/native", http_port=0, batch_free=True, timeout_s=2.0,
    )
    gateway = Gateway(config)
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def run() -> None:
        loop.run_until_complete(gateway.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield Running(gateway, Stage(inbox, context), loop)
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(drain_s=0.1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        context.destroy(linger=0)


def call_in_background(url: str, x: np.ndarray, timeout_s: float = 2.0
                       ) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with Client(url, timeout_s=timeout_s) as client:
                outcome["result"] = client.infer_result(x)
        except InferenceError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("protocol", ["http", "zmq"])
def test_result_is_matched_and_a_duplicate_is_dropped(running: Running, protocol: str) -> None:
    url = (running.gateway.http_url if protocol == "http"
           else running.gateway.config.zmq_listen)
    assert url is not None
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    thread, outcome = call_in_background(url, x)
    request = running.stage.take()
    running.stage.answer(request)
    thread.join(10)
    np.testing.assert_array_equal(outcome["result"].output, x * 2)
    running.stage.answer(request)  # the same result again
    deadline = time.monotonic() + 5
    while running.dropped("duplicate") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.dropped("duplicate") == 1


def test_late_result_is_dropped_after_a_504(running: Running) -> None:
    x = np.ones((1, 4), np.float32)
    thread, outcome = call_in_background(running.gateway.http_url, x, timeout_s=0.3)
    request = running.stage.take()
    thread.join(10)
    assert outcome["error"].status == 504
    running.stage.answer(request)
    deadline = time.monotonic() + 5
    while running.dropped("late") < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.dropped("late") == 1


def test_stage_error_reply_reaches_the_client(running: Running) -> None:
    thread, outcome = call_in_background(running.gateway.http_url, np.ones((1, 4), np.float32))
    running.stage.answer(running.stage.take(), error=("bad_input", "stage 1: input shape"))
    thread.join(10)
    assert outcome["error"].status == 400 and "stage 1: input shape" in str(outcome["error"])


def test_request_ids_are_unique_and_deadlines_set(running: Running) -> None:
    threads = [call_in_background(running.gateway.http_url, np.ones((2, 4), np.float32))
               for _ in range(3)]
    requests = [running.stage.take() for _ in threads]
    assert len({request.id for request in requests}) == 3
    assert all(0 < request.deadline - time.time() <= 2.0 for request in requests)
    for request in requests:
        running.stage.answer(request)
    for thread, outcome in threads:
        thread.join(10)
        assert outcome["result"].output.shape == (2, 4)


def test_mark_down_fails_in_flight_requests_at_once(running: Running) -> None:
    thread, outcome = call_in_background(running.gateway.http_url,
                                         np.ones((1, 4), np.float32), timeout_s=10)
    running.stage.take()
    running.loop.call_soon_threadsafe(running.gateway.mark_down, "worker 1 died")
    thread.join(5)
    assert outcome["error"].status == 503 and "worker 1 died" in str(outcome["error"])
