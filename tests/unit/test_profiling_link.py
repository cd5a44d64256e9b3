"""The ZeroMQ link profiler: size parsing, both fits, and serve/peer on loopback and ipc."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from splitdnn.cli import app
from splitdnn.profiling import ProfileError
from splitdnn.profiling.link import (
    LinkServer,
    fit_linear,
    fit_polynomial,
    link_profile,
    parse_sizes,
    predict_transfer_ms,
)

runner = CliRunner()


def test_sizes_parse_as_doubling_ranges_or_lists() -> None:
    sizes = parse_sizes("1KB..64MB")
    assert sizes[0] == 1024 and sizes[-1] == 64 << 20 and len(sizes) == 17
    assert parse_sizes("1MB,512B,1KB") == [512, 1024, 1 << 20]
    for bad in ("64MB..1KB", "ten", "1TB", ","):
        with pytest.raises(ProfileError, match="--sizes"):
            parse_sizes(bad)


def test_fits_recover_a_latency_plus_bandwidth_link() -> None:
    sizes_mb = np.array([2.0**power for power in range(-10, 7)])
    latency = 0.05 + sizes_mb / 1.25  # 50 us + 1250 MB/s
    linear = fit_linear(sizes_mb, latency)
    assert linear["latency_ms"] == pytest.approx(0.05, rel=1e-6)
    assert linear["bandwidth_mb_s"] == pytest.approx(1250, rel=1e-6)
    assert linear["mape"] < 1e-6
    polynomial = fit_polynomial(sizes_mb, latency)
    assert polynomial["degree"] == 4 and polynomial["mape"] < 1e-3
    profile = link_profile("ipc:///x", [int(size * (1 << 20)) for size in sizes_mb],
                           list(latency), 0.05, 3)
    assert predict_transfer_ms(profile, 1 << 20) == pytest.approx(0.05 + 0.8, rel=1e-3)
    assert predict_transfer_ms(profile, 1 << 30) == pytest.approx(0.05 + 819.2, rel=1e-3)


@pytest.mark.parametrize("endpoint", ["ipc://{tmp}/link.ipc", "tcp://127.0.0.1:{port}"])
def test_netprofile_peer_against_a_server_produces_both_fits(
        tmp_path: Path, endpoint: str, unused_tcp_port: int) -> None:
    endpoint = endpoint.format(tmp=tmp_path, port=unused_tcp_port)
    server = LinkServer(endpoint, sessions=1)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    out = tmp_path / "link.json"
    result = runner.invoke(app, ["netprofile", "--peer", endpoint, "--out", str(out),
                                 "--sizes", "1KB..4MB", "--repeats", "3", "--json"])
    thread.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert not thread.is_alive()  # the server stopped after its one peer said bye
    data = json.loads(out.read_text())
    assert data == json.loads(result.stdout)
    assert data["sizes_bytes"] == parse_sizes("1KB..4MB")
    assert all(value > 0 for value in data["rtt_ms"])
    for name in ("polynomial", "linear"):
        fit = data["fits"][name]
        assert {"rmse_ms", "mape", "max_rel_error"} <= set(fit)
    assert len(data["fits"]["polynomial"]["coefficients"]) == 5
    assert data["fits"]["linear"]["bandwidth_mb_s"] > 0


def test_netprofile_needs_one_role_and_a_reachable_server(tmp_path: Path) -> None:
    both = runner.invoke(app, ["netprofile", "--serve", "ipc:///a", "--peer", "ipc:///b"])
    assert both.exit_code == 2 and "exactly one" in both.stderr
    silent = runner.invoke(app, ["netprofile", "--peer", f"ipc://{tmp_path}/none",
                                 "--out", str(tmp_path / "x.json"), "--timeout", "0.3"])
    assert silent.exit_code == 2 and "no answer" in silent.stderr
