"""Queries per second of `Table.answer` in-process (no gRPC): hits, misses, GSLB names, with and
without EDNS0/ECS. Not a test; run `.venv/bin/python -m bench.answer_path [--names N]`."""

from __future__ import annotations

import argparse
import time

import dns.edns
import dns.message

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target
from backend.zone.table import compile_table

SETTINGS = Settings(zones=("foowidgets.k8s",), gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
                    cluster_geotag="us-buf", ext_gslb_clusters_geotags=("us-nyc",))


def endpoints(n: int) -> list[Endpoint]:
    eps = []
    for i in range(n):
        ref = ObjectRef("Service", "bench", f"svc{i}")
        eps.append(Endpoint(f"svc{i}.foowidgets.k8s", "A", (Target(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"),),
                            None, ref))
        gref = ObjectRef("Gslb", "bench", f"app{i}")
        targets = (Target("10.2.1.167", "us-buf"), Target("10.2.1.168", "us-buf"), Target("10.2.1.98", "us-nyc"))
        strategy = [Strategy("roundRobin"), Strategy("failover", "us-buf"), Strategy("geoip"),
                    Strategy("roundRobin", weights=(("us-buf", 75), ("us-nyc", 25)))][i % 4]
        eps.append(Endpoint(f"app{i}.gb.foowidgets.k8s", "A", targets, 30, gref, strategy))
    return eps


def geo(ip: str) -> str | None:
    return "us-nyc" if ip.startswith("192.") else "us-buf"


def rate(table, packets: list[bytes], seconds: float) -> float:
    answer = table.answer
    count = 0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for p in packets:
            answer(p)
        count += len(packets)
    return count / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--names", type=int, default=10000, help="plain and GSLB names each")
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    t0 = time.perf_counter()
    table = compile_table(SETTINGS, endpoints(a.names), 1, geo)
    print(f"compile: {a.names} plain + {a.names} GSLB names in {time.perf_counter() - t0:.2f} s")
    ecs = [dns.edns.ECSOption("192.0.2.0", 24)]
    mixes = {
        "hit A (no EDNS)": [dns.message.make_query(f"svc{i}.foowidgets.k8s", "A").to_wire() for i in range(100)],
        "hit A (EDNS)": [dns.message.make_query(f"svc{i}.foowidgets.k8s", "A", use_edns=0).to_wire()
                         for i in range(100)],
        "NODATA AAAA": [dns.message.make_query(f"svc{i}.foowidgets.k8s", "AAAA").to_wire() for i in range(100)],
        "NXDOMAIN": [dns.message.make_query(f"nope{i}.foowidgets.k8s", "A").to_wire() for i in range(100)],
        "REFUSED": [dns.message.make_query(f"x{i}.example.com", "A").to_wire() for i in range(100)],
        "GSLB A (EDNS+ECS)": [dns.message.make_query(f"app{i}.gb.foowidgets.k8s", "A", use_edns=0, options=ecs)
                              .to_wire() for i in range(100)],
    }
    for label, packets in mixes.items():
        print(f"{label:22} {rate(table, packets, a.seconds):>10,.0f} answers/s")


if __name__ == "__main__":
    main()
