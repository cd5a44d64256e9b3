"""Per-node OS isolation: network namespaces, shaped links, CPU quotas.

As root, each node is a network namespace ``sdn-<cluster>-<node>`` acting as a router, and
each pod gets its own namespace ``sdp-<cluster>-<node index>-<k>`` behind it (so pods on one
node have their own IPs and ports, as in Kubernetes):

    pod eth0 (10.X.(i+1).k) -- veth -- node br0 (10.X.(i+1).1)
    node eth0 (10.X.0.(10+i)) -- veth -- host bridge sdb<cluster> (10.X.0.1/24)

Node *i* routes the other nodes' pod subnets ``10.X.(j+1).0/24`` straight to their uplinks
over the host bridge (layer 2: the host does not forward), and the host has routes to every
pod subnet (probes, clients, the API server at 10.X.0.1). A configured link shapes each
direction at the sending node's ``eth0`` with an HTB class (rate) and a netem qdisc (delay;
a kernel without ``sch_netem`` gets the rate only, with a warning) chosen by destination
subnet. CPU is limited per node with a cgroup-v1 ``cpu.cfs_quota_us`` shared by its pods.
Everything created is recorded in the state dir so that ``teardown`` removes it even after a
crash. ``X`` is the first free ``10.X.0.0/16`` on the machine.

Without root (or where a step fails) nodes fall back to loopback addresses ``127.X.(i+1).k``
in the host namespace, without bandwidth, delay or CPU limits; the reason is reported, and
pods on one node then share its ports unless they bind their own pod IP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from splitdnn.devcluster.config import ClusterConfig

log = logging.getLogger(__name__)
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000
DISABLE_ENV = "SPLITDNN_DEVCLUSTER_NO_ISOLATION"  # set: loopback nodes, no limits
NETWORK_ATTEMPTS = 3


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
    isolated: bool = False

    @property
    def network_isolated(self) -> bool:
        return self.isolated

    @property
    def gateway_ip(self) -> str:
        return f"10.{self.second_octet}.0.1" if self.network_isolated else "127.0.0.1"

    def pod_subnet_base(self, index: int) -> str:
        """The first three octets of node ``index``'s pod addresses."""
        prefix = "10" if self.network_isolated else "127"
        return f"{prefix}.{self.second_octet}.{index + 1}"

    def node_ip(self, index: int) -> str:
        if self.network_isolated:
            return f"10.{self.second_octet}.0.{10 + index}"
        return f"{self.pod_subnet_base(index)}.1"

    def pod_netns(self, index: int, ip: str) -> str | None:
        """The namespace of the pod with address ``ip`` on node ``index`` (None: loopback)."""
        if not self.network_isolated:
            return None
        return f"sdp-{self.cluster_id}-{index}-{ip.rsplit('.', 1)[1]}"

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
    """Why real isolation is impossible (or unwanted) here, or None."""
    if os.environ.get(DISABLE_ENV):
        return f"disabled by ${DISABLE_ENV}"
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
    for attempt in range(NETWORK_ATTEMPTS if problem is None else 0):
        try:
            _setup_network(config, layout, record)
            break
        except OSError as exc:  # another cluster may have taken the subnet meanwhile
            teardown(layout)
            layout = Layout(cluster_id=cluster_id, second_octet=_free_octet())
            if attempt == NETWORK_ATTEMPTS - 1:
                problem = f"network namespaces failed ({exc})"
    if problem is not None:
        layout.warnings.append(f"no network isolation: {problem}; nodes use loopback "
                               "addresses without bandwidth or delay limits")
    try:
        if problem is not None and (os.geteuid() != 0 or os.environ.get(DISABLE_ENV)):
            raise OSError(problem)
        _setup_cgroups(config, layout)
    except OSError as exc:
        layout.warnings.append(f"no CPU limits: {exc}")
    layout.save(record)
    for warning in layout.warnings:
        log.warning("devcluster: %s", warning)
    return layout


def _setup_network(config: ClusterConfig, layout: Layout, record: Path) -> None:
    cid = layout.cluster_id
    layout.bridge, layout.isolated = f"sdb{cid}", True
    layout.save(record)
    _run("ip", "link", "add", layout.bridge, "type", "bridge")
    _run("ip", "addr", "add", f"{layout.gateway_ip}/24", "dev", layout.bridge)
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
        _run("ip", "-n", netns, "addr", "add", f"{layout.node_ip(index)}/24", "dev", "eth0")
        for link in ("eth0", "lo"):
            _run("ip", "-n", netns, "link", "set", link, "up")
        _run("ip", "-n", netns, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", netns, "addr", "add", f"{layout.pod_subnet_base(index)}.1/24",
             "dev", "br0")
        _run("ip", "-n", netns, "link", "set", "br0", "up")
        _run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _run("ip", "route", "add", f"{layout.pod_subnet_base(index)}.0/24", "via",
             layout.node_ip(index), "dev", layout.bridge, "onlink")
    for index, node in enumerate(config.nodes):
        _route_node(layout, index, len(config.nodes))
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
        for dst in (f"{layout.pod_subnet_base(peer_index)}.0/24",
                    f"{layout.node_ip(peer_index)}/32"):
            _run(*tc, "filter", "add", "dev", "eth0", "parent", "1:", "protocol", "ip", "prio",
                 "1", "u32", "match", "ip", "dst", dst, "flowid", f"1:{classid}")


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


def launch_prefix(layout: Layout, node: str, pod_netns: str | None,
                  pod_cgroup: str | None = None, hostname: str | None = None) -> list[str]:
    """argv prefix that runs a command inside the pod's network namespace (and a UTS
    namespace with the pod's hostname) and its pod's or node's cgroup."""
    prefix: list[str] = []
    cgroup = pod_cgroup or layout.cgroups.get(node)
    if cgroup:  # first: `ip netns exec` remounts /sys without the cgroups
        prefix += ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup]
    if pod_netns is not None:
        prefix += ["ip", "netns", "exec", pod_netns]
        if hostname:
            prefix += ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname]
    return prefix


def add_pod(layout: Layout, node: str, index: int, ip: str, namespace: str = "default",
            hostname: str = "") -> str | None:
    """Create the pod's namespace wired to its node's bridge, with its own resolv.conf
    (cluster DNS) and hosts file (its hostname); returns the namespace's name."""
    pod_netns = layout.pod_netns(index, ip)
    if pod_netns is None:
        return None
    _write_netns_etc(pod_netns, {
        "resolv.conf": f"nameserver {layout.gateway_ip}\nsearch {namespace}.svc.cluster.local "
                       "svc.cluster.local cluster.local\noptions ndots:5\n",
        "hosts": f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{hostname}\n"})
    node_netns, veth = layout.netns[node], f"vp{ip.rsplit('.', 1)[1]}"
    _quiet("ip", "netns", "delete", pod_netns)  # a leftover of a crashed pod
    _run("ip", "netns", "add", pod_netns)
    _quiet("ip", "-n", node_netns, "link", "delete", veth)
    _run("ip", "-n", node_netns, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
         "netns", pod_netns)
    _run("ip", "-n", node_netns, "link", "set", veth, "master", "br0", "up")
    _run("ip", "-n", pod_netns, "addr", "add", f"{ip}/24", "dev", "eth0")
    for link in ("eth0", "lo"):
        _run("ip", "-n", pod_netns, "link", "set", link, "up")
    _run("ip", "-n", pod_netns, "route", "add", "default", "via",
         f"{layout.pod_subnet_base(index)}.1", "dev", "eth0", "onlink")
    return pod_netns


def add_pod_cgroup(layout: Layout, node: str, pod_uid: str, cpu_limit: float | None
                   ) -> str | None:
    """A child of the node's cgroup for a pod with a CPU limit (the sum of its containers'
    ``limits.cpu``), capped at the node's quota as cgroup v1 requires; None without one."""
    node_cgroup = layout.cgroups.get(node)
    if node_cgroup is None or cpu_limit is None:
        return None
    path = Path(node_cgroup) / f"pod-{pod_uid}"
    node_quota = int((Path(node_cgroup) / "cpu.cfs_quota_us").read_text())
    quota = int(cpu_limit * CFS_PERIOD_US)
    if node_quota > 0:
        quota = min(quota, node_quota)
    try:
        path.mkdir(exist_ok=True)
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(max(quota, 1000)))
    except OSError as exc:
        log.warning("devcluster: no CPU limit for pod %s: %s", pod_uid, exc)
        return None
    return str(path)


def remove_pod_cgroup(path: str | None) -> None:
    if path is not None:
        _remove_cgroup_tree(Path(path))


def _remove_cgroup_tree(path: Path) -> None:
    """Kill what runs in a cgroup and its children, then remove them (deepest first)."""
    if not path.is_dir():
        return
    for child in [c for c in path.iterdir() if c.is_dir()]:
        _remove_cgroup_tree(child)
    _empty_cgroup(path)
    for _ in range(50):  # killed tasks leave the cgroup asynchronously
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)
    log.warning("devcluster: could not remove cgroup %s", path)


def remove_pod(pod_netns: str | None) -> None:
    if pod_netns is not None:
        _quiet("ip", "netns", "delete", pod_netns)
        _remove_netns_etc(pod_netns)


# `ip netns exec NAME` bind-mounts the files in /etc/netns/NAME over those in /etc.
ETC_NETNS = Path("/etc/netns")


def _write_netns_etc(pod_netns: str, files: dict[str, str]) -> None:
    directory = ETC_NETNS / pod_netns
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


def _remove_netns_etc(pod_netns: str) -> None:
    shutil.rmtree(ETC_NETNS / pod_netns, ignore_errors=True)
    with contextlib.suppress(OSError):
        ETC_NETNS.rmdir()  # only when empty: then nobody else uses it


def set_link(layout: Layout, node: str, up: bool) -> None:
    """Cut or restore a node's network (node-down / node-up)."""
    if node in layout.netns:
        _quiet("ip", "-n", layout.netns[node], "link", "set", "eth0", "up" if up else "down")
    if up and node in layout.netns:
        _route_node(layout, list(layout.netns).index(node), len(layout.netns))


def _route_node(layout: Layout, index: int, node_count: int) -> None:
    """A node's routes over its uplink: the default and every other node's pod subnet. The
    kernel drops them when the uplink goes down, so node-up puts them back."""
    netns = list(layout.netns.values())[index]
    route = ("ip", "-n", netns, "route", "replace")
    _run(*route, "default", "via", layout.gateway_ip, "dev", "eth0", "onlink")
    for peer in range(node_count):
        if peer != index:
            _run(*route, f"{layout.pod_subnet_base(peer)}.0/24", "via", layout.node_ip(peer),
                 "dev", "eth0", "onlink")


def teardown(layout: Layout) -> None:
    """Remove everything ``setup`` created; safe to call twice and on a partial setup."""
    if layout.cgroup_root:
        _remove_cgroup_tree(Path(layout.cgroup_root))
    pods = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=False).stdout.split()
    for netns in [n for n in pods if n.startswith(f"sdp-{layout.cluster_id}-")]:
        _quiet("ip", "netns", "delete", netns)
    if ETC_NETNS.is_dir():
        for directory in ETC_NETNS.glob(f"sdp-{layout.cluster_id}-*"):
            _remove_netns_etc(directory.name)
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
