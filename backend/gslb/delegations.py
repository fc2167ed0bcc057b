"""k8gb v0.20's ZoneDelegation (k8gb.io/v1beta1, cluster-scoped): a load-balanced zone declared at run
time, next to the --dns-zone/--edge-dns-zone flags.

The GSLB zones are the flags' zones followed by every usable ZoneDelegation's (by name). When that
set changes, `on_change(zones)` gets the new tuple; the app hands it to every component as
`Settings.gslb_zones` (backend/app.py `Context.reconfigure`), so a delegated zone is served, its NS and
glue published at the edge and its peers polled exactly as a flag's zone. A ZoneDelegation that
cannot be used (not inside its parentZone, a bad name or TTL, a zone the flags already set, no
--cluster-geo-tag) is left out with a Warning Event and a log line; the others are unaffected.
`dns_servers(obj)` is what the leader writes to `status.dnsServers`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from backend.config import GslbZone, Settings
from backend.kube.events import EventRecorder
from backend.kube.informer import ZONEDELEGATIONS, Informer
from backend.model import Obj, check_name, object_ref

log = logging.getLogger(__name__)

Servers = Callable[[GslbZone, str], Sequence[str]]  # (zone, geotag) -> that cluster's nameserver addresses


def parse(obj: Obj) -> GslbZone:
    """The zone a ZoneDelegation declares; ValueError saying what is wrong with it."""
    spec = obj.get("spec") or {}
    zone = check_name(str(spec.get("loadBalancedZone") or ""))
    parent = check_name(str(spec.get("parentZone") or ""))
    if zone is None or parent is None or "*" in f"{zone}.{parent}":
        raise ValueError("spec.loadBalancedZone and spec.parentZone must be DNS names")
    if not zone.endswith("." + parent):
        raise ValueError(f"loadBalancedZone {zone} is not inside parentZone {parent}")
    ttl = spec.get("dnsZoneNegTTL")
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= 2**31 - 1:
        raise ValueError(f"dnsZoneNegTTL {ttl!r} is not a number of seconds")
    return GslbZone(zone, parent, ttl)


class ZoneDelegations:
    """Watches ZoneDelegations; `zones` is the current GSLB zone set (flags first)."""

    def __init__(self, settings: Settings, informer: Informer, recorder: EventRecorder | None,
                 on_change: Callable[[tuple[GslbZone, ...]], None]) -> None:
        assert informer.resource == ZONEDELEGATIONS
        self.settings = settings
        self.informer = informer
        self.recorder = recorder
        self.on_change = on_change
        self.zones: tuple[GslbZone, ...] = settings.gslb_zones
        self._problems: dict[str, str] = {}  # ZoneDelegation name -> what is wrong, reported once
        self._lock = threading.Lock()
        informer.add_handler(lambda _type, _obj, _old: self._recompute())

    def _recompute(self) -> None:
        with self._lock:
            zones = list(self.settings.gslb_zones)
            problems: dict[str, str] = {}
            by_obj = sorted(self.informer.list(), key=lambda o: (o.get("metadata") or {}).get("name", ""))
            for obj in by_obj:
                name = (obj.get("metadata") or {}).get("name", "")
                try:
                    zone = self._usable(parse(obj), zones)
                except ValueError as e:
                    problems[name] = str(e)
                    self._report(obj, str(e))
                    continue
                zones.append(zone)
            self._problems = problems
            new = tuple(zones)
            if new == self.zones:
                return
            log.info("GSLB zones now: %s", ", ".join(z.dns_zone for z in new) or "none")
            self.zones = new
            self.on_change(new)

    def _usable(self, zone: GslbZone, taken: list[GslbZone]) -> GslbZone:
        if not self.settings.cluster_geotag:
            raise ValueError("--cluster-geo-tag (clusterGeoTag) is not set: no nameserver name to delegate")
        ns_name = zone.ns_name(self.settings.cluster_geotag)
        if check_name(ns_name) is None:
            raise ValueError(f"the nameserver name {ns_name} (gslb-ns-<geotag>-<zone label>) is not a valid "
                             "DNS name (a label over 63 characters?)")
        if any(z.dns_zone == zone.dns_zone for z in taken):
            raise ValueError(f"zone {zone.dns_zone} is already a GSLB zone (flags or another ZoneDelegation)")
        return zone

    def _report(self, obj: Obj, problem: str) -> None:
        name = (obj.get("metadata") or {}).get("name", "")
        if self._problems.get(name) == problem:
            return
        log.warning("ZoneDelegation %s left out: %s", name, problem)
        if self.recorder is not None:
            ref = object_ref(obj, ZONEDELEGATIONS.kind, ZONEDELEGATIONS.api_version)  # list items lack kind
            self.recorder.record(ref, "Warning", "InvalidZoneDelegation", problem)


def dns_servers(settings: Settings, obj: Obj, servers: Servers) -> list[dict[str, str]]:
    """status.dnsServers: each cluster's gslb-ns name for the zone with its address(es), this cluster's
    from --nameserver-address, the others' as `servers` knows them (the peer exchange's glue lookups)."""
    try:
        zone = parse(obj)
    except ValueError:
        return []
    out: list[dict[str, str]] = []
    for tag in dict.fromkeys([settings.cluster_geotag, *settings.ext_gslb_clusters_geotags]):
        if not tag:
            continue
        name = zone.ns_name(tag)
        mine = [a.strip() for a in settings.nameserver_address.split(",") if a.strip()]
        for address in mine if tag == settings.cluster_geotag else servers(zone, tag):
            out.append({"name": name, "address": address})
    return out
