"""Hardware classes from node labels, through a configurable label map.

A node's class is the value of the first label in the map that it has
(``splitdnn.io/device-class`` first, then GPU Feature Discovery's
``nvidia.com/gpu.product``), else ``jetson`` for an arm64 node whose kernel ends in
``-tegra``, else ``cpu-<arch>``. Class names are made DNS labels so they can name tiers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CLASS_LABELS = ("splitdnn.io/device-class", "nvidia.com/gpu.product")


@dataclass
class HardwareClass:
    """One class of nodes: its name, the label that selects it and its nodes."""

    name: str
    selector: dict[str, str]
    nodes: list[str] = field(default_factory=list)
    ready_nodes: list[str] = field(default_factory=list)


def dns_label(text: str) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return label[:63].rstrip("-") or "unknown"


def node_ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    unschedulable = (node.get("spec") or {}).get("unschedulable", False)
    return ready and not unschedulable


def node_class(node: dict[str, Any],
               class_labels: tuple[str, ...] = DEFAULT_CLASS_LABELS) -> tuple[str, dict[str, str]]:
    """The class name of one node and the node selector that picks its class."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    for key in class_labels:
        if labels.get(key):
            return dns_label(labels[key]), {key: labels[key]}
    arch = labels.get("kubernetes.io/arch", "amd64")
    kernel = ((node.get("status") or {}).get("nodeInfo") or {}).get("kernelVersion", "")
    if arch == "arm64" and kernel.endswith("-tegra"):
        return "jetson", {"kubernetes.io/arch": "arm64"}
    return dns_label(f"cpu-{arch}"), {"kubernetes.io/arch": arch}


def discover_classes(nodes: list[dict[str, Any]],
                     class_labels: tuple[str, ...] = DEFAULT_CLASS_LABELS
                     ) -> dict[str, HardwareClass]:
    """Every class present among ``nodes``, with its nodes and its Ready nodes."""
    classes: dict[str, HardwareClass] = {}
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        name, selector = node_class(node, class_labels)
        entry = classes.setdefault(name, HardwareClass(name, selector))
        entry.nodes.append(node["metadata"]["name"])
        if node_ready(node):
            entry.ready_nodes.append(node["metadata"]["name"])
    return classes


def matches(node: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def tier_class(nodes: list[dict[str, Any]], selector: dict[str, str],
               class_labels: tuple[str, ...] = DEFAULT_CLASS_LABELS) -> str | None:
    """The hardware class of the nodes a tier's selector picks (the first, by name)."""
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        if matches(node, selector):
            return node_class(node, class_labels)[0]
    return None
