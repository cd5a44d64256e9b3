"""The four PATCH flavours a Kubernetes API server accepts, applied to plain JSON dicts.

JSON merge patch (RFC 7386), JSON patch (RFC 6902, via ``jsonpatch``), strategic merge
patch (lists of containers, env vars, ports, volumes, conditions merged by their key, with
the ``$patch``, ``$setElementOrder``, ``$deleteFromPrimitiveList`` and ``$retainKeys``
directives that kubectl sends) and server-side apply, approximated for one field manager:
the applied configuration is merged strategically, and fields the same manager applied last
time but no longer applies are removed (``with_removals``); no ownership conflicts.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch

# Lists merged item by item in a strategic merge patch, by the field that identifies an item.
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "conditions": ("type",),
    "ports": ("containerPort", "port"),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "topologySpreadConstraints": ("topologyKey",),
}
# Lists of scalars whose strategic patch strategy is "merge" (union) rather than replace.
MERGED_SCALAR_LISTS = frozenset({"finalizers"})


class PatchError(ValueError):
    """A patch that cannot be applied (malformed, or a failed JSON-patch test)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 operations list."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    try:
        result: dict[str, Any] = jsonpatch.apply_patch(target, operations)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
        raise PatchError(f"JSON patch failed: {exc}") from exc
    return result


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch on untyped JSON, with the common merge keys."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            result[field] = [item for item in result.get(field, []) if item not in value]
        elif key.startswith("$setElementOrder/") and isinstance(value, list):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = _reorder(result[field], value)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = list(current) if isinstance(current, list) else []
    if field in MERGED_SCALAR_LISTS:
        return current_list + [item for item in patch if item not in current_list]
    key = _merge_key(field, patch + current_list)
    if key is None:
        return [item for item in copy.deepcopy(patch) if not _is_directive(item)]
    by_key = {item.get(key): index for index, item in enumerate(current_list)
              if isinstance(item, dict)}
    for item in patch:
        if not isinstance(item, dict):
            continue
        index = by_key.get(item.get(key))
        if item.get("$patch") == "delete":
            if index is not None:
                current_list[index] = None
            continue
        if index is None:
            by_key[item.get(key)] = len(current_list)
            current_list.append(strategic_merge_patch({}, item))
        else:
            current_list[index] = strategic_merge_patch(current_list[index], item)
    return [item for item in current_list if item is not None]


def _merge_key(field: str, items: list[Any]) -> str | None:
    for key in MERGE_KEYS.get(field, ()):
        if items and all(isinstance(item, dict) and key in item for item in items):
            return key
    return None


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _reorder(items: list[Any], order: list[Any]) -> list[Any]:
    def position(item: Any) -> int:
        for index, wanted in enumerate(order):
            if item == wanted or (
                isinstance(item, dict) and isinstance(wanted, dict)
                and all(item.get(k) == v for k, v in wanted.items())
            ):
                return index
        return len(order)

    return sorted(items, key=position)


def apply_patch(content_type: str, target: dict[str, Any], patch: Any) -> dict[str, Any]:
    """Apply a PATCH body of the given content type to ``target`` (not modified)."""
    flavour = content_type.split(";")[0].strip()
    if flavour == "application/json-patch+json":
        return json_patch(target, patch)
    if not isinstance(patch, dict):
        raise PatchError(f"a {flavour} body must be a JSON object")
    if flavour == "application/merge-patch+json":
        result: dict[str, Any] = merge_patch(target, patch)
        return result
    if flavour in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
        return strategic_merge_patch(target, patch) or {}
    raise PatchError(f"unsupported patch content type {flavour!r}")


def with_removals(previous: Any, applied: Any, field: str = "") -> Any:
    """``applied`` plus deletions of what ``previous`` had and ``applied`` dropped, as a
    strategic merge patch (what apply does for the fields one manager owns)."""
    if isinstance(previous, dict) and isinstance(applied, dict):
        patch: dict[str, Any] = {}
        for key, value in applied.items():
            patch[key] = with_removals(previous.get(key), value, key) if key in previous \
                else copy.deepcopy(value)
        for key in previous:
            if key not in applied:
                patch[key] = None
        return patch
    if isinstance(previous, list) and isinstance(applied, list):
        key = _merge_key(field, previous + applied)
        if key is None:
            return copy.deepcopy(applied)
        before = {item.get(key): item for item in previous if isinstance(item, dict)}
        items = [with_removals(before.get(item.get(key)), item, "") if isinstance(item, dict)
                 else item for item in applied]
        kept = {item.get(key) for item in applied if isinstance(item, dict)}
        items += [{key: name, "$patch": "delete"} for name in before if name not in kept]
        return items
    return copy.deepcopy(applied)
