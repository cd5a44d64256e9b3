"""The wire format: round trips, every validation rule, and fuzzed frames never escape as
anything but a WireError."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitdnn.runtime.wire import (
    DeadlineExpired,
    Message,
    WireError,
    decode,
    encode,
    salvage_reply_address,
)


def frames_of(message: Message) -> list[bytes]:
    return [bytes(frame) for frame in encode(message)]


def valid_message(**changes: object) -> Message:
    tensor = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    message = Message("req-1", "ipc:///tmp/reply", time.time() + 60, [tensor],
                      [{"stage": "0", "t_in": 1.0, "t_out": 2.0}], None)
    for key, value in changes.items():
        setattr(message, key, value)
    return message


def with_header(frames: list[bytes], **changes: object) -> list[bytes]:
    header = msgpack.unpackb(frames[0])
    header.update(changes)
    return [msgpack.packb(header), *frames[1:]]


def test_round_trip_keeps_every_field() -> None:
    original = valid_message(exit=2)
    decoded = decode(frames_of(original))
    assert (decoded.id, decoded.reply_to, decoded.deadline, decoded.exit) == (
        "req-1", "ipc:///tmp/reply", original.deadline, 2)
    assert decoded.trace == original.trace
    np.testing.assert_array_equal(decoded.tensors[0], original.tensors[0])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int8", "uint8", "int64",
                                   "bool"])
def test_every_allowed_dtype_round_trips(dtype: str) -> None:
    tensor = (np.arange(6) % 2).astype(dtype).reshape(2, 3)
    decoded = decode(frames_of(valid_message(tensors=[tensor])))
    assert decoded.tensors[0].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded.tensors[0], tensor)


def test_big_endian_and_strided_arrays_go_out_little_endian_contiguous() -> None:
    tensor = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    decoded = decode(frames_of(valid_message(tensors=[tensor])))
    np.testing.assert_array_equal(decoded.tensors[0], tensor)
    assert decoded.tensors[0].dtype.byteorder in ("<", "=")


def test_empty_tensor_round_trips() -> None:
    decoded = decode(frames_of(valid_message(tensors=[np.zeros((0, 3), np.float32)])))
    assert decoded.tensors[0].shape == (0, 3)


@pytest.mark.parametrize(("changes", "reason"), [
    ({"v": 2}, "version"),
    ({"tensors": [{"dtype": "object", "shape": [2, 3, 4]}]}, "dtype"),
    ({"tensors": [{"dtype": "float32", "shape": [1] * 9}]}, "shape"),
    ({"tensors": [{"dtype": "float32", "shape": [2, -3, 4]}]}, "shape"),
    ({"tensors": [{"dtype": "float32", "shape": [2, 3, 5]}]}, "size"),
    ({"tensors": [{"dtype": "float32", "shape": [2**30, 2**10]}]}, "too_large"),
    ({"tensors": []}, "frames"),
    ({"id": ""}, "id"),
    ({"reply_to": "http://evil"}, "reply_to"),
    ({"deadline": "soon"}, "deadline"),
    ({"deadline": float("nan")}, "deadline"),
    ({"exit": -1}, "exit"),
    ({"trace": "nope"}, "trace"),
])
def test_each_rule_is_enforced(changes: dict[str, object], reason: str) -> None:
    frames = with_header(frames_of(valid_message()), **changes)
    with pytest.raises(WireError) as caught:
        decode(frames)
    assert caught.value.reason == reason


def test_total_size_limit_is_configurable() -> None:
    frames = frames_of(valid_message())
    decode(frames, max_bytes=96)
    with pytest.raises(WireError, match="limit 95"):
        decode(frames, max_bytes=95)


def test_expired_deadline_is_its_own_error() -> None:
    frames = frames_of(valid_message(deadline=time.time() - 1))
    with pytest.raises(DeadlineExpired):
        decode(frames)


def test_truncated_header_and_missing_frames() -> None:
    frames = frames_of(valid_message())
    with pytest.raises(WireError, match="msgpack"):
        decode([frames[0][:5], frames[1]])
    with pytest.raises(WireError, match="1 tensors"):
        decode(frames[:1])
    with pytest.raises(WireError, match="no frames"):
        decode([])


def test_pickled_payloads_are_not_headers() -> None:
    import pickle

    with pytest.raises(WireError):
        decode([pickle.dumps({"v": 1}), b""])


def test_reply_address_is_salvaged_from_a_bad_message() -> None:
    frames = with_header(frames_of(valid_message()), tensors=[{"dtype": "object", "shape": []}])
    assert salvage_reply_address(frames) == ("req-1", "ipc:///tmp/reply")
    assert salvage_reply_address([b"\xc1garbage"]) is None


header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(st.binary(max_size=64), max_size=4))
def test_random_frames_raise_only_wire_errors(frames: list[bytes]) -> None:
    with pytest.raises(WireError):
        decode(frames)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(
    st.sampled_from(["v", "id", "reply_to", "deadline", "tensors", "trace", "exit", "error"]),
    header_values, max_size=4),
    cut=st.integers(min_value=0, max_value=200))
def test_mutated_headers_and_truncated_payloads_raise_only_wire_errors(
    changes: dict[str, object], cut: int
) -> None:
    frames = with_header(frames_of(valid_message()), **changes)
    frames[-1] = frames[-1][:cut] if cut < len(frames[-1]) else frames[-1]
    try:
        decoded = decode(frames)
    except WireError:
        return
    assert all(isinstance(t, np.ndarray) for t in decoded.tensors)
