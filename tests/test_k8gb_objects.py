"""k8gb v0.20's objects through the real apiserver, our backend, real CoreDNS and a real BIND9 edge:
the `k8gb.io/exposed-hostnames` annotation and the ZoneDelegation CRD."""

from __future__ import annotations

import json
from collections.abc import Callable

import dns.query
import dns.tsig
import dns.update
import pytest

from backend.gslb import demo
from backend.lab.bind9 import Bind9
from backend.lab.kube import ControlPlane
from backend.lab.sidecar import DnsStack
from tests.test_sources_services import wait_answer

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
    wait_answer(crds, stack, host, "A", ["10.9.0.1"])
    set_edge_record(bind9, node, "10.9.0.2")  # the node's address moves (TTL 1 s)
    wait_answer(crds, stack, host, "A", ["10.9.0.2"])
    crds.kubectl("annotate", "gslbs.k8gb.absa.oss", "app", "-n", namespace, "k8gb.io/exposed-hostnames-")
    wait_answer(crds, stack, host, "A", ["10.9.9.9"])
