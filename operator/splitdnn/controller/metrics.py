"""Operator metrics on ``/metrics``: reconciles, errors, planning time, and stage scraping.

``scrape`` reads a worker's or gateway's Prometheus text (``/metrics``) so plan status can
report measured latency and bytes/s per stage.
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

RECONCILES = Counter("splitdnn_operator_reconciles_total", "Reconcile passes", ["kind"])
ERRORS = Counter("splitdnn_operator_errors_total", "Reconcile passes that failed",
                 ["kind", "error"])
PLAN_SECONDS = Histogram("splitdnn_operator_plan_seconds", "Time to build and solve a plan")

# previous (time, sent bytes) per pod, for a bytes/s rate between two status passes
_previous: dict[str, tuple[float, float]] = {}


def scrape(url: str, timeout: float = 2.0) -> dict[str, float]:
    """Sum of each sample name (all label sets) at a /metrics URL; {} when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            text = response.read().decode()
    except OSError:
        return {}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return totals


def stage_measurements(pod_urls: dict[str, str]) -> tuple[float | None, float | None]:
    """Mean stage latency (ms) and bytes/s sent on, over the pods of one stage."""
    latency_sum = latency_count = rate = 0.0
    have_rate = False
    now = time.monotonic()
    for pod, url in pod_urls.items():
        values = scrape(url)
        latency_sum += values.get("splitdnn_stage_latency_seconds_sum", 0.0)
        latency_count += values.get("splitdnn_stage_latency_seconds_count", 0.0)
        sent = values.get("splitdnn_sent_bytes_total")
        if sent is None:
            continue
        if pod in _previous and now > _previous[pod][0]:
            rate += max(0.0, sent - _previous[pod][1]) / (now - _previous[pod][0])
            have_rate = True
        _previous[pod] = (now, sent)
    latency = 1000 * latency_sum / latency_count if latency_count else None
    return latency, rate if have_rate else None
