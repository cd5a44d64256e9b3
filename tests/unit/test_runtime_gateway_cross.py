"""The gateway's cross path (CrossLink): which requests it routes there, with hand-driven
main and cross first stages."""

from __future__ import annotations

import asyncio
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from splitdnn.runtime.gateway import CrossRouter, Gateway, GatewayConfig
from splitdnn.runtime.oip import decode_infer_response, encode_infer_request
from tests.unit.test_runtime_gateway import Stage, call_in_background

Start = Callable[..., tuple[Gateway, Stage, Stage]]


def test_router_spreads_the_share_evenly() -> None:
    router = CrossRouter(share=0.25, threshold=0)
    assert [router.take(0) for _ in range(8)] == [False, False, False, True] * 2


def test_router_offloads_only_above_the_load_threshold() -> None:
    router = CrossRouter(share=1.0, threshold=2)
    assert [router.take(in_flight) for in_flight in (0, 1, 2, 5)] == [False, False, True, True]
    assert not CrossRouter(share=0.0, threshold=0).take(10)


def test_config_rejects_a_share_outside_0_1() -> None:
    with pytest.raises(ValueError, match="cross share"):
        GatewayConfig(model="m", input={}, output={}, first=[], results="", cross_share=1.5)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Start]:
    context: zmq.Context[Any] = zmq.Context()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateways: list[Gateway] = []

    def start(share: float, threshold: int, cross: list[str] | None = None
              ) -> tuple[Gateway, Stage, Stage]:
        stages = []
        for name in ("main", "cross"):
            inbox = context.socket(zmq.PULL)
            inbox.bind(f"ipc://{tmp_path}/{name}")
            stages.append(Stage(inbox, context))
        config = GatewayConfig(
            model="toy", input={"name": "x", "shape": [1, 4], "dtype": "float32"},
            output={"name": "y", "shape": [1, 4], "dtype": "float32"},
            first=[f"ipc://{tmp_path}/main"], results=f"ipc://{tmp_path}/results",
            http_port=0, timeout_s=5.0,
            cross=[f"ipc://{tmp_path}/cross"] if cross is None else cross,
            cross_share=share, cross_load_threshold=threshold)
        gateway = Gateway(config)
        asyncio.run_coroutine_threadsafe(gateway.start(), loop).result(30)
        gateways.append(gateway)
        return gateway, stages[0], stages[1]

    try:
        yield start
    finally:
        for gateway in gateways:
            asyncio.run_coroutine_threadsafe(gateway.stop(drain_s=0.1), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        context.destroy(linger=0)


def cross_sent(gateway: Gateway) -> float:
    value = gateway.metrics.registry.get_sample_value(
        "splitdnn_requests_total", {"stage": "gateway-cross", "outcome": "sent"})
    return value or 0.0


def test_all_requests_take_the_cross_path_with_share_1(start_gateway: Start) -> None:
    gateway, main, cross = start_gateway(share=1.0, threshold=0)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    body, headers = encode_infer_request("x", x, binary=False)
    request = urllib.request.Request(f"{gateway.http_url}/v2/models/toy/infer", data=body,
                                     headers=headers, method="POST")
    answered: dict[str, Any] = {}

    def post() -> None:
        with urllib.request.urlopen(request, timeout=10) as response:
            answered["body"], answered["headers"] = response.read(), dict(response.headers)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    cross.answer(cross.take(), x * 3)
    thread.join(10)
    output, parameters = decode_infer_response(answered["body"], answered["headers"])
    np.testing.assert_array_equal(output, x * 3)
    assert parameters == {"route": "cross"}
    assert cross_sent(gateway) == 1
    assert not main.inbox.poll(100)


def test_below_the_threshold_requests_stay_on_the_main_path(start_gateway: Start) -> None:
    gateway, main, cross = start_gateway(share=1.0, threshold=2)
    x = np.ones((1, 4), np.float32)
    first = call_in_background(gateway.http_url, x, timeout_s=5)
    held = [main.take()]  # alone in flight: 1 <= 2
    second = call_in_background(gateway.http_url, x, timeout_s=5)
    held.append(main.take())  # two in flight: 2 <= 2
    third = call_in_background(gateway.http_url, x, timeout_s=5)
    offloaded = cross.take()  # three in flight: above the threshold
    cross.answer(offloaded, x * 5)
    for request in held:
        main.answer(request)
    results = []
    for thread, outcome in (first, second, third):
        thread.join(10)
        results.append(outcome["result"].output)
    np.testing.assert_array_equal(results[2], x * 5)
    assert cross_sent(gateway) == 1


def test_an_unresolvable_cross_endpoint_falls_back_to_the_main_path(
        start_gateway: Start) -> None:
    gateway, main, _ = start_gateway(
        share=1.0, threshold=0, cross=["dns+tcp://no-such-cross-path.invalid:5555"])
    thread, outcome = call_in_background(gateway.http_url, np.ones((1, 4), np.float32))
    main.answer(main.take())
    thread.join(10)
    assert outcome["result"].output.tolist() == [[2, 2, 2, 2]]
    assert cross_sent(gateway) == 0
