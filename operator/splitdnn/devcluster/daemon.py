"""The devcluster daemon: API server, controllers and process kubelet in one event loop.

Started in the background by ``splitdnn devcluster up`` (``python -m
splitdnn.devcluster.daemon --state-dir DIR [--config FILE]``); it writes
``DIR/kubeconfig`` and then ``DIR/state.json`` when it serves. SIGTERM stops every pod
process and removes the namespaces, qdiscs and cgroups it made. Besides the Kubernetes API
it serves ``POST /devcluster/v1/nodes/NAME/{down,up}`` for fault injection.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from splitdnn.devcluster import controllers, isolation
from splitdnn.devcluster import dns as cluster_dns
from splitdnn.devcluster.apiserver import ApiServer
from splitdnn.devcluster.config import ClusterConfig, load_config
from splitdnn.devcluster.kubelet import Kubelet
from splitdnn.devcluster.manage import process_alive
from splitdnn.devcluster.store import ApiError, Store

log = logging.getLogger("splitdnn.devcluster")
TICK_SECONDS = 0.5


def cluster_id(state_dir: Path) -> str:
    """Names the cluster's namespaces, links and cgroups (one cluster per state dir)."""
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kubeconfig(server: str) -> str:
    return (
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: devcluster\n  cluster:\n    server: {server}\n"
        "users:\n- name: devcluster\n  user:\n    token: devcluster\n"
        "contexts:\n- name: devcluster\n  context:\n    cluster: devcluster\n"
        "    user: devcluster\n    namespace: default\n"
        "current-context: devcluster\n"
    )


def reconcile(store: Store, config: ClusterConfig) -> None:
    """One pass of every controller."""
    apps = "apps"
    for deploy in store.list_objects(store.type_for(apps, "v1", "deployments")):
        controllers.reconcile_deployment(store, deploy)
    for rs in store.list_objects(store.type_for(apps, "v1", "replicasets")):
        controllers.reconcile_replicaset(store, rs)
    for job in store.list_objects(store.type_for("batch", "v1", "jobs")):
        controllers.reconcile_job(store, job, config.restart_backoff_s)
    for pod in store.list_objects(controllers.pods(store)):
        if not pod["spec"].get("nodeName") and not pod["metadata"].get("deletionTimestamp"):
            controllers.schedule(store, pod)
    for svc in store.list_objects(store.type_for("", "v1", "services")):
        controllers.reconcile_service(store, svc)


class Daemon:
    """Owns the loop, the HTTP sites and the isolation layout."""

    def __init__(self, state_dir: Path, config: ClusterConfig,
                 exit_with: int | None = None) -> None:
        self.state_dir, self.config, self.exit_with = state_dir, config, exit_with
        self.cluster_id = cluster_id(state_dir)
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()

    async def run(self) -> None:
        layout = isolation.setup(self.config, self.cluster_id, self.state_dir / "isolation.json")
        store = Store()
        store.listeners.append(lambda _event: self.wake.set())
        port = free_port()
        kubelet = Kubelet(store, self.config, layout, self.state_dir, port, self.wake)
        server = ApiServer(store, kubelet.logs)
        server.app.router.add_post("/devcluster/v1/nodes/{name}/{action}", self._power(kubelet))
        server.mount()
        runner = web.AppRunner(server.app, handle_signals=False)
        await runner.setup()
        hosts = ["127.0.0.1"] + ([layout.gateway_ip] if layout.network_isolated else [])
        for host in hosts:
            await web.TCPSite(runner, host, port, shutdown_timeout=0.5).start()
        dns = await cluster_dns.serve(store, layout.gateway_ip) if layout.network_isolated \
            else None
        try:
            kubelet.register_nodes()
            self._publish(port, layout)
            await self._loop(store, kubelet)
        finally:
            if dns is not None:
                dns.close()
            server.stopping.set()
            kubelet.shutdown()
            await asyncio.sleep(0.2)
            await runner.cleanup()
            isolation.teardown(layout)

    def _power(self, kubelet: Kubelet) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            name, action = request.match_info["name"], request.match_info["action"]
            if name not in kubelet.next_ip or action not in ("up", "down"):
                return web.json_response({"error": f"unknown node {name!r} or action"}, status=404)
            kubelet.set_node_up(name, action == "up")
            return web.json_response({"node": name, "ready": action == "up"})
        return handle

    def _publish(self, port: int, layout: isolation.Layout) -> None:
        server = f"http://127.0.0.1:{port}"
        (self.state_dir / "kubeconfig").write_text(kubeconfig(server))
        # what pods use (as KUBECONFIG): the API as their network namespace reaches it
        (self.state_dir / "kubeconfig-pods").write_text(
            kubeconfig(f"http://{layout.gateway_ip}:{port}"))
        state = {"pid": os.getpid(), "server": server, "port": port,
                 "kubeconfig": str(self.state_dir / "kubeconfig"),
                 "clusterId": self.cluster_id, "config": self.config.source,
                 "networkIsolated": layout.network_isolated,
                 "cpuLimited": bool(layout.cgroups), "gateway": layout.gateway_ip,
                 "warnings": layout.warnings}
        tmp = self.state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(self.state_dir / "state.json")

    async def _loop(self, store: Store, kubelet: Kubelet) -> None:
        while not self.stop.is_set():
            if self.exit_with is not None and not process_alive(self.exit_with):
                log.warning("process %d is gone: shutting down", self.exit_with)
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK_SECONDS)
            self.wake.clear()
            try:
                reconcile(store, self.config)
                await kubelet.sync()
            except ApiError as exc:  # a race with a client's write: next pass retries
                log.debug("reconcile: %s", exc.message)
            except Exception:  # a controller bug must not take the cluster down
                log.exception("reconcile failed")
                await asyncio.sleep(TICK_SECONDS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--exit-with", type=int, metavar="PID",
                        help="shut down (and clean up) when this process is gone (tests)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    daemon = Daemon(args.state_dir, load_config(args.config), args.exit_with)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, daemon.stop.set)
        await daemon.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
