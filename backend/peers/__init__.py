"""The localtargets exchange with the other clusters (see README.md); `attach` is its seam into `serve`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from backend.peers.exchange import PeerExchange
from backend.peers.persist import PeerBook

if TYPE_CHECKING:
    from backend.app import Context

log = logging.getLogger(__name__)


def attach(ctx: Context) -> None:
    """Poll the peers named in extGslbClustersGeoTags in every GSLB zone (the zones may come later,
    with ZoneDelegations); nothing to do without peers or a clusterGeoTag."""
    s = ctx.settings
    if not s.cluster_geotag or not [t for t in s.ext_gslb_clusters_geotags if t != s.cluster_geotag]:
        return
    if not s.edge_dns_servers:
        log.warning("peers %s configured but no --edge-dns-servers to find them through",
                    ", ".join(s.ext_gslb_clusters_geotags))
        return
    exchange = PeerExchange(s, ctx.store, book=PeerBook(ctx.api, s.namespace),
                            may_write=ctx.first_sync.is_set, prober=ctx.prober)
    ctx.peer_exchange = exchange
    ctx.server.on_notify(exchange.on_notify)
    ctx.server.add_readiness_detail("peers", exchange.readiness)
    ctx.reconfigured.append(exchange.reconfigure)
    ctx.background(exchange.run)
