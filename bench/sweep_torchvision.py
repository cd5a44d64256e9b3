"""Export, inspect, split and verify every torchvision classification model.

Each model runs in its own subprocess with a time limit, so one crash, OOM or hang does not
end the sweep. Models whose weights metadata says they exceed ``--skip-over-params`` are
listed as skipped (they need more memory and time than a 2-core, 24 GiB machine has to
spare). Prints a markdown table; ``--write FILE`` replaces its section in that file.

    python bench/sweep_torchvision.py --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

from markdown import write_section


def run_one(name: str) -> dict[str, Any]:
    """Export + analyse + split into 4 balanced blocks + verify one model (in this process)."""
    from splitdnn.graph import GraphError, analyse_model, resolve_model, split_model, verify_blocks
    from splitdnn.graph.blocks import balanced_cuts

    began = time.perf_counter()
    try:
        resolved = resolve_model(f"torchvision:{name}")
        exported = time.perf_counter()
        graph = analyse_model(resolved.onnx_path, resolved.input_shape, source=name)
        with tempfile.TemporaryDirectory() as scratch:
            manifest = split_model(graph, balanced_cuts(graph, 4), Path(scratch) / "blocks")
            report = verify_blocks(Path(scratch) / "blocks", samples=2)
    except GraphError as error:
        return {"name": name, "status": "error", "message": str(error)}
    return {
        "name": name,
        "status": "ok" if report.passed else "verify-failed",
        "input": list(graph.input.shape),
        "layers": len(graph.layers),
        "cut_points": len(graph.cut_points),
        "gflops": sum(layer.flops for layer in graph.layers) / 1e9,
        "blocks": len(manifest.blocks),
        "batch_free": sum(block["batch_free"] for block in manifest.blocks),
        "max_abs_error": report.max_abs_error,
        "export_s": exported - began,
        "total_s": time.perf_counter() - began,
    }


def parameter_count(name: str) -> int | None:
    """Parameters according to the weights metadata (no download), or None if unknown."""
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except (ValueError, KeyError, AttributeError):
        return None


def run_isolated(name: str, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--one", name]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "status": "timeout", "message": f"over {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"name": name, "status": "crashed", "message": f"exit {done.returncode}: {tail}"}
    return dict(json.loads(lines[-1]))


def row(result: dict[str, Any]) -> str:
    if result["status"] not in ("ok", "verify-failed"):
        return f"| {result['name']} | {result['status']} | {result.get('message', '')} |||||"
    return (f"| {result['name']} | {result['status']} | {result['input'][2]} px | "
            f"{result['layers']} | {result['cut_points']} | {result['gflops']:.2f} | "
            f"{result['batch_free']}/{result['blocks']} | {result['max_abs_error']:.1e} | "
            f"{result['total_s']:.1f} s |")


def table(results: list[dict[str, Any]], machine: str) -> str:
    passed = sum(result["status"] == "ok" for result in results)
    attempted = sum(result["status"] != "skipped" for result in results)
    return "\n".join([
        f"## Every torchvision classification model ({date.today().isoformat()})",
        "",
        f"Machine: {machine}. Random weights (seed 0, BatchNorm calibrated), default input "
        "size, split into 4 blocks of similar FLOPs, verified on 2 random inputs at "
        "ORT `extended` optimisation. Time = export + analyse + split + verify.",
        "",
        f"**{passed} of {attempted} models attempted split and verified** "
        f"({len(results) - attempted} skipped as too large for this machine).",
        "",
        "| model | status | input | layers | cut points | GFLOPs | batch-free blocks | "
        "max abs error | time |",
        "|---|---|---|---|---|---|---|---|---|",
        *(row(result) for result in results),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--skip-over-params", type=float, default=400e6)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one)), flush=True)
        return
    from bench_graph import machine

    from splitdnn.graph.sources import classification_models

    names = args.only.split(",") if args.only else classification_models()
    results = []
    for name in names:
        params = parameter_count(name)
        if params and params > args.skip_over_params:
            results.append({"name": name, "status": "skipped",
                            "message": f"{params / 1e6:.0f} M parameters"})
        else:
            results.append(run_isolated(name, args.timeout))
        print(row(results[-1]), flush=True)
    section = table(results, machine())
    if args.write:
        write_section(args.write, "sweep_torchvision", section)


if __name__ == "__main__":
    main()
