"""The gRPC DnsService CoreDNS's grpc plugin calls, and the small HTTP server beside it
(/healthz, /readyz, /metrics and routes other components add, such as /explain).

The server holds the current `Table` and swaps it atomically; answering is `Table.resolve` plus a
metrics increment, all on the event loop thread (the table never blocks).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from backend import metrics
from backend.config import Settings
from backend.h2grpc import H2GrpcServer
from backend.zone.table import NotifyCallback, Table

log = logging.getLogger(__name__)

HttpReply = tuple[int, str, bytes]  # status, content type, body
HttpHandler = Callable[[dict[str, list[str]]], HttpReply | Awaitable[HttpReply]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


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
        self._grpc: H2GrpcServer | None = None
        self._http: asyncio.Server | None = None
        self.grpc_port = 0
        self.http_port = 0

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

    def add_readiness_detail(self, name: str, fn: Callable[[], str | None]) -> None:
        """A line `name: fn()` in /readyz (e.g. the edge updater's last error); None hides it."""
        self._detail_fns[name] = fn

    def add_route(self, path: str, handler: HttpHandler) -> None:
        """Serve GET `path` with `handler(query_params) -> (status, content_type, body)`, sync or async."""
        self._routes[path] = handler

    def on_notify(self, callback: NotifyCallback) -> None:
        """Called with (zone, peer) for every DNS NOTIFY for a served zone."""
        self._notify.append(callback)

    # -- DNS ---------------------------------------------------------------------------------

    def handle(self, msg: bytes, peer: str = "") -> bytes:
        start = time.perf_counter()
        if len(msg) > 2 and (msg[2] >> 3) & 0xF == 4:  # NOTIFY: rare, worth the callback plumbing
            reply, zone, qtype = self.table.resolve(msg, self._notified, peer)
        else:
            reply, zone, qtype = self.table.resolve(msg)
        metrics.QUERIES.observe(zone, qtype, reply[3] & 0xF, time.perf_counter() - start)
        return reply

    def _notified(self, zone: str, peer: str) -> None:
        log.info("NOTIFY for %s from %s", zone, peer)
        for callback in self._notify:
            callback(zone, peer)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._grpc = H2GrpcServer(self.handle)
        self.grpc_port = await self._grpc.start(*split_hostport(self.settings.grpc_listen))
        host, port = split_hostport(self.settings.http_listen)
        self._http = await asyncio.start_server(self._serve_http, host, port)
        self.http_port = self._http.sockets[0].getsockname()[1]
        log.info("serving DNS over gRPC on port %d, HTTP on port %d", self.grpc_port, self.http_port)

    async def stop(self, grace: float = 5.0) -> None:
        """Go unready first (so probes drain traffic away), then let in-flight queries finish."""
        self.ready = False
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._http is not None:
            self._http.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._http.wait_closed(), grace)
            self._http = None

    # -- HTTP --------------------------------------------------------------------------------

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            if method not in ("GET", "HEAD"):
                status, ctype, body = 400, "text/plain", b"only GET\n"
            else:
                status, ctype, body = await self._route(url.path, parse_qs(url.query))
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError):
            status, ctype, body, method = 400, "text/plain", b"bad request\n", "GET"
        try:
            writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _route(self, path: str, query: dict[str, list[str]]) -> HttpReply:
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            return self._readyz()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY)
        handler = self._routes.get(path)
        if handler is None:
            return 404, "text/plain", b"not found\n"
        try:
            reply = handler(query)
            return await reply if inspect.isawaitable(reply) else reply
        except Exception as e:
            log.exception("HTTP handler for %s failed", path)
            return 500, "text/plain", f"{type(e).__name__}: {e}\n".encode()

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
