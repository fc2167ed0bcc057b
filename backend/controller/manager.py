"""The leader's writes to the API, driven by informer events and engine results through one queue.

Work items are ("status", Gslb store key), ("ingress", Gslb store key) for the owned Ingress,
("gslb", Ingress key) for an annotated Ingress, ("zd", name) for a ZoneDelegation's status.dnsServers
and ("peers", "") after a Store change (other clusters' targets are part of a Gslb's healthyRecords).
Items are deduplicated while they wait, processed one at a time on one thread, and only while this
replica leads; a failed write is retried with backoff. Becoming leader queues everything once, so a
new leader repairs whatever the old one left. Nothing is written into a namespace being deleted (its
deletionTimestamp set, or the API refusing a create with NamespaceTerminating), and a write the API
answers 404 is dropped (the object or its namespace is gone; a re-creation queues a write of its own,
and one already held under the name, another uid, is written at once): while a namespace of 10,000
Gslbs was deleted these were thousands of retries and warning lines.
"""

from __future__ import annotations

import copy
import heapq
import logging
import threading
import time
from collections.abc import Callable

from kubernetes import client

from backend import metrics
from backend.config import Settings
from backend.controller import objects, status
from backend.controller.leader import LeaderElector
from backend.gslb.engine import GslbEngine, GslbResult
from backend.kube import kubeapi
from backend.kube.events import EventRecorder
from backend.kube.informer import GSLBS, GSLBS_IO, INGRESSES, ZONEDELEGATIONS, Informer, Resource
from backend.model import PEER_KEYS, Obj, Target, gslb_key, key_of, object_ref

log = logging.getLogger(__name__)

Item = tuple[str, str]
MAX_BACKOFF = 30.0


class WorkQueue:
    """client-go's rate-limited queue in small: dedup while waiting, delayed retries, per-item backoff."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._ready: list[Item] = []
        self._pending: set[Item] = set()
        self._delayed: list[tuple[float, Item]] = []
        self._failures: dict[Item, int] = {}
        self.closed = threading.Event()

    def add(self, item: Item) -> None:
        with self._cond:
            if item not in self._pending:
                self._pending.add(item)
                self._ready.append(item)
                self._cond.notify()

    def retry(self, item: Item) -> None:
        """Again after 0.2 s, doubling per consecutive failure up to MAX_BACKOFF."""
        with self._cond:
            n = self._failures.get(item, 0)
            self._failures[item] = n + 1
            heapq.heappush(self._delayed, (time.monotonic() + min(0.2 * 2**n, MAX_BACKOFF), item))
            self._cond.notify()

    def forget(self, item: Item) -> None:
        with self._cond:
            self._failures.pop(item, None)

    def get(self) -> Item | None:
        """The next item, or None once closed."""
        with self._cond:
            while not self.closed.is_set():
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    _, item = heapq.heappop(self._delayed)
                    if item not in self._pending:
                        self._pending.add(item)
                        self._ready.append(item)
                if self._ready:
                    item = self._ready.pop(0)
                    self._pending.discard(item)
                    return item
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)
            return None

    def close(self) -> None:
        with self._cond:
            self.closed.set()
            self._cond.notify_all()


class Controller:
    """Attach to the engine and informers; `start()` begins leader election and the worker."""

    def __init__(
        self,
        api: client.ApiClient,
        settings: Settings,
        engine: GslbEngine,
        ingresses: Informer,
        recorder: EventRecorder,
        gate: Callable[[], bool] | None = None,
        namespaces: Informer | None = None,
    ) -> None:
        self.api = api
        self.namespaces = namespaces
        self.settings = settings
        self.engine = engine
        self.ingresses = ingresses
        self.recorder = recorder
        self.gate = gate or engine.synced
        self.queue = WorkQueue()
        self.elector = LeaderElector(api, settings.namespace, identity=settings.identity,
                                     on_started=self._resync)
        self._peers: status.Peers = {}
        self._peer_keys: set[str] = set()  # the Store's peer/<geotag> keys seen changing (one per cluster)
        self._delegations: Informer | None = None
        self._dns_servers: Callable[[Obj], list[dict[str, str]]] = lambda _obj: []
        self._dropped = kubeapi.DroppedWrites(
            log, "controller: namespace %s is being deleted: no more writes into it", metrics.write_dropped)
        self._thread = threading.Thread(target=self._run, name="gslb-controller", daemon=True)
        engine.subscribe(self._on_result)
        ingresses.add_handler(self._on_ingress)
        if namespaces is not None:
            namespaces.add_handler(self._dropped.on_namespace)
        # Store listeners run on the writer's thread: only queue, the worker diffs (only peers' keys
        # matter: any other change walking the whole Store was most of this thread's work under churn).
        engine.store.subscribe_keys(self._on_store_keys)

    def write_delegation_status(self, informer: Informer,
                                dns_servers: Callable[[Obj], list[dict[str, str]]]) -> None:
        """Keep each ZoneDelegation's status.dnsServers at `dns_servers(obj)` (call before start)."""
        self._delegations = informer
        self._dns_servers = dns_servers
        informer.add_handler(self._on_delegation)

    def _on_delegation(self, type_: str, obj: Obj, _old: Obj | None) -> None:
        if type_ != "DELETED":
            self.queue.add(("zd", key_of(obj)))

    def _queue_delegations(self) -> None:
        for obj in self._delegations.list() if self._delegations is not None else ():
            self.queue.add(("zd", key_of(obj)))

    def terminating(self, namespace: str) -> bool:
        """The Namespace is being deleted (deletionTimestamp set): nothing written into it would last.
        A namespace not (yet) in the informer counts as live: it may be new."""
        obj = self.namespaces.get(namespace) if self.namespaces is not None else None
        return obj is not None and bool((obj.get("metadata") or {}).get("deletionTimestamp"))

    def start(self) -> None:
        self.elector.start()
        self._thread.start()

    def stop(self) -> None:
        self.queue.close()
        self._thread.join(5)
        self.elector.stop()

    # -- what to do ------------------------------------------------------------------------------

    def _on_result(self, key: str, result: GslbResult | None) -> None:
        if result is not None:
            self.queue.add(("status", key))
            if (result.obj.get("spec") or {}).get("ingress"):
                self.queue.add(("ingress", key))

    def _on_store_keys(self, keys: frozenset[str]) -> None:
        peer_keys = {k for k in keys if k.startswith(PEER_KEYS)}
        if peer_keys:
            self._peer_keys |= peer_keys
            self.queue.add(("peers", ""))
        for key in keys:  # a Gslb's own answer changed without a new result: probe verdicts flipped
            if key in self.engine.results:
                self.queue.add(("status", key))

    def _on_ingress(self, type_: str, obj: Obj, _old: Obj | None) -> None:
        meta = obj.get("metadata") or {}
        if type_ != "DELETED" and objects.STRATEGY in (meta.get("annotations") or {}):
            self.queue.add(("gslb", key_of(obj)))
        if (meta.get("labels") or {}).get(objects.MANAGED_BY) == "gslb":
            # someone edited or deleted an Ingress we own: put it back
            for ref in meta.get("ownerReferences") or ():
                if ref.get("kind") == "Gslb":
                    owner = {
                        "apiVersion": ref.get("apiVersion", ""),
                        "metadata": {"namespace": meta.get("namespace"), "name": ref.get("name")},
                    }
                    self.queue.add(("ingress", gslb_key(owner)))

    def _resync(self) -> None:
        self.queue.add(("peers", ""))  # statuses include other clusters' targets; a change requeues them
        for key in list(self.engine.results):
            self._on_result(key, self.engine.results.get(key))
        for obj in self.ingresses.list():
            self._on_ingress("ADDED", obj, None)
        self._queue_delegations()

    # -- doing it ------------------------------------------------------------------------------

    def _run(self) -> None:
        # Nothing is written from a half-synced view: it would report NotFound for Services not yet
        # listed, or drop other clusters' targets from healthyRecords before their first poll.
        while not self.gate():
            if self.queue.closed.wait(0.1):
                return
        while (item := self.queue.get()) is not None:
            if not self.elector.is_leader.is_set():
                continue  # a non-leader keeps nothing queued: becoming leader queues everything anew
            if self._process(item):
                self.queue.forget(item)
            else:
                self.queue.retry(item)

    def _process(self, item: Item) -> bool:
        """Write what `item` calls for; False if it failed and is worth another try. A write into a
        namespace being deleted is given up: counted, one log line per namespace."""
        namespace = _namespace_of(item)
        if namespace and self.terminating(namespace):
            self._dropped(namespace, item[0], "namespace_deleting")
            return True
        uid = _uid(self._source(item))
        try:
            {"status": self._write_status, "ingress": self._ensure_ingress, "gslb": self._ensure_gslb,
             "peers": self._peers_changed, "zd": self._write_delegation}[item[0]](item[1])
        except kubeapi.KubeError as e:
            if e.namespace_terminating:
                self._dropped(namespace, item[0], "namespace_terminating")
            elif e.status == 404:
                self._gone(item, uid)
            elif e.status == 422:  # the API refuses what the user's spec makes us write: say so, once
                self._rejected(item, e)
            else:
                if e.status != 409:
                    log.warning("controller: %s %s: %s", *item, e)
                return False
        except Exception:
            log.exception("controller: %s %s failed", *item)
            return False
        return True

    def _source(self, item: Item) -> Obj | None:
        """The object `item` writes from, as held now: the Gslb (its status, its owned Ingress), the
        annotated Ingress (its Gslb) or the ZoneDelegation (its status)."""
        kind, key = item
        if kind == "gslb":
            return self.ingresses.get(key)
        if kind == "zd":
            return self._delegations.get(key) if self._delegations is not None else None
        result = self.engine.results.get(key)
        return result.obj if result is not None else None

    def _gone(self, item: Item, uid: str | None) -> None:
        """A write the API answered 404: the object, or its namespace, is gone. Dropped, no retry and
        no warning (a deletion or re-creation queues what it needs), unless the object the write came
        from was made anew under its name meanwhile (another uid): then it is written again at once."""
        now = _uid(self._source(item))
        if now is not None and now != uid:
            self.queue.add(item)
            return
        metrics.write_dropped(item[0], "gone")
        log.debug("controller: %s %s is gone (404), not written", *item)

    def _rejected(self, item: Item, error: kubeapi.KubeError) -> None:
        """A Warning Event on the object whose spec led to the refused write (a Gslb, for an
        annotation-made Gslb the Ingress, a ZoneDelegation); it is tried again when that object changes."""
        obj = self._source(item)
        log.warning("controller: %s %s refused by the API: %s", *item, error.message)
        if obj is not None:
            self.recorder.record(object_ref(obj), "Warning", "WriteRejected", error.message)

    def _write_status(self, key: str) -> None:
        result = self.engine.results.get(key)
        if result is None:
            return
        obj = result.obj
        current = obj.get("status")
        desired = status.desired_status(result, self.settings.cluster_geotag, current, self._peers,
                                        self.engine.serve)
        if desired == (current or {}):
            return
        meta = obj["metadata"]
        body = {**obj, "status": desired}
        path = _gslb_resource(obj).path(meta["namespace"], meta["name"]) + "/status"
        kubeapi.request(self.api, "PUT", path, body=body)
        ref = object_ref(obj)
        for type_, reason, message in status.events(current, desired):
            self.recorder.record(ref, type_, reason, message)

    def _write_delegation(self, name: str) -> None:
        """status.dnsServers of one ZoneDelegation, patched only when it differs."""
        obj = self._delegations.get(name) if self._delegations is not None else None
        if obj is None:
            return
        desired = self._dns_servers(obj)
        if desired == ((obj.get("status") or {}).get("dnsServers") or []):
            return
        path = ZONEDELEGATIONS.path(None, name) + "/status"
        kubeapi.request(self.api, "PATCH", path, body={"status": {"dnsServers": desired}},
                        content_type="application/merge-patch+json")

    def _peers_changed(self, _: str) -> None:
        """Queue the status of every Gslb whose hosts gained or lost another cluster's targets (and
        every ZoneDelegation's: the peers' nameserver addresses may have moved)."""
        self._queue_delegations()
        # only the peers' keys: a copy of the whole Store holds the GIL, and the answer loop, for as
        # long as the Store is big (peer keys are written after this listener is subscribed)
        _, by_key = self.engine.store.snapshot(list(self._peer_keys))
        peers: dict[str, list[Target]] = {}
        for eps in by_key.values():
            for ep in eps:
                if ep.rtype in ("A", "AAAA"):
                    peers.setdefault(ep.name, []).extend(ep.targets)
        new = {host: tuple(sorted(ts, key=lambda t: (t.geotag, t.value))) for host, ts in peers.items()}
        changed = {h for h in new.keys() | self._peers.keys() if new.get(h) != self._peers.get(h)}
        self._peers = new
        for key in self.engine.serving(changed):
            self.queue.add(("status", key))

    def _ensure_ingress(self, key: str) -> None:
        result = self.engine.results.get(key)
        if result is None or not (result.obj.get("spec") or {}).get("ingress"):
            return
        gslb = result.obj
        desired = objects.owned_ingress(gslb)
        meta = desired["metadata"]
        current = self.ingresses.get(f"{meta['namespace']}/{meta['name']}")
        if current is None:
            kubeapi.request(self.api, "POST", INGRESSES.path(meta["namespace"]), body=desired)
            return
        if (
            not objects.owned_by(current, gslb)
            and (current["metadata"].get("labels") or {}).get(objects.MANAGED_BY) != "gslb"
        ):
            self.recorder.record(
                object_ref(gslb),
                "Warning",
                "IngressConflict",
                f"Ingress {meta['namespace']}/{meta['name']} exists and is not managed by a Gslb; "
                "left as it is",
            )
            return
        updated = objects.merge_into(copy.deepcopy(current), desired)
        if updated is not None:
            kubeapi.request(self.api, "PUT", INGRESSES.path(meta["namespace"], meta["name"]), body=updated)

    def _ensure_gslb(self, key: str) -> None:
        ingress = self.ingresses.get(key)
        if ingress is None or objects.STRATEGY not in (ingress["metadata"].get("annotations") or {}):
            return
        ns, name = key.split("/", 1)
        existing = next((o for i in self.engine.gslb_informers if (o := i.get(key)) is not None), None)
        desired, problems = objects.gslb_for_ingress(
            ingress, (existing or {}).get("apiVersion", GSLBS.api_version)
        )
        for problem in problems:
            self.recorder.record(object_ref(ingress), "Warning", "InvalidAnnotation", problem)
        if existing is None:
            self._create_gslb(ns, desired)
            return
        if not objects.owned_by(existing, ingress):
            return  # a Gslb the user wrote by hand wins over the annotation
        updated = objects.gslb_needs_update(copy.deepcopy(existing), desired)
        if updated is not None:
            kubeapi.request(self.api, "PUT", _gslb_resource(existing).path(ns, name), body=updated)

    def _create_gslb(self, ns: str, desired: Obj) -> None:
        """In k8gb.absa.oss, or k8gb.io where only the newer CRD is installed."""
        try:
            kubeapi.request(self.api, "POST", GSLBS.path(ns), body=desired)
        except kubeapi.KubeError as e:
            if e.status != 404:
                raise
            desired["apiVersion"] = GSLBS_IO.api_version
            kubeapi.request(self.api, "POST", GSLBS_IO.path(ns), body=desired)


def _namespace_of(item: Item) -> str:
    """The namespace an item writes into ("" for cluster-scoped and whole-Store items): Gslb Store
    keys are gslb/<ns>/<name>[@group], an annotated Ingress's key <ns>/<name>."""
    kind, key = item
    if kind in ("status", "ingress"):
        return key.split("/")[1]
    return key.split("/")[0] if kind == "gslb" else ""


def _uid(obj: Obj | None) -> str | None:
    return (obj.get("metadata") or {}).get("uid") if obj is not None else None


def _gslb_resource(obj: Obj) -> Resource:
    return GSLBS_IO if obj.get("apiVersion", "").startswith(GSLBS_IO.group + "/") else GSLBS
