"""Other clusters' healthy targets, learned over DNS the way k8gb does, but in well under a second.

Per peer and load-balanced zone: find the peer's CoreDNS by resolving its gslb-ns name at the edge,
then ask it every `peer_poll_seconds` for its localtargets index (`shards.py`): one small TXT with a
digest per shard of its hosts. Only shards whose digest moved are fetched, one query each. The index,
unlike the SOA serial, stands still when the peer's other names change or when it learns our own
change, so a change costs one small refetch, not an echo, and an idle peer costs one query a second.
A peer without an index (k8gb) is polled for its SOA serial and asked `localtargets-<host>` A and
AAAA for every local host when the serial or our host set moved, and at least every 30 s as k8gb
reconciles: k8gb's serial moves only once an hour, whatever changes.
When our own healthy targets change we NOTIFY the peers, so they look at once instead of at their
next poll. A peer that stops answering keeps its last targets for `peer_grace_seconds`: one lost
packet never moves an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.opcode

from backend import metrics
from backend.config import GslbZone, Settings
from backend.dnsclient import QueryError, Server, ask, parse_server, rdata_texts, txt_strings
from backend.model import (
    GSLB_KEYS,
    LOCALTARGETS,
    PUBLISHED_KEY,
    Endpoint,
    Store,
    Strategy,
    Target,
    Verdicts,
    in_zone,
    peer_key,
)
from backend.peers import shards
from backend.peers.persist import PeerBook

log = logging.getLogger(__name__)

RESOLVE_EVERY = 30.0  # re-resolve a healthy peer's address this often (its glue may move)
RESOLVE_RETRY = 5.0  # ... and a failing peer's at most this often
SOA_REFETCH = 30.0  # refetch a peer without an index this often even if its serial stands still
FETCH_CONCURRENCY = 16
NOTIFY_RECHECKS = (0.02, 0.04, 0.08, 0.16, 0.32)  # delays between rechecks after a NOTIFY
MIN_GAP = 0.02  # at most 50 polls a second per peer and zone, however many NOTIFYs arrive
NOTIFY_GAP = 0.1  # we send at most 10 NOTIFY rounds a second per zone
RTYPES = ("A", "AAAA")

Snapshot = Mapping[str, tuple[Endpoint, ...]]


def _count(peer: str, kind: str, result: str) -> None:
    metrics.PEER_QUERIES.labels(peer, kind, result).inc()


def _from_shards(by_shard: Mapping[int, Mapping[str, tuple[str, ...]]], hosts: tuple[str, ...]
                 ) -> dict[tuple[str, str], tuple[str, ...]]:
    """Our hosts' targets at the peer, as A and AAAA, from its shards."""
    wanted = set(hosts)
    out: dict[tuple[str, str], tuple[str, ...]] = {}
    for shard in by_shard.values():
        for host, values in shard.items():
            if host in wanted:
                for rtype in RTYPES:
                    family = [v for v in values if (":" in v) == (rtype == "AAAA")]
                    if family:
                        out[(host, rtype)] = tuple(family)
    return out


HostPolicy = tuple[int | None, Strategy]  # the TTL and strategy our Gslb gives a host
LocalTargets = frozenset[tuple[str, tuple[Target, ...]]]  # a localtargets name's (type, targets)


@dataclass(frozen=True, slots=True)
class _Share:
    """What one `gslb/` Store key gives the exchange, parsed once per change of that key."""

    eps: tuple[Endpoint, ...]
    policy: dict[str, HostPolicy]  # our GSLB hosts (names published with a strategy) and their policy
    targets: dict[str, list[tuple[str, tuple[Target, ...]]]]  # our `localtargets-` names


def _share(eps: tuple[Endpoint, ...], zones: list[str]) -> _Share:
    ours = [ep for ep in eps if any(in_zone(ep.name, z) for z in zones)]
    targets: dict[str, list[tuple[str, tuple[Target, ...]]]] = {}
    for ep in ours:
        if ep.name.startswith(LOCALTARGETS):
            targets.setdefault(ep.name, []).append((ep.rtype, ep.targets))
    return _Share(eps, {ep.name: (ep.ttl, ep.strategy) for ep in ours if ep.strategy is not None
                        and ep.source is not None and ep.source.kind == "Gslb"}, targets)


@dataclass
class PeerZone:
    """What we know of one peer in one load-balanced zone."""

    geotag: str
    zone: GslbZone
    addresses: tuple[Server, ...] = ()
    resolved_at: float = -math.inf
    version: str | None = None  # "index <hash>" or "soa <serial>": what the last fetch saw
    shards: dict[int, dict[str, tuple[str, ...]]] = field(default_factory=dict)  # from the index path
    shard_digests: tuple[str, ...] = ()  # digest of each shard as fetched ("" = not fetched)
    hosts: tuple[str, ...] | None = None  # the local hosts the last fetch asked for
    fetched_at: float = -math.inf  # when the SOA path last fetched localtargets
    targets: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    last_ok: float | None = None
    error: str = ""  # why the last poll failed; "" while the peer answers
    stale: bool = False  # grace over: targets are kept only while this cluster's probes of them pass
    recheck: int = 0  # quick rechecks left after a NOTIFY
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class PeerExchange:
    """Runs the polls, publishes `peer/<geotag>` into the Store, NOTIFYs peers on local change."""

    def __init__(self, settings: Settings, store: Store, *,
                 clock: Callable[[], float] = time.monotonic, book: PeerBook | None = None,
                 may_write: Callable[[], bool] = lambda: True, prober: Verdicts | None = None) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.prober = prober
        self.book = book  # last known peer addresses in the cluster, for when the edge is away
        self.may_write = may_write  # False until our first full sync: nothing unsynced writes
        self.edge = [parse_server(s) for s in settings.edge_dns_servers]
        self.timeout = max(0.2, min(1.0, settings.peer_poll_seconds / 2))
        tags = dict.fromkeys(t for t in settings.ext_gslb_clusters_geotags if t != settings.cluster_geotag)
        self.peers = {tag: [PeerZone(tag, z) for z in settings.gslb_zones] for tag in tags}
        self._hosts: dict[str, tuple[str, ...]] = {}  # zone -> our GSLB hosts there, sorted
        self._policy: dict[str, HostPolicy] = {}
        # the incremental view of our `gslb/` Store keys (see _refresh_local)
        self._shares: dict[str, _Share] = {}
        self._policy_keys: dict[str, set[str]] = {}  # host -> the keys giving it a policy
        self._target_keys: dict[str, set[str]] = {}  # localtargets name -> the keys publishing it
        self._targets: dict[str, LocalTargets] = {}
        self._publication = {gz.dns_zone: shards.Publication(gz.dns_zone, settings.dns_ttl_seconds)
                       for gz in settings.gslb_zones}
        self._indexed = False
        self._dirty: set[str] = set()  # gslb/ keys changed since the last refresh
        self._dirty_lock = threading.Lock()
        store.subscribe_keys(self.on_store_keys)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._local_changed = asyncio.Event()
        self._notifying: dict[GslbZone, bool] = {}  # zone -> another NOTIFY round is wanted
        self._tasks: set[asyncio.Task[None]] = set()  # the loop holds tasks weakly
        self._started: float | None = None
        self._polls: dict[tuple[str, GslbZone], asyncio.Task[None]] = {}  # (geotag, zone) -> its poll loop

    # --- inputs -------------------------------------------------------------------------------

    def on_store_keys(self, keys: frozenset[str]) -> None:
        """Store listener (any thread): our hosts or health may have changed. Our own writes
        (index, peers' records) are not `gslb/` keys and do not wake us."""
        ours = [k for k in keys if k.startswith(GSLB_KEYS)]
        if not ours:
            return
        with self._dirty_lock:
            self._dirty.update(ours)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._local_changed.set)

    def on_notify(self, zone: str, source: str | None = None) -> None:
        """A peer NOTIFYed us for `zone` (any thread): check every peer of that zone now.

        CoreDNS's grpc plugin does not pass the client address on, so `source` is only logged.
        """
        zone = zone.rstrip(".").lower()
        log.debug("NOTIFY for %s from %s", zone, source or "?")
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake_zone, zone, True)

    def _wake_zone(self, zone: str, notified: bool = False) -> None:
        for zones in self.peers.values():
            for pz in zones:
                if pz.zone.dns_zone == zone:
                    if notified:
                        pz.recheck = len(NOTIFY_RECHECKS)
                    pz.wake.set()

    # --- main loop ----------------------------------------------------------------------------

    def _on_verdicts(self, hosts: frozenset[str]) -> None:
        """Probe verdicts flipped (prober thread): republish the peers holding those hosts."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._republish, hosts)

    def _republish(self, hosts: frozenset[str]) -> None:
        for geotag, zones in self.peers.items():
            if any(host in hosts for pz in zones for host, _ in pz.targets):
                self._publish(geotag)

    def settled(self) -> bool:
        """Every peer answered once, or has been failing for the grace since we started: until then
        an empty `peer/<geotag>` is our ignorance, not the peer's state (the Gslb status waits)."""
        if self._started is None:
            return False
        waited = self.clock() - self._started >= self.settings.peer_grace_seconds
        return all(pz.last_ok is not None or waited for zones in self.peers.values() for pz in zones)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._started = self.clock()
        self._loop_thread = threading.get_ident()
        if self.prober is not None:
            self.prober.subscribe(self._on_verdicts)
        self._refresh_local(notify=False)
        for zones in self.peers.values():
            for pz in zones:
                self._start_poll(pz)
        try:
            await self._watch_local()
        finally:
            for task in self._polls.values():
                task.cancel()

    def _start_poll(self, pz: PeerZone) -> None:
        self._polls[(pz.geotag, pz.zone)] = asyncio.ensure_future(self._poll_loop(pz))

    def reconfigure(self, settings: Settings) -> None:
        """Other GSLB zones (ZoneDelegations), from any thread: poll every peer in the new zones, stop
        polling (and drop the targets of) the zones that went."""
        if self._loop is None:
            self._set_zones(settings)
        else:
            self._loop.call_soon_threadsafe(self._set_zones, settings)

    def _set_zones(self, settings: Settings) -> None:
        self.settings = settings
        for tag, zones in self.peers.items():
            have = {pz.zone: pz for pz in zones}
            self.peers[tag] = [have.get(z) or PeerZone(tag, z) for z in settings.gslb_zones]
            for pz in self.peers[tag]:
                if self._loop is not None and (tag, pz.zone) not in self._polls:
                    self._start_poll(pz)
            for zone in have.keys() - set(settings.gslb_zones):
                task = self._polls.pop((tag, zone), None)
                if task is not None:
                    task.cancel()
            self._publish(tag)
        self._local_changed.set()

    def addresses(self, zone: GslbZone, geotag: str) -> list[str]:
        """The peer's nameserver addresses for `zone` as last resolved at the edge (any thread)."""
        return [s.host for pz in self.peers.get(geotag, ()) if pz.zone == zone for s in pz.addresses]

    async def _watch_local(self) -> None:
        """Refreshes run on a worker thread: a burst (a namespace of Gslbs deleted) is 10,000 keys,
        too long to hold the answer loop for."""
        while True:
            await self._local_changed.wait()
            self._local_changed.clear()
            await asyncio.to_thread(self._refresh_local, notify=True)

    def _on_loop(self, fn: Callable[..., None], *args: object) -> None:
        """Call `fn` on the event loop (asyncio objects are not thread-safe), now if already on it."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    def _refresh_local(self, *, notify: bool) -> None:
        """Track our hosts and localtargets; publish their index; NOTIFY peers when they change.

        Only the `gslb/` keys whose Endpoints changed are looked at, and only their hosts redone.
        """
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        if self._indexed and not dirty:
            return
        # after the first time, only the changed keys' Endpoints: a copy of the whole Store per change
        # would hold the GIL (and so the answer loop) for a time that grows with the objects
        _, by_key = self.store.snapshot(dirty if self._indexed else None)
        zones = [gz.dns_zone for gz in self.settings.gslb_zones]
        shares = self._shares
        if not self._indexed:  # the first time: every key we do not hold yet
            dirty = {k for k in by_key if k.startswith(GSLB_KEYS)} | shares.keys()
        changed = [k for k in dirty
                   if (k in shares) != (k in by_key) or (k in shares and shares[k].eps is not by_key[k])]
        hosts: set[str] = set()  # GSLB hosts and localtargets names the changed keys touch
        names: set[str] = set()
        for key in changed:
            old = shares.pop(key, None)
            new = _share(by_key[key], zones) if key in by_key else None
            for share, add in ((old, False), (new, True)):
                for touched, index, found in ((hosts, self._policy_keys, share.policy if share else ()),
                                              (names, self._target_keys, share.targets if share else ())):
                    for name in found:
                        touched.add(name)
                        keys = index.setdefault(name, set())
                        keys.add(key) if add else keys.discard(key)
            if new is not None:
                shares[key] = new
        policy_moved = hosts_moved = False
        for host in hosts:
            keys = sorted(self._policy_keys.get(host, ()))
            if not keys:
                self._policy_keys.pop(host, None)
            policy = shares[keys[-1]].policy[host] if keys else None  # the last key wins, as in a relist
            if policy == self._policy.get(host):
                continue
            policy_moved = True
            hosts_moved |= policy is None or host not in self._policy
            if policy is None:
                del self._policy[host]
            else:
                self._policy[host] = policy
        for gz in self.settings.gslb_zones:
            if hosts_moved or gz.dns_zone not in self._hosts:
                zone_hosts = tuple(sorted(h for h in self._policy if in_zone(h, gz.dns_zone)))
                if zone_hosts != self._hosts.get(gz.dns_zone):
                    self._hosts[gz.dns_zone] = zone_hosts
                    self._on_loop(self._wake_zone, gz.dns_zone)
        moved_zones: set[GslbZone] = set()
        for name in names:
            keys = self._target_keys.get(name, set())
            if not keys:
                self._target_keys.pop(name, None)
            targets: LocalTargets = frozenset(t for k in keys for t in shares[k].targets[name])
            if targets == self._targets.get(name, frozenset()):
                continue
            if targets:
                self._targets[name] = targets
            else:
                del self._targets[name]
            for gz in self.settings.gslb_zones:
                if in_zone(name, gz.dns_zone):
                    moved_zones.add(gz)
                    self._publication[gz.dns_zone].set(name.removeprefix(LOCALTARGETS),
                                                 [t.value for _, ts in targets for t in ts])
        if notify:
            for gz in moved_zones:
                self._on_loop(self._notify_soon, gz)
        if policy_moved:
            for geotag in self.peers:
                self._publish(geotag)
        if moved_zones or not self._indexed:
            self._indexed = True
            self.store.replace(PUBLISHED_KEY, [ep for gz in self.settings.gslb_zones
                                    for ep in self._publication[gz.dns_zone].endpoints()])

    def _notify_soon(self, gz: GslbZone) -> None:
        """NOTIFY at once, then at most every NOTIFY_GAP while changes keep coming (a Deployment
        backing hundreds of hosts flips them one by one: one NOTIFY round, not hundreds)."""
        if gz in self._notifying:
            self._notifying[gz] = True
            return
        self._notifying[gz] = False
        task = asyncio.ensure_future(self._notify_rounds(gz))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._notifying.pop(gz, None))

    async def _notify_rounds(self, gz: GslbZone) -> None:
        while True:
            await self._notify_peers(gz)
            await asyncio.sleep(NOTIFY_GAP)
            if not self._notifying.get(gz):
                return
            self._notifying[gz] = False

    async def _poll_loop(self, pz: PeerZone) -> None:
        """Poll every peer_poll_seconds. After a NOTIFY, recheck soon while the version stands still:
        the sender may NOTIFY before its recompiled zone (and new index) is being served.
        MIN_GAP between polls bounds what a flood of NOTIFYs (anyone can send one) makes us send."""
        while True:
            pz.wake.clear()
            try:
                moved = await self.poll(pz)
            except Exception:  # a bug must not end this peer's polling for good
                log.exception("polling peer %s for %s failed", pz.geotag, pz.zone.dns_zone)
                moved = False
            await asyncio.sleep(MIN_GAP)
            delay = self.settings.peer_poll_seconds
            if moved:
                pz.recheck = 0
            elif pz.recheck:
                delay = min(delay, NOTIFY_RECHECKS[len(NOTIFY_RECHECKS) - pz.recheck])
                pz.recheck -= 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pz.wake.wait(), delay)

    async def poll(self, pz: PeerZone) -> bool:
        """One round for one peer zone; True if it refetched. Failures only count against the grace."""
        now = self.clock()
        hosts = self._hosts.get(pz.zone.dns_zone, ())
        moved = False
        try:
            await self._resolve(pz, now)
            server, index = await self._index(pz)
            if index is not None:
                moved = await self._fetch_shards(server, pz, index)
                if moved or hosts != pz.hosts:
                    pz.targets = _from_shards(pz.shards, hosts)
                    pz.hosts = hosts
            else:
                version = await self._soa(server, pz)
                stale = now - pz.fetched_at >= SOA_REFETCH
                if version != pz.version or hosts != pz.hosts or stale:
                    pz.targets = await self._fetch(server, pz, hosts)
                    pz.version, pz.hosts, pz.fetched_at = version, hosts, now
                    moved = True
            pz.last_ok, pz.stale = now, False
            if pz.error:
                log.info("peer %s answers again for %s", pz.geotag, pz.zone.dns_zone)
                pz.error = ""
        except QueryError as e:
            if not pz.error:
                log.warning("peer %s unreachable for %s: %s; keeping its %d records for %gs", pz.geotag,
                            pz.zone.dns_zone, e, len(pz.targets), self.settings.peer_grace_seconds)
            pz.error = str(e)
            expired = pz.last_ok is None or now - pz.last_ok >= self.settings.peer_grace_seconds
            if expired and (pz.targets or pz.version is not None or pz.shard_digests):
                # Probed targets outlive the grace while this cluster's probes of them pass (the
                # peer's application still serves); the rest drop. Everything is refetched on return.
                if pz.targets and not pz.stale:
                    log.warning("peer %s: grace over in %s, keeping only targets whose probes pass",
                                pz.geotag, pz.zone.dns_zone)
                pz.stale = self.prober is not None and any(self.prober.probed(h) for h, _ in pz.targets)
                if not pz.stale:
                    pz.targets = {}
                pz.version, pz.hosts = None, None
                pz.shards, pz.shard_digests = {}, ()
        self._publish(pz.geotag)
        return moved

    def _publish(self, geotag: str) -> None:
        """The peer's targets under `peer/<geotag>`, with our own Gslb's TTL and strategy for the host:
        the zone merges per (name, type), and a peer's AAAA for a host we serve over IPv4 only must
        still be answered by that strategy and TTL, not as a plain record."""
        zones = self.peers[geotag]
        if self.prober is not None:  # the raw targets, stale ones included: the prober probes them all
            raw: dict[str, list[str]] = {}
            for pz in zones:
                for (host, _rtype), values in pz.targets.items():
                    raw.setdefault(host, []).extend(values)
            self.prober.set_peer(geotag, raw)
        endpoints = []
        for pz in zones:
            for (host, rtype), values in sorted(pz.targets.items()):
                ttl, strategy = self._policy.get(host, (None, None))
                served = [v for v in values if self._serve(pz, host, v)]
                if served:
                    endpoints.append(Endpoint(host, rtype, tuple(Target(v, geotag) for v in served), ttl=ttl,
                                              strategy=strategy))
        self.store.replace(peer_key(geotag), endpoints)
        metrics.PEER_RECORDS.labels(geotag).set(len(endpoints))
        metrics.PEER_UP.labels(geotag).set(int(all(not pz.error and pz.last_ok is not None for pz in zones)))

    def _serve(self, pz: PeerZone, host: str, address: str) -> bool:
        """The verdict on one of the peer's targets: as the peer reports it unless this cluster's probes
        fail it; past the grace (stale) only while probes of it pass."""
        verdict = None if self.prober is None else self.prober.verdict(host, address)
        return verdict is True if pz.stale else verdict is not False

    # --- DNS ----------------------------------------------------------------------------------

    async def _resolve(self, pz: PeerZone, now: float) -> None:
        """The peer's CoreDNS addresses from its glue at the edge; old ones stay if the edge is away."""
        every = RESOLVE_RETRY if pz.error else RESOLVE_EVERY
        if pz.addresses and now - pz.resolved_at < every:
            return
        name = pz.zone.ns_name(pz.geotag)
        errors: list[str] = []
        for edge in self.edge:
            try:
                found: list[str] = []
                for rtype in RTYPES:
                    response = await ask(edge, name, rtype, timeout=self.timeout, recursion=True)
                    found += rdata_texts(response, name, rtype, authoritative=False)
                _count(pz.geotag, "resolve", "ok")
            except QueryError as e:
                _count(pz.geotag, "resolve", "error")
                errors.append(str(e))
                continue
            if found:
                pz.addresses = tuple(Server(a, self.settings.peer_dns_port) for a in found)
                pz.resolved_at = now
                if self.book is not None and self.may_write():
                    self._background(self._remember(pz, found))
                return
            errors.append(f"{edge}: no A/AAAA for {name}")
        if pz.addresses:
            log.warning("keeping %s's old address: %s", pz.geotag, "; ".join(errors) or "no edge DNS servers")
            pz.resolved_at = now
            return
        remembered = await self._remembered(pz)
        if remembered:
            log.warning("edge unreachable (%s): using %s's last known address %s from the cluster",
                        "; ".join(errors), pz.geotag, ", ".join(remembered))
            pz.addresses = tuple(Server(a, self.settings.peer_dns_port) for a in remembered)
            pz.resolved_at = now
            return
        raise QueryError("; ".join(errors) or f"no edge DNS servers to resolve {name}")

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _remember(self, pz: PeerZone, found: list[str]) -> None:
        assert self.book is not None
        try:
            await asyncio.to_thread(self.book.remember, pz.geotag, pz.zone.dns_zone, sorted(found))
        except Exception as e:  # the API away: the next resolve tries again
            log.info("could not remember %s's address in the cluster: %s", pz.geotag, e)

    async def _remembered(self, pz: PeerZone) -> list[str]:
        if self.book is None:
            return []
        if self.book.known is None:
            try:
                await asyncio.to_thread(self.book.load)
            except Exception as e:
                log.info("no last known peer addresses: the API is away too (%s)", e)
                return []
        return list((self.book.known or {}).get(pz.geotag, {}).get(pz.zone.dns_zone, ()))

    async def _index(self, pz: PeerZone) -> tuple[Server, tuple[str, ...] | None]:
        """The first address that answers, and the peer's shard digests (None: it has no index)."""
        name = shards.index_name(pz.zone.dns_zone)
        errors: list[str] = []
        for server in pz.addresses:
            try:
                texts = txt_strings(await ask(server, name, "TXT", timeout=self.timeout), name)
                if len(texts) > 1:
                    raise QueryError(f"{server}: {len(texts)} TXT records at {name}")
                index = shards.parse_index(texts[0]) if texts else None
            except (QueryError, ValueError) as e:
                _count(pz.geotag, "index", "error")
                errors.append(f"{server}: {e}" if isinstance(e, ValueError) else str(e))
                continue
            _count(pz.geotag, "index", "ok")
            return server, index
        raise QueryError("; ".join(errors))

    async def _fetch_shards(self, server: Server, pz: PeerZone, index: tuple[str, ...]) -> bool:
        """Fetch the shards whose digest moved; True if any did. Each shard's digest is recomputed
        from what arrived, so a shard caught mid-change is fetched again at the next poll."""
        zone, n = pz.zone.dns_zone, len(index)
        if len(pz.shard_digests) != n:  # first contact, or the peer re-sharded
            pz.shards, pz.shard_digests = {}, ("",) * n
        changed = [i for i in range(n) if pz.shard_digests[i] != index[i]]
        if not changed:
            return False
        limit = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(i: int) -> dict[str, tuple[str, ...]]:
            name = shards.shard_name(zone, i)
            async with limit:
                response = await ask(server, name, "TXT", timeout=self.timeout)
            texts = txt_strings(response, name, max_records=shards.MAX_SHARD_LINES)
            try:
                return shards.parse_shard(texts, zone, n, i)
            except ValueError as e:
                raise QueryError(f"{server}: {name}: {e}") from e

        try:
            with metrics.PEER_FETCH.labels(pz.geotag).time():
                fetched = await asyncio.gather(*(one(i) for i in changed))
        except QueryError:
            _count(pz.geotag, "shards", "error")
            raise
        _count(pz.geotag, "shards", "ok")
        digests = list(pz.shard_digests)
        for i, shard in zip(changed, fetched, strict=True):
            pz.shards[i] = shard
            digests[i] = shards.digest(shard)
        pz.shard_digests = tuple(digests)
        pz.version = "index " + shards.digest({str(i): (d,) for i, d in enumerate(index)})
        return True

    async def _soa(self, server: Server, pz: PeerZone) -> str:
        zone = pz.zone.dns_zone
        try:
            soa = rdata_texts(await ask(server, zone, "SOA", timeout=self.timeout), zone, "SOA",
                              authoritative=True)
            if len(soa) != 1:
                raise QueryError(f"{server}: {len(soa)} SOA records for {zone}")
        except QueryError:
            _count(pz.geotag, "soa", "error")
            raise
        _count(pz.geotag, "soa", "ok")
        return "soa " + soa[0].split()[2]

    async def _fetch(self, server: Server, pz: PeerZone, hosts: tuple[str, ...]
                     ) -> dict[tuple[str, str], tuple[str, ...]]:
        """Every local host's localtargets at the peer, all or nothing."""
        limit = asyncio.Semaphore(FETCH_CONCURRENCY)

        async def one(host: str, rtype: str) -> tuple[tuple[str, str], tuple[str, ...]]:
            name = LOCALTARGETS + host
            async with limit:
                response = await ask(server, name, rtype, timeout=self.timeout)
            return (host, rtype), rdata_texts(response, name, rtype, authoritative=True)

        try:
            with metrics.PEER_FETCH.labels(pz.geotag).time():
                results = await asyncio.gather(*(one(h, t) for h in hosts for t in RTYPES))
        except QueryError:
            _count(pz.geotag, "localtargets", "error")
            raise
        _count(pz.geotag, "localtargets", "ok")
        return {key: values for key, values in results if values}

    async def _notify_peers(self, gz: GslbZone) -> None:
        servers = [s for zones in self.peers.values() for pz in zones if pz.zone == gz for s in pz.addresses]
        await asyncio.gather(*(self._notify(s, gz.dns_zone) for s in servers))

    async def _notify(self, server: Server, zone: str) -> None:
        """RFC 1996 NOTIFY: a hint only (the peer checks our version), so a few quick tries suffice."""
        message = dns.message.make_query(zone, "SOA")
        message.flags = dns.flags.AA  # the opcode lives in the flags word: set it after
        message.set_opcode(dns.opcode.NOTIFY)
        for _ in range(3):
            try:
                await dns.asyncquery.udp(message, server.host, port=server.port, timeout=self.timeout)
                _count(str(server), "notify", "ok")
                return
            except dns.exception.Timeout:
                continue
            except Exception as e:
                log.debug("NOTIFY to %s for %s: %s", server, zone, e)
                break
        _count(str(server), "notify", "error")

    def state(self) -> dict[str, dict[str, dict[str, object]]]:
        """Each peer's state per zone (geotag -> zone -> fields), for `explain` and /readyz."""
        now = self.clock()

        def one(pz: PeerZone) -> dict[str, object]:
            st: dict[str, object] = {"ok": not pz.error and pz.last_ok is not None,
                                     "addresses": [str(s) for s in pz.addresses],
                                     "version": pz.version, "records": len(pz.targets)}
            if pz.error:
                st["error"] = pz.error
                st["last_ok_seconds_ago"] = None if pz.last_ok is None else round(now - pz.last_ok, 1)
            return st

        return {tag: {pz.zone.dns_zone: one(pz) for pz in zones} for tag, zones in self.peers.items()}

    def readiness(self) -> str | None:
        """The /readyz detail line. A peer's absence never makes us unready: it only shows here."""
        parts = []
        for tag, zones in self.state().items():
            for zone, st in zones.items():
                if st.get("error"):
                    ago = st["last_ok_seconds_ago"]
                    age = "never answered" if ago is None else f"last answer {ago:.0f}s ago"
                    kept = f"{st['records']} records kept"
                    parts.append(f"{tag} {zone} unreachable ({age}, {kept}): {st['error']}")
                elif not st["ok"]:
                    parts.append(f"{tag} {zone} not polled yet")
                else:
                    parts.append(f"{tag} {zone} ok, {st['version']}, {st['records']} records")
        return "; ".join(parts) or None
