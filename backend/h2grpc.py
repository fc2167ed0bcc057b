"""A gRPC server for exactly one unary method, over cleartext HTTP/2, on asyncio.

CoreDNS's grpc plugin (grpc-go) calls `/coredns.dns.DnsService/Query` and nothing else. grpcio's
server spends about 200 microseconds of CPU per call in its generic machinery, forty times what the
answer itself costs; this server speaks just the part of HTTP/2 (RFC 9113) and HPACK (RFC 7541)
that unary gRPC needs: the preface, SETTINGS, PING, WINDOW_UPDATE and flow control both ways,
HEADERS + CONTINUATION with a full HPACK decoder (dynamic table; Huffman strings via the hpack
package, cached), DATA, RST_STREAM and GOAWAY for a graceful stop. Replies use only static-table
and literal-without-indexing header fields, so there is no encoder state to keep.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import struct
from collections.abc import Callable

from google.protobuf.message import DecodeError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from backend.proto import dns_pb2

log = logging.getLogger(__name__)

PATH = b"/coredns.dns.DnsService/Query"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 2, 3, 6
COMPRESSION_ERROR = 9
S_HEADER_TABLE_SIZE, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 4, 5
MAX_FRAME = 16384  # we never raise SETTINGS_MAX_FRAME_SIZE
RECV_WINDOW = 1 << 24  # per stream and for the connection: a DNS message is at most 64 KiB
MAX_REQUEST = 70000  # DnsPacket of a 64 KiB message plus gRPC and protobuf framing
MAX_OPEN_CALLS = 1000  # calls whose request has not fully arrived, per connection
GRPC_UNIMPLEMENTED, GRPC_INTERNAL, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE = 12, 13, 8, 14

Handler = Callable[[bytes, str], bytes]  # (DNS request, peer) -> DNS reply


class GrpcError(Exception):
    """Raised by a handler to answer the call with a gRPC status instead of a reply. CoreDNS's grpc
    plugin treats any status but NOT_FOUND as a failed upstream and tries the next one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + stream.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix: int, first: int = 0) -> bytes:
    mask = (1 << prefix) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


# ":status: 200" (static index 8) and content-type (static name 31) = application/grpc
RESPONSE_HEADERS = b"\x88" + _hpack_int(31, 4) + _hpack_int(16, 7) + b"application/grpc"
TRAILERS_OK = literal(b"grpc-status", b"0")
STATIC = HeaderTable.STATIC_TABLE
_huffman_cache: dict[bytes, bytes] = {}


def _huffman(raw: bytes) -> bytes:
    """grpc-go sends a new grpc-timeout value per call, Huffman-coded; decoding is the slow part of
    HPACK in Python, and the values repeat, so decoded strings are kept (bounded)."""
    value = _huffman_cache.get(raw)
    if value is None:
        if len(_huffman_cache) > 4096:
            _huffman_cache.clear()
        try:
            value = _huffman_cache[raw] = decode_huffman(raw)
        except Exception as e:  # hpack raises its own error types for bad codes and padding
            raise ProtocolError(COMPRESSION_ERROR, f"bad Huffman string: {e}") from e
    return value


class HpackDecoder:
    """RFC 7541 decoding with the dynamic table; every header block must pass through, in order."""

    def __init__(self, max_size: int = 4096) -> None:
        self.table: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.size = 0
        self.limit = max_size  # SETTINGS_HEADER_TABLE_SIZE we allow (the default)
        self.max_size = max_size

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        pos, n = 0, len(data)
        while pos < n:
            b = data[pos]
            if b & 0x80:
                index, pos = self._int(data, pos, 7)
                headers.append(self._get(index))
                continue
            if b & 0xE0 == 0x20:
                size, pos = self._int(data, pos, 5)
                if size > self.limit:
                    raise ProtocolError(COMPRESSION_ERROR, "table size update over the limit")
                self.max_size = size
                self._evict()
                continue
            index, pos = self._int(data, pos, 6 if b & 0x40 else 4)
            if index:
                name = self._get(index)[0]
            else:
                name, pos = self._str(data, pos)
            value, pos = self._str(data, pos)
            headers.append((name, value))
            if b & 0x40:
                self.table.appendleft((name, value))
                self.size += len(name) + len(value) + 32
                self._evict()
        return headers

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            name, value = self.table.pop()
            self.size -= len(name) + len(value) + 32

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC[index - 1]
        if 61 < index <= 61 + len(self.table):
            return self.table[index - 62]
        raise ProtocolError(COMPRESSION_ERROR, f"header index {index} out of range")

    @staticmethod
    def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
        mask = (1 << prefix) - 1
        value = data[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        while pos < len(data) and shift <= 28:
            b = data[pos]
            pos += 1
            value += (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value, pos
        raise ProtocolError(COMPRESSION_ERROR, "bad integer")

    def _str(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise ProtocolError(COMPRESSION_ERROR, "truncated string")
        huffman = data[pos] & 0x80
        length, pos = self._int(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise ProtocolError(COMPRESSION_ERROR, "truncated string")
        raw = data[pos:end]
        return (_huffman(raw) if huffman else raw), end


class _Outgoing:
    """A reply held back by flow control: the rest of its DATA, then its trailers."""

    __slots__ = ("data", "window")

    def __init__(self, data: bytes, window: int) -> None:
        self.data = data
        self.window = window


class Connection(asyncio.Protocol):
    """One HTTP/2 connection from CoreDNS; calls are answered synchronously as their last DATA arrives."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = bytearray()
        self.preface = False
        self.hpack = HpackDecoder()
        self.requests: dict[int, bytearray] = {}
        self.outgoing: dict[int, _Outgoing] = {}
        self.out: list[bytes] = []
        self.send_window = 65535
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.unacked = 0
        self.last_stream = 0
        self.continuation: tuple[int, bytearray, bool] | None = None  # (stream, block, end_stream)
        self.goaway_sent = False

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host, port = transport.get_extra_info("peername")[:2]
        self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        self.server.connections.add(self)
        settings = struct.pack(">HI", S_INITIAL_WINDOW_SIZE, RECV_WINDOW)
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(
            ">I", RECV_WINDOW - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.idle.set()

    def data_received(self, data: bytes) -> None:
        try:
            self._receive(data)
        except ProtocolError as e:
            log.warning("HTTP/2 error from %s: %s", self.peer, e)
            self.out.append(self._goaway_frame(e.code))
            self._flush()
            if self.transport is not None:
                self.transport.close()
            return
        self._flush()
        if self.goaway_sent and not self.requests and not self.outgoing and self.transport is not None:
            self.transport.close()

    # -- frames in ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if not self.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(bytes(buf)):
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                return
            if buf[:len(PREFACE)] != PREFACE:
                raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
            del buf[:len(PREFACE)]
            self.preface = True
        pos, n = 0, len(buf)
        while n - pos >= 9:
            length = buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]
            if length > MAX_FRAME:
                raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {length} bytes")
            if n - pos - 9 < length:
                break
            ftype, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[pos + 9:pos + 9 + length])
            pos += 9 + length
            self._frame(ftype, flags, stream, payload)
        del buf[:pos]

    def _frame(self, ftype: int, flags: int, stream: int, payload: bytes) -> None:
        if self.continuation is not None and (ftype != CONTINUATION or stream != self.continuation[0]):
            raise ProtocolError(PROTOCOL_ERROR, "header block interrupted")
        if ftype == DATA:
            self._data(flags, stream, payload)
        elif ftype == HEADERS:
            if stream == 0 or not stream & 1:
                raise ProtocolError(PROTOCOL_ERROR, "HEADERS on a server or zero stream id")
            block = self._unpad(flags, payload)
            if flags & PRIORITY_FLAG:
                block = block[5:]
            if flags & END_HEADERS:
                self._headers(stream, block, bool(flags & END_STREAM))
            else:
                self.continuation = (stream, bytearray(block), bool(flags & END_STREAM))
        elif ftype == CONTINUATION:
            if self.continuation is None:
                raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self.continuation[1].extend(payload)
            if len(self.continuation[1]) > MAX_REQUEST:
                raise ProtocolError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                stream, block, end = self.continuation
                self.continuation = None
                self._headers(stream, bytes(block), end)
        elif ftype == SETTINGS:
            self._settings(flags, stream, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif ftype == PING:
            if len(payload) != 8 or stream:
                raise ProtocolError(FRAME_SIZE_ERROR, "bad PING")
            if not flags & ACK:
                self.out.append(frame(PING, ACK, 0, payload))
        elif ftype == RST_STREAM:
            self.requests.pop(stream, None)
            self.outgoing.pop(stream, None)
        elif ftype == GOAWAY:
            log.debug("GOAWAY from %s", self.peer)
        elif ftype == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    @staticmethod
    def _unpad(flags: int, payload: bytes) -> bytes:
        if not flags & PADDED:
            return payload
        if not payload or payload[0] >= len(payload):
            raise ProtocolError(PROTOCOL_ERROR, "bad padding")
        return payload[1:len(payload) - payload[0]]

    def _headers(self, stream: int, block: bytes, end_stream: bool) -> None:
        headers = self.hpack.decode(block)  # always: the dynamic table must stay in step
        if stream in self.requests:  # trailers of a request
            if end_stream:
                self._call(stream)
            return
        if stream <= self.last_stream:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on a closed stream")
        self.last_stream = stream
        if self.goaway_sent:
            self._trailers_only(stream, GRPC_UNAVAILABLE, b"server stopping")
            return
        path = next((v for k, v in headers if k == b":path"), None)
        if path != PATH:
            self._trailers_only(stream, GRPC_UNIMPLEMENTED, b"unknown method")
            return
        if len(self.requests) >= MAX_OPEN_CALLS:
            self._trailers_only(stream, GRPC_RESOURCE_EXHAUSTED, b"too many open calls")
            return
        self.requests[stream] = bytearray()
        if end_stream:
            self._call(stream)

    def _data(self, flags: int, stream: int, payload: bytes) -> None:
        if stream == 0:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        self.unacked += len(payload)
        if self.unacked > RECV_WINDOW // 2:
            self.out.append(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.unacked)))
            self.unacked = 0
        body = self.requests.get(stream)
        if body is None:  # a stream we already answered or refused
            return
        body += self._unpad(flags, payload)
        if len(body) > MAX_REQUEST:
            del self.requests[stream]
            self._trailers_only(stream, GRPC_RESOURCE_EXHAUSTED, b"request too large")
        elif flags & END_STREAM:
            self._call(stream)

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS length")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > 0x7FFFFFFF:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for pending in self.outgoing.values():
                    pending.window += delta
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise ProtocolError(PROTOCOL_ERROR, "bad max frame size")
                self.peer_max_frame = value
        self.out.append(frame(SETTINGS, ACK, 0))
        self._send_pending()

    def _window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream == 0:
            if increment == 0:
                raise ProtocolError(PROTOCOL_ERROR, "zero window increment")
            self.send_window += increment
        elif stream in self.outgoing:
            self.outgoing[stream].window += increment
        self._send_pending()

    # -- calls and replies -------------------------------------------------------------------

    def _call(self, stream: int) -> None:
        body = self.requests.pop(stream)
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._trailers_only(stream, GRPC_INTERNAL, b"expected exactly one request message")
            return
        if body[0]:
            self._trailers_only(stream, GRPC_UNIMPLEMENTED, b"message compression is not supported")
            return
        try:
            request = dns_pb2.DnsPacket.FromString(bytes(body[5:]))
        except DecodeError:
            self._trailers_only(stream, GRPC_INTERNAL, b"bad DnsPacket")
            return
        try:
            answer = self.server.handler(request.msg, self.peer)
        except GrpcError as e:
            self._trailers_only(stream, e.status, str(e).encode())
            return
        except Exception:
            log.exception("DNS handler failed")
            self._trailers_only(stream, GRPC_INTERNAL, b"handler failed")
            return
        reply = dns_pb2.DnsPacket(msg=answer).SerializeToString()
        data = b"\0" + len(reply).to_bytes(4, "big") + reply
        self.out.append(frame(HEADERS, END_HEADERS, stream, RESPONSE_HEADERS))
        size = len(data)
        if size <= self.send_window and size <= self.peer_initial_window and size <= self.peer_max_frame:
            self.send_window -= size
            self.out.append(frame(DATA, 0, stream, data))
            self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, TRAILERS_OK))
        else:
            self.outgoing[stream] = _Outgoing(data, self.peer_initial_window)
            self._send_pending()

    def _send_pending(self) -> None:
        """Send what the peer's windows allow, oldest reply first; trailers once the data is out."""
        for stream, pending in list(self.outgoing.items()):
            while pending.data:
                size = min(len(pending.data), pending.window, self.send_window, self.peer_max_frame)
                if size <= 0:
                    break
                self.out.append(frame(DATA, 0, stream, pending.data[:size]))
                pending.data = pending.data[size:]
                pending.window -= size
                self.send_window -= size
            if pending.data:
                if self.send_window <= 0:
                    return
                continue
            self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, TRAILERS_OK))
            del self.outgoing[stream]

    def _trailers_only(self, stream: int, status: int, message: bytes) -> None:
        status_field = literal(b"grpc-status", str(status).encode())
        block = RESPONSE_HEADERS + status_field + literal(b"grpc-message", message)
        self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, stream, block))

    def _goaway_frame(self, code: int) -> bytes:
        self.goaway_sent = True
        return frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code))

    def _flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def goaway(self) -> None:
        """Graceful stop: no new calls; close once the calls already started are answered."""
        self.out.append(self._goaway_frame(NO_ERROR))
        self._flush()
        if not self.requests and not self.outgoing and self.transport is not None:
            self.transport.close()


class H2GrpcServer:
    """Listens on host:port; `handler(request, peer) -> reply` runs on the event loop thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[Connection] = set()
        self.idle = asyncio.Event()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on host:port, or on `sock`, a bound listening socket handed over by another process."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: Connection(self), host, port, reuse_port=True)
        return self._server.sockets[0].getsockname()[1]

    @property
    def serving(self) -> bool:
        return self._server is not None

    async def stop(self, grace: float) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self.connections):
            conn.goaway()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.connections and loop.time() < deadline:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), deadline - loop.time())
            except TimeoutError:
                break
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        self._server = None
