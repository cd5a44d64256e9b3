"""The ``splitdnn devcluster`` commands, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from splitdnn.devcluster import running

CLI = [sys.executable, "-m", "splitdnn"]


def _run(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, SPLITDNN_DEVCLUSTER_DIR=str(state_dir))
    return subprocess.run([*CLI, "devcluster", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_up_status_env_node_down_up_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "cli-cluster"
    try:
        up = _run(state_dir, "up")
        assert up.returncode == 0, up.stderr
        kubeconfig = up.stdout.strip()
        assert kubeconfig == str(state_dir / "kubeconfig") and Path(kubeconfig).exists()
        assert _run(state_dir, "up").returncode == 1  # already running
        assert _run(state_dir, "env").stdout == f"export KUBECONFIG={kubeconfig}\n"
        status = json.loads(_run(state_dir, "status", "--json").stdout)
        classes = {n["name"]: n["class"] for n in status["nodes"]}
        assert classes == {"jetson-0": "jetson-nano", "v100-0": "v100-server"}
        assert _run(state_dir, "node-down", "jetson-0").returncode == 0
        nodes = json.loads(_run(state_dir, "status", "--json").stdout)["nodes"]
        assert {n["name"]: n["ready"] for n in nodes} == {"jetson-0": "Unknown", "v100-0": "True"}
        assert _run(state_dir, "node-up", "jetson-0").returncode == 0
        missing = _run(state_dir, "node-down", "tpu-0")
        assert missing.returncode == 2 and "tpu-0" in missing.stderr
    finally:
        down = _run(state_dir, "down")
    assert down.returncode == 0 and "stopped" in down.stdout
    assert running(state_dir) is None and not state_dir.exists()
    after = _run(state_dir, "status")
    assert after.returncode == 1 and "no devcluster is running" in after.stderr


def test_bad_config_is_exit_2_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    config.write_text("nodes: [{name: a}, {name: b}]\nlinks: [{between: [a, c], "
                      "bandwidthMbit: 10}]\n")
    result = _run(tmp_path / "state", "up", "--config", str(config))
    assert result.returncode == 2
    assert "links[0].between" in result.stderr
    assert not (tmp_path / "state").exists()
