"""Integration tier: one devcluster per session, talked to over HTTP and with real kubectl.

The cluster runs from a temporary state dir with a test config (fast restarts and
evictions, a 40 Mbit/s link); each test works in its own namespace. kubectl comes from
``make tools`` (``.tools/kubectl``); tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from splitdnn.devcluster import start, stop

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "kubectl"
TEST_CONFIG = """
classes:
  jetson-nano:
    labels: {splitdnn.io/device-class: jetson-nano, kubernetes.io/arch: arm64}
    kernelVersion: 4.9.337-tegra
    capacity: {cpu: "4", memory: 4Gi, pods: "32"}
    cpuQuota: 0.25
  v100-server:
    labels:
      splitdnn.io/device-class: v100-server
      nvidia.com/gpu.product: Tesla-V100-SXM2-16GB
      nvidia.com/gpu.count: "1"
    capacity: {cpu: "8", memory: 32Gi, nvidia.com/gpu: "1"}
    cpuQuota: 1.0
nodes:
  - {name: jetson-0, class: jetson-nano}
  - {name: v100-0, class: v100-server}
links:
  - {between: [jetson-0, v100-0], bandwidthMbit: 40, delayMs: 1}
images:
  - {match: "*splitdnn*", entrypoint: [splitdnn], cmd: [--help]}
kubelet: {restartBackoffSeconds: 0.2, podEvictionSeconds: 2}
"""


class Api:
    """A thin JSON client for the emulated API server."""

    def __init__(self, server: str, state_dir: Path) -> None:
        self.server, self.state_dir = server, state_dir
        self.session = requests.Session()

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/json", **params: Any) -> requests.Response:
        data = None if body is None else json.dumps(body)
        return self.session.request(method, self.server + path, data=data, params=params,
                                    headers={"Content-Type": content_type}, timeout=30)

    def ok(self, method: str, path: str, body: Any = None,
           content_type: str = "application/json", **params: Any) -> Any:
        response = self.request(method, path, body, content_type, **params)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} " \
                                           f"{response.text}"
        return response.json()

    def wait_for(self, path: str, predicate: Callable[[Any], bool], timeout: float = 20.0,
                 what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            response = self.request("GET", path)
            last = response.json() if response.status_code == 200 else response.status_code
            if predicate(last):
                return last
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or path}; last: "
                             f"{json.dumps(last)[:2000]}")


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    state_dir = tmp_path_factory.mktemp("devcluster")
    config = state_dir.parent / "devcluster-test.yaml"
    config.write_text(TEST_CONFIG)
    state = start(state_dir, config, exit_with=os.getpid())  # no leftovers if pytest is killed
    state["stateDir"] = str(state_dir)
    try:
        yield state
    finally:
        stop(state_dir)


@pytest.fixture(scope="session")
def api(devcluster: dict[str, Any]) -> Api:
    return Api(devcluster["server"], Path(devcluster["stateDir"]))


@pytest.fixture
def namespace(api: Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    api.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def kubectl(devcluster: dict[str, Any], namespace: str) -> Callable[..., str]:
    if not KUBECTL.exists():
        pytest.skip("kubectl not fetched: run `make tools`")

    def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
        env = dict(os.environ, KUBECONFIG=devcluster["kubeconfig"])
        result = subprocess.run([str(KUBECTL), "-n", namespace, *args], input=stdin,
                                capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout + (result.stderr if not check else "")

    return run
