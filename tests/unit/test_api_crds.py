"""CRDs generated from the API models: up to date, structural, and well-formed for kubectl."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml

from splitdnn.api import KINDS_BY_NAME
from splitdnn.api.crdgen import render_crds, render_files, write_crds
from splitdnn.api.errors import split_field_path
from splitdnn.api.validation import OpenApiValidator

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
CHART = ROOT / "charts" / "splitdnn"
RENDERED = render_crds()
NAMES = sorted(RENDERED)
Node = tuple[str, dict[str, Any]]


def root_schema(name: str) -> dict[str, Any]:
    return RENDERED[name]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[Node]:
    """Every schema node below (and including) ``schema`` with a readable path."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from walk(schema[key], f"{path}[{key}]")


def all_nodes() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for name in NAMES:
        for path, node in walk(root_schema(name)):
            yield name, path, node


def test_generated_crds_match_the_committed_files() -> None:
    for path, text in render_files(CRDS, CHART).items():
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing: run `make crds`"
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is out of date: run `make crds`"
    stale = {path.name for path in CRDS.glob("*.yaml")} - set(RENDERED)
    assert not stale, f"crds/ holds CRDs no model generates ({stale}): run `make crds`"


def test_generation_is_deterministic_and_writes_both_copies(tmp_path: Path) -> None:
    assert render_files(CRDS, CHART) == render_files(CRDS, CHART)
    written = write_crds(tmp_path / "crds", tmp_path / "chart")
    assert sorted(path.relative_to(tmp_path).as_posix() for path in written) == sorted(
        [f"crds/{name}" for name in NAMES] + [f"chart/templates/crds/{name}" for name in NAMES])
    assert len(write_crds(tmp_path / "only")) == len(NAMES)


def test_yaml_has_no_anchors_or_aliases() -> None:
    for text in render_files(CRDS, CHART).values():
        assert "&id0" not in text and "*id0" not in text


def test_chart_wraps_the_same_crds_behind_crds_enabled() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["crds"]["enabled"] is True
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["apiVersion"] == "v2"
    for name, crd in RENDERED.items():
        text = (CHART / "templates" / "crds" / name).read_text()
        lines = [line for line in text.splitlines() if not line.startswith("#")]
        assert lines[0] == "{{- if .Values.crds.enabled }}" and lines[-1] == "{{- end }}"
        untemplated = yaml.safe_load("\n".join(line for line in lines if "{{" not in line))
        annotations = untemplated["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        assert untemplated == crd


def test_names_short_names_categories_and_status_subresource() -> None:
    crds = {crd["spec"]["names"]["kind"]: crd for crd in RENDERED.values()}
    assert set(crds) == set(KINDS_BY_NAME) == {"DNNService", "SplitPlan", "CrossLink"}
    short = {kind: crd["spec"]["names"]["shortNames"] for kind, crd in crds.items()}
    assert short == {"DNNService": ["dnns"], "SplitPlan": ["sp"], "CrossLink": ["xl"]}
    for crd in crds.values():
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["spec"]["group"] == "splitdnn.io"
        assert crd["spec"]["names"]["categories"] == ["splitdnn"]
        (version,) = crd["spec"]["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize("name", NAMES)
def test_printer_columns_point_at_real_fields(name: str) -> None:
    version = RENDERED[name]["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert [column["name"] for column in columns][:2] == ["Ready", "Reason"]
    assert columns[0]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns[1]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    for column in columns[2:-1]:
        node = root_schema(name)
        for part in column["jsonPath"].lstrip(".").split("."):
            node = node["properties"][part]
        assert node["type"] == column["type"], column


@pytest.mark.parametrize("name", NAMES)
def test_schemas_are_structural(name: str) -> None:
    for path, node in walk(root_schema(name)):
        forbidden = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const",
                     "x-kubernetes-preserve-unknown-fields"} & set(node)
        assert not forbidden, f"{path} has {forbidden}"
        assert "default" not in node or node["default"] is not None, f"{path}: default null"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number",
                                    "boolean"}, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] == "object" and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, path
        if node["type"] == "array":
            assert isinstance(node.get("items"), dict), path
        if "exclusiveMinimum" in node:
            assert node["exclusiveMinimum"] is True and "minimum" in node, path


@pytest.mark.parametrize("name", NAMES)
def test_defaults_satisfy_their_own_schema(name: str) -> None:
    for path, node in walk(root_schema(name)):
        if "default" in node:
            errors = list(OpenApiValidator(node).iter_errors(node["default"]))
            assert not errors, f"{path}: default {node['default']!r} is invalid: {errors}"


def test_list_maps_are_keyed_by_required_scalars() -> None:
    maps = [(path, node) for _, path, node in all_nodes()
            if node.get("x-kubernetes-list-type") == "map"]
    assert {path for path, _ in maps} >= {".status.conditions", ".spec.tiers", ".spec.stages",
                                           ".spec.exits", ".status.stages"}
    for path, node in maps:
        items = node["items"]
        for key in node["x-kubernetes-list-map-keys"]:
            assert items["properties"][key]["type"] in {"string", "integer"}, path
            assert key in items.get("required", []) or "default" in items["properties"][key]


def test_conditions_have_the_metav1_shape() -> None:
    for name in NAMES:
        conditions = root_schema(name)["properties"]["status"]["properties"]["conditions"]
        items = conditions["items"]
        assert set(items["properties"]) == {"type", "status", "reason", "message",
                                            "lastTransitionTime", "observedGeneration"}
        assert set(items["required"]) == {"type", "status", "reason", "lastTransitionTime"}
        assert items["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
        assert items["properties"]["lastTransitionTime"]["format"] == "date-time"
        status = root_schema(name)["properties"]["status"]["properties"]
        assert status["observedGeneration"]["type"] == "integer"


def test_every_field_has_a_description_for_kubectl_explain() -> None:
    missing = [f"{name}{path}" for name, path, node in all_nodes()
               if "[" not in path.rsplit(".", 1)[-1] and "description" not in node
               and path != ".metadata"]
    assert not missing


def test_root_metadata_is_left_to_the_api_server() -> None:
    for name in NAMES:  # anything else there (even a description) is rejected on create
        assert root_schema(name)["properties"]["metadata"] == {"type": "object"}


def test_cel_rules_compile_and_name_existing_fields() -> None:
    environment = celpy.Environment()
    rules = 0
    for name, path, node in all_nodes():
        for rule in node.get("x-kubernetes-validations", []):
            environment.compile(rule["rule"])  # raises CELParseError on a typo
            assert rule["message"], f"{name}{path}"
            target = node
            for part in split_field_path(rule.get("fieldPath", "")):
                target = target["properties"][part]
            rules += 1
    assert rules >= 15


def test_cel_rules_only_touch_bounded_lists_and_strings() -> None:
    for name, path, node in all_nodes():
        if "x-kubernetes-validations" not in node:
            continue
        for child_path, child in walk(node, path):
            if child.get("type") == "array":
                assert "maxItems" in child, f"{name}{child_path} is unbounded but used by CEL"
            if child.get("type") == "object" and "additionalProperties" in child:
                assert "maxProperties" in child, f"{name}{child_path} is unbounded"
            if child.get("type") == "string" and "enum" not in child:
                assert "maxLength" in child, f"{name}{child_path} is unbounded but used by CEL"


def test_the_api_package_imports_no_heavy_or_cluster_modules() -> None:
    code = ("import sys, splitdnn.api; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'kopf', 'kubernetes', 'torch', 'onnx', 'onnxruntime'}))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, cwd=ROOT).stdout
    assert output.strip() == "[]"
