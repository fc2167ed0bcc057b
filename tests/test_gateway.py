"""Gateway API through the real apiserver (with the pinned v1.6 CRDs), the lab's gateway controller
(lbpool), our backend and real CoreDNS: names from every route kind as ExternalDNS makes them, the
Gateway filter flags, bad input, and Gslbs over routes (one cluster and failover between two)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from test_k8gb_objects import set_edge_record
from test_multicluster import clusters  # noqa: F401  (the two-cluster fixture)
from test_multicluster import until as mc_until

from lab import demo
from lab.bind9 import Bind9
from lab.dig import DigResult, dig
from lab.kube import ControlPlane
from lab.lbpool import LbPool
from lab.proc import wait_for
from lab.sidecar import DnsStack

pytestmark = pytest.mark.controlplane
K8GB_MANIFESTS = Path(__file__).resolve().parent / "manifests" / "k8gb"

ZONES = ("foowidgets.k8s", "example.com")
CLASS = "lbpool"
CONTROLLER = "lab.coredns-gslb.io/lbpool"
ALPHA = "external-dns.alpha.kubernetes.io/"
WAIT = 45.0
StackFactory = Callable[..., DnsStack]


@pytest.fixture(scope="module")
def gwapi(control_plane: ControlPlane) -> ControlPlane:
    """The Gateway API CRDs and the lab controller's GatewayClass (plus the one ExternalDNS's docs use)."""
    control_plane.install_gateway_api()
    for name in (CLASS, "cilium"):
        control_plane.apply(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {name}}}
spec: {{controllerName: {CONTROLLER}}}
""")
    return control_plane


@pytest.fixture
def pool(gwapi: ControlPlane, lbpool_factory: Callable[..., LbPool]) -> LbPool:
    return lbpool_factory(gwapi, services=[f"172.18.210.{i}" for i in range(1, 40)])


def answer(stack: DnsStack, name: str, rtype: str = "A") -> DigResult:
    return stack.dig(name, rtype)


def events(plane: ControlPlane, ns: str, name: str) -> list[tuple[str, str, str]]:
    out = plane.kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}",
                        "-o", "json")
    return [(e["type"], e["reason"], e.get("message", "")) for e in json.loads(out)["items"]]


def wait_event(plane: ControlPlane, ns: str, name: str, reason: str, stack: DnsStack) -> str:
    found: list[str] = []

    def check() -> bool:
        found[:] = [m for t, r, m in events(plane, ns, name) if t == "Warning" and r == reason]
        return bool(found)

    stack.wait_for(check, what=f"Warning Event {reason} on {ns}/{name}", timeout=WAIT)
    return found[0]


def gateway(name: str, ns: str, listeners: str = "", cls: str = CLASS, labels: str = "{}",
            annotations: str = "{}", addresses: str = "") -> str:
    listeners = listeners or """
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes: {namespaces: {from: All}}"""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {ns}, labels: {labels}, annotations: {annotations}}}
spec:
  gatewayClassName: {cls}{addresses}
  listeners:{listeners}
"""


def http_route(name: str, ns: str, gw: str, gw_ns: str, hostnames: Sequence[str], backend: str = "web",
               kind: str = "HTTPRoute", annotations: str = "{}") -> str:
    hosts = f"\n  hostnames: {json.dumps(list(hostnames))}" if hostnames else ""
    return f"""
apiVersion: gateway.networking.k8s.io/v1
kind: {kind}
metadata: {{name: {name}, namespace: {ns}, annotations: {annotations}}}
spec:
  parentRefs: [{{name: {gw}, namespace: {gw_ns}}}]{hosts}
  rules:
  - backendRefs: [{{name: {backend}, port: 80}}]
"""


def gateway_address(plane: ControlPlane, ns: str, name: str) -> list[str]:
    gw = json.loads(plane.kubectl("get", "gateway", name, "-n", ns, "-o", "json"))
    return [a["value"] for a in (gw.get("status") or {}).get("addresses") or ()]


def wait_address(plane: ControlPlane, ns: str, name: str) -> str:
    wait_for(lambda: gateway_address(plane, ns, name),
             what=f"the lbpool gives Gateway {ns}/{name} an address", timeout=WAIT)
    return gateway_address(plane, ns, name)[0]


def patch_status(plane: ControlPlane, kind: str, ns: str, name: str, status: dict[str, Any]) -> None:
    plane.kubectl("patch", kind, name, "-n", ns, "--subresource=status", "--type=merge",
                  "-p", json.dumps({"status": status}))


def test_each_route_kind_gives_its_names_here_and_at_the_edge(
        gwapi: ControlPlane, pool: LbPool, namespace: str, dns_stack_factory: StackFactory,
        bind9_factory: Callable[..., Bind9]) -> None:
    """Every route kind's names answer through CoreDNS and, as ExternalDNS's gateway-*route sources
    with its rfc2136 provider would, reach the enterprise DNS with ExternalDNS's ownership record."""
    plane, ns = gwapi, namespace
    edge = bind9_factory()
    plane.apply(gateway("gw", ns, listeners="""
  - {name: http, protocol: HTTP, port: 80}
  - {name: tls, protocol: TLS, port: 443, tls: {mode: Passthrough}}
  - {name: tcp, protocol: TCP, port: 5432}
  - {name: udp, protocol: UDP, port: 5353}"""))
    stack = dns_stack_factory(plane, ZONES, [
        "--zones", ",".join(ZONES), "--dns-zone", "gb.foowidgets.k8s", "--edge-dns-zone", "foowidgets.k8s",
        "--edge-dns-servers", edge.address, "--tsig-key-file", str(edge.key_file),
        "--cluster-geo-tag", "us-buf"])
    address = wait_address(plane, ns, "gw")
    tcp_host = json.dumps({ALPHA + "hostname": f"tcp-{ns}.foowidgets.k8s"})
    udp_host = json.dumps({ALPHA + "hostname": f"udp-{ns}.foowidgets.k8s"})
    plane.apply(http_route("h", ns, "gw", ns, [f"http-{ns}.foowidgets.k8s"]))
    plane.apply(http_route("g", ns, "gw", ns, [f"grpc-{ns}.foowidgets.k8s"], kind="GRPCRoute"))
    plane.apply(http_route("t", ns, "gw", ns, [f"tls-{ns}.foowidgets.k8s"], kind="TLSRoute"))
    plane.apply(http_route("c", ns, "gw", ns, [], kind="TCPRoute", annotations=tcp_host))
    plane.apply(http_route("u", ns, "gw", ns, [], kind="UDPRoute", annotations=udp_host))
    for host in ("http", "grpc", "tls", "tcp", "udp"):
        stack.wait_answer(f"{host}-{ns}.foowidgets.k8s", [address])
    for host, route in (("http", "httproute/h"), ("grpc", "grpcroute/g"), ("tls", "tlsroute/t"),
                        ("tcp", "tcproute/c"), ("udp", "udproute/u")):
        name = f"{host}-{ns}.foowidgets.k8s"
        stack.wait_for(lambda n=name: dig(edge.address, n, "A", "+norecurse").values("A") == [address],
                       what=f"{name} at the edge", timeout=WAIT)
        kind, obj = route.split("/")
        assert f"external-dns/resource={kind}/{ns}/{obj}" in dig(
            edge.address, f"a-{name}", "TXT", "+norecurse").values("TXT")[0]
    # A route hostname edit moves the name; deleting the route takes it away.
    plane.apply(http_route("h", ns, "gw", ns, [f"http2-{ns}.foowidgets.k8s"]))
    stack.wait_answer(f"http2-{ns}.foowidgets.k8s", [address])
    stack.wait_answer(f"http-{ns}.foowidgets.k8s", "NXDOMAIN")
    plane.kubectl("delete", "grpcroute", "g", "-n", ns)
    stack.wait_answer(f"grpc-{ns}.foowidgets.k8s", "NXDOMAIN")
    stack.wait_for(lambda: not dig(edge.address, f"grpc-{ns}.foowidgets.k8s", "A", "+norecurse").values("A"),
                   what="the deleted route's name gone from the edge", timeout=WAIT)


def test_listener_hostname_narrows_and_not_allowed_routes_get_nothing(
    gwapi: ControlPlane, pool: LbPool, namespace: str, dns_stack_factory: StackFactory
) -> None:
    plane, ns = gwapi, namespace
    other = f"{ns}-b"
    plane.kubectl("create", "namespace", other)
    try:
        plane.apply(gateway("gw", ns, listeners="""
  - {name: shop, protocol: HTTP, port: 80, hostname: "*.shop.foowidgets.k8s"}"""))
        stack = dns_stack_factory(plane, ZONES)
        address = wait_address(plane, ns, "gw")
        plane.apply(http_route("r", ns, "gw", ns, [f"a-{ns}.shop.foowidgets.k8s", f"b-{ns}.foowidgets.k8s"]))
        stack.wait_answer(f"a-{ns}.shop.foowidgets.k8s", [address])
        assert answer(stack, f"b-{ns}.foowidgets.k8s").rcode == "NXDOMAIN"
        # The listener allows routes from its own namespace only: the controller does not accept it.
        plane.apply(http_route("r", other, "gw", ns, [f"c-{ns}.shop.foowidgets.k8s"]))
        message = wait_event(plane, other, "r", "RouteNotAccepted", stack)
        assert "NotAllowedByListeners" in message
        assert answer(stack, f"c-{ns}.shop.foowidgets.k8s").rcode == "NXDOMAIN"
        # A route hostname no listener matches: not accepted either, and an Event saying so.
        plane.apply(http_route("miss", ns, "gw", ns, [f"m-{ns}.elsewhere.foowidgets.k8s"]))
        message = wait_event(plane, ns, "miss", "RouteNotAccepted", stack)
        assert "NoMatchingListenerHostname" in message
        assert answer(stack, f"m-{ns}.elsewhere.foowidgets.k8s").rcode == "NXDOMAIN"
        # A route without hostnames takes the listener's: the wildcard answers below shop.
        plane.apply(http_route("any", ns, "gw", ns, []))
        stack.wait_answer(f"x-{ns}.shop.foowidgets.k8s", [address])
    finally:
        plane.kubectl("delete", "namespace", other, "--wait=false")


def test_status_rules_target_annotation_hostname_address_and_bad_input(
    gwapi: ControlPlane, namespace: str, dns_stack_factory: StackFactory
) -> None:
    """A Gateway of a class nobody implements, its status and the routes' written here as a controller
    would: Accepted decides, the target annotation wins, Hostname addresses become CNAMEs, and each
    bad input costs only its own name, with a Warning Event."""
    plane, ns = gwapi, namespace
    stack = dns_stack_factory(plane, ZONES)
    target = json.dumps({ALPHA + "target": "203.0.113.9"})
    plane.apply(gateway("byname", ns, cls="none"))
    plane.apply(gateway("annotated", ns, cls="none", annotations=target))
    plane.apply(gateway("empty", ns, cls="none"))
    plane.apply(gateway("broken", ns, cls="none"))
    patch_status(plane, "gateway", ns, "byname", {"addresses": [{"type": "Hostname",
                                                                 "value": "lb.example.net"}]})
    patch_status(plane, "gateway", ns, "annotated", {"addresses": [{"value": "10.7.0.1"}]})
    # The CRD refuses a malformed IP; a NamedAddress passes it but is no DNS target.
    patch_status(plane, "gateway", ns, "broken", {"addresses": [{"type": "IPAddress", "value": "10.7.0.2"},
                                                                {"type": "NamedAddress", "value": "vip-1"}]})
    routes = {"cname": "byname", "annotated": "annotated", "refused": "annotated", "noaddr": "empty",
              "broken": "broken", "missing": "nosuchgateway"}
    for name, gw in routes.items():
        plane.apply(http_route(name, ns, gw, ns, [f"{name}-{ns}.foowidgets.k8s"]))
        route = json.loads(plane.kubectl("get", "httproute", name, "-n", ns, "-o", "json"))
        accepted = "False" if name == "refused" else "True"
        patch_status(plane, "httproute", ns, name, {"parents": [{
            "parentRef": route["spec"]["parentRefs"][0], "controllerName": "example.com/none",
            "conditions": [{"type": "Accepted", "status": accepted, "reason": "Test", "message": "test",
                            "observedGeneration": route["metadata"]["generation"],
                            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}]})
    stack.wait_answer(f"cname-{ns}.foowidgets.k8s", ["lb.example.net."], "CNAME")
    stack.wait_answer(f"annotated-{ns}.foowidgets.k8s", ["203.0.113.9"])
    stack.wait_answer(f"broken-{ns}.foowidgets.k8s", ["10.7.0.2"])  # the good address stays
    for name, reason in (("refused", "RouteNotAccepted"), ("noaddr", "GatewayNoAddress"),
                         ("broken", "InvalidAddress"), ("missing", "GatewayNotFound")):
        wait_event(plane, ns, name, reason, stack)
        if name != "broken":
            assert answer(stack, f"{name}-{ns}.foowidgets.k8s").rcode == "NXDOMAIN", name
    log = stack.backend.process.log.read_text()
    assert f"httproute/{ns}/missing: GatewayNotFound" in log
    # The Gateway gets an address: its route answers, nothing else changed.
    patch_status(plane, "gateway", ns, "empty", {"addresses": [{"type": "IPAddress", "value": "10.7.0.3"}]})
    stack.wait_answer(f"noaddr-{ns}.foowidgets.k8s", ["10.7.0.3"])
    assert answer(stack, f"annotated-{ns}.foowidgets.k8s").values("A") == ["203.0.113.9"]


@pytest.mark.parametrize("flag", ["--gateway-name=keep", "--gateway-namespace",
                                  "--gateway-label-filter=dns in (yes)"])
def test_gateway_filter_flags(gwapi: ControlPlane, pool: LbPool, namespace: str,
                              dns_stack_factory: StackFactory, flag: str) -> None:
    """ExternalDNS's meaning: only routes attached to the selected Gateways are published."""
    plane, ns = gwapi, namespace
    other = f"{ns}-o"
    plane.kubectl("create", "namespace", other)
    try:
        if flag == "--gateway-namespace":
            flag = f"--gateway-namespace={ns}"
            kept, dropped = ("gw", ns), ("gw", other)
        else:
            kept, dropped = ("keep", ns), ("drop", ns)
        plane.apply(gateway(kept[0], kept[1], labels="{dns: 'yes'}"))
        plane.apply(gateway(dropped[0], dropped[1], labels="{dns: 'no'}"))
        stack = dns_stack_factory(plane, ZONES, [flag])
        address = wait_address(plane, *kept[::-1])
        wait_address(plane, *dropped[::-1])
        plane.apply(http_route("in", ns, kept[0], kept[1], [f"in-{ns}.foowidgets.k8s"]))
        plane.apply(http_route("out", ns, dropped[0], dropped[1], [f"out-{ns}.foowidgets.k8s"]))
        stack.wait_answer(f"in-{ns}.foowidgets.k8s", [address])
        wait_for(lambda: "Accepted" in plane.kubectl("get", "httproute", "out", "-n", ns, "-o", "json"),
                 what="the controller accepts the other route", timeout=WAIT)
        assert answer(stack, f"out-{ns}.foowidgets.k8s").rcode == "NXDOMAIN"
    finally:
        plane.kubectl("delete", "namespace", other, "--wait=false")


def test_external_dns_docs_example_applies_unchanged_and_answers(
    gwapi: ControlPlane, pool: LbPool, dns_stack_factory: StackFactory
) -> None:
    """ExternalDNS's Gateway API page (docs/sources/gateway-api.md, "Cloudflare Proxied Records"), as
    written: Gateway my-gateway (class cilium, target annotation, listener *.example.com) and HTTPRoute
    my-route for api.example.com with a TTL annotation."""
    plane = gwapi
    manifest = """
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: my-gateway
  namespace: default
  annotations:
    # ✅ Correct: target annotation on Gateway
    external-dns.alpha.kubernetes.io/target: "203.0.113.1"
spec:
  gatewayClassName: cilium
  listeners:
    - name: https
      hostname: "*.example.com"
      protocol: HTTPS
      port: 443
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: my-route
  annotations:
    # ✅ Correct: provider-specific annotations on HTTPRoute
    external-dns.alpha.kubernetes.io/cloudflare-proxied: "true"
    external-dns.alpha.kubernetes.io/ttl: "300"
spec:
  parentRefs:
    - name: my-gateway
      namespace: default
  hostnames:
    - api.example.com
  rules:
    - backendRefs:
        - name: api-service
          port: 8080
"""
    stack = dns_stack_factory(plane, ZONES)
    plane.apply(manifest, "-n", "default")
    try:
        stack.wait_answer("api.example.com", ["203.0.113.1"])
        assert answer(stack, "api.example.com").answer[0].ttl == 300
    finally:
        plane.kubectl("delete", "-n", "default", "-f", "-", input=manifest)


def test_sources_off_without_the_crds(control_plane_factory: Callable[..., ControlPlane],
                                      dns_stack_factory: StackFactory) -> None:
    plane = control_plane_factory("no-gateway-api")
    plane.apply("""
apiVersion: v1
kind: Service
metadata:
  name: plain
  annotations: {external-dns.alpha.kubernetes.io/hostname: plain.foowidgets.k8s}
spec: {type: ExternalName, externalName: elsewhere.example.net}
""", "-n", "default")
    stack = dns_stack_factory(plane, ZONES)
    stack.wait_answer("plain.foowidgets.k8s", ["elsewhere.example.net."], "CNAME")
    log = stack.backend.process.log.read_text()
    assert log.count("gateway-*route sources off") == 1, log
    assert "gateway.networking.k8s.io" not in log.replace("gateway.networking.k8s.io/v1 gateways", ""), log


# -- Gslbs over routes (k8gb's resourceRef) ----------------------------------------------------------

def shop(ns: str, parents: Sequence[str] = ("shop",), addresses: str = "") -> str:
    refs = ", ".join(f"{{name: {p}}}" for p in parents)
    return gateway("shop", ns, addresses=addresses) + f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: shop, namespace: {ns}}}
spec:
  parentRefs: [{refs}]
  hostnames: [shop-{ns}.gb.foowidgets.k8s]
  rules:
  - backendRefs: [{{name: nginx, port: 80}}]
---
apiVersion: k8gb.absa.oss/v1beta1
kind: Gslb
metadata: {{name: shop, namespace: {ns}}}
spec:
  resourceRef: {{apiVersion: gateway.networking.k8s.io/v1, kind: HTTPRoute, name: shop}}
  strategy: {{type: failover, primaryGeoTag: us-buf, dnsTtlSeconds: 2}}
"""


def gslb_ready(plane: ControlPlane, ns: str, name: str) -> dict[str, Any]:
    obj = json.loads(plane.kubectl("get", "gslbs.k8gb.absa.oss", name, "-n", ns, "-o", "json"))
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == "Ready"), {})


def test_gslb_over_an_httproute_and_two_gateway_parents(
    gwapi: ControlPlane, pool: LbPool, namespace: str, dns_stack_factory: StackFactory
) -> None:
    plane, ns = gwapi, namespace
    demo.install_crds(plane)
    plane.apply(demo.CHAPTER_APP.read_text().replace("namespace: demo", f"namespace: {ns}").replace(
        "name: demo\n", f"name: {ns}\n"))
    plane.apply(shop(ns))
    stack = dns_stack_factory(plane, ("gb.foowidgets.k8s",), demo.backend_flags("us-buf"))
    address = wait_address(plane, ns, "shop")
    host = f"shop-{ns}.gb.foowidgets.k8s"
    stack.wait_answer(host, [address])
    stack.wait_for(lambda: gslb_ready(plane, ns, "shop").get("status") == "True",
                   what="Gslb shop Ready", timeout=WAIT)
    plane.kubectl("scale", "deployment", "nginx", "-n", ns, "--replicas=0")
    stack.wait_answer(host, [])  # NODATA: the only cluster has nothing healthy
    plane.kubectl("scale", "deployment", "nginx", "-n", ns, "--replicas=1")
    stack.wait_answer(host, [address])
    # Two Gateway parents: k8gb cannot tell which addresses are the route's.
    plane.apply(gateway("second", ns))
    plane.apply(shop(ns, parents=("shop", "second")))
    stack.wait_for(lambda: gslb_ready(plane, ns, "shop").get("reason") == "InvalidParentRefs",
                   what="Ready=False InvalidParentRefs on the Gslb", timeout=WAIT)
    assert "2 Gateway parents" in gslb_ready(plane, ns, "shop")["message"]
    wait_event(plane, ns, "shop", "InvalidParentRefs", stack)


def test_gslb_over_an_httproute_answers_what_the_gateways_hostname_address_resolves_to(
    gwapi: ControlPlane, pool: LbPool, namespace: str, bind9: Bind9, dns_stack_factory: StackFactory
) -> None:
    """k8gb digs a Gateway's `Hostname` address through the edge DNS servers. The lab's controller
    gives Gateway shop the hostname it asks for (as a cloud load balancer's controller would); BIND9 on
    loopback, the edge, holds its A record; the answer, and what peers read, follow the record."""
    plane, ns = gwapi, namespace
    lb = f"lb-{ns}.foowidgets.k8s"
    set_edge_record(bind9, lb, "10.9.1.1")  # TTL 1 s
    demo.install_crds(plane)
    plane.apply(demo.CHAPTER_APP.read_text().replace("namespace: demo", f"namespace: {ns}").replace(
        "name: demo\n", f"name: {ns}\n"))
    host = f"shop-{ns.rsplit('-', 1)[1]}.gb.foowidgets.k8s"  # localtargets-<host>: a label of <= 63
    plane.apply(shop(ns, addresses=f"\n  addresses: [{{type: Hostname, value: {lb}}}]").replace(
        f"shop-{ns}.gb.foowidgets.k8s", host))
    stack = dns_stack_factory(plane, ("gb.foowidgets.k8s",), demo.backend_flags(
        "us-buf", "--edge-dns-servers", bind9.address, "--edge-publish-names", "false"))
    stack.wait_for(lambda: gateway_address(plane, ns, "shop") == [lb], what=f"Gateway shop's address {lb}")
    stack.wait_answer(host, ["10.9.1.1"])
    stack.wait_answer("localtargets-" + host, ["10.9.1.1"], timeout=10)  # what the other clusters read
    set_edge_record(bind9, lb, "10.9.1.2")  # the load balancer moves
    stack.wait_answer(host, ["10.9.1.2"])
    stack.wait_answer("localtargets-" + host, ["10.9.1.2"])


# k8gb's manifests that use a version the pinned Gateway API v1.6.0 standard CRDs list but do not
# serve (TCPRoute/UDPRoute v1alpha2, TLSRoute v1alpha2/v1alpha3: `served: false`): the apiserver
# refuses those routes, the Gslbs beside them are created and find no route.
K8GB_UNSERVED = {
    "k8gb.absa.oss_v1beta1_gslb_cr_failover_gatewayapi_tcproute.yaml": "TCPRoute v1alpha2",
    "k8gb.absa.oss_v1beta1_gslb_cr_failover_gatewayapi_tlsroute.yaml": "TLSRoute v1alpha3",
    "k8gb.absa.oss_v1beta1_gslb_cr_failover_gatewayapi_udproute.yaml": "UDPRoute v1alpha2",
    "k8gb.io_v1beta1_gslb_cr_gatewayapi_tlsroute_versions.yaml": "TLSRoute v1alpha2, v1alpha3",
}


def test_k8gb_gateway_api_manifests_apply_unchanged_and_answer(
    gwapi: ControlPlane, pool: LbPool, dns_stack_factory: StackFactory
) -> None:
    """k8gb's own Gateway API manifests (tests/manifests/k8gb/README.md says where from), applied as
    they are, beside what they take for granted: every route the apiserver serves answers the
    Gateway's address (NODATA when its backend is unhealthy or missing); the routes in versions v1.6
    no longer serves are refused by the apiserver, and their names are not served."""
    plane = gwapi
    demo.install_crds(plane)
    given = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: istio}}
spec: {{controllerName: {CONTROLLER}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: istio-ingress}}
---
apiVersion: v1
kind: Service
metadata: {{name: unhealthy-app, namespace: test-gslb-gatewayapi}}
spec:
  selector: {{app: unhealthy-app}}
  ports: [{{port: 80}}]
"""
    manifests = sorted(K8GB_MANIFESTS.glob("*.yaml"), key=lambda p: p.name != "namespace_gatewayapi.yaml")
    refused: dict[str, str] = {}
    try:
        plane.apply(demo.app("test-gslb-gatewayapi", "frontend-podinfo"))  # creates the namespace too
        plane.apply(given)
        for path in manifests:  # the namespace first (its label is theirs), then the rest
            try:
                plane.kubectl("apply", "-f", str(path))
            except RuntimeError as e:
                refused[path.name] = str(e)
        assert sorted(refused) == sorted(K8GB_UNSERVED), refused
        for name, error in refused.items():
            assert "gateway.networking.k8s.io/v1alpha" in error, (name, error)
        stack = dns_stack_factory(plane, ("cloud.example.com",), [
            "--dns-zone", "cloud.example.com", "--edge-dns-zone", "example.com", "--cluster-geo-tag", "eu"])
        address = wait_address(plane, "istio-ingress", "gatewayapi")
        for name in ("failover-httproute", "roundrobin-httproute", "tlsroute-v1"):
            stack.wait_answer(f"{name}.cloud.example.com", [address])
        for name in ("unhealthy-httproute", "notfound-httproute"):  # no healthy backend: NODATA
            stack.wait_answer(f"{name}.cloud.example.com", [])
        assert stack.dig("roundrobin-httproute.cloud.example.com").answer[0].ttl == 30  # dnsTtlSeconds
        for name in ("gatewayapi-tcproute", "gatewayapi-udproute", "failover-tlsroute", "tlsroute-v1alpha2",
                     "tlsroute-v1alpha3"):
            assert stack.dig(f"{name}.cloud.example.com").rcode == "NXDOMAIN", name
    finally:
        for ns in ("test-gslb-gatewayapi", "istio-ingress"):
            plane.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")
        plane.kubectl("delete", "gatewayclass", "istio", "--ignore-not-found")


def test_gslb_over_an_httproute_fails_over_between_two_clusters(
    control_plane_factory: Callable[..., ControlPlane], clusters: Any  # noqa: F811  (the imported fixture)
) -> None:
    """test_multicluster's two clusters behind a BIND9 edge; in each, Gateway shop (the lab controller
    gives it the address it asks for), HTTPRoute shop over the chapter's nginx and a failover Gslb."""
    addresses = {"us-buf": "10.2.3.167", "us-nyc": "10.2.3.98"}
    for tag in addresses:
        control_plane_factory(f"mc-{tag}").install_gateway_api()
    edge, cs = clusters(list(addresses))
    for c in cs:
        c.plane.apply(f"""
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: {CLASS}}}
spec: {{controllerName: {CONTROLLER}}}
""")
        wanted = f"\n  addresses: [{{type: IPAddress, value: {addresses[c.geotag]}}}]"
        c.plane.apply(shop("demo", addresses=wanted).replace("shop-demo.gb", "shop.gb"))
    host = "shop.gb.foowidgets.k8s"

    def everywhere(want: list[str]) -> Callable[[], bool]:
        return lambda: all(sorted(c.stack.dig(host, "A", "+norecurse").addresses) == want for c in cs)

    mc_until(everywhere([addresses["us-buf"]]), "both clusters answer buf's Gateway", cs)
    cs[0].scale(0)
    mc_until(everywhere([addresses["us-nyc"]]), "both clusters fail over to nyc's Gateway", cs)
    cs[0].scale(1)
    mc_until(everywhere([addresses["us-buf"]]), "both clusters fail back to buf's Gateway", cs)
    assert isinstance(edge, Bind9)
