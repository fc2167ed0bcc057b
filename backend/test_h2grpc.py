"""The HTTP/2 gRPC server against grpcio's client (C core) and hostile bytes; CoreDNS (grpc-go) is the
client in tests/test_dns_semantics.py."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import grpc
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.h2grpc import (
    ACK,
    CANCEL,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    GRPC_UNAVAILABLE,
    HEADERS,
    NO_ERROR,
    PING,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    GrpcError,
    H2GrpcServer,
    HpackDecoder,
    Limits,
    ProtocolError,
    connection_cap,
    frame,
)
from backend.proto import dns_pb2, dns_pb2_grpc
from backend.server import new_event_loop, run_loop
from fuzz.h2 import huffman_field
from lab.proc import wait_for

HEADER = st.tuples(
    st.sampled_from([b":path", b"content-type", b"grpc-timeout", b"x-a", b"user-agent"]),
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")),
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    blocks=st.lists(st.lists(HEADER, max_size=8), max_size=12),
    sizes=st.lists(st.sampled_from([0, 64, 256, 4096]), max_size=12),
    huffman=st.booleans(),
)
def test_hpack_decoder_matches_the_reference_encoder(blocks: list, sizes: list[int], huffman: bool) -> None:
    encoder, decoder = hpack.Encoder(), HpackDecoder()
    for i, headers in enumerate(blocks):
        if i < len(sizes):
            encoder.header_table_size = sizes[i]
        assert decoder.decode(encoder.encode(headers, huffman=huffman)) == headers


def test_hpack_rejects_garbage() -> None:
    for block in (
        b"\xff",
        b"\xbf\xff\xff\xff\xff\xff",
        b"\x40\x05ab",
        b"\x3f\xe2\x1f",
        b"\xff\x80\x80\x80\x80\x01",
    ):
        with pytest.raises(ProtocolError):
            HpackDecoder().decode(block)


def reply_for(request: bytes, peer: str) -> bytes:
    if request == b"unavailable":
        raise GrpcError(GRPC_UNAVAILABLE, "not synced yet")
    if request.startswith(b"big:"):
        return bytes(int(request[4:]))
    return request[::-1] + peer.encode()


def with_server(scenario: Callable[[int], Awaitable[None]]) -> None:
    """Run `scenario(port)` on a fresh event loop with a server on it (no pytest-asyncio here)."""

    async def main() -> None:
        srv = H2GrpcServer(reply_for)
        port = await srv.start("127.0.0.1", 0)
        try:
            await scenario(port)
        finally:
            await srv.stop(1)

    run_loop(main())


async def call(port: int, msg: bytes) -> bytes:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dns_pb2_grpc.DnsServiceStub(channel)
        return (await stub.Query(dns_pb2.DnsPacket(msg=msg), timeout=10)).msg


def test_unary_calls_concurrent_and_large() -> None:
    with_server(unary_calls)


async def unary_calls(port: int) -> None:
    assert (await call(port, b"abc")).startswith(b"cba" + b"ipv4:127.0.0.1:")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = dns_pb2_grpc.DnsServiceStub(channel)
        replies = await asyncio.gather(
            *(stub.Query(dns_pb2.DnsPacket(msg=b"%d" % i), timeout=10) for i in range(300))
        )
        assert [r.msg.split(b"ipv4")[0] for r in replies] == [(b"%d" % i)[::-1] for i in range(300)]
        # bigger than a frame and than the default 64 KiB window: flow control and DATA splitting
        sizes = [20000, 65535, 200000]
        big = await asyncio.gather(
            *(stub.Query(dns_pb2.DnsPacket(msg=b"big:%d" % n), timeout=10) for n in sizes)
        )
        assert [len(r.msg) for r in big] == sizes


def test_a_handler_error_is_a_grpc_status_not_a_reply() -> None:
    with_server(handler_status)


async def handler_status(port: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(port, b"unavailable")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and err.value.details() == "not synced yet"
    assert (await call(port, b"abc")).startswith(b"cba")  # the connection stays usable


def test_unknown_method_is_unimplemented() -> None:
    with_server(unknown_method)


async def unknown_method(port: int) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        other = channel.unary_unary("/coredns.dns.DnsService/Other")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other(b"", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def raw_exchange(port: int, payload: bytes) -> bytes:
    """Send bytes on a fresh connection; what the server wrote until it closed (or 2 s passed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)  # the server closes on end of input
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def frames(data: bytes) -> list[tuple[int, int, int]]:
    out, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big")))
        pos += 9 + length
    return out


def test_hostile_connections_get_goaway_and_the_server_lives_on() -> None:
    with_server(hostile_connections)


async def hostile_connections(port: int) -> None:
    goaway = 7

    async def run(payload: bytes) -> bytes:
        return await asyncio.to_thread(raw_exchange, port, payload)

    assert goaway in [f[0] for f in frames(await run(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))]
    oversized = PREFACE + frame(SETTINGS, 0, 0) + struct.pack(">I", 1 << 20)[1:] + b"\x00\x00\x00\x00\x00\x01"
    assert goaway in [f[0] for f in frames(await run(oversized))]
    rng = random.Random(9113)
    for _ in range(150):
        junk = b"".join(
            frame(
                rng.randrange(11),
                rng.randrange(256),
                rng.choice((0, 1, 2, 3, rng.randrange(1 << 31))),
                rng.randbytes(rng.randrange(40)),
            )
            for _ in range(rng.randrange(1, 6))
        )
        await run(PREFACE + frame(SETTINGS, 0, 0) + junk)
    assert (await call(port, b"still")).startswith(b"llits")


def test_graceful_stop_refuses_new_connections() -> None:
    run_loop(graceful_stop())


async def graceful_stop() -> None:
    srv = H2GrpcServer(reply_for)
    port = await srv.start("127.0.0.1", 0)
    assert (await call(port, b"x")).startswith(b"x")
    await srv.stop(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


# -- hostile and broken clients: every resource stays bounded and calls go on ----------------------


class ServerThread:
    """H2GrpcServer on its own event loop thread, so a test can use blocking sockets against it."""

    def __init__(self, limits: Limits) -> None:
        self.loop = new_event_loop()  # the backend's (uvloop); h2spec checks both loops
        self.thread = threading.Thread(target=self.loop.run_forever, name="h2grpc", daemon=True)
        self.server = H2GrpcServer(reply_for, limits)
        self.thread.start()
        self.port = self.on_loop(lambda: self.server.start("127.0.0.1", 0))

    def on_loop(self, fn: Callable[[], Any]) -> Any:
        """fn() (or the coroutine it returns) run on the server's loop, so internals are read safely."""

        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(30)

    def call(self, msg: bytes) -> bytes:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            return dns_pb2_grpc.DnsServiceStub(channel).Query(dns_pb2.DnsPacket(msg=msg), timeout=10).msg

    def stop(self) -> None:
        self.on_loop(lambda: self.server.stop(1))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@contextlib.contextmanager
def serving(**limits: Any) -> Iterator[ServerThread]:
    srv = ServerThread(Limits(**limits))
    try:
        yield srv
    finally:
        srv.stop()


GRPC_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/coredns.dns.DnsService/Query"),
                (":authority", "x"), ("content-type", "application/grpc"), ("te", "trailers")]


def grpc_message(msg: bytes) -> bytes:
    body = dns_pb2.DnsPacket(msg=msg).SerializeToString()
    return b"\0" + len(body).to_bytes(4, "big") + body


Frame = tuple[int, int, int, bytes]  # type, flags, stream, payload


class RawClient:
    """A hand-driven HTTP/2 client: it sends what a test says and reads only when told to."""

    def __init__(self, port: int, settings: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.encoder = hpack.Encoder()
        self.received = b""
        self.sock.sendall(PREFACE + frame(SETTINGS, 0, 0, settings))

    def send(self, *frames: bytes) -> None:
        self.sock.sendall(b"".join(frames))

    def headers(self, stream: int, end_stream: bool, fields: list[tuple[str, str]] = GRPC_HEADERS) -> bytes:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        return frame(HEADERS, flags, stream, self.encoder.encode(fields))

    def read_until(self, done: Callable[[list[Frame]], object], timeout: float = 10) -> list[Frame]:
        """Frames read until `done(frames)` or the connection closes; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = parse_frames(self.received)
            if done(got):
                return got
            left = deadline - time.monotonic()
            assert left > 0, f"waited {timeout} s for the server; got frame types {[f[0] for f in got]}"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                chunk = b""
            if not chunk:
                return parse_frames(self.received)
            self.received += chunk

    def read_for(self, seconds: float) -> list[Frame]:
        """Whatever frames arrive within `seconds` (or until the server closes)."""
        self.closed_within(seconds)
        return parse_frames(self.received)

    def closed_within(self, timeout: float) -> bool:
        """Read and drop everything until the server closes (True) or `timeout` passes (False)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            if not chunk:
                return True
            self.received += chunk
        return False

    def close(self) -> None:
        self.sock.close()


def parse_frames(data: bytes) -> list[Frame]:
    out, pos = [], 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        if len(data) - pos - 9 < length:
            break
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5 : pos + 9], "big"),
                    data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return out


def ends(frames: list[Frame]) -> int:
    """Replies completed: frames that end their stream."""
    return sum(1 for t, f, _, _ in frames if t in (HEADERS, DATA) and f & END_STREAM)


def goaway_code(frames: list[Frame]) -> int | None:
    return next((int.from_bytes(p[4:8], "big") for t, _, _, p in frames if t == GOAWAY), None)


def test_settings_advertise_the_limits() -> None:
    with serving() as srv:
        client = RawClient(srv.port)
        got = client.read_until(lambda fs: any(t == SETTINGS and not f & 1 for t, f, _, _ in fs))
        payload = next(p for t, f, _, p in got if t == SETTINGS and not f & 1)
        advertised = dict(struct.iter_unpack(">HI", payload))
        lim = Limits()
        assert advertised == {3: lim.max_concurrent_streams, 4: lim.stream_window, 6: lim.max_header_list}
        client.close()


def test_ping_acks_are_paced() -> None:
    """A PING after a quiet spell is answered at once; one within ping_ack_interval of the last ACK waits
    for it (grpc-go's BDP estimator pings again as soon as it has its ACK), unless max_held_pings are
    already waiting: then every one is answered, in order, as before."""
    def acks(fs: list[Frame]) -> list[bytes]:
        return [p for t, f, _, p in fs if t == PING and f & ACK]

    with serving(ping_ack_interval=600.0, max_held_pings=3) as srv:
        client = RawClient(srv.port)
        client.send(frame(PING, 0, 0, b"first..."))
        assert acks(client.read_until(acks)) == [b"first..."]
        client.send(frame(PING, 0, 0, b"second.."), client.headers(1, False),
                    frame(DATA, END_STREAM, 1, grpc_message(b"abc")))
        got = client.read_until(ends)  # the call is answered; the PING waits out its 600 s
        assert acks(got) == [b"first..."]
        client.send(*(frame(PING, 0, 0, b"more...%d" % i) for i in range(3)))
        got = client.read_until(lambda fs: len(acks(fs)) == 5)
        assert acks(got) == [b"first...", b"second..", b"more...0", b"more...1", b"more...2"]
        client.close()


FLOODS = [frame(PING, 0, 0, b"12345678"), frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1))]


@pytest.mark.parametrize("flood", FLOODS, ids=["PING", "SETTINGS"])
def test_control_frame_flood_from_a_client_that_never_reads(flood: bytes) -> None:
    """PING/SETTINGS flood (CVE-2019-9512/9515): the server stops reading once its replies back up,
    holds no more than the transport's high-water mark, drops the client after write_timeout."""
    with serving(write_timeout=6.0) as srv:
        client = RawClient(srv.port)
        client.read_until(lambda fs: fs)  # the server's SETTINGS: the connection is accepted
        client.sock.setblocking(False)
        conn = srv.on_loop(lambda: next(iter(srv.server.connections)))
        chunk, sent, stuck_since, deadline = flood * 4000, 0, None, time.monotonic() + 60
        # until the server pauses reading and our sends have blocked for 0.5 s since
        while stuck_since is None or time.monotonic() - stuck_since < 0.5:
            try:
                sent += client.sock.send(chunk[sent % len(chunk):])  # whole frames, whatever send() takes
                stuck_since = None
            except BlockingIOError:
                if srv.on_loop(lambda: conn.paused) is not None:
                    stuck_since = stuck_since or time.monotonic()
                time.sleep(0.05)
            assert time.monotonic() < deadline, f"reading was not paused after {sent} bytes of flood"
        buffered = srv.on_loop(lambda: conn.transport.get_write_buffer_size())
        assert buffered < 2 << 20, f"{buffered} bytes of replies queued for a client that does not read"
        assert srv.call(b"still").startswith(b"llits")  # others are answered meanwhile
        wait_for(lambda: not srv.on_loop(lambda: len(srv.server.connections)),
                 what="the stuck connection dropped after write_timeout", timeout=15)
        client.close()


def wait_steady(read: Callable[[], Any], what: str, timeout: float = 20) -> Any:
    """Poll `read()` until it returns the same value for half a second."""
    deadline, last, since = time.monotonic() + timeout, object(), time.monotonic()
    while True:
        value = read()
        if value != last:
            last, since = value, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return value
        assert time.monotonic() < deadline, f"{what} kept changing for {timeout} s"
        time.sleep(0.05)


def test_unfinished_request_bodies_are_bounded_per_connection_and_in_total() -> None:
    """Requests that never end (10 connections held 821 MB before): a connection holds at most its
    receive window, all connections at most total_buffered; streams beyond that are refused, calls go on."""
    window, total = 1 << 20, 3 << 20
    with serving(connection_window=window, total_buffered=total) as srv:
        clients = [RawClient(srv.port) for _ in range(6)]
        for c in clients:  # within flow control: 64 streams x 16,000 bytes fill the 1 MiB window
            c.send(*(c.headers(sid, False) + frame(DATA, 0, sid, b"x" * 16000) for sid in range(1, 129, 2)))

        def held() -> tuple[int, list[int]]:
            conns = srv.server.connections
            return srv.server.buffered, [sum(len(s.body or b"") for s in c.streams.values()) for c in conns]

        buffered, per_connection = wait_steady(lambda: srv.on_loop(held), "the buffered request bytes")
        assert 2 << 20 < buffered <= total
        assert max(per_connection) <= window
        refused = sum(1 for c in clients for t, _, _, p in c.read_for(0.5)
                      if t == RST_STREAM and int.from_bytes(p, "big") == REFUSED_STREAM)
        assert refused, "streams over the server-wide budget were not refused"
        assert srv.call(b"go on").startswith(b"no og")
        for c in clients:
            c.close()
        assert wait_steady(lambda: srv.on_loop(lambda: srv.server.buffered), "buffers") == 0


def test_data_beyond_the_connection_window_is_a_flow_control_error() -> None:
    with serving(connection_window=1 << 20) as srv:
        client = RawClient(srv.port)
        # 70 unfinished requests of 16 KiB: more than the 1 MiB the server lets a connection hold
        client.send(*(client.headers(sid, False) + frame(DATA, 0, sid, b"x" * 16384)
                      for sid in range(1, 141, 2)))
        assert goaway_code(client.read_until(goaway_code)) == FLOW_CONTROL_ERROR
        assert srv.call(b"ok").startswith(b"ko")


def test_replies_held_by_flow_control_are_bounded() -> None:
    """A client that opens no window (SETTINGS_INITIAL_WINDOW_SIZE 0) and asks for 100 60 KB answers:
    at most max_queued_reply bytes wait, the other calls get RESOURCE_EXHAUSTED at once."""
    with serving(max_queued_reply=1 << 20) as srv:
        client = RawClient(srv.port, struct.pack(">HI", 4, 0))
        body = grpc_message(b"big:60000")
        client.send(*(client.headers(sid, False) + frame(DATA, END_STREAM, sid, body)
                      for sid in range(1, 201, 2)))
        got = client.read_until(lambda fs: ends(fs) >= 83)
        exhausted = [sid for t, f, sid, p in got if t == HEADERS and f & END_STREAM]
        assert len(exhausted) == 100 - (1 << 20) // (60000 + 5 + 4)
        queued = srv.on_loop(lambda: next(iter(srv.server.connections)).queued)
        assert 0 < queued <= 1 << 20
        client.send(frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 1 << 20)),
                    frame(WINDOW_UPDATE, 0, 0, (1 << 30).to_bytes(4, "big")))
        got = client.read_until(lambda fs: ends(fs) >= 100)
        assert srv.on_loop(lambda: srv.server.buffered) == 0
        client.close()


def test_continuation_flood_ends_the_connection() -> None:
    """Endless CONTINUATION frames (CVE-2024-27316), empty or not: GOAWAY before 2 x max_header_list."""
    with serving() as srv:
        for payload in (b"", b"\x00" * 1000):
            client = RawClient(srv.port)
            client.send(frame(HEADERS, 0, 1, client.encoder.encode(GRPC_HEADERS)))
            with contextlib.suppress(OSError):  # the server may close while we still send
                client.send(*(frame(CONTINUATION, 0, 1, payload) for _ in range(5000)))
            assert goaway_code(client.read_until(goaway_code)) == ENHANCE_YOUR_CALM
            client.close()
        assert srv.call(b"ok").startswith(b"ko")


def test_distinct_huffman_strings_leave_no_memory_behind() -> None:
    """Header blocks with distinct long Huffman strings (2,000 left +315 MB before, in a global cache)."""
    rng = random.Random(7541)
    blocks = [huffman_field(rng, 12000) for _ in range(500)]
    with serving() as srv:
        client = RawClient(srv.port)
        client.read_until(lambda fs: fs)
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for k, junk in enumerate(blocks):
                sid = 2 * k + 1
                client.send(frame(HEADERS, END_HEADERS, sid, client.encoder.encode(GRPC_HEADERS) + junk),
                            frame(DATA, END_STREAM, sid, grpc_message(b"q")))
            client.read_until(lambda fs: ends(fs) >= len(blocks), timeout=60)
            client.close()
            wait_steady(lambda: srv.on_loop(lambda: len(srv.server.connections)), "connections")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert grown < 1 << 20, f"{grown} bytes left after 500 distinct 12 KB header values"


def test_handshake_request_and_idle_timeouts() -> None:
    """Silent, slow (slowloris) and idle connections are closed; a stalled stream is cancelled."""
    with serving(handshake_timeout=0.5, request_timeout=0.5, idle_timeout=1.0) as srv:
        silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow_preface = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        slow_frame, stalled, idle = RawClient(srv.port), RawClient(srv.port), RawClient(srv.port)
        stalled.send(stalled.headers(1, False))
        ping = frame(PING, 0, 0, b"12345678")
        start = time.monotonic()
        for i in range(40):  # a byte every 0.1 s, for 4 s
            with contextlib.suppress(OSError):
                slow_preface.send(PREFACE[i % len(PREFACE) : i % len(PREFACE) + 1])
                slow_frame.send(ping[i % len(ping) : i % len(ping) + 1])
            time.sleep(0.1)
        for sock in (silent, slow_preface):
            sock.settimeout(5)
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(65536):
                    pass  # SETTINGS, then end of stream
        assert slow_frame.closed_within(5) and goaway_code(parse_frames(slow_frame.received)) == NO_ERROR
        got = stalled.read_until(goaway_code)
        assert (RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")) in got, "the stalled stream was not cancelled"
        assert idle.closed_within(5) and goaway_code(parse_frames(idle.received)) == NO_ERROR
        assert time.monotonic() - start < 12
        assert srv.call(b"ok").startswith(b"ko")
        for c in (silent, slow_preface, slow_frame.sock, stalled.sock, idle.sock):
            c.close()


def test_connection_limit_refuses_new_connections_and_keeps_the_old() -> None:
    with serving(max_connections=20) as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
        stub = dns_pb2_grpc.DnsServiceStub(channel)
        assert stub.Query(dns_pb2.DnsPacket(msg=b"a"), timeout=10).msg.startswith(b"a")
        held = [RawClient(srv.port) for _ in range(19)]
        for c in held:
            c.read_until(lambda fs: any(t == SETTINGS for t, _, _, _ in fs))
        extra = RawClient(srv.port)
        assert extra.closed_within(5) and not extra.received, "the 21st connection was served"
        assert stub.Query(dns_pb2.DnsPacket(msg=b"b"), timeout=10).msg.startswith(b"b")
        for c in [*held, extra]:
            c.close()


def test_connection_cap_keeps_descriptors_for_the_rest_of_the_process() -> None:
    assert connection_cap(Limits(), 1024) == 768
    assert connection_cap(Limits(), 1 << 20) == 1000
    assert connection_cap(Limits(), 256) == 128
    assert connection_cap(Limits(), resource.RLIM_INFINITY) == 1000


def test_repeated_errors_are_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    with serving() as srv, caplog.at_level(logging.INFO, logger="backend.h2grpc"):
        for _ in range(200):
            raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        lines = [r for r in caplog.records if r.name == "backend.h2grpc"]
        assert len(lines) <= 2, [r.getMessage() for r in lines]
        assert not any(r.exc_info for r in lines)


def test_the_port_cannot_be_shared() -> None:
    """No SO_REUSEPORT: another process cannot bind the gRPC port and take part of its connections."""
    with serving() as srv, socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", srv.port))
