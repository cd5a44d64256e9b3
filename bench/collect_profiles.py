"""Build a real profile dataset on this machine: several CPU hardware classes × many models.

The classes truly differ in how they run the same segments: ONNX Runtime on 1 or 2 threads,
and 1 or 2 threads under a CFS CPU quota (25 % or 50 % of one core). Each quota class runs
its ``splitdnn profile`` processes inside its own cgroup (v1 ``cpu.cfs_quota_us`` or v2
``cpu.max``, whichever this machine has; creating one needs root). Models are the outer
loop and classes the inner one, so that the load from other work on a shared machine
spreads over all classes instead of biasing one. For the same reason the latency is the
*minimum* of the samples (the least-disturbed one) rather than the median. Every sample is
at least ``--min-sample-ms`` of CPU work (back-to-back runs; two CFS periods of the quota
classes), so all classes measure the sustained speed of an otherwise idle node.

Every model's profile goes to ``RAW/CLASS/MODEL.json``; the per-class merges (see
``splitdnn.profiling.merge_profiles``) go to ``OUT/CLASS.json``::

    python bench/collect_profiles.py --raw out/profiles-raw --out tests/data/profiles
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from doc_section import load_average

MODELS = [
    "alexnet", "vgg11", "resnet18", "resnet34", "resnet50", "mobilenet_v2",
    "mobilenet_v3_small", "squeezenet1_1", "shufflenet_v2_x1_0", "mnasnet1_0",
    "efficientnet_b0", "regnet_x_400mf",
]
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 5000  # short periods make a quota act like a slower core, not a stutter


@dataclass(frozen=True)
class HardwareClass:
    """One emulated kind of node: ORT threads and an optional CPU quota (in cores)."""

    name: str
    threads: int
    quota: float | None = None


CLASSES = [
    HardwareClass("cpu-1t", 1),
    HardwareClass("cpu-2t", 2),
    HardwareClass("cpu-1t-q50", 1, 0.5),
    HardwareClass("cpu-1t-q25", 1, 0.25),
    HardwareClass("cpu-2t-q50", 2, 0.5),
]


def make_cgroup(name: str, quota: float) -> Path:
    """A cgroup limited to ``quota`` cores; returns the file a pid is written to to join it."""
    if (CGROUP_V1 / "cpu.cfs_quota_us").is_file():
        group = CGROUP_V1 / name
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (group / "cpu.cfs_quota_us").write_text(str(int(quota * CFS_PERIOD_US)))
        return group / "tasks"
    if (CGROUP_V2 / "cgroup.controllers").is_file():
        group = CGROUP_V2 / name
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{int(quota * CFS_PERIOD_US)} {CFS_PERIOD_US}")
        return group / "cgroup.procs"
    raise SystemExit("no cgroup v1 cpu controller or cgroup v2 cpu.max here: cannot set quotas")


def joiner(tasks: Path | None) -> Callable[[], None] | None:
    """A preexec function that moves the child into the cgroup before it runs anything."""
    if tasks is None:
        return None
    return lambda: tasks.write_text(str(os.getpid()))


def export_all(models: list[str]) -> None:
    """Export every model once, outside any quota, so that profiling times only ORT."""
    from splitdnn.graph import resolve_model

    for name in models:
        resolve_model(f"torchvision:{name}")


def profile_command(
    model: str, hw: HardwareClass, out: Path, args: argparse.Namespace
) -> list[str]:
    return [
        str(Path(sys.executable).with_name("splitdnn")), "profile", f"torchvision:{model}",
        "--out", str(out), "--hardware-class", hw.name, "--threads", str(hw.threads),
        "--sample-fraction", str(args.sample_fraction), "--repeats", str(args.repeats),
        "--min-sample-ms", str(args.min_sample_ms),
        "--statistic", args.statistic, "--json",
    ]


def merge(raw: Path, out: Path) -> None:
    """One compact file per class; its meta records how repeatable the measurements were."""
    from splitdnn.profiling import Profile, merge_profiles

    out.mkdir(parents=True, exist_ok=True)
    for directory in sorted(path for path in raw.iterdir() if path.is_dir()):
        profiles = [Profile.load(path) for path in sorted(directory.glob("*.json"))]
        if not profiles:
            continue
        merged = merge_profiles(profiles)
        merged.meta.update(repeatability(profiles, merged))
        loads = [value for profile in profiles
                 for value in (profile.meta.get("load_average") or {}).values() if value]
        merged.meta["load_average_1min"] = [min(load[0] for load in loads),
                                            max(load[0] for load in loads)] if loads else None
        for entry in merged.entries.values():
            entry.models = []
        target = out / f"{merged.hardware_class}.json"
        merged.save(target, compact=True)
        print(f"{merged.hardware_class}: {len(merged.entries)} signatures from "
              f"{len(profiles)} models -> {target} ({target.stat().st_size // 1024} KB); "
              f"repeat noise {merged.meta['repeat_noise_pct']}")


def repeatability(profiles: list[Any], merged: Any) -> dict[str, Any]:
    """Median deviation of a signature measured in several models from their merged value."""
    deviations = [abs(entry.latency_ms / merged.entries[key].latency_ms - 1)
                  for profile in profiles for key, entry in profile.entries.items()
                  if merged.entries[key].samples > entry.samples]
    return {"repeat_noise_pct": round(100 * statistics.median(deviations), 1)
            if deviations else None, "repeat_measurements": len(deviations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("out/profiles-raw"))
    parser.add_argument("--out", type=Path, default=Path("tests/data/profiles"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--classes", default=",".join(hw.name for hw in CLASSES))
    parser.add_argument("--sample-fraction", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--min-sample-ms", type=float, default=10.0,
                        help="CPU work per sample (two CFS periods of the quota classes)")
    parser.add_argument("--statistic", default="min", choices=["median", "min"])
    parser.add_argument("--merge-only", action="store_true")
    args = parser.parse_args()
    if not args.merge_only:
        models = args.models.split(",")
        wanted = set(args.classes.split(","))
        classes = [hw for hw in CLASSES if hw.name in wanted]
        export_all(models)
        groups = {hw.name: make_cgroup(f"splitdnn-{hw.name}", hw.quota) if hw.quota else None
                  for hw in classes}
        for model in models:
            for hw in classes:
                target = args.raw / hw.name / f"{model}.json"
                if target.is_file():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                began = time.perf_counter()
                subprocess.run(profile_command(model, hw, target, args), check=True,
                               stdout=subprocess.DEVNULL, preexec_fn=joiner(groups[hw.name]))
                print(f"{model} on {hw.name}: {time.perf_counter() - began:.1f} s, "
                      f"load {load_average()}", flush=True)
    merge(args.raw, args.out)


if __name__ == "__main__":
    main()
