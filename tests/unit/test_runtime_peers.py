"""Peer sets: a dns+tcp:// endpoint keeps a PUSH socket connected to every address its name
resolves to, as a headless Service's replicas come and go."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from splitdnn.runtime.peers import PeerSet, parse_dns_endpoint, resolve_all, tcp_endpoint
from splitdnn.runtime.serve import free_tcp_port as free_port


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def drain(sockets: list[zmq.Socket[Any]], quiet_ms: int = 300) -> list[int]:
    """How many messages each socket receives until it has been quiet for ``quiet_ms``."""
    counts = []
    for sock in sockets:
        received = 0
        while sock.poll(quiet_ms):
            sock.recv_multipart()
            received += 1
        counts.append(received)
    return counts


def test_parse_and_format() -> None:
    assert parse_dns_endpoint("dns+tcp://stage-1.ns.svc:5555") == ("stage-1.ns.svc", 5555)
    with pytest.raises(ValueError, match="dns\\+tcp://NAME:PORT"):
        parse_dns_endpoint("dns+tcp://no-port")
    assert tcp_endpoint("10.0.0.7", 5555) == "tcp://10.0.0.7:5555"
    assert tcp_endpoint("fd00::7", 5555) == "tcp://[fd00::7]:5555"


def test_localhost_resolves_and_unknown_names_resolve_to_nothing() -> None:
    assert "127.0.0.1" in resolve_all("localhost", 80)
    assert resolve_all("no-such-host.invalid", 80) == []


def test_replicas_are_followed_as_the_name_changes(context: zmq.Context[Any]) -> None:
    port = free_port()
    replicas = [context.socket(zmq.PULL) for _ in range(2)]
    for index, replica in enumerate(replicas):
        replica.bind(f"tcp://127.0.0.{index + 1}:{port}")
    answers = [["127.0.0.1"], ["127.0.0.1", "127.0.0.2"], ["127.0.0.2"]]
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    peers = PeerSet(push, [f"dns+tcp://stage-1:{port}"], resolver=lambda *_: answers[0])
    assert peers.endpoints == [f"tcp://127.0.0.1:{port}"]

    def send(count: int) -> list[int]:
        for index in range(count):
            push.send(str(index).encode())
        return drain(replicas)

    assert send(4) == [4, 0]
    answers.pop(0)
    peers.refresh(force=True)
    time.sleep(0.3)  # let the new connection come up (IMMEDIATE: only live peers get messages)
    assert send(6) == [3, 3]
    answers.pop(0)
    peers.refresh(force=True)
    assert peers.endpoints == [f"tcp://127.0.0.2:{port}"]
    time.sleep(0.3)  # the disconnect completes in ZeroMQ's I/O thread
    assert send(4) == [0, 4]


def test_static_endpoints_are_connected_once(context: zmq.Context[Any]) -> None:
    calls: list[str] = []
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    peers = PeerSet(push, ["tcp://127.0.0.1:1"], resolver=lambda host, _: calls.append(host) or [])
    peers.refresh(force=True)
    assert peers.endpoints == ["tcp://127.0.0.1:1"] and calls == []


def test_refresh_is_rate_limited(context: zmq.Context[Any]) -> None:
    calls: list[str] = []
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    peers = PeerSet(push, ["dns+tcp://svc:9"], resolver=lambda host, _: calls.append(host) or [],
                    refresh_s=60)
    peers.refresh()
    peers.refresh()
    assert calls == ["svc"]
