"""Which cluster the integration tier talks to, and how: ``pytest --cluster``.

Without ``--cluster`` every integration test runs against a devcluster started for the
session. With it, they run against the cluster of the current context of a kubeconfig
(``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``), authenticated as the
kubeconfig says (bearer token, exec plugin, client certificate, CA), through the official
``kubernetes`` client's config loader. The options are registered by ``tests/conftest.py``
(a hook only the rootdir's conftest is sure to run) and read here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import kubernetes
import pytest
import requests

RUNTIME_IMAGE_VARIABLES = ("SPLITDNN_RUNTIME_IMAGE_CPU", "SPLITDNN_RUNTIME_IMAGE_CUDA",
                           "SPLITDNN_RUNTIME_IMAGE_L4T")
OPERATOR_MODES = ("local", "installed")


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("cluster", "integration tests against a real cluster")
    group.addoption("--cluster", action="store_true", default=False,
                    help="run tests/integration against the cluster of the kubeconfig's "
                         "current context instead of a devcluster; devcluster-only tests skip")
    group.addoption("--kubeconfig", default=None, metavar="PATH",
                    help="with --cluster: the kubeconfig (default $KUBECONFIG, then "
                         "~/.kube/config); write --kubeconfig=PATH, with '='")
    group.addoption("--operator", default="local", choices=OPERATOR_MODES,
                    help="with --cluster: 'local' runs `splitdnn operator` here against the "
                         "kubeconfig; 'installed' uses the operator the Helm chart installed")
    group.addoption("--operator-namespace", default="splitdnn-system", metavar="NS",
                    help="with --operator=installed: the chart's release namespace")
    group.addoption("--runtime-image", default=None, metavar="IMAGE",
                    help="with --cluster and a local operator: the runtime image the cluster "
                         "pulls for every hardware class (per class: $SPLITDNN_RUNTIME_IMAGE_"
                         "CPU|_CUDA|_L4T)")


@dataclass(frozen=True)
class ClusterOptions:
    """The ``--cluster`` options, checked."""

    enabled: bool
    kubeconfig: str = ""
    operator: str = "local"
    operator_namespace: str = "splitdnn-system"
    runtime_images: dict[str, str] = field(default_factory=dict)


def read_options(config: pytest.Config) -> ClusterOptions:
    """The options as given; a combination that cannot work is a usage error naming it."""
    enabled = bool(config.getoption("--cluster"))
    given = {name: config.getoption(name) for name in ("--kubeconfig", "--runtime-image")}
    given["--operator"] = None if config.getoption("--operator") == "local" else "installed"
    if not enabled:
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise pytest.UsageError(f"{stray[0]}: only with --cluster")
        return ClusterOptions(enabled=False)
    operator = str(config.getoption("--operator"))
    image = config.getoption("--runtime-image")
    if image is not None and operator == "installed":
        raise pytest.UsageError("--runtime-image: applies to --operator=local; an installed "
                                "operator takes its images from the chart's runtimeImages values")
    kubeconfig = config.getoption("--kubeconfig") or os.environ.get("KUBECONFIG") or \
        os.path.expanduser("~/.kube/config")
    images = {name: os.environ[name] for name in RUNTIME_IMAGE_VARIABLES if name in os.environ}
    if image is not None:
        images = dict.fromkeys(RUNTIME_IMAGE_VARIABLES, str(image))
    return ClusterOptions(enabled=True, kubeconfig=str(kubeconfig), operator=operator,
                          operator_namespace=str(config.getoption("--operator-namespace")),
                          runtime_images=images)


def load_kubeconfig(kubeconfig: str) -> kubernetes.client.Configuration:
    """The current context of ``kubeconfig`` (a path, or paths joined by ``:``) as the
    ``kubernetes`` client reads it: server, credentials, CA, proxy."""
    configuration = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_kube_config(config_file=kubeconfig,
                                           client_configuration=configuration)
    except (kubernetes.config.ConfigException, OSError) as error:
        raise pytest.UsageError(f"--kubeconfig: cannot use {kubeconfig}: {error}") from None
    return configuration


class KubeconfigAuth(requests.auth.AuthBase):
    """The kubeconfig's credential headers on every request, refreshed as the client does
    (an exec plugin's or OIDC token is fetched again when it expires)."""

    def __init__(self, configuration: kubernetes.client.Configuration) -> None:
        self.configuration = configuration

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        for setting in self.configuration.auth_settings().values():
            if setting["in"] == "header" and setting["value"]:
                request.headers[setting["key"]] = setting["value"]
        return request


class KubeconfigSession(requests.Session):
    """Verifies the server as the session says: plain ``requests`` lets ``$REQUESTS_CA_BUNDLE``
    replace a session's CA (and turn ``verify=False`` back on)."""

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any,
                                   verify: Any, cert: Any) -> dict[str, Any]:
        chosen = self.verify if verify is None else verify
        return super().merge_environment_settings(url, proxies, stream, chosen, cert)


def authenticated_session(configuration: kubernetes.client.Configuration) -> requests.Session:
    """A ``requests`` session that presents the kubeconfig's credentials and trusts its CA."""
    session = KubeconfigSession()
    session.auth = KubeconfigAuth(configuration)
    if configuration.cert_file:
        session.cert = (configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        session.verify = False
    elif configuration.ssl_ca_cert:
        session.verify = configuration.ssl_ca_cert
    if configuration.proxy:
        session.proxies = {"http": configuration.proxy, "https": configuration.proxy}
    return session


def describe(options: ClusterOptions) -> dict[str, Any]:
    """What the fixtures know of a ``--cluster`` target (the devcluster's state has the same
    ``kubeconfig`` and ``server`` keys)."""
    configuration = load_kubeconfig(options.kubeconfig)
    return {"kubeconfig": options.kubeconfig, "server": configuration.host.rstrip("/"),
            "devcluster": False, "operator": options.operator,
            "operatorNamespace": options.operator_namespace,
            "operatorEnv": options.runtime_images}
