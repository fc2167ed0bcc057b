"""How fast one cluster's health change reaches the other cluster's answer, and what an idle peer costs.

Two real clusters (control plane + kwok, backend, CoreDNS on its own loopback address at port 53) behind
a BIND9 edge, the chapter's failover Gslb in both (primary us-buf). Each trial scales buf's nginx to 0 or
back to 1 and polls both CoreDNS servers directly: `local` is when buf itself stops (or starts) publishing
localtargets, `remote` when nyc's answer for fe.gb.foowidgets.k8s has changed. `remote - local` is the
exchange's own share (NOTIFY, SOA check, refetch, recompile); the rest is Kubernetes (kwok, EndpointSlice
controller, watch) and our one-cluster health path. Then both clusters sit idle and we count the queries
nyc receives, all of which come from buf's exchange.

Not a test: `.venv/bin/python -m bench.peers [--trials 20] [--idle-seconds 30]`. Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
from prometheus_client.parser import text_string_to_metric_families

from backend.peers import shards
from lab import demo
from lab.bind9 import Bind9
from lab.kube import ControlPlane, Etcd, Pki
from lab.lbpool import LbPool
from lab.proc import free_loopback_ip
from lab.sidecar import DnsStack

ZONE, EDGE_ZONE = "gb.foowidgets.k8s", "foowidgets.k8s"
INGRESS = {"us-buf": "10.2.1.167", "us-nyc": "10.2.1.98"}
TRIAL_TIMEOUT = 60.0


def addresses(server: str, name: str) -> tuple[str, ...]:
    """One direct query (no recursion) to a CoreDNS on port 53; () for NODATA/NXDOMAIN/no reply."""
    query = dns.message.make_query(name, "A")
    query.flags &= ~dns.flags.RD
    try:
        reply = dns.query.udp(query, server, port=53, timeout=0.5)
    except dns.exception.Timeout:
        return ()
    return tuple(sorted(rd.address for rrset in reply.answer for rd in rrset if hasattr(rd, "address")))


def index(server: str) -> str:
    """A cluster's localtargets index (backend/peers/shards.py): it moves with every health change."""
    query = dns.message.make_query(shards.index_name(ZONE), "TXT")
    query.flags &= ~dns.flags.RD
    try:
        reply = dns.query.udp(query, server, port=53, timeout=0.5)
    except dns.exception.Timeout:
        return ""
    return " ".join(rrset.to_text() for rrset in reply.answer)


def settle(servers: list[str], quiet: float = 3.0, timeout: float = 180.0) -> None:
    """Wait until no cluster's index has moved for `quiet` seconds (start-up of many Gslbs takes a while)."""
    deadline = time.monotonic() + timeout
    last, since = [index(s) for s in servers], time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.2)
        now = [index(s) for s in servers]
        if now != last:
            last, since = now, time.monotonic()


def counter(http: str, metric: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels match, from the backend's /metrics."""
    with urllib.request.urlopen(http + "/metrics", timeout=5) as r:
        text = r.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def extra_gslbs(n: int) -> str:
    """n copies of the chapter's Gslb, each with its own host fe-<i>.gb.foowidgets.k8s."""
    text = demo.CHAPTER_GSLB.read_text()
    return "\n---\n".join(text.replace("gslb-failover-buf", f"gslb-failover-buf-{i}")
                           .replace(demo.HOST, f"fe-{i}.{ZONE}") for i in range(n))


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--idle-seconds", type=float, default=30.0)
    ap.add_argument("--poll-seconds", type=float, default=1.0, help="--peer-poll-seconds of both clusters")
    ap.add_argument("--hosts", type=int, default=0,
                    help="extra failover Gslbs on the same nginx, so a trial flips 1 + N hosts at once")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    started: list[Etcd | ControlPlane | Bind9 | LbPool | DnsStack] = []
    try:
        etcd = Etcd(work / "etcd").start()
        started.append(etcd)
        pki = Pki.create(work / "pki")
        edge = Bind9(work / "edge").start()
        started.append(edge)
        stacks: dict[str, DnsStack] = {}
        planes: dict[str, ControlPlane] = {}
        for tag in INGRESS:
            plane = ControlPlane(tag, work / tag, etcd, pki).start()
            started.append(plane)
            demo.install_crds(plane)
            plane.apply(demo.CHAPTER_APP.read_text())
            plane.apply(demo.CHAPTER_GSLB.read_text())
            if a.hosts:
                plane.apply(extra_gslbs(a.hosts))
            started.append(LbPool(work / tag, plane.kubeconfig, ingress=[INGRESS[tag]]).start())
            ip = free_loopback_ip()
            flags = ["--dns-zone", ZONE, "--edge-dns-zone", EDGE_ZONE, "--edge-dns-servers", edge.address,
                     "--cluster-geo-tag", tag, "--ext-gslb-clusters-geo-tags", ",".join(INGRESS),
                     "--nameserver-address", ip, "--tsig-key-file", str(edge.key_file),
                     "--peer-poll-seconds", str(a.poll_seconds)]
            stack = DnsStack(work / tag, plane.kubeconfig, (ZONE,), flags, host=ip, port=53, name=tag).start()
            started.append(stack)
            stacks[tag], planes[tag] = stack, plane
        buf, nyc = stacks["us-buf"].coredns.host, stacks["us-nyc"].coredns.host
        deadline = time.monotonic() + TRIAL_TIMEOUT
        last = demo.HOST if not a.hosts else f"fe-{a.hosts - 1}.{ZONE}"
        while addresses(nyc, last) != ("10.2.1.167",) and time.monotonic() < deadline:
            time.sleep(0.1)
        settle([buf, nyc])

        remote, exchange = [], []
        for i in range(a.trials):
            replicas = 0 if i % 2 == 0 else 1
            want_local = () if replicas == 0 else ("10.2.1.167",)
            want_remote = ("10.2.1.98",) if replicas == 0 else ("10.2.1.167",)
            t0 = time.monotonic()
            planes["us-buf"].kubectl("scale", "deployment", "nginx", "-n", "demo", f"--replicas={replicas}")
            t_local = t_remote = None
            while (t_local is None or t_remote is None) and time.monotonic() - t0 < TRIAL_TIMEOUT:
                now = time.monotonic()
                if t_local is None and addresses(buf, "localtargets-" + demo.HOST) == want_local:
                    t_local = now
                if t_remote is None and addresses(nyc, demo.HOST) == want_remote:
                    t_remote = now
                time.sleep(0.002)
            if t_local is None or t_remote is None:
                raise SystemExit(f"trial {i}: no change within {TRIAL_TIMEOUT:.0f}s")
            remote.append(t_remote - t0)
            exchange.append(max(0.0, t_remote - t_local))
            print(f"trial {i:2d} replicas={replicas}: local {t_local - t0:.3f}s, remote {t_remote - t0:.3f}s",
                  flush=True)
            settle([buf, nyc], quiet=1.0)

        nyc_http, buf_http = stacks["us-nyc"].backend.http, stacks["us-buf"].backend.http
        fetches = counter(nyc_http, "coredns_gslb_peer_fetch_seconds_count")
        fetch_seconds = counter(nyc_http, "coredns_gslb_peer_fetch_seconds_sum")
        settle([buf, nyc])
        before = counter(nyc_http, "coredns_gslb_queries_total")
        edge_before = counter(buf_http, "coredns_gslb_peer_queries_total", kind="resolve")
        kinds = ("index", "shards", "soa", "localtargets", "notify")
        sent_before = {k: counter(buf_http, "coredns_gslb_peer_queries_total", kind=k) for k in kinds}
        time.sleep(a.idle_seconds)
        sent = {k: round((counter(buf_http, "coredns_gslb_peer_queries_total", kind=k) - sent_before[k])
                         / a.idle_seconds, 2) for k in kinds}
        idle_qps = (counter(nyc_http, "coredns_gslb_queries_total") - before) / a.idle_seconds
        edge_qps = (counter(buf_http, "coredns_gslb_peer_queries_total", kind="resolve") - edge_before) \
            / a.idle_seconds
        summary = {
            "trials": a.trials,
            "gslb_hosts": 1 + a.hosts,
            "peer_poll_seconds": a.poll_seconds,
            "health_to_remote_answer_p50_s": round(statistics.median(remote), 3),
            "health_to_remote_answer_p99_s": round(pct(remote, 99), 3),
            "exchange_only_p50_s": round(statistics.median(exchange), 3),
            "exchange_only_p99_s": round(pct(exchange, 99), 3),
            "nyc_refetches": int(fetches),
            "nyc_refetch_mean_s": round(fetch_seconds / max(fetches, 1), 3),
            "idle_peer_qps_received": round(idle_qps, 2),
            "idle_edge_qps_for_resolution": round(edge_qps, 3),
            "idle_exchange_qps_sent_by_kind": sent,
        }
        print(json.dumps(summary, indent=2))
    finally:
        for item in reversed(started):
            item.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
