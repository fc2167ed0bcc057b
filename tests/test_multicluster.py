"""Several clusters behind a BIND9 edge, all real: control planes with kwok, our backend, CoreDNS on its
own loopback address at port 53 (glue carries no port), BIND9 authoritative for foowidgets.k8s and
recursive for loopback. Every check is what dig answers at the edge or at a cluster's CoreDNS.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.query
import dns.tsig
import dns.update
import pytest
from test_peers import DnsDouble, serving

from lab import demo
from lab.bind9 import Bind9
from lab.dig import dig
from lab.kube import ControlPlane
from lab.lbpool import LbPool
from lab.proc import PYTHON, ROOT, free_loopback_ip, wait_for
from lab.sidecar import DnsStack

ZONE, EDGE_ZONE = "gb.foowidgets.k8s", "foowidgets.k8s"
HOST = demo.HOST
INGRESS = {"us-buf": "10.2.1.167", "us-nyc": "10.2.1.98", "us-sfo": "10.2.1.50"}
TTL = 2  # dnsTtlSeconds: the edge caches an answer this long
GRACE = 8.0
WAIT = 60.0


@dataclass
class Cluster:
    geotag: str
    plane: ControlPlane
    stack: DnsStack
    flags: list[str]

    def answer(self) -> list[str]:
        """What this cluster's CoreDNS itself says (+norecurse): sorted addresses, [] for NODATA."""
        return sorted(self.stack.dig(HOST, "A", "+norecurse").addresses)

    def scale(self, replicas: int) -> None:
        self.plane.kubectl("scale", "deployment", "nginx", "-n", "demo", f"--replicas={replicas}")

    def readyz(self) -> str:
        return self.stack.backend.get("/readyz")[1]


def cluster_flags(edge: Bind9, geotag: str, address: str, tags: Sequence[str]) -> list[str]:
    return ["--dns-zone", ZONE, "--edge-dns-zone", EDGE_ZONE, "--edge-dns-servers", edge.address,
            "--cluster-geo-tag", geotag, "--ext-gslb-clusters-geo-tags", ",".join(tags),
            "--nameserver-address", address, "--tsig-key-file", str(edge.key_file),
            "--peer-poll-seconds", "0.5", "--peer-grace-seconds", str(GRACE), "--edge-sync-seconds", "5"]


def chapter_app(plane: ControlPlane) -> None:
    """The chapter's demo namespace, nginx and Gslb gslb-failover-buf (failover, primary us-buf), unchanged
    except for a short dnsTtlSeconds so the edge's cache turns over quickly."""
    demo.install_crds(plane)
    plane.apply(demo.CHAPTER_APP.read_text())
    plane.apply(demo.CHAPTER_GSLB.read_text().rstrip() + f"\n    dnsTtlSeconds: {TTL}\n")
    plane.kubectl("scale", "deployment", "nginx", "-n", "demo", "--replicas=1")


@pytest.fixture
def clusters(control_plane_factory: Callable[..., ControlPlane], dns_stack_factory: Callable[..., DnsStack],
             bind9_factory: Callable[..., Bind9], lbpool_factory: Callable[..., LbPool]
             ) -> Callable[..., tuple[Bind9, list[Cluster]]]:
    """`clusters(tags, edge=None)`: one cluster per geotag behind `edge` (default: a recursive BIND9)."""

    def make(tags: Sequence[str], edge: Bind9 | None = None) -> tuple[Bind9, list[Cluster]]:
        edge = edge or bind9_factory(recursive=True)
        out = []
        for tag in tags:
            plane = control_plane_factory(f"mc-{tag}")
            chapter_app(plane)
            lbpool_factory(plane, ingress=[INGRESS[tag]])
            address = free_loopback_ip()
            flags = cluster_flags(edge, tag, address, tags)
            stack = dns_stack_factory(plane, (ZONE,), flags, host=address, port=53)
            out.append(Cluster(tag, plane, stack, flags))
        return edge, out

    return make


def edge_ns_set(edge: Bind9) -> list[str]:
    referral = dig(edge.address, ZONE, "NS", "+norecurse")
    return sorted(r.data.rstrip(".") for r in referral.authority if r.rtype == "NS")


def edge_glue(edge: Bind9, name: str) -> list[str]:
    return sorted(dig(edge.address, name, "A", "+norecurse").values("A"))


def edge_serial(edge: Bind9) -> str:
    return dig(edge.address, EDGE_ZONE, "SOA").values("SOA")[0].split()[2]


def edge_answer(edge: Bind9) -> list[str]:
    """What a workstation asking the enterprise DNS gets (recursion through the delegation)."""
    return sorted(dig(edge.address, HOST, "A").addresses)


def until(check: Callable[[], bool], what: str, cs: Sequence[Cluster] = (), timeout: float = WAIT) -> None:
    wait_for(check, what=what, timeout=timeout, watch=[p for c in cs for p in c.stack.processes])


def everywhere(cs: Sequence[Cluster], expected: list[str]) -> Callable[[], bool]:
    return lambda: all(c.answer() == expected for c in cs)


def ns_name(tag: str) -> str:
    return f"gslb-ns-{tag}-gb.{EDGE_ZONE}"


def test_two_clusters_delegate_and_fail_over_through_the_edge(clusters) -> None:  # type: ignore[no-untyped-def]
    edge, cs = clusters(["us-buf", "us-nyc"])
    buf, nyc = cs

    both = [ns_name("us-buf"), ns_name("us-nyc")]
    until(lambda: edge_ns_set(edge) == both, "both NS targets at the edge", cs)
    assert edge_glue(edge, ns_name("us-buf")) == [buf.stack.coredns.host]
    assert edge_glue(edge, ns_name("us-nyc")) == [nyc.stack.coredns.host]

    until(everywhere(cs, ["10.2.1.167"]), "both clusters answer buf's ingress", cs)
    until(lambda: edge_answer(edge) == ["10.2.1.167"], "the edge answers buf's ingress", cs)
    assert f"us-buf {ZONE} ok, index " in nyc.readyz(), "peers follow each other's localtargets index"

    buf.scale(0)
    until(everywhere(cs, ["10.2.1.98"]), "both clusters fail over to nyc", cs)
    until(lambda: edge_answer(edge) == ["10.2.1.98"], "the edge fails over after the TTL", cs,
          timeout=TTL + 30)

    buf.scale(1)
    until(everywhere(cs, ["10.2.1.167"]), "both clusters fail back to buf", cs)
    until(lambda: edge_answer(edge) == ["10.2.1.167"], "the edge fails back", cs, timeout=TTL + 30)

    serial = edge_serial(edge)
    buf.stack.backend.stop()
    buf.stack.backend.start()
    until(lambda: f"delegation {EDGE_ZONE} in sync" in buf.readyz(), "the restarted updater's check", cs)
    assert edge_serial(edge) == serial, "a restarted updater must not change the edge zone"

    drift = dns.update.UpdateMessage(EDGE_ZONE, keyring=edge.keyring(), keyalgorithm=dns.tsig.HMAC_SHA256)
    drift.delete(ZONE + ".", "NS", ns_name("us-buf") + ".")
    dns.query.tcp(drift, edge.host, port=edge.port, timeout=5)
    assert edge_ns_set(edge) == [ns_name("us-nyc")]
    until(lambda: edge_ns_set(edge) == both, "the periodic check repairs the NS set", cs)

    buf.stack.stop()
    run = subprocess.run([str(PYTHON), "-m", "backend.cli", "edge", "leave", *buf.flags], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert edge_ns_set(edge) == [ns_name("us-nyc")]
    assert edge_glue(edge, ns_name("us-buf")) == []
    assert edge_glue(edge, ns_name("us-nyc")) == [nyc.stack.coredns.host]


def test_three_clusters_fail_over_primary_then_secondary(clusters) -> None:  # type: ignore[no-untyped-def]
    _edge, cs = clusters(["us-buf", "us-nyc", "us-sfo"])
    buf, nyc, sfo = cs
    until(everywhere(cs, ["10.2.1.167"]), "every cluster answers the primary", cs)
    buf.scale(0)
    until(everywhere(cs, ["10.2.1.50", "10.2.1.98"]), "every cluster answers both secondaries", cs)
    nyc.scale(0)
    until(everywhere(cs, ["10.2.1.50"]), "every cluster answers the last healthy cluster", cs)
    buf.scale(1)
    until(everywhere(cs, ["10.2.1.167"]), "the primary is back everywhere", cs)
    nyc.scale(1)
    sfo.scale(0)
    until(everywhere(cs, ["10.2.1.167"]), "a secondary's health does not move the primary's answer", cs)
    sfo.scale(1)


def test_a_dead_peer_keeps_its_targets_for_the_grace_then_drops(clusters) -> None:  # type: ignore[no-untyped-def]
    _edge, cs = clusters(["us-buf", "us-nyc"])
    buf, nyc = cs
    until(everywhere(cs, ["10.2.1.167"]), "both clusters answer buf's ingress", cs)
    buf.scale(0)
    until(everywhere(cs, ["10.2.1.98"]), "both clusters fail over to nyc", cs)
    nyc.stack.coredns.stop()
    assert buf.answer() == ["10.2.1.98"], "within the grace the peer's targets stay"
    until(lambda: buf.answer() == [], "nyc's targets drop after the grace", [buf])
    assert "us-nyc " + ZONE + " unreachable" in buf.readyz()
    buf.scale(1)
    until(lambda: buf.answer() == ["10.2.1.167"], "buf answers for itself, with nyc gone", [buf])


def test_peers_survive_an_edge_outage_through_a_restart(clusters) -> None:  # type: ignore[no-untyped-def]
    """The edge (BIND9) down and nyc's backend restarted: nyc finds buf at its last known address,
    kept on the Lease in nyc's own cluster, and both keep answering buf's ingress (before: nyc answered
    its own 10.2.1.98 for the whole outage)."""
    edge, cs = clusters(["us-buf", "us-nyc"])
    buf, nyc = cs
    until(everywhere(cs, ["10.2.1.167"]), "both clusters answer buf's ingress", cs)
    lease = ("get", "lease", "coredns-gslb", "-n", "default", "-o",
             "jsonpath={.metadata.annotations.coredns-gslb\\.io/peer-addresses}")
    until(lambda: buf.stack.coredns.host in nyc.plane.kubectl(*lease, check=False),
          "nyc remembers buf's address on its Lease", cs)
    edge.stop()
    nyc.stack.backend.stop()
    nyc.stack.backend.start()
    until(lambda: nyc.answer() == ["10.2.1.167"], "the restarted nyc answers buf's ingress", cs, timeout=30)
    for _ in range(10):
        assert buf.answer() == nyc.answer() == ["10.2.1.167"]
        time.sleep(0.5)
    assert "last known address" in nyc.stack.backend.process.log.read_text()


@pytest.mark.parametrize("mode", ["garbage", "wrong-name", "huge"])
def test_a_bad_peer_is_unreachable_and_never_reaches_an_answer(
        mode: str, control_plane_factory: Callable[..., ControlPlane],
        dns_stack_factory: Callable[..., DnsStack], bind9_factory: Callable[..., Bind9],
        lbpool_factory: Callable[..., LbPool]) -> None:
    """An attacker stand-in as us-nyc: its glue at the edge is real, its answers are not."""
    edge = bind9_factory(recursive=True)
    attacker = DnsDouble(records={("localtargets-" + HOST, "A"): ["10.6.6.6"]}, mode=mode)
    with serving(attacker):
        glue = dns.update.UpdateMessage(EDGE_ZONE, keyring=edge.keyring(), keyalgorithm=dns.tsig.HMAC_SHA256)
        glue.add(ns_name("us-nyc") + ".", 30, "A", "127.0.0.1")
        dns.query.tcp(glue, edge.host, port=edge.port, timeout=5)
        plane = control_plane_factory("mc-us-buf")
        chapter_app(plane)
        lbpool_factory(plane, ingress=[INGRESS["us-buf"]])
        address = free_loopback_ip()
        flags = [*cluster_flags(edge, "us-buf", address, ["us-buf", "us-nyc"]),
                 "--peer-dns-port", str(attacker.port)]
        buf = Cluster("us-buf", plane, dns_stack_factory(plane, (ZONE,), flags, host=address, port=53), flags)
        until(lambda: f"us-nyc {ZONE} unreachable" in buf.readyz(), "the bad peer is unreachable", [buf])
        until(lambda: buf.answer() == ["10.2.1.167"], "buf answers its own ingress", [buf])
        buf.scale(0)
        until(lambda: buf.answer() == [], "buf, unhealthy, answers NODATA rather than the attacker's address",
              [buf])
        assert attacker.queries() > 0, "the peer was asked"
        buf.scale(1)
        until(lambda: buf.answer() == ["10.2.1.167"], "buf is back", [buf])
