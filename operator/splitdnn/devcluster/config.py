"""The devcluster configuration: node classes, nodes, links, images and kubelet timings.

A YAML file (``splitdnn devcluster up --config FILE``; the default ships as package data,
``default.yaml``). Errors name the offending field, e.g. ``links[0].bandwidthMbit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot describe a cluster; the message names the field."""


@dataclass(frozen=True)
class NodeSpec:
    """One emulated node."""

    name: str
    node_class: str
    labels: dict[str, str]
    capacity: dict[str, str]
    taints: list[dict[str, str]]
    kernel_version: str
    os_image: str
    cpu_quota: float | None


@dataclass(frozen=True)
class LinkSpec:
    """A shaped link between two nodes (both directions)."""

    a: str
    b: str
    bandwidth_mbit: float
    delay_ms: float


@dataclass(frozen=True)
class ImageSpec:
    """What an image would run: its ENTRYPOINT and CMD, for images matching a pattern."""

    match: str
    entrypoint: list[str]
    cmd: list[str]


@dataclass(frozen=True)
class ClusterConfig:
    """The whole cluster."""

    nodes: list[NodeSpec]
    links: list[LinkSpec]
    images: list[ImageSpec] = field(default_factory=list)
    restart_backoff_s: float = 0.5
    pod_eviction_s: float = 20.0
    source: str = field(default="default")

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)


def default_config_text() -> str:
    return resources.files("splitdnn.devcluster").joinpath("default.yaml").read_text()


def load_config(path: Path | None = None) -> ClusterConfig:
    """Parse and check a config file (None: the packaged default)."""
    text = path.read_text() if path else default_config_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}") from exc
    return parse_config(raw, str(path) if path else "default")


def _require(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def _number(value: Any, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ConfigError(f"{where}: expected a number >= {minimum}, got {value!r}")
    return float(value)


def parse_config(raw: Any, source: str = "config") -> ClusterConfig:
    raw = _require(raw, dict, "config")
    classes = _require(raw.get("classes", {}), dict, "classes")
    nodes = [_node(entry, classes, f"nodes[{i}]")
             for i, entry in enumerate(_require(raw.get("nodes"), list, "nodes"))]
    if not nodes:
        raise ConfigError("nodes: at least one node is required")
    names = [node.name for node in nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"nodes: duplicate node names in {names}")
    links = [_link(entry, names, f"links[{i}]")
             for i, entry in enumerate(_require(raw.get("links", []), list, "links"))]
    kubelet = _require(raw.get("kubelet", {}), dict, "kubelet")
    images = [_image(entry, f"images[{i}]")
              for i, entry in enumerate(_require(raw.get("images", []), list, "images"))]
    return ClusterConfig(
        nodes=nodes, links=links, images=images, source=source,
        restart_backoff_s=_number(kubelet.get("restartBackoffSeconds", 0.5),
                                  "kubelet.restartBackoffSeconds"),
        pod_eviction_s=_number(kubelet.get("podEvictionSeconds", 20),
                               "kubelet.podEvictionSeconds"),
    )


def _node(entry: Any, classes: dict[str, Any], where: str) -> NodeSpec:
    entry = _require(entry, dict, where)
    name = _require(entry.get("name"), str, f"{where}.name")
    class_name = entry.get("class")
    if class_name is not None and class_name not in classes:
        raise ConfigError(f"{where}.class: unknown class {class_name!r}; "
                          f"classes are {sorted(classes)}")
    base = _require(classes.get(class_name, {}), dict, f"classes.{class_name}")
    merged = {**base, **{k: v for k, v in entry.items() if k not in ("name", "class")}}
    labels = {str(k): str(v) for k, v in
              _require(merged.get("labels", {}), dict, f"{where}.labels").items()}
    capacity = {str(k): str(v) for k, v in
                _require(merged.get("capacity", {"cpu": "2", "memory": "4Gi"}), dict,
                         f"{where}.capacity").items()}
    quota = merged.get("cpuQuota")
    return NodeSpec(
        name=name, node_class=class_name or "", labels=labels, capacity=capacity,
        taints=list(_require(merged.get("taints", []), list, f"{where}.taints")),
        kernel_version=str(merged.get("kernelVersion", "6.1.0")),
        os_image=str(merged.get("osImage", "splitdnn devcluster")),
        cpu_quota=None if quota is None else _number(quota, f"{where}.cpuQuota", 0.01),
    )


def _strings(value: Any, where: str) -> list[str]:
    items = _require(value, list, where)
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f"{where}: expected a list of strings, got {items!r}")
    return list(items)


def _image(entry: Any, where: str) -> ImageSpec:
    entry = _require(entry, dict, where)
    return ImageSpec(match=_require(entry.get("match"), str, f"{where}.match"),
                     entrypoint=_strings(entry.get("entrypoint", []), f"{where}.entrypoint"),
                     cmd=_strings(entry.get("cmd", []), f"{where}.cmd"))


def _link(entry: Any, names: list[str], where: str) -> LinkSpec:
    entry = _require(entry, dict, where)
    between = _require(entry.get("between"), list, f"{where}.between")
    if len(between) != 2 or any(name not in names for name in between) or \
            between[0] == between[1]:
        raise ConfigError(f"{where}.between: expected two different node names from {names}, "
                          f"got {between}")
    return LinkSpec(a=between[0], b=between[1],
                    bandwidth_mbit=_number(entry.get("bandwidthMbit"),
                                           f"{where}.bandwidthMbit", 0.01),
                    delay_ms=_number(entry.get("delayMs", 0), f"{where}.delayMs"))
