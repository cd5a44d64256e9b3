"""Cluster DNS for the emulated cluster: A records for Services and pods, over UDP.

Pods (in their own network namespaces) get ``nameserver 10.X.0.1`` with the Kubernetes
search path, so ``SVC``, ``SVC.NS`` and ``SVC.NS.svc.cluster.local`` resolve to the ready
addresses of the Service's endpoints (for every Service: there is no kube-proxy, so a
ClusterIP would not be routable), ``HOSTNAME.SUBDOMAIN.NS.svc.cluster.local`` to a pod with
``hostname`` and ``subdomain``, and ``a-b-c-d.NS.pod.cluster.local`` to ``a.b.c.d``. Other
names get NXDOMAIN at once (there is no upstream), AAAA queries an empty answer.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

from splitdnn.devcluster.store import Store

DOMAIN = "cluster.local"
TTL = 5
A, AAAA = 1, 28
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3


def parse_query(packet: bytes) -> tuple[int, int, str, int, bytes] | None:
    """(id, flags, name, qtype, question bytes) of a one-question query, or None."""
    if len(packet) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if qdcount != 1:
        return None
    labels, offset = [], 12
    while offset < len(packet) and packet[offset]:
        length = packet[offset]
        if length & 0xC0:
            return None
        labels.append(packet[offset + 1: offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    offset += 1
    if offset + 4 > len(packet):
        return None
    qtype = struct.unpack("!H", packet[offset: offset + 2])[0]
    return ident, flags, ".".join(labels).lower(), qtype, packet[12: offset + 4]


def build_response(ident: int, flags: int, question: bytes, rcode: int,
                   addresses: list[str]) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x8080 | (flags & 0x0100) | rcode, 1,
                         len(addresses), 0, 0)
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, A, 1, TTL, 4) +
                       bytes(int(part) for part in ip.split(".")) for ip in addresses)
    return header + question + answers


class ClusterDns(asyncio.DatagramProtocol):
    """Answers from the store's Services, Endpoints and Pods."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        query = parse_query(data)
        if query is None or self.transport is None:
            return
        ident, flags, name, qtype, question = query
        addresses = self.resolve(name)
        if addresses is None:
            response = build_response(ident, flags, question, NXDOMAIN, [])
        else:
            response = build_response(ident, flags, question, NOERROR,
                                      addresses if qtype == A else [])
        self.transport.sendto(response, addr)

    def resolve(self, name: str) -> list[str] | None:
        """The A records of a fully qualified name, or None for NXDOMAIN."""
        if not name.endswith(f".{DOMAIN}"):
            return None
        parts = name[: -len(DOMAIN) - 1].split(".")
        if len(parts) == 3 and parts[2] == "svc":
            return self._service(parts[1], parts[0])
        if len(parts) == 4 and parts[3] == "svc":
            return self._pod_by_hostname(parts[2], parts[1], parts[0])
        if len(parts) == 3 and parts[2] == "pod":
            ip = parts[0].replace("-", ".")
            return [ip] if ip.count(".") == 3 and ip.replace(".", "").isdigit() else None
        return None

    def _service(self, namespace: str, name: str) -> list[str] | None:
        services = self.store.type_for("", "v1", "services")
        if self.store.find(services, namespace, name) is None:
            return None
        endpoints = self.store.find(self.store.type_for("", "v1", "endpoints"), namespace, name)
        return sorted(address["ip"] for subset in (endpoints or {}).get("subsets") or []
                      for address in subset.get("addresses") or [])

    def _pod_by_hostname(self, namespace: str, subdomain: str, hostname: str
                         ) -> list[str] | None:
        pods = self.store.list_objects(self.store.type_for("", "v1", "pods"), namespace)
        ips = [p["status"]["podIP"] for p in pods
               if p["spec"].get("hostname") == hostname and p["spec"].get("subdomain") ==
               subdomain and (p.get("status") or {}).get("podIP")]
        return ips or None


async def serve(store: Store, host: str) -> asyncio.DatagramTransport:
    """Listen on ``host``:53/udp."""
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: ClusterDns(store), local_addr=(host, 53))
    return transport
