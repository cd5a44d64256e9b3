"""CrossLink API: skip paths in readable form, batch bounds, defaults the experiment supports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from splitdnn.api import CrossLink, default_manifest, validate_manifest
from splitdnn.coordination.paths import parse_path

ROOT = Path(__file__).resolve().parents[2]


def example() -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(
        (ROOT / "manifests" / "examples" / "crosslink.yaml").read_text())
    return manifest


def test_a_skip_path_is_two_numbers_and_parses_as_the_library_skip_path() -> None:
    manifest = example()
    manifest["spec"]["path"] = [1, 4]
    assert validate_manifest(manifest) == []
    spec = CrossLink.model_validate(manifest).spec
    assert spec.path is not None
    path = parse_path(spec.path, spec.local_blocks, spec.host_blocks)
    assert path.is_skip and (path.lout, path.lin) == (1, 4)


def test_a_cross_path_parses_as_the_same_library_path() -> None:
    spec = CrossLink.model_validate(example()).spec
    assert spec.path is not None
    path = parse_path(spec.path, spec.local_blocks, spec.host_blocks)
    assert not path.is_skip and path.as_list() == spec.path


def test_offloaded_samples_are_bounded_by_both_batches() -> None:
    manifest = example()
    manifest["spec"].update(offloadedSamples=8, localBatch=32, hostBatch=6)
    errors = validate_manifest(manifest)
    assert [e.path for e in errors] == ["spec.offloadedSamples"]
    assert "hostBatch" in errors[0].message


def test_defaults_are_those_the_digits_experiment_used() -> None:
    manifest = example()
    del manifest["spec"]["training"]["epochs"]
    manifest["spec"]["path"] = None
    manifest["spec"]["search"] = {}
    stored = default_manifest(manifest)
    assert stored["spec"]["search"]["aMin"] == 0.9
    assert stored["spec"]["search"]["k"] == 50
    assert stored["spec"]["training"]["learningRate"] == 0.01
    assert stored["spec"]["training"]["epochs"] == 5
    assert stored["spec"]["offloadThresholdInFlight"] == 4


def test_sklearn_digits_is_a_data_source_without_a_digest() -> None:
    manifest = example()
    manifest["spec"]["training"]["data"] = {"source": "sklearn:digits"}
    assert validate_manifest(manifest) == []
    manifest["spec"]["training"]["data"] = {"source": "ftp://data"}
    assert [e.path for e in validate_manifest(manifest)] == ["spec.training.data.source"]
