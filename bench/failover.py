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

The data-plane case (issue 15): the Gslb carries `coredns-gslb.io/probe: http://{address}:80/healthz`
(defaults: every 2 s, 2 results flip a target) and the backend's probes of 10.2.1.167 go to a stand-in
HTTP server in this process (the lab-only --probe-address-map). A trial stops that server while the pod
stays Ready; the clock stops at the first NODATA through CoreDNS; then it serves again -> 10.2.1.167.
`--cases pods,dataplane` picks the cases.
"""

from __future__ import annotations

import argparse
import http.server
import json
import random
import statistics
import threading
import time
from collections.abc import Callable

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from backend.kube.informer import ENDPOINTSLICES, Informer
from bench.env import Bed
from bench.propagation import percentile
from lab import demo
from lab.coredns import GRPC_TEMPLATE, render
from lab.kube import ControlPlane
from lab.proc import free_port, wait_for

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


def timed(action: Callable[[], None], done: Callable[[], bool], timeout: float) -> tuple[float, float] | None:
    """(action -> done, action time) or None on timeout."""
    t0 = time.perf_counter()
    action()
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


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


class DataPlane:
    """The ingress's stand-in in this process, so a trial's clock starts the moment it stops listening."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port(host)
        self.server: http.server.ThreadingHTTPServer | None = None

    def up(self) -> None:
        self.server = http.server.ThreadingHTTPServer((self.host, self.port), _Ok)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def pods_case(plane: ControlPlane, healthy: Callable[[], bool], failed_over: Callable[[], bool],
              trials: int, timeout: float) -> dict[str, object]:
    """Scale nginx to 0 and back: failover split into Kubernetes' part and ours."""
    clock = SliceClock(plane)
    clock.start()
    failover: list[float] = []
    kubernetes: list[float] = []
    ours: list[float] = []
    recovery: list[float] = []
    misses = 0
    try:
        for _ in range(trials):
            clock.gone.clear()
            down = timed(lambda: scale(plane, 0), failed_over, timeout)
            if down is not None and clock.gone.wait(5):
                t1 = down[1] + down[0]
                kubernetes.append(clock.at - down[1])
                ours.append(t1 - clock.at)
            up = timed(lambda: scale(plane, 1), healthy, timeout) if down is not None else None
            if down is None or up is None:
                misses += 1
                scale(plane, 1)
                plane.wait_for(healthy, what="recovery after a missed trial", timeout=60)
                continue
            failover.append(down[0])
            recovery.append(up[0])
    finally:
        clock.stop()
    return {"trials": trials, "misses": misses, "failover": summary(failover),
            "kubernetes_part": summary(kubernetes), "our_part": summary(ours), "recovery": summary(recovery),
            "n": len(failover)}


def dataplane_case(data: DataPlane, healthy: Callable[[], bool], failed_over: Callable[[], bool],
                   trials: int, timeout: float) -> dict[str, object]:
    """Stop the data plane (pods stay Ready) and start it again: probes at the defaults (every 2 s,
    2 results flip a target), so each direction takes 2-4 s by design (the outage's phase against the
    probes) plus our propagation."""
    failover: list[float] = []
    recovery: list[float] = []
    misses = 0
    rng = random.Random(15)
    for _ in range(trials):
        # A trial would otherwise start right after the probe that ended the last one (the worst phase,
        # interval x failures every time): wait a random part of the interval first, as a real outage.
        time.sleep(rng.uniform(0, 2))
        down = timed(data.down, failed_over, timeout)
        time.sleep(rng.uniform(0, 2))
        up = timed(data.up, healthy, timeout) if down is not None else None
        if down is None or up is None:
            misses += 1
            data.up()
            wait_for(healthy, what="recovery after a missed trial", timeout=60)
            continue
        failover.append(down[0])
        recovery.append(up[0])
    return {"trials": trials, "misses": misses, "failover": summary(failover), "recovery": summary(recovery),
            "n": len(failover)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=30.0, help="give up on one trial after this long")
    ap.add_argument("--cases", default="pods,dataplane", help="pods (scale to 0), dataplane (probes)")
    args = ap.parse_args()
    cases = args.cases.split(",")
    data = DataPlane()
    data.up()
    with Bed() as bed:
        plane = bed.plane
        plane.apply(demo.CHAPTER_APP.read_text())
        plane.apply(demo.CHAPTER_GSLB.read_text())
        plane.kubectl("annotate", "gslb", "gslb-failover-buf", "-n", "demo",
                      "coredns-gslb.io/probe=http://{address}:80/healthz")
        backend = bed.backend(demo.backend_flags("us-buf", "--probe-address-map",
                                                 f"{IP}={data.host}:{data.port}"))
        corefile = render(GRPC_TEMPLATE, zones="gb.foowidgets.k8s", grpc=backend.grpc,
                          bind="${bind}", port="${port}")  # bed.coredns fills these two
        coredns = bed.coredns(corefile, "coredns")
        demo.announce_ingress(plane, "demo", "gslb-failover-buf", [IP])

        def healthy() -> bool:
            return answer(coredns.host, coredns.port) == [IP]

        def failed_over() -> bool:
            return answer(coredns.host, coredns.port) == []

        plane.wait_for(healthy, what=f"{demo.HOST} -> {IP}", timeout=60)
        result: dict[str, object] = {}
        if "pods" in cases:
            result["pods"] = pods_case(plane, healthy, failed_over, args.trials, args.timeout)
        if "dataplane" in cases:
            result["dataplane"] = dataplane_case(data, healthy, failed_over, args.trials, args.timeout)
    data.down()
    print(json.dumps(result))
    pods = result.get("pods")
    if isinstance(pods, dict) and pods["n"]:
        print(f"last pod gone -> NODATA via CoreDNS: p50 {pods['failover']['p50_ms']} ms, "
              f"p99 {pods['failover']['p99_ms']} ms ({pods['n']} trials, {pods['misses']} missed); "
              f"of that, scale -> EndpointSlice event p50 {pods['kubernetes_part'].get('p50_ms')} ms, "
              f"event -> answer p50 {pods['our_part'].get('p50_ms')} ms "
              f"(p99 {pods['our_part'].get('p99_ms')} ms); recovery p50 {pods['recovery']['p50_ms']} ms")
    dp = result.get("dataplane")
    if isinstance(dp, dict) and dp["n"]:
        print(f"data plane down (pods Ready) -> NODATA via CoreDNS: p50 {dp['failover']['p50_ms']} ms, "
              f"p99 {dp['failover']['p99_ms']} ms ({dp['n']} trials, {dp['misses']} missed; "
              f"probes every 2 s, 2 failures); back: p50 {dp['recovery']['p50_ms']} ms, "
              f"p99 {dp['recovery']['p99_ms']} ms")


if __name__ == "__main__":
    main()
