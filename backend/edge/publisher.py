"""RFC 2136 updates to the edge DNS that add and remove only this cluster's own rdata.

Several clusters co-own one RRset at the edge (the NS set of the load-balanced zone). ExternalDNS
replaces whole RRsets and so clobbers the other clusters' entries; here every change is an add or a
delete of one specific rdata, computed from what the edge holds now, so two clusters never undo each
other. RRsets wholly ours (the glue at our own gslb-ns name) may also lose rdata we no longer want.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.asyncquery
import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tsig
import dns.update

from backend import metrics
from backend.config import GslbZone
from backend.peers.query import QueryError, Server, ask, rdata_texts

log = logging.getLogger(__name__)

TIMEOUT = 3.0
MAX_BACKOFF = 60.0

_TSIG_ERRORS = {
    dns.tsig.PeerBadKey: "BADKEY",
    dns.tsig.PeerBadSignature: "BADSIG",
    dns.tsig.PeerBadTime: "BADTIME",
    dns.tsig.PeerBadTruncation: "BADTRUNC",
}


@dataclass(frozen=True, order=True, slots=True)
class Record:
    """One rdata at the edge: lowercase name without the trailing dot, value as dnspython prints it."""

    name: str
    rtype: str
    value: str

    @classmethod
    def of(cls, name: str, rtype: str, value: str) -> Record:
        rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value)
        return cls(name.rstrip(".").lower(), rtype.upper(), rdata.to_text().lower())


@dataclass(frozen=True, slots=True)
class Claim:
    """What this cluster wants in one edge zone.

    `records` are added when missing. `exclusive` lists (name, rtype) RRsets that are wholly ours, so
    rdata there that is not in `records` is stale and removed; every other RRset is shared.
    """

    zone: str
    records: frozenset[Record]
    exclusive: frozenset[tuple[str, str]] = frozenset()
    ttl: int = 30

    def rrsets(self) -> list[tuple[str, str]]:
        return sorted({(r.name, r.rtype) for r in self.records} | self.exclusive)


class EdgeError(Exception):
    """The edge refused or failed an update; `rcode` is what the edge said (e.g. REFUSED, NOTAUTH/BADSIG)."""

    def __init__(self, server: Server, rcode: str, detail: str = "") -> None:
        super().__init__(f"edge {server}: {rcode}{': ' + detail if detail else ''}")
        self.server = server
        self.rcode = rcode


def delegation_claims(zones: Iterable[GslbZone], geotag: str, addresses: Iterable[str],
                      ttl: int) -> list[Claim]:
    """Our NS target in each load-balanced zone's NS set, and our glue at our own gslb-ns name."""
    addrs = list(addresses)
    by_edge: dict[str, tuple[set[Record], set[tuple[str, str]]]] = {}
    for zone in zones:
        records, exclusive = by_edge.setdefault(zone.edge_zone, (set(), set()))
        ns = zone.ns_name(geotag)
        records.add(Record.of(zone.dns_zone, "NS", ns + "."))
        for addr in addrs:
            records.add(Record.of(ns, "AAAA" if ":" in addr else "A", addr))
        exclusive.update({(ns, "A"), (ns, "AAAA")})
    return [Claim(edge, frozenset(rs), frozenset(ex), ttl) for edge, (rs, ex) in sorted(by_edge.items())]


async def current(server: Server, claim: Claim) -> dict[tuple[str, str], frozenset[str]]:
    """What the edge holds now at every RRset the claim touches (the NS set arrives as a referral)."""
    held: dict[tuple[str, str], frozenset[str]] = {}
    for name, rtype in claim.rrsets():
        response = await ask(server, name, rtype, timeout=TIMEOUT)
        values = rdata_texts(response, name, rtype, authoritative=False, sections=("answer", "authority"))
        held[(name, rtype)] = frozenset(v.lower() for v in values)
    return held


def changes(claim: Claim, held: dict[tuple[str, str], frozenset[str]], *, leave: bool = False
            ) -> tuple[list[Record], list[Record]]:
    """(deletes, adds) that bring the edge to the claim, or, when leaving, remove every rdata we own."""
    ours = {(r.name, r.rtype) for r in claim.records} | claim.exclusive
    present = {Record(n, t, v) for (n, t), vs in held.items() if (n, t) in ours for v in vs}
    if leave:
        mine = {r for r in present if r in claim.records or (r.name, r.rtype) in claim.exclusive}
        return sorted(mine), []
    stale = sorted(r for r in present if (r.name, r.rtype) in claim.exclusive and r not in claim.records)
    missing = sorted(claim.records - present)
    return stale, missing


async def send_update(server: Server, claim: Claim, key: dns.tsig.Key | None, deletes: list[Record],
                      adds: list[Record]) -> None:
    update = dns.update.UpdateMessage(claim.zone, keyring=key)
    for r in deletes:
        update.delete(dns.name.from_text(r.name), r.rtype, r.value)
    for r in adds:
        update.add(dns.name.from_text(r.name), claim.ttl, r.rtype, r.value)
    try:
        response = await dns.asyncquery.tcp(update, server.host, port=server.port, timeout=TIMEOUT)
    except dns.tsig.PeerError as e:
        raise EdgeError(server, "NOTAUTH/" + _TSIG_ERRORS.get(type(e), type(e).__name__), str(e)) from e
    except (dns.exception.DNSException, OSError, EOFError) as e:
        raise EdgeError(server, "UNREACHABLE", f"{type(e).__name__}: {e}") from e
    if response.rcode() != dns.rcode.NOERROR:
        raise EdgeError(server, dns.rcode.to_text(response.rcode()))


async def sync(servers: list[Server], claim: Claim, key: dns.tsig.Key | None, *, leave: bool = False) -> int:
    """Bring one edge zone in line (or remove ours); the first server that takes it wins.

    Returns the number of rdata changed. Raises the last server's EdgeError when none took it.
    """
    error: EdgeError | None = None
    for server in servers:
        try:
            held = await current(server, claim)
        except QueryError as e:
            error = EdgeError(server, "UNREACHABLE", str(e))
            continue
        deletes, adds = changes(claim, held, leave=leave)
        if not deletes and not adds:
            return 0
        try:
            await send_update(server, claim, key, deletes, adds)
        except EdgeError as e:
            error = e
            continue
        log.info("edge %s zone %s: removed %s, added %s", server, claim.zone,
                 [f"{r.name} {r.rtype} {r.value}" for r in deletes] or "nothing",
                 [f"{r.name} {r.rtype} {r.value}" for r in adds] or "nothing")
        return len(deletes) + len(adds)
    assert error is not None
    raise error


@dataclass
class ZoneStatus:
    ok: bool = False
    rcode: str = ""
    error: str = ""
    last_sync: float | None = None
    changed_total: int = 0


@dataclass
class EdgePublisher:
    """Keeps our claims at the edge: on start, every `interval` seconds (drift), and when woken (change).

    A failing edge is retried with exponential backoff; DNS serving never waits on it.
    """

    servers: list[Server]
    key: dns.tsig.Key | None
    claims: Callable[[], list[Claim]]
    interval: float = 30.0
    status: dict[str, ZoneStatus] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Thread-safe: something we publish changed, sync now rather than at the next interval."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def sync_once(self) -> bool:
        all_ok = True
        for claim in self.claims():
            st = self.status.setdefault(claim.zone, ZoneStatus())
            try:
                changed = await sync(self.servers, claim, self.key)
            except EdgeError as e:
                if st.ok or st.error != str(e):
                    log.warning("edge update for %s failed: %s (rcode %s); retrying with backoff",
                                claim.zone, e, e.rcode)
                st.ok, st.rcode, st.error = False, e.rcode, str(e)
                all_ok = False
                metrics.EDGE_SYNCS.labels(claim.zone, e.rcode).inc()
                metrics.EDGE_IN_SYNC.labels(claim.zone).set(0)
                continue
            st.ok, st.rcode, st.error, st.last_sync = True, "NOERROR", "", time.time()
            st.changed_total += changed
            metrics.EDGE_SYNCS.labels(claim.zone, "NOERROR").inc()
            metrics.EDGE_CHANGES.labels(claim.zone).inc(changed)
            metrics.EDGE_IN_SYNC.labels(claim.zone).set(1)
        return all_ok

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            self._wake.clear()
            ok = await self.sync_once()
            delay = self.interval if ok else backoff
            backoff = 1.0 if ok else min(backoff * 2, MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def readiness(self) -> str:
        """The /readyz detail line: per edge zone, in sync or the edge's last rcode. Never gates readiness."""
        if not self.status:
            return "not synced yet"
        return "; ".join(f"{zone} in sync" if st.ok else f"{zone} failing, rcode {st.rcode}: {st.error}"
                         for zone, st in sorted(self.status.items()))
