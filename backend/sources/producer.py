"""Wires the ExternalDNS-style sources to the informers and the Store.

Each watched object owns one Store key (`service/<ns>/<name>`, `ingress/...`, `dnsendpoint/...`) and
every change re-derives that key's whole list, so a delete or a relist needs no special path. A
headless Service's records also depend on its EndpointSlices, so a slice change re-derives its
Service. Problems (bad annotations, names outside the zones) become one Warning Event per new problem
and a log line; the rest of the object is still published.

ExternalDNS's filters apply here, before the Store: an object the label/annotation/ingress-class
filters do not admit publishes nothing (so a label edit that takes it out removes its names), and a
name the domain filter rejects is dropped silently, as ExternalDNS does (see README.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from backend.config import Settings
from backend.kube.events import EventRecorder
from backend.kube.informer import SLICES_BY_SERVICE, Informer, slice_service
from backend.model import Endpoint, Obj, Store, key_of, object_ref, source_key
from backend.sources import dnsendpoints, filters, ingresses, services
from backend.sources.annotations import Problem

log = logging.getLogger(__name__)

Derive = Callable[[Obj], tuple[list[Endpoint], list[Problem]]]
Handler = Callable[[str, Obj, Obj | None], None]


class ProblemReporter:
    """Tells the user each problem once per appearance, not on every unrelated change to the object."""

    def __init__(self, recorder: EventRecorder | None) -> None:
        self.recorder = recorder
        self._problems: dict[str, set[Problem]] = {}

    def report(self, key: str, obj: Obj, problems: Sequence[Problem]) -> None:
        new = set(problems)
        for p in sorted(new - self._problems.get(key, set()), key=lambda p: (p.reason, p.message)):
            log.warning("%s: %s: %s", key, p.reason, p.message)
            if self.recorder is not None:
                self.recorder.record(object_ref(obj), "Warning", p.reason, p.message)
        if new:
            self._problems[key] = new
        else:
            self._problems.pop(key, None)

    def forget(self, key: str) -> None:
        self._problems.pop(key, None)


class ExternalDnsSources:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        recorder: EventRecorder | None,
        services_: Informer | None,
        endpointslices: Informer | None,
        ingresses_: Informer | None = None,
        dnsendpoints_: Informer | None = None,
    ) -> None:
        """Pass None for a source --source leaves out (services_ and endpointslices go together)."""
        self.store = store
        self.recorder = recorder
        self.zones = settings.all_zones
        self.gslb_zones = tuple(z.dns_zone for z in settings.gslb_zones)
        self.filter = filters.from_settings(settings)
        self.services = services_
        self.slices = endpointslices
        self._lock = threading.RLock()  # derive + replace as one step, or a stale derive can land last
        self._reporter = ProblemReporter(recorder)
        self._watched: list[tuple[Informer, Handler]] = []
        if services_ is not None and endpointslices is not None:
            endpointslices.add_index(SLICES_BY_SERVICE, slice_service)
            self._watch(services_, self._handler("service", self._service))
            endpointslices.add_handler(self._on_slice)
        if ingresses_ is not None:
            self._watch(ingresses_, self._handler(
                "ingress", lambda o: ingresses.endpoints(o, self.zones, self.gslb_zones)))
        if dnsendpoints_ is not None:
            self._watch(dnsendpoints_, self._handler(
                "dnsendpoint", lambda o: dnsendpoints.endpoints(o, self.zones)))

    def _watch(self, informer: Informer, handler: Handler) -> None:
        informer.add_handler(handler)
        self._watched.append((informer, handler))

    def reconfigure(self, settings: Settings) -> None:
        """Other GSLB zones (ZoneDelegations): every object is derived again against them, under the
        lock so no event derives against half-switched zones."""
        with self._lock:
            self.zones = settings.all_zones
            self.gslb_zones = tuple(z.dns_zone for z in settings.gslb_zones)
            for informer, handler in self._watched:
                for obj in informer.list():
                    handler("MODIFIED", obj, None)

    def _service(self, svc: Obj) -> tuple[list[Endpoint], list[Problem]]:
        assert self.slices is not None
        slices = self.slices.by_index(SLICES_BY_SERVICE, key_of(svc)) if services.is_headless(svc) else []
        return services.endpoints(svc, slices, self.zones)

    def _handler(self, kind: str, derive: Derive) -> Handler:
        def handle(type_: str, obj: Obj, _old: Obj | None) -> None:
            key = source_key(kind, obj)
            with self._lock:
                if type_ == "DELETED":
                    self.store.replace(key, ())
                    self._reporter.forget(key)
                    return
                eps, problems = self.filter.apply(derive, obj)
                self.store.replace(key, eps)
                self._reporter.report(key, obj, problems)

        return handle

    def _on_slice(self, _type: str, obj: Obj, old: Obj | None) -> None:
        assert self.services is not None
        for svc_key in {*slice_service(obj), *slice_service(old)}:
            svc = self.services.get(svc_key)
            if svc is not None and services.is_headless(svc):
                with self._lock:
                    eps, problems = self.filter.apply(self._service, svc)
                    key = source_key("Service", svc)
                    self.store.replace(key, eps)
                    self._reporter.report(key, svc, problems)
