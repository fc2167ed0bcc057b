"""1,000 probed GSLB targets at a 2 s interval: how late the answer loop's timers run meanwhile.

    .venv/bin/python -m bench.probes [--targets 1000] [--seconds 20]

The Prober runs as in the backend (its worker process, supervised from this one) against the lab's
stand-in data plane (`lab/dataplane.py`, a child process); every target is a distinct exposed
address mapped to it with the lab-only address map. On this process's main event loop (where the
backend answers DNS) a timer due every 10 ms records how late it fires: the loop lag. Measured the same
way with no probes (the baseline), then with them. A running backend exports the same kind of figure as
coredns_gslb_loop_lag_seconds (issue 12); here the Prober is driven from this process, so the timer is
ours. Also the CPU (cores) of this process (the backend's share), of the prober's process and of the
data plane over the window, and the load average before and after. Goal (issue 15): lag <= 20 ms with
1,000 targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from backend.config import GslbZone, Settings
from backend.gslb.engine import GslbResult, probe_targets
from backend.gslb.health import HostState
from backend.gslb.spec import parse
from backend.probes.prober import Prober
from bench.procstat import cpu_seconds, loadavg
from bench.propagation import percentile
from lab.dataplane import DataPlane
from lab.proc import free_port

TICK = 0.01


def probed_gslb(targets: int, interval: float) -> GslbResult:
    """One Gslb with `targets` hosts, each with its own exposed address (10.9.x.y), probed over HTTP."""
    annotations = {"coredns-gslb.io/probe": "http://{address}:80/healthz",
                   "coredns-gslb.io/probe-interval-seconds": str(interval)}
    obj = {"apiVersion": "k8gb.absa.oss/v1beta1", "kind": "Gslb",
           "metadata": {"name": "bench", "namespace": "bench", "annotations": annotations},
           "spec": {"ingress": {"rules": []}, "strategy": {"type": "roundRobin"}}}
    hosts = tuple(HostState(f"h{i}.gb.foowidgets.k8s", ("bench/app",), "Healthy", (address(i),))
                  for i in range(targets))
    return GslbResult("gslb/bench/bench", obj, parse(obj), hosts, None)


def address(i: int) -> str:
    return f"10.9.{i // 250}.{i % 250 + 1}"


async def loop_lag(seconds: float) -> list[float]:
    """Lateness of a timer due every TICK on the running loop, in seconds."""
    lags: list[float] = []
    due = time.perf_counter() + TICK
    end = due + seconds
    while due < end:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        now = time.perf_counter()
        lags.append(max(0.0, now - due))
        due = max(due + TICK, now)  # a late tick does not cause a burst of catch-up ticks
    return lags


def lag_summary(lags: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in lags)
    return {"p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "max_ms": round(ms[-1], 2)}


def measure(targets: int = 1000, seconds: float = 20.0, interval: float = 2.0,
            workdir: Path | None = None) -> dict[str, Any]:
    """The baseline lag, then the lag with `targets` probed targets; probes per second; final verdicts."""
    folder = workdir or Path(tempfile.mkdtemp(prefix="bench-probes-"))
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    plane = DataPlane(folder, listen, "bench").start()
    try:
        baseline = asyncio.run(loop_lag(min(seconds, 5.0)))
        mapping = tuple((address(i), "127.0.0.1", int(listen.rsplit(":", 1)[1])) for i in range(targets))
        prober = Prober(Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
                                 cluster_geotag="us-buf", probe_address_map=mapping))
        result = probed_gslb(targets, interval)

        cpu: dict[str, Any] = {}

        async def probed() -> list[float]:
            prober.start()
            prober.on_gslb(result.key, probe_targets(result))
            try:
                own, plane_cpu = _own_cpu(), cpu_seconds(plane.process.pid or 0)
                worker = await _worker_pid(prober)
                worker_cpu = cpu_seconds(worker) if worker else 0.0
                lags = await loop_lag(seconds)
                cpu["backend"] = round((_own_cpu() - own) / seconds, 3)
                if worker:
                    cpu["prober_process"] = round((cpu_seconds(worker) - worker_cpu) / seconds, 3)
                cpu["data_plane"] = round((cpu_seconds(plane.process.pid or 0) - plane_cpu) / seconds, 3)
                cpu["summary"] = prober.summary  # the prober's own figures (targets, checks), before it stops
                return lags
            finally:
                prober.stop()

        load_before = loadavg()
        lags = asyncio.run(probed())
        summary = cpu.pop("summary")
    finally:
        plane.stop()
    return {"targets": targets, "interval_s": interval, "seconds": seconds,
            "probes_per_second": round(summary["checks"] / seconds, 1), "probed_targets": summary["targets"],
            "last_probe_failed": summary["failing"], "unprobed": summary["unprobed"],
            "baseline": lag_summary(baseline),
            "with_probes": lag_summary(lags), "cpu_cores": cpu, "load": [load_before, loadavg()]}


async def _worker_pid(prober: Prober) -> int | None:
    """The pid of the prober's own process once it runs (None for a prober without one)."""
    for _ in range(100):  # up to 5 s for the process to start
        pid = getattr(prober, "pid", -1)
        if pid != -1 and pid is None:
            await asyncio.sleep(0.05)
        else:
            return pid if pid != -1 else None
    raise TimeoutError("waited 5 s for the prober's process to start")


def _own_cpu() -> float:
    """CPU seconds of this process (every thread: the answer loop and, in-process, the prober)."""
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--interval", type=float, default=2.0)
    a = ap.parse_args()
    r = measure(a.targets, a.seconds, a.interval)
    print(json.dumps(r))
    lag, base = r["with_probes"], r["baseline"]
    print(f"{r['targets']} probed targets every {r['interval_s']:g}s ({r['probes_per_second']} probes/s, "
          f"{r['last_probe_failed']} failing at the end): answer-loop lag p50 {lag['p50_ms']} ms, "
          f"p99 {lag['p99_ms']} ms, max {lag['max_ms']} ms "
          f"(no probes: p50 {base['p50_ms']}, p99 {base['p99_ms']}, max {base['max_ms']} ms); "
          f"CPU (cores) {r['cpu_cores']}, load {r['load'][0]} -> {r['load'][1]}")


if __name__ == "__main__":
    main()
