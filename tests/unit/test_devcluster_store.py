"""The devcluster's API semantics in-process: patches, selectors, store rules, watch edge
cases over HTTP, config errors, scheduling predicates and the no-root fallback."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from splitdnn.devcluster import apiserver, controllers, isolation
from splitdnn.devcluster.config import ConfigError, load_config, parse_config
from splitdnn.devcluster.patching import apply_patch, strategic_merge_patch
from splitdnn.devcluster.selectors import SelectorError, field_matcher, label_matcher
from splitdnn.devcluster.store import ApiError, Store

SMP = "application/strategic-merge-patch+json"


def test_strategic_merge_patch_merges_containers_by_name() -> None:
    pod = {"spec": {"containers": [{"name": "a", "image": "x", "env": [{"name": "A", "value":
                                                                         "1"}]},
                                   {"name": "b", "image": "y"}]}}
    patched = apply_patch(SMP, pod, {"spec": {"containers": [
        {"name": "a", "env": [{"name": "B", "value": "2"}]},
        {"name": "b", "$patch": "delete"}, {"name": "c", "image": "z"}]}})
    assert [c["name"] for c in patched["spec"]["containers"]] == ["a", "c"]
    assert patched["spec"]["containers"][0]["env"] == [{"name": "A", "value": "1"},
                                                       {"name": "B", "value": "2"}]
    assert patched["spec"]["containers"][0]["image"] == "x"
    ordered = strategic_merge_patch(patched, {"spec": {"$setElementOrder/containers": [
        {"name": "c"}, {"name": "a"}]}})
    assert [c["name"] for c in ordered["spec"]["containers"]] == ["c", "a"]
    replaced = strategic_merge_patch({"spec": {"a": 1, "b": 2}},
                                     {"spec": {"$patch": "replace", "c": 3}})
    assert replaced == {"spec": {"c": 3}}


def test_merge_and_json_patches() -> None:
    obj = {"metadata": {"labels": {"a": "1", "b": "2"}}, "list": [1, 2]}
    merged = apply_patch("application/merge-patch+json", obj,
                         {"metadata": {"labels": {"a": None}}, "list": [3]})
    assert merged == {"metadata": {"labels": {"b": "2"}}, "list": [3]}
    patched = apply_patch("application/json-patch+json", obj,
                          [{"op": "add", "path": "/list/-", "value": 9}])
    assert patched["list"] == [1, 2, 9] and obj["list"] == [1, 2]


def test_selectors() -> None:
    obj = {"metadata": {"name": "n", "labels": {"env": "prod", "tier": "edge"}},
           "status": {"phase": "Running"}}
    assert label_matcher("env in (prod, dev),tier!=core,!missing")(obj)
    assert not label_matcher("env notin (prod)")(obj)
    assert field_matcher("status.phase=Running,metadata.name!=x")(obj)
    with pytest.raises(SelectorError):
        label_matcher("env in (prod")


def _cms(store: Store) -> Any:
    return store.type_for("", "v1", "configmaps")


def test_store_rules() -> None:
    store = Store()
    rt = _cms(store)
    created = store.create(rt, "default", {"metadata": {"generateName": "cm-"}, "data": {}})
    name = created["metadata"]["name"]
    assert name.startswith("cm-") and created["metadata"]["generation"] == 1
    same = store.patch(rt, "default", name, "application/merge-patch+json", {"data": {}})
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    with pytest.raises(ApiError) as exc:
        store.update(rt, "default", name, dict(created, metadata=dict(
            created["metadata"], resourceVersion="1")))
    assert exc.value.code == 409
    with pytest.raises(ApiError) as exc:
        store.patch(rt, "default", name, "application/merge-patch+json",
                    {"metadata": {"name": "other"}})
    assert exc.value.code == 422


def test_compacted_event_log_means_410_gone() -> None:
    store = Store()
    store.log = deque(store.log, maxlen=3)
    for index in range(5):
        store.create(_cms(store), "default", {"metadata": {"name": f"c{index}"}})
    assert store.events_since(1) is None
    recent = store.events_since(store.rv - 2)
    assert recent is not None and [e.obj["metadata"]["name"] for e in recent] == ["c3", "c4"]

    async def watch() -> list[dict[str, Any]]:
        server = apiserver.ApiServer(store)
        server.mount()
        async with TestClient(TestServer(server.app)) as client:
            response = await client.get("/api/v1/namespaces/default/configmaps",
                                        params={"watch": "1", "resourceVersion": "1"})
            return [json.loads(line) for line in (await response.text()).splitlines()]

    events = asyncio.run(watch())
    assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410


def test_watch_sends_bookmarks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apiserver, "BOOKMARK_SECONDS", 0.05)
    store = Store()

    async def watch() -> dict[str, Any]:
        server = apiserver.ApiServer(store)
        server.mount()
        async with TestClient(TestServer(server.app)) as client:
            response = await client.get("/api/v1/namespaces/default/configmaps", params={
                "watch": "1", "allowWatchBookmarks": "true", "resourceVersion": str(store.rv),
                "timeoutSeconds": "1"})
            line = await response.content.readline()
            result: dict[str, Any] = json.loads(line)
            return result

    event = asyncio.run(watch())
    assert event["type"] == "BOOKMARK"
    assert event["object"]["metadata"]["resourceVersion"] == str(store.rv)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"links\[0\]\.bandwidthMbit"):
        parse_config({"nodes": [{"name": "a"}, {"name": "b"}],
                      "links": [{"between": ["a", "b"], "bandwidthMbit": -1}]})
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.class"):
        parse_config({"nodes": [{"name": "a", "class": "tpu"}]})
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes: [")
    with pytest.raises(ConfigError, match="YAML"):
        load_config(bad)


def test_scheduling_predicates() -> None:
    taint = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    assert not controllers.tolerates({"spec": {}}, taint)
    assert controllers.tolerates({"spec": {"tolerations": [{"operator": "Exists"}]}}, taint)
    assert controllers.tolerates({"spec": {"tolerations": [
        {"key": taint["key"], "operator": "Exists", "effect": "NoExecute"}]}}, taint)
    assert controllers.quantity("500m") == 0.5 and controllers.quantity("1Gi") == 2 ** 30


def test_without_root_nodes_fall_back_to_loopback(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation.os, "geteuid", lambda: 1000)
    layout = isolation.setup(load_config(None), "unit00", tmp_path / "isolation.json")
    assert not layout.network_isolated and not layout.cgroups
    assert any("not running as root" in w for w in layout.warnings)
    assert layout.pod_subnet_base(0).startswith("127.")
    assert layout.pod_netns(0, "127.201.1.5") is None
    assert isolation.launch_prefix(layout, "jetson-0", None) == []
    isolation.teardown(layout)


def test_server_side_apply_removes_what_the_manager_stopped_applying() -> None:
    store = Store()
    rt = store.type_for("apps", "v1", "deployments")
    apply = "application/apply-patch+yaml"

    def config(*env: str) -> dict[str, Any]:
        container = {"name": "c", "image": "i", "env": [{"name": e, "value": "1"} for e in env]}
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
                    "metadata": {"labels": {"a": "b"}}, "spec": {"containers": [container]}}}}

    store.patch(rt, "default", "d", apply, config("A", "B"), create_missing=True,
                field_manager="op")
    store.patch(rt, "default", "d", "application/merge-patch+json",
                {"metadata": {"labels": {"someone": "else"}}})
    result = store.patch(rt, "default", "d", apply, config("A"), field_manager="op")
    env = result["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env == [{"name": "A", "value": "1"}]
    assert result["metadata"]["labels"] == {"someone": "else"}
    assert result["metadata"]["generation"] == 2


def test_cluster_dns_answers_services_pods_and_nothing_else() -> None:
    from splitdnn.devcluster import dns

    store = Store()
    store.create(store.type_for("", "v1", "services"), "default",
                 {"metadata": {"name": "stage1"}, "spec": {"clusterIP": "None"}})
    store.create(store.type_for("", "v1", "endpoints"), "default", {
        "metadata": {"name": "stage1"},
        "subsets": [{"addresses": [{"ip": "10.9.2.3"}, {"ip": "10.9.1.2"}],
                     "notReadyAddresses": [{"ip": "10.9.1.9"}]}]})
    server = dns.ClusterDns(store)
    assert server.resolve("stage1.default.svc.cluster.local") == ["10.9.1.2", "10.9.2.3"]
    assert server.resolve("10-9-1-2.default.pod.cluster.local") == ["10.9.1.2"]
    assert server.resolve("missing.default.svc.cluster.local") is None
    assert server.resolve("example.com") is None
    # the wire format: a query for stage1.default.svc.cluster.local, type A
    name = b"".join(bytes([len(p)]) + p.encode() for p in
                    ["stage1", "default", "svc", "cluster", "local"]) + b"\0"
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + name + b"\x00\x01\x00\x01"
    ident, flags, parsed, qtype, question = dns.parse_query(query) or (0, 0, "", 0, b"")
    assert (ident, parsed, qtype) == (0x1234, "stage1.default.svc.cluster.local", dns.A)
    reply = dns.build_response(ident, flags, question, dns.NOERROR, ["10.9.1.2"])
    assert reply[:4] == b"\x12\x34\x81\x80" and reply.endswith(bytes([10, 9, 1, 2]))
