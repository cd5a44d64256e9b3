"""Per-node OS isolation: a network namespace with its own addresses, shaped links, CPU quota.

As root, each node gets a network namespace ``sdn-<cluster>-<node>`` whose ``eth0`` is one
end of a veth pair; the other ends join a bridge ``sdb<cluster>`` in the host namespace that
holds the gateway address (pods reach the API server there). Addresses come from a free
``10.X.0.0/16``: node *i* owns ``10.X.(i+1).0/24`` and each pod gets one address from it,
added to the node's ``eth0``. A configured link shapes each direction at the sender's
``eth0`` with an HTB class (rate) and a netem qdisc (delay; a kernel without ``sch_netem``
gets the rate only, with a warning) selected by destination subnet.
CPU is limited per node with a cgroup-v1 ``cpu.cfs_quota_us``. Everything created is
recorded in the state dir so that ``teardown`` can remove it even after a crash.

Without root (or where a step fails) nodes fall back to loopback addresses ``127.X.(i+1).k``
in the host namespace, without bandwidth, delay or CPU limits; the reason is reported.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from splitdnn.devcluster.config import ClusterConfig

log = logging.getLogger(__name__)
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000


@dataclass
class Layout:
    """What was created for one cluster (persisted as ``isolation.json``)."""

    cluster_id: str
    second_octet: int
    netns: dict[str, str] = field(default_factory=dict)     # node -> netns name
    bridge: str | None = None
    host_veths: list[str] = field(default_factory=list)
    cgroups: dict[str, str] = field(default_factory=dict)   # node -> cgroup dir
    cgroup_root: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def network_isolated(self) -> bool:
        return bool(self.netns)

    @property
    def gateway_ip(self) -> str:
        return f"10.{self.second_octet}.0.1" if self.network_isolated else "127.0.0.1"

    def node_subnet_base(self, index: int) -> str:
        prefix = "10" if self.network_isolated else "127"
        return f"{prefix}.{self.second_octet}.{index + 1}"

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @staticmethod
    def load(path: Path) -> Layout:
        return Layout(**json.loads(path.read_text()))


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {result.stderr.strip() or result.returncode}")


def _quiet(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, timeout=30, check=False)


def _free_octet() -> int:
    """A 10.X.0.0/16 (and 127.X/16) no interface or route on this machine uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          check=False).stdout
    used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True,
                           check=False).stdout
    for octet in range(201, 255):
        net = ipaddress.IPv4Network(f"10.{octet}.0.0/16")
        if not any(_overlaps(token, net) for token in used.split()):
            return octet
    raise OSError("no free 10.X.0.0/16 subnet for the devcluster")


def _overlaps(token: str, net: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_network(token, strict=False).overlaps(net)
    except ValueError:
        return False


def isolation_problem() -> str | None:
    """Why real isolation is impossible here, or None."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the {tool!r} command is missing"
    return None


def setup(config: ClusterConfig, cluster_id: str, record: Path) -> Layout:
    """Create namespaces, links and cgroups (or fall back); ``record`` is written as it goes."""
    layout = Layout(cluster_id=cluster_id, second_octet=_free_octet())
    problem = isolation_problem()
    if problem is None:
        try:
            _setup_network(config, layout, record)
        except OSError as exc:
            teardown(layout)
            layout = Layout(cluster_id=cluster_id, second_octet=layout.second_octet)
            problem = f"network namespaces failed ({exc})"
    if problem is not None:
        layout.warnings.append(f"no network isolation: {problem}; nodes use loopback "
                               "addresses without bandwidth or delay limits")
    try:
        if problem is not None and os.geteuid() != 0:
            raise OSError("not running as root")
        _setup_cgroups(config, layout)
    except OSError as exc:
        layout.warnings.append(f"no CPU limits: {exc}")
    layout.save(record)
    for warning in layout.warnings:
        log.warning("devcluster: %s", warning)
    return layout


def _setup_network(config: ClusterConfig, layout: Layout, record: Path) -> None:
    cid, octet = layout.cluster_id, layout.second_octet
    layout.bridge = f"sdb{cid}"
    layout.save(record)
    _run("ip", "link", "add", layout.bridge, "type", "bridge")
    _run("ip", "addr", "add", f"10.{octet}.0.1/16", "dev", layout.bridge)
    _run("ip", "link", "set", layout.bridge, "up")
    for index, node in enumerate(config.nodes):
        netns, host_end = f"sdn-{cid}-{node.name}", f"sdv{cid}{index}"
        layout.netns[node.name] = netns
        layout.host_veths.append(host_end)
        layout.save(record)
        _run("ip", "netns", "add", netns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0",
             "netns", netns)
        _run("ip", "link", "set", host_end, "master", layout.bridge, "up")
        _run("ip", "-n", netns, "addr", "add", f"{layout.node_subnet_base(index)}.1/16",
             "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", layout.gateway_ip)
    for index, node in enumerate(config.nodes):
        _shape(config, layout, index, node.name)


def _shape(config: ClusterConfig, layout: Layout, index: int, name: str) -> None:
    netns = layout.netns[name]
    tc = ("ip", "netns", "exec", netns, "tc")
    _run(*tc, "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1")
    _run(*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", "1:1", "htb",
         "rate", "10gbit")
    for link in config.links:
        if name not in (link.a, link.b):
            continue
        peer = link.b if link.a == name else link.a
        peer_index = [n.name for n in config.nodes].index(peer)
        classid = 10 + peer_index
        rate = f"{link.bandwidth_mbit}mbit"
        burst = f"{max(16, int(link.bandwidth_mbit * 1e6 / 8 / 1000 / 100))}k"  # 10 ms worth
        _run(*tc, "class", "add", "dev", "eth0", "parent", "1:", "classid", f"1:{classid}",
             "htb", "rate", rate, "ceil", rate, "burst", burst, "cburst", burst)
        leaf = ("qdisc", "add", "dev", "eth0", "parent", f"1:{classid}", "handle", f"{classid}:")
        try:
            _run(*tc, *leaf, "netem", "delay", f"{link.delay_ms}ms", "limit", "100000")
        except OSError as exc:
            _run(*tc, *leaf, "pfifo", "limit", "10000")
            warning = f"link delays not emulated: no netem qdisc here ({_last_line(exc)})"
            if link.delay_ms and warning not in layout.warnings:
                layout.warnings.append(warning)
        _run(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "dst", f"{layout.node_subnet_base(peer_index)}.0/24",
             "flowid", f"1:{classid}")
    _quiet("ip", "netns", "exec", netns, "ethtool", "-K", "eth0", "tso", "off", "gso", "off")


def _setup_cgroups(config: ClusterConfig, layout: Layout) -> None:
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        raise OSError(f"no cgroup-v1 cpu controller at {CGROUP_CPU}")
    root = CGROUP_CPU / f"splitdnn-{layout.cluster_id}"
    root.mkdir(exist_ok=True)
    layout.cgroup_root = str(root)
    for node in config.nodes:
        if node.cpu_quota is None:
            continue
        path = root / node.name
        path.mkdir(exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(int(node.cpu_quota * CFS_PERIOD_US)))
        layout.cgroups[node.name] = str(path)


def launch_prefix(layout: Layout, node: str) -> list[str]:
    """argv prefix that runs a command inside the node's namespace and cgroup."""
    prefix: list[str] = []
    if node in layout.cgroups:  # first: `ip netns exec` remounts /sys without the cgroups
        prefix += ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', layout.cgroups[node]]
    if node in layout.netns:
        prefix += ["ip", "netns", "exec", layout.netns[node]]
    return prefix


def add_address(layout: Layout, node: str, ip: str) -> None:
    if node in layout.netns:
        _quiet("ip", "-n", layout.netns[node], "addr", "add", f"{ip}/16", "dev", "eth0")


def remove_address(layout: Layout, node: str, ip: str) -> None:
    if node in layout.netns and not ip.endswith(".1"):
        _quiet("ip", "-n", layout.netns[node], "addr", "del", f"{ip}/16", "dev", "eth0")


def set_link(layout: Layout, node: str, up: bool) -> None:
    """Cut or restore a node's network (node-down / node-up)."""
    if node in layout.netns:
        _quiet("ip", "-n", layout.netns[node], "link", "set", "eth0", "up" if up else "down")


def teardown(layout: Layout) -> None:
    """Remove everything ``setup`` created; safe to call twice and on a partial setup."""
    for cgroup in layout.cgroups.values():
        _empty_cgroup(Path(cgroup))
    for cgroup in list(layout.cgroups.values()) + ([layout.cgroup_root] if
                                                     layout.cgroup_root else []):
        try:
            Path(cgroup).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("devcluster: could not remove cgroup %s: %s", cgroup, exc)
    for netns in layout.netns.values():
        _quiet("ip", "netns", "delete", netns)
    for veth in layout.host_veths:
        _quiet("ip", "link", "delete", veth)
    if layout.bridge:
        _quiet("ip", "link", "delete", layout.bridge)


def _empty_cgroup(path: Path) -> None:
    procs = path / "cgroup.procs"
    if not procs.exists():
        return
    for pid in procs.read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), 9)


def _last_line(exc: OSError) -> str:
    return str(exc).rsplit(": ", 1)[-1]
