"""Bytes held and answers lost under hostile HTTP/2 clients (`python -m bench.hostile`, issue 11).

The gRPC server runs in its own process as in the backend (`fuzz.h2.Server`: DnsServer with default
`Limits` and a compiled table). Each attack below is the one issue 11 measured on 3b51836, run for
`--seconds` while a well-behaved client asks one query every 20 ms; the server's RSS is sampled every
100 ms. Per attack: RSS before, peak during and after the attackers have gone (5 s later), queries
asked and lost (no answer within 1 s) and the slowest answer. Figures go to bench/results.json under
`hostile`. Not part of `make bench` (about 2 minutes; the tests in backend/test_h2grpc.py check the
limits themselves).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import random
import re
import select
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventLike
from pathlib import Path
from typing import Any

import grpc
import hpack

from backend.h2grpc import CONTINUATION, DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS, frame
from backend.proto import dns_pb2, dns_pb2_grpc
from bench.__main__ import RESULTS, load, save
from bench.churn import Scraper
from bench.procstat import loadavg
from fuzz.h2 import BODY, CALL_HEADERS, QUERY, Server, huffman_field, rss

Attack = Callable[[int, EventLike], dict[str, int] | None]  # the attacker's own counts, if it keeps any


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
    return sock


def _send_until(sock: socket.socket, chunk: bytes, stop: EventLike) -> None:
    """Send `chunk` again and again, never reading, until `stop` or the server closes."""
    sock.settimeout(0.2)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError, BlockingIOError):
            try:
                sock.sendall(chunk)
            except OSError:
                return


def _run_all(threads: list[threading.Thread]) -> None:
    """Start the attacker's threads and wait for them (they end on `stop` or the server's close)."""
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def ping_flood(port: int, stop: EventLike) -> None:
    """10 connections send PINGs as fast as they can and never read the PONGs (CVE-2019-9512)."""
    socks = [_connect(port) for _ in range(10)]
    _run_all([threading.Thread(target=_send_until, args=(s, frame(PING, 0, 0, b"12345678") * 4000, stop))
              for s in socks])
    for s in socks:
        s.close()


def unfinished_streams(port: int, stop: EventLike) -> None:
    """10 connections, each opening 100 streams of 69 KB bodies that never end (75 MB each before)."""
    encoder = hpack.Encoder()
    block = encoder.encode(CALL_HEADERS)
    socks = []
    for _ in range(10):
        sock = _connect(port)
        with contextlib.suppress(OSError):
            for sid in range(1, 201, 2):
                sock.sendall(frame(HEADERS, END_HEADERS, sid, block)
                             + b"".join(frame(DATA, 0, sid, b"x" * 16384) for _ in range(4))
                             + frame(DATA, 0, sid, b"x" * 3500))
        socks.append(sock)
    stop.wait()
    for s in socks:
        s.close()


def distinct_huffman(port: int, stop: EventLike) -> None:
    """Header blocks with distinct 12 KB Huffman strings, 4 connections (+315 MB left before)."""
    rng = random.Random(7541)
    values = [huffman_field(rng, 12000) for _ in range(200)]
    block = hpack.Encoder().encode(CALL_HEADERS)

    def one() -> None:
        sid = 1
        while not stop.is_set():
            try:
                sock = _connect(port)
                for value in values:
                    sock.sendall(frame(HEADERS, END_HEADERS, sid, block + value) + frame(DATA, 1, sid, BODY))
                    sid += 2
                    with contextlib.suppress(TimeoutError, BlockingIOError):
                        sock.setblocking(False)
                        while sock.recv(1 << 16):
                            pass
                    sock.setblocking(True)
                    if stop.is_set() or sid > 999:
                        break
                sock.close()
                sid = 1
            except OSError:
                time.sleep(0.05)

    _run_all([threading.Thread(target=one) for _ in range(4)])


def continuation_flood(port: int, stop: EventLike) -> None:
    """Endless CONTINUATION frames on fresh connections, 4 at a time (CVE-2024-27316)."""
    block = hpack.Encoder().encode(CALL_HEADERS)

    def one() -> None:
        while not stop.is_set():
            try:
                with _connect(port) as sock:
                    sock.sendall(frame(HEADERS, 0, 1, block))
                    for _ in range(2000):
                        sock.sendall(frame(CONTINUATION, 0, 1, b"\x00" * 1000))
            except OSError:  # the server's GOAWAY and close: the next connection
                pass

    _run_all([threading.Thread(target=one) for _ in range(4)])


def slowloris(port: int, stop: EventLike) -> None:
    """300 connections each sending the preface a byte at a time, one byte a second."""
    socks = []
    for _ in range(300):
        with contextlib.suppress(OSError):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=5))
    i = 0
    while not stop.wait(1.0):
        for s in socks:
            with contextlib.suppress(OSError):
                s.send(PREFACE[i % len(PREFACE):i % len(PREFACE) + 1])
        i += 1
    for s in socks:
        s.close()


def connection_flood(port: int, stop: EventLike) -> None:
    """Open connections as fast as possible and hold them (20,000 exhausted descriptors before)."""
    socks: list[socket.socket] = []
    while not stop.is_set() and len(socks) < 20000:
        try:
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=1))
        except OSError:
            time.sleep(0.01)
    stop.wait()
    for s in socks:
        s.close()


METRICS_REQUEST = b"GET /metrics HTTP/1.1\r\nHost: backend\r\n\r\n"
NEVER_READERS, SLOW_READERS = 150, 20
GSLBS = 10_000  # k8gb's series of the scale bench's 10,000 Gslbs on /metrics: ~4 MiB


def slow_metrics_readers(port: int, stop: EventLike, addresses: int = 1) -> dict[str, int]:
    """NEVER_READERS connections send `GET /metrics` and never read, SLOW_READERS more read one byte a
    second; each connects again as soon as the server cuts it (a scraper stuck in a loop, or an
    attacker). They come from `addresses` source addresses from 127.0.1.1 on (other pods), the well-
    behaved scraper from 127.0.0.1. Counts connections made, cut by the server (or answered and
    closed), failed, and the bytes the slow ones read."""
    sources = [f"127.0.1.{1 + i}" for i in range(addresses)]
    poller = select.poll()
    held: dict[int, tuple[socket.socket, bool]] = {}  # fd -> (socket, reads slowly)
    counts = {"never_readers": NEVER_READERS, "slow_readers": SLOW_READERS, "addresses": addresses,
              "connections": 0, "cut": 0, "connect_failed": 0, "slow_bytes_read": 0}

    def top_up() -> None:
        slow = sum(s for _, s in held.values())
        for reads in [False] * (NEVER_READERS - (len(held) - slow)) + [True] * (SLOW_READERS - slow):
            try:
                source = (sources[counts["connections"] % len(sources)], 0)
                sock = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=source)
                sock.sendall(METRICS_REQUEST)
            except OSError:
                counts["connect_failed"] += 1
                time.sleep(0.01)
                return
            sock.setblocking(False)
            held[sock.fileno()] = (sock, reads)
            poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
            counts["connections"] += 1

    next_read = time.monotonic()
    while not stop.is_set():
        top_up()
        for fd, _event in poller.poll(100):  # closed or reset by the server: the next one
            sock, _ = held.pop(fd)
            poller.unregister(fd)
            sock.close()
            counts["cut"] += 1
        if time.monotonic() >= next_read:
            next_read += 1.0
            for sock, reads in held.values():
                if reads:
                    with contextlib.suppress(OSError):
                        counts["slow_bytes_read"] += len(sock.recv(1))
    for sock, _ in held.values():
        sock.close()
    return counts


ATTACKS: dict[str, Attack] = {
    "ping_flood_never_reads": ping_flood,
    "unfinished_streams": unfinished_streams,
    "distinct_huffman_strings": distinct_huffman,
    "continuation_flood": continuation_flood,
    "slowloris": slowloris,
    "connection_flood": connection_flood,
}
# against the HTTP port of a server carrying GSLBS Gslbs' series, on each loop the backend can run
HTTP_ATTACKS: dict[str, tuple[Attack, bool]] = {
    "slow_metrics_readers": (slow_metrics_readers, True),
    "slow_metrics_readers_no_uvloop": (slow_metrics_readers, False),
    "slow_metrics_readers_85_addresses": (partial(slow_metrics_readers, addresses=85), True),
}


def ask(port: int, stop: EventLike, out: Queue[tuple[int, int, float]]) -> None:
    """One gRPC query every 20 ms on its own channel until `stop`: (asked, lost, slowest seconds)."""
    asked = lost = 0
    slowest = 0.0
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dns_pb2_grpc.DnsServiceStub(channel)
        while not stop.wait(0.02):
            asked += 1
            t0 = time.perf_counter()
            try:
                stub.Query(dns_pb2.DnsPacket(msg=QUERY), timeout=1.0)
                slowest = max(slowest, time.perf_counter() - t0)
            except grpc.RpcError:
                lost += 1
    out.put((asked, lost, slowest))


def _attack(attack: Attack, port: int, stop: EventLike, out: Queue[dict[str, int]]) -> None:
    """The attacker's process: `attack`, then its own counts for the report."""
    out.put(attack(port, stop) or {})


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET on the server's HTTP port within 5 s; an error status raises (HTTPError is an OSError)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
        return reply.status, reply.read().decode()


class Probe(threading.Thread):
    """GET /healthz every 0.5 s with a 1 s timeout, as kubelet probes: (asked, failed)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.asked, self.failed = port, 0, 0
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(0.5):
            self.asked += 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as reply:
                    self.failed += reply.status != 200
            except OSError:
                self.failed += 1

    def stop(self) -> None:
        self._finished.set()
        self.join(10)


def socket_memory(port: int) -> int:
    """Bytes the kernel holds for the server's sockets on `port`, closed ones that still have data to
    send included (ss's skmem: w, queued to send, plus r, received): a non-reader's reply sitting in
    the kernel, charged to the server's cgroup but not part of its RSS."""
    out = subprocess.run(["ss", "-tmnH", "state", "all", "sport", "=", f":{port}"], capture_output=True,
                         text=True, timeout=10).stdout
    return sum(int(n) for n in re.findall(r"[(,][wr](\d+)", out))


def measure(server: Server, attack: Attack, seconds: float, http: bool = False) -> dict[str, Any]:
    """The attack and the well-behaved client each in a process of their own (no GIL shared with the
    sampler or each other), the server's RSS sampled here. `http`: the attack goes to the HTTP port,
    and a scraper (`churn.Scraper`: /metrics every second, the loop lag the server reports) and a
    /healthz probe run here too."""
    assert server.process is not None
    pid, ctx = server.process.pid, multiprocessing.get_context("fork")
    before = peak = rss(pid)
    kernel_before = kernel_peak = socket_memory(server.http_port) if http else 0
    stop_attack, stop_asking, answers, attacked = ctx.Event(), ctx.Event(), ctx.Queue(), ctx.Queue()
    asker = ctx.Process(target=ask, args=(server.port, stop_asking, answers))
    attacker = ctx.Process(target=_attack, args=(attack, server.http_port if http else server.port,
                                                 stop_attack, attacked))
    scraper, probe = Scraper(lambda path: http_get(server.http_port, path)), Probe(server.http_port)
    watchers: list[Scraper | Probe] = [scraper, probe] if http else []
    for process in (asker, attacker, *watchers):
        process.start()
    deadline, samples = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        if http and samples % 5 == 0:
            kernel_peak = max(kernel_peak, socket_memory(server.http_port))
        samples += 1
        time.sleep(0.1)
    stop_attack.set()
    for watcher in watchers:
        watcher.stop()
    counts = attacked.get(timeout=30)
    attacker.join(30)
    if attacker.is_alive():
        attacker.kill()
    scraped = scraper.figures()
    time.sleep(5)  # the attackers' connections are closed; what is still held is held for good
    if http:  # once more with the attackers gone: the loop lag of their last 5-15 s, had every scrape failed
        scraper.scrape()
    after, kernel_after = rss(pid), socket_memory(server.http_port) if http else 0
    stop_asking.set()
    asked, lost, slowest = answers.get(timeout=10)
    asker.join(5)
    mib = 1 << 20
    row = {"rss_mib_before": round(before / mib, 1), "rss_mib_peak": round(peak / mib, 1),
           "rss_mib_after": round(after / mib, 1), "queries": asked, "lost": lost,
           "slowest_answer_ms": round(slowest * 1000, 1), "server_alive": server.alive()}
    if http:
        lag = scraper.figures() if scraper.seconds else {"loop_lag_max_ms": None, "loop_held_max_ms": None}
        row |= {"attackers": counts, "socket_mib_before": round(kernel_before / mib, 1),
                "socket_mib_peak": round(kernel_peak / mib, 1),
                "socket_mib_after": round(kernel_after / mib, 1), "healthz": probe.asked,
                "healthz_failed": probe.failed,
                **{key: scraped[key] for key in ("scrapes", "scrapes_failed", "scrape_p50_ms",
                                                 "scrape_max_ms")},
                **{key: lag[key] for key in ("loop_lag_max_ms", "loop_held_max_ms")}}
    return row


def run(names: list[str], seconds: float, work: Path) -> dict[str, Any]:
    """Each attack of `names` (ATTACKS' or HTTP_ATTACKS') against a fresh server of its own, so that RSS
    is one attack's only: a row of figures per attack."""
    figures: dict[str, Any] = {}
    for name in names:
        http = name in HTTP_ATTACKS
        attack, use_uvloop = HTTP_ATTACKS[name] if http else (ATTACKS[name], False)
        server = Server(work / f"{name}.log", gslbs=GSLBS if http else 0, uvloop=use_uvloop)
        server.start()
        load_before = loadavg()
        try:
            figures[name] = row = measure(server, attack, seconds, http)
        finally:
            server.stop()
        print(f"[hostile] {name}: RSS {row['rss_mib_before']} -> peak {row['rss_mib_peak']} -> "
              f"after {row['rss_mib_after']} MiB; {row['lost']} of {row['queries']} queries lost, "
              f"slowest {row['slowest_answer_ms']} ms", flush=True)
        if http:
            row["loadavg_at_start"] = load_before
            print(f"[hostile]   server's sockets in the kernel {row['socket_mib_before']} -> peak "
                  f"{row['socket_mib_peak']} -> after {row['socket_mib_after']} MiB; /metrics "
                  f"{row['scrapes_failed']} of {row['scrapes'] + row['scrapes_failed']} failed (slowest "
                  f"{row['scrape_max_ms']} ms); /healthz {row['healthz_failed']} of {row['healthz']} failed; "
                  f"loop lag max {row['loop_lag_max_ms']} ms (held {row['loop_held_max_ms']} ms); "
                  f"attackers {row['attackers']}", flush=True)
    return figures


def slow_metrics(seconds: float, work: Path) -> dict[str, Any]:
    """`python -m bench slow_metrics` (part of `make bench`): HTTP_ATTACKS, `seconds` each."""
    return {"seconds": seconds, **run(list(HTTP_ATTACKS), seconds, work)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="each attack's length (default 15)")
    ap.add_argument("--only", action="append", choices=list(ATTACKS), help="run only these attacks")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "seconds": args.seconds, "loadavg_at_start": loadavg(),
                               **run(args.only or list(ATTACKS), args.seconds, work)}
    figures["loadavg_at_end"] = loadavg()
    results = load()
    results["hostile"] = figures
    save(results)
    print(f"[hostile] logs in {work}; figures in {RESULTS} under 'hostile'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
