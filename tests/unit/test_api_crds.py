"""CRDs generated from the API models: up to date, structural, and enforcing what they claim."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from splitdnn.api import KINDS_BY_NAME, validate_manifest
from splitdnn.api.crdgen import render_crds, render_files

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
CHART = Path("charts/splitdnn")


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "manifests" / "examples" / name).read_text())


def test_generated_crds_match_the_committed_files() -> None:
    for relative, text in render_files(CHART).items():
        path = ROOT / relative if relative.is_relative_to(CHART) else ROOT / "crds" / relative
        assert path.is_file(), f"{path} is missing: run `make crds`"
        assert path.read_text() == text, f"{path} is out of date: run `make crds`"


def test_crds_name_kinds_short_names_and_category() -> None:
    crds = {crd["spec"]["names"]["kind"]: crd for crd in render_crds().values()}
    assert set(crds) == {"DNNService", "SplitPlan", "CrossLink"}
    short = {kind: crd["spec"]["names"]["shortNames"] for kind, crd in crds.items()}
    assert short == {"DNNService": ["dnns"], "SplitPlan": ["sp"], "CrossLink": ["xl"]}
    for crd in crds.values():
        assert crd["spec"]["names"]["categories"] == ["splitdnn"]
        version = crd["spec"]["versions"][0]
        assert version["subresources"] == {"status": {}}
        names = [column["name"] for column in version["additionalPrinterColumns"]]
        assert names[:2] == ["Ready", "Reason"] and names[-1] == "Age"


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        nodes += _walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            nodes += _walk(schema[key], f"{path}[{key}]")
    return nodes


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_schemas_are_structural(name: str) -> None:
    root = render_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "const"} & set(node)
        assert not forbidden, f"{path} has {forbidden}"
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node.get("type") == "object" and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


@pytest.mark.parametrize("name", sorted(render_crds()))
def test_cel_rules_only_touch_bounded_lists_and_strings(name: str) -> None:
    root = render_crds()[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        if "x-kubernetes-validations" not in node:
            continue
        for child_path, child in _walk(node, path):
            if child.get("type") == "array":
                assert "maxItems" in child, f"{child_path} is unbounded but used by CEL"
            if child.get("type") == "string" and "enum" not in child:
                assert "maxLength" in child, f"{child_path} is unbounded but used by CEL"


def test_conditions_are_a_map_keyed_by_type() -> None:
    crd = render_crds()["dnnservices.splitdnn.io.yaml"]
    status = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_fields_carry_descriptions_for_kubectl_explain() -> None:
    root = render_crds()["dnnservices.splitdnn.io.yaml"]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    spec_fields = _walk(root["properties"]["spec"], "spec")
    missing = [path for path, node in spec_fields if path.count("[") == 0 and path != "spec"
               and "description" not in node]
    assert not missing


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_examples_validate_against_their_crd(path: Path) -> None:
    manifest = yaml.safe_load(path.read_text())
    assert validate_manifest(manifest) == []
    KINDS_BY_NAME[manifest["kind"]].resource.model_validate(manifest)


def test_every_kind_has_an_example() -> None:
    kinds = {yaml.safe_load(path.read_text())["kind"] for path in EXAMPLES}
    assert kinds == set(KINDS_BY_NAME)


def _set(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of manifest with the dotted path (list indices as numbers) set or deleted."""
    changed = copy.deepcopy(manifest)
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]
    node: Any = changed
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return changed


DELETE = object()
SHA = "ab" * 32

INVALID = [
    # (example, path to change, new value, field the error must name, words in the message)
    ("dnnservice.yaml", "spec.model.source", "https://models.example/r50.onnx",
     "spec.model.sha256", "sha256 is required"),
    ("dnnservice.yaml", "spec.model.source", "s3://bucket/model.onnx", "spec.model.source",
     "does not match"),
    ("dnnservice.yaml", "spec.model.sha256", "XYZ", "spec.model.sha256", "does not match"),
    ("dnnservice.yaml", "spec.model.inputShape", "1,3,224,224", "spec.model.inputShape",
     "is not of type 'array'"),
    ("dnnservice.yaml", "spec.source", DELETE, "spec", "'source' is a required property"),
    ("dnnservice.yaml", "spec.objective.kind", "speed", "spec.objective.kind", "is not one of"),
    ("dnnservice.yaml", "spec.objective.maxStages", 0, "spec.objective.maxStages",
     "less than the minimum"),
    ("dnnservice.yaml", "spec.source.tier", "raspberry", "spec.source.tier",
     "must name one of the tiers"),
    ("dnnservice.yaml", "spec.tiers.1.name", "jetson-nano", "spec.tiers", "must be unique"),
    ("dnnservice.yaml", "spec.slo.latencyMs", 0, "spec.slo.latencyMs", "less than or equal"),
    ("dnnservice.yaml", "spec.runtime.batching.maxBatchSize", 4,
     "spec.runtime.batching.maxBatchSize", "unknown field"),
    ("dnnservice.yaml", "spec.runtime.resources.requests.cpu", [1],
     "spec.runtime.resources.requests.cpu", "not an integer or a string"),
    ("splitplan.yaml", "spec.stages.1.layers", [75, 39], "spec.stages[1].layers",
     "first <= last"),
    ("splitplan.yaml", "spec.stages.1.layers", [39, 80], "spec.stages",
     "right after the previous stage"),
    ("splitplan.yaml", "spec.stages.0.layers", [1, 38], "spec.stages", "start at layer 0"),
    ("splitplan.yaml", "spec.stages.1.layers", [39], "spec.stages[1].layers",
     "is too short"),
    ("splitplan.yaml", "spec.stages.1.replicas", -1, "spec.stages[1].replicas",
     "less than the minimum"),
    ("splitplan.yaml", "spec.stages.2.name", "stem", "spec.stages", "names must be unique"),
    ("splitplan.yaml", "spec.stages.0.blockSha256", "abc", "spec.stages[0].blockSha256",
     "does not match"),
    ("splitplan.yaml", "spec.stages", [], "spec.stages", "should be non-empty"),
    ("crosslink.yaml", "spec.path", [4, 2, 3, 1], "spec.path", "lout < lin"),
    ("crosslink.yaml", "spec.path", [1, 3, 2, 4], "spec.path", "hin <= hout"),
    ("crosslink.yaml", "spec.search", {"aMin": 0.7}, "spec.path", "exactly one of path"),
    ("crosslink.yaml", "spec.path", DELETE, "spec.path", "exactly one of path"),
    ("crosslink.yaml", "spec.hostService", "mobilenet-v2", "spec.hostService", "must differ"),
    ("crosslink.yaml", "spec.link.architecture", "mlp", "spec.link.architecture",
     "is not one of"),
]


@pytest.mark.parametrize(("example", "path", "value", "field", "words"), INVALID)
def test_invalid_manifests_are_rejected_naming_the_field(
    example: str, path: str, value: Any, field: str, words: str
) -> None:
    manifest = _set(load(example), path, value)
    errors = validate_manifest(manifest)
    assert errors, f"{path}={value!r} was accepted"
    assert any(error.path == field and words in error.message for error in errors), errors


# The pydantic models hold specs to the same rules (the operator validates with them).
CEL_MESSAGES = [
    rule["message"]
    for crd in render_crds().values()
    for _, node in _walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    for rule in node.get("x-kubernetes-validations", [])
]
PYDANTIC_FIELDS = {
    "spec.model.sha256": ("spec", "model"),
    "spec.tiers": ("spec",),
    "spec.source.tier": ("spec",),
    "spec.stages": ("spec",),
    "spec.stages[1].layers": ("spec", "stages", 1),
    "spec.path": ("spec",),
    "spec.hostService": ("spec",),
}


@pytest.mark.parametrize(("example", "path", "value", "field", "words"), INVALID)
def test_invalid_manifests_fail_the_models_too(
    example: str, path: str, value: Any, field: str, words: str
) -> None:
    manifest = _set(load(example), path, value)
    with pytest.raises(ValidationError) as caught:
        KINDS_BY_NAME[manifest["kind"]].resource.model_validate(manifest)
    locations = [tuple(error["loc"]) for error in caught.value.errors()]
    expected = PYDANTIC_FIELDS.get(field) or tuple(
        int(part) if part.isdigit() else part
        for part in field.replace("[", ".").replace("]", "").split("."))
    assert any(location[: len(expected)] == expected for location in locations), locations
    if any(words in message for message in CEL_MESSAGES):  # the model ran the same rule
        assert words in str(caught.value)


def test_unknown_kind_or_version_is_rejected() -> None:
    manifest = load("dnnservice.yaml")
    manifest["apiVersion"] = "splitdnn.io/v1"
    assert validate_manifest(manifest)[0].path == "apiVersion"


def test_model_round_trips_to_the_wire_form() -> None:
    manifest = load("splitplan.yaml")
    plan = KINDS_BY_NAME["SplitPlan"].resource.model_validate(manifest)
    wire = plan.to_wire()
    assert wire["spec"]["stages"][1]["replicas"] == 2
    assert wire["spec"]["serviceRef"] == {"name": "resnet50"}
    assert validate_manifest(wire) == []


def test_every_cel_rule_compiles() -> None:
    import celpy

    environment = celpy.Environment()
    for crd in render_crds().values():
        root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in _walk(root):
            for rule in node.get("x-kubernetes-validations", []):
                environment.compile(rule["rule"])  # raises CELParseError on a typo
                assert rule["message"], path
