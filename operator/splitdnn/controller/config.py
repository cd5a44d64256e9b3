"""Operator configuration from the environment (the chart sets these variables)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from splitdnn.controller.discovery import DEFAULT_CLASS_LABELS

DEFAULT_IMAGE = "ghcr.io/splitdnn/runtime-cpu:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    """What the handlers need beyond the objects themselves."""

    image_cpu: str = DEFAULT_IMAGE
    image_cuda: str = "ghcr.io/splitdnn/runtime-cuda:0.1.0"
    image_l4t: str = "ghcr.io/splitdnn/runtime-l4t:0.1.0"
    class_labels: tuple[str, ...] = DEFAULT_CLASS_LABELS
    profile_fraction: float = 0.5
    profile_repeats: int = 5
    # each timed sample spans several CFS periods, so a node's CPU quota shows in the profile
    profile_min_sample_ms: float = 100.0
    # Link profile used between tiers until netprofile measurements exist (see docs/operator.md)
    link_bandwidth_mbps: float = 100.0
    link_latency_ms: float = 2.0
    worker_port: int = 5555
    metrics_port: int = 9090
    gateway_port: int = 8000
    results_port: int = 5600
    operator_namespace: str = "splitdnn-system"
    labels: dict[str, str] = field(default_factory=dict)
    # GPU access of the pods that run blocks on GPU nodes: the NVIDIA container runtime's
    # RuntimeClass (K3s: "nvidia") and/or nvidia.com/gpu per pod (device plugin); neither
    # by default, so that a node's one GPU is not exclusive to one stage (docs/operator.md)
    gpu_runtime_class: str | None = None
    gpus_per_pod: int = 0

    def image_for(self, hardware_class: str, selector: dict[str, str]) -> str:
        """The runtime image a tier's nodes run: L4T on Jetson, CUDA on NVIDIA, else CPU."""
        if "jetson" in hardware_class:
            return self.image_l4t
        if self.gpu_class(hardware_class, selector):
            return self.image_cuda
        return self.image_cpu

    @staticmethod
    def gpu_class(hardware_class: str, selector: dict[str, str]) -> bool:
        """Whether the class's nodes have an NVIDIA GPU (Jetsons' is integrated)."""
        return "jetson" in hardware_class or any(key.startswith("nvidia.com/")
                                                 for key in selector)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        env = os.environ
        labels = env.get("SPLITDNN_CLASS_LABELS")
        return cls(
            image_cpu=env.get("SPLITDNN_RUNTIME_IMAGE_CPU", cls.image_cpu),
            image_cuda=env.get("SPLITDNN_RUNTIME_IMAGE_CUDA", cls.image_cuda),
            image_l4t=env.get("SPLITDNN_RUNTIME_IMAGE_L4T", cls.image_l4t),
            class_labels=tuple(labels.split(",")) if labels else DEFAULT_CLASS_LABELS,
            profile_fraction=float(env.get("SPLITDNN_PROFILE_FRACTION", cls.profile_fraction)),
            profile_repeats=int(env.get("SPLITDNN_PROFILE_REPEATS", cls.profile_repeats)),
            profile_min_sample_ms=float(env.get("SPLITDNN_PROFILE_MIN_SAMPLE_MS",
                                                cls.profile_min_sample_ms)),
            link_bandwidth_mbps=float(env.get("SPLITDNN_LINK_MBPS", cls.link_bandwidth_mbps)),
            link_latency_ms=float(env.get("SPLITDNN_LINK_LATENCY_MS", cls.link_latency_ms)),
            operator_namespace=env.get("SPLITDNN_OPERATOR_NAMESPACE", cls.operator_namespace),
            gpu_runtime_class=env.get("SPLITDNN_GPU_RUNTIME_CLASS") or None,
            gpus_per_pod=int(env.get("SPLITDNN_GPUS_PER_POD") or 0),
        )
