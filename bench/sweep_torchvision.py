"""Export, analyse, split and verify every torchvision classification model.

Each model runs in its own subprocess with a time limit, so that a crash, an out-of-memory
kill or a hang costs one row, not the sweep. A model is exported into a fresh scratch cache
(so every export time is a cold one) and split into ``--blocks`` blocks of similar FLOPs,
which are verified against the whole model on ``--samples`` random inputs; the scratch
folder, export and blocks included, is deleted before the next model starts. Models whose
weights metadata gives more than ``--skip-over-params`` parameters are listed as skipped.

Prints one row per model as it finishes; ``--results FILE`` keeps them as JSON lines (a
re-run skips the models already there), ``--write FILE`` replaces the
``sweep_torchvision`` section of FILE::

    python bench/sweep_torchvision.py --write docs/benchmarks.md      # `make bench-sweep`
    python bench/sweep_torchvision.py --only resnet18,vit_b_16 --timeout 120
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from doc_section import load_average, machine_line, write_section

T = TypeVar("T")
DEFAULT_SKIP_OVER_PARAMS = 400e6  # vit_h_14 (633 M) and regnet_y_128gf (645 M); not vit_l_*
FAILED = ("export error", "analysis error", "split error", "verify error", "crashed", "timeout")


class StageError(Exception):
    """A step of one model's run failed; ``status`` names the step."""

    def __init__(self, status: str, error: BaseException) -> None:
        super().__init__(describe(error))
        self.status = status


def describe(error: BaseException) -> str:
    """One line: the message of a GraphError, else type, message and where it was raised."""
    from splitdnn.graph import GraphError

    text = (str(error).strip().splitlines() or [""])[0][:400]
    if isinstance(error, GraphError):
        return text
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno} in {frame.name})" if frame else ""
    return f"{type(error).__name__}: {text}{where}"


def stage(status: str, times: dict[str, float], key: str, action: Callable[[], T]) -> T:
    """Run one step, recording its seconds under ``key``; failures become a StageError."""
    began = time.perf_counter()
    try:
        return action()
    except Exception as error:  # every failure is a result to report, not a crash
        raise StageError(status, error) from error
    finally:
        times[key] = round(time.perf_counter() - began, 3)


def model_bytes(onnx_path: Path) -> int:
    """Size of an ONNX file plus its external data file, if it has one."""
    data = onnx_path.with_name(onnx_path.name + ".data")
    return onnx_path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def run_one(name: str, blocks: int, samples: int, scratch: Path) -> dict[str, Any]:
    """Export + analyse + split + verify one model in this process; blocks go to ``scratch``."""
    from splitdnn.graph import analyse_model, resolve_model, split_model, verify_blocks
    from splitdnn.graph.blocks import balanced_cuts

    times: dict[str, float] = {}
    result: dict[str, Any] = {"name": name, "times": times}
    try:
        resolved = stage("export error", times, "export",
                         lambda: resolve_model(f"torchvision:{name}"))
        graph = stage("analysis error", times, "analyse",
                      lambda: analyse_model(resolved.onnx_path, resolved.input_shape,
                                            source=f"torchvision:{name}"))
        result.update(graph_facts(graph, model_bytes(resolved.onnx_path)))
        cuts = balanced_cuts(graph, blocks)
        manifest = stage("split error", times, "split",
                         lambda: split_model(graph, cuts, scratch / "blocks"))
        result.update(cuts=cuts, blocks=len(manifest.blocks),
                      blocks_bytes=sum(int(block["bytes"]) for block in manifest.blocks),
                      batch_free=sum(bool(block["batch_free"]) for block in manifest.blocks))
        report = stage("verify error", times, "verify",
                       lambda: verify_blocks(scratch / "blocks", samples=samples))
    except StageError as error:
        return {**result, "status": error.status, "message": str(error)}
    return {**result, "status": "ok" if report.passed else "verify-failed",
            "max_abs_error": report.max_abs_error, "max_rel_error": report.max_rel_error}


def graph_facts(graph: Any, whole_bytes: int) -> dict[str, Any]:
    """Counts and sizes of an analysed model, for its row."""
    return {
        "input": list(graph.input.shape),
        "layers": len(graph.layers),
        "cut_points": len(graph.cut_points),
        "segments": len(graph.segments),
        "gflops": sum(layer.flops for layer in graph.layers) / 1e9,
        "model_bytes": whole_bytes,
    }


def parameter_count(name: str) -> int | None:
    """Parameters according to the weights metadata (no download), or None if unknown."""
    import torchvision

    try:
        return int(torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"])
    except (ValueError, KeyError, AttributeError):
        return None


def run_isolated(name: str, args: argparse.Namespace, index_files: list[Path]) -> dict[str, Any]:
    """Run one model in a subprocess with its own scratch cache, then delete the scratch."""
    scratch = Path(tempfile.mkdtemp(prefix=f"sweep-{name}-", dir=args.scratch))
    cache = args.cache or scratch / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for index in index_files:  # the model index, so that each child need not rebuild it
        shutil.copy(index, cache / index.name)
    command = [sys.executable, __file__, "--one", name, "--blocks", str(args.blocks),
               "--samples", str(args.samples), "--scratch", str(scratch)]
    env = {**os.environ, "SPLITDNN_CACHE_DIR": str(cache)}
    began = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"name": name, "status": "timeout", "message": f"over {args.timeout:.0f} s",
                "wall_s": round(time.perf_counter() - began, 1), "load": load_average()}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**child_result(name, done), "wall_s": round(time.perf_counter() - began, 1),
            "load": load_average()}


def child_result(name: str, done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The child's JSON line, or a ``crashed`` result naming its exit status and last words."""
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode == 0 and lines:
        return dict(json.loads(lines[-1]))
    signal = f"killed by signal {-done.returncode}" if done.returncode < 0 \
        else f"exit {done.returncode}"
    tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1][:400]
    return {"name": name, "status": "crashed", "message": f"{signal}: {tail}"}


def skipped(name: str, limit: float) -> dict[str, Any] | None:
    """A ``skipped`` result when the model has more than ``limit`` parameters."""
    params = parameter_count(name)
    if params is None or params <= limit:
        return None
    return {"name": name, "status": "skipped",
            "message": f"{params / 1e6:.0f} M parameters > {limit / 1e6:.0f} M"}


def fmt_seconds(result: dict[str, Any], key: str) -> str:
    value = result.get("times", {}).get(key)
    return "" if value is None else f"{value:.1f}"


def row(result: dict[str, Any]) -> str:
    """One markdown table row."""
    name, status = result["name"], result["status"]
    if "layers" not in result:
        return f"| {name} | {status} | {result.get('message', '')} |" + " |" * 12
    ratio = (f"{result['blocks_bytes'] / result['model_bytes']:.4f}"
             if result.get("blocks_bytes") else "")
    error = f"{result['max_abs_error']:.1e}" if "max_abs_error" in result else ""
    return (f"| {name} | {status} | {result['input'][-1]} px | {result['layers']} | "
            f"{result['cut_points']} | {result['segments']} | {result['gflops']:.2f} | "
            f"{result.get('blocks', '')} | {ratio} | {error} | "
            + " | ".join(fmt_seconds(result, key)
                         for key in ("export", "analyse", "split", "verify"))
            + f" | {result.get('wall_s', '')} |")


def failure_lines(results: list[dict[str, Any]]) -> list[str]:
    """A bullet per failed model with its whole message."""
    failed = [result for result in results if result["status"] in (*FAILED, "verify-failed")]
    if not failed:
        return ["No failures."]
    return ["Failures:", ""] + [
        f"- `{result['name']}` — {result['status']}: "
        f"{result.get('message') or 'max abs error ' + format(result['max_abs_error'], '.2e')}"
        for result in failed]


def run_line(results: list[dict[str, Any]], jobs: int) -> str:
    """Time and load of the sweep, from the results (so that a resumed sweep counts it all)."""
    wall_s = sum(float(result.get("wall_s", 0)) for result in results)
    loads = sorted(float(result["load"]) for result in results
                   if result.get("load") not in (None, "unknown"))
    load = (f"1-minute load average {loads[0]:.1f}–{loads[-1]:.1f} as models finished"
            if loads else "load average not recorded")
    return (f"Sum of per-model wall times {wall_s / 60:.1f} min, {jobs} model(s) at a time; "
            f"{load} (other jobs may share the 2 cores).")


def section(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The markdown section: setup, summary line, table, failures."""
    results = sorted(results, key=lambda result: result["name"])
    passed = sum(result["status"] == "ok" for result in results)
    skips = [result["name"] for result in results if result["status"] == "skipped"]
    attempted = len(results) - len(skips)
    scope = "selected" if args.only else "torchvision classification"
    return "\n".join([
        f"## Every torchvision classification model ({date.today().isoformat()})",
        "",
        f"{machine_line()} {run_line(results, args.jobs)}",
        "",
        f"Per model, in its own process (limit {args.timeout:.0f} s): export with random "
        "weights (seed 0, BatchNorm calibrated) at the default input size into an empty cache, "
        f"analyse, split into {args.blocks} blocks of similar FLOPs, verify on "
        f"{args.samples} random inputs (ONNX Runtime `extended` on both sides, atol 1e-4). "
        "Times in seconds; *wall* includes starting Python and importing torch. "
        "*size ratio* = sum of block files / whole model file; it can be below 1 because "
        "the exported file keeps the dynamic-batch shape arithmetic (Shape, Gather, Concat "
        "nodes) that analysis folds into constants before splitting.",
        "",
        f"**{passed} of {attempted} {scope} models split and verified**"
        + (f"; {len(skips)} skipped as over {args.skip_over_params / 1e6:.0f} M parameters "
           f"({', '.join(skips)})" if skips else "") + ".",
        "",
        "| model | status | input | layers | cut points | segments | GFLOPs | blocks | "
        "size ratio | max abs error | export | analyse | split | verify | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(row(result) for result in results),
        "",
        *failure_lines(results),
    ])


def load_results(path: Path | None) -> dict[str, dict[str, Any]]:
    """Results kept by an earlier (possibly interrupted) run, by model name."""
    if path is None or not path.is_file():
        return {}
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {result["name"]: result for result in results}


def sweep(names: Iterable[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Run (or skip, or take from ``--results``) every model; print rows as they finish."""
    from splitdnn.graph.sources import cache_dir

    done = load_results(args.results)
    index_files = sorted(cache_dir().glob("torchvision-*-models.json"))
    pending = [name for name in names if name not in done]

    def one(name: str) -> dict[str, Any]:
        result = skipped(name, args.skip_over_params) or run_isolated(name, args, index_files)
        print(row(result), flush=True)
        if args.results:
            with args.results.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
        return result

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        fresh = list(pool.map(one, pending))
    return [*(done[name] for name in names if name in done), *fresh]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated model names (default: every model)")
    parser.add_argument("--skip-over-params", type=float, default=DEFAULT_SKIP_OVER_PARAMS,
                        help="skip models with more parameters than this (default 400e6)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per model")
    parser.add_argument("--jobs", type=int, default=1, help="models run at the same time")
    parser.add_argument("--blocks", type=int, default=4, help="blocks per model")
    parser.add_argument("--samples", type=int, default=2, help="random inputs for verify")
    parser.add_argument("--cache", type=Path,
                        help="export cache to reuse (default: a fresh one per model, deleted)")
    parser.add_argument("--scratch", type=Path, help="where scratch folders go (default: TMPDIR)")
    parser.add_argument("--results", type=Path, help="JSON lines kept across runs (resumes)")
    parser.add_argument("--write", type=Path, help="markdown file whose section to replace")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.blocks, args.samples, args.scratch)), flush=True)
        return
    from splitdnn.graph.sources import classification_models

    names = args.only.split(",") if args.only else classification_models()
    text = section(sweep(names, args), args)
    print("\n" + text)
    if args.write:
        write_section(args.write, "sweep_torchvision", text)


if __name__ == "__main__":
    main()
