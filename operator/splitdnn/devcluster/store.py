"""The emulated API server's object store: Kubernetes semantics on plain JSON dicts.

Every write goes through here, so the server and the in-process controllers (scheduler,
kubelet, workload controllers) see the same rules: ``uid``, ``creationTimestamp``, one
cluster-wide ``resourceVersion`` counter with 409 on a stale one, ``generation`` bumped only
when the spec changes, status written only through the ``/status`` subresource where a type
has one, finalizers and ``deletionTimestamp``, owner-reference garbage collection
(background, foreground, orphan), namespace deletion, and CRDs registering their kinds.
Every change is appended to a bounded event log; watches replay it to resume from a
``resourceVersion`` and get 410 Gone when it has been compacted away.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from splitdnn.api.errors import UNKNOWN_FIELD
from splitdnn.api.validation import CrdValidator
from splitdnn.devcluster.patching import PatchError, apply_patch, with_removals
from splitdnn.devcluster.resources import BUILTIN_TYPES, ResourceType

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace or "", name)
StoreKey = tuple[str, str]  # (group, plural)
EVENT_LOG_SIZE = 20000
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


class ApiError(Exception):
    """An API failure rendered as a ``Status`` object with an HTTP code."""

    def __init__(self, code: int, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": self.message, "reason": self.reason, "code": self.code,
                "details": self.details}


def not_found(rt: ResourceType, name: str) -> ApiError:
    resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(404, "NotFound", f'{resource} "{name}" not found',
                    name=name, group=rt.group, kind=rt.plural)


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": {why}',
                    name=name, group=rt.group, kind=rt.plural)


def invalid(rt: ResourceType, name: str, field: str, why: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind} "{name}" is invalid: {field}: {why}',
                    name=name, group=rt.group, kind=rt.kind,
                    causes=[{"reason": "FieldValueInvalid", "message": why, "field": field}])


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Event:
    """One change: the object after it (before it, for the watch's selector transitions)."""

    rv: int
    key: StoreKey
    type: str
    obj: Obj
    old: Obj | None


class Store:
    """All objects, the resource registry, and the event log."""

    def __init__(self) -> None:
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[StoreKey, dict[ObjKey, Obj]] = {}
        self.rv = 0
        self.log: deque[Event] = deque(maxlen=EVENT_LOG_SIZE)
        self.listeners: list[Callable[[Event], None]] = []
        # (group, plural) -> predicate: True when deleting this object must wait for its
        # owner process (the kubelet stops a pod's containers before the pod goes away).
        self.graceful_deletion: dict[StoreKey, Callable[[Obj], bool]] = {}
        # Custom resources are pruned, defaulted and validated against their CRD's schema
        # (OpenAPI v3 + CEL rules), as the apiextensions-apiserver does.
        self.validators: dict[tuple[str, str, str], CrdValidator] = {}
        # Server-side apply: the configuration each field manager applied last, per object.
        self.applied: dict[tuple[str, str], Obj] = {}
        self._collecting = False
        for rt in BUILTIN_TYPES:
            self.register(rt)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            self.create(self.type_for("", "v1", "namespaces"), "", {"metadata": {"name": ns}})

    # ---- registry -----------------------------------------------------------------
    def register(self, rt: ResourceType) -> None:
        self.types[(rt.group, rt.version, rt.plural)] = rt
        self.objects.setdefault(rt.storage_key, {})

    def unregister_group_plural(self, group: str, plural: str) -> None:
        for key in [k for k in self.types if k[0] == group and k[2] == plural]:
            del self.types[key]

    def type_for(self, group: str, version: str, plural: str) -> ResourceType:
        try:
            return self.types[(group, version, plural)]
        except KeyError:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound",
                           f"the server could not find the requested resource ({gv} {plural})"
                           ) from None

    def type_of(self, obj: Obj) -> ResourceType:
        """The resource type for an object's apiVersion and kind."""
        group, _, version = obj.get("apiVersion", "").rpartition("/")
        for rt in self.types.values():
            if rt.group == group and rt.version == version and rt.kind == obj.get("kind"):
                return rt
        raise ApiError(404, "NotFound", f"no kind {obj.get('kind')!r} in {obj.get('apiVersion')}")

    # ---- reads ---------------------------------------------------------------------
    def get(self, rt: ResourceType, namespace: str, name: str) -> Obj:
        obj = self.objects[rt.storage_key].get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise not_found(rt, name)
        return self._render(rt, obj)

    def find(self, rt: ResourceType, namespace: str, name: str) -> Obj | None:
        try:
            return self.get(rt, namespace, name)
        except ApiError:
            return None

    def list_objects(self, rt: ResourceType, namespace: str | None = None,
             match: Callable[[Obj], bool] | None = None) -> list[Obj]:
        items = []
        for (ns, _), obj in sorted(self.objects[rt.storage_key].items()):
            if namespace and rt.namespaced and ns != namespace:
                continue
            if match is None or match(obj):
                items.append(self._render(rt, obj))
        return items

    def _render(self, rt: ResourceType, obj: Obj) -> Obj:
        result = copy.deepcopy(obj)
        result["apiVersion"], result["kind"] = rt.api_version, rt.kind
        return result

    def all_objects(self) -> Iterator[tuple[ResourceType, Obj]]:
        for key, objs in self.objects.items():
            rt = self._storage_type(key)
            if rt is None:
                continue
            for obj in list(objs.values()):
                yield rt, obj

    def _storage_type(self, key: StoreKey) -> ResourceType | None:
        for rt in self.types.values():
            if rt.storage_key == key:
                return rt
        return None

    # ---- writes --------------------------------------------------------------------
    def create(self, rt: ResourceType, namespace: str, body: Obj, dry_run: bool = False,
               strict: bool = False) -> Obj:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise invalid(rt, "", "metadata.name",
                          "Required value: name or generateName is required")
        if rt.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                               "match the namespace sent on the request")
            self._require_namespace(namespace)
            meta["namespace"] = namespace
        else:
            namespace = ""
            meta.pop("namespace", None)
        key = (namespace, name)
        if key in self.objects[rt.storage_key]:
            resource = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
            raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists',
                           name=name, group=rt.group, kind=rt.plural)
        obj = self._admit(rt, obj, strict)
        meta = obj["metadata"]
        for transient in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(transient, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        if rt.has_status and rt.group != "" and "status" in obj and rt.kind != "Node":
            obj.pop("status")  # custom resources drop status on create, as the server does
        self._defaults(rt, obj)
        if dry_run:
            return self._render(rt, obj)
        self._commit(rt, key, obj, None, "ADDED")
        if rt.plural == "customresourcedefinitions":
            self._crd_changed(obj)
        self.collect_garbage()
        return self.get(rt, namespace, name)

    def update(self, rt: ResourceType, namespace: str, name: str, body: Obj,
               subresource: str | None = None, dry_run: bool = False,
               strict: bool = False) -> Obj:
        """PUT: replace the object (or only its status), with optimistic concurrency."""
        old = self.get(rt, namespace, name)
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        new = self._merge_write(rt, old, copy.deepcopy(body), subresource)
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name, "the object has been modified; please apply your changes "
                                     "to the latest version and try again")
        return self._write(rt, old, new, dry_run, strict)

    def patch(self, rt: ResourceType, namespace: str, name: str, content_type: str,
              patch: Any, subresource: str | None = None, dry_run: bool = False,
              create_missing: bool = False, strict: bool = False,
              field_manager: str = "") -> Obj:
        """PATCH with any of the four flavours; resourceVersion in the patch is a precondition."""
        old = self.find(rt, namespace, name)
        applying = content_type.startswith("application/apply-patch")
        if old is None:
            if not create_missing:
                raise not_found(rt, name)
            body = dict(patch)
            body.setdefault("metadata", {})["name"] = name
            created = self.create(rt, namespace, body, dry_run, strict)
            if applying and not dry_run:
                self.applied[(created["metadata"]["uid"], field_manager)] = patch
            return created
        if applying:
            key = (old["metadata"]["uid"], field_manager)
            previous = self.applied.get(key, {})
            if not dry_run:
                self.applied[key] = patch
            patch = with_removals(previous, patch)
        try:
            patched = apply_patch(content_type, old, patch)
        except PatchError as exc:
            raise ApiError(422, "Invalid", str(exc)) from exc
        sent_rv = (patched.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name, "the object has been modified; please apply your changes "
                                     "to the latest version and try again")
        new = self._merge_write(rt, old, patched, subresource)
        return self._write(rt, old, new, dry_run, strict)

    def _merge_write(self, rt: ResourceType, old: Obj, body: Obj, subresource: str | None) -> Obj:
        """The object to store: status only through /status, identity fields kept."""
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in body:
                new["status"] = body["status"]
            else:
                new.pop("status", None)
            return new
        new = body
        if rt.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if meta.get("name", old_meta["name"]) != old_meta["name"]:
            raise invalid(rt, old_meta["name"], "metadata.name", "field is immutable")
        for kept in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "generation"):
            if kept in old_meta:
                meta[kept] = old_meta[kept]
            else:
                meta.pop(kept, None)
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or []) - set(old_meta.get("finalizers") or [])
            if added:
                raise ApiError(422, "Forbidden", "no new finalizers can be added if the object "
                               f"is being deleted, found new finalizers {sorted(added)!r}")
        return new

    def _write(self, rt: ResourceType, old: Obj, new: Obj, dry_run: bool,
               strict: bool = False) -> Obj:
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        new = self._admit(rt, new, strict)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if _spec_of(rt, new) != _spec_of(rt, old):
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        if new == old or dry_run:
            return new
        key = self._key(rt, new)
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self._remove(rt, key, new)
        else:
            self._commit(rt, key, new, old, "MODIFIED")
            if rt.plural == "customresourcedefinitions":
                self._crd_changed(new)
        self.collect_garbage()
        return self.find(rt, key[0], key[1]) or self._render(rt, new)

    def delete(self, rt: ResourceType, namespace: str, name: str, propagation: str | None = None,
               preconditions: dict[str, str] | None = None, dry_run: bool = False) -> Obj:
        """DELETE: mark (finalizers, foreground, graceful pods) or remove now."""
        obj = self.get(rt, namespace, name)
        meta = obj["metadata"]
        for field, value in (preconditions or {}).items():
            if value and meta.get(field) != value:
                raise conflict(rt, name, f"Precondition failed: {field} in precondition: {value}, "
                                         f"{field} in object meta: {meta.get(field)}")
        if dry_run:
            return obj
        finalizers = list(meta.get("finalizers") or [])
        if propagation == "Foreground" and FOREGROUND not in finalizers:
            finalizers.append(FOREGROUND)
        if propagation == "Orphan":
            self._orphan_dependents(meta["uid"])
        graceful = self.graceful_deletion.get(rt.storage_key, lambda _: False)(obj)
        if not finalizers and not graceful and rt.kind != "Namespace":
            self._remove(rt, self._key(rt, obj), obj)
            self.collect_garbage()
            return obj
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = finalizers
        if not finalizers:
            new["metadata"].pop("finalizers")
        if not meta.get("deletionTimestamp"):
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 30 if graceful else 0
            if rt.kind == "Namespace":
                new.setdefault("status", {})["phase"] = "Terminating"
        if new != obj:
            self._commit(rt, self._key(rt, new), new, obj, "MODIFIED")
        self.collect_garbage()
        return self.find(rt, namespace, name) or new

    def remove_now(self, rt: ResourceType, namespace: str, name: str) -> None:
        """Finish a graceful deletion (the kubelet stopped the pod): gone unless finalized."""
        obj = self.find(rt, namespace, name)
        if obj is None or obj["metadata"].get("finalizers"):
            return
        self._remove(rt, self._key(rt, obj), obj)
        self.collect_garbage()

    # ---- internals -----------------------------------------------------------------
    def _key(self, rt: ResourceType, obj: Obj) -> ObjKey:
        meta = obj["metadata"]
        return (meta.get("namespace", "") if rt.namespaced else "", meta["name"])

    def _require_namespace(self, namespace: str) -> None:
        ns = self.objects[("", "namespaces")].get(("", namespace))
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           name=namespace, kind="namespaces")
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden", f"unable to create new content in namespace "
                           f"{namespace} because it is being terminated")

    def _admit(self, rt: ResourceType, obj: Obj, strict: bool) -> Obj:
        """Validate; custom resources are also pruned and defaulted by their schema.
        Unknown fields are errors only with ``fieldValidation=Strict`` (else dropped)."""
        self._validate(rt, obj)
        validator = self.validators.get((rt.group, rt.version, rt.plural))
        if validator is None:
            return obj
        candidate = dict(obj, apiVersion=rt.api_version, kind=rt.kind)
        errors = [e for e in validator.validate(candidate)
                  if strict or e.reason != UNKNOWN_FIELD]
        if errors:
            name = obj["metadata"].get("name", "")
            listing = ", ".join(str(e) for e in errors)
            raise ApiError(422, "Invalid", f'{rt.kind}.{rt.group} "{name}" is invalid: '
                           f"[{listing}]", name=name, group=rt.group, kind=rt.kind,
                           causes=[{"reason": e.reason, "message": e.message, "field": e.path}
                                   for e in errors])
        return validator.default(candidate)

    def _validate(self, rt: ResourceType, obj: Obj) -> None:
        name = obj["metadata"]["name"]
        labels = obj["metadata"].get("labels") or {}
        for key, value in labels.items():
            if not isinstance(value, str) or len(value) > 63:
                raise invalid(rt, name, f"metadata.labels[{key}]",
                              "a label value must be a string of at most 63 characters")
        if rt.kind == "Deployment":
            selector = (obj.get("spec") or {}).get("selector")
            if not selector:
                raise invalid(rt, name, "spec.selector", "Required value")

    def _defaults(self, rt: ResourceType, obj: Obj) -> None:
        spec = obj.setdefault("spec", {}) if rt.kind in ("Deployment", "Job", "Service") else None
        if rt.kind == "Deployment" and spec is not None:
            spec.setdefault("replicas", 1)
            spec.setdefault("strategy", {"type": "RollingUpdate", "rollingUpdate": {
                "maxSurge": "25%", "maxUnavailable": "25%"}})
            spec.setdefault("revisionHistoryLimit", 10)
        if rt.kind == "Job" and spec is not None:
            uid = obj["metadata"]["uid"]
            if "selector" not in spec:
                spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
                labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault(
                    "labels", {})
                labels.update({"batch.kubernetes.io/controller-uid": uid, "controller-uid": uid,
                               "batch.kubernetes.io/job-name": obj["metadata"]["name"],
                               "job-name": obj["metadata"]["name"]})
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
        if rt.kind == "Service" and spec is not None:
            spec.setdefault("type", "ClusterIP")
            if "clusterIP" not in spec:
                spec["clusterIP"] = f"10.96.{(self.rv // 250) % 250}.{self.rv % 250 + 2}"
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        if rt.kind == "Namespace":
            obj.setdefault("status", {"phase": "Active"})
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = (
                obj["metadata"]["name"])

    def _commit(self, rt: ResourceType, key: ObjKey, obj: Obj, old: Obj | None, kind: str) -> None:
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.objects[rt.storage_key][key] = obj
        self._emit(Event(self.rv, rt.storage_key, kind, obj, old))

    def _remove(self, rt: ResourceType, key: ObjKey, obj: Obj) -> None:
        stored = self.objects[rt.storage_key].pop(key, None)
        if stored is None:
            return
        self.rv += 1
        final = copy.deepcopy(stored)
        final["metadata"]["resourceVersion"] = str(self.rv)
        self._emit(Event(self.rv, rt.storage_key, "DELETED", final, stored))
        if rt.plural == "customresourcedefinitions":
            self._crd_removed(final)

    def _emit(self, event: Event) -> None:
        self.log.append(event)
        for listener in list(self.listeners):
            listener(event)

    def events_since(self, rv: int) -> list[Event] | None:
        """Events after ``rv``; None when the log no longer reaches back that far."""
        if self.log and rv < self.log[0].rv - 1:
            return None
        return [event for event in self.log if event.rv > rv]

    # ---- CRDs ----------------------------------------------------------------------
    def _crd_changed(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        self.unregister_group_plural(spec.get("group", ""), names.get("plural", ""))
        for key in [k for k in self.validators if k[0] == spec.get("group") and
                    k[2] == names.get("plural")]:
            del self.validators[key]
        for rt in ResourceType.from_crd(crd):
            self.register(rt)
            with contextlib.suppress(KeyError, TypeError):
                self.validators[(rt.group, rt.version, rt.plural)] = CrdValidator.for_crd(
                    crd, rt.version)
        status = {
            "acceptedNames": {k: v for k, v in names.items() if k != "listKind"}
            | {"listKind": names.get("listKind", f"{names.get('kind', '')}List")},
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
            "conditions": [
                {"type": cond, "status": "True", "reason": reason, "message": message,
                 "lastTransitionTime": now_rfc3339()}
                for cond, reason, message in (
                    ("NamesAccepted", "NoConflicts", "no conflicts found"),
                    ("Established", "InitialNamesAccepted", "the initial names have been accepted"),
                )
            ],
        }
        if crd.get("status") != status:
            new = copy.deepcopy(crd)
            new["status"] = status
            rt = self.type_for("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            self._commit(rt, ("", crd["metadata"]["name"]), new, crd, "MODIFIED")

    def _crd_removed(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        group, plural = spec.get("group", ""), (spec.get("names") or {}).get("plural", "")
        storage = self.objects.get((group, plural), {})
        versions = [rt for rt in self.types.values() if rt.storage_key == (group, plural)]
        for key, obj in list(storage.items()):
            if versions:
                self._remove(versions[0], key, obj)
        self.unregister_group_plural(group, plural)
        self.objects.pop((group, plural), None)

    # ---- garbage collection ----------------------------------------------------------
    def collect_garbage(self) -> None:
        """Owner references, foreground deletion and namespaces, until nothing changes."""
        if self._collecting:
            return
        self._collecting = True
        try:
            while self._collect_once():
                pass
        finally:
            self._collecting = False

    def _collect_once(self) -> bool:
        live_uids = {obj["metadata"]["uid"] for _, obj in self.all_objects()}
        dependents: dict[str, list[tuple[ResourceType, Obj]]] = {}
        for rt, obj in self.all_objects():
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid", ""), []).append((rt, obj))
        for rt, obj in self.all_objects():
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp") and not any(
                    ref.get("uid") in live_uids for ref in refs):
                self.delete(rt, meta.get("namespace", ""), meta["name"], "Background")
                return True
            deleting = bool(meta.get("deletionTimestamp"))
            if deleting and FOREGROUND in (meta.get("finalizers") or []) and \
                    self._foreground_step(rt, obj, dependents.get(meta["uid"], [])):
                return True
            if deleting and rt.kind == "Namespace" and self._namespace_step(rt, obj):
                return True
        return False

    def _foreground_step(self, rt: ResourceType, obj: Obj,
                         dependents: list[tuple[ResourceType, Obj]]) -> bool:
        pending = [(drt, dep) for drt, dep in dependents
                   if not dep["metadata"].get("deletionTimestamp")]
        for drt, dep in pending:
            self.delete(drt, dep["metadata"].get("namespace", ""), dep["metadata"]["name"],
                        "Foreground")
        if pending:
            return True
        if dependents:
            return False
        self._drop_finalizer(rt, obj, FOREGROUND)
        return True

    def _namespace_step(self, rt: ResourceType, ns: Obj) -> bool:
        name = ns["metadata"]["name"]
        remaining = [(ort, obj) for ort, obj in self.all_objects()
                     if ort.namespaced and obj["metadata"].get("namespace") == name]
        for ort, obj in remaining:
            if not obj["metadata"].get("deletionTimestamp"):
                self.delete(ort, name, obj["metadata"]["name"], "Background")
        if remaining:
            return any(not obj["metadata"].get("deletionTimestamp") for _, obj in remaining)
        if not ns["metadata"].get("finalizers"):
            self._remove(rt, ("", name), ns)
            return True
        return False

    def _drop_finalizer(self, rt: ResourceType, obj: Obj, finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in obj["metadata"].get("finalizers") or []
                                         if f != finalizer]
        if not new["metadata"]["finalizers"]:
            self._remove(rt, self._key(rt, obj), obj)
        else:
            self._commit(rt, self._key(rt, obj), new, obj, "MODIFIED")

    def _orphan_dependents(self, uid: str) -> None:
        for rt, obj in list(self.all_objects()):
            refs = obj["metadata"].get("ownerReferences") or []
            kept = [ref for ref in refs if ref.get("uid") != uid]
            if len(kept) != len(refs):
                new = copy.deepcopy(obj)
                new["metadata"]["ownerReferences"] = kept
                if not kept:
                    new["metadata"].pop("ownerReferences")
                self._commit(rt, self._key(rt, obj), new, obj, "MODIFIED")


def _spec_of(rt: ResourceType, obj: Obj) -> Any:
    """What ``generation`` tracks: the spec where status is a subresource, else everything
    but metadata (as for custom resources without a status subresource)."""
    if rt.has_status:
        return obj.get("spec")
    return {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind")}
