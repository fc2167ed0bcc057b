"""The peer exchange against an in-process DNS double that plays the edge, a peer, and an attacker.

Fast and deterministic: each test drives `PeerExchange.poll` by hand with a fake clock. The same
behaviour through real CoreDNS, backends and BIND9 is in tests/test_multicluster.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socketserver
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from backend.config import GslbZone, Settings
from backend.dnsclient import parse_server
from backend.gslb.strategy import answers
from backend.model import GSLB_KEYS, PUBLISHED_KEY, Endpoint, ObjectRef, Store, Strategy, Target, peer_key
from backend.peers import persist, shards
from backend.peers.exchange import PeerExchange, PeerZone
from lab.proc import wait_for_async

ZONE = GslbZone("gb.foowidgets.k8s", "foowidgets.k8s")
HOST = "fe.gb.foowidgets.k8s"
FAILOVER = Strategy("failover", "us-buf")


@dataclass
class DnsDouble:
    """A DNS server (UDP and TCP) on loopback answering from `records`; `mode` makes it misbehave."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    serial: int = 1
    mode: str = "ok"  # ok silent garbage wrong-name wrong-type huge not-aa drop-one small-buffer
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
        reply = response.to_wire(max_size=65535)
        if self.mode == "small-buffer" and len(reply) > (query.payload if query.edns >= 0 else 512):
            response.answer.clear()  # as our backend does: sized by the asker's EDNS buffer, TC set
            response.flags |= dns.flags.TC
            reply = response.to_wire()
        return reply

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


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        size = int.from_bytes(self.request.recv(2), "big")
        data = b""
        while len(data) < size and (chunk := self.request.recv(size - len(data))):
            data += chunk
        reply = self.server.double.answer(data)
        if reply is not None:
            self.request.sendall(len(reply).to_bytes(2, "big") + reply)


class _TcpServer(socketserver.ThreadingTCPServer):
    double: DnsDouble
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def serving(double: DnsDouble) -> Iterator[DnsDouble]:
    """The double on 127.0.0.1 (a free port, UDP and TCP) in threads, for asyncio code and subprocesses."""
    for _ in range(50):  # a port free for both
        udp = _Server(("127.0.0.1", 0), _Handler)
        double.port = udp.server_address[1]
        try:
            tcp = _TcpServer(("127.0.0.1", double.port), _TcpHandler)
            break
        except OSError:
            udp.server_close()
    else:
        raise OSError("no port on 127.0.0.1 free for both UDP and TCP after 50 tries")
    servers: list[_Server | _TcpServer] = [udp, tcp]
    threads = []
    for server in servers:
        server.double = double
        threads.append(threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True))
        threads[-1].start()
    try:
        yield double
    finally:
        for server, thread in zip(servers, threads, strict=True):
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


def nyc_double() -> DnsDouble:
    return DnsDouble(records={
        ("gslb-ns-us-nyc-gb.foowidgets.k8s", "A"): ["127.0.0.1"],
        ("localtargets-" + HOST, "A"): ["10.2.1.98"],
    })


NYC = [(HOST, "A", (Target("10.2.1.98", "us-nyc"),))]


@dataclass
class Rig:
    """us-buf's exchange with one peer, us-nyc, played by `peer` (which also plays the edge)."""

    store: Store
    clock: Clock
    peer: DnsDouble
    ex: PeerExchange

    @property
    def nyc(self) -> PeerZone:
        return self.ex.peers["us-nyc"][0]

    async def poll(self, advance: float = 0.0) -> None:
        self.clock.now += advance
        await self.ex.poll(self.nyc)

    def targets(self) -> list[tuple[str, str, tuple[Target, ...]]]:
        _, by_key = self.store.snapshot()
        return [(ep.name, ep.rtype, ep.targets) for ep in by_key.get(peer_key("us-nyc"), ())]


@contextlib.contextmanager
def rig(double: DnsDouble | None = None, **overrides: object) -> Iterator[Rig]:
    store = Store()
    local_gslb(store)
    with serving(double or nyc_double()) as peer:
        settings = Settings(gslb_zones=(ZONE,), edge_dns_servers=(f"127.0.0.1:{peer.port}",),
                            cluster_geotag="us-buf", ext_gslb_clusters_geotags=("us-buf", "us-nyc"),
                            peer_dns_port=peer.port, peer_poll_seconds=0.4, peer_grace_seconds=10)
        clock = Clock()
        ex = PeerExchange(replace(settings, **overrides), store, clock=clock)  # type: ignore[arg-type]
        ex._refresh_local(notify=False)
        yield Rig(store, clock, peer, ex)


def asynchronous(test: Callable[..., Coroutine[None, None, None]]) -> Callable[..., None]:
    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        try:
            asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))
        except TimeoutError:
            raise AssertionError(f"{test.__name__} did not finish within 30 s") from None

    return run


@asynchronous
async def test_fetches_peer_targets_when_the_serial_moves_and_every_30s() -> None:
    with rig() as r:
        await r.poll()
        assert r.targets() == NYC
        fetched = r.peer.queries("A")
        for _ in range(3):
            await r.poll(1)
        assert r.peer.queries("A") == fetched, "an unchanged serial must not refetch within 30 s"
        r.peer.records[("localtargets-" + HOST, "A")] = ["10.2.1.98", "10.2.1.99"]
        r.peer.serial += 1
        await r.poll()
        assert [t.value for t in r.targets()[0][2]] == ["10.2.1.98", "10.2.1.99"]
        r.peer.records[("localtargets-" + HOST, "A")] = ["10.2.1.99"]  # k8gb: the serial stays
        await r.poll(29)
        assert len(r.targets()[0][2]) == 2, "within 30 s of the last fetch only the serial counts"
        await r.poll(1)
        assert [t.value for t in r.targets()[0][2]] == ["10.2.1.99"], "k8gb's serial moves hourly"


def publish(double: DnsDouble, targets: dict[str, list[str]]) -> None:
    """Give the double a localtargets index and shards, as a cluster of ours publishes them."""
    publication = shards.Publication(ZONE.dns_zone, 30)
    for host, values in targets.items():
        publication.set(host, values)
    for key in [k for k in double.records if k[0].startswith(shards.LABEL)]:
        del double.records[key]
    for ep in publication.endpoints():
        double.records[(ep.name, "TXT")] = [f'"{t.value}"' for t in ep.targets]


@asynchronous
async def test_with_an_index_only_changed_shards_are_fetched_and_serials_do_not_matter() -> None:
    many = {f"app{i}.gb.foowidgets.k8s": [f"10.3.0.{i}"] for i in range(100)}
    with rig() as r:
        publish(r.peer, {HOST: ["10.2.1.98"], **many})
        await r.poll()
        assert r.targets() == NYC, "only our own hosts are taken from the peer's shards"
        first = r.peer.queries("TXT")
        assert first <= 1 + shards.SHARDS_MIN
        assert not [n for _, n, _ in r.peer.seen if n.startswith("localtargets-")], "no per-host queries"
        r.peer.serial += 1  # the peer's zone changed elsewhere, or it learned our own change
        await r.poll(1)
        assert r.peer.queries("TXT") == first + 1, "an unchanged index costs one query"
        publish(r.peer, {HOST: ["10.2.1.97", "2001:db8::97"], **many})
        await r.poll(1)
        assert r.peer.queries("TXT") == first + 3, "one changed host: the index and one shard"
        assert r.targets() == [(HOST, "A", (Target("10.2.1.97", "us-nyc"),)),
                               (HOST, "AAAA", (Target("2001:db8::97", "us-nyc"),))]


@asynchronous
async def test_an_answer_too_big_for_udp_is_fetched_whole_over_tcp() -> None:
    many = {f"app{i}.gb.foowidgets.k8s": [f"10.3.{i // 250}.{i % 250}"] for i in range(1500)}
    # 1,500 hosts: the in-process double builds each shard under the GIL shared with the client, so the
    # fetch gets the longest per-query timeout (1 s) rather than the 0.2 s of a 0.4 s poll; this test is
    # about the TCP retry, not the speed.
    with rig(small_buffer := nyc_double(), peer_poll_seconds=2.0) as r:
        publish(small_buffer, {HOST: ["10.2.1.98"], **many})
        small_buffer.mode = "small-buffer"
        await r.poll()
        assert not r.nyc.error and r.targets() == NYC
        assert r.nyc.shard_digests == shards.parse_index(
            small_buffer.records[(shards.index_name(ZONE.dns_zone), "TXT")][0].strip('"'))


@pytest.mark.parametrize("index", ['"v2 2 0123456789"', '"v9 1 0123456789"', '"v2 1 zz"', '"v2 1 x" "y"'])
@asynchronous
async def test_a_malformed_index_is_unreachable_never_trusted(index: str) -> None:
    with rig() as r:
        await r.poll()
        r.peer.records[(shards.index_name(ZONE.dns_zone), "TXT")] = [index]
        await r.poll(1)
        assert r.nyc.error and r.targets() == NYC


@asynchronous
async def test_a_shard_with_foreign_hosts_is_rejected() -> None:
    with rig() as r:
        publish(r.peer, {HOST: ["10.2.1.98"]})
        await r.poll()
        (key,) = [k for k in r.peer.records if k[0].startswith(shards.LABEL + "-")]
        r.peer.records[key] = ['"evil.example 10.6.6.6"']
        r.peer.records[(shards.index_name(ZONE.dns_zone), "TXT")] = [
            '"v2 16 ' + " ".join(["0" * 10] * 16) + '"']
        await r.poll(1)
        assert "unexpected shard line" in r.nyc.error and r.targets() == NYC


def test_our_index_follows_our_localtargets_only() -> None:
    with rig() as r:
        def published() -> str:
            eps = r.store.snapshot()[1][PUBLISHED_KEY]
            return next(ep for ep in eps if ep.name == shards.index_name(ZONE.dns_zone)).targets[0].value

        first = published()
        other = Endpoint("other.foowidgets.k8s", "A", (Target("192.0.2.1"),))
        r.store.replace("service/default/other", [other])
        r.ex._refresh_local(notify=False)
        assert published() == first
        local_gslb(r.store, targets=("10.2.1.168",))
        r.ex._refresh_local(notify=False)
        assert published() != first
        local_gslb(r.store)
        r.ex._refresh_local(notify=False)
        assert published() == first, "the same records give the same index"


def test_local_index_kept_incrementally_equals_one_built_afresh() -> None:
    """Random Gslb changes (hosts added, moved, made unhealthy, deleted; two Gslbs sharing a host):
    the exchange that followed them one by one publishes what a fresh one reads from the same Store."""
    import random

    rnd = random.Random(12)
    settings = Settings(gslb_zones=(ZONE,), edge_dns_servers=("127.0.0.1:1",), cluster_geotag="us-buf",
                        ext_gslb_clusters_geotags=("us-nyc",))
    store = Store()
    kept = PeerExchange(settings, store)
    kept._refresh_local(notify=False)
    for step in range(300):
        i, host = rnd.randrange(12), f"h{rnd.randrange(600)}.gb.foowidgets.k8s"
        ref = ObjectRef("Gslb", "demo", f"g{i}")
        if rnd.random() < 0.2:
            store.replace(f"gslb/demo/g{i}", [])
        else:
            eps = [ep for ep in store.snapshot()[1].get(f"gslb/demo/g{i}", ())
                   if ep.name.removeprefix("localtargets-") != host]
            targets = tuple(Target(f"10.9.{rnd.randrange(3)}.{rnd.randrange(3)}", "us-buf")
                            for _ in range(rnd.randrange(3)))
            eps.append(Endpoint(host, "A", targets, rnd.choice((30, 60)), ref, FAILOVER))
            if targets:
                eps.append(Endpoint("localtargets-" + host, "A", targets, 30, ref))
            store.replace(f"gslb/demo/g{i}", eps)
        kept._refresh_local(notify=False)
        if step % 25 == 0 or step == 299:
            index = store.snapshot()[1][PUBLISHED_KEY]
            fresh = PeerExchange(settings, Store())
            for key, eps in store.snapshot()[1].items():
                if key.startswith(GSLB_KEYS):
                    fresh.store.replace(key, eps)
            fresh._refresh_local(notify=False)
            assert fresh.store.snapshot()[1][PUBLISHED_KEY] == index, step
            assert (fresh._hosts, fresh._policy) == (kept._hosts, kept._policy), step


@asynchronous
async def test_a_new_local_host_is_fetched_without_a_serial_change() -> None:
    with rig() as r:
        r.peer.records[("localtargets-api.gb.foowidgets.k8s", "AAAA")] = ["2001:db8::98"]
        await r.poll()
        local_gslb(r.store, hosts=(HOST, "api.gb.foowidgets.k8s"))
        r.ex._refresh_local(notify=False)
        await r.poll()
        assert ("api.gb.foowidgets.k8s", "AAAA", (Target("2001:db8::98", "us-nyc"),)) in r.targets()


@asynchronous
async def test_one_lost_packet_changes_nothing_and_a_dead_peer_drops_after_the_grace() -> None:
    with rig() as r:
        await r.poll()
        r.peer.mode = "drop-one"
        await r.poll(1)
        assert not r.nyc.error, "a single lost packet is retried within the poll"
        r.peer.mode = "silent"
        await r.poll(5)
        assert r.nyc.error and r.targets() == NYC, "inside the grace the last targets stay"
        await r.poll(6)
        assert r.targets() == []
        r.peer.mode = "ok"
        await r.poll(1)
        assert r.targets() == NYC, "a peer that answers again is refetched"


@pytest.mark.parametrize("mode", ["garbage", "wrong-name", "wrong-type", "huge", "not-aa"])
@asynchronous
async def test_a_misbehaving_peer_is_unreachable_never_trusted(mode: str) -> None:
    with rig() as r:
        await r.poll()
        assert r.targets() == NYC
        r.peer.mode = mode
        r.peer.serial += 1
        r.peer.records[("localtargets-" + HOST, "A")] = ["10.6.6.6"]
        await r.poll(1)
        assert r.nyc.error, f"{mode}: the answer must be rejected"
        assert r.targets() == NYC, f"{mode}: nothing from a bad answer is published"
        await r.poll(11)
        assert r.targets() == []
        assert "unreachable" in (r.ex.readiness() or "")


@asynchronous
async def test_a_peer_the_edge_does_not_know_is_unreachable() -> None:
    with rig(DnsDouble()) as r:
        await r.poll()
        assert "no A/AAAA" in r.nyc.error and r.targets() == []


@asynchronous
async def test_local_health_change_sends_notify_and_notify_triggers_a_check() -> None:
    with rig(peer_poll_seconds=60.0) as r:
        task = asyncio.create_task(r.ex.run())
        try:
            await wait_for_async(r.targets, what="the first check publishes nyc's targets", timeout=20)
            local_gslb(r.store, targets=())  # our nginx went unhealthy
            await wait_for_async(lambda: any(op == "NOTIFY" for op, _, _ in r.peer.seen),
                                 what="a NOTIFY to the peer after our health changed", timeout=20)
            soas = r.peer.queries("SOA")
            r.peer.serial += 1
            r.peer.records[("localtargets-" + HOST, "A")] = ["10.2.1.97"]
            r.ex.on_notify(ZONE.dns_zone + ".", None)
            await wait_for_async(lambda: r.targets() != NYC, what="the NOTIFY-triggered check's new targets",
                                 timeout=20)
            assert r.peer.queries("SOA") > soas
            assert r.targets() == [(HOST, "A", (Target("10.2.1.97", "us-nyc"),))]
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


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
    assert answers(FAILOVER, (buf, nyc, sfo)).variants == [(buf,)]
    assert sorted(answers(FAILOVER, (nyc, sfo)).variants[0], key=lambda t: t.geotag) == [nyc, sfo]
    assert answers(FAILOVER, (sfo,)).variants == [(sfo,)]


@asynchronous
async def test_peer_records_carry_our_gslbs_strategy_and_ttl() -> None:
    """The zone merges per (name, type): a peer's AAAA for a host we serve over IPv4 only must still be
    answered by the Gslb's strategy and TTL."""
    with rig() as r:
        publish(r.peer, {HOST: ["10.2.1.98", "2001:db8::98"]})
        await r.poll()
        peer = r.store.snapshot()[1][peer_key("us-nyc")]
        assert {(ep.rtype, ep.ttl, ep.strategy) for ep in peer} == {("A", 30, FAILOVER),
                                                                    ("AAAA", 30, FAILOVER)}


def test_the_peer_book_reads_only_well_formed_entries() -> None:
    good = {"us-nyc": {"gb.foowidgets.k8s": ["127.0.0.22"]}}
    assert persist.parse(json.dumps(good)) == good
    assert persist.parse("not json") == persist.parse("[1]") == {}
    mixed = {"us-nyc": {"gb.foowidgets.k8s": ["127.0.0.22"], "x": [], "y": [1]}, "us-sfo": "nope"}
    assert persist.parse(json.dumps(mixed)) == good
