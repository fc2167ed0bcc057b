"""The peer exchange against an in-process DNS double that plays the edge, a peer, and an attacker.

Fast and deterministic: each test drives `PeerExchange.poll` by hand with a fake clock. The same
behaviour through real CoreDNS, backends and BIND9 is in tests/test_multicluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from backend.config import GslbZone, Settings
from backend.gslb.strategy import plan
from backend.model import Endpoint, ObjectRef, Store, Strategy, Target
from backend.peers.exchange import PeerExchange, PeerZone
from backend.peers.query import parse_server

ZONE = GslbZone("gb.foowidgets.k8s", "foowidgets.k8s")
HOST = "fe.gb.foowidgets.k8s"
FAILOVER = Strategy("failover", "us-buf")


@dataclass
class DnsDouble:
    """A UDP DNS server on loopback answering from `records`; `mode` makes it misbehave on purpose."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    serial: int = 1
    mode: str = "ok"  # ok | silent | garbage | wrong-name | wrong-type | huge | not-aa | drop-one
    seen: list[tuple[str, str, str]] = field(default_factory=list)  # (opcode, name, type)
    port: int = 0

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        q = query.question[0]
        name, rtype = q.name.to_text().rstrip(".").lower(), dns.rdatatype.to_text(q.rdtype)
        self.seen.append((dns.opcode.to_text(query.opcode()), name, rtype))
        if self.mode == "silent":
            return None
        if self.mode == "drop-one":
            self.mode = "ok"
            return None
        if self.mode == "garbage":
            return wire[:2] + b"\x84\x00\xff\xff" + b"\xc0\x0c" * 40
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if query.opcode() == dns.opcode.NOTIFY:
            return response.to_wire()
        if rtype == "SOA" and name == ZONE.dns_zone:
            values = [f"ns1.{name}. hostmaster.{name}. {self.serial} 60 60 600 5"]
        else:
            values = self.records.get((name, rtype), [])
            if not values and not any(n == name for n, _ in self.records):
                response.set_rcode(dns.rcode.NXDOMAIN)
        if self.mode == "wrong-name" and values:
            name = "evil.example"
        if self.mode == "wrong-type" and values:
            rtype, values = "TXT", ['"x"']
        if self.mode == "huge" and rtype == "A" and values:
            values = [f"10.9.{i // 250}.{i % 250}" for i in range(200)]
        if self.mode == "not-aa":
            response.flags &= ~dns.flags.AA
        if values:
            response.answer.append(dns.rrset.from_text_list(name + ".", 30, "IN", rtype, values))
        return response.to_wire()

    def queries(self, rtype: str | None = None) -> int:
        return sum(1 for op, _, t in self.seen if op == "QUERY" and (rtype is None or t == rtype))


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.double.answer(data)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _Server(socketserver.UDPServer):
    double: DnsDouble


@contextlib.contextmanager
def serving(double: DnsDouble) -> Iterator[DnsDouble]:
    """The double on 127.0.0.1 (a free port) in a thread, so asyncio code and subprocesses can ask it."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.double = double
    double.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield double
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def local_gslb(store: Store, hosts: tuple[str, ...] = (HOST,),
               targets: tuple[str, ...] = ("10.2.1.167",)) -> None:
    """What the GSLB engine writes for one Gslb in us-buf."""
    ref = ObjectRef("Gslb", "demo", "gslb-failover-buf", api_version="k8gb.absa.oss/v1beta1")
    eps = []
    for host in hosts:
        local = tuple(Target(t, "us-buf") for t in targets)
        eps.append(Endpoint(host, "A", local, 30, ref, FAILOVER))
        if targets:
            eps.append(Endpoint("localtargets-" + host, "A", local, 30, ref))
    store.replace("gslb/demo/gslb-failover-buf", eps)


def exchange(double: DnsDouble, store: Store, clock: Clock, **overrides: object) -> PeerExchange:
    settings = Settings(gslb_zones=(ZONE,), edge_dns_servers=(f"127.0.0.1:{double.port}",),
                        cluster_geotag="us-buf", ext_gslb_clusters_geotags=("us-buf", "us-nyc"),
                        peer_dns_port=double.port,
                        peer_poll_seconds=0.4, peer_grace_seconds=10)
    ex = PeerExchange(replace(settings, **overrides), store, clock=clock)  # type: ignore[arg-type]
    ex._refresh_local(notify=False)
    return ex


def nyc_double() -> DnsDouble:
    return DnsDouble(records={
        ("gslb-ns-us-nyc-gb.foowidgets.k8s", "A"): ["127.0.0.1"],
        ("localtargets-" + HOST, "A"): ["10.2.1.98"],
    })


def peer_targets(store: Store) -> list[tuple[str, str, tuple[Target, ...]]]:
    _, by_key = store.snapshot()
    return [(ep.name, ep.rtype, ep.targets) for ep in by_key.get("peer/us-nyc", ())]


NYC = [(HOST, "A", (Target("10.2.1.98", "us-nyc"),))]


def only(ex: PeerExchange) -> PeerZone:
    return ex.peers["us-nyc"][0]


def run(coro_fn: Callable[[], object]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 30))  # type: ignore[arg-type]


def test_fetches_peer_targets_and_refetches_only_when_the_serial_moves() -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(nyc_double()) as peer:
            ex = exchange(peer, store, clock)
            await ex.poll(only(ex))
            assert peer_targets(store) == NYC
            fetched = peer.queries("A")
            for _ in range(3):
                clock.now += 1
                await ex.poll(only(ex))
            assert peer.queries("A") == fetched, "an unchanged serial must not refetch"
            peer.records[("localtargets-" + HOST, "A")] = ["10.2.1.98", "10.2.1.99"]
            peer.serial += 1
            await ex.poll(only(ex))
            assert [t.value for t in peer_targets(store)[0][2]] == ["10.2.1.98", "10.2.1.99"]

    run(body)


def test_a_new_local_host_is_fetched_without_a_serial_change() -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(nyc_double()) as peer:
            peer.records[("localtargets-api.gb.foowidgets.k8s", "AAAA")] = ["2001:db8::98"]
            ex = exchange(peer, store, clock)
            await ex.poll(only(ex))
            local_gslb(store, hosts=(HOST, "api.gb.foowidgets.k8s"))
            ex._refresh_local(notify=False)
            await ex.poll(only(ex))
            api = ("api.gb.foowidgets.k8s", "AAAA", (Target("2001:db8::98", "us-nyc"),))
            assert api in peer_targets(store)

    run(body)


def test_one_lost_packet_changes_nothing_and_a_dead_peer_drops_after_the_grace() -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(nyc_double()) as peer:
            ex = exchange(peer, store, clock)
            await ex.poll(only(ex))
            peer.mode = "drop-one"
            clock.now += 1
            await ex.poll(only(ex))
            assert not only(ex).error, "a single lost packet is retried within the poll"
            peer.mode = "silent"
            clock.now += 5
            await ex.poll(only(ex))
            assert only(ex).error and peer_targets(store) == NYC, "inside the grace the last targets stay"
            clock.now += 6
            await ex.poll(only(ex))
            assert peer_targets(store) == []
            peer.mode = "ok"
            clock.now += 1
            await ex.poll(only(ex))
            assert peer_targets(store) == NYC, "a peer that answers again is refetched"

    run(body)


@pytest.mark.parametrize("mode", ["garbage", "wrong-name", "wrong-type", "huge", "not-aa"])
def test_a_misbehaving_peer_is_unreachable_never_trusted(mode: str) -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(nyc_double()) as peer:
            ex = exchange(peer, store, clock)
            await ex.poll(only(ex))
            assert peer_targets(store) == NYC
            peer.mode = mode
            peer.serial += 1
            peer.records[("localtargets-" + HOST, "A")] = ["10.6.6.6"]
            clock.now += 1
            await ex.poll(only(ex))
            assert only(ex).error, f"{mode}: the answer must be rejected"
            assert peer_targets(store) == NYC, f"{mode}: nothing from a bad answer is published"
            clock.now += 11
            await ex.poll(only(ex))
            assert peer_targets(store) == []
            assert "unreachable" in (ex.readiness() or "")

    run(body)


def test_a_peer_the_edge_does_not_know_is_unreachable() -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(DnsDouble()) as edge:
            ex = exchange(edge, store, clock)
            await ex.poll(only(ex))
            assert "no A/AAAA" in only(ex).error and peer_targets(store) == []

    run(body)


def test_local_health_change_sends_notify_and_notify_triggers_a_check() -> None:
    async def body() -> None:
        store, clock = Store(), Clock()
        local_gslb(store)
        with serving(nyc_double()) as peer:
            ex = exchange(peer, store, clock, peer_poll_seconds=60.0)
            task = asyncio.create_task(ex.run())
            try:
                while not peer_targets(store):
                    await asyncio.sleep(0.05)
                local_gslb(store, targets=())  # our nginx went unhealthy
                while not any(op == "NOTIFY" for op, _, _ in peer.seen):
                    await asyncio.sleep(0.05)
                soas = peer.queries("SOA")
                peer.serial += 1
                peer.records[("localtargets-" + HOST, "A")] = ["10.2.1.97"]
                ex.on_notify(ZONE.dns_zone + ".", None)
                while peer_targets(store) == NYC:
                    await asyncio.sleep(0.05)
                assert peer.queries("SOA") > soas
                assert peer_targets(store) == [(HOST, "A", (Target("10.2.1.97", "us-nyc"),))]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    run(body)


def test_server_forms() -> None:
    assert str(parse_server("127.0.0.2")) == "127.0.0.2:53"
    assert str(parse_server("127.0.0.2:5353")) == "127.0.0.2:5353"
    assert str(parse_server("[::1]:5353")) == "[::1]:5353"
    assert parse_server("::1").port == 53
    with pytest.raises(ValueError):
        parse_server("edge.example.com")


def test_failover_with_three_clusters_takes_the_primary_while_it_has_targets_anywhere() -> None:
    buf, nyc = Target("10.2.1.167", "us-buf"), Target("10.2.1.98", "us-nyc")
    sfo = Target("10.2.1.50", "us-sfo")
    assert plan(FAILOVER, (buf, nyc, sfo)).variants == [(buf,)]
    assert sorted(plan(FAILOVER, (nyc, sfo)).variants[0], key=lambda t: t.geotag) == [nyc, sfo]
    assert plan(FAILOVER, (sfo,)).variants == [(sfo,)]
