"""Edge delegation by RFC 2136: this cluster's NS target and glue in the enterprise DNS zone.

`coredns-gslb edge leave [serve's flags]` removes only this cluster's records; `publisher(settings)`
builds the long-running updater that `serve` runs.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from backend.config import Settings, from_args
from backend.edge import tsig
from backend.edge.publisher import Claim, EdgeError, EdgePublisher, delegation_claims, sync
from backend.peers.query import parse_server

if TYPE_CHECKING:
    from backend.app import Context

log = logging.getLogger(__name__)


def addresses(settings: Settings) -> list[str]:
    """--nameserver-address may list an IPv4 and an IPv6 address, comma-separated."""
    return [a.strip() for a in settings.nameserver_address.split(",") if a.strip()]


def claims(settings: Settings) -> list[Claim]:
    return delegation_claims(settings.gslb_zones, settings.cluster_geotag, addresses(settings),
                             settings.ns_record_ttl)


def publisher(settings: Settings) -> EdgePublisher | None:
    """The updater for `serve`, or None (with a log line saying why) when edge publishing is off.

    A bad key source is an error at start-up, not a silent unsigned update later.
    """
    if not settings.edge_dns_servers or not settings.gslb_zones:
        return None
    if not addresses(settings):
        log.warning("edge delegation off: --nameserver-address (this cluster's CoreDNS address) is not set")
        return None
    key = tsig.load(settings)
    if key is None:
        log.warning("no TSIG key configured (--tsig-key-file or --tsig-secret): edge updates go unsigned")
    servers = [parse_server(s) for s in settings.edge_dns_servers]
    return EdgePublisher(servers, key, lambda: claims(settings), settings.edge_sync_seconds)


def attach(ctx: Context) -> None:
    """`serve`'s updater: keeps our delegation at the edge; its state shows on /readyz, never gating it."""
    pub = publisher(ctx.settings)
    if pub is not None:
        ctx.server.add_readiness_detail("edge", pub.readiness)
        ctx.background(pub.run)


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
