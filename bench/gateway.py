"""Change -> answer for Gateway API names: a route hostname edit and a Gateway address change.

    .venv/bin/python -m bench.gateway [--trials 20]

Everything real: kube-apiserver (+etcd), our backend, CoreDNS over gRPC, and for the hostname edit the
lab's gateway controller (lbpool), because an edited route counts only once its controller has
accepted the new generation (status.parents[].conditions[Accepted].observedGeneration), as in
ExternalDNS. The address change is a status write on a Gateway of a class nobody implements (what a
controller does when its load balancer moves), so it times our path alone. The clock starts before
the PATCH and stops at the first reply through CoreDNS with the new data (UDP, polled every 2 ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import dns.message
import dns.query
import dns.rdatatype

from bench.env import Bed
from bench.propagation import percentile
from lab.coredns import GRPC_TEMPLATE, render

NS = "default"
ROUTE = "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"
GATEWAY = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways"


def a_records(host: str, port: int, name: str) -> list[str]:
    try:
        r = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=0.5)
    except dns.exception.Timeout:
        return []
    return [rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]


def gateway(name: str, cls: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"gatewayClassName": cls,
                     "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}}


def route(name: str, gw: str, host: str) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [{"name": gw}], "hostnames": [host]}}


def measure(trials: int, change: Callable[[int], tuple[str, str]], seen: Callable[[str, str], bool],
            timeout: float = 10.0) -> dict:
    samples, misses = [], 0
    for trial in range(trials):
        t0 = time.perf_counter()
        name, ip = change(trial)
        while not seen(name, ip):
            if time.perf_counter() - t0 > timeout:
                misses += 1
                break
            time.sleep(0.002)
        else:
            samples.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    return {"trials": trials, "misses": misses, "p50_ms": round(statistics.median(samples), 1),
            "p99_ms": round(percentile(samples, 99), 1), "max_ms": round(max(samples), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    with Bed() as bed:
        plane = bed.plane
        plane.install_gateway_api()
        plane.apply("""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: lbpool}
spec: {controllerName: lab.coredns-gslb.io/lbpool}
""")
        bed.lbpool(["172.18.220.1"])
        backend = bed.backend(["--zones", "foowidgets.k8s"])
        corefile = render(GRPC_TEMPLATE, zones="foowidgets.k8s", grpc=backend.grpc,
                          bind="${bind}", port="${port}")
        coredns = bed.coredns(corefile, "coredns")

        def seen(name: str, ip: str) -> bool:
            return a_records(coredns.host, coredns.port, name) == [ip]

        def wait(name: str, ip: str) -> None:
            deadline = time.monotonic() + 60
            while not seen(name, ip):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} never answered {ip}")
                time.sleep(0.05)

        # (a) hostname edit, through the lab's controller
        plane.request("POST", GATEWAY, gateway("lab", "lbpool"))
        plane.request("POST", ROUTE, route("edit", "lab", "edit-0.foowidgets.k8s"))
        wait("edit-0.foowidgets.k8s", "172.18.220.1")

        def edit(trial: int) -> tuple[str, str]:
            name = f"edit-{trial + 1}.foowidgets.k8s"
            plane.request("PATCH", f"{ROUTE}/edit", {"spec": {"hostnames": [name]}},
                          content_type="application/merge-patch+json")
            return name, "172.18.220.1"

        hostname = measure(args.trials, edit, seen)

        # (b) Gateway address change, status written as a controller would
        plane.request("POST", GATEWAY, gateway("moving", "none"))
        created = plane.request("POST", ROUTE, route("stay", "moving", "stay.foowidgets.k8s"))
        ref = created["spec"]["parentRefs"][0]
        plane.request("PATCH", f"{ROUTE}/stay/status", {"status": {"parents": [{
            "parentRef": ref, "controllerName": "example.com/bench", "conditions": [{
                "type": "Accepted", "status": "True", "reason": "Accepted", "message": "bench",
                "observedGeneration": created["metadata"]["generation"],
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]}},
            content_type="application/merge-patch+json")

        def move(trial: int) -> tuple[str, str]:
            ip = f"172.19.{trial // 250}.{1 + trial % 250}"
            plane.request("PATCH", f"{GATEWAY}/moving/status",
                          {"status": {"addresses": [{"type": "IPAddress", "value": ip}]}},
                          content_type="application/merge-patch+json")
            return "stay.foowidgets.k8s", ip

        move(999)
        wait("stay.foowidgets.k8s", "172.19.3.250")
        address = measure(args.trials, move, seen)
        result = {"route_hostname_edit": hostname, "gateway_address_change": address}
        print(json.dumps(result))
        for what, r in result.items():
            print(f"{what}: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms "
                  f"({r['trials']} trials, {r['misses']} missed)")


if __name__ == "__main__":
    main()
