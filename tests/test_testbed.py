"""The test bed itself: the real components do what the other tests rely on."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.query
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import dns.update
import pytest

from lab.bind9 import Bind9
from lab.coredns import FILE_TEMPLATE, CoreDNS
from lab.dig import dig
from lab.kube import CONTROL_PLANE, ControlPlane
from lab.lbpool import LbPool
from lab.proc import PYTHON, ROOT, Plane, Process, cpu_list, free_loopback_ip, wait_for

DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - port: 80
"""


def _ready_pods(plane: ControlPlane, namespace: str) -> int:
    pods = json.loads(plane.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json"))["items"]
    return sum(
        1
        for p in pods
        if any(
            c["type"] == "Ready" and c["status"] == "True" for c in p.get("status", {}).get("conditions", [])
        )
    )


@pytest.mark.controlplane
def test_deployment_gives_ready_pods_and_endpointslice(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.apply(DEPLOYMENT, "-n", namespace)
    control_plane.wait_for(lambda: _ready_pods(control_plane, namespace) == 2, what="2 Ready pods")
    control_plane.wait_for(
        lambda: len(control_plane.ready_addresses(namespace, "web")) == 2,
        what="EndpointSlice with 2 ready endpoints",
    )

    control_plane.kubectl("scale", "deployment", "web", "--replicas=0", "-n", namespace)
    control_plane.wait_for(
        lambda: not control_plane.ready_addresses(namespace, "web"), what="no ready endpoint"
    )
    control_plane.kubectl("scale", "deployment", "web", "--replicas=1", "-n", namespace)
    control_plane.wait_for(
        lambda: len(control_plane.ready_addresses(namespace, "web")) == 1, what="1 ready endpoint"
    )


@pytest.mark.controlplane
def test_control_plane_components_run_at_the_lab_cpu_weight(control_plane: ControlPlane) -> None:
    """Each component's scheduling group (its session's autogroup) has the weight the lab gives it."""
    if not Path("/proc/self/autogroup").exists() or os.geteuid() != 0:
        pytest.skip("the kernel groups no sessions (autogroup), or raising a weight needs root")
    for process in (control_plane.etcd.process, *control_plane.processes):
        group = Path(f"/proc/{process.pid}/autogroup").read_text().split()
        assert group[-2:] == ["nice", str(CONTROL_PLANE.nice)], process.name


def test_cpu_list_reads_the_kernels_cpuset_lists() -> None:
    assert cpu_list("") == frozenset()
    assert cpu_list("0") == {0}
    assert cpu_list("0,2-4") == {0, 2, 3, 4}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="one core")
def test_a_process_of_a_plane_keeps_its_cores_in_every_thread(tmp_path: Path) -> None:
    """The LAB_*_PLANE_CPUS mechanism: the affinity is set before exec, so threads the program starts
    later (a Go runtime's) are kept there too."""
    script = "import threading,time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    plane = Plane(cpus=frozenset({1}))
    p = Process("pinned", [PYTHON, "-c", script], tmp_path / "pinned.log", plane=plane).start()
    try:
        tasks = Path(f"/proc/{p.pid}/task")
        wait_for(lambda: len(list(tasks.iterdir())) == 2, what="the child's second thread", timeout=10)
        for task in tasks.iterdir():
            allowed = next(line for line in (task / "status").read_text().splitlines()
                           if line.startswith("Cpus_allowed_list:"))
            assert cpu_list(allowed.split(":", 1)[1]) == {1}, task.name
    finally:
        p.stop()


@pytest.mark.controlplane
def test_service_account_token_is_subject_to_rbac(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = control_plane.kubeconfig_for("reader", namespace, tmp_path / "kubeconfig")
    as_reader = ["--kubeconfig", str(kubeconfig)]
    denied = control_plane.kubectl("get", "pods", "-n", namespace, *as_reader, check=False)
    assert denied == ""
    control_plane.kubectl("create", "role", "read-pods", "--verb=list", "--resource=pods", "-n", namespace)
    control_plane.kubectl(
        "create",
        "rolebinding",
        "read-pods",
        "--role=read-pods",
        f"--serviceaccount={namespace}:reader",
        "-n",
        namespace,
    )
    control_plane.wait_for(
        lambda: (
            control_plane.kubectl(
                "auth", "can-i", "list", "pods", "-n", namespace, *as_reader, check=False
            ).strip()
            == "yes"
        ),
        what="RBAC binding in effect",
    )


def test_coredns_from_template_answers_dig(coredns_factory: Callable[..., CoreDNS], tmp_path: Path) -> None:
    zonefile = tmp_path / "example.db"
    zonefile.write_text(
        "$TTL 60\n@ IN SOA ns.example.test. hostmaster.example.test. 1 60 60 60 30\n"
        "@ IN NS ns.example.test.\nns IN A 127.0.0.1\nwww IN A 192.0.2.7\n"
    )
    coredns = coredns_factory(FILE_TEMPLATE, zones="example.test", zonefile=zonefile)
    answer = dig(coredns.address, "www.example.test", "A")
    assert answer.rcode == "NOERROR"
    assert "aa" in answer.flags
    assert answer.values("A") == ["192.0.2.7"]
    assert answer.answer[0].ttl == 60
    missing = dig(coredns.address, "nope.example.test", "A")
    assert missing.rcode == "NXDOMAIN"
    assert [r.rtype for r in missing.authority] == ["SOA"]


def test_coredns_binds_a_loopback_address_on_port_53(
    coredns_factory: Callable[..., CoreDNS], tmp_path: Path
) -> None:
    zonefile = tmp_path / "example.db"
    zonefile.write_text("@ 60 IN SOA ns.example.test. h.example.test. 1 60 60 60 30\nwww 60 IN A 192.0.2.8\n")
    coredns = coredns_factory(
        FILE_TEMPLATE, zones="example.test", host=free_loopback_ip(), port=53, zonefile=zonefile
    )
    assert coredns.address.endswith(":53")
    assert dig(coredns.host, "www.example.test").values("A") == ["192.0.2.8"]


def _update(bind9: Bind9, keyring: dict, name: str, ip: str) -> int:
    update = dns.update.UpdateMessage(bind9.zone, keyring=keyring, keyalgorithm=dns.tsig.HMAC_SHA256)
    update.replace(name, 60, "A", ip)
    try:
        reply = dns.query.tcp(update, bind9.host, port=bind9.port, timeout=5)
    except dns.tsig.PeerError:  # BADSIG or BADKEY: the edge refused our signature
        return dns.rcode.NOTAUTH
    return reply.rcode()


def test_bind9_accepts_tsig_update_and_refuses_wrong_key(bind9: Bind9) -> None:
    assert _update(bind9, bind9.keyring(), "app", "192.0.2.10") == dns.rcode.NOERROR
    assert dig(bind9.address, f"app.{bind9.zone}").values("A") == ["192.0.2.10"]

    wrong = dns.tsigkeyring.from_text(
        {bind9.key_name: (bind9.algorithm, "d3JvbmcgdHNpZyBzZWNyZXQgZm9yIHRlc3Q=")}
    )
    assert _update(bind9, wrong, "app", "192.0.2.99") != dns.rcode.NOERROR
    unsigned = dns.update.UpdateMessage(bind9.zone)
    unsigned.replace("app", 60, "A", "192.0.2.98")
    assert dns.query.tcp(unsigned, bind9.host, port=bind9.port, timeout=5).rcode() == dns.rcode.REFUSED
    assert dig(bind9.address, f"app.{bind9.zone}").values("A") == ["192.0.2.10"]


def test_recursive_bind9_follows_a_delegation_to_loopback_port_53(
    bind9_factory: Callable[..., Bind9], coredns_factory: Callable[..., CoreDNS], tmp_path: Path
) -> None:
    """Multi-cluster shape: the edge delegates gb.<zone> to a CoreDNS on 127.x.y.z:53 (glue has no port)."""
    zonefile = tmp_path / "gb.db"
    zonefile.write_text(
        "@ 60 IN SOA ns.gb.foowidgets.k8s. h.foowidgets.k8s. 1 60 60 60 30\n"
        "@ 60 IN NS gslb-ns-test-gb.foowidgets.k8s.\nfe 30 IN A 10.2.1.167\n"
    )
    child = coredns_factory(
        FILE_TEMPLATE, zones="gb.foowidgets.k8s", host=free_loopback_ip(), port=53, zonefile=zonefile
    )
    edge = bind9_factory(recursive=True)
    update = dns.update.UpdateMessage(edge.zone, keyring=edge.keyring(), keyalgorithm=dns.tsig.HMAC_SHA256)
    update.add("gb", 60, "NS", f"gslb-ns-test-gb.{edge.zone}.")
    update.add("gslb-ns-test-gb", 60, "A", child.host)
    assert dns.query.tcp(update, edge.host, port=edge.port, timeout=5).rcode() == dns.rcode.NOERROR

    answer = dig(edge.address, "fe.gb.foowidgets.k8s", "A")
    assert answer.rcode == "NOERROR"
    assert answer.values("A") == ["10.2.1.167"]
    assert "ra" in answer.flags
    referral = dig(edge.address, "fe.gb.foowidgets.k8s", "A", "+norecurse")
    assert referral.answer == () and [r.rtype for r in referral.authority] == ["NS"]


LB_OBJECTS = """
apiVersion: v1
kind: Service
metadata:
  name: lb-a
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata:
  name: lb-b
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: fe
spec:
  ingressClassName: nginx
  rules:
  - host: fe.gb.foowidgets.k8s
    http:
      paths:
      - path: /
        pathType: Prefix
        backend: {service: {name: web, port: {number: 80}}}
"""


def _lb(plane: ControlPlane, kind: str, namespace: str, name: str) -> str:
    return plane.kubectl(
        "get", kind, name, "-n", namespace, "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}"
    )


@pytest.mark.controlplane
def test_lbpool_fills_load_balancer_status_like_metallb_and_an_ingress_controller(
    control_plane: ControlPlane, namespace: str, lbpool_factory: Callable[..., LbPool]
) -> None:
    lbpool_factory(
        control_plane,
        ingress=["10.2.1.167"],
        services=["172.18.200.150", "172.18.200.151"],
        fixed={f"{namespace}/lb-b": "172.18.200.101"},
    )
    control_plane.apply(LB_OBJECTS, "-n", namespace)
    control_plane.wait_for(
        lambda: _lb(control_plane, "service", namespace, "lb-b") == "172.18.200.101",
        what="fixed pool address",
    )
    control_plane.wait_for(
        lambda: _lb(control_plane, "service", namespace, "lb-a") == "172.18.200.150",
        what="first free pool address",
    )
    control_plane.wait_for(
        lambda: _lb(control_plane, "ingress", namespace, "fe") == "10.2.1.167", what="ingress address"
    )


def test_installer_second_run_does_nothing() -> None:
    """`make test` ran `deps/install.sh all` already: running it again builds, copies and installs nothing."""
    run = subprocess.run(
        [str(ROOT / "deps" / "install.sh"), "all"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("[deps]")]
    assert len(lines) == 1 and lines[0].startswith("[deps] ready:"), run.stderr
