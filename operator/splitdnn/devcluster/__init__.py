"""An emulated edge cluster on one machine, for the demo and the tests.

``splitdnn devcluster up`` runs a Kubernetes API emulator (``apiserver``/``store``), the
workload controllers and scheduler (``controllers``), a process kubelet (``kubelet``) and
cluster DNS (``dns``) in a background daemon (``daemon``); nodes and pods get network
namespaces, shaped links and CPU quotas where the machine allows (``isolation``).
``manage`` starts and stops it from other processes; ``config`` reads the cluster file.
Test and demo infrastructure only: production targets real Kubernetes (docs/devcluster.md).
"""

from splitdnn.devcluster.manage import (
    DevclusterError,
    default_state_dir,
    read_state,
    running,
    set_node,
    start,
    stop,
)

__all__ = ["DevclusterError", "default_state_dir", "read_state", "running", "set_node",
           "start", "stop"]
