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
from collections.abc import Awaitable, Callable, Iterable, Sequence
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
from backend.dnsclient import QueryError, Server, ask, rdata_texts

log = logging.getLogger(__name__)

TIMEOUT = 3.0
MAX_BACKOFF = 60.0
DEBOUNCE = 0.25  # seconds a wake-up waits for more changes before the pass

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


async def send_update(server: Server, zone: str, key: dns.tsig.Key | None, deletes: list[Record],
                      adds: list[tuple[Record, int]], absent: Sequence[str] = ()) -> None:
    """One atomic update: delete specific rdata, add rdata (with TTL); `absent` names must hold no TXT
    (RFC 2136 prerequisite), so two clusters cannot both claim a fresh name."""
    update = dns.update.UpdateMessage(zone, keyring=key)
    for name in absent:
        update.absent(dns.name.from_text(name), "TXT")
    for r in deletes:
        update.delete(dns.name.from_text(r.name), r.rtype, r.value)
    for r, ttl in adds:
        update.add(dns.name.from_text(r.name), ttl, r.rtype, r.value)
    try:
        response = await dns.asyncquery.tcp(update, server.host, port=server.port, timeout=TIMEOUT)
    except dns.tsig.PeerError as e:
        raise EdgeError(server, "NOTAUTH/" + _TSIG_ERRORS.get(type(e), type(e).__name__), str(e)) from e
    except (dns.exception.DNSException, OSError, EOFError) as e:
        raise EdgeError(server, "UNREACHABLE", f"{type(e).__name__}: {e}") from e
    if response.rcode() != dns.rcode.NOERROR:
        raise EdgeError(server, dns.rcode.to_text(response.rcode()))
    log.info("edge %s zone %s: removed %s, added %s", server, zone,
             [f"{r.name} {r.rtype} {r.value}" for r in deletes] or "nothing",
             [f"{r.name} {r.rtype} {r.value}" for r, _ in adds] or "nothing")


Attempt = Callable[[Server], Awaitable[int]]


async def on_first_server(servers: list[Server], attempt: Attempt) -> int:
    """Run one reconcile against the first edge server that takes it; the last error if none does."""
    error: EdgeError | None = None
    for server in servers:
        try:
            return await attempt(server)
        except QueryError as e:
            error = EdgeError(server, "UNREACHABLE", str(e))
        except EdgeError as e:
            error = e
    raise error or EdgeError(Server("none"), "UNREACHABLE", "no edge DNS servers")


async def sync_claim(server: Server, claim: Claim, key: dns.tsig.Key | None, *, leave: bool = False) -> int:
    """Bring one edge zone in line with the claim (or remove ours); the number of rdata changed."""
    deletes, adds = changes(claim, await current(server, claim), leave=leave)
    if deletes or adds:
        await send_update(server, claim.zone, key, deletes, [(r, claim.ttl) for r in adds])
    return len(deletes) + len(adds)


async def sync(servers: list[Server], claim: Claim, key: dns.tsig.Key | None, *, leave: bool = False) -> int:
    return await on_first_server(servers, lambda server: sync_claim(server, claim, key, leave=leave))


def delegation_job(claim: Claim, key: dns.tsig.Key | None) -> Job:
    return Job("delegation", claim.zone, lambda: claim, lambda server, _w: sync_claim(server, claim, key))


def withdraw_job(claim: Claim, key: dns.tsig.Key | None) -> Job:
    """Our NS target and glue for zones we no longer serve, removed (and kept removed)."""
    return Job("withdraw", claim.zone, lambda: claim,
               lambda server, _w: sync_claim(server, claim, key, leave=True))


@dataclass
class Job:
    """One thing kept at the edge. `wanted()` runs on a worker thread; when what it returns equals the
    last success's, a wake-up (not the periodic check) skips the job, so a busy Store does not mean a
    busy edge. `changed(keys)` is handed the Store's changed keys (on the writer's thread: it must be
    cheap), so `wanted()` can redo only those. `forget()` runs before each periodic check: drop any
    kept view of the edge, so drift is read afresh."""

    kind: str  # delegation | names
    zone: str  # the edge zone
    wanted: Callable[[], object]
    apply: Callable[[Server, object], Awaitable[int]]
    forget: Callable[[], None] = lambda: None
    changed: Callable[[frozenset[str]], None] = lambda _keys: None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.zone}"


@dataclass
class JobStatus:
    ok: bool = False
    rcode: str = ""
    error: str = ""
    last_sync: float | None = None
    changed_total: int = 0
    wanted: object = None


def _wanted(job: Job, last: object) -> tuple[object, bool]:
    """The job's wanted state and whether it equals `last` (the names job's compare in O(1))."""
    wanted = job.wanted()
    return wanted, wanted == last


@dataclass
class EdgePublisher:
    """Keeps our records at the edge: on start, every `interval` seconds (drift), and when woken (change).

    A failing edge is retried with exponential backoff; DNS serving never waits on it.
    """

    servers: list[Server]
    jobs: list[Job]
    interval: float = 30.0
    status: dict[str, JobStatus] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Thread-safe: something we publish may have changed, check now."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def changed(self, keys: frozenset[str]) -> None:
        """The Store key listener (any thread): the jobs take note of the keys, and a pass looks."""
        for job in self.jobs:
            job.changed(keys)
        self.wake()

    async def sync_once(self, force: bool = True) -> bool:
        all_ok = True
        for job in self.jobs:
            st = self.status.setdefault(job.label, JobStatus())
            wanted, same = await asyncio.to_thread(lambda j=job, s=st: _wanted(j, s.wanted))
            if not force and st.ok and same:
                continue
            if force:
                job.forget()
            try:
                changed = await on_first_server(self.servers, lambda s, w=wanted, j=job: j.apply(s, w))
            except EdgeError as e:
                if st.ok or st.error != str(e):
                    log.warning("edge update for %s failed: %s (rcode %s); retrying with backoff",
                                job.label, e, e.rcode)
                st.ok, st.rcode, st.error = False, e.rcode, str(e)
                all_ok = False
                metrics.EDGE_SYNCS.labels(job.zone, job.kind, e.rcode).inc()
                metrics.EDGE_IN_SYNC.labels(job.zone, job.kind).set(0)
                continue
            st.ok, st.rcode, st.error, st.last_sync, st.wanted = True, "NOERROR", "", time.time(), wanted
            st.changed_total += changed
            metrics.EDGE_SYNCS.labels(job.zone, job.kind, "NOERROR").inc()
            metrics.EDGE_CHANGES.labels(job.zone, job.kind).inc(changed)
            metrics.EDGE_IN_SYNC.labels(job.zone, job.kind).set(1)
        return all_ok

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        backoff = 1.0
        next_full = 0.0  # when the next forced (drift) check is due
        while True:
            self._wake.clear()
            force = time.monotonic() >= next_full
            if not await self.sync_once(force=force):
                next_full = 0.0  # after a failure, check everything again, but not before the backoff
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 1.0
            if force:
                next_full = time.monotonic() + self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_full - time.monotonic()))
            await asyncio.sleep(DEBOUNCE)  # a burst of Store changes is one pass, not one each

    def readiness(self) -> str:
        """The /readyz detail line: per job, in sync or the edge's last rcode. Never gates readiness."""
        if not self.jobs:
            return "nothing to publish (no GSLB zone or no --nameserver-address)"
        if not self.status:
            return "not synced yet"
        return "; ".join(f"{label} in sync" if st.ok else f"{label} failing, rcode {st.rcode}: {st.error}"
                         for label, st in sorted(self.status.items()))
