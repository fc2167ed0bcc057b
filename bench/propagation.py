"""Change -> answer latency: patch a Service's load-balancer IP, poll CoreDNS until it answers the new IP.

    .venv/bin/python -m bench.propagation [--trials 50] [--load 0]

Everything real: kube-apiserver (+etcd), our backend, CoreDNS forwarding to it over gRPC. The clock
starts just before the status PATCH is sent and stops at the first DNS reply, through CoreDNS, that
carries the new IP (polled over UDP every 2 ms). `--load N` first adds N other annotated Services,
to see the latency with a populated model. Goal (issue 3): p99 < 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import dns.message
import dns.query
import dns.rdatatype

from bench.env import Bed
from lab.coredns import GRPC_TEMPLATE, render
from lab.kube import ControlPlane

NAME = "bench-propagation.foowidgets.k8s"
ALPHA = "external-dns.alpha.kubernetes.io/"


def service(name: str, hostname: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "annotations": {ALPHA + "hostname": hostname}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}


def set_lb(plane: ControlPlane, name: str, ip: str) -> None:
    plane.request("PATCH", f"/api/v1/namespaces/default/services/{name}/status",
                  {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
                  content_type="application/merge-patch+json")


def answer(host: str, port: int) -> list[str]:
    q = dns.message.make_query(NAME, "A")
    try:
        r = dns.query.udp(q, host, port=port, timeout=0.5)
    except dns.exception.Timeout:
        return []
    return [rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=50)
    ap.add_argument("--load", type=int, default=0, help="other annotated Services created first")
    ap.add_argument("--timeout", type=float, default=10.0, help="give up on one trial after this long")
    args = ap.parse_args()
    with Bed() as bed:
        plane = bed.plane
        if args.load:
            def create(i: int) -> None:
                plane.request("POST", "/api/v1/namespaces/default/services",
                              service(f"load-{i}", f"load-{i}.foowidgets.k8s"))
                set_lb(plane, f"load-{i}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}")

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, range(args.load)))
        backend = bed.backend(["--zones", "foowidgets.k8s"])
        corefile = render(GRPC_TEMPLATE, zones="foowidgets.k8s", grpc=backend.grpc,
                          bind="${bind}", port="${port}")  # bed.coredns fills these two
        coredns = bed.coredns(corefile, "coredns")
        plane.request("POST", "/api/v1/namespaces/default/services", service("bench", NAME))
        set_lb(plane, "bench", "172.18.0.1")
        deadline = time.monotonic() + 30
        while answer(coredns.host, coredns.port) != ["172.18.0.1"]:
            if time.monotonic() > deadline:
                raise SystemExit("the first answer never came")
            time.sleep(0.05)
        samples: list[float] = []
        misses = 0
        for trial in range(args.trials):
            ip = f"172.18.{1 + trial // 250}.{1 + trial % 250}"
            t0 = time.perf_counter()
            set_lb(plane, "bench", ip)
            while True:
                if answer(coredns.host, coredns.port) == [ip]:
                    samples.append(time.perf_counter() - t0)
                    break
                if time.perf_counter() - t0 > args.timeout:
                    misses += 1
                    break
                time.sleep(0.002)
            time.sleep(0.05)
        ms = [s * 1000 for s in samples]
        result = {"trials": args.trials, "load": args.load, "misses": misses,
                  "p50_ms": round(statistics.median(ms), 1), "p99_ms": round(percentile(ms, 99), 1),
                  "max_ms": round(max(ms), 1), "mean_ms": round(statistics.fmean(ms), 1)}
        print(json.dumps(result))
        print(f"change -> answer via CoreDNS: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms "
              f"({len(samples)} trials, {misses} timed out, {args.load} other Services)")


if __name__ == "__main__":
    main()
