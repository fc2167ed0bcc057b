"""The one record type every producer emits and the zone layer consumes, and the store that holds them.

Like ExternalDNS's Endpoint: sources (Kubernetes objects), the GSLB engine and peers only ever produce
`Endpoint`s; nothing downstream reads Kubernetes objects. Each producer owns a key in the `Store` and
replaces its whole list at once, so a deleted object is one `Store.replace(key, ())`.

Store keys, and who writes them (one writer per prefix; keys are made only by the functions below):

    service/<ns>/<name>, ingress/..., dnsendpoint/...   sources/producer.py: one object's records
    httproute/<ns>/<name>, grpcroute/..., tlsroute/...  sources/gateway_producer.py: one route's records
    gslb/<ns>/<name>[@k8gb.io]                          gslb/engine.py: this cluster's answer for a Gslb
    peer/<geotag>                                       peers/exchange.py: that other cluster's targets
    published/localtargets                              peers/exchange.py: ours, served to the peers
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

Obj = dict[str, Any]  # a Kubernetes object as the API's JSON: what informers hold and sources read
LOCALTARGETS = "localtargets-"  # name prefix of this cluster's own targets of a GSLB host (k8gb's)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The Kubernetes object a record came from: for Events, conflicts and `explain`."""

    kind: str
    namespace: str
    name: str
    uid: str = ""
    api_version: str = "v1"

    def __str__(self) -> str:
        scope = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()}/{scope}{self.name}"


def object_ref(obj: Mapping[str, Any], kind: str = "", api_version: str = "") -> ObjectRef:
    """The ObjectRef of an object as the API returns it. Items of a list carry no kind (nor
    apiVersion): a caller that knows them (from the informer's Resource) passes them."""
    meta = obj.get("metadata") or {}
    return ObjectRef(
        kind=kind or str(obj.get("kind") or ""),
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        api_version=api_version or str(obj.get("apiVersion") or "v1"),
    )


def key_of(obj: Mapping[str, Any]) -> str:
    """"namespace/name", or "name" for cluster-scoped objects (client-go's MetaNamespaceKeyFunc)."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name', '')}" if ns else meta.get("name", "")


GSLB_KEYS = "gslb/"
PEER_KEYS = "peer/"
PUBLISHED_KEY = "published/localtargets"  # this cluster's localtargets index and shards, for peers
LEGACY_GSLB_GROUP = "k8gb.absa.oss"  # k8gb's first API group; its Gslbs keep the plain key


def source_key(kind: str, obj: Mapping[str, Any]) -> str:
    """<kind>/<ns>/<name>: the records a source derived from one watched object (kind lowercased)."""
    return f"{kind.lower()}/{key_of(obj)}"


def source_prefix(kind: str) -> str:
    """The prefix of every `source_key` of `kind`, for readers that pick sources by kind (the edge)."""
    return f"{kind.lower()}/"


def gslb_key(obj: Mapping[str, Any]) -> str:
    """gslb/<ns>/<name>: this cluster's records for one Gslb; a Gslb of the newer k8gb.io group with the
    same name gets its own key (`@k8gb.io`)."""
    group = str(obj.get("apiVersion") or "").split("/")[0]
    return f"{GSLB_KEYS}{key_of(obj)}" + ("" if group == LEGACY_GSLB_GROUP else f"@{group}")


def peer_key(geotag: str) -> str:
    """peer/<geotag>: the healthy targets the peer exchange learned from that other cluster."""
    return f"{PEER_KEYS}{geotag}"


@dataclass(frozen=True, slots=True)
class Target:
    """One rdata value in presentation format ("10.2.1.167", "host.example.", "10 5 80 srv.example.").

    `geotag` is the cluster a GSLB target lives in; plain ExternalDNS records leave it empty.
    """

    value: str
    geotag: str = ""


@dataclass(frozen=True, slots=True)
class Strategy:
    """k8gb's spec.strategy, carried on GSLB names so the answer is picked per query."""

    type: str  # "roundRobin" | "failover" | "geoip"
    primary_geotag: str = ""
    weights: tuple[tuple[str, int], ...] = ()  # (geotag, weight), roundRobin only


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A name, a record type and its targets.

    `name` is a lowercase FQDN without the trailing dot (it may start with "*." for a wildcard).
    Empty `targets` means the name exists but has no data of this type (a GSLB host with nothing
    healthy): the zone answers NODATA instead of NXDOMAIN.
    """

    name: str
    rtype: str  # A AAAA CNAME TXT SRV MX NS
    targets: tuple[Target, ...]
    ttl: int | None = None  # None: the zone's default
    source: ObjectRef | None = None
    strategy: Strategy | None = None


def typed_address(value: str) -> tuple[str, str] | None:
    """("A" or "AAAA", its canonical text) for an IP address, else None. A strict dotted quad (no
    leading zeros, as ipaddress wants it) is already canonical: inet_pton checks it for a tenth of
    what ipaddress costs, which every LoadBalancer Service's address went through."""
    try:
        socket.inet_pton(socket.AF_INET, value)
        return "A", value
    except (OSError, ValueError):
        pass
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return ("AAAA" if ip.version == 6 else "A"), str(ip)


def address_type(address: str) -> str:
    """"A" or "AAAA" for an IP address; ValueError for anything else."""
    typed = typed_address(address)
    if typed is None:
        raise ValueError(f"{address!r} is not an IP address")
    return typed[0]


def normalize_name(name: str) -> str:
    """The form every Endpoint name takes: lowercase, no trailing dot, no surrounding space."""
    return name.strip().rstrip(".").lower()


def in_zone(name: str, zone: str) -> bool:
    """`name` is `zone` or below it (normalized names; a wildcard "*.zone" is below zone)."""
    return name == zone or name.endswith("." + zone)


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The longest of `zones` that holds `name`, if any."""
    best: str | None = None
    for zone in zones:
        if in_zone(name, zone) and (best is None or len(zone) > len(best)):
            best = zone
    return best


_LABEL = re.compile(r"^(\*|[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)$")


def check_name(raw: str) -> str | None:
    """The normalized name, or None if it is not a DNS name (a wildcard only as the first label).

    An all-numeric last label is refused (RFC 3696), so a mistyped IP ("10.0.0.256") is reported as a
    bad target instead of becoming a CNAME.
    """
    name = normalize_name(raw)
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels) or "*" in labels[1:] or labels[-1].isdigit():
        return None
    return name


Listener = Callable[[int], None]
KeysListener = Callable[[frozenset[str]], None]


class ChangedKeys:
    """A Store key listener for a consumer on a thread of its own: gathers the keys changed until the
    consumer `take`s them, and sets `wake` (if any) so it looks."""

    def __init__(self, wake: threading.Event | None = None) -> None:
        self.wake = wake
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, keys: frozenset[str]) -> None:
        with self._lock:
            self._keys |= keys
        if self.wake is not None:
            self.wake.set()

    def take(self) -> set[str]:
        """The keys changed since the last take, forgotten here."""
        with self._lock:
            keys, self._keys = self._keys, set()
        return keys


class Store:
    """Endpoints by producer key, with a version that grows on every real change.

    Writers are watch threads and asyncio tasks; readers take `snapshot()` and never see a half
    update. Listeners are called after the lock is released, with the new version, and must be
    cheap (the zone compiler only schedules a recompile).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, tuple[Endpoint, ...]] = {}
        self._version = 0
        self._listeners: list[Listener] = []
        self._key_listeners: list[KeysListener] = []
        self._batch = threading.local()  # .writes: this thread's staged writes inside `batch()`

    @property
    def version(self) -> int:
        return self._version

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def subscribe_keys(self, listener: KeysListener) -> None:
        """Also called after each change, with the keys it changed: a consumer that keeps its own
        view up to date redoes those keys instead of walking the whole Store."""
        self._key_listeners.append(listener)

    def replace(self, key: str, endpoints: Iterable[Endpoint]) -> bool:
        """Set everything `key` produces; an empty list removes the key. True if anything changed
        (inside `batch()`: from what the batch holds so far)."""
        new = tuple(endpoints)
        staged: dict[str, tuple[Endpoint, ...]] | None = getattr(self._batch, "writes", None)
        if staged is None:
            return self._apply({key: new})
        with self._lock:
            held = staged[key] if key in staged else self._by_key.get(key, ())
        if held == new:
            return False
        staged[key] = new
        return True

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """This thread's writes inside are applied together at the end, with one notification: a
        reader (the compiler, a consumer's snapshot) sees all of them or none. A relist after an outage
        reports an object gone and then one made meanwhile; a name that moved from the one to the other
        must not show with neither owner (NXDOMAIN, which resolvers cache) or both. Other threads'
        writes are applied as they come."""
        if getattr(self._batch, "writes", None) is not None:  # nested: the outer batch applies them
            yield
            return
        staged: dict[str, tuple[Endpoint, ...]] = {}
        self._batch.writes = staged
        try:
            yield
        finally:
            self._batch.writes = None
            self._apply(staged)

    def _apply(self, writes: Mapping[str, tuple[Endpoint, ...]]) -> bool:
        with self._lock:
            changed = []
            for key, new in writes.items():
                if self._by_key.get(key, ()) == new:
                    continue
                if new:
                    self._by_key[key] = new
                else:
                    del self._by_key[key]
                changed.append(key)
            if not changed:
                return False
            self._version += 1
            version = self._version
        self._notify(version, frozenset(changed))
        return True

    def _notify(self, version: int, keys: frozenset[str]) -> None:
        for keys_listener in self._key_listeners:
            keys_listener(keys)
        for listener in self._listeners:
            listener(version)

    def snapshot(self, keys: Iterable[str] | None = None) -> tuple[int, dict[str, tuple[Endpoint, ...]]]:
        """The version and every key's Endpoints, or only those of `keys` (the ones present): the
        compiler, which follows the changed keys, then copies what changed, not the whole Store."""
        with self._lock:
            if keys is None:
                return self._version, dict(self._by_key)
            by_key = self._by_key
            return self._version, {key: by_key[key] for key in keys if key in by_key}

    def endpoints(self) -> list[Endpoint]:
        _, by_key = self.snapshot()
        return [ep for eps in by_key.values() for ep in eps]


class Verdicts(Protocol):
    """What the peer exchange reads of the prober (backend/probes/prober.py), and feeds it: the layers
    keep peers and probes apart, so they meet through this interface."""

    def subscribe(self, listener: Callable[[frozenset[str]], None]) -> None:
        """`listener(hosts)` after the verdicts of those hosts flipped."""

    def set_peer(self, geotag: str, targets: Mapping[str, Iterable[str]]) -> None:
        """A peer's raw targets (host -> addresses), to be probed."""

    def verdict(self, host: str, address: str) -> bool | None:
        """True: served; False: withdrawn; None: not probed."""

    def probed(self, host: str) -> bool:
        """This cluster probes `host` (its own Gslb has a probe config)."""
