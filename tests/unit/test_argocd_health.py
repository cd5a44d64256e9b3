"""The Argo CD health check (manifests/argocd/health.lua), run in a real Lua interpreter as
Argo CD runs it: a global ``obj`` in, a table ``{status, message}`` out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lupa import LuaRuntime

SCRIPT = (Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "health.lua").read_text()


def to_lua(lua: LuaRuntime, value: Any) -> Any:
    if isinstance(value, dict):
        return lua.table_from({key: to_lua(lua, item) for key, item in value.items()})
    if isinstance(value, list):
        return lua.table_from([to_lua(lua, item) for item in value])
    return value


def health(obj: dict[str, Any]) -> tuple[str, str]:
    lua = LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = to_lua(lua, obj)
    result = lua.execute(SCRIPT)
    return str(result["status"]), str(result["message"])


def resource(generation: int, observed: int | None, **conditions: tuple[str, str, str]
             ) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [
        {"type": kind, "status": value, "reason": reason, "message": message}
        for kind, (value, reason, message) in conditions.items()]}
    if observed is not None:
        status["observedGeneration"] = observed
    return {"metadata": {"name": "resnet50", "generation": generation}, "status": status}


@pytest.mark.parametrize(("obj", "expected", "in_message"), [
    ({"metadata": {"generation": 1}}, "Progressing", "Waiting"),
    (resource(2, 1, Ready=("True", "Ready", "serving")), "Progressing", "generation 2"),
    (resource(1, 1, Ready=("True", "RolledOut", "3 stages ready")), "Healthy", "3 stages"),
    (resource(1, 1, Ready=("False", "Invalid", "x"),
              Stalled=("True", "InvalidSpec", "spec.tiers[0].nodeSelector: empty")),
     "Degraded", "spec.tiers[0].nodeSelector"),
    (resource(1, 1, Ready=("False", "Profiling", "x"),
              Reconciling=("True", "Profiling", "profiling jetson-nano")),
     "Progressing", "profiling jetson-nano"),
    (resource(1, 1, Ready=("False", "StageUnavailable", "stage 1 has no ready replica")),
     "Degraded", "stage 1"),
    (resource(3, None, Ready=("True", "Ready", "ok")), "Progressing", "generation 3"),
])
def test_health_follows_the_conditions(obj: dict[str, Any], expected: str,
                                       in_message: str) -> None:
    status, message = health(obj)
    assert status == expected
    assert in_message in message
