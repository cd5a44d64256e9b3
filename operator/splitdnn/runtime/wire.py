"""The wire format between gateway and block workers: one ZeroMQ multipart message per request.

Frame 0 is a msgpack header ``{v: 1, id, reply_to, deadline, tensors: [{dtype, shape}],
trace: [{stage, t_in, t_out}], exit}`` (plus ``error: {code, message}`` on error replies);
frames 1..n are the raw C-contiguous little-endian tensor buffers, sent without copying.
Everything received is validated before use (:func:`decode`); nothing here ever unpickles.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import zmq

WIRE_VERSION = 1
MAX_RANK = 8
DEFAULT_MAX_BYTES = 64 * 2**20
MAX_HEADER_BYTES = 64 * 2**10
MAX_TENSORS = 16
MAX_TRACE = 64
MAX_ID_LENGTH = 128
MAX_ADDRESS_LENGTH = 256
REPLY_SCHEMES = ("tcp://", "ipc://", "inproc://")
# Socket high-water marks, in messages: a slow consumer makes senders block (backpressure)
# instead of queueing without bound.
DEFAULT_HWM = 64

ALLOWED_DTYPES: frozenset[str] = frozenset(
    {"bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
     "float16", "float32", "float64"}
)


class WireError(ValueError):
    """A message that breaks the wire format; ``reason`` is the metrics label."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DeadlineExpired(WireError):
    """A valid message whose deadline has passed: dropped and counted, never answered."""

    def __init__(self, message: str) -> None:
        super().__init__("expired", message)


@dataclass
class Message:
    """A decoded request or reply: header fields plus tensors (views on the received frames)."""

    id: str
    reply_to: str
    deadline: float
    tensors: list[np.ndarray]
    trace: list[dict[str, Any]] = field(default_factory=list)
    exit: int | None = None
    error: dict[str, str] | None = None

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {
            "v": WIRE_VERSION,
            "id": self.id,
            "reply_to": self.reply_to,
            "deadline": self.deadline,
            "tensors": [{"dtype": t.dtype.name, "shape": list(t.shape)} for t in self.tensors],
            "trace": self.trace,
            "exit": self.exit,
        }
        if self.error is not None:
            header["error"] = self.error
        return header


def as_wire_array(array: np.ndarray) -> np.ndarray:
    """The array as C-contiguous little-endian data (a copy only when it is not already)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.ascontiguousarray(array, dtype=dtype)


def encode(message: Message) -> list[Any]:
    """Frames for ``socket.send_multipart(frames, copy=False)``."""
    arrays = [as_wire_array(tensor) for tensor in message.tensors]
    message.tensors = arrays
    frames: list[Any] = [msgpack.packb(message.header(), use_bin_type=True)]
    frames.extend(array.data.cast("B") if array.size else b"" for array in arrays)
    return frames


def error_reply(request_id: str, reply_to: str, code: str, text: str) -> Message:
    """An error reply: no tensors, ``error`` names what went wrong."""
    return Message(request_id, reply_to, time.time() + 60.0, [],
                   error={"code": code, "message": text[:1000]})


def decode(frames: list[Any], max_bytes: int = DEFAULT_MAX_BYTES,
           now: float | None = None) -> Message:
    """Validate and decode a multipart message; raise :class:`WireError` on any violation."""
    if not frames:
        raise WireError("empty", "message has no frames")
    header = _unpack_header(_frame_bytes(frames[0]))
    specs = _tensor_specs(header.get("tensors"))
    payload = frames[1:]
    if len(payload) != len(specs):
        raise WireError("frames", f"header describes {len(specs)} tensors, "
                                  f"message carries {len(payload)} data frames")
    tensors = _tensors(specs, payload, max_bytes)
    message = Message(
        id=_request_id(header.get("id")),
        reply_to=_reply_address(header.get("reply_to")),
        deadline=_deadline(header.get("deadline")),
        tensors=tensors,
        trace=_trace(header.get("trace")),
        exit=_exit_index(header.get("exit")),
        error=_error(header.get("error")),
    )
    if message.deadline < (time.time() if now is None else now):
        raise DeadlineExpired(f"request {message.id} expired before it was processed")
    return message


def salvage_reply_address(frames: list[Any]) -> tuple[str, str] | None:
    """``(id, reply_to)`` of a message that failed validation, when its header still has
    usable ones, so that the sender can get an error reply instead of a silent drop."""
    try:
        header = _unpack_header(_frame_bytes(frames[0]))
        return _request_id(header.get("id")), _reply_address(header.get("reply_to"))
    except (WireError, IndexError, TypeError):
        return None


def _frame_bytes(frame: Any) -> memoryview:
    buffer = frame.buffer if isinstance(frame, zmq.Frame) else frame
    return memoryview(buffer).cast("B")


def _unpack_header(raw: memoryview) -> dict[str, Any]:
    if len(raw) > MAX_HEADER_BYTES:
        raise WireError("header", f"header is {len(raw)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, max_array_len=1024,
                                 max_map_len=64, max_str_len=4096, max_bin_len=0)
    except Exception as error:  # msgpack raises several unrelated types on bad input
        raise WireError("header", f"header is not valid msgpack: {error}") from error
    if not isinstance(header, dict):
        raise WireError("header", "header must be a msgpack map")
    if header.get("v") != WIRE_VERSION:
        raise WireError("version", f"unsupported wire version {header.get('v')!r}, "
                                   f"expected {WIRE_VERSION}")
    return header


def _tensor_specs(value: Any) -> list[tuple[np.dtype[Any], tuple[int, ...]]]:
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        raise WireError("tensors", f"header.tensors must be a list of at most {MAX_TENSORS}")
    specs = []
    for index, spec in enumerate(value):
        if not isinstance(spec, dict):
            raise WireError("tensors", f"header.tensors[{index}] must be a map")
        dtype = spec.get("dtype")
        if dtype not in ALLOWED_DTYPES:
            raise WireError("dtype", f"header.tensors[{index}].dtype {dtype!r} is not one of "
                                     f"{sorted(ALLOWED_DTYPES)}")
        shape = spec.get("shape")
        if (not isinstance(shape, list) or len(shape) > MAX_RANK
                or not all(type(dim) is int and 0 <= dim < 2**40 for dim in shape)):
            raise WireError("shape", f"header.tensors[{index}].shape must be a list of at "
                                     f"most {MAX_RANK} non-negative integers, got {shape!r}")
        specs.append((np.dtype(dtype).newbyteorder("<"), tuple(shape)))
    return specs


def _tensors(specs: list[tuple[np.dtype[Any], tuple[int, ...]]], payload: list[Any],
             max_bytes: int) -> list[np.ndarray]:
    expected = [math.prod(shape) * dtype.itemsize for dtype, shape in specs]
    if sum(expected) > max_bytes:
        raise WireError("too_large", f"tensors total {sum(expected)} bytes, "
                                     f"limit {max_bytes}")
    tensors = []
    for index, ((dtype, shape), size, frame) in enumerate(zip(specs, expected, payload,
                                                              strict=True)):
        data = _frame_bytes(frame)
        if len(data) != size:
            raise WireError("size", f"tensor {index}: shape {list(shape)} of {dtype.name} "
                                    f"needs {size} bytes, frame has {len(data)}")
        tensors.append(np.frombuffer(data, dtype=dtype).reshape(shape))
    return tensors


def _request_id(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        raise WireError("id", f"header.id must be a string of 1..{MAX_ID_LENGTH} characters")
    return value


def _reply_address(value: Any) -> str:
    if (not isinstance(value, str) or len(value) > MAX_ADDRESS_LENGTH
            or not value.startswith(REPLY_SCHEMES)):
        raise WireError("reply_to", f"header.reply_to must be a ZeroMQ endpoint starting with "
                                    f"one of {REPLY_SCHEMES}, got {str(value)[:80]!r}")
    return value


def _deadline(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WireError("deadline", "header.deadline must be a finite number (unix seconds)")
    return float(value)


def _trace(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_TRACE or not all(
        isinstance(hop, dict) for hop in value
    ):
        raise WireError("trace", f"header.trace must be a list of at most {MAX_TRACE} maps")
    return value


def _exit_index(value: Any) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise WireError("exit", "header.exit must be null or a non-negative integer")


def _error(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise WireError("error", "header.error must be a map {code, message}")
    return {"code": str(value.get("code", "error")), "message": str(value.get("message", ""))}


def configure_socket(socket: zmq.Socket[Any], max_bytes: int = DEFAULT_MAX_BYTES,
                     hwm: int = DEFAULT_HWM) -> None:
    """Bound what a socket may buffer or accept: high-water marks, message size, no linger."""
    socket.setsockopt(zmq.SNDHWM, hwm)
    socket.setsockopt(zmq.RCVHWM, hwm)
    # MAXMSGSIZE applies per frame: the largest legal frame is one tensor of max_bytes.
    socket.setsockopt(zmq.MAXMSGSIZE, max(max_bytes, MAX_HEADER_BYTES))
    socket.setsockopt(zmq.LINGER, 0)
