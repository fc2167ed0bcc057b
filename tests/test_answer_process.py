"""`serve --answer-process` through the real apiserver and CoreDNS: a child process answers CoreDNS's
gRPC from the Store the backend sends it (backend/answer/). Names answer and follow changes, NOTIFY
reaches the backend, /metrics counts the child's queries, a SIGKILLed child is restarted on the same
socket and answers again (dnsperf counts what was lost meanwhile), a SIGKILLed backend's child ends
with it and frees the port, and behind `coredns-gslb listen` a rollout hands over without a lost
answer."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import pytest

from backend.server import split_hostport
from lab.coredns import CoreDNS
from lab.dig import dig
from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.proc import stat_fields, wait_for
from lab.sidecar import Backend, DnsStack, Listener
from tests.test_resilience import dnsperf_in_background, roll_under_load

pytestmark = pytest.mark.controlplane
FLAG = "--answer-process"


def service(namespace: str, host: str) -> str:
    return f"""apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {namespace}
  annotations:
    external-dns.alpha.kubernetes.io/hostname: {host}
spec:
  type: LoadBalancer
  ports: [{{port: 80}}]
"""


def answer_pids(backend: Backend) -> list[int]:
    """The backend's answer processes (its children running `backend.answer`)."""
    pid = backend.process.pid
    assert pid is not None
    children = [c for task in Path(f"/proc/{pid}/task").iterdir()  # each thread's children
                for c in (task / "children").read_text().split()]
    found = []
    for child in children:
        try:
            if b"backend.answer" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.append(int(child))
        except FileNotFoundError:  # ended meanwhile
            pass
    return found


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting for whoever adopted it)."""
    try:
        return stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def counter(metrics: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", metrics, re.M)
    return float(found[1]) if found else 0.0


def test_answers_changes_notify_metrics_and_a_killed_child(
        control_plane: ControlPlane, namespace: str, dns_stack_factory: Callable[..., DnsStack],
        tmp_path: Path) -> None:
    host = f"web.{namespace}.foowidgets.k8s"
    control_plane.apply(service(namespace, host))
    api = control_plane.api_client()
    set_load_balancer(api, "Service", namespace, "web", ["172.18.200.101"])
    stack = dns_stack_factory(control_plane, flags=[FLAG])
    stack.wait_answer(host, ["172.18.200.101"])
    [child] = answer_pids(stack.backend)
    set_load_balancer(api, "Service", namespace, "web", ["172.18.200.102"])
    stack.wait_answer(host, ["172.18.200.102"])

    notify = dns.message.make_query("foowidgets.k8s", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    coredns_host, _, coredns_port = stack.address.rpartition(":")
    reply = dns.query.udp(notify, coredns_host, port=int(coredns_port), timeout=5)
    assert reply.rcode() == dns.rcode.NOERROR, reply
    wait_for(lambda: "NOTIFY for foowidgets.k8s" in stack.backend.process.log.read_text(),
             what="the backend logging the NOTIFY the answer process got", timeout=10)
    series = 'coredns_gslb_queries_total{qtype="A",rcode="NOERROR",zone="foowidgets.k8s"}'
    wait_for(lambda: counter(stack.backend.get("/metrics", admin=False)[1], series) >= 2,
             what="the answer process's query counts on /metrics", timeout=10)
    metrics = stack.backend.get("/metrics", admin=False)[1]
    before = counter(metrics, series)
    assert "coredns_gslb_loop_lag_seconds_count" in metrics

    done = dnsperf_in_background(stack.address, host, 10, tmp_path, rate=200)
    time.sleep(2)
    killed = time.monotonic()
    os.kill(child, signal.SIGKILL)
    wait_for(lambda: answer_pids(stack.backend) not in ([], [child]), what="a new answer process", timeout=10)
    stack.wait_answer(host, ["172.18.200.102"])
    back = time.monotonic() - killed
    set_load_balancer(api, "Service", namespace, "web", ["172.18.200.103"])
    stack.wait_answer(host, ["172.18.200.103"])  # the new child follows changes too
    run = done()
    print(f"answer process SIGKILLed under dnsperf at 200 q/s: answering again {back:.2f} s later; sent "
          f"{run.sent}, completed {run.completed}, lost {run.lost}, rcodes {run.rcodes}, max {run.max_ms} ms")
    assert run.completed > 0 and run.rcodes.get("NOERROR", 0) > 0, run
    metrics = stack.backend.get("/metrics", admin=False)[1]
    assert counter(metrics, "coredns_gslb_answer_process_restarts_total") == 1.0
    # kept across the restart (the killed child's last second, not yet sent, is lost with it)
    assert counter(metrics, series) > before + run.rcodes["NOERROR"] / 2, metrics

    # the backend SIGKILLed: its answer process ends with it and frees the port for the next backend
    pids = [stack.backend.process.pid, *answer_pids(stack.backend)]
    assert pids[0] is not None
    os.kill(pids[0], signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in pids), what="the answer process ending with its "
             "SIGKILLed backend", timeout=5)
    with socket.socket() as again:
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(split_hostport(stack.backend.grpc))  # OSError (EADDRINUSE) while a child holds it


def test_behind_the_listener_a_rollout_loses_nothing(
        control_plane: ControlPlane, namespace: str, coredns_factory: Callable[..., CoreDNS], tmp_path: Path,
        started: list[Backend | Listener | CoreDNS]) -> None:
    """The handed socket goes to the answer process; a second backend started beside the first takes
    over under dnsperf load: 0 SERVFAIL, 0 lost."""
    host = f"web.{namespace}.foowidgets.k8s"
    control_plane.apply(service(namespace, host))
    set_load_balancer(control_plane.api_client(), "Service", namespace, "web", ["172.18.200.101"])
    holder = Listener(tmp_path)
    started.append(holder.start())
    flags = ["--zones", "foowidgets.k8s", FLAG]
    first = Backend(tmp_path, control_plane.kubeconfig, flags, name="first", listener=holder)
    started.append(first.start())
    coredns = coredns_factory(zones="foowidgets.k8s", grpc=holder.grpc)
    wait_for(lambda: dig(coredns.address, host).addresses == ["172.18.200.101"], what="the answer",
             timeout=30)
    assert answer_pids(first)

    run = roll_under_load(tmp_path, control_plane.kubeconfig, holder, first, flags, started, coredns.address,
                          host, 15)
    print(f"rollout with --answer-process under dnsperf at 400 q/s: sent {run.sent}, completed "
          f"{run.completed}, lost {run.lost}, rcodes {run.rcodes}, p99 {run.p99_ms} ms, max {run.max_ms} ms")
    assert run.rcodes == {"NOERROR": run.completed} and run.lost == 0 and run.completed > 4000, run
    second = started[-1]
    assert isinstance(second, Backend) and second is not first and answer_pids(second)
