"""Active probes of every GSLB target this cluster knows, on a thread and event loop of their own.

Inputs: the GSLB engine's results (the probe config and this cluster's exposed addresses of each host,
healthy or not) and the peer exchange's raw targets (what each peer reports healthy, including targets
it keeps past the grace). Output: a verdict per (host, address), read by the engine and the peer
exchange when they write Endpoints, and a callback with the hosts whose verdict flipped. The prober
never reads the Store or the answer table, so its own verdicts cannot remove what it probes.

Each target has its own task: probe every `interval`, flip the verdict after `failures` consecutive
results that contradict it (failures withdraw, successes bring back). A new target starts as passing:
a backend restart must not withdraw every answer before the first probes are in. A semaphore bounds
the probes in flight; a probe that hangs holds one slot until its timeout and delays no other target.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backend import metrics
from backend.config import Settings
from backend.probes.check import check
from backend.probes.config import ProbeConfig

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (host, exposed address)
ProbeTargets = Mapping[str, tuple[ProbeConfig, tuple[str, ...]]]  # one Gslb's host -> (config, addresses)
Listener = Callable[[frozenset[str]], None]
MAX_IN_FLIGHT = 256


@dataclass
class ProbeState:
    """One target's probing: its config, where connections go, the verdict and the evidence for it."""

    host: str
    address: str
    geotag: str
    config: ProbeConfig
    connect: tuple[str, int]
    up: bool = True  # the verdict: served while True
    streak: int = 0  # consecutive results that contradict the verdict
    last_error: str | None = None  # None: not probed yet; "": the last probe passed
    last_at: float | None = None  # time.time() of the last result
    last_seconds: float = 0.0
    checks: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    def report(self, now: float) -> dict[str, Any]:
        return {"address": self.address, "geotag": self.geotag, "url": self.config.url(self.address),
                "connect": None if self.connect == (self.address, self.config.port)
                else f"{self.connect[0]}:{self.connect[1]}", "verdict": "pass" if self.up else "fail",
                "last": None if self.last_error is None else self.last_error or "ok",
                "streak": self.streak, "failures": self.config.failures, "interval": self.config.interval,
                "checks": self.checks,
                "last_seconds_ago": None if self.last_at is None else round(now - self.last_at, 1)}


class Prober:
    """`start()` runs the probe loop on its own thread; `verdict(host, address)` is safe from any thread."""

    def __init__(self, settings: Settings, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.geotag = settings.cluster_geotag
        self.address_map = {a: (ip, port) for a, ip, port in settings.probe_address_map}
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._local: dict[str, dict[str, tuple[ProbeConfig, tuple[str, ...]]]] = {}  # Gslb key -> host -> ...
        self._peers: dict[str, dict[str, tuple[str, ...]]] = {}  # geotag -> host -> addresses
        self._verdicts: dict[Key, bool] = {}
        self.states: dict[Key, ProbeState] = {}  # changed only on the probe loop
        self._listeners: list[Listener] = []
        self._changed: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limit: asyncio.Semaphore | None = None
        self._thread: threading.Thread | None = None
        self._sync_pending = False

    # --- inputs (any thread) ------------------------------------------------------------------

    def on_gslb(self, key: str, hosts: ProbeTargets) -> None:
        """One Gslb's probe config and this cluster's addresses per host (gslb/engine.py's
        `probe_targets`); empty once it is gone or no longer probed."""
        new = dict(hosts)
        with self._lock:
            if self._local.get(key, {}) == new:
                return
            if new:
                self._local[key] = new
            else:
                self._local.pop(key, None)
        self._schedule_sync()

    def set_peer(self, geotag: str, targets: Mapping[str, Iterable[str]]) -> None:
        """The peer exchange's raw targets of one peer: host -> addresses."""
        new = {host: tuple(sorted(set(values))) for host, values in targets.items()}
        with self._lock:
            if self._peers.get(geotag, {}) == new:
                return
            self._peers[geotag] = new
        self._schedule_sync()

    def subscribe(self, listener: Listener) -> None:
        """`listener(hosts)` after verdicts of those hosts flipped; runs on the probe thread."""
        self._listeners.append(listener)

    # --- outputs (any thread) -----------------------------------------------------------------

    def verdict(self, host: str, address: str) -> bool | None:
        """True: probes pass (or none ran yet); False: withdrawn; None: this target is not probed."""
        return self._verdicts.get((host, address))

    def probed(self, host: str) -> bool:
        with self._lock:
            return any(host in hosts for hosts in self._local.values())

    def report(self, host: str) -> list[dict[str, Any]]:
        """The probe states of one host, for `explain`."""
        now = time.time()
        states = sorted(list(self.states.values()), key=lambda s: (s.geotag, s.address))
        return [st.report(now) for st in states if st.host == host]

    # --- the probe loop -----------------------------------------------------------------------

    def start(self) -> None:
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop, self._limit = loop, asyncio.Semaphore(self.max_in_flight)
            loop.call_soon(started.set)
            loop.call_soon(self._sync)
            try:
                loop.run_forever()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="prober", daemon=True)
        self._thread.start()
        started.wait(5)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # already closed
                self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def _schedule_sync(self) -> None:
        with self._lock:
            if self._sync_pending or self._loop is None:
                return
            self._sync_pending = True
        with contextlib.suppress(RuntimeError):  # stopped
            self._loop.call_soon_threadsafe(self._sync)

    def _desired(self) -> dict[Key, tuple[ProbeConfig, str]]:
        with self._lock:
            self._sync_pending = False
            configs: dict[str, ProbeConfig] = {}
            want: dict[Key, tuple[ProbeConfig, str]] = {}
            for key in sorted(self._local):  # a host in two Gslbs: the first key's config
                for host, (config, addresses) in self._local[key].items():
                    config = configs.setdefault(host, config)
                    for address in addresses:
                        want.setdefault((host, address), (config, self.geotag))
            for geotag in sorted(self._peers):
                for host, addresses in self._peers[geotag].items():
                    if host in configs:
                        for address in addresses:
                            want.setdefault((host, address), (configs[host], geotag))
            return want

    def _sync(self) -> None:
        """Start, retune and stop per-target tasks to match the inputs (on the probe loop)."""
        want = self._desired()
        if self.address_map:  # the lab's map names what may be contacted: answer data never is
            want = {k: v for k, v in want.items() if k[1] in self.address_map}
        for key in [k for k in self.states if k not in want]:
            st = self.states.pop(key)
            if self._verdicts.pop(key, None) is False:  # no longer probed: no longer withdrawn
                self._changed_host(st.host)
            if st.task is not None:
                st.task.cancel()
            with contextlib.suppress(KeyError):
                metrics.PROBE_UP.remove(st.host, st.address, st.geotag)
        for key, (config, geotag) in want.items():
            st = self.states.get(key)
            if st is not None and st.config == config and st.geotag == geotag:
                continue
            host, address = key
            mapped, port = self.address_map.get(address, (address, None))
            if st is None:
                st = ProbeState(host, address, geotag, config, (mapped, port or config.port))
                self.states[key] = st
                self._verdicts[key] = True
                metrics.PROBE_UP.labels(host, address, geotag).set(1)
            else:  # new config: keep the verdict, start counting afresh
                if st.task is not None:
                    st.task.cancel()
                st.config, st.geotag, st.streak = config, geotag, 0
                st.connect = (mapped, port or config.port)
            st.task = asyncio.ensure_future(self._run(st))

    async def _run(self, st: ProbeState) -> None:
        assert self._loop is not None and self._limit is not None
        await asyncio.sleep(random.uniform(0, st.config.interval))  # spread targets over the interval
        while True:
            began = self._loop.time()
            async with self._limit:
                t0 = time.perf_counter()
                try:
                    error = await check(st.config, st.host, st.connect)
                except Exception as e:  # a bug in one probe must not end this target's probing
                    log.exception("probe %s %s", st.host, st.address)
                    error = f"{type(e).__name__}: {e}"
                self._record(st, error, time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, st.config.interval - (self._loop.time() - began)))

    def _record(self, st: ProbeState, error: str, seconds: float) -> None:
        st.checks += 1
        st.last_error, st.last_at, st.last_seconds = error, time.time(), seconds
        result = "ok" if not error else "timeout" if error.startswith("timeout") else "failed"
        metrics.PROBE_CHECKS.labels(st.geotag, result).inc()
        metrics.PROBE_DURATION.labels(st.geotag).observe(seconds)
        if (not error) == st.up:
            st.streak = 0
            return
        st.streak += 1
        if st.streak < st.config.failures:
            return
        st.up, st.streak = not st.up, 0
        self._verdicts[(st.host, st.address)] = st.up
        metrics.PROBE_UP.labels(st.host, st.address, st.geotag).set(int(st.up))
        metrics.PROBE_TRANSITIONS.labels(st.geotag, "pass" if st.up else "fail").inc()
        log.warning("probe %s of %s (%s): %s after %d results -> %s", st.config.url(st.address), st.host,
                    st.geotag, error or "passing again", st.config.failures,
                    "served" if st.up else "withdrawn")
        self._changed_host(st.host)

    def _changed_host(self, host: str) -> None:
        """Tell the listeners soon, once for every host that changed in this pass of the loop."""
        if not self._changed:
            assert self._loop is not None
            self._loop.call_soon(self._flush)
        self._changed.add(host)

    def _flush(self) -> None:
        hosts, self._changed = frozenset(self._changed), set()
        for listener in self._listeners:
            try:
                listener(hosts)
            except Exception:
                log.exception("probe listener %s failed", listener)
