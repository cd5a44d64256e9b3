"""Start, stop, inspect and fault a devcluster from another process (CLI and tests).

The state dir (``$SPLITDNN_DEVCLUSTER_DIR``, default ``~/.cache/splitdnn/devcluster``) holds
the daemon's ``state.json``, ``kubeconfig``, ``daemon.log``, ``isolation.json`` (what to
tear down), ``pids/`` (one file per running container process) and ``pods/`` (logs).
``stop`` works from these files alone, so it cleans up after a crashed daemon too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from splitdnn.devcluster import isolation
from splitdnn.devcluster.config import load_config

START_TIMEOUT_S = 60.0


class DevclusterError(RuntimeError):
    """The devcluster is not running, already running, or failed to start."""


def default_state_dir() -> Path:
    configured = os.environ.get("SPLITDNN_DEVCLUSTER_DIR")
    return Path(configured) if configured else Path.home() / ".cache/splitdnn/devcluster"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return state


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, which no one reaped yet, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def running(state_dir: Path) -> dict[str, Any] | None:
    state = read_state(state_dir)
    return state if state is not None and process_alive(int(state["pid"])) else None


def start(state_dir: Path, config: Path | None = None,
          exit_with: int | None = None) -> dict[str, Any]:
    """Start the daemon in the background and wait until it serves; returns state.json.
    With ``exit_with`` (a pid) the daemon shuts down and cleans up when that process is
    gone, even if it was killed before it could call ``stop`` (tests use their own pid)."""
    load_config(config)  # a bad config fails here, in the caller, with the field named
    if running(state_dir):
        raise DevclusterError(f"a devcluster already runs from {state_dir}; "
                              "`splitdnn devcluster down` first")
    stop(state_dir)  # leftovers of a crashed daemon
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "splitdnn.devcluster.daemon", "--state-dir", str(state_dir)]
    if config is not None:
        argv += ["--config", str(config.resolve())]
    if exit_with is not None:
        argv += ["--exit-with", str(exit_with)]
    with open(state_dir / "daemon.log", "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                   start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = read_state(state_dir)
        if state is not None and state.get("pid") == process.pid:
            return state
        if process.poll() is not None:
            tail = (state_dir / "daemon.log").read_text(errors="replace")[-2000:]
            stop(state_dir)
            raise DevclusterError(f"the devcluster daemon exited with {process.returncode}:\n"
                                  f"{tail}")
        time.sleep(0.1)
    process.kill()
    stop(state_dir)
    raise DevclusterError(f"the devcluster did not start within {START_TIMEOUT_S:.0f} s")


def stop(state_dir: Path, timeout_s: float = 15.0) -> bool:
    """Stop the daemon and remove everything it made; True if something was running."""
    state = read_state(state_dir)
    was_running = False
    if state is not None and process_alive(int(state["pid"])):
        was_running = True
        pid = int(state["pid"])
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while process_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.05)
        if process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
    for pid_file in (state_dir / "pids").glob("*") if (state_dir / "pids").exists() else []:
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.killpg(int(pid_file.name), signal.SIGKILL)
    if (state_dir / "isolation.json").exists():
        isolation.teardown(isolation.Layout.load(state_dir / "isolation.json"))
    if state_dir.exists():
        shutil.rmtree(state_dir, ignore_errors=True)
    return was_running


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def api_get(state: dict[str, Any], path: str) -> dict[str, Any]:
    with urllib.request.urlopen(state["server"] + path, timeout=10) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def set_node(state_dir: Path, name: str, up: bool) -> None:
    """Fault injection: a node goes down (NotReady, processes killed, link cut) or up."""
    state = running(state_dir)
    if state is None:
        raise DevclusterError(f"no devcluster runs from {state_dir}")
    action = "up" if up else "down"
    request = urllib.request.Request(f"{state['server']}/devcluster/v1/nodes/{name}/{action}",
                                      method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10):
            pass
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise KeyError(name) from exc
        raise
