"""`coredns-gslb serve`: settings -> API client -> shared informers -> producers -> Store -> debounced
compile -> DnsServer, and a clean stop on SIGTERM/SIGINT.

Producers are the seam every component attaches through: each is `fn(ctx)` called once before the
informers start. It asks `ctx.informer(resource)` for the shared watches it needs (one watch per kind
however many producers read it), writes Endpoints to `ctx.store`, and may register readiness checks,
start hooks (coroutines run on the event loop) and stop hooks. The app is ready (SERVFAIL until then)
once every informer has completed its first full list and every readiness check passes.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes import client

from backend import edge, explain, metrics, peers, probes
from backend.config import GslbZone, Settings, from_args
from backend.controller.events import EventRecorder
from backend.gslb.engine import GslbEngine
from backend.gslb.producer import gslb
from backend.gslb.strategy import GeoLookup
from backend.model import ObjectRef, Store
from backend.peers.exchange import PeerExchange
from backend.probes.prober import Prober
from backend.server import DnsServer
from backend.sources import kubeapi
from backend.sources.gateway_producer import gateway_routes
from backend.sources.informer import DNSENDPOINTS, ENDPOINTSLICES, INGRESSES, SERVICES, Informer, Resource
from backend.sources.producer import ExternalDnsSources
from backend.zone.build import Recompiler, next_serial_in, soa_serial

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None] | None]


@dataclass
class Context:
    """What a producer gets: shared informers, the Store, the Event recorder, the server's HTTP seams."""

    settings: Settings
    api: client.ApiClient
    store: Store
    recorder: EventRecorder
    server: DnsServer
    geo: GeoLookup | None = None
    informers: dict[Resource, Informer] = field(default_factory=dict)
    ready_checks: list[Callable[[], bool]] = field(default_factory=list)
    start_hooks: list[Hook] = field(default_factory=list)
    stop_hooks: list[Hook] = field(default_factory=list)
    recompile: Callable[[], None] = lambda: None
    gslb_engine: GslbEngine | None = None  # set by the gslb producer; explain reads health from it
    peer_exchange: PeerExchange | None = None  # set by peers.attach; explain reads the peers' state
    # Set once every source has completed its first full list and the first table is compiled. Nothing
    # writes outside this process before (edge, Gslb status, persisted peers): an unsynced backend
    # sees an empty model, and writing it would delete what the cluster really has.
    first_sync: threading.Event = field(default_factory=threading.Event)
    prober: Prober | None = None  # set by probes.attach; the engine and peers read its verdicts
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


def external_dns(ctx: Context) -> None:
    """ExternalDNS's sources chosen by --source: annotated Services (and their EndpointSlices),
    Ingresses, DNSEndpoints (source `crd`); a source left out costs no watch of its own."""
    chosen = ctx.settings.sources
    sources = ExternalDnsSources(
        ctx.settings, ctx.store, ctx.recorder,
        ctx.informer(SERVICES) if "service" in chosen else None,
        ctx.informer(ENDPOINTSLICES) if "service" in chosen else None,
        ctx.informer(INGRESSES) if "ingress" in chosen else None,
        ctx.informer(DNSENDPOINTS) if "crd" in chosen else None,
    )
    ctx.reconfigured.append(sources.reconfigure)


Producer = Callable[[Context], None]
PRODUCERS: list[Producer] = [external_dns, gateway_routes, probes.attach, gslb, peers.attach, edge.attach,
                             explain.attach]
FREEZE_EVERY = 300.0  # seconds between gc.freeze() calls while patches accumulate long-lived objects


class Compiler:
    """Recompiles the answer table on a worker thread, coalescing bursts of Store changes.

    A Store change only sets an Event (listeners must be cheap); the worker waits `debounce` more
    so a relist or a Deployment rollout costs one compile, not hundreds, then swaps the table in.
    """

    def __init__(self, ctx: Context, debounce: float = 0.015) -> None:
        self.ctx = ctx
        self.debounce = debounce
        self.serial = 0
        self.compiles = 0
        self._dirty = threading.Event()
        self._keys: set[str] = set()  # Store keys changed since the last compile
        self._keys_lock = threading.Lock()
        self._stop = threading.Event()
        self._reported: set[tuple[ObjectRef, str]] = set()
        self._recompiler = Recompiler(ctx.settings, ctx.geo)
        self._next_freeze = 0.0
        self._settings: Settings | None = None  # new zones for the next compile
        self._thread = threading.Thread(target=self._run, name="compiler", daemon=True)

    def poke(self, _version: int = 0) -> None:
        self._dirty.set()

    def changed(self, keys: frozenset[str]) -> None:
        """Store key listener: the compile looks at these keys only, not at all of them."""
        with self._keys_lock:
            self._keys |= keys
        self._dirty.set()

    def reconfigure(self, settings: Settings) -> None:
        """New zones: the next compile (on the compiler thread) is a full one with them."""
        self._settings = settings
        self.poke()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.ctx.synced():
                self._stop.wait(0.05)
                continue
            self._compile()
            if not self.ctx.first_sync.is_set():
                log.info("first full sync done: %d objects watched, serving",
                         sum(len(i.objects) for i in self.ctx.informers.values()))
                self.ctx.first_sync.set()
                self.ctx.server.set_ready(True)
            # a change, or the next hour's SOA serial, which every server of the zone moves to at once
            self._dirty.wait(next_serial_in())
            if self._stop.wait(self.debounce):
                return

    def _compile(self) -> None:
        self._dirty.clear()
        settings, self._settings = self._settings, None
        if settings is not None:
            self._recompiler.reconfigure(settings)
        with self._keys_lock:
            keys, self._keys = self._keys, set()
        version, by_key = self.ctx.store.snapshot()  # a change after the keys are taken comes again
        self.serial = soa_serial(self.serial)
        start = time.perf_counter()
        full = self._recompiler.full
        try:
            table = self._recompiler.compile(by_key, self.serial, keys)
        except Exception:  # keep serving the previous table; the next change retries
            log.exception("compiling store version %d failed", version)
            return
        self.ctx.server.set_table(table)
        self.compiles += 1
        if self._recompiler.full != full or time.monotonic() >= self._next_freeze:
            # Out of the collector's sight from now on: the objects held now (the table, the informers'
            # objects) are long-lived, and a full collection over them (0.6 s and more at 10k + 10k)
            # holds the GIL, so the answer loop, for all of it. Later garbage is collected as usual.
            gc.freeze()
            self._next_freeze = time.monotonic() + FREEZE_EVERY
        log.debug("table serial %d from store version %d: %d records in %.1f ms", self.serial, version,
                  table.records, (time.perf_counter() - start) * 1000)
        self._report(table.conflicts)

    def _report(self, conflicts: Sequence[tuple[ObjectRef, str]]) -> None:
        """One Warning Event per (object, conflict) while it lasts; again only if it comes back later."""
        current = set(conflicts)
        for ref, why in sorted(current - self._reported, key=str):
            log.warning("%s: %s", ref, why)
            self.ctx.recorder.record(ref, "Warning", "RecordConflict", why)
        self._reported = current


def build(
    settings: Settings, api: client.ApiClient, producers: Sequence[Producer] = ()
) -> tuple[Context, Compiler]:
    """Everything but the event loop: the pieces `serve` starts, also used by tests in-process."""
    geo: GeoLookup | None = None
    if settings.geoip_db:
        from backend.gslb.geoip import GeoIP

        geo = GeoIP(settings.geoip_db, settings.geoip_field)
    recorder = EventRecorder(api, instance=settings.identity)
    ctx = Context(settings, api, Store(), recorder, DnsServer(settings), geo)
    compiler = Compiler(ctx)
    ctx.recompile = compiler.poke
    ctx.reconfigured.append(compiler.reconfigure)
    for produce in producers or PRODUCERS:
        produce(ctx)
    ctx.store.subscribe_keys(compiler.changed)
    return ctx, compiler


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    api = kubeapi.api_client(settings.kubeconfig)
    ctx, compiler = build(settings, api)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ctx.server.on_handover(stop.set)
    await ctx.server.start()
    try:
        for informer in ctx.informers.values():
            informer.start()
        compiler.start()
        for hook in ctx.start_hooks:
            await _call(hook)
        await stop.wait()
        log.info("shutting down")
    finally:
        await ctx.server.stop()  # unready, answer until CoreDNS leaves, then GOAWAY
        for hook in reversed(ctx.stop_hooks):
            try:
                await _call(hook)
            except Exception:
                log.exception("stop hook %s failed", hook)
        compiler.stop()
        for informer in ctx.informers.values():
            informer.stop(timeout=2)
        ctx.recorder.stop()
        api.close()


async def _call(hook: Hook) -> Any:
    result = hook()
    return await result if inspect.isawaitable(result) else result


def main(argv: Sequence[str]) -> int:
    settings = from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # our informers log reconnects
    asyncio.run(serve(settings))
    return 0
