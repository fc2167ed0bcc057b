"""Gslb objects -> GSLB Endpoints in the Store, re-evaluated only when something they read changes.

Each evaluation reads the cluster through a recording view; what it read becomes the Gslb's
dependencies (a reverse index (kind, key) -> Gslbs), so an EndpointSlice event re-evaluates exactly
the Gslbs behind that Service and nothing is polled. Every replica runs the engine (every replica
serves DNS); only the leader's controller turns the results into status and Events.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backend import metrics
from backend.config import Settings
from backend.gslb.health import HEALTHY, NOT_FOUND, UNHEALTHY, HostState, evaluate
from backend.gslb.spec import GslbSpec, SpecError, parse
from backend.kube.informer import ENDPOINTSLICES, SLICES_BY_SERVICE, Informer, slice_service
from backend.model import LOCALTARGETS, Endpoint, Obj, Store, Target, address_type, gslb_key, key_of, zone_of
from backend.probes.prober import Prober, ProbeTargets

log = logging.getLogger(__name__)

Dep = tuple[str, str]  # (kind, "ns/name") or (kind, "ns/*") for a label selection
HOSTNAME_DEP = "Hostname"  # a hostname a Gslb reads, resolved by backend/gslb/hostnames.py


@dataclass(frozen=True, slots=True)
class GslbResult:
    """One Gslb as this cluster sees it: its hosts' health and addresses, or why it cannot be served."""

    key: str  # the Store key, also the Gslb's identity across both API groups
    obj: Obj  # the Gslb as last seen
    spec: GslbSpec | None
    hosts: tuple[HostState, ...]
    error: SpecError | None
    outside: tuple[str, ...] = ()  # hosts in no configured GSLB zone (not served)


Listener = Callable[[str, GslbResult | None], None]


def probe_targets(result: GslbResult | None) -> ProbeTargets:
    """What the prober probes for one Gslb: per served host, its probe config and this cluster's
    addresses (none without probe annotations, or once the Gslb is gone)."""
    if result is None or result.spec is None or result.spec.probe is None:
        return {}
    probe = result.spec.probe
    return {h.host: (probe, h.targets) for h in result.hosts if h.host not in result.outside}


def _labels_match(obj: Obj, labels: dict[str, str]) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


class _Recording:
    """A View over the informers that remembers every (kind, key) it was asked for."""

    def __init__(self, informers: dict[str, Informer], slices: Informer,
                 resolved: dict[str, tuple[str, ...]]) -> None:
        self.informers = informers
        self.slice_informer = slices
        self._resolved = resolved
        self.deps: set[Dep] = set()

    def resolved(self, hostname: str) -> tuple[str, ...]:
        self.deps.add((HOSTNAME_DEP, hostname))
        return self._resolved.get(hostname, ())

    def get(self, kind: str, key: str) -> Obj | None:
        self.deps.add((kind, key))
        informer = self.informers.get(kind)  # None: a kind this cluster does not serve
        return informer.get(key) if informer is not None else None

    def select(self, kind: str, namespace: str, labels: dict[str, str]) -> list[Obj]:
        self.deps.add((kind, f"{namespace}/*"))
        informer = self.informers.get(kind)
        return [o for o in (informer.list() if informer is not None else ())
                if (o.get("metadata") or {}).get("namespace") == namespace and _labels_match(o, labels)]

    def slices(self, service_key: str) -> list[Obj]:
        self.deps.add(("Service", service_key))
        return self.slice_informer.by_index(SLICES_BY_SERVICE, service_key)


def _targets(values: Iterable[str], geotag: str) -> tuple[Target, ...]:
    return tuple(Target(v, geotag) for v in values)


Serve = Callable[[str, str], bool]  # (host, address) -> do this cluster's probes let it be answered


def served(state: HostState, serve: Serve | None = None) -> tuple[str, ...]:
    """The verdict on this cluster's targets of a host: its endpoints are ready (healthy) and the
    probes from here pass (`serve`; None: not probed). What the host's answer holds, and k8gb's
    healthyRecords."""
    if not state.healthy:
        return ()
    return state.targets if serve is None else tuple(ip for ip in state.targets if serve(state.host, ip))


def host_endpoints(
    spec: GslbSpec, state: HostState, geotag: str, serve: Serve | None = None
) -> list[Endpoint]:
    """The host answered by its strategy (empty targets = NODATA while unhealthy), and
    localtargets-<host> with this cluster's healthy addresses for the peers, only while healthy.

    `serve` is the probe verdict: a target whose probes fail here leaves the answer but stays in
    localtargets (that record says what this cluster's endpoints report; each cluster applies its own
    probes to it)."""
    by_type: dict[str, list[str]] = {"A": [], "AAAA": []}
    for ip in state.targets:
        by_type[address_type(ip)].append(ip)
    live = state.healthy
    answered = set(served(state, serve))
    eps = []
    for rtype, ips in by_type.items():
        if rtype == "A" or ips:
            eps.append(Endpoint(state.host, rtype, _targets([ip for ip in ips if ip in answered], geotag),
                                spec.ttl, spec.ref, spec.strategy))
        if live and ips and not state.host.startswith("*."):
            eps.append(Endpoint(LOCALTARGETS + state.host, rtype, _targets(ips, geotag), spec.ttl, spec.ref))
    return eps


def _observe(obj: Obj, result: GslbResult | None) -> None:
    """k8gb's metrics, same names and labels; a deleted Gslb's series go away with it."""
    meta = obj.get("metadata") or {}
    labels = (meta.get("namespace", ""), meta.get("name", ""))
    statuses = (HEALTHY, UNHEALTHY, NOT_FOUND)
    if result is None:
        for family in (metrics.GSLB_HEALTHY_RECORDS, metrics.GSLB_RECONCILIATION_LOOPS, metrics.GSLB_ERRORS):
            family.remove(labels)
        for status in statuses:
            metrics.GSLB_SERVICE_STATUS.remove((*labels, status))
        return
    if result.error is not None:
        metrics.GSLB_ERRORS.inc(labels)
    else:
        metrics.GSLB_RECONCILIATION_LOOPS.inc(labels)
    metrics.GSLB_HEALTHY_RECORDS.set(labels, sum(len(h.targets) for h in result.hosts if h.healthy))
    for status in statuses:
        metrics.GSLB_SERVICE_STATUS.set((*labels, status), sum(h.health == status for h in result.hosts))


class GslbEngine:
    """Attach to the informers (Gslbs of both groups, Ingresses, Services, EndpointSlices, and the
    Gateway API's Gateways and routes by kind where the cluster serves them)."""

    def __init__(self, store: Store, settings: Settings, gslbs: list[Informer], ingresses: Informer,
                 services: Informer, endpointslices: Informer,
                 gateway_api: dict[str, Informer] | None = None, prober: Prober | None = None) -> None:
        self.store = store
        self.prober = prober
        self.settings = settings
        self.gslb_informers = gslbs
        self._informers = {"Ingress": ingresses, "Service": services, **(gateway_api or {})}
        self._slices = endpointslices
        self._lock = threading.RLock()
        self._deps: dict[str, set[Dep]] = {}
        self._rev: dict[Dep, set[str]] = {}
        self._objs: dict[str, Obj] = {}
        self.results: dict[str, GslbResult] = {}
        # host -> the Gslbs serving it (`serving`); tuples: nearly every host has one, and a set of one
        # costs 216 bytes (2.3 MiB at 10,000 Gslbs)
        self._by_host: dict[str, tuple[str, ...]] = {}
        self._listeners: list[Listener] = []
        self._resolved: dict[str, tuple[str, ...]] = {}  # hostname -> its addresses
        # the hostnames some Gslb reads, replaced whole when one comes or goes: the resolver reads it on
        # the answer loop, without the lock and without walking every dependency of every Gslb
        self._hostnames: frozenset[str] = frozenset()
        self.on_hostnames: Callable[[], None] = lambda: None  # a new hostname is wanted
        self._gslb_zones = [z.dns_zone for z in settings.gslb_zones]
        assert endpointslices.resource == ENDPOINTSLICES
        endpointslices.add_index(SLICES_BY_SERVICE, slice_service)
        for informer in gslbs:
            informer.add_handler(self._on_gslb)
        for kind, informer in self._informers.items():
            informer.add_handler(self._dependency_handler(kind))
        endpointslices.add_handler(self._on_slice)
        if prober is not None:
            # the prober reads our results (raw addresses) ...
            self.subscribe(lambda key, result: prober.on_gslb(key, probe_targets(result)))
            prober.subscribe(self._on_verdicts)  # ... and we read its verdicts when writing Endpoints

    def subscribe(self, listener: Listener) -> None:
        """`listener(gslb_key, result or None when the Gslb is gone)`, called on every evaluation;
        it must be cheap (the controller only queues)."""
        with self._lock:
            self._listeners.append(listener)
            held = list(self.results.items())
        for key, result in held:
            listener(key, result)

    def reconfigure(self, settings: Settings) -> None:
        """Other GSLB zones (ZoneDelegations): every Gslb is evaluated again against them."""
        with self._lock:
            self.settings = settings
            self._gslb_zones = [z.dns_zone for z in settings.gslb_zones]
            for key in sorted(self._objs):
                self._evaluate(key)

    def hostnames(self) -> list[str]:
        """The hostnames some Gslb reads now (what the resolver keeps resolved); any thread, lock-free."""
        return sorted(self._hostnames)

    def set_resolved(self, hostname: str, addresses: tuple[str, ...]) -> None:
        """New addresses for a hostname: re-evaluate the Gslbs that read it."""
        with self._lock:
            if self._resolved.get(hostname) == addresses:
                return
            self._resolved[hostname] = addresses
            self._reevaluate([(HOSTNAME_DEP, hostname)])

    def serving(self, hosts: Iterable[str]) -> list[str]:
        """The Gslbs whose results serve any of `hosts`, by key: what a change of those hosts' probe
        verdicts or peers' targets touches, found without walking every result."""
        with self._lock:
            return sorted({key for host in hosts for key in self._by_host.get(host, ())})

    def synced(self) -> bool:
        informers = [*self.gslb_informers, *self._informers.values(), self._slices]
        return all(i.synced.is_set() for i in informers)

    # -- events ----------------------------------------------------------------------------------

    def _on_gslb(self, type_: str, obj: Obj, _old: Obj | None) -> None:
        key = gslb_key(obj)
        with self._lock:
            if type_ == "DELETED":
                self._forget(key)
                self.store.replace(key, ())
                _observe(obj, None)
                self._notify(key, None)
            else:
                self._objs[key] = obj
                self._evaluate(key)

    def _dependency_handler(self, kind: str) -> Callable[[str, Obj, Obj | None], None]:
        def handle(_type: str, obj: Obj, _old: Obj | None) -> None:
            key = key_of(obj)
            self._reevaluate([(kind, key), (kind, key.split("/")[0] + "/*")])

        return handle

    def _on_slice(self, _type: str, obj: Obj, old: Obj | None) -> None:
        self._reevaluate([("Service", s) for s in {*slice_service(obj), *slice_service(old)}])

    def _reevaluate(self, deps: list[Dep]) -> None:
        with self._lock:
            keys = sorted({k for dep in deps for k in self._rev.get(dep, ())})
            for key in keys:
                self._evaluate(key)

    # -- evaluation ------------------------------------------------------------------------------

    def _forget(self, key: str) -> None:
        self._set_deps(key, set())
        del self._deps[key]
        self._objs.pop(key, None)
        self._index(key, self.results.pop(key, None), None)

    def _evaluate(self, key: str) -> None:
        obj = self._objs[key]
        view = _Recording(self._informers, self._slices, self._resolved)
        spec: GslbSpec | None = None
        hosts: tuple[HostState, ...] = ()
        error: SpecError | None = None
        try:
            spec = parse(obj, self.settings.dns_ttl_seconds)
            hosts = evaluate(spec, view)
        except SpecError as e:
            # Kept without its traceback: the raised one holds the frames that have it among their
            # locals (a reference cycle) and, through them, the informer's callers and their objects.
            # A cycle that dies after server.YoungCollector froze it is never freed: ~600k objects
            # (+100 MiB RSS) after a 10k + 10k sync whose Gslbs arrived before their Services.
            error = SpecError(e.reason, e.message)
        except Exception as e:  # a Gslb we failed to understand must not take the others down
            log.exception("gslb %s: evaluation failed", key)
            error = SpecError("InternalError", f"{type(e).__name__}: {e}")
        self._set_deps(key, view.deps)
        outside = tuple(h.host for h in hosts if zone_of(h.host, self._gslb_zones) is None)
        result = GslbResult(key, obj, spec, hosts, error, outside)
        self._index(key, self.results.get(key), result)
        self.results[key] = result
        self._publish(result)
        _observe(obj, result)
        self._notify(key, result)

    def _index(self, key: str, old: GslbResult | None, new: GslbResult | None) -> None:
        before = {h.host for h in old.hosts} if old is not None else set()
        after = {h.host for h in new.hosts} if new is not None else set()
        for host in before - after:
            keys = tuple(k for k in self._by_host[host] if k != key)
            if keys:
                self._by_host[host] = keys
            else:
                del self._by_host[host]
        for host in after - before:
            self._by_host[host] = (*self._by_host.get(host, ()), key)

    def _publish(self, result: GslbResult) -> None:
        """The Gslb's Endpoints. Any error but ResourceNotFound keeps the last good answers: a typo in
        an edit must not take a name down."""
        spec = result.spec
        if spec is None or (result.error is not None and result.error.reason != "ResourceNotFound"):
            return
        eps = [ep for h in result.hosts if h.host not in result.outside
               for ep in host_endpoints(spec, h, self.settings.cluster_geotag, self.serve)]
        self.store.replace(result.key, eps)

    def serve(self, host: str, address: str) -> bool:
        """The probe verdict as answers apply it: False only while this cluster's probes withdraw it."""
        prober = self.prober
        return prober is None or prober.verdict(host, address) is not False

    def _on_verdicts(self, hosts: frozenset[str]) -> None:
        """Probe verdicts of `hosts` flipped (prober thread): rewrite the Gslbs serving them."""
        with self._lock:
            for key in self.serving(hosts):
                self._publish(self.results[key])

    def _set_deps(self, key: str, deps: set[Dep]) -> None:
        old = self._deps.get(key, set())
        removed, added = old - deps, deps - old
        for dep in removed:
            users = self._rev.get(dep)
            if users is not None:
                users.discard(key)
                if not users:
                    del self._rev[dep]
        new = {dep[1] for dep in added if dep[0] == HOSTNAME_DEP and dep not in self._rev}
        for dep in added:
            self._rev.setdefault(dep, set()).add(key)
        self._deps[key] = deps
        gone = {dep[1] for dep in removed if dep[0] == HOSTNAME_DEP and dep not in self._rev}
        for hostname in gone:
            self._resolved.pop(hostname, None)
        if new or gone:
            self._hostnames = (self._hostnames - gone) | new
        if new:
            self.on_hostnames()

    def _notify(self, key: str, result: GslbResult | None) -> None:
        for listener in self._listeners:
            try:
                listener(key, result)
            except Exception:
                log.exception("gslb listener %s failed on %s", listener, key)
