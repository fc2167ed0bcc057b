"""Answers lost around backend restarts, through CoreDNS (issue 11, item 3).

    python -m bench.restart [--listener] [--downtimes 2,20,30] [--roll-seconds 30]

For each downtime D: stop the backend, wait D seconds, start it again; a prober asks CoreDNS every 20 ms
(UDP, 0.5 s timeout) from the stop on. Reported per D: seconds from /readyz 200 to the first answer,
and the queries after /readyz 200 that got SERVFAIL or no answer. Then a rollout under dnsperf load
(400 q/s): with --listener a second backend is started beside the first on the holder's sockets (the
first hands over and exits); without, the backend is stopped and started again, as a restart would.

Only lab's long-standing API is used without --listener, so the same file measures an older
checkout: `cd OTHER && PYTHONPATH=$PWD .venv/bin/python /path/to/bench/restart.py` (the "before").
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode

from lab.coredns import GRPC_TEMPLATE, CoreDNS
from lab.kube import ControlPlane, Etcd, Pki
from lab.lbpool import set_load_balancer
from lab.proc import ROOT, wait_for
from lab.sidecar import Backend

NAME = "nginx.foowidgets.k8s"


class Prober(threading.Thread):
    """Asks CoreDNS every 20 ms, recording (time, rcode or "timeout")."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.host, self.port = host, port
        self.results: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            query = dns.message.make_query(NAME, "A")
            try:
                reply = dns.query.udp(query, self.host, port=self.port, timeout=0.5)
                self.results.append((time.monotonic(), dns.rcode.to_text(reply.rcode())))
            except dns.exception.Timeout:
                self.results.append((time.monotonic(), "timeout"))
            self.stop.wait(0.02)


def restart(backend: Backend, coredns: CoreDNS, downtime: float, window: float) -> dict[str, Any]:
    prober = Prober(coredns.host, coredns.port)
    prober.start()
    backend.stop()
    time.sleep(downtime)
    backend.start()
    ready = time.monotonic()
    end = ready + window
    while time.monotonic() < end and not any(t > ready and r == "NOERROR" for t, r in prober.results):
        time.sleep(0.05)
    time.sleep(1)
    prober.stop.set()
    prober.join()
    first = next((t for t, r in prober.results if t > ready and r == "NOERROR"), None)
    after = [r for t, r in prober.results if t > ready and (first is None or t < first)]
    resumed = None if first is None else round(first - ready, 2)
    return {"downtime_s": downtime, "answer_after_ready_s": resumed,
            "lost_after_ready": len(after), "servfail_after_ready": after.count("SERVFAIL"),
            "timeouts_after_ready": after.count("timeout")}


def roll(workdir: Path, backend: Backend, coredns: CoreDNS, kubeconfig: Path, seconds: float,
         listener: Any) -> tuple[dict[str, Any], Backend]:
    from bench import dnsperf  # only here: the file also runs from an older checkout's folder

    queries = workdir / "queries.txt"
    queries.write_text(f"{NAME} A\n")
    result: list[dnsperf.Run] = []
    load = threading.Thread(target=lambda: result.append(
        dnsperf.run(coredns.address, queries, seconds, rate=400, out=workdir / "dnsperf-roll.txt")))
    load.start()
    time.sleep(5)
    if listener is not None:
        new = Backend(workdir, kubeconfig, ["--zones", "foowidgets.k8s"], name="rolled", listener=listener)
        new.start()
        wait_for(lambda: not backend.process.alive(), what="the old backend handing over", timeout=60)
    else:
        backend.stop()
        new = backend.start()
    load.join(seconds + 60)
    run = result[0]
    return {"sent": run.sent, "completed": run.completed, "lost": run.lost, "rcodes": run.rcodes}, new


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.restart")
    p.add_argument("--listener", action="store_true", help="run the backend behind `coredns-gslb listen`")
    p.add_argument("--downtimes", default="2,20,30")
    p.add_argument("--roll-seconds", type=float, default=30.0)
    p.add_argument("--window", type=float, default=15.0, help="how long to wait for the first answer")
    a = p.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    started: list[Any] = []
    try:
        etcd = Etcd(workdir / "etcd")
        started.append(etcd)
        etcd.start()
        plane = ControlPlane("restart", workdir / "restart", etcd, Pki.create(workdir / "pki"))
        started.append(plane)
        plane.start()
        plane.apply((ROOT / "lab" / "manifests" / "nginx-lb.yaml").read_text())
        set_load_balancer(plane.api_client(), "Service", "default", "nginx-ext-dns", ["172.18.200.101"])
        listener = None
        flags = ["--zones", "foowidgets.k8s"]
        if a.listener:
            from lab.sidecar import Listener

            listener = Listener(workdir).start()
            started.append(listener)
            backend = Backend(workdir, plane.kubeconfig, flags, listener=listener)
        else:
            backend = Backend(workdir, plane.kubeconfig, flags)
        started.append(backend)
        backend.start()
        coredns = CoreDNS(workdir, GRPC_TEMPLATE, zones=("foowidgets.k8s",), grpc=backend.grpc)
        started.append(coredns)
        coredns.start()
        wait_for(lambda: _answers(coredns), what="an answer", timeout=30)
        report: dict[str, Any] = {"listener": a.listener, "restarts": []}
        for downtime in (float(d) for d in a.downtimes.split(",") if d):
            report["restarts"].append(restart(backend, coredns, downtime, a.window))
            print(json.dumps(report["restarts"][-1]), flush=True)
        report["roll"], rolled = roll(workdir, backend, coredns, plane.kubeconfig, a.roll_seconds, listener)
        started.append(rolled)
        print(json.dumps(report, indent=2))
    finally:
        for item in reversed(started):
            item.stop()
    return 0


def _answers(coredns: CoreDNS) -> bool:
    try:
        reply = dns.query.udp(dns.message.make_query(NAME, "A"), coredns.host, port=coredns.port, timeout=1)
    except dns.exception.Timeout:
        return False
    return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)


if __name__ == "__main__":
    raise SystemExit(main())
