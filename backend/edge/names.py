"""ExternalDNS-style names (annotated Services, Ingresses, DNSEndpoints) published into the edge zone,
with ExternalDNS's TXT registry so several clusters, and a real ExternalDNS, can share the zone.

ExternalDNS (v0.18+ format) marks each (name, type) it owns with a TXT record at `<type>-<name>`:
`"heritage=external-dns,external-dns/owner=<owner id>,external-dns/resource=service/default/nginx"`.
We read the zone (AXFR, signed), treat as ours exactly the (name, type) whose marker names our owner
id, keep those in line with the Store, and take a fresh name only when nothing is there yet (no
marker, no records) under an RFC 2136 prerequisite that its marker is still absent. Records owned by
someone else, or by nobody, are never touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import dns.name
import dns.query
import dns.rdata
import dns.rdatatype
import dns.tsig
import dns.zone

from backend.config import Settings
from backend.dnsclient import Server
from backend.edge.publisher import EdgeError, Job, Record, send_update
from backend.kube.informer import ROUTES
from backend.model import Endpoint, Store, in_zone, source_prefix

log = logging.getLogger(__name__)

MANAGED_TYPES = ("A", "AAAA", "CNAME")  # ExternalDNS's default --managed-record-types
# The sources whose names go to the edge: ExternalDNS's service, ingress, crd and gateway-*route sources.
SOURCE_KEYS = tuple(source_prefix(k) for k in ("Service", "Ingress", "DNSEndpoint", *ROUTES))
HERITAGE = "heritage=external-dns"
BATCH = 200  # rdata per update message, well under 64 KiB
XFR_TIMEOUT = 10.0

RRKey = tuple[str, str]  # (name, type)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Want:
    values: frozenset[Record]
    ttl: int
    resource: str  # kind/namespace/name of the first object that asks for it


def marker_name(name: str, rtype: str) -> str:
    return f"{rtype.lower()}-{name}"


def marker(owner: str, resource: str) -> str:
    return f'"{HERITAGE},external-dns/owner={owner},external-dns/resource={resource}"'


def marker_owner(txt: str) -> str | None:
    """The owner id of an ExternalDNS registry TXT value, None for any other TXT."""
    fields = dict(part.split("=", 1) for part in txt.strip('"').split(",") if "=" in part)
    if fields.get("heritage") != "external-dns":
        return None
    return fields.get("external-dns/owner")


def _absolute(name: str) -> str:
    return name if name.endswith(".") else name + "."


Contribution = tuple[RRKey, frozenset[Record], int, str]  # what one Store key asks for: values, TTL, resource


def _contributions(key: str, eps: tuple[Endpoint, ...], settings: Settings, edge_zone: str,
                   delegated: list[str]) -> list[Contribution]:
    out: list[Contribution] = []
    for ep in eps:
        rtype = ep.rtype.upper()
        if (rtype not in MANAGED_TYPES or not ep.targets or not in_zone(ep.name, edge_zone)
                or any(in_zone(ep.name, z) for z in delegated)):
            continue
        values = frozenset(Record.of(ep.name, rtype, _absolute(t.value) if rtype == "CNAME" else t.value)
                           for t in ep.targets)
        out.append(((ep.name, rtype), values, ep.ttl or settings.default_ttl, str(ep.source or key)))
    return out


class Wanted:
    """What the Store's ExternalDNS-style names ask for in one edge zone (GSLB zones are delegated away).

    Each Store key's share is parsed once and kept while its Endpoints are the same objects, so a
    pass over 10,000 Services re-parses only the ones that changed. Not thread-safe: one caller.
    """

    def __init__(self, settings: Settings, edge_zone: str) -> None:
        self.settings = settings
        self.edge_zone = edge_zone
        self._delegated = [gz.dns_zone for gz in settings.gslb_zones]
        self._by_key: dict[str, tuple[tuple[Endpoint, ...], list[Contribution]]] = {}

    def __call__(self, by_key: Mapping[str, tuple[Endpoint, ...]]) -> dict[RRKey, Want]:
        cache: dict[str, tuple[tuple[Endpoint, ...], list[Contribution]]] = {}
        merged: dict[RRKey, Want] = {}
        for key in sorted(k for k in by_key if k.startswith(SOURCE_KEYS)):
            eps = by_key[key]
            held = self._by_key.get(key)
            if held is None or held[0] is not eps:
                held = (eps, _contributions(key, eps, self.settings, self.edge_zone, self._delegated))
            cache[key] = held
            for rrkey, values, ttl, resource in held[1]:
                first = merged.get(rrkey)
                merged[rrkey] = (Want(values, ttl, resource) if first is None
                                 else Want(first.values | values, first.ttl, first.resource))
        self._by_key = cache
        return merged


def wanted(by_key: Mapping[str, tuple[Endpoint, ...]], settings: Settings,
           edge_zone: str) -> dict[RRKey, Want]:
    """What the Store's ExternalDNS-style names ask for in one edge zone, computed afresh."""
    return Wanted(settings, edge_zone)(by_key)


def _transfer(server: Server, zone: str, key: dns.tsig.Key | None) -> dict[RRKey, frozenset[str]]:
    xfr = dns.query.xfr(server.host, dns.name.from_text(zone), port=server.port, keyring=key,
                        timeout=XFR_TIMEOUT, lifetime=XFR_TIMEOUT, relativize=False)
    contents = dns.zone.from_xfr(xfr, relativize=False)
    held: dict[RRKey, set[str]] = {}
    for name, rdataset in contents.iterate_rdatasets():
        rtype = dns.rdatatype.to_text(rdataset.rdtype)
        held.setdefault((name.to_text().rstrip(".").lower(), rtype), set()).update(
            rd.to_text().lower() if rtype != "TXT" else rd.to_text() for rd in rdataset)
    return {k: frozenset(v) for k, v in held.items()}


async def zone_contents(server: Server, zone: str, key: dns.tsig.Key | None) -> dict[RRKey, frozenset[str]]:
    try:
        return await asyncio.to_thread(_transfer, server, zone, key)
    except dns.tsig.PeerError as e:
        raise EdgeError(server, f"NOTAUTH/{type(e).__name__}", f"zone transfer of {zone}: {e}") from e
    except Exception as e:  # refused transfer, timeout, broken stream: dnspython raises many kinds
        raise EdgeError(server, "XFR-FAILED", f"zone transfer of {zone}: {type(e).__name__}: {e}") from e


Change = tuple[Record, int]  # rdata and its TTL


@dataclass
class Plan:
    deletes: list[Record]
    adds: list[Change]
    claims: list[tuple[str, list[Change]]]  # fresh (name, type)s: (marker name, records + marker)
    skipped: list[str]


def plan(held: Mapping[RRKey, frozenset[str]], want: Mapping[RRKey, Want], owner: str) -> Plan:
    ours: set[RRKey] = set()
    our_markers: dict[RRKey, list[str]] = {}
    for (name, rtype), values in held.items():
        if rtype != "TXT":
            continue
        mine = [v for v in values if marker_owner(v) == owner]
        for managed in MANAGED_TYPES:
            prefix = managed.lower() + "-"
            if mine and name.startswith(prefix):
                ours.add((name.removeprefix(prefix), managed))
                our_markers[(name.removeprefix(prefix), managed)] = mine
    p = Plan([], [], [], [])
    for key in sorted(ours | set(want)):
        name, rtype = key
        have = {Record(name, rtype, v) for v in held.get(key, ())}
        w = want.get(key)
        if key in ours:
            if w is None:
                p.deletes += sorted(have)
                p.deletes += [Record(marker_name(name, rtype), "TXT", v) for v in our_markers[key]]
            else:
                p.deletes += sorted(have - w.values)
                p.adds += [(r, w.ttl) for r in sorted(w.values - have)]
            continue
        assert w is not None
        taken = held.get((marker_name(name, rtype), "TXT")) or have
        other_types = {t for (n, t) in held if n == name} - {rtype, "TXT"}
        cname_clash = ("CNAME" in other_types) or (rtype == "CNAME" and other_types)
        if taken or cname_clash:
            p.skipped.append(f"{name} {rtype}")
            continue
        mark = marker_name(name, rtype)
        records = [(r, w.ttl) for r in sorted(w.values)]
        p.claims.append((mark, [*records, (Record(mark, "TXT", marker(owner, w.resource)), w.ttl)]))
    return p


def _batches(items: list[T], size: int = BATCH) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _claim_batches(claims: list[tuple[str, list[Change]]]) -> Iterable[tuple[list[str], list[Change]]]:
    """Whole claims per update (never a name's records in one and its marker in another)."""
    markers: list[str] = []
    changes: list[Change] = []
    for mark, records in claims:
        if changes and len(changes) + len(records) > BATCH:
            yield markers, changes
            markers, changes = [], []
        markers.append(mark)
        changes += records
    if changes:
        yield markers, changes


class View:
    """What we believe the edge zone holds: read by AXFR at the first pass and at every drift check
    (`forget`), and in between kept up to date with our own successful updates, so a change costs
    only its update, not a zone transfer. Any failed update forgets it (the edge may differ)."""

    def __init__(self) -> None:
        self.held: dict[RRKey, frozenset[str]] | None = None

    def forget(self) -> None:
        self.held = None

    async def read(self, server: Server, zone: str, key: dns.tsig.Key | None) -> dict[RRKey, frozenset[str]]:
        if self.held is None:
            self.held = await zone_contents(server, zone, key)
        return self.held

    def apply(self, deletes: Iterable[Record], adds: Iterable[Change]) -> None:
        if self.held is None:
            return
        changed: dict[RRKey, set[str]] = {}
        for r, add in [*((r, False) for r in deletes), *((r, True) for r, _ttl in adds)]:
            values = changed.setdefault((r.name, r.rtype), set(self.held.get((r.name, r.rtype), ())))
            (values.add if add else values.discard)(_held_text(r))
        for k, values in changed.items():
            if values:
                self.held[k] = frozenset(values)
            else:
                self.held.pop(k, None)


def _held_text(r: Record) -> str:
    """A record's value as `_transfer` spells it (TXT keeps its case)."""
    return r.value if r.rtype != "TXT" else dns.rdata.from_text("IN", "TXT", r.value).to_text()


async def sync_names(server: Server, zone: str, key: dns.tsig.Key | None, want: Mapping[RRKey, Want],
                     owner: str, reported: set[str], view: View | None = None) -> int:
    """Bring one edge zone in line; `reported` keeps conflicts logged once, not every pass.

    A second pass follows when our own deletions may have freed a name we skipped (a Service whose
    CNAME became an A record), so the switch does not wait for the next periodic check. Planning
    walks the whole zone and runs on a worker thread, off the loop that answers DNS.
    """
    view = view or View()
    changed = 0
    try:
        for _ in range(2):
            p = await asyncio.to_thread(plan, await view.read(server, zone, key), want, owner)
            for deletes in _batches(p.deletes):
                await send_update(server, zone, key, deletes, [])
                view.apply(deletes, ())
            for adds in _batches(p.adds):
                await send_update(server, zone, key, [], adds)
                view.apply((), adds)
            for markers, changes in _claim_batches(p.claims):
                await send_update(server, zone, key, [], changes, absent=markers)
                view.apply((), changes)
                changed += len(changes)
            changed += len(p.deletes) + len(p.adds)
            if not (p.deletes and p.skipped):
                break
    except BaseException:
        view.forget()
        raise
    for what in sorted(set(p.skipped) - reported):
        log.warning("edge zone %s: %s is held by another owner (or has no ExternalDNS marker): not touched",
                    zone, what)
    reported.clear()
    reported.update(p.skipped)
    return changed


def job(settings: Settings, store: Store, key: dns.tsig.Key | None, edge_zone: str) -> Job:
    """The names of one edge zone, re-planned when the Store's wanted set for it changes."""
    owner = settings.txt_owner_id or settings.cluster_geotag
    reported: set[str] = set()
    view = View()
    wanted_now = Wanted(settings, edge_zone)

    def want() -> dict[RRKey, Want]:
        return wanted_now(store.snapshot()[1])

    async def apply(server: Server, w: object) -> int:
        assert isinstance(w, dict)
        return await sync_names(server, edge_zone, key, w, owner, reported, view)

    return Job("names", edge_zone, want, apply, forget=view.forget)
