"""`coredns-gslb serve`, the composition root: settings -> API client -> shared informers -> producers
-> Store -> debounced compile -> DnsServer, and a clean stop on SIGTERM/SIGINT.

`build` wires every part explicitly, producers before consumers: each wiring function below takes the
parts it reads as arguments, so a consumer cannot be wired before what it reads exists. Producers write
their own Store keys (model.py says which); consumers read the Store and the producers' state and
write only outside (Gslb status, the edge zone) or answer (/explain). Nothing imports this module but
the CLI: the parts meet here, and through the model (the import-linter contract in pyproject.toml).

The app is ready (SERVFAIL until then) once every informer has completed its first full list and every
readiness check passes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client

from backend import edge, metrics
from backend.answer.process import AnswerProcess
from backend.config import GslbZone, Settings, from_args
from backend.controller.manager import Controller
from backend.explain import ROUTE as EXPLAIN_ROUTE
from backend.explain import Explainer
from backend.gslb.delegations import ZoneDelegations, dns_servers
from backend.gslb.engine import GslbEngine
from backend.gslb.hostnames import HostnameResolver
from backend.kube import kubeapi
from backend.kube.events import EventRecorder
from backend.kube.informer import (
    DNSENDPOINTS,
    ENDPOINTSLICES,
    GATEWAY_GROUP,
    GATEWAYS,
    GSLBS,
    GSLBS_IO,
    INGRESSES,
    NAMESPACES,
    ROUTES,
    SERVICES,
    ZONEDELEGATIONS,
    Informer,
    Resource,
    served_gateway_kinds,
)
from backend.model import ObjectRef, Store
from backend.peers.exchange import PeerExchange
from backend.peers.persist import PeerBook
from backend.probes.prober import Prober
from backend.server import DnsServer, run_loop
from backend.sources.gateway_producer import GatewaySources
from backend.sources.producer import ExternalDnsSources
from backend.zone.compiler import Compiler, geo_lookup
from backend.zone.lookup import Table

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]


@dataclass
class App:
    """What the wiring shares: the shared informers, the Store, the Event recorder, the server, and the
    process's hooks (readiness, start, stop, new zones). Parts never see it; `build` hands each part
    the pieces it needs."""

    settings: Settings
    api: client.ApiClient
    store: Store
    recorder: EventRecorder
    server: DnsServer
    informers: dict[Resource, Informer] = field(default_factory=dict)
    ready_checks: list[Callable[[], bool]] = field(default_factory=list)
    start_hooks: list[Hook] = field(default_factory=list)
    stop_hooks: list[Hook] = field(default_factory=list)
    # Set once every source has completed its first full list and the first table is compiled. Nothing
    # writes outside this process before (edge, Gslb status, persisted peers): an unsynced backend
    # sees an empty model, and writing it would delete what the cluster really has.
    first_sync: threading.Event = field(default_factory=threading.Event)
    reconfigured: list[Callable[[Settings], None]] = field(default_factory=list)

    def reconfigure(self, gslb_zones: tuple[GslbZone, ...]) -> None:
        """A new GSLB zone set (ZoneDelegations came or went): every component registered in
        `reconfigured` gets the new Settings, on the calling (watch) thread, never the DNS loop."""
        self.settings = replace(self.settings, gslb_zones=gslb_zones)
        for fn in list(self.reconfigured):
            try:
                fn(self.settings)
            except Exception:
                log.exception("reconfiguring %s failed", fn)

    def informer(self, resource: Resource) -> Informer:
        """The one shared Informer for `resource`, created on first ask (before the informers start)."""
        if resource not in self.informers:
            self.informers[resource] = Informer(
                self.api, resource,
                on_watch_event=lambda r, t: metrics.WATCH_EVENTS.labels(r.plural, t).inc(),
                on_restart=lambda r, why: metrics.WATCH_RESTARTS.labels(r.plural, why).inc(),
                batch=self.store.batch,
            )
        return self.informers[resource]

    def background(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run the loop `run()` as a task from start to stop (the peer exchange, the edge updater)."""
        tasks: list[asyncio.Task[None]] = []

        def done(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and task.exception() is not None:
                log.error("%s stopped", run, exc_info=task.exception())

        def start() -> None:
            tasks.append(asyncio.ensure_future(run()))
            tasks[-1].add_done_callback(done)

        def stop() -> None:
            for task in tasks:
                task.cancel()

        self.start_hooks.append(start)
        self.stop_hooks.append(stop)

    def after_first_sync(self, run: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """`run`, started only once `first_sync` is set (for `background`: the edge updater)."""

        async def gated() -> None:
            while not self.first_sync.is_set():
                await asyncio.sleep(0.1)
            await run()

        return gated

    def synced(self) -> bool:
        return all(i.synced.is_set() for i in self.informers.values()) and all(c() for c in self.ready_checks)


# --- producers: each writes its own Store keys ---------------------------------------------------------


def external_dns(app: App) -> None:
    """ExternalDNS's sources chosen by --source: annotated Services (and their EndpointSlices),
    Ingresses, DNSEndpoints (source `crd`); a source left out costs no watch of its own."""
    chosen = app.settings.sources
    sources = ExternalDnsSources(
        app.settings, app.store, app.recorder,
        app.informer(SERVICES) if "service" in chosen else None,
        app.informer(ENDPOINTSLICES) if "service" in chosen else None,
        app.informer(INGRESSES) if "ingress" in chosen else None,
        app.informer(DNSENDPOINTS) if "crd" in chosen else None,
    )
    app.reconfigured.append(sources.reconfigure)


def gateway_routes(app: App, served: set[str]) -> None:
    """The gateway-*route sources for the kinds this cluster serves (`served`: asked once at start)."""
    if "Gateway" not in served:
        log.warning("Gateway API (%s/v1 gateways) not served: gateway-*route sources off", GATEWAY_GROUP)
        return
    routes = {kind: app.informer(res) for kind, res in ROUTES.items()
              if kind in served and f"gateway-{kind.lower()}" in app.settings.sources}  # --source
    if not routes:
        return
    sources = GatewaySources(app.settings, app.store, app.recorder, app.informer(GATEWAYS),
                             app.informer(NAMESPACES), routes)
    app.ready_checks.append(sources.ready)
    app.reconfigured.append(sources.reconfigure)


def prober(app: App) -> Prober | None:
    """The prober every replica runs (each replica answers from its own verdicts); the GSLB engine and
    the peers read its verdicts and feed it targets."""
    if not app.settings.gslb_zones:
        return None
    found = Prober(app.settings)
    app.start_hooks.append(found.start)
    app.stop_hooks.append(found.stop)
    return found


def gslb_engine(app: App, served: set[str], probes: Prober | None) -> GslbEngine:
    """Gslb watches of both API groups and the engine every replica runs (health -> gslb/ keys), the
    exposed-hostname resolver it asks, and the ZoneDelegations that change the zone set."""
    resources = {"Gateway": GATEWAYS, **ROUTES} if "Gateway" in served else {}
    engine = GslbEngine(
        app.store,
        app.settings,
        [app.informer(GSLBS), app.informer(GSLBS_IO)],
        app.informer(INGRESSES),
        app.informer(SERVICES),
        app.informer(ENDPOINTSLICES),
        {kind: app.informer(res) for kind, res in resources.items() if kind in served},
        prober=probes,
    )
    app.background(HostnameResolver(engine, app.settings).run)
    app.reconfigured.append(engine.reconfigure)
    ZoneDelegations(app.settings, app.informer(ZONEDELEGATIONS), app.recorder, app.reconfigure)
    return engine


def peer_exchange(app: App, probes: Prober | None) -> PeerExchange | None:
    """Poll the peers named in extGslbClustersGeoTags in every GSLB zone (the zones may come later,
    with ZoneDelegations); nothing to do without peers or a clusterGeoTag."""
    s = app.settings
    if not s.cluster_geotag or not [t for t in s.ext_gslb_clusters_geotags if t != s.cluster_geotag]:
        return None
    if not s.edge_dns_servers:
        log.warning("peers %s configured but no --edge-dns-servers to find them through",
                    ", ".join(s.ext_gslb_clusters_geotags))
        return None
    exchange = PeerExchange(s, app.store, book=PeerBook(app.api, s.namespace),
                            may_write=app.first_sync.is_set, prober=probes)
    app.server.on_notify(exchange.on_notify)
    app.server.add_readiness_detail("peers", exchange.readiness)
    app.reconfigured.append(exchange.reconfigure)
    app.background(exchange.run)
    return exchange


# --- consumers: read the Store and the producers' state, write only outside ---------------------------


def gslb_controller(app: App, engine: GslbEngine, peers: PeerExchange | None) -> None:
    """The leader-elected controller: Gslb and ZoneDelegation status, owned Ingresses, Gslbs for
    annotated Ingresses; it writes once the first sync is done and the peers have settled."""
    controller = Controller(app.api, app.settings, engine, app.informer(INGRESSES), app.recorder,
                            gate=lambda: app.first_sync.is_set() and (peers is None or peers.settled()),
                            namespaces=app.informer(NAMESPACES))
    # no Events into a namespace being deleted
    app.recorder.skip_namespaces(controller.terminating, app.informer(NAMESPACES))

    def peer_addresses(zone: GslbZone, geotag: str) -> list[str]:
        return peers.addresses(zone, geotag) if peers is not None else []

    controller.write_delegation_status(app.informer(ZONEDELEGATIONS),
                                       lambda obj: dns_servers(app.settings, obj, peer_addresses))
    app.start_hooks.append(controller.start)
    app.stop_hooks.append(controller.stop)


def edge_publisher(app: App) -> None:
    """The edge updater: its state shows on /readyz (never gating it); Store changes wake it. It starts
    after the first full sync: before, the Store is empty and a pass would delete our names. With
    --edge-dns-servers it runs even before there is a GSLB zone (ZoneDelegations may bring one), and
    its jobs follow the zone set."""
    settings = app.settings
    if not settings.edge_dns_servers or not settings.cluster_geotag:
        return
    pub, key = edge.build(settings, app.store)
    app.reconfigured.append(edge.ZoneFollower(pub, app.store, key, settings.gslb_zones))
    app.server.add_readiness_detail("edge", pub.readiness)
    app.background(app.after_first_sync(pub.run))


def explain_route(app: App, engine: GslbEngine, peers: PeerExchange | None, probes: Prober | None) -> None:
    """GET /explain: the table that answers gives the rcode, owner and answer; the model the evidence."""
    explainer = Explainer(app.settings, app.store, lambda: app.server.table, engine=engine, peers=peers,
                          prober=probes)
    app.server.add_route(EXPLAIN_ROUTE, explainer.handle)
    app.reconfigured.append(lambda settings: setattr(explainer, "settings", settings))


def answer_process(app: App) -> None:
    """--answer-process: a child process answers gRPC from the Store's content (backend/answer/); this
    process keeps the rest, its HTTP server and its own table (explain, conflict Events)."""
    found = AnswerProcess(app.settings, app.store, app.first_sync, app.server.notified)
    app.server.answer_elsewhere(found)
    app.server.add_readiness_detail("answer process", found.readiness)
    app.reconfigured.append(found.reconfigure)


def wire(app: App) -> None:
    """Every part, producers before consumers: the consumers take the producers as arguments."""
    served = served_gateway_kinds(app.api)
    external_dns(app)
    gateway_routes(app, served)
    probes = prober(app)
    engine = gslb_engine(app, served, probes)
    peers = peer_exchange(app, probes)
    gslb_controller(app, engine, peers)
    edge_publisher(app)
    explain_route(app, engine, peers, probes)


def compiler(app: App) -> Compiler:
    """The backend's own answer table (explain reads it, and with --answer-process only explain and the
    records metrics do): compiled from the Store once every source has synced, each new one reported
    as conflict Events; the first one makes the app ready."""
    reported: set[tuple[ObjectRef, str]] = set()
    listed: Sequence[tuple[ObjectRef, str]] = ()  # the last table's conflicts, as it listed them

    def install(table: Table) -> None:
        nonlocal reported, listed
        app.server.set_table(table)
        if not app.first_sync.is_set():
            log.info("first full sync done: %d objects watched, serving",
                     sum(len(i.objects) for i in app.informers.values()))
            app.first_sync.set()
            app.server.set_ready(True)
        # one Warning Event per (object, conflict) while it lasts; again only if it comes back later (a
        # patch that changed no name's conflicts hands on the same list: nothing to compare)
        if table.conflicts is listed:
            return
        listed = table.conflicts
        current = set(table.conflicts)
        for ref, why in sorted(current - reported, key=str):
            log.warning("%s: %s", ref, why)
            app.recorder.record(ref, "Warning", "RecordConflict", why)
        reported = current

    found = Compiler(app.settings, geo_lookup(app.settings), app.store.snapshot, install,
                     may_compile=app.synced)
    app.reconfigured.append(found.reconfigure)
    app.store.subscribe_keys(found.changed)
    return found


def build(settings: Settings, api: client.ApiClient) -> tuple[App, Compiler]:
    """Everything but the event loop: the pieces `serve` starts."""
    recorder = EventRecorder(api, instance=settings.identity, on_dropped=metrics.write_dropped)
    app = App(settings, api, Store(), recorder, DnsServer(settings))
    found = compiler(app)
    wire(app)
    if settings.answer_process:
        answer_process(app)
    return app, found


async def serve(settings: Settings, stop: asyncio.Event | None = None,
                built: Callable[[App], None] = lambda _app: None) -> None:
    """Serve until `stop` (or SIGTERM/SIGINT); `built(app)` sees the wired App before it starts (tests
    that run the backend in-process read its Store and server through it)."""
    api = kubeapi.api_client(settings.kubeconfig)
    app, compiler = build(settings, api)
    built(app)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app.server.on_handover(stop.set)
    await app.server.start()
    try:
        for informer in app.informers.values():
            informer.start()
        compiler.start()
        for hook in app.start_hooks:
            await _call(hook)
        await stop.wait()
        log.info("shutting down")
    finally:
        await app.server.stop()  # unready, answer until CoreDNS leaves, then GOAWAY
        for hook in reversed(app.stop_hooks):
            try:
                await _call(hook)
            except Exception:
                log.exception("stop hook %s failed", hook)
        compiler.stop()
        for informer in app.informers.values():
            informer.stop(timeout=2)
        app.recorder.stop()
        api.close()


async def _call(hook: Hook) -> Any:
    result = hook()
    return await result if inspect.isawaitable(result) else result


def main(argv: Sequence[str]) -> int:
    settings = from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # our informers log reconnects
    run_loop(serve(settings), settings.uvloop)
    return 0
