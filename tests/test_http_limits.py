"""HTTP clients that take more than their share (issue 12: "a /metrics client that reads slowly or
never reads must not hold memory or the loop"), against DnsServer as the backend runs it (on a uvloop
thread of its own: tests/test_dns_semantics.py's InProcessBackend) with k8gb's series for 10,000 Gslbs
on /metrics (~4 MiB) and real CoreDNS in front. While scrapers that never read, from many addresses,
hold every connection they may, kubelet's probes, a Prometheus at an address of its own and DNS
answers still work (a reply waiting for its client gives its scrape slot to the next scrape), and the
non-readers are cut off.
"""

from __future__ import annotations

import dataclasses
import re
import select
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from backend import metrics
from backend.server import WRITE_TIMEOUT
from backend.zone.build import compile_table
from lab.coredns import CoreDNS
from lab.dig import dig
from lab.proc import wait_for
from tests.test_dns_semantics import ENDPOINTS, SETTINGS, InProcessBackend, geo

GSLBS = 10_000
LIMITED = dataclasses.replace(SETTINGS, http_max_connections=40, metrics_max_scrapes=8,
                              metrics_max_scrapes_per_client=2)
STATUSES = ("Healthy", "Unhealthy", "NotFound")
CLOSED = select.POLLRDHUP | select.POLLHUP | select.POLLERR


@pytest.fixture
def exposition_size() -> Iterator[int]:
    """k8gb's series for GSLBS Gslbs in this process's metrics, as the GSLB engine keeps them, removed
    afterwards: the size of /metrics in bytes."""
    labels = [("slow", f"g-{i}") for i in range(GSLBS)]
    for gslb in labels:
        metrics.GSLB_HEALTHY_RECORDS.set(gslb, 1)
        metrics.GSLB_RECONCILIATION_LOOPS.inc(gslb)
        for status in STATUSES:
            metrics.GSLB_SERVICE_STATUS.set((*gslb, status), status == "Healthy")
    yield len(metrics.exposition())
    for gslb in labels:
        metrics.GSLB_HEALTHY_RECORDS.remove(gslb)
        metrics.GSLB_RECONCILIATION_LOOPS.remove(gslb)
        for status in STATUSES:
            metrics.GSLB_SERVICE_STATUS.remove((*gslb, status))


@pytest.fixture
def backend(exposition_size: int) -> Iterator[InProcessBackend]:
    b = InProcessBackend(settings=LIMITED)
    b.start()
    b.serve(compile_table(LIMITED, ENDPOINTS, 2026120201, geo))
    yield b
    b.stop()


def get(port: int, path: str) -> tuple[int, bytes]:
    """(status, body) of a GET from 127.0.0.1, read whole."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape_without_reading(port: int, source: str) -> socket.socket:
    """A connection from `source` that asks for /metrics and reads nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: backend\r\n\r\n")
    return sock


def closed(sock: socket.socket, events: int = CLOSED) -> bool:
    """The server has closed or reset the connection (asked without reading what it sent); with
    `events=select.POLLIN`: it has sent something."""
    poller = select.poll()
    poller.register(sock, events)
    return bool(poller.poll(0))


def status_of(sock: socket.socket) -> str:
    """The status line, the first bytes the server sent."""
    return sock.recv(64).split(b"\r\n", 1)[0].decode()


def test_scrapers_that_never_read_leave_probes_prometheus_and_answers_alone(
        coredns_factory: Callable[..., CoreDNS], backend: InProcessBackend, exposition_size: int) -> None:
    """40 scrapes that never read, 2 from each of 20 addresses (pods at 127.0.2.x), fill LIMITED's
    40 connections, 5 times its 8 scrape slots: each waits for its client while the next takes its
    slot. Probes, a Prometheus at an address of its own and DNS answers go on; the non-readers are cut
    off at WRITE_TIMEOUT."""
    port = backend.server.http_port
    coredns = coredns_factory(zones="foowidgets.k8s", grpc=backend.grpc)
    assert exposition_size > 3_000_000
    held: list[socket.socket] = []

    def let_in(source: str) -> bool:
        sock = scrape_without_reading(port, source)
        wait_for(lambda: closed(sock, select.POLLIN), what=f"the reply to {source}'s scrape begun",
                 timeout=WRITE_TIMEOUT / 2)
        if status_of(sock) == "HTTP/1.1 200 OK":
            held.append(sock)
            return True
        sock.close()  # 503: every slot's reply was still moving, which a non-reader's stops doing
        return False

    for i in range(LIMITED.http_max_connections):
        source = f"127.0.2.{1 + i % 20}"
        wait_for(partial(let_in, source), what=f"a scrape from {source} let in", timeout=WRITE_TIMEOUT / 2)

    # at the connection cap: a probe's connection resets a non-reader's (the oldest) to make room
    assert get(port, "/healthz") == (200, b"ok\n")
    wait_for(lambda: any(map(closed, held)), what="a non-reader reset", timeout=WRITE_TIMEOUT / 2)
    assert get(port, "/readyz")[0] == 200
    status, body = get(port, "/metrics")
    assert status == 200 and len(body) >= exposition_size - 100_000 and body.endswith(b"\n")
    assert b'k8gb_gslb_healthy_records{name="g-9999",namespace="slow"} 1.0\n' in body
    assert dig(coredns.address, "nginx.foowidgets.k8s").addresses == ["172.18.200.101"]

    wait_for(lambda: all(map(closed, held)), what="the 40 scrapes that never read cut off",
             timeout=WRITE_TIMEOUT + 20)
    status, body = get(port, "/metrics")  # built anew: the bodies the non-readers held are gone
    preempted = re.search(rb"^coredns_gslb_http_scrapes_preempted_total (\S+)$", body, re.M)
    assert status == 200 and preempted and float(preempted[1]) >= len(held) - LIMITED.metrics_max_scrapes
    for sock in held:
        sock.close()


def test_connections_that_send_nothing_make_room_for_probes(backend: InProcessBackend) -> None:
    """LIMITED's 40 connections held, none sending a request: a probe is still answered, the oldest
    idle connection reset to make room for it, the others kept."""
    port = backend.server.http_port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]
    assert get(port, "/healthz") == (200, b"ok\n")
    wait_for(lambda: closed(idle[0]), what="the oldest idle connection reset", timeout=WRITE_TIMEOUT / 2)
    assert get(port, "/readyz")[0] == 200  # in the room the first probe's connection left
    assert not any(map(closed, idle[1:]))
    for sock in idle:
        sock.close()
