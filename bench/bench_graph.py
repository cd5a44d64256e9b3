"""Benchmark the model graph: export, inspect, split and verify of a large model (ResNet-152).

Measures, in one run on this machine: cold export (empty cache), warm ``inspect`` in-process
(median of 5) and through the CLI, the size of every block for a 4-block balanced split and
for a split at every cut point (duplication overhead = sum of block files / whole model
file), split time and verify error. Prints a markdown section; ``--write FILE`` replaces the
section between its markers in that file.

    python bench/bench_graph.py --model torchvision:resnet152 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from markdown import write_section


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by ``action`` and its result."""
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def machine() -> str:
    """CPU model, cores, memory and library versions, for the record."""
    import onnx
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())
    memory_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text()
                      .splitlines() if line.startswith("MemTotal"))
    return (f"{cpu}, {os.cpu_count()} cores, {memory_kib / 2**20:.0f} GiB; Python "
            f"{platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
            f"onnxruntime {onnxruntime.__version__}")


def analyse(reference: str) -> tuple[Any, Any]:
    from splitdnn.graph import analyse_model, resolve_model

    resolved = resolve_model(reference)
    return resolved, analyse_model(resolved.onnx_path, resolved.input_shape, source=reference)


def split_report(graph: Any, cuts: list[int], whole_bytes: int, label: str) -> list[str]:
    """Split at ``cuts``, verify, and describe the blocks as markdown lines."""
    from splitdnn.graph import split_model, verify_blocks

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "blocks"
        seconds, manifest = timed(lambda: split_model(graph, cuts, out))
        report = verify_blocks(out, samples=2)
    sizes = [block["bytes"] for block in manifest.blocks]
    lines = [
        f"**{label}** — {len(sizes)} blocks, split in {seconds:.2f} s, verify max abs error "
        f"{report.max_abs_error:.2e} ({'pass' if report.passed else 'FAIL'}), "
        f"{sum(block['batch_free'] for block in manifest.blocks)} of {len(sizes)} batch-free; "
        f"sum of block files / whole model file = {sum(sizes) / whole_bytes:.4f}",
        "",
    ]
    if len(sizes) <= 8:
        lines += ["| block | layers | output shape | file size |", "|---|---|---|---|"]
        lines += [f"| {block['index']} | {block['layers'][0]}–{block['layers'][1]} | "
                  f"{block['output']['shape']} | {block['bytes'] / 1e6:.2f} MB |"
                  for block in manifest.blocks]
    else:
        lines.append(f"block sizes (MB): {', '.join(f'{size / 1e6:.2f}' for size in sizes)}")
    return [*lines, ""]


def cli_inspect_seconds(reference: str) -> float:
    command = [sys.executable, "-m", "splitdnn", "inspect", reference, "--json"]
    seconds, _ = timed(lambda: subprocess.run(command, check=True, capture_output=True))
    return seconds


def run(reference: str) -> str:
    from splitdnn.graph.blocks import balanced_cuts

    with tempfile.TemporaryDirectory() as cold_cache:
        os.environ["SPLITDNN_CACHE_DIR"] = cold_cache
        cold, (resolved, graph) = timed(lambda: analyse(reference))
        warm = statistics.median(timed(lambda: analyse(reference))[0] for _ in range(5))
        cli = cli_inspect_seconds(reference)
        whole = resolved.onnx_path.stat().st_size
        gflops = sum(layer.flops for layer in graph.layers) / 1e9
        lines = [
            f"## Model graph: `{reference}` ({date.today().isoformat()})",
            "",
            f"Machine: {machine()}.",
            "",
            "| step | time |",
            "|---|---|",
            f"| cold: export to ONNX + inspect (empty cache) | {cold:.2f} s |",
            f"| warm inspect, in process (median of 5) | {warm:.3f} s |",
            f"| warm `splitdnn inspect --json` (new process, imports included) | {cli:.2f} s |",
            "",
            f"{len(graph.layers)} layers, {len(graph.cut_points)} cut points, "
            f"{len(graph.segments)} segments, {gflops:.1f} GFLOPs; "
            f"whole model file {whole / 1e6:.1f} MB.",
            "",
        ]
        lines += split_report(graph, balanced_cuts(graph, 4), whole, "4 blocks of similar FLOPs")
        lines += split_report(graph, graph.cut_points, whole, "every cut point")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet152")
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()
    section = run(args.model)
    print(section)
    if args.write:
        write_section(args.write, "bench_graph", section)


if __name__ == "__main__":
    main()
