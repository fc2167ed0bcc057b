"""IPv6, hostname status, headless Services, Ingresses, DNSEndpoints and bad annotations, through the
real apiserver, our backend and real CoreDNS."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.sidecar import DnsStack
from tests.test_sources_services import ALPHA

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.controlplane
StackFactory = Callable[..., DnsStack]


@pytest.fixture(scope="module")
def crd(control_plane: ControlPlane) -> None:
    """ExternalDNS's DNSEndpoint CRD, installed before any backend starts (so it is watched at once)."""
    control_plane.kubectl("apply", "-f", str(ROOT / "k8s/crds/dnsendpoint.yaml"))
    control_plane.kubectl("wait", "--for=condition=Established", "crd/dnsendpoints.externaldns.k8s.io",
                          "--timeout=30s")


@pytest.fixture
def stack(crd: None, dns_stack: DnsStack) -> DnsStack:
    return dns_stack


def lb_service(name: str, namespace: str, hostname: str, **annotations: str) -> str:
    extra = "".join(f"\n    {ALPHA}{k.replace('_', '-')}: {json.dumps(v)}" for k, v in annotations.items())
    return f"""
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  annotations:
    {ALPHA}hostname: {hostname}{extra}
spec:
  type: LoadBalancer
  ports: [{{port: 80}}]
"""


def test_ipv6_lb_answers_aaaa_and_hostname_status_answers_cname(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    control_plane.apply(lb_service("v6", namespace, f"v6-{namespace}.foowidgets.k8s"))
    control_plane.apply(lb_service("byname", namespace, f"byname-{namespace}.foowidgets.k8s"))
    api = control_plane.api_client()
    set_load_balancer(api, "Service", namespace, "v6", ["2001:db8::101", "172.18.200.7"])
    set_load_balancer(api, "Service", namespace, "byname", ["lb-1.example.net"])
    stack.wait_answer(f"v6-{namespace}.foowidgets.k8s", ["2001:db8::101"], "AAAA")
    stack.wait_answer(f"v6-{namespace}.foowidgets.k8s", ["172.18.200.7"])
    stack.wait_answer(f"byname-{namespace}.foowidgets.k8s", ["lb-1.example.net."], "CNAME")


def pod_ips(plane: ControlPlane, namespace: str, names: list[str]) -> dict[str, str]:
    ips: dict[str, str] = {}

    def all_running() -> bool:
        for name in names:
            pod = plane.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
            ip = pod.get("status", {}).get("podIP")
            if ip:
                ips[name] = ip
        return len(ips) == len(names)

    plane.wait_for(all_running, what=f"pods {names} running with IPs", timeout=60)
    return ips


def set_pod_ready(plane: ControlPlane, namespace: str, name: str, ready: bool) -> None:
    """What a kubelet does when a readiness probe fails; kwok leaves the condition as written."""
    pod = plane.request("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")
    conditions = pod["status"]["conditions"]
    for c in conditions:
        if c["type"] in ("Ready", "ContainersReady"):
            c["status"] = "True" if ready else "False"
    plane.request("PATCH", f"/api/v1/namespaces/{namespace}/pods/{name}/status",
                  {"status": {"conditions": conditions}}, content_type="application/merge-patch+json")


def test_headless_service_answers_ready_pods_and_drops_an_unready_one(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    name = f"hl-{namespace}.foowidgets.k8s"
    pods = "".join(f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: web-{i}, namespace: {namespace}, labels: {{app: hl}}}}
spec: {{hostname: web-{i}, subdomain: hl, containers: [{{name: nginx, image: nginx}}]}}""" for i in range(2))
    control_plane.apply(f"""
apiVersion: v1
kind: Service
metadata:
  name: hl
  namespace: {namespace}
  annotations: {{{ALPHA}hostname: {name}}}
spec: {{clusterIP: None, selector: {{app: hl}}, ports: [{{port: 80}}]}}{pods}
""")
    ips = pod_ips(control_plane, namespace, ["web-0", "web-1"])
    stack.wait_answer(name, sorted(ips.values()))
    stack.wait_answer(f"web-1.{name}", [ips["web-1"]])
    set_pod_ready(control_plane, namespace, "web-1", False)
    stack.wait_answer(name, [ips["web-0"]])
    stack.wait_answer(f"web-1.{name}", "NXDOMAIN")
    set_pod_ready(control_plane, namespace, "web-1", True)
    stack.wait_answer(name, sorted(ips.values()))


def test_ingress_rules_and_tls_hosts_answer_its_lb_status(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    control_plane.apply(f"""
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {{name: web, namespace: {namespace}}}
spec:
  rules:
  - host: www-{namespace}.foowidgets.k8s
    http:
      paths:
      - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
  tls:
  - hosts: [secure-{namespace}.foowidgets.k8s]
""")
    set_load_balancer(control_plane.api_client(), "Ingress", namespace, "web", ["10.2.1.167"])
    stack.wait_answer(f"www-{namespace}.foowidgets.k8s", ["10.2.1.167"])
    stack.wait_answer(f"secure-{namespace}.foowidgets.k8s", ["10.2.1.167"])


def test_dnsendpoint_answers_every_record_type(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    z = f"{namespace}.foowidgets.k8s"
    entries = [
        (f"a.{z}", "A", ["192.0.2.10", "192.0.2.11"]),
        (f"a.{z}", "AAAA", ["2001:db8::10"]),
        (f"alias.{z}", "CNAME", ["target.example.org"]),
        (f"txt.{z}", "TXT", ["hello world"]),
        (f"_sip._tcp.{z}", "SRV", ["10 60 5060 sip.example.org."]),
        (f"mail.{z}", "MX", ["10 mx1.example.org."]),
        (f"sub.{z}", "NS", ["ns1.example.org"]),
    ]
    control_plane.apply(json.dumps({
        "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint",
        "metadata": {"name": "records", "namespace": namespace},
        "spec": {"endpoints": [{"dnsName": n, "recordType": t, "targets": v, "recordTTL": 120}
                               for n, t, v in entries]},
    }))
    stack.wait_answer(f"a.{z}", ["192.0.2.10", "192.0.2.11"])
    stack.wait_answer(f"a.{z}", ["2001:db8::10"], "AAAA")
    stack.wait_answer(f"alias.{z}", ["target.example.org."], "CNAME")
    stack.wait_answer(f"txt.{z}", ['"hello world"'], "TXT")
    stack.wait_answer(f"_sip._tcp.{z}", ["10 60 5060 sip.example.org."], "SRV")
    stack.wait_answer(f"mail.{z}", ["10 mx1.example.org."], "MX")
    r = stack.dig(f"sub.{z}", "NS", "+norecurse")
    assert [rr.data for rr in r.answer + r.authority if rr.rtype == "NS"] == ["ns1.example.org."], r.output
    assert stack.dig(f"a.{z}", "A").answer[0].ttl == 120


def events_for(plane: ControlPlane, namespace: str, name: str) -> list[dict]:
    items = plane.request("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def test_malformed_annotations_are_skipped_with_an_event_and_the_rest_is_served(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    good = f"good-{namespace}.foowidgets.k8s"
    control_plane.apply(lb_service("messy", namespace, f"{good},elsewhere.example.com", ttl="soon",
                                   target="172.18.200.50,172.18.200.999"))
    stack.wait_answer(good, ["172.18.200.50"])
    assert stack.dig(good).answer[0].ttl == 300  # the bad ttl falls back to the default
    want = {"InvalidTTL", "InvalidTarget", "OutsideZones"}
    control_plane.wait_for(
        lambda: want <= {e["reason"] for e in events_for(control_plane, namespace, "messy")},
        what=f"Warning Events {want} on service messy", timeout=30)
    events = events_for(control_plane, namespace, "messy")
    assert all(e["type"] == "Warning" and e["involvedObject"]["kind"] == "Service" for e in events), events
    assert any("172.18.200.999" in e["message"] for e in events), events
    out = control_plane.kubectl("get", "events", "-n", namespace,
                                "--field-selector", "involvedObject.name=messy")
    assert "InvalidTTL" in out, out


def test_cname_beside_an_address_loses_with_an_event_on_its_object(
    control_plane: ControlPlane, stack: DnsStack, namespace: str
) -> None:
    name = f"shared-{namespace}.foowidgets.k8s"
    control_plane.apply(lb_service("addr", namespace, name))
    control_plane.apply(lb_service("alias", namespace, name))
    api = control_plane.api_client()
    set_load_balancer(api, "Service", namespace, "addr", ["172.18.200.60"])
    set_load_balancer(api, "Service", namespace, "alias", ["lb.example.net"])
    stack.wait_answer(name, ["172.18.200.60"])
    assert stack.dig(name, "CNAME").values("CNAME") == []
    control_plane.wait_for(
        lambda: any(e["reason"] == "RecordConflict" for e in events_for(control_plane, namespace, "alias")),
        what="RecordConflict Event on service alias", timeout=30)
    assert not any(e["reason"] == "RecordConflict" for e in events_for(control_plane, namespace, "addr"))


def test_sigterm_stops_serve_cleanly(control_plane: ControlPlane, stack: DnsStack) -> None:
    proc = stack.backend.process
    assert proc.popen is not None
    proc.popen.send_signal(signal.SIGTERM)
    assert proc.popen.wait(15) == 0, proc.tail()
    assert "shutting down" in proc.tail(), proc.tail()
