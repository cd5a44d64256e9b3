"""Segment profiler: time a random fraction of a model's segments on this machine.

RoaD-RuNNer's *layer filtering and sampling* step (paper 004, §III-A): of the model's
distinct segment signatures, a random fraction ``P`` is profiled; collaborative filtering
(``splitdnn.predict``) fills in the rest. Each chosen segment is extracted as its own ONNX
block (``splitdnn.graph.blocks.build_block``), loaded into its own ONNX Runtime session and
run on random inputs of its input's shape: ``warmup`` runs, then ``repeats`` timed samples
(taken in rounds over all segments) whose median is the latency. Where an energy meter
works, the segment is then run again for at least ``MIN_ENERGY_WINDOW_S`` (meter counters
update every few to 100 ms) and the energy per run is recorded; otherwise ``energy_mj``
stays null.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from splitdnn.graph.analysis import ModelGraph
from splitdnn.graph.blocks import build_block
from splitdnn.graph.onnx_runtime import random_input, session_options, with_provider_options
from splitdnn.profiling.meters import MIN_ENERGY_WINDOW_S, EnergyMeter, detect_meter
from splitdnn.profiling.signature import (
    SegmentSignature,
    model_signatures,
    segment_input,
)
from splitdnn.profiling.store import Profile, ProfileEntry, ProfileError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
Progress = Callable[[int, int, str], None]
STATISTICS: dict[str, Callable[[list[float]], float]] = {"median": statistics.median, "min": min}


def profile_model(
    graph: ModelGraph,
    sample_fraction: float = 1.0,
    repeats: int = 10,
    warmup: int = 3,
    hardware_class: str | None = None,
    provider: str = "cpu",
    threads: int | None = None,
    seed: int = 0,
    meter: EnergyMeter | None = None,
    on_progress: Progress | None = None,
    min_sample_ms: float = 0.0,
    statistic: str = "median",
) -> Profile:
    """Profile a random ``sample_fraction`` of the model's distinct segment signatures.

    All chosen segments are loaded first; then ``repeats`` rounds time one sample of every
    segment, in a fresh random order each round. Spreading each segment's samples over the
    whole run keeps a burst of load from other work on a shared machine from skewing
    some segments and not others; the median then drops the disturbed rounds.

    Each of the ``repeats`` timed samples is one run, or, with ``min_sample_ms``, the mean of
    as many back-to-back runs as last that long: under a CFS CPU quota a single short run
    rarely meets the throttle, so only samples spanning several quota periods show the
    sustained speed a quota allows. ``statistic`` turns the samples into the latency:
    ``median`` (the default), or ``min``, the least-disturbed sample, for machines shared
    with other work, where the median still carries the others' load.
    """
    _check_options(sample_fraction, repeats, warmup, provider, threads)
    if statistic not in STATISTICS:
        raise ProfileError(f"--statistic must be one of {', '.join(STATISTICS)}, "
                           f"got {statistic!r}")
    signatures = model_signatures(graph)
    first_seen: dict[str, int] = {}
    for index, signature in enumerate(signatures):
        first_seen.setdefault(signature.key, index)
    rng = np.random.default_rng(seed)
    count = max(1, math.ceil(sample_fraction * len(first_seen)))
    chosen = sorted(rng.choice(sorted(first_seen), size=count, replace=False).tolist(),
                    key=lambda key: first_seen[key])
    load_before = _load_average()
    runners = [_SegmentRunner.prepare(graph, first_seen[key], provider, threads, warmup,
                                      min_sample_ms, rng) for key in chosen]
    total = repeats * len(runners)
    for round_index in range(repeats):
        for position, runner in enumerate(rng.permutation(len(runners))):
            if on_progress is not None:
                on_progress(round_index * len(runners) + position, total, chosen[runner])
            runners[runner].sample()
    if on_progress is not None:
        on_progress(total, total, "")
    entries = {key: runner.entry(signatures[first_seen[key]], graph.source, meter, repeats,
                                 STATISTICS[statistic])
               for key, runner in zip(chosen, runners, strict=True)}
    quota = cpu_quota()
    return Profile(
        hardware_class=hardware_class or default_hardware_class(provider, threads, quota),
        node=os.environ.get("NODE_NAME") or socket.gethostname(),
        runtime=runtime_info(provider, threads, quota, meter),
        entries=entries,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        meta={
            "models": [graph.source],
            "segments": len(signatures),
            "signatures": len(first_seen),
            "sample_fraction": sample_fraction,
            "repeats": repeats,
            "warmup": warmup,
            "min_sample_ms": min_sample_ms,
            "statistic": statistic,
            "seed": seed,
            "load_average": {"before": load_before, "after": _load_average()},
        },
    )


def _check_options(
    sample_fraction: float, repeats: int, warmup: int, provider: str, threads: int | None
) -> None:
    if not 0 < sample_fraction <= 1:
        raise ProfileError(f"--sample-fraction must be in (0, 1], got {sample_fraction}")
    if repeats < 1:
        raise ProfileError(f"--repeats must be at least 1, got {repeats}")
    if warmup < 0:
        raise ProfileError(f"--warmup must be at least 0, got {warmup}")
    if provider not in PROVIDERS:
        raise ProfileError(f"--provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    if threads is not None and threads < 1:
        raise ProfileError(f"--threads must be at least 1, got {threads}")


@dataclass
class _SegmentRunner:
    """One segment in its own session, with its input and the timed samples so far."""

    session: Any
    feed: dict[str, np.ndarray]
    runs_per_sample: int
    timings: list[float] = field(default_factory=list)

    @classmethod
    def prepare(
        cls, graph: ModelGraph, segment_index: int, provider: str, threads: int | None,
        warmup: int, min_sample_ms: float, rng: np.random.Generator,
    ) -> _SegmentRunner:
        """Extract the segment as a block, load it, warm it up and size its samples."""
        segment = graph.segments[segment_index]
        block = build_block(graph, segment.first_layer, segment.last_layer)
        session = make_session(block.SerializeToString(), provider, threads)
        spec = segment_input(graph, segment)
        feed = {session.get_inputs()[0].name: random_input(rng, spec.shape, spec.dtype)}
        return cls(session, feed, _runs_per_sample(session, feed, warmup, min_sample_ms))

    def sample(self) -> None:
        """One timed sample: the mean of ``runs_per_sample`` back-to-back runs."""
        began = time.perf_counter()
        for _ in range(self.runs_per_sample):
            self.session.run(None, self.feed)
        self.timings.append((time.perf_counter() - began) * 1000.0 / self.runs_per_sample)

    def entry(self, signature: SegmentSignature, source: str, meter: EnergyMeter | None,
              repeats: int, summary: Callable[[list[float]], float]) -> ProfileEntry:
        return ProfileEntry(
            latency_ms=max(summary(self.timings), 1e-6),
            energy_mj=_energy_per_run(self.session, self.feed, meter, repeats),
            samples=len(self.timings),
            features=signature.features,
            models=[source],
        )


def _runs_per_sample(
    session: Any, feed: dict[str, np.ndarray], warmup: int, min_sample_ms: float
) -> int:
    """Warm up; then how many back-to-back runs make ``min_sample_ms`` of CPU work.

    Sized by CPU time, not wall time: under a quota the warm-up runs are themselves
    throttled, and sizing by their wall time would leave samples of one short run, which
    the cgroup's leftover runtime sometimes lets through unthrottled.
    """
    cpu_ms = []
    for _ in range(max(warmup, 1 if min_sample_ms > 0 else 0)):
        began = time.process_time()
        session.run(None, feed)
        cpu_ms.append((time.process_time() - began) * 1000.0)
    if min_sample_ms <= 0:
        return 1
    return max(1, math.ceil(min_sample_ms / max(statistics.median(cpu_ms), 1e-3)))


def _energy_per_run(
    session: Any, feed: dict[str, np.ndarray], meter: EnergyMeter | None, repeats: int
) -> float | None:
    if meter is None:
        return None
    runs = 0
    meter.begin()
    began = time.perf_counter()
    while runs < repeats or time.perf_counter() - began < MIN_ENERGY_WINDOW_S:
        session.run(None, feed)
        runs += 1
    energy = meter.end()
    return None if energy is None else energy / runs


def resolve_provider(provider: str) -> str:
    """``auto``: the provider a block worker on this node would run, ``cuda`` where CUDA is
    usable (an NVIDIA driver and the GPU build of ONNX Runtime), else ``cpu``; others as given.
    Profiling Jobs use it, so that a GPU node's profile times what its stages will run."""
    if provider != "auto":
        return provider
    import onnxruntime as ort

    from splitdnn.runtime.engine import usable_providers

    usable = usable_providers(ort.get_available_providers())
    return "cuda" if PROVIDERS["cuda"] in usable else "cpu"


def make_session(model: bytes, provider: str, threads: int | None) -> Any:
    """An ONNX Runtime session configured as the block runtime deploys one.

    Graph optimisation ``all``; intra-op threads as asked, with thread-pool spinning off
    (``splitdnn.runtime``'s default: spinning threads of several sessions on a few cores
    slow each other 3-5x); the same options as the runtime's ``BlockEngine``, but only the
    requested provider, which must really start.
    """
    import onnxruntime as ort

    if PROVIDERS[provider] not in ort.get_available_providers():
        raise ProfileError(f"--provider {provider}: ONNX Runtime here offers only "
                           f"{', '.join(ort.get_available_providers())}")
    options = session_options("all", threads, spinning=False)
    try:
        session = ort.InferenceSession(model, options,
                                       providers=with_provider_options([PROVIDERS[provider]]))
    except Exception as error:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise ProfileError(f"ONNX Runtime cannot load a segment: {error}") from error
    if PROVIDERS[provider] not in session.get_providers():
        # ORT falls back to the CPU when CUDA cannot start (no GPU, no driver, no cuDNN):
        # a "cuda" profile of CPU timings would be worse than none.
        raise ProfileError(f"--provider {provider}: ONNX Runtime could not start "
                           f"{PROVIDERS[provider]} here (it would run on "
                           f"{', '.join(session.get_providers())})")
    return session


def runtime_info(
    provider: str, threads: int | None, quota: float | None, meter: EnergyMeter | None
) -> dict[str, Any]:
    """The ``runtime`` block of a profile: what ran the segments, and how."""
    return {
        "provider": provider,
        "threads": threads,
        "versions": {name: _version(name) for name in ("onnxruntime", "onnx", "splitdnn")}
        | {"python": platform.python_version()},
        "optimization": "all",
        "spinning": False,
        "cpu_quota": quota,
        "energy_meter": meter.name if meter is not None else None,
    }


def _version(name: str) -> str | None:
    candidates = [name, "onnxruntime-gpu"] if name == "onnxruntime" else [name]
    for candidate in candidates:
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def default_hardware_class(provider: str, threads: int | None, quota: float | None) -> str:
    """``cpu-1t``, ``cpu-2t-q25`` (a 25 % CPU quota), ``cuda``, ..."""
    name = provider if threads is None else f"{provider}-{threads}t"
    return name if quota is None else f"{name}-q{round(quota * 100)}"


def cpu_quota(proc: Path = Path("/proc/self/cgroup"),
              cgroup_root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """This process's CFS CPU quota in cores (0.25 = a quarter core), or None when unlimited."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            return _v1_quota(cgroup_root / "cpu" / path.lstrip("/"))
    v2 = next((line.split(":", 2)[2] for line in lines if line.startswith("0::")), None)
    return _v2_quota(cgroup_root / v2.lstrip("/")) if v2 is not None else None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _load_average() -> list[float] | None:
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def meter_for(provider: str, measure_energy: bool = True) -> EnergyMeter | None:
    """The energy meter to use, or None when energy is not wanted or not measurable."""
    return detect_meter(provider) if measure_energy else None
