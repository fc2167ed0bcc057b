"""Endpoints -> one RRset per (name, type), with the zones' own SOA/NS and the conflict rule applied.

Several objects may claim one name (a Gslb and its peers, two Services, a DNSEndpoint); this is the
single place that decides what the name holds, so the answer does not depend on watch event order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from backend.config import Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target, address_type, normalize_name, zone_of

# refresh and retry as CoreDNS's own plugins; expire one week (CoreDNS: 86400), the least Zonemaster
# accepts without a WARNING. All three only matter to secondaries, and AXFR is refused.
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 604800
MAX_TTL = 2**31 - 1  # RFC 2181 section 8
PLAIN_ZONE_MINIMUM = 30  # negative TTL of ExternalDNS-style zones (CoreDNS's etcd plugin default)


@dataclass(frozen=True, slots=True)
class Merged:
    """What one (name, type) holds after merging: targets in a stable order, one TTL, one strategy."""

    targets: tuple[Target, ...]
    ttl: int
    strategy: Strategy | None
    sources: tuple[ObjectRef, ...]


Conflict = tuple[ObjectRef, str]


def plain_ns_name(zone: str) -> str:
    """The NS of an ExternalDNS-style zone: `ns.dns.<zone>`, as CoreDNS's etcd and kubernetes plugins."""
    return f"ns.dns.{zone}"


def zone_endpoints(settings: Settings, serial: int) -> list[Endpoint]:
    """The records every served zone has of its own: apex SOA and NS, and this server's address."""
    eps: list[Endpoint] = []
    tags = [settings.cluster_geotag, *settings.ext_gslb_clusters_geotags]
    gslb_zones = {gz.dns_zone for gz in settings.gslb_zones}
    for zone in dict.fromkeys(settings.zones):  # a zone listed twice, or also as GSLB zone, gets one apex
        if zone in gslb_zones:
            continue
        ns = plain_ns_name(zone)
        eps += _apex(zone, [ns], settings.default_ttl, PLAIN_ZONE_MINIMUM, serial)
        if settings.nameserver_address:
            eps.append(_glue(ns, settings.nameserver_address, settings.default_ttl))
    for gz in {gz.dns_zone: gz for gz in reversed(settings.gslb_zones)}.values():
        names = [gz.ns_name(tag) for tag in tags if tag]
        negative_ttl = settings.negative_ttl if gz.negative_ttl is None else gz.negative_ttl
        eps += _apex(gz.dns_zone, names, settings.dns_ttl_seconds, negative_ttl, serial)
        if settings.nameserver_address and settings.cluster_geotag:
            # lands in a served zone only if the edge zone is also served here; dropped otherwise
            eps.append(_glue(gz.ns_name(settings.cluster_geotag), settings.nameserver_address,
                             settings.dns_ttl_seconds))
    return eps


def _apex(zone: str, ns_names: list[str], ns_ttl: int, minimum: int, serial: int) -> list[Endpoint]:
    # MNAME: the first NS name in sorted order, so every cluster serving the zone names the same one
    # (RFC 1035 wants one primary; checkers flag several MNAMEs). Nothing sends it updates or NOTIFYs.
    mname = min(ns_names) if ns_names else plain_ns_name(zone)
    soa = f"{mname}. hostmaster.{zone}. {serial % 2**32} {SOA_REFRESH} {SOA_RETRY} {SOA_EXPIRE} {minimum}"
    return [
        Endpoint(zone, "SOA", (Target(soa),), minimum),
        Endpoint(zone, "NS", tuple(Target(n + ".") for n in ns_names), ns_ttl),
    ]


def _glue(name: str, address: str, ttl: int) -> Endpoint:
    return Endpoint(name, address_type(address), (Target(address),), ttl)


def _source_key(ep: Endpoint) -> str:
    return str(ep.source) if ep.source else ""


def merge(
    settings: Settings, endpoints: Iterable[Endpoint], serial: int
) -> tuple[dict[str, dict[str, Merged]], list[Conflict]]:
    """Group by (name, type) inside the served zones, dedupe targets, resolve CNAME conflicts.

    Order is by source (zone records first), then each source's own target order, so the merged set
    is the same whatever order the watches delivered the objects in.
    """
    names, conflicts = merge_named(settings, endpoints, serial)
    return names, [c for cs in conflicts.values() for c in cs]


def merge_named(
    settings: Settings, endpoints: Iterable[Endpoint], serial: int
) -> tuple[dict[str, dict[str, Merged]], dict[str, list[Conflict]]]:
    """`merge` with the conflicts listed by the name they are about: an incremental compile drops
    and redoes them with their name."""
    zones = settings.all_zones
    groups: dict[tuple[str, str], list[Endpoint]] = {}
    conflicts: dict[str, list[Conflict]] = {}
    for ep in [*zone_endpoints(settings, serial), *sorted(endpoints, key=_source_key)]:
        name = normalize_name(ep.name)
        if zone_of(name, zones) is None:
            continue
        if ep.rtype.upper() == "SOA" and ep.source is not None:
            why = f"{name}: SOA records are the zone's own; ignored"
            conflicts.setdefault(name, []).append((ep.source, why))
            continue
        groups.setdefault((name, ep.rtype.upper()), []).append(ep)

    names: dict[str, dict[str, Merged]] = {}
    for (name, rtype), eps in groups.items():
        seen: dict[str, Target] = {}
        for ep in eps:
            for t in ep.targets:
                seen.setdefault(t.value, t)
        ttls = [min(ep.ttl, MAX_TTL) for ep in eps if ep.ttl is not None and ep.ttl >= 0]
        strategy = next((ep.strategy for ep in eps if ep.strategy is not None), None)
        sources = tuple(ep.source for ep in eps if ep.source is not None)
        merged = Merged(tuple(seen.values()), min(ttls) if ttls else settings.default_ttl, strategy, sources)
        names.setdefault(name, {})[rtype] = merged

    for name, types in names.items():
        if "CNAME" in types and (lost := _resolve_cname(name, types, groups[(name, "CNAME")])):
            conflicts.setdefault(name, []).extend(lost)
    return names, conflicts


def _resolve_cname(name: str, types: dict[str, Merged], eps: list[Endpoint]) -> list[Conflict]:
    """CNAME cannot share a name: other data wins over CNAME; among CNAMEs the first source wins."""
    cname = types["CNAME"]
    others = sorted(t for t in types if t != "CNAME")
    if others:
        del types["CNAME"]
        why = f"{name}: CNAME lost to {', '.join(others)} records at the same name"
        return [(ref, why) for ref in cname.sources]
    if len(cname.targets) <= 1:
        return []
    winner = next(ep for ep in eps if ep.targets)
    first = winner.targets[0]
    types["CNAME"] = Merged((first,), cname.ttl, None, cname.sources)
    conflicts: list[Conflict] = []
    for ep in eps:
        if ep.source is not None and any(t.value != first.value for t in ep.targets):
            conflicts.append((ep.source, f"{name}: CNAME {first.value} from {_source_key(winner)} wins "
                                         f"over {', '.join(t.value for t in ep.targets)}"))
    return conflicts
