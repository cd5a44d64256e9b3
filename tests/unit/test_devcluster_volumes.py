"""The devcluster kubelet's configMap volumes: where a mount lands and which files it shows."""

from __future__ import annotations

import base64

from splitdnn.devcluster.kubelet import configmap_files, mount_below_workdir

CONFIGMAP = {"data": {"links.json": '{"entry": "ab"}'},
             "binaryData": {"entry.onnx": base64.b64encode(b"\x00\x01onnx").decode()}}


def test_a_mount_below_the_working_dir_maps_into_the_pod_directory() -> None:
    assert mount_below_workdir("/work/links", "/work") == "links"
    assert mount_below_workdir("/work/a/b", "/work/") == "a/b"


def test_mounts_elsewhere_are_not_placed() -> None:
    assert mount_below_workdir("/links", "/work") is None
    assert mount_below_workdir("/work", "/work") is None
    assert mount_below_workdir("/workshop/x", "/work") is None
    assert mount_below_workdir("/work/links", None) is None


def test_every_key_is_a_file_with_binary_data_decoded() -> None:
    files = configmap_files({"name": "x"}, CONFIGMAP)
    assert files == {"links.json": b'{"entry": "ab"}', "entry.onnx": b"\x00\x01onnx"}


def test_items_pick_keys_and_paths() -> None:
    files = configmap_files({"name": "x", "items": [
        {"key": "entry.onnx", "path": "in/entry.onnx"}, {"key": "absent", "path": "no"}]},
        CONFIGMAP)
    assert files == {"in/entry.onnx": b"\x00\x01onnx"}
