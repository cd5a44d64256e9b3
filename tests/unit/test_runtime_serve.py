"""A split ResNet-18 served locally (one process per block plus the gateway): results equal
the whole model over HTTP and ZeroMQ, the OIP v2 endpoints, deadlines, in-flight limits,
a killed worker, and the `serve`/`infer` commands."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitdnn.graph import analyse_model, resolve_model, split_model
from splitdnn.graph.onnx_runtime import cpu_session
from splitdnn.runtime.client import Client, InferenceError
from splitdnn.runtime.serve import ExitHead, ServeOptions, ServeThread

ATOL = 1e-4


@pytest.fixture(scope="module")
def resnet18_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    resolved = resolve_model("torchvision:resnet18")
    graph = analyse_model(resolved.onnx_path, resolved.input_shape, source="torchvision:resnet18")
    out = tmp_path_factory.mktemp("r18") / "blocks"
    split_model(graph, [17, 33], out)
    return out


@pytest.fixture(scope="module")
def whole_model(resnet18_split: Path) -> Any:
    manifest = json.loads((resnet18_split / "manifest.json").read_text())
    return cpu_session(manifest["source"]["file"], optimization="extended")


def expected(session: Any, x: np.ndarray) -> np.ndarray:
    result: np.ndarray = session.run(None, {session.get_inputs()[0].name: x})[0]
    return result


@pytest.fixture(scope="module")
def served(resnet18_split: Path) -> Iterator[ServeThread]:
    server = ServeThread(resnet18_split, ServeOptions(http_port=0, max_inflight=16))
    yield server
    server.stop()


def sample(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def http_json(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_serve_reports_gateway_and_one_worker_per_block(served: ServeThread) -> None:
    assert served.info["gateway"].startswith("http://127.0.0.1:")
    assert served.info["model"] == "resnet18"
    assert len(served.info["workers"]) == 3


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_results_equal_the_whole_model(served: ServeThread, whole_model: Any,
                                            binary: bool) -> None:
    x = sample(1)
    with Client(served.info["gateway"], binary=binary) as client:
        result = client.infer_result(x)
    assert result.exit is None
    np.testing.assert_allclose(result.output, expected(whole_model, x), atol=ATOL, rtol=1e-5)


def test_zmq_results_equal_the_whole_model_with_a_trace(served: ServeThread,
                                                        whole_model: Any) -> None:
    x = sample(2, batch=2)
    with Client(served.info["zmq"]) as client:
        result = client.infer_result(x)
    np.testing.assert_allclose(result.output, expected(whole_model, x), atol=ATOL, rtol=1e-5)
    assert [hop["stage"] for hop in result.trace] == ["0", "1", "2"]


def test_concurrent_requests_all_answered_correctly(served: ServeThread,
                                                    whole_model: Any) -> None:
    inputs = [sample(10 + i) for i in range(12)]

    def one(x: np.ndarray) -> np.ndarray:
        with Client(served.info["zmq"]) as client:
            return client.infer(x)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        outputs = list(pool.map(one, inputs))
    for x, output in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(output, expected(whole_model, x), atol=ATOL, rtol=1e-5)


def test_oip_health_and_metadata(served: ServeThread) -> None:
    base = served.info["gateway"]
    assert http_json(f"{base}/v2/health/live") == (200, {"live": True})
    assert http_json(f"{base}/v2/health/ready") == (200, {"ready": True})
    assert http_json(f"{base}/v2/models/resnet18/ready")[0] == 200
    status, metadata = http_json(f"{base}/v2/models/resnet18")
    assert status == 200
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32",
                                   "shape": [-1, 3, 224, 224]}]
    assert metadata["outputs"][0]["shape"] == [-1, 1000]
    status, body = http_json(f"{base}/v2/models/vgg16")
    assert status == 404 and "resnet18" in body["error"]


@pytest.mark.parametrize(("inputs", "message"), [
    ([{"name": "wrong", "datatype": "FP32", "shape": [1], "data": [0.0]}], "inputs[0].name"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}],
     "expected [N, 3, 224, 224]"),
    ([{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [0.0]}],
     "inputs[0].data has 1 values"),
    ([{"name": "input", "datatype": "STRING", "shape": [1], "data": ["x"]}],
     "inputs[0].datatype"),
])
def test_bad_infer_requests_get_400_naming_the_field(served: ServeThread,
                                                     inputs: list[dict[str, Any]],
                                                     message: str) -> None:
    status, body = http_json(f"{served.info['gateway']}/v2/models/resnet18/infer",
                             {"inputs": inputs})
    assert status == 400
    assert message in body["error"]


def test_deadline_exceeded_is_504(served: ServeThread) -> None:
    x = sample(3)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}], "parameters": {"timeout": 0.0005}}
    status, reply = http_json(f"{served.info['gateway']}/v2/models/resnet18/infer", body)
    assert status == 504 and "deadline" in reply["error"]


def test_metrics_count_requests(served: ServeThread) -> None:
    with Client(served.info["gateway"]) as client:
        client.infer(sample(4))
    with urllib.request.urlopen(f"{served.info['gateway']}/metrics", timeout=30) as response:
        text = response.read().decode()
    assert 'splitdnn_requests_total{outcome="ok",stage="gateway"}' in text
    assert "splitdnn_stage_latency_seconds_bucket" in text


def test_in_flight_limit_answers_503(resnet18_split: Path) -> None:
    server = ServeThread(resnet18_split, ServeOptions(http_port=0, max_inflight=1,
                                                         max_batch=1))
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            def one(seed: int) -> int | str:
                try:
                    with Client(server.info["gateway"]) as client:
                        client.infer(sample(seed))
                    return 200
                except InferenceError as error:
                    assert "in flight" in str(error)
                    return error.status

            statuses = list(pool.map(one, range(8)))
        assert 200 in statuses and 503 in statuses
    finally:
        server.stop()


def test_killed_worker_gives_errors_not_hangs(resnet18_split: Path) -> None:
    before = set(_worker_pids())
    server = ServeThread(resnet18_split, ServeOptions(http_port=0))
    try:
        victim = max(set(_worker_pids()) - before)  # the last stage started last
        os.kill(victim, signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(InferenceError) as caught, Client(server.info["gateway"],
                                                             timeout_s=20) as client:
            for seed in range(50):
                client.infer(sample(seed))
                time.sleep(0.05)
        assert time.monotonic() - started < 20
        assert caught.value.status == 503 and "died" in str(caught.value)
        assert any("worker 2" in death for death in server.deaths)
        assert http_json(f"{server.info['gateway']}/v2/health/ready")[0] == 503
    finally:
        server.stop()


def _worker_pids() -> list[int]:
    import multiprocessing

    return [child.pid for child in multiprocessing.active_children()
            if child.name.startswith("splitdnn-worker-") and child.pid is not None]


def test_serve_and_infer_commands(resnet18_split: Path, whole_model: Any,
                                  tmp_path: Path) -> None:
    command = [sys.executable, "-m", "splitdnn", "serve", str(resnet18_split), "--http",
               "127.0.0.1:0", "--transport", "tcp"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        info = json.loads(line)
        assert all(endpoint.startswith("tcp://") for endpoint in info["workers"])
        x = sample(5)
        np.save(tmp_path / "x.npy", x)
        result = subprocess.run(
            [sys.executable, "-m", "splitdnn", "infer", info["gateway"], "--input",
             str(tmp_path / "x.npy"), "--output", str(tmp_path / "y.npy")],
            capture_output=True, text=True, check=True, timeout=120,
        )
        summary = json.loads(result.stdout)
        assert summary["shape"] == [1, 1000] and summary["exit"] is None
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(whole_model, x),
                                   atol=ATOL, rtol=1e-5)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert process.returncode == 0


def test_serve_rejects_a_directory_without_manifest(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "splitdnn", "serve", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "manifest.json" in result.stderr


def pooled_exit_head(path: Path, channels: int, classes: int = 10) -> Path:
    """GlobalAveragePool -> Flatten -> Gemm: logits from a block's feature map."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((classes, channels)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1)],
        "exit_head",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", channels, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


def test_early_exit_through_serve_reports_the_exit(resnet18_split: Path, tmp_path: Path) -> None:
    head = pooled_exit_head(tmp_path / "exit0.onnx", channels=128)
    options = ServeOptions(http_port=0, exits=[ExitHead(0, head, 0.0)])  # always taken
    with ServeThread(resnet18_split, options) as server:
        for url in (server.info["gateway"], server.info["zmq"]):
            with Client(url) as client:
                result = client.infer_result(sample(6))
            assert result.exit == 0 and result.output.shape == (1, 10)


def test_demo_splits_verifies_and_serves(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "splitdnn", "demo", "--model", "torchvision:resnet18",
         "--out", str(tmp_path / "demo")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "PASS 3 blocks vs whole model" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "OIP v2 HTTP" in line
            or "native ZeroMQ" in line]
    assert len(rows) == 2
    for row in rows:
        error = float(row.strip("│ ").split("│")[-1])
        assert error <= ATOL


def test_a_block_that_cannot_load_fails_serve_at_once(resnet18_split: Path,
                                                       tmp_path: Path) -> None:
    import shutil
    import time

    from splitdnn.runtime.serve import WorkerDied

    broken = tmp_path / "broken"
    shutil.copytree(resnet18_split, broken)
    (broken / "block_1.onnx").write_bytes(b"truncated")
    before = set(_worker_pids())
    started = time.monotonic()
    with pytest.raises(WorkerDied, match=r"worker 1 \(block_1.onnx\) failed to start"):
        ServeThread(broken, ServeOptions(http_port=0))
    assert time.monotonic() - started < 60
    assert set(_worker_pids()) <= before, "workers left behind"
