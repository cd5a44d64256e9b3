"""Operator metrics on ``/metrics``: reconciles, errors, planning time, and stage scraping.

``scrape`` reads a worker's or gateway's Prometheus text (``/metrics``); ``measure`` keeps
each pod's scrapes of the last minute, so plan status reports the mean latency of recent
requests (what latency-drift replanning compares with the prediction) and bytes/s per stage.
"""

from __future__ import annotations

import time
import urllib.request
from dataclasses import dataclass

from prometheus_client import Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families

RECONCILES = Counter("splitdnn_operator_reconciles_total", "Reconcile passes", ["kind"])
ERRORS = Counter("splitdnn_operator_errors_total", "Reconcile passes that failed",
                 ["kind", "error"])
PLAN_SECONDS = Histogram("splitdnn_operator_plan_seconds", "Time to build and solve a plan")

WINDOW_SECONDS = 60.0  # measured latencies are means over the requests of this window


@dataclass(frozen=True)
class Sample:
    """One scrape of a pod: when, and its latency histogram and sent-bytes counters."""

    time: float
    latency_sum: float
    latency_count: float
    sent: float | None


_history: dict[str, list[Sample]] = {}  # metrics URL -> its scrapes within the window


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


def remember(pod: str, values: dict[str, float], now: float) -> list[Sample]:
    """Add a scrape to the pod's history, drop what left the window; the history."""
    for gone in [key for key, kept in _history.items()
                 if kept and now - kept[-1].time > WINDOW_SECONDS]:
        del _history[gone]  # pods no longer scraped
    samples = [s for s in _history.get(pod, []) if now - s.time <= WINDOW_SECONDS]
    if values:
        samples.append(Sample(now, values.get("splitdnn_stage_latency_seconds_sum", 0.0),
                              values.get("splitdnn_stage_latency_seconds_count", 0.0),
                              values.get("splitdnn_sent_bytes_total")))
    _history[pod] = samples
    return samples


def window_totals(samples: list[Sample], since: float) -> tuple[float, float]:
    """(latency seconds, requests) between the first and last sample taken after ``since``;
    nothing when the counters went back (a restarted process)."""
    usable = [s for s in samples if s.time >= since]
    if len(usable) < 2:
        return 0.0, 0.0
    count = usable[-1].latency_count - usable[0].latency_count
    if count <= 0:
        return 0.0, 0.0
    return usable[-1].latency_sum - usable[0].latency_sum, count


def sent_rate(samples: list[Sample]) -> float | None:
    """Bytes/s sent between the last two scrapes."""
    if len(samples) < 2 or samples[-1].sent is None or samples[-2].sent is None:
        return None
    elapsed = samples[-1].time - samples[-2].time
    return max(0.0, samples[-1].sent - samples[-2].sent) / elapsed if elapsed > 0 else None


def measure(pod_urls: dict[str, str], since: float = 0.0
            ) -> tuple[float | None, float | None]:
    """Mean latency (ms) of the requests the pods handled in the window (after ``since``,
    a ``time.time()``) and the bytes/s they sent on; None where nothing was measured."""
    now = time.time()
    seconds = requests = rate = 0.0
    have_rate = False
    for url in pod_urls.values():
        samples = remember(url, scrape(url), now)
        pod_seconds, pod_requests = window_totals(samples, since)
        seconds, requests = seconds + pod_seconds, requests + pod_requests
        pod_rate = sent_rate(samples)
        if pod_rate is not None:
            rate, have_rate = rate + pod_rate, True
    return (1000 * seconds / requests if requests else None), (rate if have_rate else None)
