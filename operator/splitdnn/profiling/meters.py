"""Energy meters: NVML on NVIDIA GPUs, INA3221 rails on Jetson boards, RAPL on x86 CPUs.

A meter measures the energy spent between :meth:`EnergyMeter.begin` and
:meth:`EnergyMeter.end`, in millijoules. Counter meters (NVML's total-energy counter, RAPL's
``energy_uj``) read the counter twice; the INA3221 exposes instantaneous power only, so a
background thread samples it and integrates. :func:`detect_meter` returns the first meter
that really works on this machine, or None: where nothing measures energy, profiles record
``energy_mj: null`` rather than a guess.

The sysfs root is a parameter so that the readers can be exercised on a directory laid out
like ``/sys``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Protocol

RAPL_DIR = "class/powercap"
INA3221_DRIVERS = ("bus/i2c/drivers/ina3221x", "bus/i2c/drivers/ina3221")
TOTAL_RAIL_NAMES = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0", "VDD_IN_SYS")
POWER_SAMPLE_S = 0.01
# NVML's energy counter and RAPL update every few to 100 ms: measure over at least this long.
MIN_ENERGY_WINDOW_S = 0.5


class EnergyMeter(Protocol):
    """Energy between begin() and end(), in millijoules (None when the reading failed)."""

    name: str

    def begin(self) -> None: ...

    def end(self) -> float | None: ...


class NvmlMeter:
    """The GPU's total-energy counter (Volta and newer), via nvidia-ml-py."""

    name = "nvml"

    def __init__(self, nvml: Any, handle: Any) -> None:
        self._nvml = nvml
        self._handle = handle
        self._start = 0

    def _read(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def begin(self) -> None:
        self._start = self._read()

    def end(self) -> float | None:
        return float(self._read() - self._start)


def nvml_meter(device_index: int = 0) -> NvmlMeter | None:
    """An NVML meter for one GPU, or None without a driver, a GPU or an energy counter."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
        meter = NvmlMeter(pynvml, handle)
        meter.begin()
    except Exception:  # NVMLError subclasses, or the library missing altogether
        return None
    return meter


class RaplMeter:
    """Sum of the top-level RAPL package domains' ``energy_uj`` counters, wrap-around aware."""

    name = "rapl"

    def __init__(self, domains: list[Path]) -> None:
        self._domains = domains
        self._ranges = [int((domain / "max_energy_range_uj").read_text()) for domain in domains]
        self._start: list[int] = []

    def _read(self) -> list[int]:
        return [int((domain / "energy_uj").read_text()) for domain in self._domains]

    def begin(self) -> None:
        self._start = self._read()

    def end(self) -> float | None:
        total_uj = 0
        for before, after, wrap in zip(self._start, self._read(), self._ranges, strict=True):
            total_uj += after - before if after >= before else after + wrap - before
        return total_uj / 1000.0


def rapl_meter(sysfs: Path = Path("/sys")) -> RaplMeter | None:
    """A RAPL meter over every CPU package, or None where powercap is absent or unreadable."""
    root = sysfs / RAPL_DIR
    domains = sorted(path for path in root.glob("intel-rapl:*")
                     if path.name.count(":") == 1 and (path / "energy_uj").is_file())
    if not domains:
        return None
    try:
        meter = RaplMeter(domains)
        meter.begin()
    except (OSError, ValueError):  # energy_uj is root-only on recent kernels
        return None
    return meter


class PowerRail:
    """One INA3221 channel: power in milliwatts, from either sysfs layout."""

    def __init__(self, label: str, power: Path | None = None,
                 voltage: Path | None = None, current: Path | None = None) -> None:
        self.label = label
        self._power, self._voltage, self._current = power, voltage, current

    def milliwatts(self) -> float:
        if self._power is not None:
            return float(self._power.read_text())
        assert self._voltage is not None and self._current is not None
        return float(self._voltage.read_text()) * float(self._current.read_text()) / 1000.0


class Ina3221Meter:
    """Integrates Jetson board power (the input rail, else the sum of rails) sampled in a thread."""

    name = "ina3221"

    def __init__(self, rails: list[PowerRail], period_s: float = POWER_SAMPLE_S) -> None:
        self._rails = rails
        self._period = period_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._energy_mj = 0.0
        self._failed = False

    def _power_mw(self) -> float:
        return sum(rail.milliwatts() for rail in self._rails)

    def _sample(self) -> None:
        last_time, last_power = time.perf_counter(), self._power_mw()
        while not self._stop.wait(self._period):
            try:
                power = self._power_mw()
            except (OSError, ValueError):
                self._failed = True
                return
            now = time.perf_counter()
            self._energy_mj += 0.5 * (power + last_power) * (now - last_time)
            last_time, last_power = now, power

    def begin(self) -> None:
        self._stop.clear()
        self._energy_mj, self._failed = 0.0, False
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def end(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return None if self._failed else self._energy_mj


def ina3221_meter(sysfs: Path = Path("/sys")) -> Ina3221Meter | None:
    """A meter over the Jetson INA3221 rails, or None where the driver is absent."""
    rails = [rail for driver in INA3221_DRIVERS for rail in _rails(sysfs / driver)]
    if not rails:
        return None
    total = [rail for rail in rails if rail.label.upper() in TOTAL_RAIL_NAMES]
    chosen = total[:1] or rails
    try:
        for rail in chosen:
            rail.milliwatts()
    except (OSError, ValueError):
        return None
    return Ina3221Meter(chosen)


def _rails(driver: Path) -> list[PowerRail]:
    """Channels of every INA3221 under a driver directory, old (iio) or new (hwmon) layout."""
    rails = []
    for power in sorted(driver.glob("*/iio:device*/in_power*_input")):
        channel = power.name.removeprefix("in_power").removesuffix("_input")
        label = power.parent / f"rail_name_{channel}"
        rails.append(PowerRail(_label(label, power.name), power=power))
    for voltage in sorted(driver.glob("*/hwmon/hwmon*/in*_input")):
        channel = voltage.name.removeprefix("in").removesuffix("_input")
        current = voltage.parent / f"curr{channel}_input"
        if current.is_file():
            label = voltage.parent / f"in{channel}_label"
            rails.append(PowerRail(_label(label, voltage.name), voltage=voltage, current=current))
    return rails


def _label(path: Path, fallback: str) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return fallback


def detect_meter(provider: str = "cpu", sysfs: Path = Path("/sys")) -> EnergyMeter | None:
    """The first working meter for the provider: NVML for CUDA, RAPL for the CPU, else INA3221."""
    if provider == "cuda":
        gpu = nvml_meter()
        if gpu is not None:
            return gpu
    else:
        cpu = rapl_meter(sysfs)
        if cpu is not None:
            return cpu
    return ina3221_meter(sysfs)
