"""`coredns-gslb listen`: the backend's listening sockets, held across backend restarts and rollouts.

Why: CoreDNS's gRPC client (grpc-go) backs off its reconnects while the port refuses connections
(1 s, growing 1.6x up to 120 s), so after a restart that followed 30 s of downtime answers came back
11 s after the backend was ready. Here the port never refuses:

- The holder binds the gRPC, HTTP and admin addresses once and hands the sockets (SCM_RIGHTS over the
  unix socket `--listener-socket`) to every `serve --listener-socket PATH` that connects.
- While no backend serves, the holder answers every call itself with gRPC UNAVAILABLE ("standby"): CoreDNS
  keeps a live connection (no back-off) and uses its next upstream, or says SERVFAIL if it has none.
- A backend says `serving` once its first full sync is done and it accepts on the gRPC socket; the
  holder then stops accepting and sends GOAWAY, and CoreDNS reconnects at once (grpc-go resets its
  back-off after a connection that was ready), to the backend.
- A newer backend serving makes the holder tell the older ones `handover`: they stop accepting, send
  GOAWAY, finish the calls in flight and exit. Start a new `serve` beside the old one: that is a rollout
  without a lost answer. A backend that stops says `stopping` (or its connection ends): the standby
  answers again unless another backend serves.

The wire: the holder sends one line `fds grpc[,http[,admin]]\\n` carrying the descriptors; then lines
`serving` / `stopping` (backend to holder) and `handover` (holder to backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.config import Settings, from_args
from backend.h2grpc import GRPC_UNAVAILABLE, GrpcError, H2GrpcServer

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0  # how long a backend waits for the holder (its container may start later)
SHUTDOWN_WAIT = 25.0  # the holder outlives its backends' drain at shutdown, up to this long


def bind(address: str) -> socket.socket:
    """A listening TCP socket on "host:port" (no SO_REUSEPORT: no other process may share the port)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _standby(_msg: bytes, _peer: str) -> bytes:
    raise GrpcError(GRPC_UNAVAILABLE, "no backend serving yet")


@dataclass
class _Backend:
    writer: asyncio.StreamWriter
    number: int
    serving: bool = False


@dataclass
class Holder:
    """Binds the sockets, runs the standby, and hands the sockets to backends (see the module doc)."""

    settings: Settings
    path: str
    sockets: dict[str, socket.socket] = field(default_factory=dict)
    backends: list[_Backend] = field(default_factory=list)
    _standby: H2GrpcServer | None = None
    _count: int = 0

    def bind(self) -> None:
        self.sockets["grpc"] = bind(self.settings.grpc_listen)
        self.sockets["http"] = bind(self.settings.http_listen)
        if self.settings.admin_listen:
            self.sockets["admin"] = bind(self.settings.admin_listen)

    async def run(self, stop: asyncio.Event) -> None:
        if not self.sockets:
            self.bind()
        await self._standby_on()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        control = await asyncio.start_unix_server(self._serve_backend, self.path)
        log.info("holding gRPC %s, HTTP %s, admin %s for backends on %s", self.settings.grpc_listen,
                 self.settings.http_listen, self.settings.admin_listen or "-", self.path)
        try:
            await stop.wait()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + SHUTDOWN_WAIT
            while self.backends and loop.time() < deadline:  # let them drain on sockets that stay open
                await asyncio.sleep(0.1)
        finally:
            control.close()
            await self._standby_off()
            for sock in self.sockets.values():
                sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _standby_on(self) -> None:
        if self._standby is None:
            self._standby = H2GrpcServer(_standby)
            await self._standby.start("", 0, sock=socket.socket(fileno=os.dup(self.sockets["grpc"].fileno())))
            log.info("no backend serving: answering gRPC UNAVAILABLE meanwhile")

    async def _standby_off(self) -> None:
        standby, self._standby = self._standby, None
        if standby is not None:
            await standby.stop(1.0)  # closes only our duplicate of the socket; GOAWAY to CoreDNS

    async def _serve_backend(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        backend = _Backend(writer, self._count)
        names = list(self.sockets)
        raw = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))
        try:  # a few bytes on a fresh unix socket: never blocks
            fds = [s.fileno() for s in self.sockets.values()]
            socket.send_fds(raw, [f"fds {','.join(names)}\n".encode()], fds)
        except OSError as e:
            log.warning("handing the sockets to backend %d failed: %s", backend.number, e)
            writer.close()
            return
        finally:
            raw.close()
        self.backends.append(backend)
        log.info("backend %d connected", backend.number)
        try:
            while line := await reader.readline():
                word = line.strip().decode(errors="replace")
                if word == "serving":
                    await self._serving(backend)
                elif word == "stopping":
                    await self._gone(backend, "stopping")
        except ConnectionError:
            pass
        finally:
            if backend in self.backends:
                self.backends.remove(backend)
                await self._gone(backend, "disconnected")
            writer.close()

    async def _serving(self, backend: _Backend) -> None:
        log.info("backend %d serving", backend.number)
        backend.serving = True
        for older in self.backends:
            if older is not backend and older.serving:
                log.info("backend %d hands over to backend %d", older.number, backend.number)
                older.serving = False
                with contextlib.suppress(ConnectionError):
                    older.writer.write(b"handover\n")
        await self._standby_off()

    async def _gone(self, backend: _Backend, why: str) -> None:
        if backend.serving or why == "disconnected":
            log.info("backend %d %s", backend.number, why)
        backend.serving = False
        if not any(b.serving for b in self.backends):
            await self._standby_on()


@dataclass
class Handoff:
    """A backend's side: the sockets it got and the line channel to the holder."""

    sockets: dict[str, socket.socket]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def say(self, word: str) -> None:
        if not self.writer.is_closing():
            self.writer.write(word.encode() + b"\n")


async def receive(path: str, timeout: float = CONNECT_TIMEOUT) -> Handoff:
    """Connect to the holder at `path` (waiting for it up to `timeout`) and take its sockets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            break
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if loop.time() >= deadline:
                raise RuntimeError(f"no `coredns-gslb listen` at {path}: {e}") from e
            await asyncio.sleep(0.1)
    sock.settimeout(timeout)
    msg, fds, _flags, _addr = await asyncio.to_thread(socket.recv_fds, sock, 1024, 8)
    words = msg.decode().split()
    if len(words) != 2 or words[0] != "fds" or len(words[1].split(",")) != len(fds):
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"unexpected hand-off from {path}: {msg!r}")
    sockets = {name: socket.socket(fileno=fd) for name, fd in zip(words[1].split(","), fds, strict=True)}
    for s in sockets.values():
        s.setblocking(False)
    sock.setblocking(False)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    return Handoff(sockets, reader, writer)


def main(argv: Sequence[str]) -> int:
    """`coredns-gslb listen --listener-socket PATH [serve's --grpc-listen/--http-listen/--admin-listen]`."""
    settings = from_args(argv)
    if not settings.listener_socket:
        print("listen needs --listener-socket PATH (env LISTENER_SOCKET)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Holder(settings, settings.listener_socket).run(stop)

    asyncio.run(run())
    return 0
