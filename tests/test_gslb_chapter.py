"""Issue 4 through real CoreDNS, the real apiserver and kwok: the chapter's Gslb, the other ways a name
enters the GSLB (resourceRef, annotated Ingress, LoadBalancer Service, IPv6) and bad Gslbs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import demo
from lab.dig import DigResult
from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.sidecar import DnsStack

pytestmark = pytest.mark.controlplane

ZONE = "gb.foowidgets.k8s"
HOST = demo.HOST


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> ControlPlane:
    demo.install_crds(control_plane)
    return control_plane


@pytest.fixture
def stack(crds: ControlPlane, dns_stack_factory: Callable[..., DnsStack]) -> DnsStack:
    return dns_stack_factory(crds, zones=(ZONE,), flags=demo.backend_flags("us-buf"))


def gslb(plane: ControlPlane, ns: str, name: str, group: str = "k8gb.absa.oss") -> dict[str, Any]:
    return json.loads(plane.kubectl("get", f"gslbs.{group}", name, "-n", ns, "-o", "json"))


def ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or () if c["type"] == "Ready"), {})


def events(plane: ControlPlane, ns: str, name: str) -> list[tuple[str, str]]:
    out = plane.kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return [(e["type"], e["reason"]) for e in json.loads(out)["items"]]


def nodata(r: DigResult) -> bool:
    return r.rcode == "NOERROR" and not r.answer and any(a.rtype == "SOA" for a in r.authority)


@pytest.fixture
def chapter(crds: ControlPlane) -> Iterator[ControlPlane]:
    """namespace demo with nginx (Deployment + Service), cleaned up afterwards (the plane is shared)."""
    crds.apply(demo.CHAPTER_APP.read_text(), "--server-side")
    yield crds
    crds.kubectl("delete", "gslbs.k8gb.absa.oss", "--all", "-n", "demo", "--ignore-not-found")
    crds.kubectl("delete", "deployment,service,ingress", "--all", "-n", "demo", "--ignore-not-found")


def test_chapter_failover_gslb_follows_the_deployment(chapter: ControlPlane, stack: DnsStack) -> None:
    plane = chapter
    plane.apply(demo.CHAPTER_GSLB.read_text(), "--server-side")  # the chapter's manifest, unchanged

    # The backend creates and owns the Ingress, as k8gb does; an ingress controller fills its status.
    def owned() -> bool:
        ing = json.loads(plane.kubectl("get", "ingress", "gslb-failover-buf", "-n", "demo", "-o", "json"))
        refs = ing["metadata"].get("ownerReferences") or []
        return ing["metadata"]["labels"]["app.k8gb.io/managed-by"] == "gslb" and refs[0]["kind"] == "Gslb"

    stack.wait_for(owned, what="the owned Ingress")
    announce(plane, "Ingress", "demo", "gslb-failover-buf", ["10.2.1.167"])
    stack.wait_answer(HOST, ["10.2.1.167"], timeout=30)
    r = stack.dig(HOST)
    assert r.answer[0].ttl == 30 and "aa" in r.flags

    table = plane.kubectl("get", "gslb", "-n", "demo")
    assert table.split()[:3] == ["NAME", "STRATEGY", "GEOTAG"], table
    stack.wait_for(lambda: plane.kubectl("get", "gslb", "-n", "demo").split()[3:6]
                   == ["gslb-failover-buf", "failover", "us-buf"], what="kubectl get gslb: failover us-buf")
    assert "HOSTS" in plane.kubectl("get", "gslb", "-n", "demo", "-o", "wide")
    stack.wait_for(lambda: gslb(plane, "demo", "gslb-failover-buf")["status"]["serviceHealth"]
                   == {HOST: "Healthy"}, what="serviceHealth Healthy")
    obj = gslb(plane, "demo", "gslb-failover-buf")
    assert obj["status"]["healthyRecords"] == {HOST: ["10.2.1.167"]}
    assert obj["status"]["hosts"] == HOST and ready(obj)["status"] == "True"

    plane.kubectl("scale", "deploy", "nginx", "-n", "demo", "--replicas=0")
    stack.wait_for(lambda: nodata(stack.dig(HOST)), what="NODATA after scaling to 0")
    soa = next(a for a in stack.dig(HOST).authority if a.rtype == "SOA")
    assert int(soa.data.split()[-1]) == 5  # the short negative TTL, so recovery is not cached for long
    stack.wait_for(lambda: gslb(plane, "demo", "gslb-failover-buf")["status"]["serviceHealth"]
                   == {HOST: "Unhealthy"}, what="serviceHealth Unhealthy")
    assert ready(gslb(plane, "demo", "gslb-failover-buf"))["reason"] == "Unhealthy"
    assert stack.dig("localtargets-" + HOST).rcode == "NXDOMAIN"  # peers see no local target
    stack.wait_for(lambda: ("Warning", "HostUnhealthy") in events(plane, "demo", "gslb-failover-buf"),
                   what="Event HostUnhealthy")

    plane.kubectl("scale", "deploy", "nginx", "-n", "demo", "--replicas=1")
    stack.wait_answer(HOST, ["10.2.1.167"], timeout=30)
    stack.wait_for(lambda: ("Normal", "HostHealthy") in events(plane, "demo", "gslb-failover-buf"),
                   what="Event HostHealthy")
    assert stack.dig("localtargets-" + HOST).values("A") == ["10.2.1.167"]

    # The Ingress belongs to the Gslb: an edit is put back, and so is a deleted one.
    def host_of_ingress() -> str:
        return plane.kubectl("get", "ingress", "gslb-failover-buf", "-n", "demo", "--ignore-not-found",
                             "-o", "jsonpath={.spec.rules[0].host}")

    edit = [{"op": "replace", "path": "/spec/rules/0/host", "value": f"edited.{ZONE}"}]
    plane.kubectl("patch", "ingress", "gslb-failover-buf", "-n", "demo", "--type=json",
                  "-p", json.dumps(edit))
    stack.wait_for(lambda: host_of_ingress() == HOST, what="the edit reverted")
    plane.kubectl("delete", "ingress", "gslb-failover-buf", "-n", "demo")
    stack.wait_for(lambda: host_of_ingress() == HOST, what="the Ingress re-created")


def exists(plane: ControlPlane, kind: str, namespace: str, name: str) -> Callable[[], bool]:
    return lambda: bool(plane.kubectl("get", kind, name, "-n", namespace, "--ignore-not-found"))


def announce(plane: ControlPlane, kind: str, namespace: str, name: str, ips: list[str]) -> None:
    """Fill the load-balancer status as MetalLB or an ingress controller would."""
    with plane.api_client() as api:
        set_load_balancer(api, kind, namespace, name, ips)


def test_annotated_ingress_gets_a_gslb(crds: ControlPlane, namespace: str, stack: DnsStack) -> None:
    plane = crds
    plane.apply(demo.app(namespace, "shop"))
    notes = {"k8gb.io/strategy": "failover", "k8gb.io/primary-geotag": "us-buf",
             "k8gb.io/dns-ttl-seconds": "12"}
    plane.apply(demo.ingress(namespace, "shop", f"shop.{ZONE}", "shop", notes))
    announce(plane, "Ingress", namespace, "shop", ["10.2.1.50"])
    stack.wait_answer(f"shop.{ZONE}", ["10.2.1.50"], timeout=30)
    obj = gslb(plane, namespace, "shop")
    ref = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "shop", "namespace": namespace}
    assert obj["spec"]["resourceRef"] == ref
    assert obj["spec"]["strategy"] == {"type": "failover", "primaryGeoTag": "us-buf", "dnsTtlSeconds": 12}
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "Ingress"
    assert stack.dig(f"shop.{ZONE}").answer[0].ttl == 12

    plane.kubectl("annotate", "ingress", "shop", "-n", namespace, "--overwrite",
                  "k8gb.io/strategy=roundRobin")
    stack.wait_for(lambda: gslb(plane, namespace, "shop")["spec"]["strategy"]["type"] == "roundRobin",
                   what="the Gslb follows the annotation")


def test_loadbalancer_service_gslb_with_ipv6(crds: ControlPlane, namespace: str, stack: DnsStack) -> None:
    """k8gb users have asked for plain LoadBalancer Services since 2020, and for IPv6."""
    plane = crds
    host = f"api.{ZONE}"
    plane.apply(demo.app(namespace, "api"))
    patch = {"metadata": {"annotations": {"k8gb.io/hostname": host}}, "spec": {"type": "LoadBalancer"}}
    plane.kubectl("patch", "service", "api", "-n", namespace, "-p", json.dumps(patch))
    announce(plane, "Service", namespace, "api", ["172.18.200.10", "fd00:10::10"])
    ref = {"apiVersion": "v1", "kind": "Service", "name": "api"}
    plane.apply(demo.gslb(namespace, "api", {"type": "roundRobin"}, resource_ref=ref, group="k8gb.io"))
    stack.wait_answer(host, ["172.18.200.10"], timeout=30)
    stack.wait_answer(host, ["fd00:10::10"], "AAAA", timeout=30)
    assert stack.dig(f"localtargets-{host}", "AAAA").values("AAAA") == ["fd00:10::10"]
    stack.wait_for(lambda: gslb(plane, namespace, "api", "k8gb.io").get("status", {}).get("healthyRecords")
          == {host: ["172.18.200.10", "fd00:10::10"]}, what="status of the k8gb.io Gslb")

    plane.kubectl("scale", "deploy", "api", "-n", namespace, "--replicas=0")
    stack.wait_for(lambda: nodata(stack.dig(host, "AAAA")), what="AAAA NODATA when the Service has no pod")


BAD = {
    "unknown-strategy": ({"type": "weighted"}, "UnknownStrategy"),
    "failover-no-primary": ({"type": "failover"}, "MissingPrimaryGeoTag"),
    "negative-weight": ({"type": "roundRobin", "weight": {"us-buf": -5, "us-nyc": 10}}, "InvalidWeight"),
    "zero-weights": ({"type": "roundRobin", "weight": {"us-buf": 0, "us-nyc": 0}}, "InvalidWeight"),
}


def test_bad_gslbs_get_conditions_and_events_and_the_rest_keeps_answering(
    crds: ControlPlane, namespace: str, stack: DnsStack
) -> None:
    plane = crds
    plane.apply(demo.app(namespace, "good"))
    docs = [demo.gslb(namespace, name, strategy, host=f"{name}.{ZONE}", service="good")
            for name, (strategy, _) in [*BAD.items(), ("good", ({"type": "roundRobin"}, ""))]]
    ref = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "nothing"}
    docs.append(demo.gslb(namespace, "dangling", {"type": "roundRobin"}, resource_ref=ref))
    # the API refuses the Ingress this Gslb asks for (not a lowercase RFC 1123 name)
    docs.append(demo.gslb(namespace, "bad-host", {"type": "roundRobin"}, host=f"Bad_Host.{ZONE}",
                          service="good"))
    plane.apply("\n---\n".join(docs))
    demo.announce_ingress(plane, namespace, "good", ["10.3.0.1"])
    stack.wait_answer(f"good.{ZONE}", ["10.3.0.1"], timeout=30)

    expected = {name: reason for name, (_, reason) in BAD.items()} | {"dangling": "ResourceNotFound"}
    for name, reason in expected.items():
        stack.wait_for(lambda n=name, r=reason: ready(gslb(plane, namespace, n)).get("reason") == r,
                       what=f"{name}: Ready=False {reason}")
        assert ready(gslb(plane, namespace, name))["status"] == "False"
        stack.wait_for(lambda n=name, r=reason: ("Warning", r) in events(plane, namespace, n),
                       what=f"{name}: Event {reason}")
        assert stack.dig(f"{name}.{ZONE}").rcode == "NXDOMAIN"
    stack.wait_for(lambda: ("Warning", "WriteRejected") in events(plane, namespace, "bad-host"),
                   what="Event WriteRejected")
    assert stack.backend.process.alive()
    assert ready(gslb(plane, namespace, "good"))["status"] == "True"
    status, body = stack.backend.get("/metrics")
    series = f'k8gb_gslb_errors_total{{name="unknown-strategy",namespace="{namespace}"}}'
    assert status == 200 and series in body


def test_gslb_writes_work_under_the_shipped_least_privilege_rbac(
    crds: ControlPlane, namespace: str, dns_stack_factory: Callable[..., DnsStack], tmp_path: Path
) -> None:
    """The backend as the k8s/ ServiceAccount: owned Ingress, annotation-made Gslb, status, Events, Lease."""
    plane = crds
    for manifest in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        plane.apply((demo.ROOT / "k8s" / manifest).read_text(), "--server-side")
    kubeconfig = plane.kubeconfig_for("coredns-gslb", "coredns-gslb", tmp_path / "kubeconfig")
    flags = demo.backend_flags("us-buf", "--namespace", "coredns-gslb")
    stack = dns_stack_factory(kubeconfig, zones=(ZONE,), flags=flags)
    plane.apply(demo.app(namespace, "web"))
    plane.apply(demo.gslb(namespace, "owned", {"type": "roundRobin"}, host=f"owned.{ZONE}", service="web"))
    notes = {"k8gb.io/strategy": "roundRobin"}
    plane.apply(demo.ingress(namespace, "annotated", f"annotated.{ZONE}", "web", notes))
    stack.wait_for(exists(plane, "ingress", namespace, "owned"), what="the owned Ingress")
    stack.wait_for(exists(plane, "gslb", namespace, "annotated"), what="the annotation-made Gslb")
    for name in ("owned", "annotated"):
        announce(plane, "Ingress", namespace, name, ["10.5.0.1"])
    for name in ("owned", "annotated"):
        stack.wait_answer(f"{name}.{ZONE}", ["10.5.0.1"], timeout=30)
        stack.wait_for(lambda n=name: ready(gslb(plane, namespace, n)).get("status") == "True",
                       what=f"{name} Ready")
    plane.kubectl("scale", "deploy", "web", "-n", namespace, "--replicas=0")
    stack.wait_for(lambda: ("Warning", "HostUnhealthy") in events(plane, namespace, "owned"),
                   what="Event as the SA")
    denied = 'User "system:serviceaccount:coredns-gslb:coredns-gslb" cannot'  # the apiserver's RBAC refusal
    assert denied not in stack.backend.process.log.read_text()
