"""The hostnames a Gslb reads, resolved to A/AAAA records off the answer path and kept fresh: k8gb's
`k8gb.io/exposed-hostnames` (the names a Gslb exposes instead of its own addresses) and hostnames in
the load-balancer status or a Gateway's status.addresses (see README.md for why addresses, not a CNAME).

The resolver asks the edge DNS servers (edgeDNSServers, the servers k8gb resolves through; the host's
resolver when none are configured) for each hostname some Gslb reads, again when the answer's TTL runs
out (at least every dnsTtlSeconds, at most once a second), and hands changed addresses to the engine,
which re-evaluates only the Gslbs that read that name. A definite answer (addresses, NXDOMAIN or
NODATA) is used as it is; a server that does not answer keeps the last good addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable

import dns.exception
import dns.rcode
import dns.rdatatype

from backend.config import Settings
from backend.dnsclient import MAX_RECORDS, QueryError, Server, ask, parse_server
from backend.gslb.engine import GslbEngine

log = logging.getLogger(__name__)

TIMEOUT = 2.0
RETRY = 2.0  # after a failed resolution
IDLE = 60.0  # longest sleep with nothing due (a new hostname wakes the resolver at once)


class HostnameResolver:
    def __init__(self, engine: GslbEngine, settings: Settings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.servers = [parse_server(s) for s in settings.edge_dns_servers]
        self.max_ttl = max(1.0, float(settings.dns_ttl_seconds))
        self.clock = clock
        self._due: dict[str, float] = {}
        self._failing: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        engine.on_hostnames = self.wake

    def wake(self) -> None:
        """Thread-safe: a Gslb started reading a hostname we do not know yet."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            names = self.engine.hostnames()
            for gone in set(self._due) - set(names):
                del self._due[gone]
            for name in names:
                if self._due.get(name, 0.0) <= self.clock():
                    self._due[name] = self.clock() + await self._refresh(name)
            wait = min(self._due.values(), default=self.clock() + IDLE) - self.clock()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, wait))

    async def _refresh(self, name: str) -> float:
        """Resolve `name`, hand the result to the engine (on a worker thread: re-evaluating Gslbs must
        not run on the loop that answers DNS); the seconds until the next check."""
        try:
            addresses, ttl = await self.resolve(name)
        except QueryError as e:
            if name not in self._failing:
                log.warning("hostname %s: %s; keeping its last addresses", name, e)
                self._failing.add(name)
            return RETRY
        if name in self._failing:
            log.info("hostname %s resolves again: %s", name, ", ".join(addresses) or "no addresses")
            self._failing.discard(name)
        await asyncio.to_thread(self.engine.set_resolved, name, addresses)
        return min(max(ttl, 1.0), self.max_ttl)

    async def resolve(self, name: str) -> tuple[tuple[str, ...], float]:
        """(addresses, TTL) of `name`, A then AAAA, following CNAMEs; QueryError if nobody answers."""
        if not self.servers:
            return await self._system(name)
        errors: list[str] = []
        for server in self.servers:
            try:
                found: list[str] = []
                ttl = self.max_ttl
                for rtype in ("A", "AAAA"):
                    values, rr_ttl = await _ask(server, name, rtype)
                    found += values
                    ttl = min(ttl, rr_ttl)
                return tuple(dict.fromkeys(found)), ttl
            except QueryError as e:
                errors.append(str(e))
        raise QueryError("; ".join(errors))

    async def _system(self, name: str) -> tuple[tuple[str, ...], float]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
        except socket.gaierror as e:
            if e.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                return (), self.max_ttl
            raise QueryError(f"{name}: {e}") from e
        addresses = sorted({str(info[4][0]) for info in infos},
                           key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
        return tuple(addresses), self.max_ttl


async def _ask(server: Server, name: str, rtype: str) -> tuple[list[str], float]:
    response = await ask(server, name, rtype, timeout=TIMEOUT, recursion=True)
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise QueryError(f"{server}: {name} {rtype}: rcode {dns.rcode.to_text(rcode)}")
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as e:
        raise QueryError(f"{server}: {name} {rtype}: {e}") from e
    rrset = chain.answer
    if rrset is None:
        return [], float(chain.minimum_ttl)
    if rrset.rdtype != dns.rdatatype.from_text(rtype) or len(rrset) > MAX_RECORDS:
        raise QueryError(f"{server}: {name} {rtype}: unusable answer")
    return [rd.to_text() for rd in rrset], float(chain.minimum_ttl)
