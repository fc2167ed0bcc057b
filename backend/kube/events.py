"""Kubernetes Events for what users must see on their own objects (a skipped annotation, a lost conflict).

Like client-go's EventRecorder: `record` only queues, a thread writes; a repeat of the same
(object, type, reason, message) patches the existing Event's count and lastTimestamp instead of
creating another one. Writing Events is best effort: an API error is logged, never raised to the
caller, and a full queue drops the Event rather than stall a watch thread. An Event for an object in a
namespace being deleted is dropped unwritten (`skip_namespaces`), or when the API refuses it as such
(403 NamespaceTerminating), logged once per namespace: deleting a namespace of 10,000 Gslbs otherwise
meant thousands of refused writes and warning lines while DNS was busiest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from kubernetes import client

from backend.kube import kubeapi
from backend.kube.informer import Informer
from backend.model import ObjectRef

log = logging.getLogger(__name__)

_Key = tuple[ObjectRef, str, str, str]


class EventRecorder:
    def __init__(
        self,
        api_client: client.ApiClient,
        component: str = "coredns-gslb",
        instance: str = "",
        max_queue: int = 1000,
        cache_size: int = 4096,
        on_dropped: Callable[[str, str], None] = lambda _what, _why: None,
    ) -> None:
        self.api = api_client
        self.component = component
        self.instance = instance
        self._queue: queue.Queue[tuple[_Key, str] | None] = queue.Queue(max_queue)
        # (object, type, reason, message) -> (namespace, Event name, count), oldest first
        self._seen: OrderedDict[_Key, tuple[str, str, int]] = OrderedDict()
        self._cache_size = cache_size
        self._terminating: Callable[[str], bool] = lambda _ns: False
        # on_dropped("event", why) per Event dropped: why "namespace_deleting" (not tried) or
        # "namespace_terminating" (refused)
        self._dropped = kubeapi.DroppedWrites(
            log, "namespace %s is being deleted: Events for its objects are dropped", on_dropped)
        self._thread = threading.Thread(target=self._run, name="event-recorder", daemon=True)
        self._thread.start()

    def record(self, ref: ObjectRef, type_: str, reason: str, message: str) -> None:
        """Queue an Event on `ref` (type_ "Normal" or "Warning"); returns at once."""
        try:
            self._queue.put_nowait(((ref, type_, reason, message), kubeapi.timestamp()))
        except queue.Full:
            log.warning("event queue full, dropping %s %s on %s: %s", type_, reason, ref, message)

    def skip_namespaces(self, terminating: Callable[[str], bool], namespaces: Informer) -> None:
        """Drop, unwritten, Events in a namespace for which `terminating(namespace)` is true; `namespaces`
        (the Namespace informer) re-arms the log line of a namespace gone or made anew."""
        self._terminating = terminating
        namespaces.add_handler(self._dropped.on_namespace)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued Event has been written (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks

    def stop(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._write(*item)
            except Exception as e:  # best effort: an Event must never take the recorder down
                if isinstance(e, kubeapi.KubeError) and e.namespace_terminating and item is not None:
                    self._dropped(item[0][0].namespace or "default", "event", "namespace_terminating")
                else:
                    log.warning("could not write event %s: %s", item[0] if item else None, e)
            finally:
                self._queue.task_done()

    def _write(self, key: _Key, when: str) -> None:
        ref, type_, reason, message = key
        namespace = ref.namespace or "default"
        if self._terminating(namespace):
            self._dropped(namespace, "event", "namespace_deleting")
            return
        seen = self._seen.get(key)
        if seen is not None:
            ns, name, count = seen
            patch = {"count": count + 1, "lastTimestamp": when}
            try:
                kubeapi.request(
                    self.api, "PATCH", kubeapi.resource_path("", "v1", "events", ns, name), body=patch,
                    content_type="application/merge-patch+json",
                )
                self._seen[key] = (ns, name, count + 1)
                self._seen.move_to_end(key)
                return
            except kubeapi.KubeError as e:
                if e.status != 404:  # the Event expired (TTL): create a fresh one below
                    raise
        name = f"{ref.name}.{time.time_ns():x}"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "kind": ref.kind,
                "namespace": ref.namespace,
                "name": ref.name,
                "uid": ref.uid,
                "apiVersion": ref.api_version,
            },
            "reason": reason,
            "message": message[:1024],
            "type": type_,
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": self.instance,
            "firstTimestamp": when,
            "lastTimestamp": when,
            "count": 1,
        }
        kubeapi.request(self.api, "POST", kubeapi.resource_path("", "v1", "events", namespace), body=body)
        self._seen[key] = (namespace, name, 1)
        if len(self._seen) > self._cache_size:
            self._seen.popitem(last=False)
