"""The HTTP face of the emulated API server (aiohttp): REST paths, watches, discovery.

Paths follow Kubernetes: ``/api/v1[/namespaces/NS]/PLURAL[/NAME[/SUB]]`` and
``/apis/GROUP/VERSION/...``; verbs GET (get, list, ``?watch=1``), POST (201), PUT, PATCH
(four content types), DELETE (with ``propagationPolicy`` and preconditions) and
DELETE on a collection. ``Accept: ...;as=Table`` gets server-side tables for ``kubectl get``.
Container logs come from a ``LogSource`` the kubelet provides.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from splitdnn.devcluster import protobuf, resources, tables
from splitdnn.devcluster.patching import apply_patch
from splitdnn.devcluster.protobuf import ProtobufError
from splitdnn.devcluster.resources import ResourceType
from splitdnn.devcluster.selectors import SelectorError, field_matcher, label_matcher
from splitdnn.devcluster.store import ApiError, Event, Obj, Store

log = logging.getLogger(__name__)
BOOKMARK_SECONDS = 5.0
# (namespace, pod, container, previous, tail_lines, follow) -> chunks of log text
LogSource = Callable[[str, str, str | None, bool, int | None, bool], AsyncIterator[bytes]]


@dataclass
class Target:
    """A parsed resource path."""

    rt: ResourceType
    namespace: str
    name: str | None
    subresource: str | None


class ApiServer:
    """Binds a Store to HTTP; ``extra_routes`` lets the daemon add its control endpoints."""

    def __init__(self, store: Store, log_source: LogSource | None = None) -> None:
        self.store = store
        self.log_source = log_source
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.watch_queues: set[asyncio.Queue[Event]] = set()
        self.stopping = asyncio.Event()
        store.listeners.append(self._fan_out)
        self.fixed: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
            "/version": self._version, "/api": self._api, "/apis": self._apis,
            "/openapi/v3": self._openapi_root, "/healthz": self._ok, "/readyz": self._ok,
            "/livez": self._ok,
        }

    def mount(self) -> None:
        """Add the catch-all route last, after any extra routes."""
        self.app.router.add_route("*", "/{tail:.*}", self._dispatch)

    def _fan_out(self, event: Event) -> None:
        for queue in list(self.watch_queues):
            queue.put_nowait(event)

    # ---- dispatch ------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        try:
            path = request.path.rstrip("/") or "/"
            if path in self.fixed:
                return await self.fixed[path](request)
            if path.startswith("/openapi/v3/"):
                return _json(resources.openapi_v3_doc(self._types(), path[len("/openapi/v3/"):]))
            if path == "/":
                return _json({"paths": sorted(self._root_paths())})
            discovery = self._discovery(path)
            if discovery is not None:
                return _json(discovery)
            return await self._resource(request, self._parse(path))
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
            return _json(ApiError(400, "BadRequest", f"malformed body: {exc}").status(), 400)
        except SelectorError as exc:
            return _json(ApiError(400, "BadRequest", str(exc)).status(), 400)
        except Exception as exc:  # an emulator bug: answer as the API server would, and log
            log.exception("internal error serving %s %s", request.method, request.path)
            return _json(ApiError(500, "InternalError", f"devcluster: {exc!r}").status(), 500)

    def _types(self) -> list[ResourceType]:
        return list(self.store.types.values())

    def _root_paths(self) -> set[str]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v3", "/healthz"}
        for group, versions in resources.group_versions(self._types()).items():
            paths.add(f"/apis/{group}")
            paths.update(f"/apis/{group}/{v}" for v in versions)
        return paths

    def _discovery(self, path: str) -> Obj | None:
        parts = path.strip("/").split("/")
        if parts == ["api", "v1"]:
            return resources.api_resource_list(self._types(), "", "v1")
        if parts[0] != "apis" or len(parts) not in (2, 3):
            return None
        groups = resources.group_versions(self._types())
        if parts[1] not in groups or (len(parts) == 3 and parts[2] not in groups[parts[1]]):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if len(parts) == 2:
            return {"kind": "APIGroup", "apiVersion": "v1"} | resources.api_group(
                parts[1], groups[parts[1]])
        return resources.api_resource_list(self._types(), parts[1], parts[2])

    def _parse(self, path: str) -> Target:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        namespace = ""
        if len(rest) >= 3 and rest[0] == "namespaces" and (group, version, rest[2]) in \
                self.store.types:
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.store.type_for(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource "
                           f"({rt.plural}/{sub})")
        return Target(rt, namespace, name, sub)

    # ---- fixed endpoints ------------------------------------------------------------
    async def _version(self, request: web.Request) -> web.StreamResponse:
        return _json(resources.SERVER_VERSION)

    async def _api(self, request: web.Request) -> web.StreamResponse:
        return _json({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": request.host}]})

    async def _apis(self, request: web.Request) -> web.StreamResponse:
        return _json(resources.api_group_list(self._types()))

    async def _openapi_root(self, request: web.Request) -> web.StreamResponse:
        return _json(resources.openapi_v3_root(self._types()))

    async def _ok(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")

    # ---- resources -----------------------------------------------------------------
    async def _resource(self, request: web.Request, target: Target) -> web.StreamResponse:
        method, query = request.method, request.query
        dry_run = "dryRun" in query
        strict = query.get("fieldValidation") == "Strict"
        store, rt = self.store, target.rt
        if method == "GET" and target.name is None:
            if query.get("watch") in ("1", "true"):
                return await self._watch(request, target)
            return self._list(request, target)
        if target.name is None and method == "POST":
            body = await _body(request)
            return self._out(request, rt, store.create(rt, target.namespace, body, dry_run,
                                                       strict), 201)
        if target.name is None and method == "DELETE":
            return self._delete_collection(request, target)
        name = target.name or ""
        if target.subresource == "log":
            return await self._logs(request, target)
        if target.subresource == "scale":
            return await self._scale(request, target)
        if method == "GET":
            return self._out(request, rt, store.get(rt, target.namespace, name))
        if method == "PUT":
            body = await _body(request)
            if target.subresource is None and store.find(rt, target.namespace, name) is None:
                return self._out(request, rt, store.create(rt, target.namespace, body, dry_run,
                                                           strict), 201)
            return self._out(request, rt, store.update(rt, target.namespace, name, body,
                                                       target.subresource, dry_run, strict))
        if method == "PATCH":
            ctype = request.headers.get("Content-Type", "application/merge-patch+json")
            body = await _body(request)
            existed = store.find(rt, target.namespace, name) is not None
            obj = store.patch(rt, target.namespace, name, ctype, body, target.subresource,
                              dry_run, create_missing=ctype.startswith("application/apply-patch"),
                              strict=strict, field_manager=query.get("fieldManager", ""))
            return self._out(request, rt, obj, 200 if existed else 201)
        if method == "DELETE":
            options = await _body(request, allow_empty=True)
            policy = query.get("propagationPolicy") or options.get("propagationPolicy")
            if options.get("orphanDependents") is True:
                policy = "Orphan"
            obj = store.delete(rt, target.namespace, name, policy,
                               options.get("preconditions"), dry_run)
            return self._out(request, rt, obj, 200)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    def _out(self, request: web.Request, rt: ResourceType, obj: Obj,
             status: int = 200) -> web.StreamResponse:
        if "as=Table" in request.headers.get("Accept", ""):
            full = request.query.get("includeObject") == "Object"
            return _json(tables.table(rt, [obj], obj["metadata"].get("resourceVersion", ""), full),
                         status)
        return _json(obj, status)

    def _matcher(self, request: web.Request) -> Callable[[Obj], bool]:
        by_label = label_matcher(request.query.get("labelSelector"))
        by_field = field_matcher(request.query.get("fieldSelector"))
        return lambda obj: by_label(obj) and by_field(obj)

    def _list(self, request: web.Request, target: Target) -> web.StreamResponse:
        items = self.store.list_objects(target.rt, target.namespace, self._matcher(request))
        if target.name is not None:
            items = [item for item in items if item["metadata"]["name"] == target.name]
        rv = str(self.store.rv)
        if "as=Table" in request.headers.get("Accept", ""):
            full = request.query.get("includeObject") == "Object"
            return _json(tables.table(target.rt, items, rv, full))
        return _json({"kind": f"{target.rt.kind}List", "apiVersion": target.rt.api_version,
                      "metadata": {"resourceVersion": rv}, "items": items})

    def _delete_collection(self, request: web.Request, target: Target) -> web.StreamResponse:
        items = self.store.list_objects(target.rt, target.namespace, self._matcher(request))
        for item in items:
            self.store.delete(target.rt, item["metadata"].get("namespace", ""),
                              item["metadata"]["name"], request.query.get("propagationPolicy"))
        return _json({"kind": f"{target.rt.kind}List", "apiVersion": target.rt.api_version,
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})

    async def _scale(self, request: web.Request, target: Target) -> web.StreamResponse:
        rt, name = target.rt, target.name or ""
        if request.method in ("PUT", "PATCH"):
            body = await _body(request)
            if request.method == "PATCH":
                current = _scale_of(self.store.get(rt, target.namespace, name))
                ctype = request.headers.get("Content-Type", "application/merge-patch+json")
                body = apply_patch(ctype, current, body)
            replicas = (body.get("spec") or {}).get("replicas")
            self.store.patch(rt, target.namespace, name, "application/merge-patch+json",
                             {"spec": {"replicas": replicas}})
        return _json(_scale_of(self.store.get(rt, target.namespace, name)))

    async def _logs(self, request: web.Request, target: Target) -> web.StreamResponse:
        pod = self.store.get(target.rt, target.namespace, target.name or "")
        if self.log_source is None:
            raise ApiError(400, "BadRequest", "this server runs no kubelet: no logs")
        query = request.query
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        follow = query.get("follow") in ("1", "true")
        container = query.get("container") or _only_container(pod)
        chunks = self.log_source(target.namespace, pod["metadata"]["name"], container,
                                 query.get("previous") in ("1", "true"), tail, follow)
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        first = True
        async for chunk in chunks:
            if first:
                await response.prepare(request)
                first = False
            await response.write(chunk)
        if first:
            await response.prepare(request)
        await response.write_eof()
        return response

    # ---- watch ---------------------------------------------------------------------
    async def _watch(self, request: web.Request, target: Target) -> web.StreamResponse:
        matches = self._matcher(request)
        rt, query = target.rt, request.query
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("1", "true")
        queue: asyncio.Queue[Event] = asyncio.Queue()
        since = query.get("resourceVersion") or "0"
        initial: list[Obj] = []
        replay: list[Event] | None = []
        if since == "0" or query.get("sendInitialEvents") == "true":
            initial = [obj for obj in self.store.list_objects(rt, target.namespace, matches)]
            last_rv = self.store.rv
        else:
            last_rv = _int_rv(since)
            replay = self.store.events_since(last_rv)
        self.watch_queues.add(queue)  # no await since the snapshot: nothing is missed
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        table = "as=Table" in request.headers.get("Accept", "")
        full = query.get("includeObject") == "Object"

        async def send(kind: str, obj: Obj) -> None:
            if table and kind != "BOOKMARK" and kind != "ERROR":
                obj = tables.table(rt, [obj], obj["metadata"].get("resourceVersion", ""), full)
            await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        try:
            if replay is None:
                gone = ApiError(410, "Expired", f"too old resource version: {since} "
                                f"({self.store.log[0].rv})")
                await send("ERROR", gone.status())
                return response
            for obj in initial:
                await send("ADDED", obj)
            if query.get("sendInitialEvents") == "true" and bookmarks:
                await send("BOOKMARK", self._bookmark(rt, initial_done=True))
            for event in replay:
                queue.put_nowait(event)
            await self._stream(queue, target, matches, send, timeout, bookmarks, last_rv)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watch_queues.discard(queue)
        return response

    async def _stream(self, queue: asyncio.Queue[Event], target: Target,
                      matches: Callable[[Obj], bool],
                      send: Callable[[str, Obj], Awaitable[None]], timeout: float,
                      bookmarks: bool, last_rv: int) -> None:
        rt = target.rt
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.stopping.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            try:
                event = await asyncio.wait_for(queue.get(), min(remaining, BOOKMARK_SECONDS))
            except asyncio.TimeoutError:
                if bookmarks:
                    await send("BOOKMARK", self._bookmark(rt))
                continue
            if event.key != rt.storage_key or event.rv <= last_rv:
                continue
            last_rv = event.rv
            kind = _visible_change(event, target, matches)
            if kind:
                obj = dict(event.obj, apiVersion=rt.api_version, kind=rt.kind)
                await send(kind, obj)

    def _bookmark(self, rt: ResourceType, initial_done: bool = False) -> Obj:
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        if initial_done:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}


def _visible_change(event: Event, target: Target, matches: Callable[[Obj], bool]) -> str | None:
    """The watch event type a selective watcher sees (objects move in and out of a selector)."""
    def visible(obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if target.namespace and target.rt.namespaced and meta.get("namespace") != target.namespace:
            return False
        if target.name and meta["name"] != target.name:
            return False
        return matches(obj)

    now = visible(event.obj)
    before = visible(event.old)
    if event.type == "DELETED":
        return "DELETED" if before or now else None
    if now and (before or (event.type == "MODIFIED" and event.old is None)):
        return event.type
    if now:
        return "ADDED"
    return "DELETED" if before else None


def _scale_of(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {"kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                              "creationTimestamp") if k in meta},
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0)}}


def _only_container(pod: Obj) -> str | None:
    containers = (pod.get("spec") or {}).get("containers") or []
    if len(containers) == 1:
        return str(containers[0]["name"])
    raise ApiError(400, "BadRequest", "a container name must be specified for pod "
                   f"{pod['metadata']['name']}, choose one of: "
                   f"{[c['name'] for c in containers]}")


def _int_rv(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ApiError(400, "BadRequest", f"invalid resourceVersion {text!r}") from None


async def _body(request: web.Request, allow_empty: bool = False) -> Any:
    raw = await request.read()
    if "protobuf" in request.headers.get("Content-Type", ""):
        try:
            return protobuf.decode(raw)
        except ProtobufError as exc:
            raise ApiError(415, "UnsupportedMediaType", f"devcluster: {exc}") from exc
    if not raw.strip():
        if allow_empty:
            return {}
        raise ApiError(400, "BadRequest", "the request body is empty")
    if "yaml" in request.headers.get("Content-Type", ""):
        return yaml.safe_load(raw)
    return json.loads(raw)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(payload), status=status, content_type="application/json")
