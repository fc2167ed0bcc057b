"""Our localtargets in bulk: an index and a few shards, so a peer refetches what changed in a few queries.

k8gb's exchange asks `localtargets-<host>` A and AAAA per host: 2 queries per host on every change,
thousands for a large cluster. Beside those records (still served, for k8gb peers) each cluster
publishes in every load-balanced zone:

- `_localtargets.<zone>` TXT `v2 <n> <d0> ... <dn-1>`: the digest of each of n shards;
- `_localtargets-<i>.<zone>` TXT, one record per host of shard i: `<host> <ip> [<ip> ...]`.

A host's shard is a hash of its name; n grows with the number of hosts (about 400 per shard, so a
shard fits one TCP answer). A peer polls the index (one small query), fetches only the shards whose
digest moved, and keeps the rest. Digests are over canonical text, so both sides compute the same.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping

from backend.model import Endpoint, Target

LABEL = "_localtargets"  # no host's localtargets name can start with an underscore
VERSION = "v2"
SHARDS_MIN = 16
HOSTS_PER_SHARD = 400
MAX_SHARDS = 4096
MAX_SHARD_LINES = 4 * HOSTS_PER_SHARD  # a peer's shard beyond this is garbage, not data

Lines = Mapping[str, tuple[str, ...]]  # host -> its addresses (A and AAAA), canonical and sorted


def index_name(zone: str) -> str:
    return f"{LABEL}.{zone}"


def shard_name(zone: str, i: int) -> str:
    return f"{LABEL}-{i}.{zone}"


def shard_count(hosts: int) -> int:
    n = SHARDS_MIN
    while n * HOSTS_PER_SHARD < hosts and n < MAX_SHARDS:
        n *= 2
    return n


def shard_of(host: str, n: int) -> int:
    return int.from_bytes(hashlib.sha256(host.encode()).digest()[:4], "big") % n


def digest(shard: Lines) -> str:
    text = "\n".join(f"{host} {' '.join(ips)}" for host, ips in sorted(shard.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _canonical(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({str(ipaddress.ip_address(v)) for v in values}))


class Publication:
    """Our index and shard records for one zone, kept up to date one host at a time: a change
    rehashes its own shard, not every host (10,000 hosts: one shard's digest instead of 10,000)."""

    def __init__(self, zone: str, ttl: int) -> None:
        self.zone = zone
        self.ttl = ttl
        self._hosts: dict[str, tuple[str, ...]] = {}
        self._n = 0
        self._shards: list[dict[str, tuple[str, ...]]] = []
        self._digests: list[str] = []
        self._records: list[Endpoint | None] = []  # per shard; None while it is empty
        self._dirty: set[int] = set()
        self._endpoints: list[Endpoint] | None = None

    def set(self, host: str, values: Iterable[str]) -> None:
        """The host's addresses (A and AAAA together); none removes it."""
        canonical = _canonical(values)
        if self._hosts.get(host, ()) == canonical:
            return
        if canonical:
            self._hosts[host] = canonical
        else:
            self._hosts.pop(host, None)
        self._endpoints = None
        if shard_count(len(self._hosts)) != self._n:
            self._reshard()
            return
        i = shard_of(host, self._n)
        if canonical:
            self._shards[i][host] = canonical
        else:
            self._shards[i].pop(host, None)
        self._dirty.add(i)

    def _reshard(self) -> None:
        n = self._n = shard_count(len(self._hosts))
        self._shards = [{} for _ in range(n)]
        for host, values in self._hosts.items():
            self._shards[shard_of(host, n)][host] = values
        self._digests, self._records, self._dirty = [""] * n, [None] * n, set(range(n))

    def endpoints(self) -> list[Endpoint]:
        if self._endpoints is None:
            if not self._n:
                self._reshard()
            for i in self._dirty:
                shard = self._shards[i]
                self._digests[i] = digest(shard)
                self._records[i] = Endpoint(
                    shard_name(self.zone, i), "TXT",
                    tuple(Target(f"{host} {' '.join(ips)}") for host, ips in sorted(shard.items())),
                    self.ttl) if shard else None
            self._dirty.clear()
            index = " ".join([VERSION, str(self._n), *self._digests])
            self._endpoints = [Endpoint(index_name(self.zone), "TXT", (Target(index),), self.ttl),
                               *(r for r in self._records if r is not None)]
        return self._endpoints


def parse_index(text: str) -> tuple[str, ...]:
    """The shard digests of a peer's index; ValueError for anything but a well-formed v2 index."""
    parts = text.split()
    if len(parts) < 2 or parts[0] != VERSION or not parts[1].isdigit():
        raise ValueError(f"not a {VERSION} localtargets index: {text[:60]!r}")
    n = int(parts[1])
    if not 0 < n <= MAX_SHARDS or len(parts) != n + 2:
        raise ValueError(f"index announces {parts[1]} shards and lists {len(parts) - 2}")
    if not all(len(d) == 10 and all(c in "0123456789abcdef" for c in d) for d in parts[2:]):
        raise ValueError("index digests are not hex")
    return tuple(parts[2:])


def parse_shard(texts: Iterable[str], zone: str, n: int, i: int) -> dict[str, tuple[str, ...]]:
    """One shard's records; a host outside the zone or the shard, or a bad address, is ValueError."""
    shard: dict[str, tuple[str, ...]] = {}
    for text in texts:
        host, *values = text.split()
        if not (host.endswith("." + zone) and shard_of(host, n) == i and values) or host in shard:
            raise ValueError(f"unexpected shard line {text[:60]!r}")
        shard[host] = _canonical(values)
    return shard
