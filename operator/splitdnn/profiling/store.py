"""Profile files and profile stores.

A profile file (contract) is one JSON object::

    {hardware_class, node, runtime: {provider, threads, versions}, created,
     entries: {signature: {latency_ms, energy_mj, samples}}}

``energy_mj`` is null where no meter measured it. splitdnn adds, without changing those
fields: ``features`` per entry (op types, FLOPs, bytes: what the baseline regresses on),
``models`` per entry (where the signature was seen), and ``meta`` (models profiled, sample
fraction, repeats, load average). A directory of profile files is a *profile store*; a
hardware class may be spread over several files (one per model profiled), which
:func:`merge_profiles` combines.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitdnn.profiling.signature import SegmentFeatures


class ProfileError(ValueError):
    """A profile file or store that cannot be used, with the field that is wrong."""


@dataclass
class ProfileEntry:
    """One signature's measurement on one hardware class."""

    latency_ms: float
    energy_mj: float | None
    samples: int
    features: SegmentFeatures | None = None
    models: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"latency_ms": self.latency_ms, "energy_mj": self.energy_mj,
                                "samples": self.samples}
        if self.features is not None:
            data["features"] = self.features.to_dict()
        if self.models:
            data["models"] = self.models
        return data


@dataclass
class Profile:
    """Measurements of one hardware class (one profile file)."""

    hardware_class: str
    node: str
    runtime: dict[str, Any]
    entries: dict[str, ProfileEntry]
    created: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "hardware_class": self.hardware_class,
            "node": self.node,
            "runtime": self.runtime,
            "entries": {key: entry.to_dict() for key, entry in sorted(self.entries.items())},
            "created": self.created,
        }
        if self.meta:
            data["meta"] = self.meta
        return data

    def save(self, path: Path, compact: bool = False) -> None:
        """Write atomically (a reader never sees half a file); ``compact``: one line."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp",
                                         delete=False) as handle:
            json.dump(self.to_dict(), handle, indent=None if compact else 1,
                      separators=(",", ":") if compact else None)
            handle.write("\n")
        os.replace(handle.name, path)

    @classmethod
    def load(cls, path: Path) -> Profile:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ProfileError(f"{path}: not a readable JSON profile: {error}") from error
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, where: str = "profile") -> Profile:
        if not isinstance(data, dict):
            raise ProfileError(f"{where}: expected a JSON object")
        hardware_class = _field(data, "hardware_class", str, where)
        if not hardware_class:
            raise ProfileError(f"{where}: hardware_class must not be empty")
        runtime = _field(data, "runtime", dict, where)
        for key in ("provider", "threads", "versions"):
            if key not in runtime:
                raise ProfileError(f"{where}: runtime.{key} is missing")
        entries = _field(data, "entries", dict, where)
        return cls(
            hardware_class=hardware_class,
            node=_field(data, "node", str, where),
            runtime=runtime,
            entries={str(key): _entry(value, f"{where}: entries[{key!r}]")
                     for key, value in entries.items()},
            created=_field(data, "created", str, where),
            meta=dict(data.get("meta") or {}),
        )


def _field(data: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in data:
        raise ProfileError(f"{where}: field {name!r} is missing")
    value = data[name]
    if not isinstance(value, kind):
        raise ProfileError(f"{where}: field {name!r} must be a {kind.__name__}, "
                           f"got {type(value).__name__}")
    return value


def _entry(data: Any, where: str) -> ProfileEntry:
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected an object with latency_ms, energy_mj, samples")
    latency = data.get("latency_ms")
    if not isinstance(latency, int | float) or not latency > 0 or not math.isfinite(latency):
        raise ProfileError(f"{where}.latency_ms must be a positive number, got {latency!r}")
    energy = data.get("energy_mj")
    if energy is not None and (not isinstance(energy, int | float) or energy < 0):
        raise ProfileError(f"{where}.energy_mj must be null or a non-negative number, "
                           f"got {energy!r}")
    samples = data.get("samples")
    if not isinstance(samples, int) or samples < 1:
        raise ProfileError(f"{where}.samples must be a positive integer, got {samples!r}")
    features = data.get("features")
    return ProfileEntry(
        latency_ms=float(latency),
        energy_mj=None if energy is None else float(energy),
        samples=samples,
        features=SegmentFeatures.from_dict(features) if features else None,
        models=[str(model) for model in data.get("models", [])],
    )


def merge_profiles(profiles: Iterable[Profile]) -> Profile:
    """One profile per hardware class: a signature measured more than once gets the
    sample-weighted geometric mean of its latencies (and energies)."""
    profiles = list(profiles)
    if not profiles:
        raise ProfileError("nothing to merge")
    classes = {profile.hardware_class for profile in profiles}
    if len(classes) != 1:
        raise ProfileError(f"cannot merge profiles of different hardware classes: "
                           f"{sorted(classes)}")
    grouped: dict[str, list[ProfileEntry]] = {}
    for profile in profiles:
        for key, entry in profile.entries.items():
            grouped.setdefault(key, []).append(entry)
    if len(profiles) == 1:
        return profiles[0]
    latest = max(profiles, key=lambda profile: profile.created)
    models = sorted({model for profile in profiles for model in profile.meta.get("models", [])})
    return Profile(
        hardware_class=latest.hardware_class,
        node=latest.node,
        runtime=latest.runtime,
        entries={key: _merge_entries(entries) for key, entries in grouped.items()},
        created=latest.created,
        meta={"models": models, "merged_files": len(profiles)},
    )


def _merge_entries(entries: list[ProfileEntry]) -> ProfileEntry:
    if len(entries) == 1:
        return entries[0]
    measured = [entry for entry in entries if entry.energy_mj]
    return ProfileEntry(
        latency_ms=_weighted_geomean([(entry.latency_ms, entry.samples) for entry in entries]),
        energy_mj=_weighted_geomean([(entry.energy_mj or 0.0, entry.samples)
                                     for entry in measured]) if measured else None,
        samples=sum(entry.samples for entry in entries),
        features=next((entry.features for entry in entries if entry.features), None),
        models=sorted({model for entry in entries for model in entry.models}),
    )


def _weighted_geomean(values: list[tuple[float, int]]) -> float:
    weight = sum(count for _, count in values)
    return math.exp(sum(math.log(value) * count for value, count in values) / weight)


class ProfileStore:
    """A directory of profile files, merged per hardware class."""

    def __init__(self, directory: Path) -> None:
        if not directory.is_dir():
            raise ProfileError(f"--profiles {directory}: not a directory of profile files")
        files = sorted(directory.glob("*.json"))
        if not files:
            raise ProfileError(f"--profiles {directory}: no *.json profile files in it")
        self.directory = directory
        grouped: dict[str, list[Profile]] = {}
        for path in files:
            profile = Profile.load(path)
            grouped.setdefault(profile.hardware_class, []).append(profile)
        self.profiles = {name: merge_profiles(group) for name, group in sorted(grouped.items())}

    @property
    def classes(self) -> list[str]:
        return list(self.profiles)

    def features(self) -> dict[str, SegmentFeatures]:
        """Features of every signature any class measured."""
        table: dict[str, SegmentFeatures] = {}
        for profile in self.profiles.values():
            for key, entry in profile.entries.items():
                if entry.features is not None:
                    table.setdefault(key, entry.features)
        return table
