"""Benchmark the latency predictors: error vs the fraction P of each class's entries kept.

For P = 0.1 .. 0.5 and several seeds, ``predict-eval`` (``splitdnn.predict.evaluate``) hides
all but P of every hardware class's measured signatures, predicts the hidden ones with
collaborative filtering and with the Neurosurgeon-style baseline, and reports RMSE (ms) and
MAPE (%). Results are averaged over the seeds; the target (issue 4, paper 004) is that at
P = 0.3 CF's RMSE is at most half the baseline's.

Writes the error-vs-P plot as a PNG and replaces the ``bench_predict`` section of the
benchmarks file::

    python bench/bench_predict.py --profiles tests/data/profiles \\
        --plot docs/predict-error.png --write docs/benchmarks.md   # what `make bench-predict` runs
"""

from __future__ import annotations

import argparse
import statistics
from datetime import date
from pathlib import Path
from typing import Any

from doc_section import load_average, machine_line, write_section

FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
TARGET_FRACTION = 0.3
HEADER = ("| P | hidden | cold | CF RMSE ms | CF MAPE % | baseline RMSE ms | baseline MAPE % "
          "| baseline / CF RMSE | CF rank |\n|---|---|---|---|---|---|---|---|---|")


def run(profiles: dict[str, Any], seeds: int) -> dict[float, dict[str, Any]]:
    """Seed-averaged errors of both predictors at every fraction."""
    from splitdnn.predict import evaluate

    table: dict[float, dict[str, Any]] = {}
    for fraction in FRACTIONS:
        runs = [evaluate(profiles, fraction, seed) for seed in range(seeds)]
        table[fraction] = {
            method: {metric: statistics.mean(run[method][metric] for run in runs)
                     for metric in ("rmse_ms", "mape")}
            for method in ("cf", "baseline")
        } | {
            "n_hidden": statistics.mean(run["n_hidden"] for run in runs),
            "cold": statistics.mean(run["cold_signatures"] for run in runs),
            "ranks": sorted({run["rank"] for run in runs}),
        }
        print(f"P={fraction}: CF {table[fraction]['cf']}, baseline "
              f"{table[fraction]['baseline']}", flush=True)
    return table


def plot(table: dict[float, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = list(table)
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for axis, metric, label in ((axes[0], "rmse_ms", "RMSE (ms)"),
                                (axes[1], "mape", "MAPE (%)")):
        for method, style in (("cf", "o-"), ("baseline", "s--")):
            axis.plot(fractions, [table[p][method][metric] for p in fractions], style,
                      label="collaborative filtering" if method == "cf" else
                      "Neurosurgeon-style regression")
        axis.set_xlabel("fraction P of each class's entries kept")
        axis.set_ylabel(label)
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("Hidden-entry latency prediction error vs P")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def section(table: dict[float, dict[str, Any]], store: Any, seeds: int, plot_path: Path,
            doc: Path) -> str:
    profiles = store.profiles
    entries = sum(len(profile.entries) for profile in profiles.values())
    signatures = len({key for profile in profiles.values() for key in profile.entries})
    noise = ", ".join(f"{name} {profile.meta.get('repeat_noise_pct')} %"
                      for name, profile in profiles.items())
    loads = [bound for profile in profiles.values()
             for bound in profile.meta.get("load_average_1min") or []]
    models = sorted({model for profile in profiles.values()
                     for model in profile.meta.get("models", [])})
    target = table[TARGET_FRACTION]
    ratio = target["baseline"]["rmse_ms"] / target["cf"]["rmse_ms"]
    verdict = "met" if ratio >= 2 else "NOT met"
    rows = "\n".join(
        f"| {p} | {row['n_hidden']:.0f} | {row['cold']:.0f} | {row['cf']['rmse_ms']:.3f} | "
        f"{row['cf']['mape']:.1f} | {row['baseline']['rmse_ms']:.3f} | "
        f"{row['baseline']['mape']:.1f} | {row['baseline']['rmse_ms'] / row['cf']['rmse_ms']:.2f}"
        f" | {','.join(map(str, row['ranks']))} |"
        for p, row in table.items())
    relative_plot = Path(*plot_path.parts[len(doc.parent.parts):]) \
        if plot_path.parts[:len(doc.parent.parts)] == doc.parent.parts else plot_path
    return f"""## Latency prediction: collaborative filtering vs Neurosurgeon-style regression

`make bench-predict` ({date.today().isoformat()}). {machine_line()} Load average now
{load_average()}; while the profiles were collected it ranged {min(loads, default=0):.1f} to
{max(loads, default=0):.1f} (other engineers' work shared the 2 cores).

Dataset: `{store.directory}`, {len(profiles)} hardware classes ({', '.join(profiles)}) ×
{signatures} distinct segment signatures = {entries} measured cells, from {len(models)}
torchvision models ({', '.join(name.removeprefix('torchvision:') for name in models)}), every
segment profiled (P = 1) by `bench/collect_profiles.py`: ONNX Runtime CPU with 1 or 2
threads, and under CFS quotas of 25 % / 50 % of a core (cgroup v1, 5 ms period); thread-pool
spinning off as the runtime deploys blocks; the latency is the minimum (least-disturbed) of
15 samples of at least 10 ms CPU work each, not the median, because of the load. The
`cuda-h100` class was collected on an NVIDIA H100 by `bench/gpu_check.py` (onnxruntime-gpu
1.31.1, CUDA provider in fp32, median of 20 samples, energy from NVML); the CPU classes have
no energy (no meter on this machine: `energy_mj` null). Measurement repeatability
(median deviation of a signature measured in two models from its merged value): {noise}.

Each row averages {seeds} seeds of `splitdnn predict-eval --fraction P --seed S`: per class,
all but P of its entries are hidden; "cold" counts hidden signatures that no class kept.

{HEADER}
{rows}

Target at P = {TARGET_FRACTION}: CF RMSE at most half the baseline's — **{verdict}**
(baseline / CF = {ratio:.2f}; paper 004 reports 6.45× on its testbed). CF's relative error is
the lower one ({target['cf']['mape']:.1f} % vs {target['baseline']['mape']:.1f} % MAPE at
P = {TARGET_FRACTION}). On these CPU classes a segment's latency is close to linear in its
FLOPs per op type, so a per-class linear regression on ~{entries * TARGET_FRACTION
/ len(profiles):.0f} kept points per class predicts the large segments, which dominate an RMSE
in milliseconds, within a few percent; CF fits log-latency, weighting a 10 µs Relu like a
50 ms convolution, and the class ratio depends on segment size (a 25 % quota slows VGG's
convolutions 3.7× and leaves microsecond ops alone), which the factorisation learns only for
signatures observed on several classes. Tried on this dataset and not adopted (none reached
the baseline's RMSE): weighting cells by latency (CF RMSE 1.74 → 1.44 ms at P = 0.3, MAPE
34 → 43 %), a per-class slope on the signature bias, and CF on the baseline's residuals
(1.13 ms). Where classes really differ, CF does what the paper says: on the GPU class alone
(seed 0, `predict-eval --profiles tests/data/profiles`), CF RMSE 0.57 ms vs the baseline's
2.04 ms at P = 0.1 (MAPE 50 % vs 118 %), and about equal at P = 0.3 (0.25 vs 0.24 ms, MAPE
41 % vs 64 %); the five CPU classes, five sixths of the matrix, keep the overall RMSE
on the baseline's side.

![error vs P]({relative_plot})
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", type=Path, default=Path("tests/data/profiles"))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--plot", type=Path, default=Path("docs/predict-error.png"))
    parser.add_argument("--write", type=Path, help="benchmarks file whose section to replace")
    args = parser.parse_args()
    from splitdnn.profiling import ProfileStore

    store = ProfileStore(args.profiles)
    table = run(store.profiles, args.seeds)
    plot(table, args.plot)
    doc = args.write or Path("docs/benchmarks.md")
    text = section(table, store, args.seeds, args.plot, doc)
    print(text)
    if args.write:
        write_section(args.write, "bench_predict", text)


if __name__ == "__main__":
    main()
