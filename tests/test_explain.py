"""`coredns-gslb explain`: through a real backend on the real apiserver, running under the least-privilege
ServiceAccount of k8s/rbac.yaml; plus the report's reasoning on an in-process Store."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backend.cli_explain import lab_addresses, render
from backend.config import from_args
from backend.explain import Explainer, why
from backend.model import Endpoint, ObjectRef, Store, Strategy, Target
from backend.zone.build import compile_table
from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.proc import PYTHON, ROOT
from lab.run import prepare_cluster
from lab.sidecar import Backend

GSLB_FLAGS = ("--zones", "foowidgets.k8s", "--dns-zone", "gb.foowidgets.k8s", "--edge-dns-zone",
              "foowidgets.k8s", "--cluster-geo-tag", "us-buf", "--ext-gslb-clusters-geo-tags", "us-nyc")
NODATA = "failover: no healthy target in any cluster -> NODATA (SOA, negative TTL 5s)"
BUF, NYC = Target("10.2.1.167", "us-buf"), Target("10.2.1.98", "us-nyc")


def explain_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PYTHON), "-m", "backend.cli", "explain", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


# --- the reasoning, on an in-process Store ------------------------------------------------------------

def test_why_names_the_rule_that_picked_the_answer() -> None:
    failover = Strategy("failover", "us-buf")
    assert why(failover, (BUF, NYC), 5) == ("failover: primary us-buf is healthy -> "
                                            "answering us-buf's 10.2.1.167")
    assert why(failover, (NYC,), 5) == ("failover: primary us-buf has no healthy target -> "
                                        "answering us-nyc's 10.2.1.98")
    assert why(failover, (), 5) == NODATA
    weighted = why(Strategy("roundRobin", weights=(("us-buf", 75), ("us-nyc", 25))), (BUF, NYC), 5)
    assert "us-buf 75% (10.2.1.167), us-nyc 25% (10.2.1.98)" in weighted
    assert why(Strategy("roundRobin"), (BUF, NYC), 5).startswith("roundRobin: all 2 healthy targets, rotated")
    assert "us-nyc get 10.2.1.98" in why(Strategy("geoip"), (BUF, NYC), 5)


def test_report_merges_producers_and_says_refused_or_nxdomain() -> None:
    store = Store()
    gslb = ObjectRef("Gslb", "demo", "gslb-failover-buf", api_version="k8gb.absa.oss/v1beta1")
    store.replace("gslb/demo/gslb-failover-buf",
                  [Endpoint("fe.gb.foowidgets.k8s", "A", (), 30, gslb, Strategy("failover", "us-buf")),
                   Endpoint("localtargets-fe.gb.foowidgets.k8s", "A", (BUF,), 30, gslb)])
    store.replace("peer/us-nyc", [Endpoint("fe.gb.foowidgets.k8s", "A", (NYC,))])
    store.replace("dnsendpoint/demo/wild", [Endpoint("*.apps.foowidgets.k8s", "A", (Target("192.0.2.7"),), 60,
                                                     ObjectRef("DNSEndpoint", "demo", "wild"))])
    settings = from_args(list(GSLB_FLAGS))
    table = compile_table(settings, store.endpoints(), 1)
    explainer = Explainer(settings, store, lambda: table)

    report = explainer.report("FE.gb.foowidgets.k8s.")
    [record] = report["records"]
    assert record["answers"] == [["10.2.1.98"]]
    assert record["served"] == {"rcode": "NOERROR", "answer": ["10.2.1.98"]}  # the table agrees
    assert record["why"] == "failover: primary us-buf has no healthy target -> answering us-nyc's 10.2.1.98"
    assert record["producers"] == [{"key": "gslb/demo/gslb-failover-buf", "targets": []},
                                   {"key": "peer/us-nyc", "targets": ["10.2.1.98"]}]
    assert record["sources"][0]["name"] == "gslb-failover-buf"
    assert record["targets"] == [{"value": "10.2.1.98", "geotag": "us-nyc", "health": "Healthy",
                                  "origin": "peer"}]
    assert "from Gslb demo/gslb-failover-buf" in render(report)

    nyc6 = Target("fd00::98", "us-nyc")  # a peer-only AAAA carries our Gslb's strategy (peers/exchange.py)
    store.replace("peer/us-nyc", [Endpoint("fe.gb.foowidgets.k8s", "A", (NYC,)),
                                  Endpoint("fe.gb.foowidgets.k8s", "AAAA", (nyc6,), 30,
                                           strategy=Strategy("failover", "us-buf"))])
    aaaa = explainer.report("fe.gb.foowidgets.k8s")["records"][1]
    assert aaaa["why"] == "failover: primary us-buf has no healthy target -> answering us-nyc's fd00::98"
    assert explainer.report("gb.foowidgets.k8s")["records"][0]["why"].startswith("the zone's own record")

    assert explainer.report("x.apps.foowidgets.k8s")["wildcard"] == "*.apps.foowidgets.k8s"
    assert explainer.report("nope.foowidgets.k8s")["rcode"] == "NXDOMAIN"
    assert explainer.report("nope.foowidgets.k8s")["served"]["rcode"] == "NXDOMAIN"
    assert explainer.report("example.org")["rcode"] == "REFUSED"
    assert asyncio.run(explainer.handle({}))[0] == 400
    status, content_type, body = asyncio.run(explainer.handle({"name": ["fe.gb.foowidgets.k8s"]}))
    assert (status, content_type) == (200, "application/json")
    assert json.loads(body)["records"][0]["answers"] == [["10.2.1.98"]]


def test_cluster_addresses_come_from_the_lab(tmp_path: Path) -> None:
    clusters = {"us-buf": {"dns": "127.0.0.21:53", "admin": "127.0.0.1:18080"},
                "us-nyc": {"dns": "127.0.0.22:53", "admin": "127.0.0.1:18081"}}
    (tmp_path / "state.json").write_text(json.dumps({"clusters": clusters}))
    assert lab_addresses(None, tmp_path) == {"us-buf": "127.0.0.1:18080", "us-nyc": "127.0.0.1:18081"}
    assert lab_addresses("us-nyc", tmp_path) == {"us-nyc": "127.0.0.1:18081"}
    with pytest.raises(SystemExit, match="no cluster 'us-lon'"):
        lab_addresses("us-lon", tmp_path)
    assert lab_addresses(None, tmp_path / "no-lab") == {}
    del clusters["us-nyc"]["admin"]  # a lab started before the address was recorded
    (tmp_path / "state.json").write_text(json.dumps({"clusters": clusters}))
    with pytest.raises(SystemExit, match="no backend admin address for us-nyc"):
        lab_addresses(None, tmp_path)


def test_cli_says_when_the_backend_is_unreachable() -> None:
    run = explain_cli("nginx.foowidgets.k8s", "--http", "127.0.0.1:9")
    assert run.returncode == 1
    assert "cannot reach the backend of 127.0.0.1:9 at 127.0.0.1:9" in run.stderr


# --- through a real backend and apiserver -------------------------------------------------------------

@pytest.fixture(scope="module")
def least_privilege(control_plane: ControlPlane) -> Path:
    """CRDs, namespace, ServiceAccount and RBAC from k8s/ (as the lab does); the account's kubeconfig."""
    return prepare_cluster(control_plane)


def _poll_report(plane: ControlPlane, backend: Backend, name: str, ready: Callable[[dict[str, Any]], bool],
                 what: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        status, body = backend.get(f"/explain?name={name}")
        seen.update(json.loads(body) if status == 200 else {})
        return status == 200 and ready(seen)

    plane.wait_for(check, what=what, timeout=30)
    return seen


@pytest.mark.controlplane
def test_explain_names_the_service_and_its_ip(control_plane: ControlPlane, namespace: str,
                                              least_privilege: Path,
                                              backend_factory: Callable[..., Backend]) -> None:
    control_plane.apply(f"""
apiVersion: v1
kind: Service
metadata:
  name: nginx-ext-dns
  namespace: {namespace}
  annotations:
    external-dns.alpha.kubernetes.io/hostname: nginx.foowidgets.k8s
spec:
  type: LoadBalancer
  selector: {{app: nginx}}
  ports: [{{port: 80, protocol: TCP, targetPort: 80}}]
""")
    with control_plane.api_client() as api:
        set_load_balancer(api, "Service", namespace, "nginx-ext-dns", ["172.18.200.101"])
    backend = backend_factory(least_privilege, *GSLB_FLAGS, "--namespace", "coredns-gslb")

    def mine(report: dict[str, Any]) -> bool:
        return any(s["namespace"] == namespace for r in report["records"] for s in r["sources"]) and any(
            "172.18.200.101" in r["served"]["answer"] for r in report["records"])

    _poll_report(control_plane, backend, "nginx.foowidgets.k8s", mine, "explain lists the Service")
    # /explain is on the admin listener (127.0.0.1 in a pod) only; the pod port has probes and /metrics
    assert backend.get("/explain?name=nginx.foowidgets.k8s", admin=False)[0] == 404
    assert backend.get("/readyz", admin=False)[0] == 200 and backend.get("/metrics", admin=False)[0] == 200
    for bad, reason in (("a..b.foowidgets.k8s", "empty label"), ("a%00b.foowidgets.k8s", "character '\\x00'"),
                        ("x" * 64 + ".foowidgets.k8s", "label of 64 characters"),
                        (".".join(["abcdefgh"] * 32), "at most 253"), ("a b", "character ' '")):
        status, body = backend.get(f"/explain?name={bad.replace(' ', '%20')}")
        assert status == 400 and body.startswith("bad name: ") and reason in body, (bad, status, body)
        assert body.count("\n") == 1, body
    assert backend.get("/explain?name=a&name=b")[0] == 400
    assert "Traceback" not in backend.process.log.read_text()
    run = explain_cli("nginx.foowidgets.k8s", "--http", backend.admin.removeprefix("http://"))
    assert run.returncode == 0, run.stderr
    assert f"from Service {namespace}/nginx-ext-dns (v1)" in run.stdout
    wrong = explain_cli("nginx.foowidgets.k8s", "--http", backend.admin.removeprefix("http://") + "/nowhere")
    assert wrong.returncode == 1 and "said 404: not found" in wrong.stderr
    assert f"store service/{namespace}/nginx-ext-dns: 172.18.200.101" in run.stdout
    assert "A ttl" in run.stdout and "172.18.200.101" in run.stdout.splitlines()[1]
    served = next(line for line in run.stdout.splitlines() if "a query now gets:" in line)
    assert "NOERROR" in served and "172.18.200.101" in served


@pytest.mark.controlplane
def test_explain_shows_gslb_health_and_failover_reason(control_plane: ControlPlane, namespace: str,
                                                       least_privilege: Path,
                                                       backend_factory: Callable[..., Backend]) -> None:
    host = f"fe-{namespace}.gb.foowidgets.k8s"
    control_plane.apply(f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: nginx, namespace: {namespace}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: nginx}}}}
  template:
    metadata: {{labels: {{app: nginx}}}}
    spec:
      containers: [{{name: nginx, image: nginx, ports: [{{containerPort: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: nginx, namespace: {namespace}}}
spec:
  selector: {{app: nginx}}
  ports: [{{port: 80, protocol: TCP, targetPort: 80}}]
---
apiVersion: k8gb.absa.oss/v1beta1
kind: Gslb
metadata: {{name: gslb-failover-buf, namespace: {namespace}}}
spec:
  ingress:
    ingressClassName: nginx
    rules:
    - host: {host}
      http:
        paths:
        - path: /
          pathType: Prefix
          backend: {{service: {{name: nginx, port: {{number: 80}}}}}}
  strategy: {{type: failover, primaryGeoTag: us-buf}}
""")
    backend = backend_factory(least_privilege, *GSLB_FLAGS, "--namespace", "coredns-gslb")
    # The backend (leader) creates the Ingress for the Gslb; an ingress controller would then set its address.
    owned = ("get", "ingress", "gslb-failover-buf", "-n", namespace, "--ignore-not-found")
    control_plane.wait_for(lambda: bool(control_plane.kubectl(*owned)), what="the owned Ingress")
    with control_plane.api_client() as api:
        set_load_balancer(api, "Ingress", namespace, "gslb-failover-buf", ["10.2.1.167"])

    healthy = _poll_report(control_plane, backend, host,
                           lambda r: bool(r["records"]) and r["records"][0]["answers"] == [["10.2.1.167"]]
                           and r["records"][0]["served"]["answer"] == ["10.2.1.167"],
                           "explain and the served table answer us-buf's 10.2.1.167")
    [record] = healthy["records"]
    assert record["why"] == "failover: primary us-buf is healthy -> answering us-buf's 10.2.1.167"
    assert healthy["gslb"][0]["health"] == "Healthy"
    assert healthy["gslb"][0]["services"] == [f"{namespace}/nginx"]

    control_plane.kubectl("scale", "deployment", "nginx", "--replicas=0", "-n", namespace)
    down = _poll_report(control_plane, backend, host,
                        lambda r: bool(r["gslb"]) and r["gslb"][0]["health"] == "Unhealthy"
                        and r["records"][0]["served"] == {"rcode": "NOERROR", "answer": []},
                        "explain sees the host Unhealthy and the table answering NODATA")
    [record] = down["records"]
    assert record["why"] == NODATA
    unhealthy = {"value": "10.2.1.167", "geotag": "us-buf", "health": "Unhealthy", "origin": "local"}
    assert unhealthy in record["targets"]
    run = explain_cli(host, "--http", backend.admin.removeprefix("http://"))
    assert run.returncode == 0, run.stderr
    assert f"from Gslb {namespace}/gslb-failover-buf (k8gb.absa.oss/v1beta1)" in run.stdout
    assert "10.2.1.167       geotag us-buf   Unhealthy local" in run.stdout
