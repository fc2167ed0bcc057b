"""The backend's side of the answer process (--answer-process): a `GrpcFront` for `DnsServer`.

The backend binds the gRPC socket (or gets it from `coredns-gslb listen`) and passes it to a child that
answers on it (child.py), so the answer loop shares its GIL with nothing but its own compile: not
with the informers' ssl and JSON, the backend's compile, /metrics, edge, peers or the controller
(issue 12). One thread here sends the child the Store's content (whole at the first sync, then the
changed keys, debounced like the compile) and restarts it if it dies (the socket stays open here, so
the port never refuses; a new child gets the whole content again); another reads what the child
sends: NOTIFYs (given to DnsServer's callbacks, on the loop), its readiness, and its metrics each
second (exported here under the usual names, metrics.ANSWER). Nothing the child says changes the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import threading
from typing import Any

from backend import childproc, listener, metrics
from backend.config import Settings
from backend.model import ChangedKeys, Store
from backend.zone.notify import NotifyCallback

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0  # a handed socket is said to be served only once the child answers (or after this)
SYNC_POLL = 0.05  # how often the sender looks for the first full sync


class AnswerProcess(childproc.Supervised):
    """Runs and feeds the answer process; `start`, `drain` and `stop` are DnsServer's (on its loop)."""

    name = "answer"
    meanwhile = "the port stays open"
    RESTART_FIRST = 0.1  # CoreDNS's queries wait meanwhile

    def __init__(self, settings: Settings, store: Store, synced: threading.Event, notify: NotifyCallback,
                 *, debounce: float = 0.015) -> None:
        super().__init__()
        self.settings = settings
        self.store = store
        self.debounce = debounce
        self._synced = synced  # the backend's first full sync: before it the Store is not to be served
        self._notify = notify
        self._child_ready = threading.Event()
        self._drained = threading.Event()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit = ""  # how the last child ended, for /readyz while none runs
        self._grace = 0.0  # how long the child may take to finish its calls once told to stop
        self.changed = ChangedKeys(self._wake)  # Store key listener: the sender thread takes the snapshot
        store.subscribe_keys(self.changed)

    # --- inputs (any thread) ------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """New zones: the child recompiles with them (and a restarted child starts with them)."""
        self.settings = settings
        self.send(("settings", settings))

    def readiness(self) -> str | None:
        """A /readyz line while no answer process runs (it is being restarted)."""
        proc = self._proc
        if self._thread is None or (proc is not None and proc.poll() is None):
            return None
        return f"restarting ({self._exit})" if self._exit else "starting"

    # --- GrpcFront (DnsServer's loop) -----------------------------------------------------------

    @property
    def serving(self) -> bool:
        return self._thread is not None

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Bind host:port (or take `sock`, handed over) and start the child on it. After the first full
        sync (a handed socket is served only from then) return once the child answers."""
        self._loop = asyncio.get_running_loop()
        self._sock = sock if sock is not None else listener.bind(f"{host}:{port}")
        metrics.ANSWER.update([])  # /metrics shows the child's figures from now on
        self.start_child()
        if self._synced.is_set() and not await asyncio.to_thread(self._child_ready.wait, READY_TIMEOUT):
            log.error("the answer process did not answer within %.0f s", READY_TIMEOUT)
        return int(self._sock.getsockname()[1])

    async def drain(self, seconds: float) -> None:
        """The child goes unready and answers until CoreDNS has gone or `seconds` passed."""
        self._drained.clear()
        if self.send(("drain", seconds)):
            await asyncio.to_thread(self._drained.wait, seconds + self.STOP_TIMEOUT)

    async def stop(self, grace: float) -> None:
        """The child stops accepting, says GOAWAY, finishes its calls (up to `grace`) and exits."""
        self._grace = grace
        self._stopping.set()
        self.send(("stop", grace))
        self._wake.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, grace + 2 * self.STOP_TIMEOUT)
        if self._sock is not None:
            self._sock.close()

    # --- the child and its supervision (the sender thread) -------------------------------------

    def spawn(self) -> subprocess.Popen[bytes]:
        assert self._sock is not None
        fd = self._sock.fileno()
        return childproc.spawn("backend.answer", ["--grpc-fd", str(fd)], pass_fds=[fd])

    def end_timeout(self) -> float:
        return self._grace + self.STOP_TIMEOUT

    def ended(self, proc: subprocess.Popen[bytes], restart: bool) -> None:
        self._exit = f"exit {proc.returncode}"
        metrics.ANSWER.retire()
        if restart:
            metrics.ANSWER_RESTARTS.inc()

    def serve(self, proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
        """Start the child, then send it the Store: whole once synced, then the changed keys, until it
        ends or we stop."""
        self._child_ready.clear()
        self._proc = proc
        loaded = False
        # accepting before the first sync answers UNAVAILABLE at once (CoreDNS tries its next upstream);
        # a restart after it accepts once it answers: meanwhile new connections wait in the backlog
        self.send(("start", self.settings, not self._synced.is_set()), proc)
        while not self._stopping.is_set() and reader.is_alive():
            if not loaded:
                if not self._synced.wait(SYNC_POLL):
                    continue
                self.changed.take()  # a change after this comes again
                _, everything = self.store.snapshot()
                self.send(("changes", everything), proc)
                self.send(("ready",), proc)
                loaded = True
                continue
            self._wake.wait(1.0)  # bounded: the reader may end between our check and the wait
            if self._stopping.wait(self.debounce):  # a burst of changes makes one message
                return
            self._wake.clear()
            keys = self.changed.take()
            if keys:
                _, by_key = self.store.snapshot(keys)
                self.send(("changes", {key: by_key.get(key) for key in keys}), proc)

    def receive(self, message: tuple[Any, ...]) -> None:
        """A message of the child's, on the reader thread."""
        kind = message[0]
        if kind == "stats":
            metrics.ANSWER.update(message[1])
        elif kind == "notify" and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are stopping
                self._loop.call_soon_threadsafe(self._notify, message[1], message[2])
        elif kind == "ready":
            self._child_ready.set()
        elif kind == "drained":
            self._drained.set()
