"""Shared helpers of the benchmark scripts: the machine record and docs/benchmarks.md sections.

Kept out of the scripts themselves so that both print the same machine line, and named so
that it cannot shadow an installed package (the scripts' folder comes first on sys.path).
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def write_section(path: Path, name: str, section: str) -> None:
    """Replace the section between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, or append."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{section.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def _proc_field(path: str, key: str) -> str | None:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def cpu_and_memory() -> str:
    """CPU model, logical cores and total memory, e.g. ``AMD EPYC 7B13, 2 cores, 24 GiB``."""
    cpu = _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    memory = _proc_field("/proc/meminfo", "MemTotal")
    gib = f"{int(memory.split()[0]) / 2**20:.0f} GiB" if memory else "unknown memory"
    return f"{cpu}, {os.cpu_count()} cores, {gib}"


def load_average() -> str:
    """The 1-minute load average, to show whether other work shared the machine."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def versions() -> str:
    """Python and the versions of the libraries that decide the numbers."""
    from importlib import metadata

    def version(*names: str) -> str:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return "absent"

    return (f"Python {platform.python_version()}, torch {version('torch')}, "
            f"torchvision {version('torchvision')}, onnx {version('onnx')}, "
            f"onnxruntime {version('onnxruntime', 'onnxruntime-gpu')}")


def code_version() -> str:
    """Short commit of the working tree measured, with ``+dirty`` when it has changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--", "operator") else "")


def machine_line() -> str:
    """One sentence naming the machine, software and code, for the top of a section."""
    return (f"Machine: {cpu_and_memory()}, no GPU used; {versions()}; splitdnn at "
            f"{code_version()}.")
