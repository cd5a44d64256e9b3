"""A block worker on tiny hand-built ONNX blocks: forwarding, batching, early exits, error
replies, expired requests, malformed frames and backpressure."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import onnx
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from splitdnn.runtime.serve import free_tcp_port as free_port
from splitdnn.runtime.wire import Message, decode, encode
from splitdnn.runtime.worker import Worker, WorkerConfig
from tests.unit.test_runtime_peers import drain

WEIGHTS = np.arange(16, dtype=np.float32).reshape(4, 4) / 10


def matmul_model(path: Path, weights: np.ndarray, relu: bool = True,
                 batch: str | int = "N") -> Path:
    """``Relu(X @ W)`` (or just ``X @ W``) with a symbolic or fixed batch dimension."""
    rows, cols = weights.shape
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y" if not relu else "z"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["z"], ["y"]))
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, cols])],
        [numpy_helper.from_array(weights.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ WEIGHTS, 0)


@dataclass
class Harness:
    worker: Worker
    context: zmq.Context[Any]
    sender: zmq.Socket[Any]
    replies: zmq.Socket[Any]
    reply_address: str

    def send(self, tensor: np.ndarray, request_id: str = "r", deadline_s: float = 30.0) -> None:
        message = Message(request_id, self.reply_address, time.time() + deadline_s, [tensor])
        self.sender.send_multipart(encode(message), copy=False)

    def receive(self, timeout_ms: int = 5000) -> Message:
        assert self.replies.poll(timeout_ms), "no reply"
        return decode(self.replies.recv_multipart(), now=float("-inf"))

    def nothing_arrives(self, timeout_ms: int = 300) -> bool:
        return not self.replies.poll(timeout_ms)

    def metric(self, name: str, **labels: str) -> float:
        """A metric's value, waiting briefly for the worker thread to count what it sent."""
        deadline = time.monotonic() + 2
        while True:
            value = self.worker.metrics.registry.get_sample_value(name, labels) or 0.0
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.01)


def start_worker(tmp_path: Path, **options: Any) -> Iterator[Harness]:
    config = WorkerConfig(block=options.pop("block", matmul_model(tmp_path / "b.onnx", WEIGHTS)),
                          listen=f"ipc://{tmp_path}/in", stage="1", threads=1, **options)
    worker = Worker(config)
    worker.warm_up()
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    context: zmq.Context[Any] = zmq.Context()
    sender = context.socket(zmq.PUSH)
    sender.connect(config.listen)
    replies = context.socket(zmq.PULL)
    reply_address = f"ipc://{tmp_path}/replies"
    replies.bind(reply_address)
    try:
        yield Harness(worker, context, sender, replies, reply_address)
    finally:
        worker.stop()
        thread.join(10)
        context.destroy(linger=0)
    assert not thread.is_alive(), "worker did not stop"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from start_worker(tmp_path)


def test_last_stage_answers_to_the_reply_address(harness: Harness) -> None:
    x = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    harness.send(x, "a")
    reply = harness.receive()
    assert reply.id == "a" and reply.error is None and reply.exit is None
    np.testing.assert_allclose(reply.tensors[0], reference(x), rtol=1e-6)
    assert [hop["stage"] for hop in reply.trace] == ["1"]
    assert reply.trace[0]["t_in"] <= reply.trace[0]["t_out"]
    assert harness.metric("splitdnn_requests_total", stage="1", outcome="done") == 1


def test_middle_stage_forwards_to_next(tmp_path: Path) -> None:
    context: zmq.Context[Any] = zmq.Context()
    downstream = context.socket(zmq.PULL)
    downstream.bind(f"ipc://{tmp_path}/next")
    try:
        for h in start_worker(tmp_path, next=[f"ipc://{tmp_path}/next"]):
            x = np.ones((2, 4), np.float32)
            h.send(x, "fwd")
            assert downstream.poll(5000)
            forwarded = decode(downstream.recv_multipart())
            assert forwarded.id == "fwd" and forwarded.reply_to == h.reply_address
            np.testing.assert_allclose(forwarded.tensors[0], reference(x), rtol=1e-6)
            assert h.nothing_arrives()
    finally:
        context.destroy(linger=0)


def test_next_stage_replicas_share_the_load(tmp_path: Path) -> None:
    context: zmq.Context[Any] = zmq.Context()
    replicas = [context.socket(zmq.PULL) for _ in range(2)]
    endpoints = [f"ipc://{tmp_path}/replica{index}" for index in range(2)]
    for replica, endpoint in zip(replicas, endpoints, strict=True):
        replica.bind(endpoint)
    try:
        for h in start_worker(tmp_path, next=endpoints):
            time.sleep(0.2)  # both connections up, so round-robin sees both replicas
            for index in range(10):
                h.send(np.ones((1, 4), np.float32), f"lb{index}")
            assert drain(replicas, quiet_ms=500) == [5, 5]
    finally:
        context.destroy(linger=0)


def test_requests_in_flight_are_micro_batched(tmp_path: Path) -> None:
    for h in start_worker(tmp_path, max_batch=8, max_delay_ms=200):
        rng = np.random.default_rng(1)
        inputs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(6)]
        for index, x in enumerate(inputs):
            h.send(x, f"b{index}")
        replies = {reply.id: reply for reply in (h.receive() for _ in inputs)}
        for index, x in enumerate(inputs):
            np.testing.assert_allclose(replies[f"b{index}"].tensors[0], reference(x), rtol=1e-6)
        runs = h.metric("splitdnn_batch_size_count", stage="1")
        assert runs < len(inputs), "requests sent together were not batched"
        assert h.metric("splitdnn_batch_size_sum", stage="1") == len(inputs)


def test_requests_with_different_sample_shapes_are_not_stacked(tmp_path: Path) -> None:
    """A block with a second symbolic dimension (a sequence length): what cannot be stacked
    runs request by request, and every request still gets its own result."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "sequence",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "L", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "L", 4])],
        [numpy_helper.from_array(WEIGHTS, "w")],
    )
    block = tmp_path / "sequence.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                ir_version=8), str(block))
    for h in start_worker(tmp_path, block=block, max_batch=8, max_delay_ms=200):
        inputs = {f"len{length}": np.ones((1, length, 4), np.float32) for length in (2, 3, 5)}
        for request_id, x in inputs.items():
            h.send(x, request_id)
        for _ in inputs:
            reply = h.receive()
            assert reply.error is None
            np.testing.assert_allclose(reply.tensors[0], inputs[reply.id] @ WEIGHTS, rtol=1e-6)


def test_fixed_batch_block_is_not_batched(tmp_path: Path) -> None:
    block = matmul_model(tmp_path / "fixed.onnx", WEIGHTS, batch=1)
    for h in start_worker(tmp_path, block=block, max_batch=8, max_delay_ms=100):
        assert not h.worker.batching
        for index in range(3):
            h.send(np.full((1, 4), index, np.float32), f"f{index}")
        assert sorted(h.receive().id for _ in range(3)) == ["f0", "f1", "f2"]
        assert h.metric("splitdnn_batch_size_count", stage="1") == 3


def exit_head(path: Path, scale: float) -> Path:
    """Logits over 3 classes; a large scale makes them peaked, zero makes them uniform."""
    weights = np.zeros((4, 3), np.float32)
    weights[:, 0] = scale
    return matmul_model(path, weights, relu=False)


@pytest.mark.parametrize(("scale", "taken"), [(100.0, True), (0.0, False)])
def test_early_exit_taken_or_not(tmp_path: Path, scale: float, taken: bool) -> None:
    context: zmq.Context[Any] = zmq.Context()
    downstream = context.socket(zmq.PULL)
    downstream.bind(f"ipc://{tmp_path}/next")
    head = exit_head(tmp_path / "head.onnx", scale)
    try:
        for h in start_worker(tmp_path, next=[f"ipc://{tmp_path}/next"], exit_head=head,
                              exit_threshold=0.9, exit_index=3):
            h.send(np.ones((1, 4), np.float32), "e")
            if taken:
                reply = h.receive()
                assert reply.exit == 3 and reply.tensors[0].shape == (1, 3)
                assert not downstream.poll(200)
                assert h.metric("splitdnn_exits_total", stage="1", exit="3") == 1
            else:
                assert downstream.poll(5000)
                forwarded = decode(downstream.recv_multipart())
                assert forwarded.exit is None and forwarded.tensors[0].shape == (1, 4)
                assert h.nothing_arrives()
    finally:
        context.destroy(linger=0)


def test_last_stage_with_an_exit_head_always_answers_from_the_head(tmp_path: Path) -> None:
    """A plan that ends at an exit: an unconfident result is still the head's, not the
    block's features."""
    head = exit_head(tmp_path / "head.onnx", 0.0)  # uniform logits: below any threshold
    for h in start_worker(tmp_path, exit_head=head, exit_threshold=0.9, exit_index=1):
        h.send(np.ones((1, 4), np.float32), "last")
        reply = h.receive()
        assert reply.exit == 1 and reply.tensors[0].shape == (1, 3)


def test_wrong_shape_gets_an_error_reply_and_worker_keeps_serving(harness: Harness) -> None:
    harness.send(np.ones((1, 5), np.float32), "bad")
    reply = harness.receive()
    assert reply.id == "bad" and reply.error is not None
    assert reply.error["code"] == "bad_input" and "[1, 5]" in reply.error["message"]
    harness.send(np.ones((1, 4), np.float32), "good")
    assert harness.receive().error is None


def test_wrong_dtype_gets_an_error_reply(harness: Harness) -> None:
    harness.send(np.ones((1, 4), np.float64), "f64")
    reply = harness.receive()
    assert reply.error is not None and "float64" in reply.error["message"]


def test_expired_request_is_dropped_and_counted(harness: Harness) -> None:
    harness.send(np.ones((1, 4), np.float32), "late", deadline_s=-1)
    assert harness.nothing_arrives()
    assert harness.metric("splitdnn_dropped_messages_total", stage="1", reason="expired") == 1


def test_unreachable_reply_address_is_dropped_not_fatal(harness: Harness) -> None:
    message = Message("x", "tcp://no-such-host.invalid:1", time.time() + 30,
                      [np.ones((1, 4), np.float32)])
    harness.sender.send_multipart(encode(message))
    harness.send(np.ones((1, 4), np.float32), "after")
    assert harness.receive().id == "after"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.binary(max_size=40), min_size=1, max_size=3),
       header=st.fixed_dictionaries({}, optional={
           "v": st.sampled_from([1, 2, "1"]),
           "id": st.sampled_from(["fz", "", 7]),
           "reply_to": st.sampled_from(["ipc:///nowhere", "bogus"]),
           "deadline": st.sampled_from([time.time() + 60, -1.0, "x"]),
           "tensors": st.lists(st.fixed_dictionaries({
               "dtype": st.sampled_from(["float32", "object", "int64", 3]),
               "shape": st.lists(st.integers(-2, 2**33), max_size=10)}), max_size=2),
       }),
       use_header=st.booleans())
def test_malformed_frames_never_crash_the_worker(harness: Harness, frames: list[bytes],
                                                 header: dict[str, Any],
                                                 use_header: bool) -> None:
    if use_header:
        frames = [msgpack.packb(header), *frames[1:]]
    harness.sender.send_multipart(frames)
    harness.send(np.ones((1, 4), np.float32), "alive")
    while (reply := harness.receive()).id != "alive":
        assert reply.error is not None
    assert reply.error is None


def test_stalled_consumer_bounds_what_is_buffered(tmp_path: Path) -> None:
    """The next stage never reads: the worker blocks, its inbox fills, and the sender hits
    its high-water mark instead of queueing without bound."""
    context: zmq.Context[Any] = zmq.Context()
    stalled = context.socket(zmq.PULL)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.bind(f"ipc://{tmp_path}/next")
    try:
        for h in start_worker(tmp_path, next=[f"ipc://{tmp_path}/next"], hwm=4, drain_s=0.5):
            h.sender.setsockopt(zmq.SNDHWM, 4)
            accepted = 0
            x = np.ones((4096, 4), np.float32)  # 64 KiB: kernel socket buffers hold few
            for index in range(300):
                message = Message(f"s{index}", h.reply_address, time.time() + 60, [x])
                try:
                    h.sender.send_multipart(encode(message), flags=zmq.NOBLOCK)
                except zmq.Again:
                    time.sleep(0.2)  # give the pipeline a chance to drain, if it could
                    try:
                        h.sender.send_multipart(encode(message), flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                accepted += 1
            # HWMs of 4 messages per socket and side, plus what the kernel buffers hold
            assert accepted < 100, f"{accepted} messages accepted with a stalled consumer"
    finally:
        context.destroy(linger=0)


def http_get(url: str) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError:
        return 0, ""


def test_worker_command_serves_probes_metrics_and_requests(tmp_path: Path) -> None:
    import subprocess
    import sys

    block = matmul_model(tmp_path / "b.onnx", WEIGHTS)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "splitdnn", "worker", "--block", str(block), "--listen",
         f"ipc://{tmp_path}/in", "--stage", "7", "--metrics-port", str(port), "--threads", "1"],
        stderr=subprocess.PIPE, text=True,
    )
    context: zmq.Context[Any] = zmq.Context()
    try:
        deadline = time.monotonic() + 60
        while http_get(f"http://127.0.0.1:{port}/readyz")[0] != 200:
            assert process.poll() is None and time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        sender, replies = context.socket(zmq.PUSH), context.socket(zmq.PULL)
        replies.bind(f"ipc://{tmp_path}/replies")
        sender.connect(f"ipc://{tmp_path}/in")
        x = np.ones((3, 4), np.float32)
        sender.send_multipart(encode(Message("cli", f"ipc://{tmp_path}/replies",
                                             time.time() + 30, [x])))
        assert replies.poll(10_000)
        reply = decode(replies.recv_multipart())
        np.testing.assert_allclose(reply.tensors[0], reference(x), rtol=1e-6)
        status, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert 'splitdnn_requests_total{outcome="done",stage="7"} 1.0' in metrics
    finally:
        process.terminate()
        process.wait(30)
        context.destroy(linger=0)
    assert process.returncode == 0


def test_worker_command_names_a_block_it_cannot_load(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "broken.onnx").write_bytes(b"not onnx")
    result = subprocess.run(
        [sys.executable, "-m", "splitdnn", "worker", "--block", str(tmp_path / "broken.onnx"),
         "--listen", f"ipc://{tmp_path}/in"], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2 and "worker 0:" in result.stderr


def test_gateway_command_in_front_of_a_worker_command(tmp_path: Path) -> None:
    """The two commands as the operator runs them in pods: worker and gateway processes."""
    import json
    import subprocess
    import sys

    from splitdnn.runtime.client import Client

    block = matmul_model(tmp_path / "block_0.onnx", WEIGHTS)
    spec = {"name": "x", "shape": [1, 4], "dtype": "float32"}
    (tmp_path / "manifest.json").write_text(json.dumps({
        "model": "torchvision:toy", "input": spec, "output": {**spec, "name": "y"},
        "blocks": [{"index": 0, "file": block.name, "batch_free": True}]}))
    port = free_port()
    commands = [
        ["worker", "--block", str(block), "--listen", f"ipc://{tmp_path}/stage0"],
        ["gateway", "--manifest", str(tmp_path), "--first", f"ipc://{tmp_path}/stage0",
         "--results", f"ipc://{tmp_path}/results", "--zmq", f"ipc://{tmp_path}/native",
         "--http", f"127.0.0.1:{port}"],
    ]
    processes = [subprocess.Popen([sys.executable, "-m", "splitdnn", *command],
                                  stderr=subprocess.DEVNULL) for command in commands]
    try:
        deadline = time.monotonic() + 60
        while http_get(f"http://127.0.0.1:{port}/v2/health/ready")[0] != 200:
            assert time.monotonic() < deadline, "gateway never ready"
            time.sleep(0.1)
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        for url in (f"http://127.0.0.1:{port}", f"ipc://{tmp_path}/native"):
            with Client(url) as client:
                np.testing.assert_allclose(client.infer(x), reference(x), rtol=1e-6)
        assert json.loads(http_get(f"http://127.0.0.1:{port}/v2/models/toy")[1])["name"] == "toy"
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)
    assert [process.returncode for process in processes] == [0, 0]


def test_next_stage_by_dns_name(tmp_path: Path) -> None:
    """``dns+tcp://localhost:PORT``: the worker connects to what the name resolves to."""
    port = free_port()
    context: zmq.Context[Any] = zmq.Context()
    downstream = context.socket(zmq.PULL)
    downstream.bind(f"tcp://127.0.0.1:{port}")
    try:
        for h in start_worker(tmp_path, next=[f"dns+tcp://localhost:{port}"]):
            assert f"tcp://127.0.0.1:{port}" in h.worker.peers.endpoints
            h.send(np.ones((1, 4), np.float32), "dns")
            assert downstream.poll(5000)
            assert decode(downstream.recv_multipart()).id == "dns"
    finally:
        context.destroy(linger=0)


def test_cuda_runs_in_full_fp32_unless_tf32_is_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    from splitdnn.graph.onnx_runtime import TF32_VARIABLE, with_provider_options

    wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.delenv(TF32_VARIABLE, raising=False)
    assert with_provider_options(wanted) == [
        ("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    monkeypatch.setenv(TF32_VARIABLE, "1")
    assert with_provider_options(wanted)[0] == ("CUDAExecutionProvider", {"use_tf32": "1"})
    assert with_provider_options(["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
