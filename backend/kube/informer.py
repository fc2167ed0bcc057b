"""One list+watch loop per kind, holding the objects as the API's own JSON dicts.

Like client-go's reflector + informer, reduced to what this project needs: a streaming list (a watch
with sendInitialEvents, KEP-3157, as client-go's WatchList; a paginated list where the API refuses
it), a watch from its resourceVersion with bookmarks, a relist on 410 Gone (diffed against what we
hold, so the handlers see the vanished objects as DELETED), reconnect with capped exponential
backoff, and while the API is away the objects stay as they were: DNS keeps answering the last good
state. The first list's objects reach the handlers as they arrive, so their work overlaps the API's;
only DELETED waits for the whole list, and `synced` is set after it. A relist after that holds what
it lists until it is whole, then reports what vanished as DELETED first and the held ADDED/MODIFIED
after, all inside `batch` (the Store's: the handlers' writes applied at once, so the name is never
seen with neither owner in between): applied as they arrived, a name that moved from a deleted object
to a new one would show as a conflict of both for the whole relist (13-27 s at 100,000 Services).
What it holds references the listed objects, which the informer would hold anyway once the list is
applied; a relist cut short drops it and starts over, so nothing half-listed is ever applied.
A kind whose CRD is not installed counts as synced with no objects (so readiness does not wait on
an optional CRD) and is retried quietly until it appears.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import urllib3
from kubernetes import client

from backend.kube import kubeapi
from backend.model import LEGACY_GSLB_GROUP, Obj, key_of

log = logging.getLogger(__name__)

Handler = Callable[[str, Obj, Obj | None], None]  # (ADDED|MODIFIED|DELETED, obj, old or None)
IndexFn = Callable[[Obj], list[str]]


@dataclass(frozen=True, slots=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str = "") -> str:
        return kubeapi.resource_path(self.group, self.version, self.plural, namespace, name)

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


SERVICES = Resource("", "v1", "services", "Service")
INGRESSES = Resource("networking.k8s.io", "v1", "ingresses", "Ingress")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
DNSENDPOINTS = Resource("externaldns.k8s.io", "v1alpha1", "dnsendpoints", "DNSEndpoint")
GSLBS = Resource(LEGACY_GSLB_GROUP, "v1beta1", "gslbs", "Gslb")
GSLBS_IO = Resource("k8gb.io", "v1beta1", "gslbs", "Gslb")
ZONEDELEGATIONS = Resource("k8gb.io", "v1beta1", "zonedelegations", "ZoneDelegation", namespaced=False)

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAYS = Resource(GATEWAY_GROUP, "v1", "gateways", "Gateway")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
ROUTES = {
    kind: Resource(GATEWAY_GROUP, "v1", kind.lower() + "s", kind)
    for kind in ("HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute", "UDPRoute")
}


def served_gateway_kinds(api: client.ApiClient) -> set[str]:
    """The Gateway API kinds served at v1 ("Gateway", "HTTPRoute", ...); all of them if the API
    did not answer at start (the informers then wait for it, as for every other kind)."""
    try:
        found = kubeapi.request(api, "GET", f"/apis/{GATEWAY_GROUP}/v1", [], timeout=10)
    except kubeapi.KubeError as e:
        return set() if e.status == 404 else {"Gateway", *ROUTES}
    except Exception:
        return {"Gateway", *ROUTES}
    return {r.get("kind", "") for r in found.get("resources") or () if "/" not in r.get("name", "/")}


def is_gateway_ref(ref: Obj) -> bool:
    group, kind = ref.get("group") or GATEWAY_GROUP, ref.get("kind") or "Gateway"
    return group == GATEWAY_GROUP and kind == "Gateway"


def gateway_key(ref: Obj, route_ns: str) -> str:
    return f"{ref.get('namespace') or route_ns}/{ref.get('name', '')}"


def parent_keys(route: Obj) -> list[str]:
    """Index function for routes: "ns/name" of the Gateways a route names in spec.parentRefs."""
    ns = (route.get("metadata") or {}).get("namespace", "")
    refs = (route.get("spec") or {}).get("parentRefs") or ()
    return sorted({gateway_key(r, ns) for r in refs if is_gateway_ref(r)})


SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SLICES_BY_SERVICE = "service"  # the EndpointSlice index every reader shares: "ns/service-name"


def slice_service(obj: Obj | None) -> list[str]:
    """Index function for EndpointSlices: the "ns/name" of the Service they belong to."""
    if obj is None:
        return []
    meta = obj.get("metadata") or {}
    name = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    return [f"{meta.get('namespace', '')}/{name}"] if name else []


# Kinds we only read, never write back: their objects may lose more than managedFields.
READ_ONLY = frozenset({"services", "endpointslices", "dnsendpoints"})
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_SHARED_VALUES = frozenset({"apiVersion", "kind", "namespace", "protocol", "type", "addressType",
                            "ipFamilyPolicy", "ipFamilies"})


def slim(obj: Obj, read_only: bool) -> Obj:
    """What we keep of an object: without metadata.managedFields (often half its size; an update
    without them keeps the server's), without kubectl's last-applied copy for kinds we never
    write, and with dict keys and the values every object repeats interned (one string each, not
    one per object)."""
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
        annotations = meta.get("annotations")
        if read_only and isinstance(annotations, dict):
            annotations.pop(LAST_APPLIED, None)
    return _interned(obj)


def _interned(obj: Obj) -> Obj:
    """A copy of the dict `obj` with interned keys and shared values. Leaves are handled in the loop,
    not by a call each: this runs on every object of a 100,000-object list."""
    out = {}
    for k, v in obj.items():
        t = type(v)
        if t is dict:
            v = _interned(v)
        elif t is list:
            v = _interned_list(v, k in _SHARED_VALUES)
        elif t is str and k in _SHARED_VALUES:
            v = sys.intern(v)
        out[sys.intern(k)] = v
    return out


def _interned_list(values: list[Any], shared: bool) -> list[Any]:
    return [_interned(v) if type(v) is dict else _interned_list(v, shared) if type(v) is list
            else sys.intern(v) if shared and type(v) is str else v for v in values]


class _Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


# A streaming list: a watch with these sends every object as ADDED, then a bookmark annotated
# INITIAL_EVENTS_END, then the changes since (KEP-3157; served by kube-apiserver 1.32+ by default).
STREAMING_LIST = (("sendInitialEvents", "true"), ("resourceVersionMatch", "NotOlderThan"))
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
REFUSED = (400, 422)  # an API without streaming lists (WatchList off, or older than 1.27) rejects the query


class Informer:
    """Keeps `objects` ("ns/name" -> dict) in step with the API and calls handlers on each change.

    Handlers run on the watch thread, after `objects` already holds the new state, and must not block
    for long. Other threads read through `get`, `list` and `by_index` (copies taken under the lock).
    `synced` is set once the first full list has been delivered.
    `stream_list`: list by a watch that sends the initial state (the API's watch cache streams it, no
    pages); False, or an API that refuses it, lists in pages of `page_size`.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        resource: Resource,
        namespace: str | None = None,
        label_selector: str = "",
        page_size: int = 500,
        watch_timeout: int = 300,
        backoff_cap: float = 5.0,
        on_watch_event: Callable[[Resource, str], None] | None = None,
        on_restart: Callable[[Resource, str], None] | None = None,
        stream_list: bool = True,
        batch: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.api = api_client
        self.resource = resource
        self.namespace = namespace
        self.label_selector = label_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.backoff_cap = backoff_cap
        self.objects: dict[str, Obj] = {}
        self.synced = threading.Event()
        self.resource_version = ""
        self._on_watch_event = on_watch_event
        self._on_restart = on_restart
        self.stream_list = stream_list
        # what a relist's DELETED and held changes are handed on inside (the Store's `batch`), so the
        # handlers' writes of one relist are seen all at once
        self._batch = batch
        # while a (re)list runs: each key it named, with the object a relist after sync holds back for
        # `_end_list` (None: unchanged, or already delivered by the first list)
        self._listed: dict[str, Obj | None] | None = None
        self._handlers: list[Handler] = []
        self._indexers: dict[str, IndexFn] = {}
        self._indices: dict[str, dict[str, set[str]]] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._thread: threading.Thread | None = None
        self._missing_logged = False
        self._failing = False
        self._connected = False  # the current attempt reached the API (resets the backoff)

    # -- reading -------------------------------------------------------------------------------

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self.objects.get(key)

    def list(self) -> list[Obj]:
        with self._lock:
            return list(self.objects.values())

    def add_index(self, name: str, fn: IndexFn) -> None:
        """Index objects by the values `fn` returns (e.g. EndpointSlices by "ns/service-name"); asking
        again for an index this informer already keeps costs nothing."""
        with self._lock:
            if self._indexers.get(name) is fn:
                return
            self._indexers[name] = fn
            index: dict[str, set[str]] = {}
            for key, obj in self.objects.items():
                for value in fn(obj):
                    index.setdefault(value, set()).add(key)
            self._indices[name] = index

    def by_index(self, name: str, value: str) -> list[Obj]:
        with self._lock:
            return [self.objects[k] for k in sorted(self._indices[name].get(value, ()))]

    def add_handler(self, fn: Handler) -> None:
        """Register before start(); a handler added later is first called with ADDED for each object held."""
        with self._lock:
            self._handlers.append(fn)
            held = list(self.objects.values())
        for obj in held:
            self._call(fn, "ADDED", obj, None)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start (or restart after stop) the watch thread, resuming from the resourceVersion held."""
        self._stop.clear()
        name = f"informer-{self.resource.plural}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Closing the socket from here is the only way to wake a thread blocked in a watch read.
            try:
                resp.shutdown()
            except (AttributeError, OSError):
                resp.close()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        need_list = not self.synced.is_set() or self._listed is not None  # else: resume the watch
        while not self._stop.is_set():
            if delay:
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                if self._stop.is_set():
                    return
            self._connected = False
            try:
                if need_list and not self.stream_list:
                    self._list()
                self._watch(initial=need_list and self.stream_list)
                need_list = self._listed is not None  # a stream that ended before its initial state did
                delay, reason = 0.0, "closed"
            except _Gone:
                delay, need_list, reason = 0.0, True, "gone"
            except kubeapi.KubeError as e:
                need_list = True
                if e.status in REFUSED and self.stream_list:
                    log.info("%s: the API does not stream lists (%s); listing in pages", self.resource, e)
                    self.stream_list, delay = False, 0.0
                    continue
                if e.status == 404:
                    self._not_installed()
                    delay = self._backoff(delay, 1.0, max(self.backoff_cap, 10.0))
                    continue
                reason = f"http {e.status}"
                self._trouble(str(e))
                delay = self._backoff(delay, 0.2, self.backoff_cap)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if self._stop.is_set():
                    return
                # a connection lost after its list was whole was the watch: resume it from the
                # resourceVersion held (a relist at 100,000 Services takes 13-27 s); one lost
                # mid-list lists again
                need_list = self._listed is not None or not self.synced.is_set()
                reason = "error"
                self._trouble(f"API unreachable ({e})")
                delay = self._backoff(delay, 0.2, self.backoff_cap)
            if self._on_restart is not None and not self._stop.is_set():
                self._on_restart(self.resource, reason)

    def _backoff(self, delay: float, floor: float, cap: float) -> float:
        """Double the wait after each failure in a row; an attempt that got through starts over."""
        return min(max(0.0 if self._connected else delay * 2, floor), cap)

    def _trouble(self, what: str) -> None:
        """Log the first failure of a run of them, not every retry."""
        if not self._failing:
            log.warning("%s: %s; serving the %d objects held", self.resource, what, len(self.objects))
            self._failing = True

    def _reached(self) -> None:
        self._connected = True
        if self._failing:
            log.warning("%s: API reachable again (resourceVersion %s)", self.resource, self.resource_version)
            self._failing = False

    def _not_installed(self) -> None:
        """No such kind (a CRD not installed): the empty set is the truth until it appears."""
        if not self._missing_logged:
            log.warning("%s: not served by the API (CRD not installed?); retrying quietly", self.resource)
            self._missing_logged = True
        self._begin_list()
        self._end_list("")

    def _query(self) -> list[tuple[str, str | int]]:
        return [("labelSelector", self.label_selector)] if self.label_selector else []

    def _list(self) -> None:
        """The paginated list, for an API that does not stream lists; each page is taken as it comes."""
        self._begin_list()
        cont = ""
        while True:
            query = [*self._query(), ("limit", self.page_size)]
            if cont:
                query.append(("continue", cont))
            try:
                page = kubeapi.request(self.api, "GET", self.resource.path(self.namespace), query, timeout=60)
            except kubeapi.KubeError as e:
                if e.status == 410:  # the continue token expired mid-list: start over
                    self._begin_list()
                    cont = ""
                    continue
                raise
            self._reached()
            for obj in page.get("items") or ():
                self._put("ADDED", obj)
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                break
        self._end_list(meta.get("resourceVersion", ""))

    def _begin_list(self) -> None:
        """A list (re)starts: whatever an earlier, unfinished one held back is dropped."""
        self._listed = {}

    def _end_list(self, resource_version: str) -> None:
        """The whole list is in: what we held and it did not name is gone, reported first; then what a
        relist held back, in list order. Only now are we synced."""
        listed, self._listed = self._listed or {}, None
        with self._lock:
            gone = [key for key in self.objects if key not in listed]
            self.resource_version = resource_version
        with self._batch():
            for key in gone:
                self._store("DELETED", key, self.objects[key])
            for key, obj in listed.items():
                if obj is not None:
                    self._store("ADDED", key, obj)
        if self._missing_logged and resource_version:
            log.info("%s: now served by the API", self.resource)
            self._missing_logged = False
        self.synced.set()

    def _watch(self, initial: bool = False) -> None:
        """Watch from the resourceVersion held; `initial`: from now, the API first sending every object
        as ADDED and then a bookmark that ends the initial state (a streaming list)."""
        query = [*self._query(), ("watch", "true"), ("allowWatchBookmarks", "true")]
        if initial:
            query += STREAMING_LIST
        else:
            query.append(("resourceVersion", self.resource_version))
        query.append(("timeoutSeconds", int(self.watch_timeout * random.uniform(1.0, 1.5))))
        # The server ends the watch first; the read timeout only catches a peer that hung.
        read_timeout = self.watch_timeout * 1.5 + 30
        path = self.resource.path(self.namespace)
        resp = kubeapi.open_(self.api, "GET", path, query, timeout=(10.0, read_timeout))
        self._resp = resp
        try:
            if resp.status == 410:
                raise _Gone
            if not 200 <= resp.status < 300:
                raise kubeapi.error_of(resp)
            self._reached()
            if self._stop.is_set():
                return
            if initial:
                self._begin_list()
            for event in kubeapi.json_lines(resp):
                self._apply(event)
        finally:
            # A watch may end mid-stream; its connection must not go back to the pool half read.
            self._resp = None
            resp.close()
            resp.release_conn()

    def _apply(self, event: Any) -> None:
        type_ = event.get("type")
        obj = event.get("object") or {}
        if type_ == "ERROR":
            if obj.get("code") == 410:
                raise _Gone
            raise kubeapi.KubeError(int(obj.get("code") or 500), obj.get("message", ""))
        if self._listed is not None:  # a streaming list's initial state: not watch events yet
            if type_ == "BOOKMARK":
                meta = obj.get("metadata") or {}
                if (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                    self._end_list(meta.get("resourceVersion", ""))
            else:
                self._put(type_, obj)
            return
        rv = _rv(obj)
        if rv:
            self.resource_version = rv
        if self._on_watch_event is not None:
            self._on_watch_event(self.resource, type_)
        if type_ in ("ADDED", "MODIFIED", "DELETED"):
            self._put(type_, obj)

    def _put(self, type_: str, obj: Obj) -> None:
        """An object as the API sent it: slimmed, then stored."""
        obj.setdefault("apiVersion", self.resource.api_version)
        obj.setdefault("kind", self.resource.kind)
        obj = slim(obj, self.resource.plural in READ_ONLY)
        self._store(type_, key_of(obj), obj)

    def _store(self, type_: str, key: str, obj: Obj) -> None:
        """One object's new state (or its deletion) into `objects` and the indexes, then the handlers.
        While a list runs its key is noted; an object held unchanged is not announced again, and a
        relist after sync holds a changed one back for `_end_list`."""
        with self._lock:
            old = self.objects.get(key)
            if self._listed is not None and type_ != "DELETED":
                unchanged = old is not None and _rv(old) == _rv(obj)
                held = not unchanged and self.synced.is_set()
                self._listed[key] = obj if held else None
                if unchanged or held:
                    return
            if type_ == "DELETED":
                self.objects.pop(key, None)
            else:
                self.objects[key] = obj
            for name, fn in self._indexers.items():
                index = self._indices[name]
                if old is not None:
                    for value in fn(old):
                        index.get(value, set()).discard(key)
                if type_ != "DELETED":
                    for value in fn(obj):
                        index.setdefault(value, set()).add(key)
        if type_ == "DELETED":
            self._emit("DELETED", obj, None)
        else:
            self._emit("MODIFIED" if old is not None else "ADDED", obj, old)

    def _emit(self, type_: str, obj: Obj, old: Obj | None) -> None:
        for fn in list(self._handlers):
            self._call(fn, type_, obj, old)

    def _call(self, fn: Handler, type_: str, obj: Obj, old: Obj | None) -> None:
        try:
            fn(type_, obj, old)
        except Exception:
            log.exception("%s: handler %s failed on %s %s", self.resource, fn, type_, key_of(obj))


def _rv(obj: Obj) -> str:
    return (obj.get("metadata") or {}).get("resourceVersion", "")
