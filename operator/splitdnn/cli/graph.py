"""``splitdnn inspect | split | exit-head | verify | demo``: the model-graph commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from splitdnn.cli.common import JsonOpt, app, fail, human_bytes, parse_int_list, stderr, stdout
from splitdnn.graph import (
    BlockManifest,
    GraphError,
    ModelGraph,
    analyse_model,
    resolve_model,
    split_model,
    verify_blocks,
)

ModelArg = Annotated[str, typer.Argument(help="torchvision:NAME or a path to an .onnx file")]
InputShapeOpt = Annotated[
    str | None,
    typer.Option("--input-shape", help="Comma-separated input shape, e.g. 1,3,224,224"),
]
WeightsOpt = Annotated[
    Path | None,
    typer.Option("--weights", help="State dict for a torchvision model (default: random, seed 0)"),
]
@contextmanager
def user_errors() -> Iterator[None]:
    """Turn graph errors into a one-line message and exit code 2."""
    try:
        yield
    except GraphError as error:
        fail(str(error))


def load_graph(model: str, input_shape: str | None, weights: Path | None) -> ModelGraph:
    """Resolve, export if needed, and analyse a model reference."""
    shape = tuple(parse_int_list(input_shape, "--input-shape")) if input_shape else None
    if shape is not None and any(size < 1 for size in shape):
        fail(f"--input-shape: every dimension must be at least 1, got {input_shape!r}")
    with stderr.status(f"loading {model} ..."):
        resolved = resolve_model(model, input_shape=shape, weights=weights)
        return analyse_model(resolved.onnx_path, resolved.input_shape, source=model)


def cut_point_table(graph: ModelGraph) -> Table:
    """One row per segment: where it ends, what crosses the cut, cumulative cost."""
    total = sum(layer.flops for layer in graph.layers) or 1
    table = Table(title=f"{graph.source}: {len(graph.cut_points)} cut points, "
                        f"{len(graph.segments)} segments")
    for column in ("segment", "layers", "last op", "cut after", "output", "params", "MFLOPs",
                   "cum. FLOPs"):
        table.add_column(column, justify="left" if column == "last op" else "right")
    done = 0
    for segment in graph.segments:
        done += segment.flops
        last = graph.layers[segment.last_layer]
        is_cut = segment.last_layer in graph.crossing
        table.add_row(
            str(segment.index),
            f"{segment.first_layer}-{segment.last_layer}",
            last.op_type,
            str(segment.last_layer) if is_cut else "(output)",
            human_bytes(segment.output_bytes),
            human_bytes(segment.params_bytes),
            f"{segment.flops / 1e6:.1f}",
            f"{100 * done / total:.1f} %",
        )
    return table


@app.command()
def inspect(
    model: ModelArg,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List the layers, cut points and segments of a model."""
    with user_errors():
        graph = load_graph(model, input_shape, weights)
    if as_json:
        print(json.dumps(graph.to_dict()))
        return
    stdout.print(
        f"{graph.source}: input {graph.input.name} {list(graph.input.shape)} {graph.input.dtype}, "
        f"{len(graph.layers)} layers, "
        f"{sum(layer.flops for layer in graph.layers) / 1e9:.2f} GFLOPs, "
        f"{human_bytes(sum(layer.params_bytes for layer in graph.layers))} of parameters",
        highlight=False,
    )
    stdout.print(cut_point_table(graph))


@app.command()
def split(
    model: ModelArg,
    cuts: Annotated[str, typer.Option("--cuts", help="Cut after these layers: I,J,...")],
    out: Annotated[Path, typer.Option("--out", help="Directory for block_K.onnx + manifest")],
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    dynamic_batch: Annotated[
        bool,
        typer.Option("--dynamic-batch/--static-batch",
                     help="Give blocks that batch sample by sample a free batch dimension"),
    ] = True,
    as_json: JsonOpt = False,
) -> None:
    """Write the blocks between the given cut points and a manifest."""
    cut_list = parse_int_list(cuts, "--cuts")
    with user_errors():
        graph = load_graph(model, input_shape, weights)
        manifest = split_model(graph, cut_list, out, dynamic_batch=dynamic_batch)
    if as_json:
        print(json.dumps(manifest.data))
        return
    stdout.print(block_table(manifest, out))


@app.command("exit-head")
def exit_head(
    model: ModelArg,
    after_layer: Annotated[int, typer.Option("--after-layer", min=0,
                                             help="The cut point the head attaches to")],
    out: Annotated[Path, typer.Option("--out", help="The head's .onnx file")],
    classes: Annotated[int | None, typer.Option(
        "--classes", min=1, help="Outputs of the head (default: the model's last dimension)")]
    = None,
    input_shape: InputShapeOpt = None,
    weights: WeightsOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random weights")] = 0,
) -> None:
    """Write a pooled linear early-exit head (random weights, to train) for a cut point; its
    sha256 goes into a DNNService's spec.exits[].head."""
    from splitdnn.graph.exits import exit_activation, write_pooled_head
    from splitdnn.graph.sources import file_sha256

    with user_errors():
        graph = load_graph(model, input_shape, weights)
        activation = exit_activation(graph, after_layer, "--after-layer")
        write_pooled_head(activation, classes or graph.output.shape[-1], out, seed)
    stdout.print(f"wrote {out}: reads {list(activation.shape)} after layer {after_layer}, "
                 f"sha256 {file_sha256(out)}", highlight=False)


def block_table(manifest: BlockManifest, out: Path) -> Table:
    """One row per written block: layer range, tensor shapes, file size and digest."""
    table = Table(title=f"{len(manifest.blocks)} blocks in {out}")
    for column in ("block", "layers", "input", "output", "batch", "file size", "sha256"):
        table.add_column(column)
    for block in manifest.blocks:
        table.add_row(
            str(block["index"]),
            f"{block['layers'][0]}-{block['layers'][1]}",
            str(block["input"]["shape"]),
            str(block["output"]["shape"]),
            "free" if block["batch_free"] else "fixed",
            human_bytes(block["bytes"]),
            block["sha256"][:12],
        )
    return table


@app.command()
def verify(
    directory: Annotated[Path, typer.Argument(help="A directory written by `splitdnn split`")],
    samples: Annotated[int, typer.Option(help="Random inputs to compare")] = 8,
    atol: Annotated[float, typer.Option(help="Absolute tolerance")] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Relative tolerance (as numpy.allclose)")] = 1e-5,
    optimization: Annotated[
        str,
        typer.Option(help="ONNX Runtime graph optimisation for both sides: disabled, basic, "
                          "extended (exact kernels match) or all (as deployed; layout "
                          "changes add ~1e-4 rounding on deep splits)"),
    ] = "extended",
    as_json: JsonOpt = False,
) -> None:
    """Run the whole model and the chained blocks on random inputs and compare outputs."""
    if not (directory / "manifest.json").is_file():
        fail(f"{directory}: no manifest.json (expected a directory written by `splitdnn split`)")
    with user_errors():
        report = verify_blocks(directory, samples=samples, atol=atol, rtol=rtol,
                               optimization=optimization)
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        verdict = "[green]PASS[/]" if report.passed else "[red]FAIL[/]"
        stdout.print(
            f"{verdict} {report.blocks} blocks vs whole model on {report.samples} samples: "
            f"max abs error {report.max_abs_error:.3g}, max rel error {report.max_rel_error:.3g} "
            f"(atol {atol:g}, rtol {rtol:g})",
            highlight=False,
        )
    if not report.passed:
        raise typer.Exit(1)


@app.command()
def demo(
    model: Annotated[str, typer.Option(help="Model to split")] = "torchvision:resnet50",
    blocks: Annotated[int, typer.Option(help="How many blocks to cut the model into")] = 3,
    out: Annotated[Path, typer.Option(help="Where the blocks go")] = Path("out/demo"),
) -> None:
    """Inspect a model, split it into blocks of similar cost, verify and serve the blocks."""
    from splitdnn.graph.blocks import balanced_cuts

    with user_errors():
        graph = load_graph(model, None, None)
        stdout.print(cut_point_table(graph))
        cuts = balanced_cuts(graph, blocks)
        stdout.print(f"splitting after layers {cuts} into {out}/", highlight=False)
        manifest = split_model(graph, cuts, out)
    stdout.print(block_table(manifest, out))
    verify(out, samples=4, atol=1e-4, rtol=1e-5, optimization="extended", as_json=False)
    from splitdnn.cli.runtime import demo_serving

    demo_serving(out)
