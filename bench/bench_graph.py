"""Benchmark the model graph on one large model: inspect time and the size of every block.

For ``torchvision:resnet152`` by default, in one run on this machine:

- cold export: ``resolve_model`` into an empty, temporary cache (ONNX export included),
  then the first ``analyse_model``;
- warm ``inspect``: resolve + analyse in this process (median of ``--repeats``), and once
  through the CLI in a new process (``splitdnn inspect MODEL --json``, imports included);
- layers, cut points, segments, GFLOPs and the whole model's file size;
- two splits, into ``--blocks`` blocks of similar FLOPs and at every cut point (one block per
  segment): split time, verify time and max abs error, every block's file size, and the
  duplication overhead = sum of block files / whole model file.

Prints a markdown section; ``--write FILE`` replaces the ``bench_graph`` section of FILE::

    python bench/bench_graph.py --write docs/benchmarks.md      # what `make bench` runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from doc_section import load_average, machine_line, write_section

T = TypeVar("T")
INLINE_BLOCK_TABLE = 8  # splits with more blocks list their sizes on one line


@dataclass(frozen=True)
class SplitResult:
    """What one split + verify produced."""

    label: str
    blocks: list[dict[str, Any]]
    split_s: float
    verify_s: float
    max_abs_error: float
    passed: bool

    @property
    def total_bytes(self) -> int:
        return sum(int(block["bytes"]) for block in self.blocks)


def timed(action: Callable[[], T]) -> tuple[float, T]:
    """Seconds taken by ``action`` and its result."""
    began = time.perf_counter()
    result = action()
    return time.perf_counter() - began, result


def model_bytes(onnx_path: Path) -> int:
    """Size of an ONNX file plus its external data file, if it has one."""
    data = onnx_path.with_name(onnx_path.name + ".data")
    return onnx_path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def analyse(reference: str) -> tuple[Any, Any]:
    """Resolve (exporting if not cached) and analyse: what ``splitdnn inspect`` does."""
    from splitdnn.graph import analyse_model, resolve_model

    resolved = resolve_model(reference)
    return resolved, analyse_model(resolved.onnx_path, resolved.input_shape, source=reference)


def cold_inspect(reference: str) -> tuple[float, float, Any, Any]:
    """Export into the (empty) cache, then analyse: seconds for each, resolved model, graph."""
    from splitdnn.graph import analyse_model, resolve_model

    export_s, resolved = timed(lambda: resolve_model(reference))
    analyse_s, graph = timed(
        lambda: analyse_model(resolved.onnx_path, resolved.input_shape, source=reference))
    return export_s, analyse_s, resolved, graph


def warm_inspect(reference: str, repeats: int) -> float:
    """Median seconds of resolve + analyse with the export cached."""
    return statistics.median(timed(lambda: analyse(reference))[0] for _ in range(repeats))


def cli_command() -> list[str]:
    """The installed ``splitdnn`` script beside this interpreter, else ``python -m splitdnn``."""
    script = Path(sys.executable).with_name("splitdnn")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "splitdnn"]


def cli_inspect(reference: str, expected_layers: int) -> float:
    """Wall time of ``splitdnn inspect MODEL --json`` in a new process; checks its output."""
    command = [*cli_command(), "inspect", reference, "--json"]
    seconds, done = timed(lambda: subprocess.run(command, capture_output=True, text=True))
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}): {done.stderr}")
    layers = len(json.loads(done.stdout)["layers"])
    if layers != expected_layers:
        raise SystemExit(f"CLI inspect found {layers} layers, the library {expected_layers}")
    return seconds


def split_and_verify(graph: Any, cuts: list[int], label: str, samples: int) -> SplitResult:
    """Split at ``cuts`` into a scratch folder, verify, and delete the blocks."""
    from splitdnn.graph import split_model, verify_blocks

    scratch = Path(tempfile.mkdtemp(prefix="bench-graph-"))
    try:
        split_s, manifest = timed(lambda: split_model(graph, cuts, scratch / "blocks"))
        verify_s, report = timed(lambda: verify_blocks(scratch / "blocks", samples=samples))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return SplitResult(label, manifest.blocks, split_s, verify_s,
                       report.max_abs_error, report.passed)


def megabytes(size: float) -> str:
    return f"{size / 1e6:.2f} MB"


def split_lines(result: SplitResult, whole_bytes: int, samples: int) -> list[str]:
    """Markdown for one split: summary sentence, then the blocks."""
    count = len(result.blocks)
    sizes = [int(block["bytes"]) for block in result.blocks]
    lines = [
        f"**{result.label}**: {count} blocks; split {result.split_s:.2f} s, verify "
        f"({samples} samples) {result.verify_s:.2f} s, max abs error "
        f"{result.max_abs_error:.1e} ({'pass' if result.passed else 'FAIL'}); "
        f"{sum(bool(block['batch_free']) for block in result.blocks)} of {count} blocks "
        f"batch-free. Sum of block files {megabytes(result.total_bytes)} = "
        f"**{result.total_bytes / whole_bytes:.4f}×** the whole model file "
        f"(+{megabytes(result.total_bytes - whole_bytes)}).",
        "",
    ]
    if count <= INLINE_BLOCK_TABLE:
        lines += ["| block | layers | input shape | output shape | GFLOPs | file size |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {block['index']} | {block['layers'][0]}–{block['layers'][1]} | "
                  f"{block['input']['shape']} | {block['output']['shape']} | "
                  f"{block['flops'] / 1e9:.2f} | {megabytes(block['bytes'])} |"
                  for block in result.blocks]
    else:
        smallest, largest = min(sizes), max(sizes)
        lines += [
            f"Block files from {smallest / 1e3:.1f} kB to {megabytes(largest)} (median "
            f"{statistics.median(sizes) / 1e3:.1f} kB).",
            "",
            "<details><summary>every block's file size, in block order (kB)</summary>",
            "",
            ", ".join(f"{size / 1e3:.1f}" for size in sizes),
            "",
            "</details>",
        ]
    return [*lines, ""]


def measure(reference: str, blocks: int, repeats: int, samples: int) -> str:
    """Run every measurement with a fresh cache and return the markdown section."""
    from splitdnn.graph.blocks import balanced_cuts

    load_before = load_average()
    cold_cache = Path(tempfile.mkdtemp(prefix="bench-graph-cache-"))
    os.environ["SPLITDNN_CACHE_DIR"] = str(cold_cache)  # inherited by the CLI process
    try:
        export_s, first_analyse_s, resolved, graph = cold_inspect(reference)
        warm_s = warm_inspect(reference, repeats)
        cli_s = cli_inspect(reference, len(graph.layers))
        whole = model_bytes(resolved.onnx_path)
        splits = [
            split_and_verify(graph, balanced_cuts(graph, blocks), f"{blocks} blocks of similar "
                             "FLOPs", samples),
            split_and_verify(graph, graph.cut_points, "Every cut point (one block per segment)",
                             samples),
        ]
    finally:
        shutil.rmtree(cold_cache, ignore_errors=True)
    gflops = sum(layer.flops for layer in graph.layers) / 1e9
    params = sum(layer.params_bytes for layer in graph.layers)
    lines = [
        f"## Model graph: `{reference}` ({date.today().isoformat()})",
        "",
        f"{machine_line()} Load average {load_before} at the start, {load_average()} at the "
        "end (other jobs may share the 2 cores; times are wall clock).",
        "",
        f"Input {list(graph.input.shape)}; **{len(graph.layers)} layers, "
        f"{len(graph.cut_points)} cut points, {len(graph.segments)} segments**; "
        f"{gflops:.2f} GFLOPs; parameters {megabytes(params)}; whole model file "
        f"{megabytes(whole)}.",
        "",
        "| step | time |",
        "|---|---|",
        f"| cold: export to ONNX (empty cache, includes importing torch) | {export_s:.2f} s |",
        f"| cold: first analyse after the export | {first_analyse_s:.2f} s |",
        f"| warm inspect in process: resolve + analyse (median of {repeats}) | {warm_s:.3f} s |",
        f"| warm `splitdnn inspect {reference} --json` (new process) | {cli_s:.2f} s |",
        "",
        "The cold export varies about 2× between runs: it includes importing torch, which "
        "reads ~1 GB of libraries from disk when the OS has not cached them yet.",
        "",
    ]
    for result in splits:
        lines += split_lines(result, whole, samples)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", default="torchvision:resnet152", help="model reference")
    parser.add_argument("--blocks", type=int, default=4, help="blocks in the balanced split")
    parser.add_argument("--repeats", type=int, default=5, help="warm inspect repetitions")
    parser.add_argument("--samples", type=int, default=2, help="random inputs for verify")
    parser.add_argument("--write", type=Path, help="markdown file whose section to replace")
    args = parser.parse_args()
    section = measure(args.model, args.blocks, args.repeats, args.samples)
    print(section)
    if args.write:
        write_section(args.write, "bench_graph", section)


if __name__ == "__main__":
    main()
