"""Every rcode rule, sent through real CoreDNS (grpc plugin) to our DnsServer: what a client sees.

The backend runs in-process on its own event-loop thread, fed with a table compiled from hand-made
Endpoints (wire semantics need no apiserver). Queries go to CoreDNS with the real dig, or as raw UDP
where dig cannot build the packet (a response, several questions, odd opcodes).
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import grpc
import pytest

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target
from backend.proto import dns_pb2, dns_pb2_grpc
from backend.server import DnsServer, new_event_loop
from backend.zone.build import compile_table
from backend.zone.lookup import Table
from lab.coredns import CoreDNS
from lab.dig import DigResult, dig

SETTINGS = Settings(
    zones=("foowidgets.k8s",),
    gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
    cluster_geotag="us-buf",
    ext_gslb_clusters_geotags=("us-nyc",),
    grpc_listen="127.0.0.1:0",
    http_listen="127.0.0.1:0",
)
REF = ObjectRef("Service", "default", "nginx-ext-dns")
ENDPOINTS = [
    Endpoint("nginx.foowidgets.k8s", "A", (Target("172.18.200.101"),), 60, REF),
    Endpoint("deep.ent.foowidgets.k8s", "TXT", (Target("hello"),), 60, REF),
    Endpoint("alias.foowidgets.k8s", "CNAME", (Target("nginx.foowidgets.k8s"),), 60, REF),
    Endpoint("*.wild.foowidgets.k8s", "A", (Target("10.0.0.7"),), 60, REF),
    Endpoint("many.foowidgets.k8s", "A", tuple(Target(f"10.1.0.{i}") for i in range(1, 61)), 60, REF),
    Endpoint(
        "geo.gb.foowidgets.k8s",
        "A",
        (Target("10.2.1.167", "us-buf"),),
        30,
        ObjectRef("Gslb", "demo", "geo"),
        Strategy("geoip"),
    ),
    Endpoint("geo.gb.foowidgets.k8s", "A", (Target("10.2.1.98", "us-nyc"),), 30, None),
]
QUESTION = b"\x05nginx\x0afoowidgets\x03k8s\x00\x00\x01\x00\x01"


def geo(ip: str) -> str | None:
    """127.0.0.0/24 (what CoreDNS's rewrite puts in ECS for loopback clients) is us-nyc."""
    return "us-nyc" if ip.startswith("127.") else "us-buf" if ip.startswith("198.51.100.") else None


class InProcessBackend:
    """DnsServer on its own event loop thread, so CoreDNS can reach it while the test blocks on dig."""

    def __init__(self, use_uvloop: bool = True, settings: Settings = SETTINGS) -> None:
        self.loop = new_event_loop(use_uvloop)  # the loop the backend runs (--uvloop, the default)
        self.thread = threading.Thread(target=self.loop.run_forever, name="dns-server", daemon=True)
        self.server = DnsServer(settings)
        self.notified: list[tuple[str, str]] = []
        self.server.on_notify(lambda zone, peer: self.notified.append((zone, peer)))

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(1), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    def serve(self, table: Table) -> None:
        self.server.set_table(table)  # one attribute store: safe from this thread
        self.server.set_ready(table.ready)


@pytest.fixture(scope="module")
def backend() -> Iterator[InProcessBackend]:
    b = InProcessBackend()
    b.start()
    yield b
    b.stop()


@pytest.fixture
def served(backend: InProcessBackend) -> InProcessBackend:
    backend.serve(compile_table(SETTINGS, ENDPOINTS, 2026112701, geo))
    return backend


@pytest.fixture
def coredns(coredns_factory: Callable[..., CoreDNS], served: InProcessBackend) -> CoreDNS:
    """CoreDNS running the shipped Corefile (corefile/README.md), for every name (".") so
    that names outside our zones reach the backend too."""
    return coredns_factory(zones=".", grpc=served.grpc)


def udp(server: CoreDNS, packet: bytes, timeout: float = 2.0) -> bytes | None:
    """One raw datagram to CoreDNS; None when no reply comes within `timeout`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server.host, server.port))
        try:
            return sock.recvfrom(65535)[0]
        except TimeoutError:
            return None


def ask(server: CoreDNS, query: dns.message.Message) -> dns.message.Message:
    reply = udp(server, query.to_wire())
    assert reply is not None, f"no reply to {query.question}"
    return dns.message.from_wire(reply)


def check(result: DigResult, rcode: str, *flags: str) -> DigResult:
    assert result.rcode == rcode, result.output
    assert set(flags) <= result.flags, result.output
    return result


def test_answer_is_authoritative_and_copies_id_and_case(coredns: CoreDNS) -> None:
    r = check(dig(coredns.address, "nginx.foowidgets.k8s"), "NOERROR", "qr", "aa")
    assert r.values("A") == ["172.18.200.101"] and r.answer[0].ttl == 60
    query = dns.message.make_query("NGINX.FooWidgets.K8s", "A")
    reply = ask(coredns, query)
    assert reply.id == query.id and reply.flags & dns.flags.AA
    assert reply.question[0].name.to_text() == "NGINX.FooWidgets.K8s."
    assert [rd.address for rd in reply.answer[0]] == ["172.18.200.101"]


def test_nxdomain_nodata_and_empty_non_terminal_carry_the_soa(coredns: CoreDNS) -> None:
    nx = check(dig(coredns.address, "missing.foowidgets.k8s"), "NXDOMAIN", "aa")
    assert [r.rtype for r in nx.authority] == ["SOA"] and not nx.answer
    nodata = check(dig(coredns.address, "nginx.foowidgets.k8s", "AAAA"), "NOERROR", "aa")
    assert [r.rtype for r in nodata.authority] == ["SOA"] and not nodata.answer
    ent = check(dig(coredns.address, "ent.foowidgets.k8s", "TXT"), "NOERROR", "aa")
    assert [r.rtype for r in ent.authority] == ["SOA"] and not ent.answer


def test_apex_soa_ns_and_serial_grows(coredns: CoreDNS, served: InProcessBackend) -> None:
    soa = check(dig(coredns.address, "foowidgets.k8s", "SOA"), "NOERROR", "aa").answer[0].data.split()
    assert soa[:3] == ["ns.dns.foowidgets.k8s.", "hostmaster.foowidgets.k8s.", "2026112701"]
    ns = check(dig(coredns.address, "gb.foowidgets.k8s", "NS"), "NOERROR", "aa")
    assert sorted(ns.values("NS")) == [
        "gslb-ns-us-buf-gb.foowidgets.k8s.",
        "gslb-ns-us-nyc-gb.foowidgets.k8s.",
    ]
    served.serve(compile_table(SETTINGS, ENDPOINTS[1:], 2026112702, geo, previous=served.server.table))
    assert dig(coredns.address, "foowidgets.k8s", "SOA").answer[0].data.split()[2] == "2026112702"
    check(dig(coredns.address, "nginx.foowidgets.k8s"), "NXDOMAIN")


def test_names_outside_every_zone_are_refused(coredns: CoreDNS) -> None:
    r = check(dig(coredns.address, "www.example.com"), "REFUSED")
    assert "aa" not in r.flags and not r.answer


def test_cname_wildcard_and_any(coredns: CoreDNS) -> None:
    alias = check(dig(coredns.address, "alias.foowidgets.k8s"), "NOERROR", "aa")
    assert alias.values() == ["nginx.foowidgets.k8s.", "172.18.200.101"]
    assert dig(coredns.address, "a.b.wild.foowidgets.k8s").values("A") == ["10.0.0.7"]
    anything = check(dig(coredns.address, "nginx.foowidgets.k8s", "ANY"), "NOERROR", "aa")
    assert len({r.rtype for r in anything.answer}) == 1  # RFC 8482: one RRset, not everything


def test_tcp_answers_the_same(coredns: CoreDNS) -> None:
    assert check(dig(coredns.address, "nginx.foowidgets.k8s", "A", "+tcp"), "NOERROR", "aa").values() == [
        "172.18.200.101"
    ]


def test_big_answers_fit_the_client_size_over_udp_and_come_whole_over_tcp(coredns: CoreDNS) -> None:
    """RFC 6891 section 7 and RFC 1035 4.2.1: 512 octets without EDNS, the client's size with it, TC
    when cut (CoreDNS's scrub, sized by the request as the client sent it); TCP gets everything."""
    for options, size in ((["+noedns"], 512), (["+bufsize=512"], 512), (["+bufsize=800"], 800)):
        cut = check(dig(coredns.address, "many.foowidgets.k8s", "A", *options, "+ignore"), "NOERROR", "tc")
        assert 0 < len(cut.answer) < 60, cut.output
        received = re.search(r"MSG SIZE\s+rcvd: (\d+)", cut.output)
        assert received is not None and int(received[1]) <= size, cut.output
    for options in (["+bufsize=1232"], ["+noedns", "+tcp"], ["+bufsize=512", "+tcp"]):
        whole = check(dig(coredns.address, "many.foowidgets.k8s", "A", *options, "+ignore"), "NOERROR", "aa")
        assert len(whole.answer) == 60 and "tc" not in whole.flags, whole.output
    retried = check(dig(coredns.address, "many.foowidgets.k8s", "A", "+noedns"), "NOERROR", "aa")
    assert len(retried.answer) == 60  # dig retries over TCP after TC, as resolvers do


def test_thousands_of_concurrent_queries_all_get_their_answer(coredns: CoreDNS) -> None:
    """Many calls in flight on CoreDNS's one HTTP/2 connection to us (streams, flow control, pings)."""
    names = ["nginx.foowidgets.k8s", "missing.foowidgets.k8s", "geo.gb.foowidgets.k8s", "many.foowidgets.k8s"]
    want = {
        0: (dns.rcode.NOERROR, 1),
        1: (dns.rcode.NXDOMAIN, 0),
        2: (dns.rcode.NOERROR, 1),
        3: (dns.rcode.NOERROR, 60),
    }
    queries = {  # with EDNS, as resolvers ask: 60 addresses fit, geoip sees the source
        i: dns.message.make_query(names[i % 4], "A", id=i, use_edns=0, payload=4096) for i in range(3000)
    }
    answered: dict[int, dns.message.Message] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.settimeout(5)
        for _round in range(3):  # loopback UDP may drop under load: resend what is missing
            missing = [q for i, q in queries.items() if i not in answered]
            for start in range(0, len(missing), 200):
                batch = missing[start : start + 200]
                for q in batch:
                    sock.sendto(q.to_wire(), (coredns.host, coredns.port))
                pending = {q.id for q in batch}
                while pending:
                    try:
                        reply = dns.message.from_wire(sock.recvfrom(65535)[0])
                    except TimeoutError:
                        break
                    answered[reply.id] = reply
                    pending.discard(reply.id)
    assert len(answered) == len(queries), f"{len(queries) - len(answered)} queries unanswered"
    for i, reply in answered.items():
        rcode, records = want[i % 4]
        assert reply.question == queries[i].question and reply.rcode() == rcode, reply
        assert sum(len(rrset) for rrset in reply.answer) == records


def test_malformed_packets_get_formerr_or_are_dropped(coredns: CoreDNS) -> None:
    """CoreDNS's own server checks the header before any plugin: several or no questions are
    FORMERR there; a response packet (QR=1) is dropped without a reply, so reflection is impossible."""
    for packet in (
        struct.pack(">HHHHHH", 7, 0x0100, 0, 0, 0, 0),
        struct.pack(">HHHHHH", 7, 0x0100, 2, 0, 0, 0) + QUESTION + QUESTION,
        struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05nginx\xc0\x0c\x00\x01\x00\x01",
    ):
        reply = udp(coredns, packet)
        assert reply is not None and reply[:2] == packet[:2] and reply[3] & 0xF == dns.rcode.FORMERR, reply
    assert udp(coredns, struct.pack(">HHHHHH", 7, 0x8100, 1, 0, 0, 0) + QUESTION, timeout=1.0) is None
    assert udp(coredns, b"\x00\x07\x01", timeout=1.0) is None
    check(dig(coredns.address, "nginx.foowidgets.k8s"), "NOERROR")  # and it keeps serving


def test_other_opcodes_are_notimp(coredns: CoreDNS) -> None:
    for opcode in (dns.opcode.STATUS, dns.opcode.UPDATE, dns.opcode.IQUERY):
        packet = struct.pack(">HHHHHH", 9, 0x0100 | opcode << 11, 1, 0, 0, 0) + QUESTION
        reply = udp(coredns, packet)
        assert reply is not None and reply[3] & 0xF == dns.rcode.NOTIMP and (reply[2] >> 3) & 0xF == opcode


def test_notify_reaches_the_backend(coredns: CoreDNS, served: InProcessBackend) -> None:
    served.notified.clear()
    notify = dns.message.make_query("gb.foowidgets.k8s", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    notify.flags |= dns.flags.AA
    reply = ask(coredns, notify)
    assert reply.rcode() == dns.rcode.NOERROR and reply.opcode() == dns.opcode.NOTIFY
    assert reply.flags & dns.flags.AA and reply.question == notify.question
    assert [zone for zone, _ in served.notified] == ["gb.foowidgets.k8s"]
    other = dns.message.make_query("example.com", "SOA")
    other.set_opcode(dns.opcode.NOTIFY)
    assert ask(coredns, other).rcode() == dns.rcode.REFUSED
    assert len(served.notified) == 1


def test_edns_is_echoed_and_unknown_versions_get_badvers(coredns: CoreDNS) -> None:
    r = ask(
        coredns,
        dns.message.make_query("nginx.foowidgets.k8s", "A", use_edns=0, payload=1232, want_dnssec=True),
    )
    assert r.edns == 0 and r.ednsflags & dns.flags.DO and r.rcode() == dns.rcode.NOERROR
    bad = ask(coredns, dns.message.make_query("nginx.foowidgets.k8s", "A", use_edns=1))
    assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0 and not bad.answer
    assert (
        check(
            dig(coredns.address, "nginx.foowidgets.k8s", "A", "+edns=1", "+noednsnegotiation"), "BADVERS"
        ).answer
        == ()
    )


# EDNS and client subnet through the shipped Corefile (corefile/README.md): RFC 6891 and RFC 7871.
EDNS_NAMES = ("nginx.foowidgets.k8s", "geo.gb.foowidgets.k8s", "missing.foowidgets.k8s", "www.example.com")
EDNS_RCODES = (dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED)


def query(name: str, *, ecs: dns.edns.ECSOption | None = None, options: tuple[dns.edns.Option, ...] = (),
          ednsflags: int = 0) -> dns.message.Message:
    """An EDNS query for `name` A with `ecs` (first) and `options`."""
    opts = [*([ecs] if ecs else []), *options]
    return dns.message.make_query(name, "A", use_edns=0, options=opts, ednsflags=ednsflags)


def ecs_of(reply: dns.message.Message) -> dns.edns.ECSOption | None:
    found = [o for o in reply.options if isinstance(o, dns.edns.ECSOption)]
    assert len(found) <= 1, reply
    return found[0] if found else None


def test_no_opt_in_a_reply_to_a_query_without_one(coredns: CoreDNS) -> None:
    """RFC 6891 section 7, over UDP and TCP, for an answer, a geoip name, NXDOMAIN and REFUSED."""
    for name, rcode in zip(EDNS_NAMES, EDNS_RCODES, strict=True):
        q = dns.message.make_query(name, "A", use_edns=False)
        for reply in (ask(coredns, q), dns.query.tcp(q, coredns.host, port=coredns.port, timeout=2)):
            assert reply.rcode() == rcode and reply.edns == -1 and not reply.additional, reply
        shown = dig(coredns.address, name, "A", "+noedns")
        assert shown.rcode == dns.rcode.to_text(rcode), shown.output
        assert "OPT PSEUDOSECTION" not in shown.output, shown.output


def test_a_client_subnet_is_echoed_with_the_scope_the_answer_depended_on(coredns: CoreDNS) -> None:
    """RFC 7871 7.2.1: family, source prefix and address as the client sent them; the scope is the
    source prefix where geoip picked the answer by it, 0 where the answer is the same for everyone."""
    both = ["10.2.1.167", "10.2.1.98"]
    cases = [
        ("geo.gb.foowidgets.k8s", dns.edns.ECSOption("198.51.100.0", 24), 24, ["10.2.1.167"]),
        ("geo.gb.foowidgets.k8s", dns.edns.ECSOption("198.51.100.7", 32), 32, ["10.2.1.167"]),
        ("geo.gb.foowidgets.k8s", dns.edns.ECSOption("203.0.113.0", 24), 24, both),  # no datacenter
        ("geo.gb.foowidgets.k8s", dns.edns.ECSOption("2001:db8:1::", 56), 56, both),
        ("geo.gb.foowidgets.k8s", dns.edns.ECSOption("0.0.0.0", 0), 0, both),  # "do not use my address"
        ("nginx.foowidgets.k8s", dns.edns.ECSOption("198.51.100.0", 24), 0, ["172.18.200.101"]),
        ("nginx.foowidgets.k8s", dns.edns.ECSOption("2001:db8::", 48), 0, ["172.18.200.101"]),
        ("missing.foowidgets.k8s", dns.edns.ECSOption("198.51.100.0", 22), 0, []),
    ]
    for name, sent, scope, addresses in cases:
        reply = ask(coredns, query(name, ecs=sent))
        got = ecs_of(reply)
        assert got is not None, (sent, reply)
        assert (got.family, got.srclen, got.address) == (sent.family, sent.srclen, sent.address), (sent, got)
        assert got.scopelen == scope, (name, sent, got)
        assert sorted(rd.address for rrset in reply.answer for rd in rrset) == addresses, (sent, reply)
    shown = check(dig(coredns.address, "geo.gb.foowidgets.k8s", "A", "+subnet=198.51.100.0/24"), "NOERROR")
    assert shown.ecs == "198.51.100.0/24/24" and shown.values("A") == ["10.2.1.167"], shown.output


def test_no_client_subnet_back_to_a_query_without_one_yet_geoip_sees_the_source(coredns: CoreDNS) -> None:
    """CoreDNS adds ECS from the source address (127.0.0.1 -> us-nyc here) for the backend and takes it
    out of the reply. A query without EDNS cannot carry it: that client gets the unknown-client answer."""
    for name in EDNS_NAMES:
        reply = ask(coredns, query(name))
        assert reply.edns == 0 and ecs_of(reply) is None, reply
    located = check(dig(coredns.address, "geo.gb.foowidgets.k8s", "A"), "NOERROR", "aa")
    assert located.values("A") == ["10.2.1.98"] and located.ecs is None, located.output
    over_tcp = check(dig(coredns.address, "geo.gb.foowidgets.k8s", "A", "+tcp"), "NOERROR")
    assert over_tcp.values("A") == ["10.2.1.98"] and over_tcp.ecs is None, over_tcp.output
    unlocated = check(dig(coredns.address, "geo.gb.foowidgets.k8s", "A", "+noedns"), "NOERROR")
    assert sorted(unlocated.values("A")) == ["10.2.1.167", "10.2.1.98"], unlocated.output


def test_do_is_copied_unknown_flags_cleared_unknown_options_not_echoed(coredns: CoreDNS) -> None:
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    others = (dns.edns.GenericOption(65001, b"\xab\xcd"), cookie, dns.edns.GenericOption(12, b"\0" * 4))
    for name in EDNS_NAMES:
        for do in (0, dns.flags.DO):
            for ecs in (None, dns.edns.ECSOption("198.51.100.0", 24)):
                z_bits = 0x7FFF
                reply = ask(coredns, query(name, ecs=ecs, options=others, ednsflags=do | z_bits))
                assert reply.edns == 0 and reply.ednsflags == do, (name, do, reply)
                assert [o.otype for o in reply.options] == ([dns.edns.OptionType.ECS] if ecs else []), reply
    shown = dig(coredns.address, "nginx.foowidgets.k8s", "A", "+ednsflags=0x7f", "+ednsopt=65001:ab", "+do")
    opt = shown.output.split(";; OPT PSEUDOSECTION:")[1].split(";; QUESTION SECTION:")[0]
    assert opt.strip() == "; EDNS: version: 0, flags: do; udp: 1232", shown.output  # no Z flags, no options


def test_servfail_until_the_first_full_sync(
    coredns_factory: Callable[..., CoreDNS], backend: InProcessBackend
) -> None:
    backend.serve(Table.not_ready(SETTINGS))
    server = coredns_factory(zones=".", grpc=backend.grpc)
    check(dig(server.address, "nginx.foowidgets.k8s"), "SERVFAIL")
    check(dig(server.address, "foowidgets.k8s", "SOA"), "SERVFAIL")
    check(dig(server.address, "www.example.com"), "REFUSED")
    backend.serve(compile_table(SETTINGS, ENDPOINTS, 2026112703, geo))
    check(dig(server.address, "nginx.foowidgets.k8s"), "NOERROR", "aa")


def test_backend_itself_answers_formerr_for_what_coredns_would_not_send(served: InProcessBackend) -> None:
    """The gRPC service is also reachable without CoreDNS; it must not trust its input either."""

    async def query(packet: bytes) -> bytes:
        async with grpc.aio.insecure_channel(served.grpc) as channel:
            reply = await dns_pb2_grpc.DnsServiceStub(channel).Query(dns_pb2.DnsPacket(msg=packet), timeout=5)
            return reply.msg

    for packet in (
        b"",
        b"\x00\x07",
        struct.pack(">HHHHHH", 7, 0x8100, 1, 0, 0, 0) + QUESTION,
        struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + QUESTION + b"junk",
    ):
        reply = asyncio.run(query(packet))
        assert reply[2] & 0x80 and reply[3] & 0xF == dns.rcode.FORMERR, (packet, reply)
