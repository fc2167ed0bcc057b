"""Wires the gateway-*route sources to the informers and the Store (keys `<kind>/<ns>/<name>`,
e.g. `httproute/shop/web`).

A route's records also depend on its Gateways (listeners, addresses, target annotation) and, for
`allowedRoutes.namespaces.from: Selector`, on its Namespace's labels: a Gateway change re-derives
the routes that name it (an index on spec.parentRefs), a Namespace label change the routes in it.
Which kinds the API serves is asked once at start: without the Gateway API CRDs these sources are
off, with one log line (a restart picks up CRDs installed later).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from backend.config import Settings
from backend.kube import selectors
from backend.kube.events import EventRecorder
from backend.kube.informer import Informer, parent_keys
from backend.model import Obj, Store, key_of, source_key
from backend.sources import filters, gateways
from backend.sources.producer import ProblemReporter

if TYPE_CHECKING:

    pass

log = logging.getLogger(__name__)

BY_GATEWAY = "gateway"  # route index: "ns/name" of each parentRef Gateway
BY_NAMESPACE = "namespace"


def _namespace_of(obj: Obj) -> list[str]:
    return [(obj.get("metadata") or {}).get("namespace", "")]


class GatewaySources:
    def __init__(self, settings: Settings, store: Store, recorder: EventRecorder | None, gateways_: Informer,
                 namespaces: Informer, routes: dict[str, Informer]) -> None:
        self.store = store
        self.zones = settings.all_zones
        self.gslb_zones = tuple(z.dns_zone for z in settings.gslb_zones)
        self.filter = gateways.GatewayFilter(settings.gateway_name, settings.gateway_namespace,
                                             selectors.parse(settings.gateway_label_filter))
        self.source_filter = filters.from_settings(settings)  # --label-filter, --domain-filter, ...
        self.gateways = gateways_
        self.namespaces = namespaces
        self.routes = routes
        self._lock = threading.Lock()
        self._reporter = ProblemReporter(recorder)
        self._all_synced = False  # until then a missing Gateway may only be not listed yet: no Events
        for kind, informer in routes.items():
            informer.add_index(BY_GATEWAY, parent_keys)
            informer.add_index(BY_NAMESPACE, _namespace_of)
            informer.add_handler(self._on_route(kind))
        gateways_.add_handler(self._on_gateway)
        namespaces.add_handler(self._on_namespace)

    def ready(self) -> bool:
        """A readiness check: once every informer has listed, derive every route again so the
        problems held back while a Gateway might not have been listed yet are reported."""
        if not self._all_synced:
            informers = [self.gateways, self.namespaces, *self.routes.values()]
            if not all(i.synced.is_set() for i in informers):
                return False
            self._all_synced = True
            for informer in self.routes.values():
                for route in informer.list():
                    self._derive(route)
        return True

    def _derive(self, route: Obj) -> None:
        key = source_key(route.get("kind", ""), route)
        with self._lock:
            eps, problems = self.source_filter.apply(
                lambda r: gateways.endpoints(r, self.gateways.get, self.namespaces.get, self.zones,
                                             self.gslb_zones, self.filter), route)
            self.store.replace(key, eps)
            if self._all_synced:
                self._reporter.report(key, route, problems)

    def reconfigure(self, settings: Settings) -> None:
        """Other GSLB zones (ZoneDelegations): every route is derived again against them."""
        with self._lock:
            self.zones = settings.all_zones
            self.gslb_zones = tuple(z.dns_zone for z in settings.gslb_zones)
        for informer in self.routes.values():
            for route in informer.list():
                self._derive(route)

    def _on_route(self, kind: str) -> Callable[[str, Obj, Obj | None], None]:
        def handle(type_: str, obj: Obj, _old: Obj | None) -> None:
            if type_ == "DELETED":
                key = source_key(kind, obj)
                with self._lock:
                    self.store.replace(key, ())
                    self._reporter.forget(key)
                return
            self._derive(obj)

        return handle

    def _rederive(self, index: str, value: str) -> None:
        for informer in self.routes.values():
            for route in informer.by_index(index, value):
                self._derive(route)

    def _on_gateway(self, _type: str, obj: Obj, _old: Obj | None) -> None:
        self._rederive(BY_GATEWAY, key_of(obj))

    def _on_namespace(self, _type: str, obj: Obj, old: Obj | None) -> None:
        labels = (obj.get("metadata") or {}).get("labels")
        if old is None or (old.get("metadata") or {}).get("labels") != labels:
            self._rederive(BY_NAMESPACE, key_of(obj))
