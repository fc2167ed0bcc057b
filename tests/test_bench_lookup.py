"""The churn's cheap polls (bench/lookup.py, `churn.poll_interval`): the same addresses and NXDOMAIN
dnspython reads from the same reply, from real CoreDNS too, and a poll spacing whose error stays within
10 ms or 10 % of the time measured; the scraper's gauge lookup."""

from __future__ import annotations

import itertools
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bench.churn import COUNTED, GC, LOOP_GAUGES, POLL_MAX, STALLS, Want, gauge, lines_of, poll_interval
from bench.dataset import ZONE
from bench.lookup import Lookup, parse
from bench.objects import Api, service
from bench.scale import addresses
from lab.kube import ControlPlane
from lab.sidecar import DnsStack

NAME = f"app.{ZONE}."


def _reply(rcode: int, *rrsets: dns.rrset.RRset, authority: tuple[dns.rrset.RRset, ...] = ()) -> bytes:
    """What a server would answer to NAME A (with id 0)."""
    query = dns.message.make_query(NAME, "A")
    query.id = 0
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    reply.answer.extend(rrsets)
    reply.authority.extend(authority)
    return reply.to_wire()


REPLIES = {
    "two addresses": _reply(dns.rcode.NOERROR,
                            dns.rrset.from_text(NAME, 30, "IN", "A", "10.0.0.9", "10.0.0.10")),
    "a CNAME to an address": _reply(dns.rcode.NOERROR,
                                    dns.rrset.from_text(NAME, 30, "IN", "CNAME", "b.foowidgets.k8s."),
                                    dns.rrset.from_text("b.foowidgets.k8s.", 30, "IN", "A", "192.0.2.1")),
    "NODATA": _reply(dns.rcode.NOERROR, authority=(dns.rrset.from_text(
        "foowidgets.k8s.", 30, "IN", "SOA", "ns. host. 1 2 3 4 5"),)),
    "NXDOMAIN": _reply(dns.rcode.NXDOMAIN, authority=(dns.rrset.from_text(
        "foowidgets.k8s.", 30, "IN", "SOA", "ns. host. 1 2 3 4 5"),)),
    "SERVFAIL": _reply(dns.rcode.SERVFAIL),
}


@pytest.mark.parametrize("case", REPLIES)
def test_parse_reads_what_dnspython_reads(case: str) -> None:
    wire = REPLIES[case]
    message = dns.message.from_wire(wire)
    question_end = len(dns.message.make_query(NAME, "A").to_wire())
    want = sorted(rd.to_text() for rr in message.answer if rr.rdtype == 1 for rd in rr)
    assert parse(wire, question_end) == (message.rcode(), want)


@pytest.fixture
def stale_first_server() -> Iterator[str]:
    """A UDP server that answers each query with a reply to another ID first, then the real one."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)

    def serve() -> None:
        try:
            while True:
                data, peer = sock.recvfrom(512)
                query = dns.message.from_wire(data)
                for qid, address in ((query.id ^ 1, "10.9.9.9"), (query.id, "10.0.0.1")):
                    reply = dns.message.make_response(query)
                    reply.id = qid
                    reply.answer.append(dns.rrset.from_text(query.question[0].name, 5, "IN", "A", address))
                    sock.sendto(reply.to_wire(), peer)
        except OSError:  # closed, or no more queries
            return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    thread.join(10)


def test_a_reply_to_another_query_is_not_taken_for_this_one(stale_first_server: str) -> None:
    lookup = Lookup(stale_first_server)
    assert [lookup.addresses(NAME) for _ in range(3)] == [["10.0.0.1"]] * 3  # one socket, IDs apart


def test_poll_interval_keeps_the_error_within_10ms_or_10_percent() -> None:
    assert poll_interval(0.0) == poll_interval(0.099) == 0.01
    assert poll_interval(0.5) == pytest.approx(0.05)
    assert poll_interval(60.0) == POLL_MAX == 0.2
    # an answer that changed at t, after the last poll that missed it at w <= t, is seen at
    # w + poll_interval(w): late by at most poll_interval(w) <= max(10 ms, 10 % of w) <= max(10 ms, 10 % of t)
    waits = [k / 100 for k in range(1000)]
    assert all(poll_interval(w) <= max(0.01, 0.1 * w) + 1e-12 for w in waits)
    assert all(poll_interval(a) <= poll_interval(b) for a, b in itertools.pairwise(waits))


@pytest.mark.controlplane
def test_lookup_and_scraper_read_coredns_and_the_backend_as_dnspython_and_regexes_do(
        control_plane: ControlPlane, dns_stack: DnsStack, namespace: str) -> None:
    api, lookup = Api(control_plane), Lookup(dns_stack.address)
    name = f"lookup.{ZONE}"
    api.create(service(namespace, "lookup", ["192.0.2.7", "192.0.2.5"], hostname=name))
    dns_stack.wait_answer(name, ["192.0.2.5", "192.0.2.7"])
    assert lookup.addresses(name) == addresses(dns_stack.address, name) == ["192.0.2.5", "192.0.2.7"]
    assert Want(name, ["192.0.2.5", "192.0.2.7"]).holds(lookup)
    missing = f"missing.{ZONE}"
    assert lookup.addresses(missing) is None
    assert Want(missing, None).holds(lookup) and not Want(missing, ["192.0.2.5"]).holds(lookup)
    # what the churn's scraper reads from this backend's /metrics, as a regex over all of it reads it
    status, body = dns_stack.backend.get("/metrics", admin=False)
    assert status == 200 and all(gauge(body, name) is not None for name in LOOP_GAUGES.values())
    counted = "".join(lines_of(body, prefix) for prefix in COUNTED)
    assert STALLS.findall(counted) == STALLS.findall(body) != [] and GC.findall(counted) == GC.findall(body)


def test_the_scraper_finds_only_the_unlabelled_gauge_line() -> None:
    body = ("# HELP coredns_gslb_loop_lag_max_seconds x\ncoredns_gslb_loop_lag_max_seconds_other 9.0\n"
            'coredns_gslb_loop_lag_max_seconds{a="b"} 8.0\ncoredns_gslb_loop_lag_max_seconds 0.042\n'
            "coredns_gslb_loop_held_max_seconds 0.5")  # the last line without its newline
    assert gauge(body, "coredns_gslb_loop_lag_max_seconds") == 0.042
    assert gauge(body, "coredns_gslb_loop_held_max_seconds") == 0.5
    assert gauge(body, "coredns_gslb_missing") is None


def test_the_scraper_keeps_the_counted_families_as_a_regex_over_the_whole_body_reads_them() -> None:
    registry = CollectorRegistry()
    Gauge("coredns_gslb_loop_stall_seconds_before", "a neighbour", registry=registry).set(3)
    stalls = Counter("coredns_gslb_loop_stall_seconds", "stalls", ["cause"], registry=registry)
    pauses = Histogram("coredns_gslb_gc_pause_seconds", "pauses", ["generation"], registry=registry,
                       buckets=(0.01, 0.05))
    Gauge("coredns_gslb_z", "after", registry=registry).set(1)
    for k, cause in enumerate(("cpu", "blocked", "loop")):
        stalls.labels(cause).inc(k + 0.5)
        pauses.labels(str(k)).observe(0.02 * k)
    per_gslb = 'k8gb_gslb_errors_total{name="g-1"} 0.0\n' * 1000
    body = (generate_latest(registry).decode() + "# HELP k8gb_gslb_errors_total e\n"
            "# TYPE k8gb_gslb_errors_total counter\n" + per_gslb)
    counted = "".join(lines_of(body, prefix) for prefix in COUNTED)
    assert len(counted) < 3000 and STALLS.findall(counted) == STALLS.findall(body) != []
    assert GC.findall(counted) == GC.findall(body) != []
    assert lines_of(body, "coredns_gslb_z ") == "coredns_gslb_z 1.0\n" and lines_of(body, "coredns_x") == ""
    assert lines_of(body, "k8gb_gslb_errors_total{").count("\n") == 1000
