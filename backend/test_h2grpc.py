"""The HTTP/2 gRPC server against grpcio's client (C core) and hostile bytes; CoreDNS (grpc-go) is the
client in tests/test_dns_semantics.py."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
from collections.abc import Awaitable, Callable

import grpc
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.h2grpc import (
    GRPC_UNAVAILABLE,
    PREFACE,
    SETTINGS,
    GrpcError,
    H2GrpcServer,
    HpackDecoder,
    ProtocolError,
    frame,
)
from backend.proto import dns_pb2, dns_pb2_grpc

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

    asyncio.run(main())


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
    asyncio.run(graceful_stop())


async def graceful_stop() -> None:
    srv = H2GrpcServer(reply_for)
    port = await srv.start("127.0.0.1", 0)
    assert (await call(port, b"x")).startswith(b"x")
    await srv.stop(1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
