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
import itertools
import logging
import operator
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
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
from backend.model import ChangedKeys, Endpoint, Store, in_zone, source_prefix

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
    """What the Store's ExternalDNS-style names ask for in one edge zone (GSLB zones are delegated away),
    kept up to date from the Store's changed keys.

    The first `update` reads every Store key; later ones copy out only the keys changed since (`changed`
    is the Store key listener), re-parse those whose Endpoints are new objects and re-merge only the
    (name, type)s they touch, from the keys asking for each: a pass costs what changed, not what the Store
    holds (a whole-Store copy or sort holds the GIL, so the loop answering DNS, for all of it).
    Not thread-safe: one caller (the publisher's worker thread).
    """

    def __init__(self, settings: Settings, edge_zone: str) -> None:
        self.settings = settings
        self.edge_zone = edge_zone
        self.changed = ChangedKeys()
        self.want: dict[RRKey, Want] = {}  # every (name, type) asked for, updated in place
        self.generation = 0  # grows with every update that changed a Want
        self._delegated = [gz.dns_zone for gz in settings.gslb_zones]
        self._by_key: dict[str, tuple[tuple[Endpoint, ...], list[Contribution]]] = {}
        self._keys_of: dict[RRKey, tuple[str, ...]] = {}  # (name, type) -> the Store keys asking, sorted
        self._read_all = True

    def update(self, store: Store) -> Wants:
        keys = {k for k in self.changed.take() if k.startswith(SOURCE_KEYS)}
        # a change after the keys are taken comes again next time; only the first update reads every key
        _, by_key = store.snapshot(None if self._read_all else keys)
        if self._read_all:
            keys = {k for k in by_key if k.startswith(SOURCE_KEYS)}
            self._read_all = False
        changed = frozenset(self._redo(keys, by_key))
        self.generation += bool(changed)
        return Wants(self, self.generation, self.want, changed)

    def _redo(self, keys: Iterable[str], by_key: Mapping[str, tuple[Endpoint, ...]]) -> set[RRKey]:
        """Take in `keys` as `by_key` has them now (absent: gone); the (name, type)s whose Want changed."""
        touched: set[RRKey] = set()
        for key in keys:
            eps = by_key.get(key)
            held = self._by_key.get(key)
            if eps is (held[0] if held else None):
                continue
            new = _contributions(key, eps, self.settings, self.edge_zone, self._delegated) if eps else []
            for rrkey, *_ in held[1] if held else ():
                self._keys_of[rrkey] = tuple(k for k in self._keys_of[rrkey] if k != key)
                touched.add(rrkey)
            for rrkey, *_ in new:
                self._keys_of[rrkey] = tuple(sorted({*self._keys_of.get(rrkey, ()), key}))
                touched.add(rrkey)
            if eps:
                self._by_key[key] = (eps, new)
            else:
                del self._by_key[key]
        changed = set()
        for rrkey in touched:
            want = self._merge(rrkey)
            if want == self.want.get(rrkey):
                continue
            changed.add(rrkey)
            if want is None:
                del self.want[rrkey]
            else:
                self.want[rrkey] = want
        return changed

    def _merge(self, rrkey: RRKey) -> Want | None:
        """What the keys asking for `rrkey` want together: their values, the TTL and resource of the
        first key in key order (so every replica, and every pass, picks the same)."""
        keys = self._keys_of.get(rrkey)
        if not keys:
            self._keys_of.pop(rrkey, None)
            return None
        merged: Want | None = None
        for key in keys:
            for rk, values, ttl, resource in self._by_key[key][1]:
                if rk == rrkey:
                    merged = (Want(values, ttl, resource) if merged is None
                              else Want(merged.values | values, merged.ttl, merged.resource))
        return merged


@dataclass(frozen=True)
class Wants:
    """One pass's wanted set: `want` (every (name, type); the `Wanted`'s own dict, updated in place by
    the next pass) and `changed` (the (name, type)s whose Want this pass changed). Two compare equal
    exactly when nothing changed in between, which the publisher asks without comparing the sets."""

    source: Wanted
    generation: int
    want: Mapping[RRKey, Want] = field(compare=False)
    changed: frozenset[RRKey] = field(compare=False)


@dataclass
class Held:
    """What the edge zone holds: rdata text by (name, type) (lowercase, TXT as is), and the types at each
    name, so a name's CNAME clash is a look-up, not a walk over the zone."""

    rrsets: dict[RRKey, frozenset[str]] = field(default_factory=dict)
    types: dict[str, set[str]] = field(default_factory=dict)

    def set(self, key: RRKey, values: Iterable[str]) -> None:
        name, rtype = key
        frozen = frozenset(values)
        if frozen:
            self.rrsets[key] = frozen
            self.types.setdefault(name, set()).add(rtype)
            return
        self.rrsets.pop(key, None)
        types = self.types.get(name, set())
        types.discard(rtype)
        if not types:
            self.types.pop(name, None)


def _transfer(server: Server, zone: str, key: dns.tsig.Key | None) -> Held:
    xfr = dns.query.xfr(server.host, dns.name.from_text(zone), port=server.port, keyring=key,
                        timeout=XFR_TIMEOUT, lifetime=XFR_TIMEOUT, relativize=False)
    contents = dns.zone.from_xfr(xfr, relativize=False)
    values: dict[RRKey, set[str]] = {}
    for name, rdataset in contents.iterate_rdatasets():
        rtype = dns.rdatatype.to_text(rdataset.rdtype)
        values.setdefault((name.to_text().rstrip(".").lower(), rtype), set()).update(
            rd.to_text().lower() if rtype != "TXT" else rd.to_text() for rd in rdataset)
    held = Held()
    for k, v in values.items():
        held.set(k, v)
    return held


async def zone_contents(server: Server, zone: str, key: dns.tsig.Key | None) -> Held:
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
    skipped: list[RRKey]


def _owned(held: Held, owner: str) -> set[RRKey]:
    """Every (name, type) whose marker names our owner id."""
    ours: set[RRKey] = set()
    for (name, rtype), values in held.rrsets.items():
        if rtype == "TXT" and any(marker_owner(v) == owner for v in values):
            ours.update((name.removeprefix(m.lower() + "-"), m) for m in MANAGED_TYPES
                        if name.startswith(m.lower() + "-"))
    return ours


def _our_markers(held: Held, owner: str, key: RRKey) -> list[str]:
    return [v for v in held.rrsets.get((marker_name(*key), "TXT"), ()) if marker_owner(v) == owner]


def plan(held: Held, want: Mapping[RRKey, Want], owner: str, keys: Iterable[RRKey] | None = None) -> Plan:
    """The updates for every (name, type) we own or want, or only for `keys` (those whose Want changed
    since `held` was last brought in line: a pass then costs what changed, not what the zone holds).
    Only the (name, type)s with something to do are sorted (for the order of the updates): a sort or a
    set of the whole zone would be one C call holding the GIL, and so the loop answering DNS."""
    ours = _owned(held, owner) if keys is None else None
    if ours is not None:
        keys = itertools.chain(want, (k for k in ours if k not in want))
    steps: list[tuple[RRKey, Plan]] = []
    for key in keys or ():
        owned = key in ours if ours is not None else bool(_our_markers(held, owner, key))
        step = _step(held, want.get(key), owner, key, owned)
        if step is not None:
            steps.append((key, step))
    p = Plan([], [], [], [])
    for _key, step in sorted(steps, key=operator.itemgetter(0)):
        p.deletes += step.deletes
        p.adds += step.adds
        p.claims += step.claims
        p.skipped += step.skipped
    return p


def _step(held: Held, w: Want | None, owner: str, key: RRKey, owned: bool) -> Plan | None:
    """One (name, type)'s share of the plan (`owned`: its marker names us), None if nothing to do."""
    name, rtype = key
    mark = marker_name(name, rtype)
    have = {Record(name, rtype, v) for v in held.rrsets.get(key, ())}
    if owned:
        if w is None:
            return Plan([*sorted(have), *(Record(mark, "TXT", v) for v in _our_markers(held, owner, key))],
                        [], [], [])
        deletes, adds = sorted(have - w.values), [(r, w.ttl) for r in sorted(w.values - have)]
        return Plan(deletes, adds, [], []) if deletes or adds else None
    if w is None:
        return None  # neither ours nor wanted (any more)
    taken = held.rrsets.get((mark, "TXT")) or have
    other_types = held.types.get(name, set()) - {rtype, "TXT"}
    if taken or "CNAME" in other_types or (rtype == "CNAME" and other_types):
        return Plan([], [], [], [key])
    records = [(r, w.ttl) for r in sorted(w.values)]
    return Plan([], [], [(mark, [*records, (Record(mark, "TXT", marker(owner, w.resource)), w.ttl)])], [])


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
        self.held: Held | None = None

    def forget(self) -> None:
        self.held = None

    async def read(self, server: Server, zone: str, key: dns.tsig.Key | None) -> Held:
        if self.held is None:
            self.held = await zone_contents(server, zone, key)
        return self.held

    def apply(self, deletes: Iterable[Record], adds: Iterable[Change]) -> None:
        if self.held is None:
            return
        changed: dict[RRKey, set[str]] = {}
        for r, add in [*((r, False) for r in deletes), *((r, True) for r, _ttl in adds)]:
            values = changed.setdefault((r.name, r.rtype), set(self.held.rrsets.get((r.name, r.rtype), ())))
            (values.add if add else values.discard)(_held_text(r))
        for k, values in changed.items():
            self.held.set(k, values)


def _held_text(r: Record) -> str:
    """A record's value as `_transfer` spells it (TXT keeps its case)."""
    return r.value if r.rtype != "TXT" else dns.rdata.from_text("IN", "TXT", r.value).to_text()


async def sync_names(server: Server, zone: str, key: dns.tsig.Key | None, want: Mapping[RRKey, Want],
                     owner: str, reported: set[RRKey], view: View | None = None,
                     changed: Collection[RRKey] | None = None) -> int:
    """Bring one edge zone in line; `reported` keeps conflicts logged once, not every pass.

    With a kept view (the last pass succeeded) only the `changed` (name, type)s are planned; a zone
    read now (first pass, drift check, after a failure), or `changed` None, plans every name.
    A second round follows when our own deletions freed a name we skipped (a Service whose CNAME
    became an A record), so the switch does not wait for the next periodic check. Planning runs on a
    worker thread, off the loop that answers DNS.
    """
    view = view or View()
    keys = None if view.held is None or changed is None else set(changed)
    done = 0
    try:
        held = await view.read(server, zone, key)
        for _ in range(2):
            p = await asyncio.to_thread(plan, held, want, owner, keys)
            for deletes in _batches(p.deletes):
                await send_update(server, zone, key, deletes, [])
                view.apply(deletes, ())
            for adds in _batches(p.adds):
                await send_update(server, zone, key, [], adds)
                view.apply((), adds)
            for markers, changes in _claim_batches(p.claims):
                await send_update(server, zone, key, [], changes, absent=markers)
                view.apply((), changes)
                done += len(changes)
            done += len(p.deletes) + len(p.adds)
            freed = {(r.name, t) for r in p.deletes for t in MANAGED_TYPES} & {*p.skipped, *reported}
            if not freed:
                break
            keys = None if keys is None else keys | freed
    except BaseException:
        view.forget()
        raise
    for name, rtype in sorted(set(p.skipped) - reported):
        log.warning("edge zone %s: %s %s is held by another owner (or has no ExternalDNS marker): "
                    "not touched", zone, name, rtype)
    if keys is None:
        reported.clear()
    else:
        reported.difference_update(keys)
    reported.update(p.skipped)
    return done


def job(settings: Settings, store: Store, key: dns.tsig.Key | None, edge_zone: str) -> Job:
    """The names of one edge zone, re-planned for the (name, type)s whose Want changed."""
    owner = settings.txt_owner_id or settings.cluster_geotag
    reported: set[RRKey] = set()
    view = View()
    wanted = Wanted(settings, edge_zone)

    async def apply(server: Server, w: object) -> int:
        assert isinstance(w, Wants)
        return await sync_names(server, edge_zone, key, w.want, owner, reported, view, w.changed)

    return Job("names", edge_zone, lambda: wanted.update(store), apply, forget=view.forget,
               changed=wanted.changed)
