"""The enterprise ("edge") DNS zone by RFC 2136: this cluster's NS target and glue there, and its
ExternalDNS-style names with ExternalDNS's TXT ownership records (see README.md).

`coredns-gslb edge leave [serve's flags]` removes only this cluster's delegation; `publisher(...)`
builds the long-running updater that `serve` runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence

import dns.tsig

from backend.config import GslbZone, Settings, from_args
from backend.dnsclient import parse_server
from backend.edge import names, tsig
from backend.edge.publisher import (
    Claim,
    EdgeError,
    EdgePublisher,
    Job,
    delegation_claims,
    delegation_job,
    sync,
    withdraw_job,
)
from backend.model import Store

log = logging.getLogger(__name__)


def addresses(settings: Settings) -> list[str]:
    """--nameserver-address may list an IPv4 and an IPv6 address, comma-separated."""
    return [a.strip() for a in settings.nameserver_address.split(",") if a.strip()]


def claims(settings: Settings) -> list[Claim]:
    return delegation_claims(settings.gslb_zones, settings.cluster_geotag, addresses(settings),
                             settings.ns_record_ttl)


def jobs(settings: Settings, store: Store | None, key: dns.tsig.Key | None,
         withdrawn: Sequence[GslbZone] = ()) -> list[Job]:
    """What the edge should hold: our delegation per edge zone (needs --nameserver-address), the
    ExternalDNS-style names per edge zone (needs a Store and --edge-publish-names), and the removal
    of our NS and glue for zones that stopped being GSLB zones (a ZoneDelegation deleted)."""
    out: list[Job] = []
    if addresses(settings):
        out += [delegation_job(claim, key) for claim in claims(settings)]
        gone = [z for z in withdrawn if z not in settings.gslb_zones]
        out += [withdraw_job(claim, key) for claim in delegation_claims(
            gone, settings.cluster_geotag, addresses(settings), settings.ns_record_ttl)]
    if store is not None and settings.edge_publish_names:
        edge_zones = sorted({gz.edge_zone for gz in settings.gslb_zones})
        out += [names.job(settings, store, key, zone) for zone in edge_zones]
    return out


def publisher(settings: Settings, store: Store | None = None) -> EdgePublisher | None:
    """The updater for `serve`, or None when there is nothing to publish (a log line says why).

    The delegation needs --nameserver-address; the names need a Store (and --edge-publish-names).
    A bad key source is an error at start-up, not a silent unsigned update later.
    """
    if not settings.edge_dns_servers or not settings.gslb_zones:
        return None
    pub, _key = build(settings, store)
    return pub if pub.jobs else None


def build(settings: Settings, store: Store | None) -> tuple[EdgePublisher, dns.tsig.Key | None]:
    """The publisher and the TSIG key its jobs sign with (`serve` rebuilds the jobs with the key); it
    follows the Store's changed keys, which wake it and tell the names jobs what to redo."""
    key = tsig.load(settings)
    if not addresses(settings):
        log.warning("edge delegation off: --nameserver-address (this cluster's CoreDNS address) is not set")
    if key is None:
        log.warning("no TSIG key configured (--tsig-key-file or --tsig-secret): edge updates go unsigned")
    servers = [parse_server(s) for s in settings.edge_dns_servers]
    pub = EdgePublisher(servers, jobs(settings, store, key), settings.edge_sync_seconds)
    if store is not None:
        store.subscribe_keys(pub.changed)
    return pub, key


class ZoneFollower:
    """Rebuilds the publisher's jobs when the GSLB zones change, withdrawing the zones that went."""

    def __init__(self, pub: EdgePublisher, store: Store, key: dns.tsig.Key | None,
                 zones: tuple[GslbZone, ...]) -> None:
        self.pub, self.store, self.key, self.zones = pub, store, key, zones
        self.withdrawn: tuple[GslbZone, ...] = ()

    def __call__(self, settings: Settings) -> None:
        self.withdrawn = tuple(z for z in dict.fromkeys((*self.withdrawn, *self.zones))
                               if z not in settings.gslb_zones)
        self.zones = settings.gslb_zones
        self.pub.jobs = jobs(settings, self.store, self.key, self.withdrawn)
        self.pub.wake()


async def leave(settings: Settings) -> int:
    """Remove our NS target and glue from every edge zone; other clusters' records stay."""
    key = tsig.load(settings)
    servers = [parse_server(s) for s in settings.edge_dns_servers]
    failed = 0
    for claim in claims(settings):
        try:
            removed = await sync(servers, claim, key, leave=True)
        except EdgeError as e:
            print(f"edge zone {claim.zone}: {e} (rcode {e.rcode})", file=sys.stderr)
            failed += 1
            continue
        print(f"edge zone {claim.zone}: removed {removed} record(s) of {settings.cluster_geotag}")
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if not args or args[0] != "leave":
        print("usage: coredns-gslb edge leave [the flags of `serve`]\n"
              "  removes this cluster's NS target and glue from the edge zone", file=sys.stderr)
        return 2
    settings = from_args(args[1:])
    if not settings.edge_dns_servers or not settings.gslb_zones:
        print("edge leave needs --edge-dns-servers, --dns-zone, --edge-dns-zone and --cluster-geo-tag",
              file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(leave(settings))
    except tsig.TsigKeyError as e:
        print(f"TSIG key: {e}", file=sys.stderr)
        return 2
