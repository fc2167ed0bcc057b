"""The GSLB's seam into the app: Gslb watches of both API groups, the engine (every replica) and the
leader-elected controller (status, owned Ingresses, Gslbs for annotated Ingresses)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.config import GslbZone
from backend.controller.manager import Controller
from backend.gslb.delegations import ZoneDelegations, dns_servers
from backend.gslb.engine import GslbEngine
from backend.gslb.hostnames import HostnameResolver
from backend.sources import gateways
from backend.sources.gateway_producer import served_kinds
from backend.sources.informer import ENDPOINTSLICES, GSLBS, GSLBS_IO, INGRESSES, SERVICES, ZONEDELEGATIONS

if TYPE_CHECKING:
    from backend.app import Context


def gslb(ctx: Context) -> None:
    served = served_kinds(ctx.api)
    resources = {"Gateway": gateways.GATEWAYS, **gateways.ROUTES} if "Gateway" in served else {}
    engine = GslbEngine(
        ctx.store,
        ctx.settings,
        [ctx.informer(GSLBS), ctx.informer(GSLBS_IO)],
        ctx.informer(INGRESSES),
        ctx.informer(SERVICES),
        ctx.informer(ENDPOINTSLICES),
        {kind: ctx.informer(res) for kind, res in resources.items() if kind in served},
        prober=ctx.prober,
    )
    ctx.gslb_engine = engine
    ctx.background(HostnameResolver(engine, ctx.settings).run)
    ctx.reconfigured.append(engine.reconfigure)
    controller = Controller(ctx.api, ctx.settings, engine, ctx.informer(INGRESSES), ctx.recorder,
                            gate=lambda: ctx.first_sync.is_set() and (
                                ctx.peer_exchange is None or ctx.peer_exchange.settled()))
    zds = ctx.informer(ZONEDELEGATIONS)
    ZoneDelegations(ctx.settings, zds, ctx.recorder, ctx.reconfigure)

    def peer_addresses(zone: GslbZone, geotag: str) -> list[str]:
        return ctx.peer_exchange.addresses(zone, geotag) if ctx.peer_exchange is not None else []

    controller.write_delegation_status(zds, lambda obj: dns_servers(ctx.settings, obj, peer_addresses))
    ctx.start_hooks.append(controller.start)
    ctx.stop_hooks.append(controller.stop)
