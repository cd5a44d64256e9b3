"""``splitdnn devcluster up|down|status|env|node-down|node-up``: the emulated edge cluster.

``up`` starts the daemon in the background and returns once the API serves; the state dir is
``$SPLITDNN_DEVCLUSTER_DIR`` (default ``~/.cache/splitdnn/devcluster``). ``down`` stops it and
removes every process, namespace, qdisc and cgroup it made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, stderr, stdout

devcluster_app = typer.Typer(help="An emulated edge cluster on this machine (demo and tests).",
                             no_args_is_help=True)
app.add_typer(devcluster_app, name="devcluster")


@devcluster_app.command("up")
def up(config: Annotated[Path | None, typer.Option(
        "--config", help="Cluster config YAML (default: the packaged two-class cluster)")] = None,
       ) -> None:
    """Start the API emulator, controllers and process kubelet; print the kubeconfig path."""
    from splitdnn.devcluster import DevclusterError, default_state_dir, start
    from splitdnn.devcluster.config import ConfigError

    if config is not None and not config.is_file():
        fail(f"--config: no such file {config}")
    try:
        state = start(default_state_dir(), config)
    except ConfigError as exc:
        fail(f"--config: {exc}")
    except DevclusterError as exc:
        fail(str(exc), code=1)
    for warning in state["warnings"]:
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)
    stdout.print(state["kubeconfig"], highlight=False)


@devcluster_app.command("down")
def down() -> None:
    """Stop the devcluster and remove what it created."""
    from splitdnn.devcluster import default_state_dir, stop

    state_dir = default_state_dir()
    was_running = stop(state_dir)
    stdout.print("devcluster stopped" if was_running else "no devcluster was running; "
                 f"cleaned {state_dir}", highlight=False)


@devcluster_app.command("env")
def env() -> None:
    """Print export KUBECONFIG=... for the running devcluster."""
    state = _running()
    typer.echo(f"export KUBECONFIG={state['kubeconfig']}")


@devcluster_app.command("status")
def status(as_json: JsonOpt = False) -> None:
    """List nodes and pods."""
    from splitdnn.devcluster.manage import api_get

    state = _running()
    try:
        nodes = api_get(state, "/api/v1/nodes")["items"]
        pods = api_get(state, "/api/v1/pods")["items"]
    except OSError as exc:
        fail(f"the devcluster at {state['server']} does not answer ({exc}); see "
             f"{Path(state['kubeconfig']).parent / 'daemon.log'}", code=1)
    if as_json:
        typer.echo(json.dumps({"server": state["server"], "kubeconfig": state["kubeconfig"],
                               "networkIsolated": state["networkIsolated"],
                               "cpuLimited": state["cpuLimited"], "warnings": state["warnings"],
                               "nodes": [_node_row(n) for n in nodes],
                               "pods": [_pod_row(p) for p in pods]}, indent=1))
        return
    stdout.print(f"API {state['server']}  kubeconfig {state['kubeconfig']}  network isolation: "
                 f"{'yes' if state['networkIsolated'] else 'no'}, CPU limits: "
                 f"{'yes' if state['cpuLimited'] else 'no'}", highlight=False)
    table = Table("node", "ready", "IP", "class", "arch", "kernel")
    for node in map(_node_row, nodes):
        table.add_row(node["name"], node["ready"], node["ip"], node["class"], node["arch"],
                      node["kernel"])
    stdout.print(table)
    table = Table("namespace", "pod", "phase", "ready", "node", "IP", "restarts")
    for pod in map(_pod_row, pods):
        table.add_row(pod["namespace"], pod["name"], pod["phase"], str(pod["ready"]),
                      pod["node"] or "", pod["ip"] or "", str(pod["restarts"]))
    stdout.print(table)


@devcluster_app.command("node-down")
def node_down(name: str) -> None:
    """Fault: the node goes NotReady, its pod processes are killed, its link is cut."""
    _set_node(name, up=False)


@devcluster_app.command("node-up")
def node_up(name: str) -> None:
    """The node comes back: Ready, taints removed, its pods restarted."""
    _set_node(name, up=True)


def _set_node(name: str, up: bool) -> None:
    from splitdnn.devcluster import DevclusterError, default_state_dir, set_node

    try:
        set_node(default_state_dir(), name, up)
    except KeyError:
        fail(f"NAME: no node {name!r} in the devcluster")
    except DevclusterError as exc:
        fail(str(exc), code=1)
    stdout.print(f"node {name} {'up' if up else 'down'}", highlight=False)


def _running() -> dict[str, Any]:
    from splitdnn.devcluster import default_state_dir, running

    state = running(default_state_dir())
    if state is None:
        fail("no devcluster is running (`splitdnn devcluster up`)", code=1)
    assert state is not None
    return state


def _node_row(node: dict[str, Any]) -> dict[str, Any]:
    status = node.get("status") or {}
    ready = next((c["status"] for c in status.get("conditions") or [] if c["type"] == "Ready"),
                 "Unknown")
    labels = node["metadata"].get("labels") or {}
    return {"name": node["metadata"]["name"], "ready": ready,
            "ip": next((a["address"] for a in status.get("addresses") or []
                        if a["type"] == "InternalIP"), ""),
            "class": labels.get("splitdnn.io/device-class", ""),
            "arch": labels.get("kubernetes.io/arch", ""),
            "kernel": (status.get("nodeInfo") or {}).get("kernelVersion", "")}


def _pod_row(pod: dict[str, Any]) -> dict[str, Any]:
    status = pod.get("status") or {}
    return {"namespace": pod["metadata"]["namespace"], "name": pod["metadata"]["name"],
            "phase": status.get("phase", "Pending"),
            "ready": any(c["type"] == "Ready" and c["status"] == "True"
                         for c in status.get("conditions") or []),
            "node": pod["spec"].get("nodeName"), "ip": status.get("podIP"),
            "restarts": sum(int(s.get("restartCount", 0))
                            for s in status.get("containerStatuses") or [])}
