"""Integration tier: one cluster per session, talked to over HTTP and with real kubectl.

By default the cluster is a devcluster run from a temporary state dir with a test config
(fast restarts and evictions, a 40 Mbit/s link). With ``pytest --cluster`` it is the cluster
of a kubeconfig instead (``tests/integration/cluster.py``): the ``cluster`` fixture names
it, ``api`` authenticates as the kubeconfig says, and what only the devcluster has skips
with the reason: the ``test_devcluster_*`` modules (the emulator's own tests), tests that
take the ``devcluster`` fixture themselves (node-down/up, the state dir, shaped links) and
tests marked ``devcluster_only``. Each test works in its own namespace. kubectl comes from
``make tools`` (``.tools/kubectl``); tests that need it skip with the reason when it is absent.
"""

from __future__ import annotations

import inspect
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
from tests.integration.cluster import (
    ClusterOptions,
    authenticated_session,
    describe,
    load_kubeconfig,
    read_options,
)
from tests.integration.operators import (
    InstalledOperator,
    LocalOperator,
    OperatorProcess,
    install_crds,
    log_tracebacks,
    running_chart_operators,
    topology_problems,
)

ROOT = Path(__file__).resolve().parents[2]
KUBECTL = ROOT / ".tools" / "kubectl"
TEST_CONFIG = (Path(__file__).parent / "devcluster-test.yaml").read_text()


class Api:
    """A thin JSON client for the API server (the devcluster's, or a real one's)."""

    def __init__(self, server: str, state_dir: Path | None = None,
                 session: requests.Session | None = None) -> None:
        self.server, self.state_dir = server, state_dir
        self.session = session or requests.Session()

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str, state_dir: Path | None = None) -> Api:
        """The current context's server, with its credentials and CA."""
        configuration = load_kubeconfig(kubeconfig)
        return cls(configuration.host.rstrip("/"), state_dir,
                   authenticated_session(configuration))

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


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "devcluster_only(reason): needs the devcluster; "
                                       "skipped with --cluster")


def devcluster_only(item: pytest.Item) -> str | None:
    """Why ``item`` cannot run against a real cluster, or None."""
    if Path(str(item.path)).name.startswith("test_devcluster_"):
        return "a test of the devcluster emulator itself"
    marker = item.get_closest_marker("devcluster_only")
    if marker is not None:
        return str(marker.kwargs.get("reason") or (marker.args or ["needs the devcluster"])[0])
    function = getattr(item, "function", None)
    if function is not None and "devcluster" in inspect.signature(function).parameters:
        return "uses the devcluster's own features (node down/up, its state dir or config)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not read_options(config).enabled:
        return
    here = Path(__file__).parent
    for item in items:
        reason = devcluster_only(item) if here in Path(str(item.path)).parents else None
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"--cluster: {reason}"))


@pytest.fixture(scope="session")
def cluster_options(pytestconfig: pytest.Config) -> ClusterOptions:
    return read_options(pytestconfig)


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory,
               cluster_options: ClusterOptions) -> Iterator[dict[str, Any]]:
    if cluster_options.enabled:
        pytest.skip("--cluster: needs the devcluster")
    state_dir = tmp_path_factory.mktemp("devcluster")
    config = state_dir.parent / "devcluster-test.yaml"
    config.write_text(TEST_CONFIG)
    state = start(state_dir, config, exit_with=os.getpid())  # no leftovers if pytest is killed
    state["stateDir"] = str(state_dir)
    state["devcluster"] = True
    try:
        yield state
    finally:
        stop(state_dir)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, cluster_options: ClusterOptions) -> dict[str, Any]:
    """The cluster under test: ``kubeconfig``, ``server``, ``devcluster`` (bool), and for
    ``--cluster`` how the operator runs (``operator``, ``operatorNamespace``, ``operatorEnv``)."""
    if not cluster_options.enabled:
        state: dict[str, Any] = request.getfixturevalue("devcluster")
        return state
    target = describe(cluster_options)
    api = Api.from_kubeconfig(target["kubeconfig"])
    try:
        version = api.ok("GET", "/version")
    except (requests.RequestException, AssertionError) as error:
        pytest.exit(f"--cluster: the API server of {target['kubeconfig']} "
                    f"({target['server']}) does not answer: {error}", returncode=4)
    target["version"] = version.get("gitVersion")
    return target


@pytest.fixture(scope="session")
def api(cluster: dict[str, Any]) -> Api:
    state_dir = cluster.get("stateDir")
    return Api.from_kubeconfig(cluster["kubeconfig"], Path(state_dir) if state_dir else None)


@pytest.fixture
def namespace(api: Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    api.ok("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    yield name
    api.request("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
def kubectl(cluster: dict[str, Any], namespace: str) -> Callable[..., str]:
    if not KUBECTL.exists():
        pytest.skip("kubectl not fetched: run `make tools`")

    def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
        env = dict(os.environ, KUBECONFIG=cluster["kubeconfig"])
        result = subprocess.run([str(KUBECTL), "-n", namespace, *args], input=stdin,
                                capture_output=True, text=True, env=env, timeout=60)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout + (result.stderr if not check else "")

    return run


def operator_under_test(api: Api, cluster: dict[str, Any], log_path: Path) -> OperatorProcess:
    """The local operator (devcluster, or ``--operator=local``) or the chart's one; with
    ``--cluster`` the nodes must be those the operator tests expect."""
    if not cluster["devcluster"]:
        problems = topology_problems(api)
        if problems:
            pytest.fail("--cluster: the operator tests need nodes jetson-0 (splitdnn.io/"
                        "device-class=jetson-nano) and v100-0 (splitdnn.io/device-class="
                        "v100-server, nvidia.com/gpu.product=Tesla-V100-SXM2-16GB), untainted, "
                        "and no other node of those classes: " + "; ".join(problems),
                        pytrace=False)
    if cluster.get("operator") == "installed":
        return InstalledOperator(api, cluster["operatorNamespace"], log_path)
    installed = running_chart_operators(api)
    if installed:
        pytest.fail(f"an operator installed by the chart runs in the cluster ({installed[0]}); "
                    f"a local one would fight it over every DNNService: use "
                    f"--operator=installed or uninstall the chart", pytrace=False)
    return LocalOperator(cluster, log_path)


@pytest.fixture(scope="module")
def operator(api: Api, cluster: dict[str, Any],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The splitdnn operator for a module's tests, with the CRDs installed where missing;
    its log must hold no traceback at the end."""
    install_crds(api)
    process = operator_under_test(api, cluster,
                                  tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()
    tracebacks = log_tracebacks(process.log_path.read_text())
    assert not tracebacks, "".join(tracebacks)[-4000:]
