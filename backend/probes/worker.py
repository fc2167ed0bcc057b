"""The prober's own process: probes every target it is given and reports verdict flips back.

    python -m backend.probes [--max-in-flight N]   (started by `Prober`, never by hand)

Why a process: 1,000 targets at 2 s are 500 probes a second; on a thread of the backend they shared
the GIL with the loop that answers CoreDNS and stretched its worst timer lag past 20 ms (issue 15).
Here they hold only this process's GIL.

Protocol: pickled tuples on stdin/stdout (parent and child are the same code). In:
`("targets", {key: Target})` (the whole wanted set; a target new to this process starts from the verdict
given, so a restarted worker resumes the last known verdicts), `("report", id, host)`. Out:
`("flips", [(host, address, up, error)])` once per pass of the loop, `("stats", checks, durations,
summary)` every second (totals since this process started), `("report", id, [state, ...])`.
End of stdin (the backend stopped or died) ends the process.

Each target has its own task: probe every `interval`, flip the verdict after `failures` consecutive
results that contradict it (failures withdraw, successes bring back). A semaphore bounds the probes in
flight; a probe that hangs holds one slot until its timeout and delays no other target.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import logging
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from backend import childproc
from backend.metrics import PROBE_BUCKETS, ProbeChecks, ProbeDurations
from backend.probes.check import check
from backend.probes.config import ProbeConfig

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (host, exposed address)
Target = tuple[ProbeConfig, str, tuple[str, int], bool]  # config, geotag, where to connect, starting verdict
MAX_IN_FLIGHT = 256
STATS_INTERVAL = 1.0
NICE = 10  # on a busy node the backend's answer loop gets the CPU first; a probe's 1 s timeout has room


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


class Worker:
    """The probe loop; `apply(message)` runs on it, everything it sends goes out from it."""

    def __init__(self, out: BinaryIO, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.out = out
        self.states: dict[Key, ProbeState] = {}
        self._limit = asyncio.Semaphore(max_in_flight)
        self._flips: list[tuple[str, str, bool, str]] = []
        self._checks: ProbeChecks = {}
        self._durations: ProbeDurations = {}

    def send(self, message: tuple[Any, ...]) -> None:
        childproc.send(self.out, message)

    async def run(self, inp: BinaryIO) -> None:
        """Serve messages from `inp` until it ends; then stop every probe."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def read() -> None:
            for message in childproc.messages(inp):
                loop.call_soon_threadsafe(self.apply, message)
            loop.call_soon_threadsafe(ended.set)

        threading.Thread(target=read, name="probe-commands", daemon=True).start()
        stats = asyncio.ensure_future(self._send_stats())
        await ended.wait()
        tasks = [st.task for st in self.states.values() if st.task is not None] + [stats]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def apply(self, message: tuple[Any, ...]) -> None:
        if message[0] == "targets":
            self.set_targets(message[1])
        elif message[0] == "report":
            _, request, host = message
            now = time.time()
            states = sorted((s for s in self.states.values() if s.host == host),
                            key=lambda s: (s.geotag, s.address))
            self.send(("report", request, [st.report(now) for st in states]))

    def set_targets(self, targets: dict[Key, Target]) -> None:
        """Start, retune and stop per-target tasks to match `targets`."""
        for key in [k for k in self.states if k not in targets]:
            st = self.states.pop(key)
            if st.task is not None:
                st.task.cancel()
        for key, (config, geotag, connect, up) in targets.items():
            st = self.states.get(key)
            if st is not None and (st.config, st.geotag, st.connect) == (config, geotag, connect):
                continue
            if st is None:
                st = ProbeState(*key, geotag, config, connect, up)
                self.states[key] = st
            else:  # new config: keep the verdict, start counting afresh
                if st.task is not None:
                    st.task.cancel()
                st.config, st.geotag, st.connect, st.streak = config, geotag, connect, 0
            st.task = asyncio.ensure_future(self._run(st))

    async def _run(self, st: ProbeState) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, st.config.interval))  # spread targets over the interval
        while True:
            began = loop.time()
            async with self._limit:
                t0 = time.perf_counter()
                try:
                    error = await check(st.config, st.host, st.connect)
                except Exception as e:  # a bug in one probe must not end this target's probing
                    log.exception("probe %s %s", st.host, st.address)
                    error = f"{type(e).__name__}: {e}"
                self._record(st, error, time.perf_counter() - t0)
            await asyncio.sleep(max(0.0, st.config.interval - (loop.time() - began)))

    def _record(self, st: ProbeState, error: str, seconds: float) -> None:
        st.checks += 1
        st.last_error, st.last_at, st.last_seconds = error, time.time(), seconds
        result = "ok" if not error else "timeout" if error.startswith("timeout") else "failed"
        self._checks[st.geotag, result] = self._checks.get((st.geotag, result), 0) + 1
        buckets, total = self._durations.get(st.geotag) or ([0] * (len(PROBE_BUCKETS) + 1), 0.0)
        buckets[bisect.bisect_left(PROBE_BUCKETS, seconds)] += 1
        self._durations[st.geotag] = (buckets, total + seconds)
        if (not error) == st.up:
            st.streak = 0
            return
        st.streak += 1
        if st.streak < st.config.failures:
            return
        st.up, st.streak = not st.up, 0
        if not self._flips:
            asyncio.get_running_loop().call_soon(self._send_flips)
        self._flips.append((st.host, st.address, st.up, error))

    def _send_flips(self) -> None:
        flips, self._flips = self._flips, []
        self.send(("flips", flips))

    async def _send_stats(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            states = self.states.values()
            summary = {"targets": len(states), "unprobed": sum(1 for st in states if not st.checks),
                       "failing": sum(1 for st in states if st.last_error),
                       "checks": sum(st.checks for st in states)}
            self.send(("stats", dict(self._checks),
                       {g: (list(b), s) for g, (b, s) in self._durations.items()}, summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-in-flight", type=int, default=MAX_IN_FLIGHT)
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s prober[%(process)d] %(name)s: "
                        "%(message)s")
    out = childproc.channel()
    os.nice(NICE)
    asyncio.run(Worker(out, a.max_in_flight).run(sys.stdin.buffer))
