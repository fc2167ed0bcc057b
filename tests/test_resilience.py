"""Failure without loss, through the real components: an unsynced backend writes nothing to the edge
(BIND9), makes CoreDNS use its next upstream instead of answering SERVFAIL, and restarts and rollouts
behind `coredns-gslb listen` lose no answer under dnsperf load. Each test takes a control plane of
its own where it stops the apiserver."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dns.query
import dns.tsig
import dns.zone
import pytest

from bench import dnsperf
from lab.bind9 import Bind9
from lab.coredns import CoreDNS
from lab.dig import dig
from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.proc import ROOT, sample, wait_for
from lab.sidecar import Backend, Listener

pytestmark = pytest.mark.controlplane
NGINX_LB = ROOT / "lab" / "manifests" / "nginx-lb.yaml"
NAME = "nginx.foowidgets.k8s"


def chapter_service(plane: ControlPlane) -> None:
    plane.apply(NGINX_LB.read_text())
    set_load_balancer(plane.api_client(), "Service", "default", "nginx-ext-dns", ["172.18.200.101"])


def axfr(edge: Bind9) -> list[str]:
    """The whole edge zone, as BIND9 transfers it (TSIG-signed), one sorted line per record."""
    keyring = dns.tsig.Key(edge.key_name, edge.secret, dns.tsig.HMAC_SHA256)
    zone = dns.zone.from_xfr(dns.query.xfr(edge.host, edge.zone, port=edge.port, keyring=keyring, timeout=10))
    return sorted(zone.to_text().splitlines())


def test_an_unsynced_backend_changes_nothing_at_the_edge(
        control_plane_factory: Callable[..., ControlPlane], bind9: Bind9, tmp_path: Path,
        started: list[Backend | Listener | CoreDNS]) -> None:
    """API frozen + backend restarted: the edge keeps every name and NS record, byte for byte (before
    the gate the restarted backend's first pass removed nginx.foowidgets.k8s from an empty Store)."""
    plane = control_plane_factory("res-edge")
    chapter_service(plane)
    flags = ["--zones", "foowidgets.k8s", "--dns-zone", "gb.foowidgets.k8s", "--edge-dns-zone",
             "foowidgets.k8s", "--edge-dns-servers", bind9.address, "--cluster-geo-tag", "us-buf",
             "--nameserver-address", "127.0.0.11", "--tsig-key-file", str(bind9.key_file)]
    backend = Backend(tmp_path, plane.kubeconfig, flags)
    started.append(backend.start())
    wait_for(lambda: "edge: delegation foowidgets.k8s in sync; names foowidgets.k8s in sync"
             in backend.get("/readyz")[1] and dig(bind9.address, NAME, "A", "+norecurse").addresses
             == ["172.18.200.101"], what="nginx and our delegation at the edge", timeout=60)
    before = axfr(bind9)
    assert any(line.startswith("gb 30 IN NS gslb-ns-us-buf-gb") for line in before), before

    plane.stop_apiserver()
    try:
        backend.stop()
        backend.start(ready=False)
        wait_for(lambda: "waiting for the first full sync" in backend.get("/readyz")[1],
                 what="the restarted backend up and unsynced", timeout=30)
        time.sleep(6)  # what an ungated edge pass did within a second of start
        assert axfr(bind9) == before
        assert "edge: not synced yet" in backend.get("/readyz")[1]
    finally:
        plane.start_apiserver()
    wait_for(lambda: backend.get("/readyz")[0] == 200, what="the backend synced after the outage", timeout=60)
    wait_for(lambda: "names foowidgets.k8s in sync" in backend.get("/readyz")[1], what="an edge pass",
             timeout=60)
    assert axfr(bind9) == before, "the synced backend found nothing to change either"


def _dig_loop(server: str, seconds: float) -> dict[str, int]:
    return dict(Counter(sample(lambda: dig(server, NAME).rcode or "timeout", seconds, 0)))


def test_an_unsynced_backend_makes_coredns_use_the_next_upstream(
        control_plane_factory: Callable[..., ControlPlane], coredns_factory: Callable[..., CoreDNS],
        tmp_path: Path, started: list[Backend | Listener | CoreDNS]) -> None:
    """Two backends in one grpc line, one restarted during an API outage: not one SERVFAIL (before:
    the unsynced one answered SERVFAIL, a final reply, to about half the queries)."""
    plane = control_plane_factory("res-two")
    chapter_service(plane)
    flags = ["--zones", "foowidgets.k8s"]
    one, two = Backend(tmp_path, plane.kubeconfig, flags, name="one"), Backend(tmp_path, plane.kubeconfig,
                                                                               flags, name="two")
    started += [one.start(), two.start()]
    coredns = coredns_factory(zones="foowidgets.k8s", grpc=f"{one.grpc} {two.grpc}")
    wait_for(lambda: dig(coredns.address, NAME).addresses == ["172.18.200.101"], what="the answer",
             timeout=30)

    plane.stop_apiserver()
    try:
        one.stop()
        one.start(ready=False)
        assert one.get("/readyz")[0] == 503
        rcodes = _dig_loop(coredns.address, 8)
        assert one.get("/readyz")[0] == 503, "still unsynced: the API is away"
        two.stop()  # no synced upstream left: CoreDNS says SERVFAIL, nothing answers from an empty model
        single = _dig_loop(coredns.address, 2)
    finally:
        plane.start_apiserver()
    assert rcodes.get("NOERROR", 0) >= 20 and set(rcodes) == {"NOERROR"}, rcodes
    assert set(single) == {"SERVFAIL"}, single
    assert 'coredns_gslb_unsynced_calls_total' in one.get("/metrics")[1]


def _first_answer_after(server: str, since: float, limit: float = 30.0) -> float:
    """Seconds from `since` until CoreDNS first answers NAME (dig every 50 ms)."""
    wait_for(lambda: dig(server, NAME, timeout=0.5).addresses == ["172.18.200.101"],
             what=f"CoreDNS answering {NAME} after the backend is ready", timeout=limit, interval=0.05)
    return time.monotonic() - since


def test_behind_the_listener_a_restart_answers_at_once_and_a_rollout_loses_nothing(
        control_plane_factory: Callable[..., ControlPlane], coredns_factory: Callable[..., CoreDNS],
        tmp_path: Path, started: list[Backend | Listener | CoreDNS]) -> None:
    """`coredns-gslb listen` holds the sockets: after 25 s without a backend (longer than grpc-go's
    20 s connect timeout, so its back-off would have grown) answers return within 1 s of /readyz 200;
    a second backend started beside the first takes over under dnsperf load with 0 SERVFAIL, 0 lost."""
    plane = control_plane_factory("res-roll")
    chapter_service(plane)
    holder = Listener(tmp_path)
    started.append(holder.start())
    flags = ["--zones", "foowidgets.k8s"]
    first = Backend(tmp_path, plane.kubeconfig, flags, name="first", listener=holder)
    started.append(first.start())
    coredns = coredns_factory(zones="foowidgets.k8s", grpc=holder.grpc)
    wait_for(lambda: dig(coredns.address, NAME).addresses == ["172.18.200.101"], what="the answer",
             timeout=30)

    first.stop()
    down = dig(coredns.address, NAME)
    assert down.rcode == "SERVFAIL", down.output  # the standby's UNAVAILABLE: CoreDNS has no other upstream
    time.sleep(25)
    first.start()
    assert _first_answer_after(coredns.address, time.monotonic()) < 1.0

    run = roll_under_load(tmp_path, plane.kubeconfig, holder, first, flags, started, coredns.address, NAME,
                          20)
    assert run.rcodes == {"NOERROR": run.completed} and run.lost == 0 and run.completed > 4000, run
    assert "hands over to backend" in holder.process.log.read_text()


def dnsperf_in_background(server: str, name: str, seconds: float, tmp_path: Path,
                          rate: int = 400) -> Callable[[], dnsperf.Run]:
    """dnsperf asking `name` at `rate` q/s for `seconds`, on a thread; the function returned waits for it."""
    queries = tmp_path / "queries.txt"
    queries.write_text(f"{name} A\n")
    result: list[dnsperf.Run] = []
    load = threading.Thread(target=lambda: result.append(dnsperf.run(server, queries, seconds, rate=rate)))
    load.start()

    def done() -> dnsperf.Run:
        load.join(seconds + 40)
        assert not load.is_alive(), f"dnsperf ({seconds} s of load) did not finish within {seconds + 40} s"
        return result[0]

    return done


def roll_under_load(tmp_path: Path, kubeconfig: Path, holder: Listener, first: Backend, flags: list[str],
                    started: list[Backend | Listener | CoreDNS], server: str, name: str,
                    seconds: float) -> dnsperf.Run:
    """A rollout under dnsperf (400 q/s at `server` for `seconds`): 3 s in, a second backend with `flags`
    starts behind `holder` and `first` hands over to it and exits."""
    done = dnsperf_in_background(server, name, seconds, tmp_path)
    time.sleep(3)
    second = Backend(tmp_path, kubeconfig, flags, name="second", listener=holder)
    started.append(second.start())
    wait_for(lambda: not first.process.alive(), what="the first backend handing over and exiting", timeout=30)
    return done()
