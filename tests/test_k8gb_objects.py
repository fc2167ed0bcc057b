"""k8gb v0.20's objects through the real apiserver, our backend, real CoreDNS and a real BIND9 edge:
the `k8gb.io/exposed-hostnames` annotation and the ZoneDelegation CRD."""

from __future__ import annotations

import json
from collections.abc import Callable

import dns.query
import dns.tsig
import dns.update
import pytest

from lab import demo
from lab.bind9 import Bind9
from lab.dig import dig
from lab.kube import ControlPlane
from lab.sidecar import DnsStack

pytestmark = pytest.mark.controlplane
ZONE = "gb.foowidgets.k8s"


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> ControlPlane:
    demo.install_crds(control_plane)
    return control_plane


def set_edge_record(named: Bind9, name: str, address: str, ttl: int = 1) -> None:
    """Replace `name`'s A record at the edge (RFC 2136, signed), as a DDNS client would."""
    update = dns.update.UpdateMessage(named.zone, keyring=named.keyring(), keyalgorithm=dns.tsig.HMAC_SHA256)
    update.replace(name + ".", ttl, "A", address)
    response = dns.query.tcp(update, named.host, port=named.port, timeout=5)
    assert response.rcode() == 0, response


def test_exposed_hostnames_are_resolved_win_over_exposed_ips_and_follow_the_name(
    crds: ControlPlane, namespace: str, bind9: Bind9, dns_stack_factory: Callable[..., DnsStack]
) -> None:
    node = f"node1-{namespace}.foowidgets.k8s"
    host = f"app-{namespace}.{ZONE}"
    set_edge_record(bind9, node, "10.9.0.1")
    crds.apply(demo.app(namespace, "web"))
    gslb = json.loads(demo.gslb(namespace, "app", {"type": "roundRobin"}, host=host, service="web"))
    gslb["metadata"]["annotations"] = {"k8gb.io/exposed-hostnames": node,
                                       "k8gb.io/exposed-ip-addresses": "10.9.9.9"}
    crds.apply(json.dumps(gslb))
    stack = dns_stack_factory(crds, zones=(ZONE,), flags=demo.backend_flags(
        "us-buf", "--edge-dns-servers", bind9.address, "--edge-publish-names", "false"))
    stack.wait_answer(host, ["10.9.0.1"])
    set_edge_record(bind9, node, "10.9.0.2")  # the node's address moves (TTL 1 s)
    stack.wait_answer(host, ["10.9.0.2"])
    crds.kubectl("annotate", "gslbs.k8gb.absa.oss", "app", "-n", namespace, "k8gb.io/exposed-hostnames-")
    stack.wait_answer(host, ["10.9.9.9"])


def zone_delegation(name: str, zone: str, parent: str = "foowidgets.k8s", neg_ttl: int = 7) -> str:
    return json.dumps({"apiVersion": "k8gb.io/v1beta1", "kind": "ZoneDelegation", "metadata": {"name": name},
                       "spec": {"loadBalancedZone": zone, "parentZone": parent, "dnsZoneNegTTL": neg_ttl}})


def referral(named: Bind9, zone: str) -> list[str]:
    """The NS names the edge hands out for `zone` (a referral: +norecurse, NS in the authority section)."""
    r = dig(named.address, zone, "NS", "+norecurse")
    return sorted(rec.data for rec in r.authority if rec.rtype == "NS")


def glue(named: Bind9, name: str) -> list[str]:
    return sorted(dig(named.address, name, "A", "+norecurse").values("A"))


def test_zone_delegation_at_run_time_serves_the_zone_publishes_ns_and_glue_and_fills_status(
    crds: ControlPlane, namespace: str, bind9: Bind9, dns_stack_factory: Callable[..., DnsStack]
) -> None:
    label = f"zd-{namespace[-6:]}"  # the nameserver name gslb-ns-us-buf-<label> must fit in 63 characters
    zone = f"{label}.foowidgets.k8s"
    ns_name = f"gslb-ns-us-buf-{label}.foowidgets.k8s"
    host = f"app.{zone}"
    crds.apply(demo.app(namespace, "web"))
    gslb = json.loads(demo.gslb(namespace, "app", {"type": "roundRobin"}, host=host, service="web"))
    gslb["metadata"]["annotations"] = {"k8gb.io/exposed-ip-addresses": "10.8.0.1"}
    crds.apply(json.dumps(gslb))
    flags = demo.backend_flags("us-buf", "--edge-dns-servers", bind9.address, "--nameserver-address",
                               "127.0.9.9", "--tsig-key-file", str(bind9.key_file),
                               "--edge-publish-names", "false")
    # CoreDNS forwards the whole parent zone, so a zone declared later reaches the backend too.
    stack = dns_stack_factory(crds, zones=("foowidgets.k8s",), flags=flags)
    crds.wait_for(lambda: "gslb-ns-us-buf-gb.foowidgets.k8s." in referral(bind9, ZONE),
                  what="the flags' zone delegated at the edge", timeout=30)
    assert stack.dig(host).rcode == "REFUSED"  # not a zone of ours yet
    try:
        crds.apply(zone_delegation(f"zd-{namespace}", zone))
        stack.wait_answer(host, ["10.8.0.1"])
        soa = stack.dig(zone, "SOA")
        assert soa.rcode == "NOERROR" and "aa" in soa.flags, soa.output
        assert [v.split()[-1] for v in soa.values("SOA")] == ["7"], soa.output  # dnsZoneNegTTL: SOA minimum
        delegated = ([ns_name + "."], ["127.0.9.9"])
        crds.wait_for(lambda: (referral(bind9, zone), glue(bind9, ns_name)) == delegated,
                      what=f"NS {ns_name} and its glue for {zone} at the edge", timeout=30)

        def status() -> list[dict[str, str]]:
            obj = json.loads(crds.kubectl("get", "zd", f"zd-{namespace}", "-o", "json"))
            return (obj.get("status") or {}).get("dnsServers") or []

        crds.wait_for(lambda: status() == [{"name": ns_name, "address": "127.0.9.9"}],
                      what="status.dnsServers written by the leader", timeout=30)
    finally:
        crds.kubectl("delete", "zd", f"zd-{namespace}", "--ignore-not-found")
    stack.wait_answer(host, "REFUSED")  # the zone went with its ZoneDelegation ...
    crds.wait_for(lambda: referral(bind9, zone) == [] and glue(bind9, ns_name) == [],
                  what=f"our NS and glue for {zone} withdrawn from the edge", timeout=30)
    assert "gslb-ns-us-buf-gb.foowidgets.k8s." in referral(bind9, ZONE)  # ... the flags' zone stays


def test_unusable_zone_delegation_gets_a_warning_and_changes_nothing(
    crds: ControlPlane, namespace: str, dns_stack_factory: Callable[..., DnsStack]
) -> None:
    name = f"bad-{namespace}"
    stack = dns_stack_factory(crds, zones=("foowidgets.k8s",), flags=demo.backend_flags("us-buf"))
    try:
        crds.apply(zone_delegation(name, f"x.{namespace}.example.org"))  # not inside parentZone

        def warned() -> bool:
            out = crds.kubectl("get", "events", "-n", "default", "--field-selector",
                               f"involvedObject.name={name}", "-o", "json")
            return any(e["reason"] == "InvalidZoneDelegation" for e in json.loads(out)["items"])

        crds.wait_for(warned, what="a Warning Event on the ZoneDelegation", timeout=30)
        assert stack.dig(ZONE, "SOA").rcode == "NOERROR"
    finally:
        crds.kubectl("delete", "zd", name, "--ignore-not-found")
