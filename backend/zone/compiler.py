"""The compile thread: Endpoints that keep changing -> the next `Table`, handed to whoever answers.

One per answer table: the backend's (app.py: the Store, explain and the conflict Events read its table)
and, with `--answer-process`, the answer process's own (backend/answer/: fed with the Store's changes).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable

from backend.config import Settings
from backend.gslb.strategy import GeoLookup
from backend.model import ChangedKeys, Endpoint
from backend.zone.build import Recompiler, next_serial_in, soa_serial
from backend.zone.lookup import Table

log = logging.getLogger(__name__)

FREEZE_EVERY = 300.0  # seconds between gc.freeze() calls while patches accumulate long-lived objects
# (version, Endpoints by key): every key when given None, else at least those of the keys given
Snapshot = Callable[[set[str] | None], tuple[int, dict[str, tuple[Endpoint, ...]]]]


def geo_lookup(settings: Settings) -> GeoLookup | None:
    """The GeoIP database of --geoip-db, if any (imported only then: maxminddb is not needed otherwise)."""
    if not settings.geoip_db:
        return None
    from backend.gslb.geoip import GeoIP

    return GeoIP(settings.geoip_db, settings.geoip_field)


class Compiler:
    """Recompiles the answer table on a worker thread, coalescing bursts of changes.

    A change only sets an Event (listeners must be cheap); the worker waits `debounce` more so a
    relist or a Deployment rollout costs one compile, not hundreds, then hands the table to `install`.
    Nothing is compiled while `may_compile()` is false (before the first full sync).
    """

    def __init__(self, settings: Settings, geo: GeoLookup | None, snapshot: Snapshot,
                 install: Callable[[Table], None], *, may_compile: Callable[[], bool] = lambda: True,
                 debounce: float = 0.015) -> None:
        self.debounce = debounce
        self.serial = 0
        self.compiles = 0
        self._snapshot = snapshot
        self._install = install
        self._may_compile = may_compile
        self._dirty = threading.Event()
        self.changed = ChangedKeys(self._dirty)  # Store key listener: the compile looks at these keys only
        self._stop = threading.Event()
        self._recompiler = Recompiler(settings, geo)
        self._next_freeze = 0.0
        self._settings: Settings | None = None  # new zones for the next compile
        self._thread = threading.Thread(target=self._run, name="compiler", daemon=True)

    def poke(self, _version: int = 0) -> None:
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
            if not self._may_compile():
                self._stop.wait(0.05)
                continue
            self._compile()
            # a change, or the next hour's SOA serial, which every server of the zone moves to at once
            self._dirty.wait(next_serial_in())
            if self._stop.wait(self.debounce):
                return

    def _compile(self) -> None:
        self._dirty.clear()
        settings, self._settings = self._settings, None
        if settings is not None:
            self._recompiler.reconfigure(settings)
        keys = self.changed.take()
        # a change after the keys are taken comes again; only the first compile reads every key
        version, by_key = self._snapshot(None if self._recompiler.reads_all else keys)
        self.serial = soa_serial(self.serial)
        start = time.perf_counter()
        try:
            table = self._recompiler.compile(by_key, self.serial, keys)
        except Exception:  # keep serving the previous table; the next change retries
            log.exception("compiling version %d failed", version)
            return
        self._install(table)
        self.compiles += 1
        if time.monotonic() >= self._next_freeze:
            # Out of the collector's sight from now on: what patches made since the last full compile
            # (which freezes everything itself) is long-lived too, and a full collection over it holds
            # the GIL, so the answer loop, for all of it. Later garbage is collected as usual.
            gc.freeze()
            self._next_freeze = time.monotonic() + FREEZE_EVERY
        log.debug("table serial %d from version %d: %d records in %.1f ms", self.serial, version,
                  table.records, (time.perf_counter() - start) * 1000)
