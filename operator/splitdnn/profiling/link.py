"""Link profiler: message transfer time over ZeroMQ, and two models fitted to it.

RoaD-RuNNer's network profiler (paper 004, §III-A) sends messages of many sizes from a node
to the server and fits a fourth-order polynomial to the latency; splitdnn fits that and the
simpler ``latency + bytes / bandwidth`` model, and stores both with their fit errors so the
planner can choose (the polynomial is only trusted inside the measured size range).

Wire protocol, plain ZeroMQ frames, zero-copy and no pickling: the peer (REQ) sends
``[b"data", payload]``, ``[b"ping"]`` or ``[b"bye"]``; the server (REP) answers
``[b"ok", size as ASCII]``. A measurement is the median round trip of a payload and its
two-frame acknowledgement; the fitted latency term absorbs the acknowledgement's cost.
"""

from __future__ import annotations

import re
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from splitdnn.profiling.store import ProfileError

UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
MB = float(1 << 20)
POLYNOMIAL_DEGREE = 4
POLL_MS = 200


def parse_size(text: str) -> int:
    """``64MB`` → 67108864 (binary units: KB = 1024 bytes, so ``1KB..64MB`` doubles evenly)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B)?\s*", text.upper())
    if match is None:
        raise ProfileError(f"--sizes: {text!r} is not a size like 512B, 1KB, 64MB")
    size = int(float(match.group(1)) * UNITS[match.group(2) or "B"])
    if size < 1:
        raise ProfileError(f"--sizes: {text!r} must be at least one byte")
    return size


def parse_sizes(text: str) -> list[int]:
    """``1KB..64MB`` (every power of two between) or a comma list ``1KB,1MB,16MB``."""
    if ".." in text:
        low_text, high_text = text.split("..", 1)
        low, high = parse_size(low_text), parse_size(high_text)
        if low > high:
            raise ProfileError(f"--sizes: range {text!r} runs backwards")
        sizes = []
        while low <= high:
            sizes.append(low)
            low *= 2
        return sizes
    sizes = sorted({parse_size(part) for part in text.split(",") if part.strip()})
    if not sizes:
        raise ProfileError(f"--sizes: expected sizes like 1KB..64MB or 1KB,1MB, got {text!r}")
    return sizes


class LinkServer:
    """Answers every message with its size until stopped (or after ``sessions`` peers said bye)."""

    def __init__(self, endpoint: str, sessions: int | None = None) -> None:
        import zmq

        self.endpoint = endpoint
        self._sessions = sessions
        self._stop = threading.Event()
        self._context: Any = zmq.Context.instance()
        self._socket = self._context.socket(zmq.REP)
        self._socket.setsockopt(zmq.LINGER, 0)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as error:
            self._socket.close()
            raise ProfileError(f"--serve {endpoint}: cannot bind: {error}") from error

    def stop(self) -> None:
        self._stop.set()

    def serve(self) -> int:
        """Serve until stopped; returns the number of peers that finished a measurement."""
        import zmq

        finished = 0
        try:
            while not self._stop.is_set():
                if not self._socket.poll(POLL_MS, zmq.POLLIN):
                    continue
                frames = self._socket.recv_multipart(copy=False)
                size = len(frames[1].buffer) if len(frames) > 1 else 0
                self._socket.send_multipart([b"ok", str(size).encode()])
                if frames[0].bytes == b"bye":
                    finished += 1
                    if self._sessions is not None and finished >= self._sessions:
                        break
        finally:
            self._socket.close()
        return finished


def measure_link(
    endpoint: str, sizes: list[int], repeats: int = 10, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Median round trip for every size (plus an empty ping), then both fits."""
    import zmq

    if repeats < 1:
        raise ProfileError(f"--repeats must be at least 1, got {repeats}")
    context: Any = zmq.Context.instance()
    peer = context.socket(zmq.REQ)
    peer.setsockopt(zmq.LINGER, 0)
    peer.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1000))
    peer.connect(endpoint)
    try:
        ping = _round_trips(peer, None, repeats, endpoint)
        payloads = {size: np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
                    for size in sizes}
        rtt = [statistics.median(_round_trips(peer, payloads[size], repeats, endpoint))
               for size in sizes]
        _exchange(peer, [b"bye"], endpoint)
    finally:
        peer.close()
    return link_profile(endpoint, sizes, rtt, statistics.median(ping), repeats)


def _round_trips(peer: Any, payload: np.ndarray | None, repeats: int, endpoint: str) -> list[float]:
    frames: list[Any] = [b"ping"] if payload is None else [b"data", payload]
    _exchange(peer, frames, endpoint)  # warm-up: connection set up, buffers allocated
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        _exchange(peer, frames, endpoint)
        timings.append((time.perf_counter() - began) * 1000.0)
    return timings


def _exchange(peer: Any, frames: list[Any], endpoint: str) -> None:
    import zmq

    peer.send_multipart(frames, copy=False)
    try:
        reply = peer.recv_multipart()
    except zmq.Again as error:
        raise ProfileError(f"--peer {endpoint}: no answer (is `splitdnn netprofile --serve "
                           f"{endpoint}` running?)") from error
    expected = len(frames[1]) if len(frames) > 1 else 0
    if reply != [b"ok", str(expected).encode()]:
        raise ProfileError(f"--peer {endpoint}: unexpected reply {reply[:2]!r}")


@dataclass(frozen=True)
class Fit:
    """A fitted link model's errors at the measured sizes."""

    rmse_ms: float
    mape: float
    max_rel_error: float


def _errors(measured: np.ndarray, fitted: np.ndarray) -> Fit:
    relative = np.abs(fitted - measured) / measured
    return Fit(rmse_ms=float(np.sqrt(np.mean((fitted - measured) ** 2))),
               mape=float(100 * relative.mean()), max_rel_error=float(relative.max()))


def fit_polynomial(sizes_mb: np.ndarray, latency_ms: np.ndarray) -> dict[str, Any]:
    """Least squares on relative error of ``sum(c_k * MB**k)``, k <= 4 (fewer with few sizes)."""
    degree = min(POLYNOMIAL_DEGREE, len(sizes_mb) - 1)
    coefficients = np.polynomial.polynomial.polyfit(sizes_mb, latency_ms, degree,
                                                    w=1.0 / latency_ms)
    fitted = np.polynomial.polynomial.polyval(sizes_mb, coefficients)
    return {"degree": degree, "unit": "MB", "coefficients": [float(c) for c in coefficients],
            "valid_mb": [float(sizes_mb.min()), float(sizes_mb.max())],
            **_errors(latency_ms, fitted).__dict__}


def fit_linear(sizes_mb: np.ndarray, latency_ms: np.ndarray) -> dict[str, Any]:
    """``latency + MB / bandwidth``, least squares on relative error, both terms non-negative."""
    weights = 1.0 / latency_ms
    design = np.stack([np.ones_like(sizes_mb), sizes_mb], axis=1) * weights[:, None]
    (latency, per_mb), *_ = np.linalg.lstsq(design, latency_ms * weights, rcond=None)
    if latency < 0:
        latency = 0.0
        per_mb = float(np.sum(sizes_mb * latency_ms * weights**2)
                       / np.sum((sizes_mb * weights) ** 2))
    per_mb = max(float(per_mb), 1e-12)
    fitted = latency + per_mb * sizes_mb
    return {"latency_ms": float(latency), "bandwidth_mb_s": 1000.0 / per_mb,
            **_errors(latency_ms, fitted).__dict__}


def link_profile(
    endpoint: str, sizes: list[int], rtt_ms: list[float], ping_ms: float, repeats: int
) -> dict[str, Any]:
    """The link profile file: measurements, both fits and where they were taken."""
    sizes_mb = np.array(sizes, dtype=np.float64) / MB
    latency = np.array(rtt_ms, dtype=np.float64)
    fits: dict[str, Any] = {"linear": fit_linear(sizes_mb, latency)}
    if len(sizes) >= 2:
        fits["polynomial"] = fit_polynomial(sizes_mb, latency)
    return {
        "kind": "link",
        "endpoint": endpoint,
        "transport": endpoint.split("://", 1)[0],
        "node": socket.gethostname(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "repeats": repeats,
        "ping_ms": ping_ms,
        "sizes_bytes": sizes,
        "rtt_ms": rtt_ms,
        "fits": fits,
    }


def predict_transfer_ms(profile: dict[str, Any], size_bytes: int) -> float:
    """Transfer time of a message: the polynomial inside its measured range, else linear."""
    size_mb = size_bytes / MB
    polynomial = profile["fits"].get("polynomial")
    if polynomial is not None:
        low, high = polynomial["valid_mb"]
        if low <= size_mb <= high:
            value = np.polynomial.polynomial.polyval(size_mb, polynomial["coefficients"])
            return max(float(value), 0.0)
    linear = profile["fits"]["linear"]
    return float(linear["latency_ms"] + 1000.0 * size_mb / linear["bandwidth_mb_s"])
