"""``pytest --cluster``'s API client authenticates as a kubeconfig says.

A local HTTPS server with a test CA (trustme) that requires a client certificate stands in
for a real API server and answers with the credentials it saw; kubeconfigs with a CA,
client certificate, bearer token, an exec plugin or ``insecure-skip-tls-verify`` go through
the ``kubernetes`` client's loader into ``Api.from_kubeconfig``.
"""

from __future__ import annotations

import base64
import json
import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
import yaml

from tests.integration.conftest import Api

EXEC_CREDENTIAL = {"apiVersion": "client.authentication.k8s.io/v1beta1",
                   "kind": "ExecCredential", "status": {"token": "from-exec-plugin"}}


class EchoCredentials(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = self.connection.getpeercert() or {}  # type: ignore[attr-defined]
        subject = dict(pair[0] for pair in peer.get("subject", ()))
        body = json.dumps({"authorization": self.headers.get("Authorization"),
                           "client": subject.get("commonName") or
                           (peer.get("subjectAltName") or [[None, None]])[0][1],
                           "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server(ca: trustme.CA) -> Iterator[str]:
    """HTTPS on 127.0.0.1 that only talks to clients with a certificate from ``ca``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoCredentials)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, server: str, user: dict[str, Any],
                     cluster: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "edge",
        "clusters": [{"name": "k3s", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "tester", "user": user}],
        "contexts": [{"name": "edge", "context": {"cluster": "k3s", "user": "tester"}}]}))
    return str(path)


def client_certificate(ca: trustme.CA) -> dict[str, str]:
    cert = ca.issue_cert("tester@splitdnn.io")
    return {"client-certificate-data": b64(cert.cert_chain_pems[0].bytes()),
            "client-key-data": b64(cert.private_key_pem.bytes())}


def test_token_client_certificate_and_ca_from_kubeconfig(ca: trustme.CA, server: str,
                                                         tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "config", server, {"token": "s3cret", **client_certificate(ca)},
        {"certificate-authority-data": b64(ca.cert_pem.bytes())})
    api = Api.from_kubeconfig(kubeconfig)
    assert api.server == server
    seen = api.ok("GET", "/version")
    assert seen == {"authorization": "Bearer s3cret", "client": "tester@splitdnn.io",
                    "path": "/version"}


def test_exec_plugin_token(ca: trustme.CA, server: str, tmp_path: Path) -> None:
    plugin = {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable,
              "args": ["-c", f"print({json.dumps(json.dumps(EXEC_CREDENTIAL))})"]}
    kubeconfig = write_kubeconfig(
        tmp_path / "config", server, {"exec": plugin, **client_certificate(ca)},
        {"certificate-authority-data": b64(ca.cert_pem.bytes())})
    assert Api.from_kubeconfig(kubeconfig).ok("GET", "/api")["authorization"] == \
        "Bearer from-exec-plugin"


def test_server_certificate_is_verified_unless_the_kubeconfig_skips_it(
        ca: trustme.CA, server: str, tmp_path: Path) -> None:
    untrusted = write_kubeconfig(tmp_path / "a", server, client_certificate(ca), {
        "certificate-authority-data": b64(trustme.CA().cert_pem.bytes())})  # another CA
    with pytest.raises(requests.exceptions.SSLError):
        Api.from_kubeconfig(untrusted).request("GET", "/version")
    skipping = write_kubeconfig(tmp_path / "b", server, client_certificate(ca),
                                {"insecure-skip-tls-verify": True})
    with pytest.warns(Warning, match="Unverified HTTPS"):
        assert Api.from_kubeconfig(skipping).ok("GET", "/version")["client"] == \
            "tester@splitdnn.io"


def test_missing_client_certificate_is_refused(ca: trustme.CA, server: str,
                                               tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", server, {"token": "t"}, {
        "certificate-authority-data": b64(ca.cert_pem.bytes())})
    with pytest.raises(requests.exceptions.RequestException):
        Api.from_kubeconfig(kubeconfig).request("GET", "/version")


def test_unreadable_kubeconfig_is_a_usage_error_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(pytest.UsageError, match="--kubeconfig: cannot use"):
        Api.from_kubeconfig(str(tmp_path / "missing"))
