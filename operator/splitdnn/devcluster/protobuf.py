"""Kubernetes protobuf request bodies, decoded to JSON for the few kinds clients send so.

client-go's typed clients in kubectl (``create configmap|secret|namespace``, ``delete``)
and Helm (its release Secrets) send ``application/vnd.kubernetes.protobuf``: the magic
``k8s\\0`` and a ``runtime.Unknown`` wrapping the object's own protobuf encoding. This
module reads that for ConfigMap, Secret, Namespace, ServiceAccount and DeleteOptions
(field numbers from Kubernetes' ``generated.proto``); anything else is a ``ProtobufError``
(the server answers 415). Responses are always JSON, which those clients also accept.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"

# message -> field number -> (json name, kind); kinds: str, bytes, int, bool, time,
# "msg:NAME", "map:str", "map:bytes", "list:str", "list:msg:NAME"
SCHEMAS: dict[str, dict[int, tuple[str, str]]] = {
    "Unknown": {1: ("typeMeta", "msg:TypeMeta"), 2: ("raw", "bytes"),
                3: ("contentEncoding", "str"), 4: ("contentType", "str")},
    "TypeMeta": {1: ("apiVersion", "str"), 2: ("kind", "str")},
    "ObjectMeta": {1: ("name", "str"), 2: ("generateName", "str"), 3: ("namespace", "str"),
                   5: ("uid", "str"), 6: ("resourceVersion", "str"), 7: ("generation", "int"),
                   8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"),
                   10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map:str"),
                   12: ("annotations", "map:str"),
                   13: ("ownerReferences", "list:msg:OwnerReference"),
                   14: ("finalizers", "list:str")},
    "OwnerReference": {1: ("kind", "str"), 3: ("name", "str"), 4: ("uid", "str"),
                       5: ("apiVersion", "str"), 6: ("controller", "bool"),
                       7: ("blockOwnerDeletion", "bool")},
    "Time": {1: ("seconds", "int"), 2: ("nanos", "int")},
    "ConfigMap": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "map:str"),
                  3: ("binaryData", "map:bytes"), 4: ("immutable", "bool")},
    "Secret": {1: ("metadata", "msg:ObjectMeta"), 2: ("data", "map:bytes"), 3: ("type", "str"),
               4: ("stringData", "map:str"), 5: ("immutable", "bool")},
    "Namespace": {1: ("metadata", "msg:ObjectMeta"), 2: ("spec", "msg:NamespaceSpec")},
    "NamespaceSpec": {1: ("finalizers", "list:str")},
    "ServiceAccount": {1: ("metadata", "msg:ObjectMeta"),
                       4: ("automountServiceAccountToken", "bool")},
    "DeleteOptions": {1: ("gracePeriodSeconds", "int"), 2: ("preconditions", "msg:Preconditions"),
                      3: ("orphanDependents", "bool"), 4: ("propagationPolicy", "str"),
                      5: ("dryRun", "list:str")},
    "Preconditions": {1: ("uid", "str"), 2: ("resourceVersion", "str")},
}
TOP_LEVEL = {"ConfigMap", "Secret", "Namespace", "ServiceAccount", "DeleteOptions"}


class ProtobufError(ValueError):
    """A body this emulator cannot read."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, Any]]:
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos: pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos: pos + size], pos + size
        else:
            raise ProtobufError(f"unsupported wire type {wire}")
        yield number, wire, value


def _scalar(kind: str, value: Any) -> Any:
    if kind == "str":
        return bytes(value).decode()
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    raise ProtobufError(f"bad scalar kind {kind}")


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """One message as the JSON the API would take (unknown fields are skipped)."""
    schema = SCHEMAS[name]
    result: dict[str, Any] = {}
    for number, _, value in _fields(data):
        if number not in schema:
            continue
        key, kind = schema[number]
        if kind.startswith("map:"):
            entry = {n: v for n, _, v in _fields(value)}
            item_kind = kind.split(":", 1)[1]
            result.setdefault(key, {})[_scalar("str", entry.get(1, b""))] = _scalar(
                item_kind, entry.get(2, b""))
        elif kind.startswith("list:"):
            item = kind.split(":", 1)[1]
            decoded = decode_message(item[4:], value) if item.startswith("msg:") else \
                _scalar(item, value)
            result.setdefault(key, []).append(decoded)
        elif kind == "time":
            stamp = decode_message("Time", value)
            result[key] = datetime.datetime.fromtimestamp(
                stamp.get("seconds", 0), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        elif kind.startswith("msg:"):
            result[key] = decode_message(kind[4:], value)
        elif (scalar := _scalar(kind, value)) not in ("", 0, False):  # JSON's omitempty
            result[key] = scalar
    return result


def decode(body: bytes) -> dict[str, Any]:
    """A ``k8s\\0`` protobuf body as a JSON object with apiVersion and kind."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf body (no k8s magic)")
    unknown = decode_message("Unknown", body[len(MAGIC):])
    type_meta = unknown.get("typeMeta") or {}
    kind = type_meta.get("kind", "")
    if kind not in TOP_LEVEL:
        raise ProtobufError(f"protobuf bodies are understood for {sorted(TOP_LEVEL)}, "
                            f"not {kind or 'this kind'}; send JSON")
    raw = base64.b64decode(unknown.get("raw", ""))
    obj = decode_message(kind, raw)
    obj["apiVersion"], obj["kind"] = type_meta.get("apiVersion", "v1"), kind
    return obj
