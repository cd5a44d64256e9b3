"""Manifests judged against the CRDs (as an API server would) and by the pydantic models."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from splitdnn.api import (
    KINDS_BY_NAME,
    CrdValidator,
    DNNService,
    SplitPlan,
    default_manifest,
    validate_manifest,
    validate_model,
    validators_for,
)
from splitdnn.api.crdgen import render_crds
from splitdnn.api.errors import DUPLICATE, REQUIRED, TYPE_INVALID, UNKNOWN_FIELD
from splitdnn.api.validation import CEL_SKIPPED

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
DELETE = object()
SHA = "ab" * 32
CONDITION = {"type": "Ready", "status": "True", "reason": "Serving",
             "lastTransitionTime": "2025-01-01T00:00:00Z"}


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "examples" / name).read_text())


def changed(manifest: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy with each dotted path (list indices as numbers) set, or deleted by DELETE."""
    result = copy.deepcopy(manifest)
    for path, value in changes.items():
        *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
        node: Any = result
        for part in parents:
            node = node[part]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return result


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_validate_against_their_crd_and_model(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert validate_manifest(manifest) == []
    assert validate_model(manifest) == []


def test_every_kind_has_an_example() -> None:
    assert {yaml.safe_load(path.read_text())["kind"] for path in EXAMPLES} == set(KINDS_BY_NAME)


# (example, changes, field the error must name, words in the API server's message)
INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    ("dnnservice", {"spec.model.source": "https://models.example/r50.onnx"},
     "spec.model.sha256", "sha256 is required for https://"),
    ("dnnservice", {"spec.model.source": "https://models.example/r50.onnx",
                    "spec.model.sha256": "XYZ"}, "spec.model.sha256", "should match"),
    ("dnnservice", {"spec.model.sha256": SHA}, "spec.model.sha256", "not to torchvision"),
    ("dnnservice", {"spec.model.source": "s3://bucket/model.onnx"}, "spec.model.source",
     "should match"),
    ("dnnservice", {"spec.model.source": "pvc://models/r50.onnx",
                    "spec.model.weights": {"source": "pvc://models/r50.pt"}},
     "spec.model.weights", "weights apply only to torchvision"),
    ("dnnservice", {"spec.model.inputShape": "1,3,224,224"}, "spec.model.inputShape",
     "must be of type array"),
    ("dnnservice", {"spec.model.inputShape": [1, 0, 224, 224]}, "spec.model.inputShape[1]",
     "greater than or equal to 1"),
    ("dnnservice", {"spec.source": DELETE}, "spec.source", "Required value"),
    ("dnnservice", {"spec.objective.kind": "speed"}, "spec.objective.kind",
     "Unsupported value"),
    ("dnnservice", {"spec.objective.maxStages": 0}, "spec.objective.maxStages",
     "greater than or equal to 1"),
    ("dnnservice", {"spec.source.tier": "raspberry"}, "spec.source.tier",
     "must name one of the tiers"),
    ("dnnservice", {"spec.source.sink": "raspberry"}, "spec.source.sink",
     "must name one of the tiers"),
    ("dnnservice", {"spec.tiers.1.name": "jetson-nano"}, "spec.tiers[1]", "Duplicate value"),
    ("dnnservice", {"spec.tiers.0.name": "Jetson_Nano"}, "spec.tiers[0].name", "should match"),
    ("dnnservice", {"spec.slo.latencyMs": 0}, "spec.slo.latencyMs", "greater than 0"),
    ("dnnservice", {"spec.runtime.batching.maxBatchSize": 4},
     "spec.runtime.batching.maxBatchSize", "unknown field"),
    ("dnnservice", {"spec.runtime.resources.requests.cpu": [1]},
     "spec.runtime.resources.requests.cpu", "integer or string"),
    ("dnnservice", {"spec.runtime.resources.requests.memory": "lots"},
     "spec.runtime.resources.requests.memory", "should match"),
    ("dnnservice", {"spec.replan.mode": "Sometimes"}, "spec.replan.mode", "Unsupported value"),
    ("dnnservice", {"spec.exits": [
        {"afterLayer": 38, "threshold": 0.8, "accuracy": 0.6,
         "head": {"source": "pvc://m/exit1.onnx"}},
        {"afterLayer": 38, "threshold": 0.9, "accuracy": 0.7,
         "head": {"source": "pvc://m/exit2.onnx"}}]},
     "spec.exits[1]", "Duplicate value"),
    ("dnnservice", {"spec.exits": [
        {"afterLayer": 38, "threshold": 0.8, "accuracy": 0.6,
         "head": {"source": "https://m.example/e.onnx"}}]},
     "spec.exits[0].head.sha256", "sha256 is required"),
    ("dnnservice", {"spec.exits": [
        {"afterLayer": 38, "threshold": 0.8, "head": {"source": "pvc://m/exit1.onnx"}}]},
     "spec.exits", "every exit needs its accuracy, or spec.validation"),
    ("splitplan", {"spec.stages.1.layers": [75, 39]}, "spec.stages[1].layers", "first <= last"),
    ("splitplan", {"spec.stages.1.layers": [40, 75]}, "spec.stages", "right after"),
    ("splitplan", {"spec.stages.1.layers": [30, 75]}, "spec.stages", "right after"),
    ("splitplan", {"spec.stages.2.layers": [39, 121]}, "spec.stages", "listed in layer order"),
    ("splitplan", {"spec.stages.1.layers": [76, 121], "spec.stages.2.layers": [39, 75]},
     "spec.stages", "listed in layer order"),
    ("splitplan", {"spec.stages.0.layers": [1, 38]}, "spec.stages", "start at layer 0"),
    ("splitplan", {"spec.stages.0.layers": [-1, 38]}, "spec.stages[0].layers[0]",
     "greater than or equal to 0"),
    ("splitplan", {"spec.stages.1.layers": [39]}, "spec.stages[1].layers", "at least 2 items"),
    ("splitplan", {"spec.stages.1.replicas": -1}, "spec.stages[1].replicas",
     "greater than or equal to 0"),
    ("splitplan", {"spec.stages.2.name": "stem"}, "spec.stages[2]", "Duplicate value"),
    ("splitplan", {"spec.stages.0.blockSha256": "abc"}, "spec.stages[0].blockSha256",
     "should match"),
    ("splitplan", {"spec.stages": []}, "spec.stages", "at least 1 items"),
    ("splitplan", {"spec.serviceRef": DELETE}, "spec.serviceRef", "Required value"),
    ("splitplan", {"spec.alternatives.0.stages.1.layers": [14, 121]},
     "spec.alternatives[0].stages", "right after"),
    ("splitplan", {"status": {"conditions": [CONDITION, CONDITION]}}, "status.conditions[1]",
     "Duplicate value"),
    ("splitplan", {"status": {"conditions": [{**CONDITION, "status": "Yes"}]}},
     "status.conditions[0].status", "Unsupported value"),
    ("splitplan", {"status": {"conditions": [{**CONDITION, "lastTransitionTime": "today"}]}},
     "status.conditions[0].lastTransitionTime", "date-time"),
    ("crosslink", {"spec.path": [4, 2, 3, 1]}, "spec.path", "lout < lin"),
    ("crosslink", {"spec.path": [1, 3, 2, 4]}, "spec.path", "hin <= hout"),
    ("crosslink", {"spec.path": [1, 2, 3, 6]}, "spec.path", "lin < localBlocks"),
    ("crosslink", {"spec.path": [1, 2, 6, 4]}, "spec.path", "hout < hostBlocks"),
    ("crosslink", {"spec.path": [-1, 2, 3, 4]}, "spec.path[0]", "greater than or equal to 0"),
    ("crosslink", {"spec.search": {"aMin": 0.7}}, "spec.path", "exactly one of path or search"),
    ("crosslink", {"spec.path": DELETE}, "spec.path", "exactly one of path or search"),
    ("crosslink", {"spec.hostService": "mobilenet-v2"}, "spec.hostService", "must differ"),
    ("crosslink", {"spec.link.architecture": "mlp"}, "spec.link.architecture",
     "Unsupported value"),
    ("crosslink", {"spec.link.architecture": "conv"}, "spec.link.width",
     "only to the reduced architecture"),
    ("crosslink", {"spec.offloadedSamples": 64}, "spec.offloadedSamples",
     "cannot exceed localBatch"),
    ("crosslink", {"spec.hostBatch": 4}, "spec.offloadedSamples", "cannot exceed hostBatch"),
    ("crosslink", {"spec.path": [1, 2, 4]}, "spec.path", "for a skip path, [lout, lin]"),
    ("crosslink", {"spec.path": [4, 1]}, "spec.path", "lout < lin"),
    ("crosslink", {"spec.path": [1, 6]}, "spec.path", "lin < localBlocks"),
    ("crosslink", {"spec.path": [1]}, "spec.path", "at least 2 items"),
    ("crosslink", {"spec.training": DELETE}, "spec.training", "Required value"),
    ("crosslink", {"spec.training.data.source": "https://data.example/frames.tar"},
     "spec.training.data.sha256", "sha256 is required"),
]
CASE_IDS = [f"{example}:{field}:{words}" for example, _, field, words in INVALID]


def cel_messages() -> set[str]:
    """Every CEL rule message in the CRDs."""
    messages: set[str] = set()

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            messages.update(rule["message"] for rule in node.get("x-kubernetes-validations", []))
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    collect(render_crds())
    return messages


@pytest.mark.parametrize(("example", "changes", "field", "words"), INVALID, ids=CASE_IDS)
def test_invalid_manifests_are_rejected_naming_the_field(
    example: str, changes: dict[str, Any], field: str, words: str
) -> None:
    manifest = changed(load(f"{example}.yaml"), changes)
    errors = validate_manifest(manifest)
    assert any(error.path == field and words in error.message for error in errors), errors


@pytest.mark.parametrize(("example", "changes", "field", "words"), INVALID, ids=CASE_IDS)
def test_invalid_manifests_fail_the_models_at_the_same_field(
    example: str, changes: dict[str, Any], field: str, words: str
) -> None:
    manifest = changed(load(f"{example}.yaml"), changes)
    errors = validate_model(manifest)
    assert any(error.path == field for error in errors), errors
    if any(words in message for message in cel_messages()):  # the model ran the same rule
        assert any(words in error.message for error in errors if error.path == field), errors


def test_reasons_are_kubernetes_cause_types() -> None:
    manifest = changed(load("splitplan.yaml"), {
        "spec.serviceRef": DELETE, "spec.stages.2.name": "stem", "spec.extra": 1})
    reasons = {error.path: error.reason for error in validate_manifest(manifest)}
    assert reasons["spec.serviceRef"] == REQUIRED
    assert reasons["spec.stages[2]"] == DUPLICATE
    assert reasons["spec.extra"] == UNKNOWN_FIELD


def test_type_errors_stop_cel_rules_as_in_the_api_server() -> None:
    manifest = changed(load("crosslink.yaml"), {"spec.path": [4, 2, 3, 1],
                                               "spec.localBatch": "many"})
    errors = validate_manifest(manifest)
    assert [error.reason for error in errors if error.path == "spec.localBatch"] == [TYPE_INVALID]
    assert errors[-1].message == CEL_SKIPPED
    assert not any("lout < lin" in error.message for error in errors)


def test_nulls_are_pruned_and_defaults_filled_in() -> None:
    manifest = changed(load("dnnservice.yaml"), {
        "spec.model.sha256": None, "spec.objective": None, "spec.replan": DELETE})
    assert validate_manifest(manifest) == []
    stored = default_manifest(manifest)
    assert "sha256" not in stored["spec"]["model"]
    assert stored["spec"]["objective"] == {"kind": "latency", "latencyWeight": 1.0,
                                           "energyWeight": 0.0, "maxStages": 4}
    assert stored["spec"]["replan"]["mode"] == "Auto"
    assert manifest["spec"]["objective"] is None  # the input is not changed


def _numbers_equal(stored: Any, model: Any, path: str = "") -> list[str]:
    """Where ``stored`` (API server defaults) differs from the model's dump, leaf by leaf."""
    if isinstance(stored, dict):
        return [diff for key, value in stored.items()
                for diff in _numbers_equal(value, model.get(key), f"{path}.{key}")]
    if isinstance(stored, list):
        return [diff for index, value in enumerate(stored)
                for diff in _numbers_equal(value, model[index], f"{path}[{index}]")]
    return [] if stored == model else [f"{path}: {stored!r} != {model!r}"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_api_server_defaults_are_the_model_defaults(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    stored = default_manifest(manifest)
    wire = KINDS_BY_NAME[manifest["kind"]].resource.model_validate(manifest).to_wire()
    assert _numbers_equal(stored, wire) == []


def test_model_round_trips_to_the_wire_form() -> None:
    plan = SplitPlan.model_validate(load("splitplan.yaml"))
    assert plan.spec.stages[1].replicas == 2 and plan.spec.stages[0].replicas == 1
    wire = plan.to_wire()
    assert wire["spec"]["serviceRef"] == {"name": "resnet50"}
    assert validate_manifest(wire) == []
    assert SplitPlan.model_validate(wire) == plan


def test_models_accept_snake_case_in_python() -> None:
    service = DNNService.model_validate(load("dnnservice.yaml"))
    assert service.spec.model.input_shape == [1, 3, 224, 224]
    assert service.spec.runtime.batching.max_batch == 8
    copy_ = service.model_copy(update={"metadata": {"name": "other"}})
    assert copy_.to_wire()["spec"]["model"]["inputShape"] == [1, 3, 224, 224]


@pytest.mark.parametrize(("metadata", "field"), [
    ({}, "metadata.name"),
    ({"name": "Bad_Name"}, "metadata.name"),
    ({"name": "ok", "namespace": "Not OK"}, "metadata.namespace"),
    ({"name": "ok", "labels": {"a": 1}}, "metadata.labels"),
])
def test_metadata_is_checked(metadata: dict[str, Any], field: str) -> None:
    manifest = changed(load("dnnservice.yaml"), {"metadata": metadata})
    assert [error.path for error in validate_manifest(manifest)] == [field]


def test_generate_name_stands_in_for_a_name() -> None:
    manifest = changed(load("dnnservice.yaml"), {"metadata": {"generateName": "resnet-"}})
    assert validate_manifest(manifest) == []


@pytest.mark.parametrize(("api_version", "kind"), [
    ("splitdnn.io/v1", "DNNService"), ("splitdnn.io/v1alpha1", "Gadget"), ("v1", "Pod")])
def test_unknown_kinds_and_versions_are_rejected(api_version: str, kind: str) -> None:
    manifest = changed(load("dnnservice.yaml"), {"apiVersion": api_version, "kind": kind})
    (error,) = validate_manifest(manifest)
    assert error.path == "kind" and "no CRD serves" in error.message
    assert validate_model({"kind": "Gadget"})[0].path == "kind"


# A foreign CRD exercising what splitdnn's own schemas do not use.
GADGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.ratio > 0.5", "message": "ratio must exceed 0.5",
                 "fieldPath": ".ratio"},
                {"rule": "self.ratio == oldSelf.ratio", "message": "ratio is immutable"},
                {"rule": "self.tags.size() < 3", "message": "unused",
                 "messageExpression": "'too many tags: ' + string(size(self.tags))"},
                {"rule": "self.tags.isSorted() && self.tags.indexOf('x') != 0",
                 "message": "tags must be sorted and not start with x", "fieldPath": ".tags"},
            ],
            "properties": {
                "ratio": {"type": "number"},
                "note": {"type": "string", "nullable": True},
                "tags": {"type": "array", "maxItems": 8, "x-kubernetes-list-type": "set",
                         "items": {"type": "string", "maxLength": 8}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        },
    },
}
GADGET_CRD = {
    "metadata": {"name": "gadgets.example.com"},
    "spec": {"group": "example.com", "names": {"kind": "Gadget"},
             "versions": [{"name": "v1", "served": True,
                           "schema": {"openAPIV3Schema": GADGET_SCHEMA}}]},
}


def gadget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"},
            "spec": {"ratio": 1, "tags": ["a", "b"], **spec}}


def test_foreign_crds_validate_with_the_same_machinery() -> None:
    crds = [GADGET_CRD]
    assert validate_manifest(gadget(note=None, free={"any": {"thing": 1}}), crds) == []
    assert default_manifest(gadget(note=None), crds)["spec"]["note"] is None
    errors = {str(error) for error in validate_manifest(
        gadget(ratio=0.25, tags=["b", "a", "a"]), crds)}
    assert errors == {
        'spec.tags[2]: Duplicate value: "a"',
        "spec.ratio: ratio must exceed 0.5",
        "spec: too many tags: 3",
        "spec.tags: tags must be sorted and not start with x",
    }


def test_a_validator_is_built_once_per_crd_version() -> None:
    registry = validators_for([GADGET_CRD])
    assert list(registry) == [("example.com", "v1", "Gadget")]
    validator = CrdValidator.for_crd(GADGET_CRD, "v1")
    assert validator.validate(gadget()) == []
    with pytest.raises(KeyError):
        CrdValidator.for_crd(GADGET_CRD, "v2")
    with pytest.raises(KeyError):
        default_manifest({"apiVersion": "example.com/v1", "kind": "Gadget"})
