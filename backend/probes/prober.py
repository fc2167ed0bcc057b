"""Active probes of every GSLB target this cluster knows, run in a process of their own.

Inputs: the GSLB engine's results (the probe config and this cluster's exposed addresses of each host,
healthy or not) and the peer exchange's raw targets (what each peer reports healthy, including targets
it keeps past the grace). Output: a verdict per (host, address), read by the engine and the peer
exchange when they write Endpoints, and a callback with the hosts whose verdict flipped. The prober
never reads the Store or the answer table, so its own verdicts cannot remove what it probes.

The probing itself runs in `worker.py`'s process (the GIL stays with the answer loop); here are the
inputs, the verdicts and the supervision: a thread tells the worker the wanted targets, another reads
its verdict flips and figures. A new target starts as passing (a backend restart must not withdraw every
answer before the first probes are in). A worker that dies is started again (0.5 s, doubling to 30 s);
meanwhile and after, every verdict stays as last known: a dead prober is no news about the targets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from backend import childproc, metrics
from backend.config import Settings
from backend.probes.config import ProbeConfig
from backend.probes.worker import MAX_IN_FLIGHT, Key, ProbeState, Target

log = logging.getLogger(__name__)

ProbeTargets = Mapping[str, tuple[ProbeConfig, tuple[str, ...]]]  # one Gslb's host -> (config, addresses)
Listener = Callable[[frozenset[str]], None]
REPORT_TIMEOUT = 2.0


class Prober(childproc.Supervised):
    """`start()` runs the worker process and its supervisor; `verdict(host, address)` is safe from any
    thread."""

    name = "prober"
    meanwhile = "verdicts stay as they were"

    def __init__(self, settings: Settings, *, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        super().__init__()
        self.geotag = settings.cluster_geotag
        self.address_map = {a: (ip, port) for a, ip, port in settings.probe_address_map}
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._local: dict[str, dict[str, tuple[ProbeConfig, tuple[str, ...]]]] = {}  # Gslb key -> host -> ...
        self._peers: dict[str, dict[str, tuple[str, ...]]] = {}  # geotag -> host -> addresses
        self._verdicts: dict[Key, bool] = {}
        self._targets: dict[Key, tuple[ProbeConfig, str, tuple[str, int]]] = {}  # what the worker probes
        self._listeners: list[Listener] = []
        self._requests = itertools.count()
        self._replies: dict[int, tuple[threading.Event, list[list[dict[str, Any]]]]] = {}
        self.summary: dict[str, int] = {}  # the worker's last figures: targets, unprobed, failing, checks

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
        self._wake.set()

    def set_peer(self, geotag: str, targets: Mapping[str, Iterable[str]]) -> None:
        """The peer exchange's raw targets of one peer: host -> addresses."""
        new = {host: tuple(sorted(set(values))) for host, values in targets.items()}
        with self._lock:
            if self._peers.get(geotag, {}) == new:
                return
            self._peers[geotag] = new
        self._wake.set()

    def subscribe(self, listener: Listener) -> None:
        """`listener(hosts)` after verdicts of those hosts flipped; runs on one of the prober's threads."""
        self._listeners.append(listener)

    # --- outputs (any thread) -----------------------------------------------------------------

    def verdict(self, host: str, address: str) -> bool | None:
        """True: probes pass (or none ran yet); False: withdrawn; None: this target is not probed."""
        return self._verdicts.get((host, address))

    def probed(self, host: str) -> bool:
        with self._lock:
            return any(host in hosts for hosts in self._local.values())

    def report(self, host: str) -> list[dict[str, Any]]:
        """The probe states of one host, for `explain` (asks the worker; blocks up to REPORT_TIMEOUT)."""
        request = next(self._requests)
        done, reply = threading.Event(), []
        self._replies[request] = (done, reply)
        try:
            if self.send(("report", request, host)) and done.wait(REPORT_TIMEOUT) and reply:
                return reply[0]
        finally:
            self._replies.pop(request, None)
        now = time.time()
        with self._lock:  # no worker to ask: what is known here
            known = [ProbeState(h, a, geotag, config, connect, self._verdicts.get((h, a)) is not False)
                     for (h, a), (config, geotag, connect) in self._targets.items() if h == host]
        return [st.report(now) | {"last": "unknown: the prober process is restarting", "last_seconds_ago": 0}
                for st in sorted(known, key=lambda st: (st.geotag, st.address))]

    # --- the worker and its supervision --------------------------------------------------------

    def start(self) -> None:
        self.start_child()

    def stop(self) -> None:
        """End the worker (end of its stdin, then SIGKILL after STOP_TIMEOUT) and the supervisor."""
        self._stopping.set()
        self._wake.set()  # inputs changed, the worker ended, or stop()
        if self._thread is not None:
            self._thread.join(self.STOP_TIMEOUT + 1)

    def spawn(self) -> subprocess.Popen[bytes]:
        return childproc.spawn("backend.probes", ["--max-in-flight", str(self.max_in_flight)])

    def serve(self, proc: subprocess.Popen[bytes], reader: threading.Thread) -> None:
        self._sync(proc, everything=True)
        self._proc = proc  # others may ask it now: it knows its targets
        while not self._stopping.is_set() and reader.is_alive():
            self._wake.wait(1.0)  # bounded: the reader may end between our check and the wait
            self._wake.clear()
            if reader.is_alive() and not self._stopping.is_set():
                self._sync(proc)

    def ended(self, proc: subprocess.Popen[bytes], restart: bool) -> None:
        metrics.PROBE_STATS.retire()
        for done, _ in list(self._replies.values()):
            done.set()
        if restart:
            metrics.PROBE_RESTARTS.inc()

    def receive(self, message: tuple[Any, ...]) -> None:
        """A message of the worker's, on the reader thread."""
        if message[0] == "flips":
            self._apply_flips(message[1])
        elif message[0] == "stats":
            metrics.PROBE_STATS.update(message[1], message[2])
            self.summary = message[3]
        elif message[0] == "report" and message[1] in self._replies:
            done, reply = self._replies[message[1]]
            reply.append(message[2])
            done.set()

    def _desired(self) -> dict[Key, tuple[ProbeConfig, str, tuple[str, int]]]:
        """The targets to probe now: (host, address) -> (config, geotag, where to connect)."""
        with self._lock:
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
        out = {}
        for (host, address), (config, geotag) in want.items():
            if self.address_map and address not in self.address_map:
                continue  # the lab's map names what may be contacted: answer data never is
            mapped, port = self.address_map.get(address, (address, None))
            out[host, address] = (config, geotag, (mapped, port or config.port))
        return out

    def _sync(self, proc: subprocess.Popen[bytes], *, everything: bool = False) -> None:
        """Tell the worker the wanted targets (on the supervisor thread); forget the verdicts of targets
        no longer probed (no longer probed: no longer withdrawn)."""
        want = self._desired()
        changed: set[str] = set()
        with self._lock:
            if want == self._targets and not everything:
                return
            for key in [k for k in self._targets if k not in want]:
                geotag = self._targets.pop(key)[1]
                if self._verdicts.pop(key, None) is False:
                    changed.add(key[0])
                with contextlib.suppress(KeyError):
                    metrics.PROBE_UP.remove(*key, geotag)
            for key, target in want.items():
                if key not in self._verdicts:
                    self._verdicts[key] = True
                    metrics.PROBE_UP.labels(*key, target[1]).set(1)
                elif key in self._targets and self._targets[key][1] != target[1]:
                    metrics.PROBE_UP.remove(*key, self._targets[key][1])
                    metrics.PROBE_UP.labels(*key, target[1]).set(int(self._verdicts[key]))
            self._targets = want
            message: dict[Key, Target] = {k: (*t, self._verdicts[k]) for k, t in want.items()}
        self.send(("targets", message), proc)
        self._notify(changed)

    def _apply_flips(self, flips: list[tuple[str, str, bool, str]]) -> None:
        changed: set[str] = set()
        with self._lock:
            for host, address, up, error in flips:
                target = self._targets.get((host, address))
                if target is None or self._verdicts.get((host, address)) == up:
                    continue  # no longer probed, or already so
                config, geotag, _ = target
                self._verdicts[host, address] = up
                metrics.PROBE_UP.labels(host, address, geotag).set(int(up))
                metrics.PROBE_TRANSITIONS.labels(geotag, "pass" if up else "fail").inc()
                log.warning("probe %s of %s (%s): %s after %d results -> %s", config.url(address), host,
                            geotag, error or "passing again", config.failures,
                            "served" if up else "withdrawn")
                changed.add(host)
        self._notify(changed)

    def _notify(self, hosts: set[str]) -> None:
        if not hosts:
            return
        frozen = frozenset(hosts)
        for listener in self._listeners:
            try:
                listener(frozen)
            except Exception:
                log.exception("probe listener %s failed", listener)
