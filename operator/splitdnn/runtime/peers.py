"""Which replicas of the next stage a socket connects to.

A plain ZeroMQ endpoint (``tcp://host:port``, ``ipc://path``) is connected once; ZeroMQ
resolves a host name a single time, so a headless Kubernetes Service would give one replica
all the traffic. ``dns+tcp://NAME:PORT`` instead resolves NAME to all its addresses (a
headless Service's name resolves to one A record per ready pod) and keeps the socket
connected to exactly that set, re-resolving every few seconds: PUSH then load-balances over
every replica, including ones that appear after the worker started.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

log = logging.getLogger("splitdnn.peers")
DNS_SCHEME = "dns+tcp://"
REFRESH_S = 5.0

Resolver = Callable[[str, int], list[str]]


def resolve_all(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6), sorted; empty when it does not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return sorted({str(info[4][0]) for info in infos})


def parse_dns_endpoint(endpoint: str) -> tuple[str, int]:
    """``dns+tcp://NAME:PORT`` -> (NAME, PORT); ValueError naming what is wrong."""
    rest = endpoint.removeprefix(DNS_SCHEME)
    host, _, port = rest.rpartition(":")
    if not endpoint.startswith(DNS_SCHEME) or not host or not port.isdigit():
        raise ValueError(f"expected dns+tcp://NAME:PORT, got {endpoint!r}")
    return host, int(port)


def tcp_endpoint(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


class PeerSet:
    """Keeps ``socket`` connected to every endpoint the specs stand for."""

    def __init__(self, socket_: zmq.Socket[Any], specs: list[str],
                 resolver: Resolver = resolve_all, refresh_s: float = REFRESH_S) -> None:
        # Only finished connections take messages: without this, PUSH queues messages for a
        # replica that is not (or no longer) there instead of sending them to a live one.
        socket_.setsockopt(zmq.IMMEDIATE, 1)
        self.socket = socket_
        self.static = [spec for spec in specs if not spec.startswith(DNS_SCHEME)]
        self.named = [parse_dns_endpoint(spec) for spec in specs if spec.startswith(DNS_SCHEME)]
        self.resolver = resolver
        self.refresh_s = refresh_s
        self.connected: set[str] = set()
        self.next_refresh = 0.0
        for endpoint in self.static:
            socket_.connect(endpoint)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> None:
        """Re-resolve named endpoints (at most every ``refresh_s``) and fix the connections."""
        now = time.monotonic()
        if not self.named or (not force and now < self.next_refresh):
            return
        self.next_refresh = now + self.refresh_s
        self.apply(self.resolve())

    def resolve(self) -> set[str]:
        """The endpoints the named specs stand for now (blocking DNS; safe in any thread)."""
        return {tcp_endpoint(address, port) for host, port in self.named
                for address in self.resolver(host, port)}

    def apply(self, wanted: set[str]) -> None:
        """Connect to new endpoints and disconnect gone ones (in the socket's thread)."""
        for endpoint in sorted(wanted - self.connected):
            self.socket.connect(endpoint)
            log.info("connected to %s", endpoint)
        for endpoint in sorted(self.connected - wanted):
            self.socket.disconnect(endpoint)
            log.info("disconnected from %s (no longer resolved)", endpoint)
        self.connected = wanted

    @property
    def endpoints(self) -> list[str]:
        return [*self.static, *sorted(self.connected)]
