"""DnsServer's HTTP side (/healthz, /readyz, /metrics, added routes) and its gRPC wiring, in-process."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import time
import urllib.error
import urllib.request
from typing import cast

import dns.message
import dns.opcode
import dns.rcode
import grpc

from backend import metrics
from backend.config import Settings
from backend.model import Endpoint, Target
from backend.proto import dns_pb2, dns_pb2_grpc
from backend.server import DnsServer, HttpSlots, YoungCollector, split_hostport
from backend.zone.build import compile_table
from lab.proc import wait_for, wait_for_async

SETTINGS = Settings(zones=("foowidgets.k8s",), grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                    admin_listen="127.0.0.1:0")


def http(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def query(port: int, wire: bytes) -> dns.message.Message:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await dns_pb2_grpc.DnsServiceStub(channel).Query(dns_pb2.DnsPacket(msg=wire), timeout=5)
    return dns.message.from_wire(reply.msg)


async def scenario() -> None:
    server = DnsServer(SETTINGS)
    notified: list[tuple[str, str]] = []
    server.on_notify(lambda zone, peer: notified.append((zone, peer)))
    server.add_readiness_detail("edge", lambda: "last update failed: timeout")
    server.add_readiness_detail("quiet", lambda: None)
    server.add_route("/sync", lambda q: (200, "text/plain", q["name"][0].encode()))

    async def slow(_q: dict[str, list[str]]) -> tuple[int, str, bytes]:
        await asyncio.sleep(0)
        return 200, "application/json", b"{}"

    server.add_route("/async", slow)
    server.add_route("/broken", lambda q: 1 / 0)  # type: ignore[arg-type, return-value]
    server.add_route("/hold", lambda q: (time.sleep(0.3), (200, "text/plain", b"held"))[1])
    await server.start()
    assert server.admin_port and server.admin_port != server.http_port
    try:
        get = lambda path, method="GET": asyncio.to_thread(http, server.http_port, path, method)  # noqa: E731
        assert await get("/healthz") == (200, "ok\n")
        status, body = await get("/readyz")
        assert (
            status == 503 and "waiting for the first full sync" in body and "edge: last update failed" in body
        )
        assert "quiet" not in body
        try:  # not synced yet: an error CoreDNS's grpc plugin fails over on, not a (final) SERVFAIL reply
            await query(server.grpc_port, dns.message.make_query("nginx.foowidgets.k8s", "A").to_wire())
            raise AssertionError("an unsynced backend answered")
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        outside = await query(server.grpc_port, dns.message.make_query("www.example.com", "A").to_wire())
        assert outside.rcode() == dns.rcode.REFUSED

        table = compile_table(SETTINGS, [Endpoint("nginx.foowidgets.k8s", "A", (Target("1.2.3.4"),))], 9)
        server.set_table(table)
        server.set_ready(True, {"sources": "4 informers synced"})
        status, body = await get("/readyz")
        assert status == 200 and body.startswith("ready\n") and "sources: 4 informers synced" in body
        hit = await query(server.grpc_port, dns.message.make_query("nginx.foowidgets.k8s", "A").to_wire())
        assert [rd.address for rd in hit.answer[0]] == ["1.2.3.4"]
        notify = dns.message.make_query("foowidgets.k8s", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        assert (await query(server.grpc_port, notify.to_wire())).rcode() == dns.rcode.NOERROR
        assert [z for z, _ in notified] == ["foowidgets.k8s"] and notified[0][1].startswith("ipv4:127.0.0.1:")

        gc.collect()  # a full collection, timed: what held every thread, the answer loop too
        spin = time.thread_time() + 0.2
        while time.thread_time() < spin:  # the loop's own work holds it: a stall the loop caused
            pass
        status, metrics = await get("/metrics")
        assert status == 200
        assert 'coredns_gslb_gc_pause_seconds_count{generation="2"}' in metrics
        assert stalled(metrics, "loop") > 0, metrics
        assert 'coredns_gslb_queries_total{qtype="A",rcode="NOERROR",zone="foowidgets.k8s"}' in metrics
        assert (
            "coredns_gslb_query_duration_seconds_bucket" in metrics
            and f"coredns_gslb_records {table.records}.0" in metrics
        )
        assert await get("/sync?name=x") == (404, "not found\n")  # added routes: admin listener only
        admin = lambda path: asyncio.to_thread(http, server.admin_port, path)  # noqa: E731
        assert await admin("/sync?name=x") == (200, "x")
        assert await admin("/async") == (200, "{}")
        assert await admin("/broken") == (500, "internal error (see the backend's log)\n")  # no internals
        assert (await admin("/readyz"))[0] == 200
        assert await admin("/hold") == (200, "held")  # holds the answer loop for 0.3 s: the lag shows it

        async def lag_shows() -> bool:  # on the lag timer's next tick after the hold
            metrics = (await get("/metrics"))[1]
            assert "coredns_gslb_loop_lag_seconds_bucket" in metrics
            lag_max, held_max = (next(float(line.split()[1]) for line in metrics.splitlines()
                                  if line.startswith(f"coredns_gslb_loop_{gauge}_max_seconds "))
                                 for gauge in ("lag", "held"))
            return lag_max >= 0.2 and held_max > 0 and stalled(metrics, "blocked") > 0

        await wait_for_async(lag_shows, what="coredns_gslb_loop_lag_max_seconds >= 0.2, a held max and a "
                             "blocked stall after the hold",
                             timeout=10)
        assert (await get("/nothing"))[0] == 404
        assert (await get("/healthz", "POST"))[0] == 400
    finally:
        await server.stop(1)
    assert not server.ready


def stalled(metrics: str, cause: str) -> float:
    """coredns_gslb_loop_stall_seconds_total for one cause."""
    found = re.search(rf'^coredns_gslb_loop_stall_seconds_total\{{cause="{cause}"\}} (\S+)$', metrics, re.M)
    assert found, metrics
    return float(found[1])


def test_http_endpoints_readiness_metrics_and_notify() -> None:
    asyncio.run(scenario())


def test_scrape_slots_go_to_moving_replies() -> None:
    """Over `scrapes`, a scrape takes the slot of the reply that has waited longest for its client to
    read; 503 (False) while every holder moves, or while its address has `per_client` replies alive,
    moving or not. Writers are only keys here (nothing is reset below the connection cap)."""
    slots = HttpSlots(connections=10, scrapes=3, per_client=2)
    a1, a2, a3, b1, b2, c1, d1 = (cast(asyncio.StreamWriter, object()) for _ in range(7))
    assert slots.scrape(a1, "a") and slots.scrape(a2, "a")
    assert not slots.scrape(a3, "a")  # a's two
    assert slots.scrape(b1, "b") and not slots.scrape(c1, "c")  # all 3 moving
    slots.waits(b1, True)
    slots.waits(a2, True)
    assert slots.scrape(c1, "c")  # b1, the longest blocked
    assert set(slots.holders) == {a1, a2, c1} and list(slots.preempted) == [b1]
    assert not slots.scrape(a3, "a")  # a2 waits, but a has two alive
    assert slots.scrape(b2, "b")  # a2's slot; b1 still counts for b
    assert set(slots.holders) == {a1, c1, b2} and list(slots.preempted) == [b1, a2]
    assert slots.by_client == {"a": 2, "b": 2, "c": 1}
    slots.waits(a2, False)  # preempted replies stay outside the slots
    assert not slots.scrape(d1, "d")
    slots.scraped(a2)  # a preempted reply done: its address may ask again, no slot freed
    assert slots.by_client["a"] == 1 and not slots.scrape(d1, "d")
    slots.scraped(a1)
    assert slots.scrape(a3, "a") and slots.by_client == {"a": 1, "b": 2, "c": 1}


def test_split_hostport() -> None:
    assert split_hostport("127.0.0.1:8053") == ("127.0.0.1", 8053)
    assert split_hostport("[::1]:8080") == ("::1", 8080)
    assert split_hostport("0.0.0.0:53") == ("0.0.0.0", 53)


def test_per_object_series_text() -> None:
    from backend.metrics import SeriesText

    series = SeriesText("k8gb_gslb_errors", "Number of errors", "counter", ("namespace", "name"))
    assert series.text() == b""
    series.inc(("demo", "fe"))
    series.inc(("demo", "fe"), 2)
    series.set(("demo", 'q"x'), 1)
    assert series.text().decode().splitlines() == [
        "# HELP k8gb_gslb_errors_total Number of errors", "# TYPE k8gb_gslb_errors_total counter",
        'k8gb_gslb_errors_total{name="fe",namespace="demo"} 3.0',
        'k8gb_gslb_errors_total{name="q\\"x",namespace="demo"} 1.0']
    series.remove(("demo", "fe"))
    series.remove(("demo", "gone"))
    assert "fe" not in series.text().decode() and series.value(("demo", 'q"x')) == 1.0


def test_stall_causes_split_the_lag() -> None:
    # the loop ran the whole stall: its own work
    own = metrics.stall_causes(0.2, 0.05, 0.25, ran=0.2, waited=0.0)
    assert own == {"cpu": 0.0, "holder": 0.0, "blocked": 0.0, "loop": 0.2}
    # runnable without a core for 0.15 s, asleep 0.04 s past its planned 0.05 s (the GIL or a blocking call)
    causes = metrics.stall_causes(0.2, 0.05, 0.25, ran=0.01, waited=0.15)
    assert {k: round(v, 6) for k, v in causes.items()} == {"cpu": 0.15, "holder": 0.0, "blocked": 0.04,
                                                           "loop": 0.01}
    # asleep 0.1 s while another thread of ours waited 0.07 s for a core: that much its holding the GIL
    causes = metrics.stall_causes(0.12, 0.05, 0.17, ran=0.02, waited=0.0, others_waited=0.07)
    assert {k: round(v, 6) for k, v in causes.items()} == {"cpu": 0.0, "holder": 0.07, "blocked": 0.03,
                                                           "loop": 0.02}


def test_other_threads_waits_are_read_per_thread() -> None:
    """OtherThreads reads every other thread's wait for a core, not the caller's; a thread that ended
    drops out, and `most_waited` compares only threads read both times."""
    stop = threading.Event()
    spinners = [threading.Thread(target=stop.wait) for _ in range(2)]
    for t in spinners:
        t.start()
    others = metrics.OtherThreads()
    first = others.waited()
    assert {t.native_id for t in spinners} <= first.keys() and threading.get_native_id() not in first
    stop.set()
    for t in spinners:
        t.join()
    # join returns once the thread's Python part is done, a moment before the kernel lets it go
    ids = {str(t.native_id) for t in spinners}
    wait_for(lambda: not ids & set(os.listdir("/proc/self/task")), timeout=10,
             what="the joined threads gone from /proc/self/task")
    for _ in range(metrics.THREADS_EVERY):  # up to the next listing
        later = others.waited()
    assert not {t.native_id for t in spinners} & later.keys()
    assert metrics.most_waited({1: 0.5, 2: 1.0}, {1: 0.75, 2: 1.1, 3: 9.0}) == 0.25


def test_young_collector_walks_what_one_interval_allocated() -> None:
    """Long-lived objects replaced one for one never reach CPython's allocation trigger, so the young
    generation only grows; a pass of the collector empties it (gen 1 too once due, its survivors then
    frozen, never left for a full collection to walk). While collection
    is off (a full compile) it leaves the young generation alone (here also the process's own
    collector thread, should another test have started it)."""
    old = [[i] for i in range(20_000)]
    gc.collect()
    gc.freeze()
    young = YoungCollector()
    try:
        gc.disable()
        kept = []
        for i in range(len(old)):
            kept.append([i])
            old[i] = None  # type: ignore[call-overload]
        assert gc.get_count()[0] < 700  # what CPython's trigger looks at
        assert young.collect() is None and len(gc.get_objects(0)) >= 20_000
        gc.enable()
        assert young.collect() in (0, 1)
        assert len(gc.get_objects(0)) < 100 and len(gc.get_objects(1)) + len(gc.get_objects(2)) >= 20_000
        frozen = gc.get_freeze_count()
        passes = [young.collect() for _ in range(gc.get_threshold()[1] + 1)]
        assert 1 in passes and len(gc.get_objects(1)) < 100 and len(gc.get_objects(2)) < 100
        assert gc.get_freeze_count() >= frozen + 20_000  # kept, out of every later collection's sight
    finally:
        gc.enable()
        gc.unfreeze()
