"""The answer process: answers CoreDNS's gRPC from the Store content its parent sends.

    python -m backend.answer --grpc-fd N   (started by `AnswerProcess`, never by hand)

Protocol (pickled tuples, backend/childproc.py). In: first `("start", Settings, accept_unready)`, then
`("changes", {store key: (Endpoint, ...) | None})` (the whole content once, then what changed),
`("ready",)` after the first whole content (until then names in our zones get gRPC UNAVAILABLE),
`("settings", Settings)` (new zones), `("drain", seconds)`, `("stop", grace)`; end of stdin = stop.
Out: `("ready",)` once the first table answers, `("notify", zone, peer)`, `("stats", families)`
every second (metrics.ANSWER's totals since this process started), `("drained",)`.

Threads: the loop answers; one thread reads the parent's messages, the `Compiler`'s thread compiles
(patches too: a 2 ms patch on the loop would hold it, on a thread the loop gets the GIL back every
switch interval), one sends the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
import threading
import time
from typing import Any, BinaryIO

from backend import childproc, metrics
from backend.config import Settings
from backend.model import Endpoint
from backend.server import DnsServer, run_loop
from backend.zone.compiler import Compiler, geo_lookup
from backend.zone.lookup import Table

log = logging.getLogger(__name__)

STATS_INTERVAL = 1.0
STOP_GRACE = 5.0  # at the end of stdin without a "stop"


class Answerer:
    """A `DnsServer` that answers gRPC only, on the parent's socket, from a table of its own."""

    def __init__(self, out: BinaryIO, sock: socket.socket, settings: Settings, accept_unready: bool) -> None:
        self.out = out
        self.sock = sock
        self.accept_unready = accept_unready  # False: accept only once ready (a restart after the sync)
        self.server = DnsServer(settings)
        self.server.on_notify(lambda zone, peer: self.send(("notify", zone, peer)))
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._content: dict[str, tuple[Endpoint, ...]] = {}  # the compile thread's
        self._pending: dict[str, tuple[Endpoint, ...] | None] = {}  # from the parent, not yet compiled
        self._batches = 0
        self._ready = threading.Event()
        self._answering = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.compiler = Compiler(settings, geo_lookup(settings), self._snapshot, self._install,
                                 may_compile=self._ready.is_set)

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            childproc.send(self.out, message)

    async def run(self, inp: BinaryIO) -> None:
        """Answer until the parent says stop (or goes away); then GOAWAY and let calls finish."""
        loop = self._loop = asyncio.get_running_loop()
        self.server.watch_loop()
        if self.accept_unready:
            await self.server.serve_grpc(self.sock)
        stopped: asyncio.Future[float] = loop.create_future()

        def read() -> None:
            grace = STOP_GRACE
            for message in childproc.messages(inp):
                if message[0] == "stop":
                    grace = message[1]
                    break
                self.apply(message)
            loop.call_soon_threadsafe(lambda: stopped.done() or stopped.set_result(grace))

        threading.Thread(target=read, name="answer-commands", daemon=True).start()
        threading.Thread(target=self._send_stats, name="answer-stats", daemon=True).start()
        self.compiler.start()
        grace = await stopped
        await self.server.close(grace)
        self.compiler.stop()

    def apply(self, message: tuple[Any, ...]) -> None:
        """One message from the parent, on the reader thread."""
        kind = message[0]
        if kind == "changes":
            with self._lock:
                self._pending.update(message[1])
            self.compiler.changed(frozenset(message[1]))
        elif kind == "ready":
            self._ready.set()
            self.compiler.poke()
        elif kind == "settings":
            self.server.settings = message[1]
            self.compiler.reconfigure(message[1])
        elif kind == "drain" and self._loop is not None:
            asyncio.run_coroutine_threadsafe(self._drain(message[1]), self._loop)

    async def _drain(self, seconds: float) -> None:
        await self.server.drain(seconds)
        self.send(("drained",))

    def _snapshot(self, _keys: set[str] | None) -> tuple[int, dict[str, tuple[Endpoint, ...]]]:
        """On the compile thread: the content with what arrived since; only this thread writes it (so
        it is handed over whole, not copied)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for key, endpoints in pending.items():
            if endpoints:
                self._content[key] = endpoints
            else:
                self._content.pop(key, None)
        self._batches += 1
        return self._batches, self._content

    def _install(self, table: Table) -> None:
        self.server.set_table(table)
        if not self._answering and self._loop is not None:
            self._answering = True
            asyncio.run_coroutine_threadsafe(self._serve(), self._loop)

    async def _serve(self) -> None:
        if not self.accept_unready:
            await self.server.serve_grpc(self.sock)
        self.send(("ready",))

    def _send_stats(self) -> None:
        while True:
            time.sleep(STATS_INTERVAL)
            self.send(("stats", metrics.ANSWER.local()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grpc-fd", type=int, required=True, help="the listening gRPC socket, passed open")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s answer[%(process)d] %(name)s: "
                        "%(message)s")
    logging.getLogger("backend.server").setLevel(logging.WARNING)  # the parent logs what it serves
    out = childproc.channel()
    inp = sys.stdin.buffer
    start = next(childproc.messages(inp), None)
    if start is None or start[0] != "start":
        sys.exit(f"answer process: expected ('start', ...) first, got {start!r}")
    sock = socket.socket(fileno=a.grpc_fd)
    sock.setblocking(False)
    run_loop(Answerer(out, sock, start[1], start[2]).run(inp), start[1].uvloop)
