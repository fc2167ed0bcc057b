"""The gateway-*route rules on plain dicts (the integration tests are tests/test_gateway.py)."""

from __future__ import annotations

from typing import Any

from backend.kube.selectors import parse
from backend.sources import gateways as gw

ZONES = ("example.com",)
HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"


def gateway(name: str = "gw", ns: str = "infra", listeners: list[dict[str, Any]] | None = None,
            addresses: list[Any] | None = None, **annotations: str) -> dict[str, Any]:
    return {"kind": "Gateway", "metadata": {"name": name, "namespace": ns, "annotations": annotations,
                                            "labels": {"team": "web"}},
            "spec": {"gatewayClassName": "lab", "listeners": listeners if listeners is not None else [
                {"name": "http", "protocol": "HTTP", "port": 80,
                 "allowedRoutes": {"namespaces": {"from": "All"}}}]},
            "status": {"addresses": addresses if addresses is not None else [{"type": "IPAddress",
                                                                               "value": "10.9.0.1"}]}}


def route(kind: str = "HTTPRoute", hostnames: list[str] | None = None, parent: dict[str, Any] | None = None,
          accepted: str = "True", **annotations: str) -> dict[str, Any]:
    ref = parent or {"name": "gw", "namespace": "infra"}
    return {"kind": kind, "metadata": {"name": "r", "namespace": "app", "generation": 2,
                                       "annotations": annotations},
            "spec": {"parentRefs": [ref], "hostnames": hostnames or []},
            "status": {"parents": [{"parentRef": ref, "controllerName": "x", "conditions": [
                {"type": "Accepted", "status": accepted, "observedGeneration": 2}]}]}}


def namespace(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"env": "prod"}}}


def run(rt: dict[str, Any], *gws: dict[str, Any], filt: gw.GatewayFilter | None = None):  # type: ignore[no-untyped-def]
    by_key = {f"{g['metadata']['namespace']}/{g['metadata']['name']}": g for g in (gws or (gateway(),))}
    eps, problems = gw.endpoints(rt, by_key.get, namespace, ZONES, (), filt)
    return {(e.name, e.rtype): [t.value for t in e.targets] for e in eps}, {p.reason for p in problems}


def test_hostnames_and_listener_narrowing() -> None:
    assert run(route(hostnames=["a.example.com"]))[0] == {("a.example.com", "A"): ["10.9.0.1"]}
    wild = gateway(listeners=[{"name": "h", "protocol": "HTTP", "port": 80, "hostname": "*.shop.example.com",
                               "allowedRoutes": {"namespaces": {"from": "All"}}}])
    names, problems = run(route(hostnames=["x.shop.example.com", "other.example.com"]), wild)
    assert names == {("x.shop.example.com", "A"): ["10.9.0.1"]} and not problems
    assert run(route(), wild)[0] == {("*.shop.example.com", "A"): ["10.9.0.1"]}  # no route hostnames
    assert run(route(hostnames=["other.example.com"]), wild) == ({}, {"NoMatchingListenerHostname"})


def test_parent_must_be_accepted_allowed_and_matching() -> None:
    assert run(route(hostnames=["a.example.com"], accepted="False")) == ({}, {"RouteNotAccepted"})
    assert run(route(hostnames=["a.example.com"], accepted="Unknown")) == ({}, set())
    same = gateway(listeners=[{"name": "http", "protocol": "HTTP", "port": 80}])
    assert run(route(hostnames=["a.example.com"]), same) == ({}, {"NotAllowedByListeners"})
    sel = gateway(listeners=[{"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {
        "namespaces": {"from": "Selector", "selector": {"matchLabels": {"env": "prod"}}}}}])
    assert run(route(hostnames=["a.example.com"]), sel)[0]
    udp = route("UDPRoute", **{HOSTNAME: "u.example.com"})
    assert run(udp) == ({}, {"NotAllowedByListeners"})  # an HTTP listener
    tls = gateway(listeners=[{"name": "t", "protocol": "TLS", "port": 443,
                              "allowedRoutes": {"namespaces": {"from": "All"}}}])
    assert run(route("TCPRoute", **{HOSTNAME: "t.example.com"}), tls)[0]  # a TCPRoute may use a TLS listener
    wrong_section = route(hostnames=["a.example.com"], parent={"name": "gw", "namespace": "infra",
                                                               "sectionName": "nope"})
    assert run(wrong_section) == ({}, {"NotAllowedByListeners"})
    missing = route(hostnames=["a.example.com"], parent={"name": "gone", "namespace": "infra"})
    assert run(missing) == ({}, {"GatewayNotFound"})


def test_targets_annotation_hostname_and_bad_addresses() -> None:
    rt = route(hostnames=["a.example.com"])
    assert run(rt, gateway(**{"external-dns.alpha.kubernetes.io/target": "1.2.3.4"}))[0] == {
        ("a.example.com", "A"): ["1.2.3.4"]}
    assert run(rt, gateway(**{"external-dns.kubernetes.io/target": "lb.example.net"}))[0] == {
        ("a.example.com", "CNAME"): ["lb.example.net."]}
    assert run(rt, gateway(addresses=[{"type": "Hostname", "value": "lb.example.net"}]))[0] == {
        ("a.example.com", "CNAME"): ["lb.example.net."]}
    assert run(rt, gateway(addresses=[])) == ({}, {"GatewayNoAddress"})
    assert run(rt, gateway(addresses=[{"type": "IPAddress", "value": "300.1.1.1"}])) == (
        {}, {"InvalidAddress", "GatewayNoAddress"})
    names, problems = run(rt, gateway(addresses=["junk", {"value": "10.9.0.2"}]))
    assert names == {("a.example.com", "A"): ["10.9.0.2"]} and problems == {"InvalidAddress"}


def test_gateway_filters() -> None:
    rt = route(hostnames=["a.example.com"])
    assert run(rt, filt=gw.GatewayFilter(name="gw"))[0]
    assert run(rt, filt=gw.GatewayFilter(name="other")) == ({}, set())
    assert run(rt, filt=gw.GatewayFilter(namespace="elsewhere")) == ({}, set())
    assert run(rt, filt=gw.GatewayFilter(labels=parse("team==web")))[0]
    assert run(rt, filt=gw.GatewayFilter(labels=parse("team notin (web)"))) == ({}, set())


def test_matching_host() -> None:
    assert gw.matching_host("*.example.com", "a.b.example.com") == "a.b.example.com"
    assert gw.matching_host("a.example.com", "*.example.com") == "a.example.com"
    assert gw.matching_host("*.example.com", "example.com") is None
    assert gw.matching_host("", "x.example.com") == "x.example.com"
