"""Zonemaster's full delegated test of gb.foowidgets.k8s, as a user would run it on the Internet:
root (BIND9, a root zone of ours) -> foowidgets.k8s (the edge, BIND9 on port 53 of its own loopback
address) -> gb.foowidgets.k8s on the two clusters' CoreDNS + backend (port 53 of their own addresses),
delegated by the NS + glue the clusters themselves publish into the edge (RFC 2136).

Zonemaster must report nothing at WARNING or above except what a loopback lab cannot avoid
(`LAB_ONLY`, explained in tests/README.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from test_multicluster import EDGE_ZONE, INGRESS, ZONE, Cluster, edge_glue, edge_ns_set, ns_name, until
from test_multicluster import clusters as clusters  # the fixture: the same two clusters, behind our edge

from backend.zone.build import soa_serial
from lab import demo, zonemaster
from lab.bind9 import Bind9
from lab.dig import dig

TAGS = ("us-buf", "us-nyc")
SERIAL_SKEW = 10.0  # bound on how long after the hour a loaded cluster may still serve the old serial

# tag -> why a loopback lab cannot avoid it. Anything else at WARNING or above fails the test.
LAB_ONLY = {
    "NAMESERVER_IP_PRIVATE_NETWORK": "ADDRESS01 (ERROR): the nameservers' addresses are loopback (127/8)",
    "NAMESERVER_IP_WITHOUT_REVERSE": "ADDRESS02 (WARNING): no PTR for 127.x.y.z (no in-addr.arpa here)",
}

# NOTICEs that fail too: the clusters disagree on the zone's SOA (backend/zone/README.md, "Serial")
SOA_DISAGREES = {"MULTIPLE_SOA_MNAMES", "SOA_SERIAL_VARIATION"}


def run_within_one_serial(hints: Path) -> zonemaster.Report:
    """Zonemaster, again if the SOA serial moved during the run (the hour turned: each cluster moves to
    the new serial on its own, a moment apart), so the test does not depend on the time of day."""
    for _ in range(2):
        before = soa_serial(now=time.time() - SERIAL_SKEW)
        report = zonemaster.run(ZONE, hints)
        if soa_serial(now=time.time() + SERIAL_SKEW) == before:
            break
    return report


def test_zonemaster_finds_only_what_loopback_cannot_avoid(
    tmp_path: Path,
    clusters: Callable[..., tuple[Bind9, list[Cluster]]],
    bind9_factory: Callable[..., Bind9],
    loopback_address_factory: Callable[[], str],
) -> None:
    root_ip, edge_ip = loopback_address_factory(), loopback_address_factory()
    edge = bind9_factory(EDGE_ZONE, host=edge_ip, port=53)
    bind9_factory(".", host=root_ip, port=53,
                  zone_text=zonemaster.root_zone(root_ip, {EDGE_ZONE: {f"ns1.{EDGE_ZONE}": edge_ip}}))
    _, cs = clusters(TAGS, edge)

    until(lambda: edge_ns_set(edge) == [ns_name(t) for t in TAGS], "both clusters' NS at the edge", cs)
    until(lambda: all(edge_glue(edge, ns_name(c.geotag)) == [c.stack.coredns.host] for c in cs),
          "both clusters' glue at the edge", cs)
    buf = [INGRESS["us-buf"]]
    until(lambda: all(c.answer() == buf for c in cs), "both clusters answer buf's ingress", cs)
    referral = dig(root_ip, demo.HOST, "A", "+norecurse")
    assert [r.data for r in referral.authority] == [f"ns1.{EDGE_ZONE}."], referral.output

    hints = tmp_path / "root.hints"
    hints.write_text(zonemaster.hints(root_ip))
    report = run_within_one_serial(hints)
    print("zonemaster", ZONE, report.counts(), *report.messages, sep="\n  ")
    unexpected = [str(m) for m in report.at_least("NOTICE")
                  if m.tag in SOA_DISAGREES or (m.level != "NOTICE" and m.tag not in LAB_ONLY)]
    assert not unexpected, "\n".join(unexpected)
    # Zonemaster did walk the delegation and reach both clusters (not a run that tested nothing)
    tested = {str(m.args.get("ns_ip")) for m in report.messages if m.tag == "NAMESERVER_IP_PRIVATE_NETWORK"}
    assert tested == {c.stack.coredns.host for c in cs}, report.output
