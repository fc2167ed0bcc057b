"""The gRPC DnsService CoreDNS's grpc plugin calls, and the small HTTP server beside it
(/healthz, /readyz, /metrics and routes other components add, such as /explain).

The server holds the current `Table` and swaps it atomically; answering is `Table.resolve` plus a
metrics increment, all on the event loop thread (the table never blocks).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import inspect
import logging
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import uvloop
from prometheus_client import CONTENT_TYPE_LATEST

from backend import listener, metrics
from backend.config import Settings
from backend.h2grpc import GRPC_UNAVAILABLE, GrpcError, H2GrpcServer, limited_log
from backend.zone.lookup import Table
from backend.zone.notify import NotifyCallback

log = logging.getLogger(__name__)
SERVFAIL = 2

HttpReply = tuple[int, str, bytes]  # status, content type, body
HttpHandler = Callable[[dict[str, list[str]]], HttpReply | Awaitable[HttpReply]]
# The answer loop gives up the GIL at every socket call, and a control thread (compile, watches,
# exposition) that takes it keeps it for the switch interval before the loop may have it back: with
# Python's 5 ms each answer waited up to 5 ms per socket call (a compile thread beside the loop: answer
# p50 6.2 ms at 5 ms, 1.5 ms at 0.5 ms, the compile's own speed unchanged; issue 12).
SWITCH_INTERVAL = 0.0005
# CPython collects when tracked objects allocated minus those freed pass 700, and a freed long-lived
# object counts as much as a new one. Under churn the backend replaces its objects one for one (an
# informer's object, Endpoints, table nodes), so the count barely moves while the young generations
# grow, and the collection that finally comes walks them all holding the GIL, and so the answer loop:
# gen 1 every ~5 s over 12-14k objects, 13-32 ms of CPU at 10k + 10k under churn (diagnostic run, issue
# 12). Collecting them on a clock bounds each pass by what one interval allocated.
YOUNG_EVERY = 0.1
# HTTP replies (issue 12, "a /metrics client that reads slowly or never reads"). Before, the whole body
# went to the transport at once and the kernel took it: autotuning let one connection's send buffer
# grow to the whole ~4 MiB exposition, so 170 clients that never read held 626 MiB of kernel memory
# (the pod's cgroup pays for it) for as long as they kept their connections, never cut off, and
# copying 170 bodies into the kernel held the answer loop for 305-380 ms (`python -m bench slow_metrics`).
WRITE_TIMEOUT = 10.0  # a reply not read whole within this is cut off (reset), its buffers freed
HTTP_PIECE = 64 << 10  # a reply is written this much at a time, each piece once the last has drained
HTTP_SNDBUF = 64 << 10  # an HTTP connection's SO_SNDBUF (the kernel doubles it), fixed: no autotuning
METRICS_REUSE = 1.0  # a /metrics body this young that a reply still holds is sent again, not rebuilt
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on with 0 s: close() resets, the kernel drops unsent data
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


class HttpSlots:
    """What the clients of one HTTP listener hold at once: connections, and /metrics replies being built
    or sent, in all and per client address. A scrape over `scrapes` takes the slot of the reply that
    has waited longest for its client to read; that one is sent on, outside the slots, until
    WRITE_TIMEOUT (`preempted`); with none waiting, 503 at once, nothing built. So the slots bound the
    replies that move, and clients that never read, from however many addresses, cannot keep a
    Prometheus out. An address has at most `per_client` replies alive, moving or preempted (beyond:
    503), so one client cannot fill the kernel's buffers. At `connections`, the oldest connection that
    has not yet sent its request is reset to make room, else the oldest preempted reply, else the new
    connection. Probes' replies are small and take no scrape slot, and a probe sends its request as it
    connects, so /healthz and /readyz are answered whatever the other clients hold."""

    def __init__(self, connections: int, scrapes: int, per_client: int) -> None:
        self.max_connections, self.max_scrapes, self.per_client = connections, scrapes, per_client
        self.connections = 0
        self.by_client: collections.Counter[str] = collections.Counter()  # replies alive per address
        self.holders: dict[asyncio.StreamWriter, str] = {}  # replies in a slot -> client address
        self.blocked: dict[asyncio.StreamWriter, None] = {}  # holders waiting for the client: longest first
        self.waiting: dict[asyncio.StreamWriter, None] = {}  # connected, no request yet: oldest first
        self.preempted: dict[asyncio.StreamWriter, str] = {}  # sent on outside the slots: oldest first

    def connect(self, writer: asyncio.StreamWriter) -> bool:
        if self.connections >= self.max_connections:
            if self.waiting:
                oldest = next(iter(self.waiting))
                del self.waiting[oldest]
            elif self.preempted:
                oldest = next(iter(self.preempted))
                self.scraped(oldest)
            else:
                return False
            _reset(oldest)  # its handler sees the connection lost and lets the rest go
        self.connections += 1
        self.waiting[writer] = None
        return True

    def requested(self, writer: asyncio.StreamWriter) -> None:
        self.waiting.pop(writer, None)

    def disconnect(self, writer: asyncio.StreamWriter) -> None:
        self.scraped(writer)
        self.waiting.pop(writer, None)
        self.connections -= 1

    def scrape(self, writer: asyncio.StreamWriter, client: str) -> bool:
        """A slot for `writer`'s /metrics reply, taken from a blocked holder if need be; False: 503."""
        if self.by_client[client] >= self.per_client:
            return False
        if len(self.holders) >= self.max_scrapes and not self._preempt():
            return False
        self.holders[writer] = client
        self.by_client[client] += 1
        return True

    def scraped(self, writer: asyncio.StreamWriter) -> None:
        """`writer`'s reply is done or cut off: its slot goes back (if it holds one), its address's count
        goes down."""
        client = self.holders.pop(writer, None) or self.preempted.pop(writer, None)
        if client is None:
            return
        self.blocked.pop(writer, None)
        self.by_client[client] -= 1
        if not self.by_client[client]:
            del self.by_client[client]

    def waits(self, writer: asyncio.StreamWriter, blocked: bool) -> None:
        """`writer`'s reply starts (True) or stops waiting for its client to read what was sent."""
        if blocked and writer in self.holders:
            self.blocked[writer] = None
        else:
            self.blocked.pop(writer, None)

    def _preempt(self) -> bool:
        """Free the slot of the holder that has waited longest for its client; False if every holder
        moves. The reply still counts for its address."""
        victim = next(iter(self.blocked), None)
        if victim is None:
            return False
        del self.blocked[victim]
        self.preempted[victim] = self.holders.pop(victim)
        metrics.HTTP_PREEMPTED.inc()
        return True


class Exposition:
    """A /metrics body and when it was built. DnsServer keeps only a weak reference: the replies that
    send it hold it, so it is reused only while one still does (a client reading slowly), never kept
    for a scrape that comes after they all finished."""

    __slots__ = ("__weakref__", "built", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.built = time.monotonic()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a reset: a plain close leaves what the client has not read in the kernel, until it
    reads it, for as long as it keeps the connection. One already lost has no descriptor left (uvloop's
    pseudo-socket raises ValueError)."""
    with contextlib.suppress(OSError, AttributeError, ValueError):
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.transport.abort()


class YoungCollector:
    """Collects the young generations every `interval` on a thread of its own: generation 0, and 1
    once 0 has been collected its threshold's number of times (as CPython's own trigger would). What
    survives generation 1 is frozen rather than left to a full collection: after the first sync one
    walked 120,000 objects for 118 ms of CPU and found nothing to free (the GIL held all along). The
    price: a cycle that lives past a generation-1 pass (about a second) and then dies is never freed,
    so what outlives a request must not hold one (a kept exception without its traceback: gslb/engine.py).
    Skipped while collection is off (a full compile turns it off so that nothing walks what it builds).
    """

    def __init__(self, interval: float = YOUNG_EVERY) -> None:
        self.interval = interval
        self._thread: threading.Thread | None = None

    def collect(self) -> int | None:
        """One pass: the generation collected, or None while collection is off."""
        if not gc.isenabled():
            return None
        generation = 1 if gc.get_count()[1] >= gc.get_threshold()[1] else 0
        gc.collect(generation)
        if generation == 1:
            gc.freeze()
        return generation

    def start(self) -> None:
        """Once per process; later calls do nothing."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gc-young", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.collect()


YOUNG = YoungCollector()


def new_event_loop(use_uvloop: bool = True) -> asyncio.AbstractEventLoop:
    """The loop that answers CoreDNS: uvloop's (libuv) unless --no-uvloop. Per answered query the
    stdlib loop's own Python (selector, transport read and write paths, handles) cost 10-25 % of the
    backend's CPU (backend/README.md); libuv does that part in C."""
    return uvloop.new_event_loop() if use_uvloop else asyncio.new_event_loop()


def run_loop(main: Coroutine[Any, Any, None], use_uvloop: bool = True) -> None:
    """Run `main` to completion on `new_event_loop(use_uvloop)` (asyncio.run with that loop)."""
    with asyncio.Runner(loop_factory=lambda: new_event_loop(use_uvloop)) as runner:
        runner.run(main)


class GrpcFront(Protocol):
    """What answers CoreDNS's gRPC: an `H2GrpcServer` on this process's loop, or the answer process."""

    @property
    def serving(self) -> bool: ...

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int: ...

    async def drain(self, seconds: float) -> None: ...

    async def stop(self, grace: float) -> None: ...


def split_hostport(address: str) -> tuple[str, int]:
    """"127.0.0.1:8080" or "[::1]:8080" -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class DnsServer:
    """gRPC + HTTP front of the backend. Construct, `set_table`, `await start()`, later `await stop()`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.table = Table.not_ready(settings)
        self.ready = False
        self._detail: dict[str, str] = {}
        self._detail_fns: dict[str, Callable[[], str | None]] = {}
        self._routes: dict[str, HttpHandler] = {}
        self._notify: list[NotifyCallback] = []
        self._front: GrpcFront | None = None  # what answers gRPC instead of this loop (--answer-process)
        self._grpc: GrpcFront | None = None
        self._http: asyncio.Server | None = None
        self._admin: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: listener.Handoff | None = None  # sockets from `coredns-gslb listen`, if used
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_handover: list[Callable[[], None]] = []
        self.handed_over = False  # a newer backend serves: stop without the drain wait
        self._failed_routes: set[tuple[str, str]] = set()  # (path, exception type) already logged in full
        self._exposing: asyncio.Future[Exposition] | None = None  # the /metrics body being built
        self._exposed: weakref.ref[Exposition] | None = None  # the last one built, while replies hold it
        self.grpc_port = 0
        self.http_port = 0
        self.admin_port = 0

    # -- wiring for other components ---------------------------------------------------------

    def set_table(self, table: Table) -> None:
        self.table = table
        metrics.RECORDS.set(table.records)
        metrics.TABLE_SERIAL.set(table.serial)
        metrics.CONFLICTS.set(len(table.conflicts))

    def set_ready(self, ready: bool, detail: dict[str, str] | None = None) -> None:
        """Ready only after the first full sync; `detail` lines appear in the /readyz body."""
        self.ready = ready
        if detail is not None:
            self._detail = dict(detail)
        if ready and self._handoff is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._task, self._serve_handed_grpc())

    def on_handover(self, callback: Callable[[], None]) -> None:
        """Called (on the loop) when the listener holder says a newer backend serves: time to stop."""
        self._on_handover.append(callback)

    def add_readiness_detail(self, name: str, fn: Callable[[], str | None]) -> None:
        """A line `name: fn()` in /readyz (e.g. the edge updater's last error); None hides it."""
        self._detail_fns[name] = fn

    def add_route(self, path: str, handler: HttpHandler) -> None:
        """Serve GET `path` with `handler(query_params) -> (status, content_type, body)`, sync or async,
        on the admin listener only (--admin-listen, 127.0.0.1 by default: inside the pod, or through
        `kubectl port-forward`); the HTTP port serves only probes and /metrics to the network."""
        self._routes[path] = handler

    def answer_elsewhere(self, front: GrpcFront) -> None:
        """Before `start`: gRPC is answered by `front` (the answer process, backend/answer/) on the
        socket this server binds or is handed; this process keeps HTTP, readiness and the handoff."""
        self._front = front

    def on_notify(self, callback: NotifyCallback) -> None:
        """Called with (zone, peer) for every DNS NOTIFY for a served zone."""
        self._notify.append(callback)

    # -- DNS ---------------------------------------------------------------------------------

    def handle(self, msg: bytes, peer: str = "") -> bytes:
        """The DNS reply. Before the first full sync a name in our zones gets gRPC UNAVAILABLE instead
        (others stay REFUSED): CoreDNS's grpc plugin takes that as a failed upstream and tries the
        next one (SERVFAIL only when none is left), while a SERVFAIL reply from us would be final."""
        start = time.perf_counter()
        table = self.table
        if len(msg) > 2 and (msg[2] >> 3) & 0xF == 4:  # NOTIFY: rare, worth the callback plumbing
            reply, zone, qtype = table.resolve(msg, self.notified, peer)
        else:
            reply, zone, qtype = table.resolve(msg)
        if not table.ready and reply[3] & 0xF == SERVFAIL:  # a name of ours we know nothing of yet
            metrics.UNSYNCED_CALLS.inc()
            raise GrpcError(GRPC_UNAVAILABLE, "backend has not completed its first full sync")
        metrics.QUERIES.observe(zone, qtype, reply[3] & 0xF, time.perf_counter() - start)
        return reply

    def notified(self, zone: str, peer: str) -> None:
        """A NOTIFY for a served zone arrived (here, or at the answer process): tell every callback."""
        log.info("NOTIFY for %s from %s", zone, peer)
        for callback in self._notify:
            callback(zone, peer)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen. With --listener-socket the sockets come from the holder, and gRPC is accepted only
        from the first full sync on (until then the holder answers UNAVAILABLE); without it we bind
        them, and answer UNAVAILABLE ourselves until synced."""
        self._loop = asyncio.get_running_loop()
        self._grpc = self._front or H2GrpcServer(self.handle)
        socks: dict[str, socket.socket] = {}
        if self.settings.listener_socket:
            self._handoff = await listener.receive(self.settings.listener_socket)
            socks = self._handoff.sockets
            self.grpc_port = socks["grpc"].getsockname()[1]
            self._task(self._follow_holder())
        else:
            self.grpc_port = await self._grpc.start(*split_hostport(self.settings.grpc_listen))
        self._http = await self._http_server(self.settings.http_listen, socks.get("http"), admin=False)
        self.http_port = self._http.sockets[0].getsockname()[1]
        if self.settings.admin_listen or "admin" in socks:
            self._admin = await self._http_server(self.settings.admin_listen, socks.get("admin"), admin=True)
            self.admin_port = self._admin.sockets[0].getsockname()[1]
        if self._front is None:
            self.watch_loop()
        log.info("serving DNS over gRPC on port %d, HTTP on port %d, admin HTTP on port %d%s",
                 self.grpc_port, self.http_port, self.admin_port,
                 " (gRPC answered by the answer process)" if self._front is not None else "")

    async def serve_grpc(self, sock: socket.socket) -> None:
        """Answer gRPC on `sock`, a listening socket bound by another process, and nothing else (no
        HTTP): what the answer process runs (backend/answer/)."""
        self._loop = asyncio.get_running_loop()
        self._grpc = H2GrpcServer(self.handle)
        self.grpc_port = await self._grpc.start("", 0, sock=sock)

    def watch_loop(self) -> None:
        """On the loop that answers: its lag and the GC's pauses measured, the GIL handed back to it
        soon (SWITCH_INTERVAL) and never held long by a collection (YOUNG)."""
        self._task(metrics.LAG.run())
        metrics.GC.install()
        sys.setswitchinterval(SWITCH_INTERVAL)
        YOUNG.start()

    async def _http_server(self, address: str, sock: socket.socket | None, *, admin: bool) -> asyncio.Server:
        settings = self.settings
        slots = HttpSlots(settings.http_max_connections, settings.metrics_max_scrapes,
                          settings.metrics_max_scrapes_per_client)

        def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Awaitable[None]:
            return self._serve_http(r, w, admin=admin, slots=slots)

        if sock is not None:
            return await asyncio.start_server(serve, sock=sock)
        return await asyncio.start_server(serve, *split_hostport(address))

    def _task(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve_handed_grpc(self) -> None:
        if self._handoff is None or self._grpc is None or self._grpc.serving:
            return
        await self._grpc.start("", 0, sock=self._handoff.sockets["grpc"])
        self._handoff.say("serving")
        log.info("first full sync done: accepting gRPC on the holder's socket")

    async def _follow_holder(self) -> None:
        assert self._handoff is not None
        while line := await self._handoff.reader.readline():
            if line.strip() == b"handover":
                log.info("a newer backend serves: handing over")
                self.handed_over = True
                for callback in self._on_handover:
                    callback()
        log.warning("the listener holder went away; serving on with the sockets we hold")

    async def stop(self, grace: float = 5.0) -> None:
        """Go unready first (probes and the Service move traffic away), keep answering until CoreDNS
        has gone (its connections closed) or --shutdown-drain-seconds passed (no wait when a newer
        backend took over), then stop accepting, GOAWAY, and let in-flight calls finish."""
        await self.drain(0 if self.handed_over else self.settings.shutdown_drain_seconds)
        if self._handoff is not None:
            self._handoff.say("stopping")  # the holder's standby takes new connections from now on
        await self.close(grace)

    async def drain(self, seconds: float) -> None:
        """Unready, and answering until CoreDNS has gone or `seconds` passed."""
        self.ready = False
        if self._grpc is not None:
            await self._grpc.drain(seconds)

    async def close(self, grace: float) -> None:
        """Stop accepting, GOAWAY, in-flight calls finished (up to `grace`), HTTP closed."""
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        for http in (self._http, self._admin):
            if http is not None:
                http.close()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(http.wait_closed(), grace)
        self._http = self._admin = None
        if self._handoff is not None:
            self._handoff.writer.close()
        for task in list(self._tasks):
            task.cancel()

    # -- HTTP --------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                          admin: bool, slots: HttpSlots) -> None:
        port = (writer.get_extra_info("sockname") or ("", 0))[1]
        if not slots.connect(writer):
            limited_log(f"http-connections-{port}", logging.WARNING, "HTTP connection limit (%d) reached on "
                        "port %d, every connection with a request in flight: new connections are reset",
                        slots.max_connections, port)
            _reset(writer)
            return
        client = str((writer.get_extra_info("peername") or ("",))[0])
        exposition: Exposition | None = None  # held until sent: what `_metrics` may hand out again
        try:
            with contextlib.suppress(OSError, AttributeError):
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HTTP_SNDBUF)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                slots.requested(writer)
                method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
                url = urlsplit(target)
                if method not in ("GET", "HEAD"):
                    status, ctype, body = 400, "text/plain", b"only GET\n"
                elif url.path != "/metrics":
                    status, ctype, body = await self._route(url.path, parse_qs(url.query), admin)
                elif slots.scrape(writer, client):
                    exposition = await self._metrics()
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, exposition.data
                else:
                    limited_log(f"http-scrapes-{port}", logging.WARNING, "/metrics on port %d: %d replies "
                                "in flight, %d for %s, all moving: answering 503", port, len(slots.holders),
                                slots.by_client[client], client)
                    status, ctype, body = 503, "text/plain", b"too many scrapes in flight\n"
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    ConnectionError):
                status, ctype, body, method = 400, "text/plain", b"bad request\n", "GET"
            if writer.transport.is_closing():  # reset to make room, or gone before it asked
                return
            await _reply(writer, status, ctype, b"" if method == "HEAD" else body, len(body), slots)
        finally:
            slots.disconnect(writer)

    async def _route(self, path: str, query: dict[str, list[str]], admin: bool) -> HttpReply:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return self._readyz()
        handler = self._routes.get(path) if admin else None
        if handler is None:
            return 404, "text/plain", b"not found\n"
        try:
            reply = handler(query)
            return await reply if inspect.isawaitable(reply) else reply
        except Exception as e:  # a bug: the client learns nothing of our internals, the log once per kind
            kind = (path, type(e).__name__)
            if kind in self._failed_routes:
                log.error("HTTP handler for %s failed again: %s", path, type(e).__name__)
            else:
                self._failed_routes.add(kind)
                log.exception("HTTP handler for %s failed", path)
            return 500, "text/plain", b"internal error (see the backend's log)\n"

    async def _metrics(self) -> Exposition:
        """The exposition, built on a worker thread; scrapes that arrive meanwhile share that one, and
        so do those within METRICS_REUSE while a reply still sends it: however many clients read
        slowly, they hold at most WRITE_TIMEOUT / METRICS_REUSE + 1 bodies and cause a build a second."""
        last = self._exposed() if self._exposed is not None else None
        if last is not None and time.monotonic() - last.built < METRICS_REUSE:
            return last
        if self._exposing is None:
            build = asyncio.to_thread(lambda: Exposition(metrics.exposition()))
            self._exposing = asyncio.ensure_future(build)
            self._exposing.add_done_callback(self._exposed_now)
        return await asyncio.shield(self._exposing)

    def _exposed_now(self, built: asyncio.Future[Exposition]) -> None:
        self._exposing = None
        if not built.cancelled() and built.exception() is None:
            self._exposed = weakref.ref(built.result())

    def _readyz(self) -> HttpReply:
        lines = ["ready" if self.ready else "not ready: waiting for the first full sync"]
        lines += [f"{k}: {v}" for k, v in self._detail.items()]
        for name, fn in self._detail_fns.items():
            try:
                value = fn()
            except Exception as e:
                value = f"error: {e}"
            if value is not None:
                lines.append(f"{name}: {value}")
        return (200 if self.ready else 503), "text/plain", ("\n".join(lines) + "\n").encode()


async def _reply(writer: asyncio.StreamWriter, status: int, ctype: str, body: bytes, length: int,
                 slots: HttpSlots) -> None:
    """The response, written a piece (HTTP_PIECE) at a time once the last has drained, all of it within
    WRITE_TIMEOUT: a client that reads slowly or not at all holds at most two pieces in our buffers and
    HTTP_SNDBUF in the kernel's, never the whole body, and is reset when the time is up. While a piece
    waits to drain, `slots` may give the reply's slot to another scrape."""
    head = (f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\nConnection: close\r\n\r\n").encode()
    view = memoryview(body)
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            writer.write(head)
            for start in range(0, len(view), HTTP_PIECE):
                if writer.transport.is_closing():  # reset to make room for a new connection
                    return
                writer.write(view[start:start + HTTP_PIECE])
                slots.waits(writer, True)
                await writer.drain()
                slots.waits(writer, False)
            await writer.drain()
    except (ConnectionError, TimeoutError):
        _reset(writer)
    finally:
        writer.close()
