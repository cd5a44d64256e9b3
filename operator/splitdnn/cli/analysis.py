"""``splitdnn model-facts``: what the operator's analysis Job prints about a model.

One JSON line: ``splitdnn inspect``'s analysis, each segment's profiling signature and
features and the model file's sha256; with ``--exits`` (a DNNService's ``spec.exits``) the
facts of each early-exit head (the segment it follows, its digest, output and signatures);
with ``--validation-data`` the top-1 accuracy of the model and of each exit on labelled
samples (``accuracy``). Exit code 2 is bad input (the Job fails at once), 1 a download the
network failed (the Job retries).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from splitdnn.cli.common import (
    FetchedWeightsOpt,
    WeightsSha256Opt,
    app,
    fail,
    failure_exit_code,
    parse_int_list,
)

if TYPE_CHECKING:
    from splitdnn.graph import ModelGraph

Obj = dict[str, Any]


@app.command("model-facts")
def model_facts(
    model: Annotated[str, typer.Argument(help="torchvision:NAME, https://..., pvc://... or a "
                                              "path to an .onnx file")],
    input_shape: Annotated[str | None, typer.Option(
        "--input-shape", help="Comma-separated input shape, e.g. 1,3,224,224")] = None,
    sha256: Annotated[str | None, typer.Option("--sha256", help="The model file's sha256")]
    = None,
    exits: Annotated[str | None, typer.Option(
        "--exits", help="A DNNService's spec.exits as JSON: each head is fetched, checked "
                        "against the activation it reads and analysed")] = None,
    validation_data: Annotated[str | None, typer.Option(
        "--validation-data", help="sklearn:digits, https://... (with --validation-sha256) or "
                                  "pvc://.../FILE.npz: measure the top-1 accuracy on it")]
    = None,
    validation_sha256: Annotated[str | None, typer.Option(
        "--validation-sha256", help="The dataset file's sha256")] = None,
    validation_samples: Annotated[int, typer.Option(
        "--validation-samples", min=1, help="Most test samples to measure on")] = 500,
    weights: FetchedWeightsOpt = None,
    weights_sha256: WeightsSha256Opt = None,
) -> None:
    """Print one JSON line: inspect's analysis plus segment signatures and the model digest
    (with --exits each exit's facts, with --validation-data the measured accuracies)."""
    from splitdnn.graph import GraphError, analyse_model
    from splitdnn.graph.sources import file_sha256
    from splitdnn.runtime.artifacts import ArtifactError, fetch_model

    shape = tuple(parse_int_list(input_shape, "--input-shape")) if input_shape else None
    try:
        exit_specs = json.loads(exits) if exits else []
    except ValueError as error:
        fail(f"--exits: expected a JSON list of exits: {error}")
    try:
        path, shape = fetch_model(model, sha256, shape, weights, weights_sha256)
        graph = analyse_model(path, shape, source=model)
        data = graph.to_dict()
        data["signatures"] = signatures_json(graph)
        data["model_digest"] = file_sha256(Path(path))
        heads = [exit_facts(graph, spec, f"spec.exits[{index}]")
                 for index, spec in enumerate(exit_specs)]
        if heads:
            data["exits"] = [facts for facts, _ in heads]
        if validation_data:
            data["accuracy"] = validation_accuracy(
                graph, [(facts["after_layer"], head) for facts, head in heads],
                validation_data, validation_sha256, validation_samples)
    except (ArtifactError, GraphError) as error:
        fail(str(error), failure_exit_code(error))
    print(json.dumps(data))


def signatures_json(graph: ModelGraph) -> list[Obj]:
    from splitdnn.profiling import model_signatures

    return [{"key": s.key, "features": s.features.to_dict()} for s in model_signatures(graph)]


def exit_facts(graph: ModelGraph, spec: Obj, field: str) -> tuple[Obj, Path]:
    """What the planner needs of one exit: the segment it follows, its head's digest, output
    and segment signatures (the head's cost per class is predicted from them); and the
    head's local file."""
    import onnx

    from splitdnn.graph import analyse_model
    from splitdnn.graph.exits import check_head_input, exit_activation
    from splitdnn.graph.sources import file_sha256
    from splitdnn.runtime.artifacts import ArtifactError, fetch_model

    after_layer = int(spec["afterLayer"])
    activation = exit_activation(graph, after_layer, f"{field}.afterLayer")
    head = spec["head"]
    try:
        path, _ = fetch_model(head["source"], head.get("sha256"))
    except ArtifactError as error:
        raise ArtifactError(f"{field}.head: {error}") from error
    check_head_input(onnx.load(str(path)), activation, f"{field}.head")
    head_graph = analyse_model(path, activation.shape, source=head["source"])
    segment = next(s.index for s in graph.segments if s.last_layer == after_layer)
    facts = {"after_layer": after_layer, "after_segment": segment,
             "sha256": file_sha256(path), "output": head_graph.output.to_dict(),
             "output_bytes": head_graph.output.nbytes,
             "signatures": signatures_json(head_graph)}
    return facts, path


def validation_accuracy(graph: ModelGraph, heads: list[tuple[int, Path]], source: str,
                        sha256: str | None, samples: int) -> Obj:
    """Top-1 accuracy of the model and of each exit on the dataset's test split (the first
    ``samples``); a dataset that does not fit the model fails naming spec.validation.data."""
    from splitdnn.coordination.data import adapt_images, check_fits, load_dataset
    from splitdnn.coordination.errors import CoordinationError
    from splitdnn.profiling.accuracy import measure_accuracy

    sample_shape = tuple(graph.input.shape[1:])
    try:
        data = load_dataset(source, sha256)
        check_fits(data, sample_shape, int(graph.output.shape[-1]))
        images = adapt_images(data.local.x_test[:samples], sample_shape).numpy()
    except CoordinationError as error:
        fail(f"spec.validation.data: {str(error).removeprefix('--data: ')}",
             failure_exit_code(error))
    labels = data.local.y_test[:samples].numpy()
    measured = measure_accuracy(graph, heads, images, labels)
    return {"source": source, "samples": measured.samples, "model": measured.model,
            "exits": list(measured.exits)}
