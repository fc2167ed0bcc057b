"""Last pod unready -> the GSLB answer changes, measured through CoreDNS.

    .venv/bin/python -m bench.failover [--trials 20]

Everything real: kube-apiserver with kwok (the endpointslice controller sees the pod go), our
backend, CoreDNS forwarding to it. The chapter's objects: namespace demo with Deployment and Service
nginx, Gslb gslb-failover-buf (failover, primary us-buf), its Ingress announcing 10.2.1.167. A trial
scales nginx to 0 through the scale subresource (what `kubectl scale` sends); the clock starts just
before that request and stops at the first reply through CoreDNS (polled over UDP every 2 ms) that
no longer carries 10.2.1.167 (NODATA: this cluster has nothing healthy). An EndpointSlice watch in
this process splits the time: Kubernetes (scale -> the slice without ready endpoints arrives) and
ours (that watch event -> the new answer via CoreDNS). Recovery (scale to 1 -> 10.2.1.167 again) is
reported too, but it is dominated by scheduling and kwok's pod start-up.
Goal (issue 4): failover p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Callable

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from backend.gslb import demo
from backend.lab.coredns import GRPC_TEMPLATE, render
from backend.lab.kube import ControlPlane
from backend.sources.informer import ENDPOINTSLICES, Informer
from bench.env import Bed
from bench.propagation import percentile

IP = "10.2.1.167"


def answer(host: str, port: int) -> list[str] | None:
    """The A records CoreDNS gives for the chapter's host; None when no reply came."""
    try:
        r = dns.query.udp(dns.message.make_query(demo.HOST, "A"), host, port=port, timeout=0.5)
    except dns.exception.Timeout:
        return None
    return [rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def scale(plane: ControlPlane, replicas: int) -> None:
    plane.request("PATCH", "/apis/apps/v1/namespaces/demo/deployments/nginx/scale",
                  {"spec": {"replicas": replicas}}, content_type="application/merge-patch+json")


class SliceClock:
    """When the last ready endpoint of Service nginx disappeared, as a watch in this process saw it."""

    def __init__(self, plane: ControlPlane) -> None:
        self.api = plane.api_client()
        self.informer = Informer(self.api, ENDPOINTSLICES, namespace="demo",
                                 label_selector="kubernetes.io/service-name=nginx")
        self.informer.add_handler(self._on_slice)
        self.gone = threading.Event()
        self.at = 0.0

    def _on_slice(self, _type: str, _obj: dict, _old: dict | None) -> None:
        ready = any(ep.get("addresses") and (ep.get("conditions") or {}).get("ready") is not False
                    for obj in self.informer.list() for ep in obj.get("endpoints") or ())
        if not ready and not self.gone.is_set():
            self.at = time.perf_counter()
            self.gone.set()

    def start(self) -> None:
        self.informer.start()
        self.informer.synced.wait(30)

    def stop(self) -> None:
        self.informer.stop()
        self.api.close()


def timed(plane: ControlPlane, replicas: int, done: Callable[[], bool],
          timeout: float) -> tuple[float, float] | None:
    """(request -> done, request time) or None on timeout."""
    t0 = time.perf_counter()
    scale(plane, replicas)
    while not done():
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(0.002)
    return time.perf_counter() - t0, t0


def summary(seconds: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in seconds]
    if not ms:
        return {}
    return {"p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(max(ms), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30.0, help="give up on one trial after this long")
    args = ap.parse_args()
    with Bed() as bed:
        plane = bed.plane
        plane.apply(demo.CHAPTER_APP.read_text())
        plane.apply(demo.CHAPTER_GSLB.read_text())
        backend = bed.backend(demo.backend_flags("us-buf"))
        corefile = render(GRPC_TEMPLATE, zones="gb.foowidgets.k8s", grpc=backend.grpc,
                          bind="${bind}", port="${port}")  # bed.coredns fills these two
        coredns = bed.coredns(corefile, "coredns")
        demo.announce_ingress(plane, "demo", "gslb-failover-buf", [IP])

        def healthy() -> bool:
            return answer(coredns.host, coredns.port) == [IP]

        def failed_over() -> bool:
            return answer(coredns.host, coredns.port) == []

        plane.wait_for(healthy, what=f"{demo.HOST} -> {IP}", timeout=60)
        clock = SliceClock(plane)
        clock.start()
        failover: list[float] = []
        kubernetes: list[float] = []
        ours: list[float] = []
        recovery: list[float] = []
        misses = 0
        try:
            for _ in range(args.trials):
                clock.gone.clear()
                down = timed(plane, 0, failed_over, args.timeout)
                if down is not None and clock.gone.wait(5):
                    t1 = down[1] + down[0]
                    kubernetes.append(clock.at - down[1])
                    ours.append(t1 - clock.at)
                up = timed(plane, 1, healthy, args.timeout) if down is not None else None
                if down is None or up is None:
                    misses += 1
                    scale(plane, 1)
                    plane.wait_for(healthy, what="recovery after a missed trial", timeout=60)
                    continue
                failover.append(down[0])
                recovery.append(up[0])
        finally:
            clock.stop()
        result = {"trials": args.trials, "misses": misses, "failover": summary(failover),
                  "kubernetes_part": summary(kubernetes), "our_part": summary(ours),
                  "recovery": summary(recovery)}
        print(json.dumps(result))
        if failover:
            print(f"last pod gone -> NODATA via CoreDNS: p50 {result['failover']['p50_ms']} ms, "
                  f"p99 {result['failover']['p99_ms']} ms ({len(failover)} trials, {misses} missed); "
                  f"of that, scale -> EndpointSlice event p50 {result['kubernetes_part'].get('p50_ms')} ms, "
                  f"event -> answer p50 {result['our_part'].get('p50_ms')} ms "
                  f"(p99 {result['our_part'].get('p99_ms')} ms); "
                  f"recovery p50 {result['recovery']['p50_ms']} ms")


if __name__ == "__main__":
    main()
