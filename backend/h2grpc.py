"""A gRPC server for exactly one unary method, over cleartext HTTP/2, on asyncio.

CoreDNS's grpc plugin (grpc-go) calls `/coredns.dns.DnsService/Query` and nothing else. grpcio's
server spends about 200 microseconds of CPU per call in its generic machinery, forty times what the
answer itself costs; this server speaks just the part of HTTP/2 (RFC 9113) and HPACK (RFC 7541)
that unary gRPC needs, but all of that part: stream states, flow control both ways, SETTINGS,
PING, RST_STREAM, GOAWAY, HEADERS + CONTINUATION with a full HPACK decoder, and the request rules of
RFC 9113 section 8 (h2spec, all groups and --strict: tests/test_h2spec.py). Requests that are not
gRPC (h2spec's `GET /`) get 415 and a one-line body, as from grpc-go. Replies use only static-table
and literal-without-indexing header fields, so there is no encoder state to keep.

Every resource a client can make us hold is bounded (class Limits; the table of values and why is in
backend/README.md): connections, streams, buffered request bodies and queued replies per connection
and in total, header blocks, the write buffer (reading pauses while it is full), and time (handshake,
request, idle and write timeouts, checked by one sweep a second rather than per-call timers).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import re
import resource
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from google.protobuf.message import DecodeError
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

from backend.keyedlog import KeyedLog
from backend.proto import dns_pb2

log = logging.getLogger(__name__)

PATH = b"/coredns.dns.DnsService/Query"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE = range(9)
CONTINUATION = 9
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE = 1, 2, 3, 4
S_MAX_FRAME_SIZE, S_MAX_HEADER_LIST_SIZE = 5, 6
MAX_FRAME = 16384  # we never raise SETTINGS_MAX_FRAME_SIZE
MAX_WINDOW = 0x7FFFFFFF
MAX_REQUEST = 70000  # DnsPacket of a 64 KiB message plus gRPC and protobuf framing
GRPC_UNIMPLEMENTED, GRPC_INTERNAL, GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE = 12, 13, 8, 14

Handler = Callable[[bytes, str], bytes]  # (DNS request, peer) -> DNS reply


@dataclass(frozen=True)
class Limits:
    """What one client, and all of them together, can make the server hold (backend/README.md says why)."""

    max_connections: int = 1000  # lowered to leave fd_headroom below RLIMIT_NOFILE
    fd_headroom: int = 256  # descriptors kept for the HTTP port, the API and edge/peer clients, logs
    max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS (nginx 128, Go 250)
    max_header_list: int = 16384  # SETTINGS_MAX_HEADER_LIST_SIZE (grpc-core's hard limit)
    stream_window: int = 1 << 17  # SETTINGS_INITIAL_WINDOW_SIZE: above MAX_REQUEST, so never replenished
    connection_window: int = 1 << 20  # request bytes buffered per connection (credited back when consumed)
    max_queued_reply: int = 1 << 20  # reply bytes held back by the client's flow control, per connection
    total_buffered: int = 64 << 20  # request bodies + held replies over all connections
    handshake_timeout: float = 10.0  # connection preface and first SETTINGS
    request_timeout: float = 10.0  # a stream from HEADERS to its reply, a frame or header block half sent
    idle_timeout: float = 300.0  # no stream open (grpc-go's MaxConnectionIdle; nginx keepalive 75 s)
    write_timeout: float = 30.0  # client not reading our writes (nginx send_timeout 60 s)
    ping_ack_interval: float = 0.1  # at most one PING ACK per connection in this time (grpc-go's BDP pings)
    max_held_pings: int = 16  # PINGs waiting for that interval; one more and they are all answered at once


class GrpcError(Exception):
    """Raised by a handler to answer the call with a gRPC status instead of a reply. CoreDNS's grpc
    plugin treats any status but NOT_FOUND as a failed upstream and tries the next one."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ProtocolError(Exception):
    """A connection error: GOAWAY with `code`, then close."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code


class StreamError(Exception):
    """A stream error: RST_STREAM with `code` on `stream`; the connection lives on."""

    def __init__(self, stream: int, code: int, why: str) -> None:
        super().__init__(why)
        self.stream = stream
        self.code = code


class _Malformed(Exception):
    """A request RFC 9113 section 8.1.1 calls malformed (a stream error of type PROTOCOL_ERROR)."""


# at most one line per kind of event every 10 s, with a count of the ones left out, so a hostile
# client cannot fill the log (one traceback per bad connection wrote 111 MB in 38 s)
limited_log = KeyedLog(log, window=10.0)


_HEAD = struct.Struct(">IBI")  # a frame header: length << 8 | type, flags, stream


def frame(ftype: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload) << 8 | ftype, flags, stream) + payload


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


def _indexed_name(index: int, value: bytes) -> bytes:
    """A literal without indexing whose name is static-table entry `index`."""
    return _hpack_int(index, 4) + _hpack_int(len(value), 7) + value


# ":status: 200" (static index 8) and content-type (static name 31) = application/grpc
RESPONSE_HEADERS = b"\x88" + _indexed_name(31, b"application/grpc")
TRAILERS_OK = literal(b"grpc-status", b"0")
_RESPONSE_HEAD, _TRAILERS_HEAD = len(RESPONSE_HEADERS) << 8 | HEADERS, len(TRAILERS_OK) << 8 | HEADERS
STATIC = HeaderTable.STATIC_TABLE

def _message_prefix(n: int) -> bytes:
    """What goes before an n-byte DNS reply: the gRPC message header, then DnsPacket's field 1 key and
    length (protobuf by hand, 1 us less per call than the generated class; proto3 omits an empty msg)."""
    if not n:
        return b"\0\0\0\0\0"
    key, rest = bytearray(b"\n"), n
    while rest >= 0x80:
        key.append(rest & 0x7F | 0x80)
        rest >>= 7
    key.append(rest)
    return b"\0" + (len(key) + n).to_bytes(4, "big") + key


Response = tuple[bytes, bytes]  # a header block and a body (b"": the block ends the stream)


def _grpc_status(status: int, message: bytes) -> Response:
    """A trailers-only gRPC reply."""
    status_field = literal(b"grpc-status", str(status).encode())
    return RESPONSE_HEADERS + status_field + literal(b"grpc-message", message), b""


def _http_status(status: int, text: bytes) -> Response:
    """A plain HTTP reply for requests that are not gRPC (static names :status, content-type, -length)."""
    block = (_indexed_name(8, str(status).encode()) + _indexed_name(31, b"text/plain; charset=utf-8")
             + _indexed_name(28, str(len(text)).encode()))
    return block, text


NOT_GRPC = _http_status(415, b"invalid gRPC request content-type\n")
NOT_POST = _http_status(405, b"gRPC requests use POST\n")
HEADERS_TOO_LARGE = _http_status(431, b"request header list too large\n")
UNIMPLEMENTED = _grpc_status(GRPC_UNIMPLEMENTED, b"unknown method")
REQUEST_TOO_LARGE = _grpc_status(GRPC_RESOURCE_EXHAUSTED, b"request too large")


# -- HPACK -------------------------------------------------------------------------------------------


def _huffman_tables() -> tuple[list[int], list[bytes], list[bool]]:
    """A state machine that decodes a whole input byte per step (nghttp2's design, 8 bits instead of 4):
    states are the inner nodes of the code tree; per (state, byte) the next state (-1 on EOS) and the
    symbols completed. An end state is valid padding if it is at most 7 one-bits below the root."""
    nodes: list[list[int | None]] = [[None, None]]  # child: inner node index, or -1 - symbol for a leaf
    for sym in range(257):
        code, length, node = REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym], 0
        for i in range(length - 1, 0, -1):
            bit = code >> i & 1
            child = nodes[node][bit]
            if child is None:
                nodes.append([None, None])
                child = nodes[node][bit] = len(nodes) - 1
            node = child
        nodes[node][code & 1] = -1 - sym
    accept = [False] * len(nodes)
    node = 0
    for _ in range(8):
        accept[node] = True
        node = nodes[node][1]  # type: ignore[assignment]
    nibble: list[tuple[int, bytes]] = []  # (state << 4 | half-byte) -> (next state, symbols)
    for state in range(len(nodes)):
        for half in range(16):
            node, out = state, b""
            for i in (3, 2, 1, 0):
                child = nodes[node][half >> i & 1]
                assert child is not None  # the code is complete: every node has two children
                if child >= 0:
                    node = child
                elif child == -257:  # EOS inside a string is an error (RFC 7541 5.2)
                    node = -1
                    break
                else:
                    node, out = 0, out + bytes((-1 - child,))
            nibble.append((node, out))
    interned: dict[bytes, bytes] = {}
    nxt, emit = [-1] * (len(nodes) << 8), [b""] * (len(nodes) << 8)
    for state in range(len(nodes)):
        for byte in range(256):
            mid, first = nibble[state << 4 | byte >> 4]
            if mid < 0:
                continue
            end, second = nibble[mid << 4 | byte & 15]
            nxt[state << 8 | byte] = end
            emit[state << 8 | byte] = interned.setdefault(first + second, first + second)
    return nxt, emit, accept


_H_NEXT, _H_EMIT, _H_ACCEPT = _huffman_tables()


def _huffman(raw: bytes) -> bytes:
    """Decode a Huffman string (RFC 7541 5.2), ~10x faster than hpack's bit-by-bit decoder and without
    a cache: grpc-go's one Huffman string per call (grpc-timeout) differs on every call anyway."""
    state, out = 0, []
    for byte in raw:
        i = state << 8 | byte
        state = _H_NEXT[i]
        if state < 0:
            raise ProtocolError(COMPRESSION_ERROR, "EOS in a Huffman string")
        out.append(_H_EMIT[i])
    if not _H_ACCEPT[state]:
        raise ProtocolError(COMPRESSION_ERROR, "bad Huffman padding")
    return b"".join(out)


# RFC 9113 8.2.1: no controls, space, uppercase or non-ASCII in names (':' only first); no NUL/CR/LF
# in values and no whitespace around them.
_BAD_NAME = re.compile(rb"[^\x21-\x39\x3b-\x40\x5b-\x7e]").search
_BAD_VALUE = re.compile(rb"[\0\r\n]|\A[ \t]|[ \t]\Z").search


class _BadName(tuple):  # type: ignore[type-arg]
    """A dynamic-table entry whose name HTTP/2 forbids; a later reference makes that request malformed."""


class _BadValue(tuple):  # type: ignore[type-arg]
    """A dynamic-table entry whose value HTTP/2 forbids."""


class HpackDecoder:
    """RFC 7541 decoding with the dynamic table; every header block must pass through, in order.

    Encoding errors raise ProtocolError(COMPRESSION_ERROR). Fields HTTP/2 forbids (uppercase names,
    CR/LF in values ...) are valid HPACK, so they only set `malformed` for that block (a stream error);
    a header list over `max_list` (RFC 7541 size) sets `oversized` and is cut there.
    """

    def __init__(self, max_size: int = 4096, max_list: int = 16384) -> None:
        self.table: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self.size = 0
        self.limit = max_size  # SETTINGS_HEADER_TABLE_SIZE we allow (the default)
        self.max_size = max_size
        self.max_list = max_list
        self.bad_entries = 0  # _BadName/_BadValue entries in the table (0: no type checks needed)
        self.malformed = False
        self.oversized = False

    def decode(self, data: bytes) -> list[tuple[bytes, bytes]]:
        headers: list[tuple[bytes, bytes]] = []
        self.malformed = self.oversized = False
        pos, n, listed, table = 0, len(data), 0, self.table
        while pos < n:
            b = data[pos]
            if b & 0x80:  # an indexed field, the commonest kind: inlined
                index = b & 0x7F
                if index < 0x7F:
                    pos += 1
                else:
                    index, pos = self._int(data, pos, 7)
                if 0 < index <= 61:
                    field = STATIC[index - 1]
                elif 61 < index <= 61 + len(table):
                    field = table[index - 62]
                    if self.bad_entries and type(field) is not tuple:
                        self.malformed = True
                else:
                    raise ProtocolError(COMPRESSION_ERROR, f"header index {index} out of range")
            elif b & 0xE0 == 0x20:
                if listed:
                    raise ProtocolError(COMPRESSION_ERROR, "table size update after a header field")
                size, pos = self._int(data, pos, 5)
                if size > self.limit:
                    raise ProtocolError(COMPRESSION_ERROR, "table size update over the limit")
                self.max_size = size
                self._evict()
                continue
            else:
                index, pos = self._int(data, pos, 6 if b & 0x40 else 4)
                if index:
                    entry = self._get(index)
                    name = entry[0]
                    bad_name = self.bad_entries and type(entry) is _BadName
                else:
                    name, pos = self._str(data, pos)
                    bad_name = not name or _BAD_NAME(name, name[0] == 58) is not None
                value, pos = self._str(data, pos)
                bad_value = _BAD_VALUE(value) is not None
                field = (name, value)
                if bad_name or bad_value:
                    self.malformed = True
                if b & 0x40:
                    self._insert(_BadName(field) if bad_name else _BadValue(field) if bad_value else field)
            listed += len(field[0]) + len(field[1]) + 32
            if listed <= self.max_list:
                headers.append(field)
            else:
                self.oversized = True
        return headers

    def _insert(self, field: tuple[bytes, bytes]) -> None:
        self.table.appendleft(field)
        self.size += len(field[0]) + len(field[1]) + 32
        if type(field) is not tuple:
            self.bad_entries += 1
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size and self.table:
            field = self.table.pop()
            self.size -= len(field[0]) + len(field[1]) + 32
            if type(field) is not tuple:
                self.bad_entries -= 1

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


# -- requests ----------------------------------------------------------------------------------------

# Fields the request check looks at: the four request pseudo-headers (0-3), then content-type (4),
# te (5), content-length (6) and the connection-specific fields HTTP/2 forbids (7, RFC 9113 8.2.2).
_FIELD_KIND = {b":method": 0, b":scheme": 1, b":path": 2, b":authority": 3, b"content-type": 4, b"te": 5,
               b"content-length": 6, b"connection": 7, b"keep-alive": 7, b"proxy-connection": 7,
               b"transfer-encoding": 7, b"upgrade": 7}


def _request(headers: list[tuple[bytes, bytes]]) -> tuple[Response | None, int, bool]:
    """(the reply instead of a call, or None for a call; content-length or -1; HEAD) for a request's
    header list; raises _Malformed for what RFC 9113 8.1.1 calls malformed."""
    pseudo: list[bytes | None] = [None, None, None, None]
    ctype: bytes | None = None
    length, regular = -1, False
    for name, value in headers:
        kind = _FIELD_KIND.get(name)
        if kind is None:
            if name[0] == 58:  # b":": an unknown or response pseudo-header
                raise _Malformed(name.decode("latin-1"))
            regular = True
        elif kind < 4:
            if regular or pseudo[kind] is not None:
                raise _Malformed("pseudo-header after a regular field, or twice")
            pseudo[kind] = value
        else:
            regular = True
            if kind == 4:
                ctype = value
            elif kind == 5:
                if value != b"trailers":
                    raise _Malformed("te other than trailers")
            elif kind == 6:
                if not value.isdigit() or 0 <= length != int(value):
                    raise _Malformed("bad content-length")
                length = int(value)
            else:
                raise _Malformed(f"connection-specific field {name.decode()}")
    method, scheme, path, authority = pseudo
    if method == b"CONNECT":
        if scheme is not None or path is not None or authority is None:
            raise _Malformed("bad CONNECT")
        return NOT_POST, length, False
    if method is None or scheme is None or not path:
        raise _Malformed("missing :method, :scheme or :path")
    if ctype is None or not (ctype == b"application/grpc" or ctype.startswith((b"application/grpc+",
                                                                               b"application/grpc;"))):
        return NOT_GRPC, length, method == b"HEAD"
    if method != b"POST":
        return NOT_POST, length, method == b"HEAD"
    if path != PATH:
        return UNIMPLEMENTED, length, False
    return None, length, False


class _Stream:
    """A stream in state open (request arriving) or half-closed (remote) (reply held by flow control)."""

    __slots__ = ("body", "born", "expect", "head", "held", "received", "reply", "response", "seen",
                 "trailers", "window")

    def __init__(self, window: int, born: int, response: Response | None, expect: int, head: bool) -> None:
        self.window = window  # the client's flow-control window for our DATA on this stream
        self.born = born  # server tick at HEADERS, for the request timeout
        self.response = response  # None: a gRPC call; else the reply to send once the request ends
        self.expect = expect  # content-length, or -1
        self.head = head
        self.body: bytearray | None = None  # a call's request so far (None until a second DATA frame)
        self.received = 0  # flow-controlled bytes received on this stream
        self.held = 0  # of those, bytes not yet credited back to the connection window
        self.seen = 0  # body bytes (without padding), for content-length
        self.reply = b""  # DATA payload the client's windows hold back
        self.trailers: bytes | None = None  # sent after `reply` (None: the last DATA ends the stream)


class _HeaderBlock:
    """A header block still arriving in CONTINUATION frames."""

    __slots__ = ("block", "born", "end_stream", "frames", "stream")

    def __init__(self, stream: int, block: bytes, end_stream: bool, born: int) -> None:
        self.stream = stream
        self.block = bytearray(block)
        self.end_stream = end_stream
        self.born = born
        self.frames = 1


class Connection(asyncio.Protocol):
    """One HTTP/2 connection; calls are answered synchronously as their last DATA arrives."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.limits = server.limits
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.buf = b""  # the start of a frame that has not fully arrived
        self.preface = False
        self.hpack = HpackDecoder(max_list=self.limits.max_header_list)
        self.streams: dict[int, _Stream] = {}
        self.outgoing: dict[int, _Stream] = {}  # streams with reply bytes held back, oldest first
        self.out: list[bytes] = []
        self.send_window = 65535  # the client's connection window for our DATA
        self.recv_window = self.limits.connection_window  # what the client may still send us
        self.consumed = 0  # received bytes we are done with, not yet given back in a WINDOW_UPDATE
        self.queued = 0  # reply bytes in self.outgoing
        self.peer_initial_window = 65535
        self.peer_max_frame = 16384
        self.last_stream = 0
        self.continuation: _HeaderBlock | None = None
        self.goaway_sent = False
        now = server.tick
        self.born = self.active = now  # ticks: accepted, last stream opened
        self.partial: int | None = None  # tick since an incomplete frame sits in self.buf
        self.paused: int | None = None  # tick since reading is paused for a full write buffer
        self.closing: int | None = None  # tick since close() was called
        self.pings: list[bytes] = []  # payloads of PINGs whose ACK waits for ping_ack_interval
        self.ping_acked = -math.inf  # loop time of the last PING ACK
        self.ping_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (create_server's); uvloop's do not subclass asyncio.Transport, so no isinstance
        transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.max_connections:
            limited_log("connection-limit", logging.WARNING,
                        "gRPC connection limit (%d) reached: refusing new connections",
                        server.max_connections)
            transport.abort()
            return
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            host, port = peer[:2]
            self.peer = f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"
        server.connections.add(self)
        lim = self.limits
        settings = struct.pack(">HIHIHI", S_MAX_CONCURRENT_STREAMS, lim.max_concurrent_streams,
                               S_INITIAL_WINDOW_SIZE, lim.stream_window,
                               S_MAX_HEADER_LIST_SIZE, lim.max_header_list)
        transport.write(frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(
            ">I", lim.connection_window - 65535)))

    def connection_lost(self, exc: Exception | None) -> None:
        server = self.server
        server.connections.discard(self)
        for s in self.streams.values():
            self._release(s)
        self.streams.clear()
        self.outgoing.clear()
        if self.ping_timer is not None:
            self.ping_timer.cancel()
        server.idle.set()

    def pause_writing(self) -> None:
        """The client reads slower than we write: stop reading from it (write backpressure)."""
        self.paused = self.server.tick
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = None
        if self.transport is not None and self.closing is None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.closing is not None:
            return
        try:
            self._receive(data)
        except ProtocolError as e:
            limited_log("protocol", logging.WARNING, "HTTP/2 error from %s: %s", self.peer, e)
            self._fail(e.code)
            return
        except Exception:
            limited_log("internal", logging.ERROR, "HTTP/2 server error on a connection from %s", self.peer,
                        exc_info=True)
            self._fail(INTERNAL_ERROR)
            return
        if self.consumed and (self.consumed >= self.limits.connection_window >> 2
                              or self.recv_window < self.limits.connection_window >> 2):
            self.out.append(frame(WINDOW_UPDATE, 0, 0, self.consumed.to_bytes(4, "big")))
            self.recv_window += self.consumed
            self.consumed = 0
        self._flush()
        if self.goaway_sent and not self.streams:
            self._close()

    # -- frames in ---------------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        if not self.preface:
            if not self._preface(data):
                self.buf = data
                return
            data = data[len(PREFACE):]
        pos, n, head = 0, len(data), _HEAD.unpack_from
        while n - pos >= 9:
            length_type, flags, stream = head(data, pos)
            end = pos + 9 + (length_type >> 8)
            if length_type >> 8 > MAX_FRAME:
                raise ProtocolError(FRAME_SIZE_ERROR, f"frame of {length_type >> 8} bytes")
            if end > n:
                break
            try:
                self._frame(length_type & 0xFF, flags, stream & 0x7FFFFFFF, data[pos + 9:end])
            except StreamError as e:
                self._reset(e.stream, e.code)
            pos = end
        if pos == n:
            self.buf = b""
            self.partial = None
        else:
            self.buf = data[pos:]
            if pos or self.partial is None:
                self.partial = self.server.tick

    def _preface(self, data: bytes) -> bool:
        """True once the client preface and the head of a SETTINGS frame (RFC 9113 3.4) are in."""
        if not PREFACE.startswith(data[:len(PREFACE)]):
            raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
        if len(data) < len(PREFACE) + 9:
            return False
        if data[len(PREFACE) + 3] != SETTINGS:
            raise ProtocolError(PROTOCOL_ERROR, "the preface is not followed by SETTINGS")
        self.preface = True
        return True

    def _frame(self, ftype: int, flags: int, stream: int, payload: bytes) -> None:
        if self.continuation is not None and ftype != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "header block interrupted")
        if ftype == DATA:
            self._data(flags, stream, payload)
        elif ftype == HEADERS:
            self._headers_frame(flags, stream, payload)
        elif ftype == WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif ftype == PING:
            if stream:
                raise ProtocolError(PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "PING length")
            if not flags & ACK:
                self._ping(payload)
        elif ftype == SETTINGS:
            self._settings(flags, stream, payload)
        elif ftype == RST_STREAM:
            self._rst_stream(stream, payload)
        elif ftype == PRIORITY:
            if not stream:
                raise ProtocolError(PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise StreamError(stream, FRAME_SIZE_ERROR, "PRIORITY length")
            if int.from_bytes(payload[:4], "big") & 0x7FFFFFFF == stream:
                raise StreamError(stream, PROTOCOL_ERROR, "stream depends on itself")
        elif ftype == CONTINUATION:
            self._continuation(flags, stream, payload)
        elif ftype == GOAWAY:
            if stream:
                raise ProtocolError(PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise ProtocolError(FRAME_SIZE_ERROR, "GOAWAY length")
        elif ftype == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # unknown frame types are ignored, as RFC 9113 asks

    def _ping(self, payload: bytes) -> None:
        """Answer a PING at once if the last ACK is ping_ack_interval old, else when it is. grpc-go's
        BDP estimator sends a PING (and a WINDOW_UPDATE before it) with the first DATA after its last
        PING's ACK: answered at once, that was a PING for 2 of 3 calls at 3,000 calls a second, two
        more wakeups on each side. Paced, it is ten a second. RFC 9113 6.7 asks that an ACK be sent (it
        is, with the payload) and that it SHOULD go before other frames; a client that pings now and
        then (h2spec, keepalive) still gets it at once."""
        self.pings.append(payload)
        if len(self.pings) > self.limits.max_held_pings:
            self._ack_pings()  # data_received flushes
        elif self.ping_timer is None:
            loop = asyncio.get_running_loop()
            wait = self.ping_acked + self.limits.ping_ack_interval - loop.time()
            if wait > 0:
                self.ping_timer = loop.call_later(wait, self._ack_held)
            else:
                self._ack_pings()

    def _ack_pings(self) -> None:
        """The held PINGs' ACKs into self.out, in the order they came."""
        if self.ping_timer is not None:
            self.ping_timer.cancel()
            self.ping_timer = None
        self.out.extend(frame(PING, ACK, 0, payload) for payload in self.pings)
        self.pings.clear()
        self.ping_acked = asyncio.get_running_loop().time()

    def _ack_held(self) -> None:
        self.ping_timer = None
        self._ack_pings()
        self._flush()

    def _closed_or_idle(self, stream: int, what: str) -> None:
        """A frame for a stream we hold no state for: a connection error if it is idle, else nothing."""
        if stream > self.last_stream or not stream & 1:
            raise ProtocolError(PROTOCOL_ERROR, f"{what} on idle stream {stream}")

    @staticmethod
    def _unpad(payload: bytes, extra: int = 0) -> bytes:
        """The frame's content without padding (and without `extra` bytes of priority fields)."""
        if not payload:
            raise ProtocolError(FRAME_SIZE_ERROR, "padded frame without a pad length")
        pad = payload[0]
        if pad > len(payload) - 1 - extra:
            raise ProtocolError(PROTOCOL_ERROR, "padding longer than the frame")
        return payload[1:len(payload) - pad]

    def _headers_frame(self, flags: int, stream: int, payload: bytes) -> None:
        if not stream & 1:
            raise ProtocolError(PROTOCOL_ERROR, "HEADERS on an even or zero stream id")
        block = self._unpad(payload, 5 if flags & PRIORITY_FLAG else 0) if flags & PADDED else payload
        if flags & PRIORITY_FLAG:
            if len(block) < 5:
                raise ProtocolError(FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if int.from_bytes(block[:4], "big") & 0x7FFFFFFF == stream:
                self._header_block(stream, block[5:], flags & END_STREAM)  # keeps HPACK in step
                raise StreamError(stream, PROTOCOL_ERROR, "stream depends on itself")
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(stream, block, flags & END_STREAM)
        else:
            if len(block) > 2 * self.limits.max_header_list:
                raise ProtocolError(ENHANCE_YOUR_CALM, "header block too large")
            self.continuation = _HeaderBlock(stream, block, bool(flags & END_STREAM), self.server.tick)

    def _continuation(self, flags: int, stream: int, payload: bytes) -> None:
        pending = self.continuation
        if pending is None or stream != pending.stream:
            self._closed_or_idle(stream, "CONTINUATION")
            raise ProtocolError(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        pending.block += payload
        pending.frames += 1
        # bytes plus frame headers, so that a run of empty CONTINUATION frames ends too (CVE-2024-27316)
        if len(pending.block) + 9 * pending.frames > 2 * self.limits.max_header_list:
            raise ProtocolError(ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self.continuation = None
            self._header_block(stream, bytes(pending.block), pending.end_stream)

    def _header_block(self, sid: int, block: bytes, end_stream: int) -> None:
        hpack = self.hpack
        headers = hpack.decode(block)  # always: the dynamic table must stay in step
        s = self.streams.get(sid)
        if s is not None:  # trailers of a request (or a second HEADERS on a half-closed stream)
            if s.trailers is not None or s.reply:
                raise StreamError(sid, STREAM_CLOSED, "HEADERS on a half-closed stream")
            if not end_stream:
                raise StreamError(sid, PROTOCOL_ERROR, "trailers without END_STREAM")
            if hpack.malformed or any(name[0] == 58 for name, _ in headers):
                raise StreamError(sid, PROTOCOL_ERROR, "malformed trailers")
            self._end(sid, s, None)
            return
        if sid <= self.last_stream:
            if sid == self.last_stream:
                raise ProtocolError(STREAM_CLOSED, f"HEADERS on closed stream {sid}")
            raise ProtocolError(PROTOCOL_ERROR, f"stream id {sid} below {self.last_stream}")
        self.last_stream = sid
        if hpack.malformed:
            raise StreamError(sid, PROTOCOL_ERROR, "forbidden header field")
        if self.goaway_sent or len(self.streams) >= self.limits.max_concurrent_streams:
            raise StreamError(sid, REFUSED_STREAM, "too many streams")
        try:
            response, expect, head = _request(headers)
        except _Malformed as e:
            raise StreamError(sid, PROTOCOL_ERROR, f"malformed request: {e}") from None
        if hpack.oversized:
            response = HEADERS_TOO_LARGE
        s = self.streams[sid] = _Stream(self.peer_initial_window, self.server.tick, response, expect, head)
        self.active = s.born
        if end_stream:
            self._end(sid, s, None)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        length = len(payload)
        self.recv_window -= length
        if self.recv_window < 0:
            raise ProtocolError(FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        data = self._unpad(payload) if flags & PADDED else payload
        s = self.streams.get(sid)
        if s is None or s.trailers is not None or s.reply:
            self.consumed += length
            if not sid:
                raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
            self._closed_or_idle(sid, "DATA")
            raise StreamError(sid, STREAM_CLOSED, "DATA on a closed or half-closed stream")
        s.received += length
        s.held += length
        s.seen += len(data)
        if s.received > self.limits.stream_window:
            raise StreamError(sid, FLOW_CONTROL_ERROR, "DATA beyond the stream window")
        if 0 <= s.expect < s.seen:
            raise StreamError(sid, PROTOCOL_ERROR, "more DATA than content-length")
        body = None
        if s.response is not None:  # not a call: the body is not kept
            self.consumed += s.held
            s.held = 0
        elif flags & END_STREAM and s.body is None:
            body = data  # the usual call: the whole message in one DATA frame, no copy
        elif s.seen > MAX_REQUEST:
            self._drop_body(s)
            s.response = REQUEST_TOO_LARGE
        elif self.server.buffered + len(data) <= self.limits.total_buffered:
            self.server.buffered += len(data)
            if s.body is None:
                s.body = bytearray(data)
            else:
                s.body += data
        else:
            raise StreamError(sid, REFUSED_STREAM, "server-wide request buffer full")
        if flags & END_STREAM:
            self._end(sid, s, body if body is not None else s.body)

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream:
            raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "SETTINGS length")
        initial = self.peer_initial_window
        for key, value in struct.iter_unpack(">HI", payload):
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "initial window too large")
                initial = value
            elif key == S_MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise ProtocolError(PROTOCOL_ERROR, "bad max frame size")
                self.peer_max_frame = value
            elif key == S_ENABLE_PUSH and value > 1:
                raise ProtocolError(PROTOCOL_ERROR, "bad ENABLE_PUSH")
        delta = initial - self.peer_initial_window
        if delta:
            self.peer_initial_window = initial
            for s in self.streams.values():
                s.window += delta
                if s.window > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        self.out.append(frame(SETTINGS, ACK, 0))
        if self.outgoing:
            self._send_pending()

    def _window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream == 0:
            if increment == 0:
                raise ProtocolError(PROTOCOL_ERROR, "zero window increment")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window above 2^31-1")
        else:
            s = self.streams.get(stream)
            if s is None:
                self._closed_or_idle(stream, "WINDOW_UPDATE")
                return  # closed: a WINDOW_UPDATE may cross our END_STREAM
            if increment == 0:
                raise StreamError(stream, PROTOCOL_ERROR, "zero window increment")
            s.window += increment
            if s.window > MAX_WINDOW:
                raise StreamError(stream, FLOW_CONTROL_ERROR, "stream window above 2^31-1")
        if self.outgoing:
            self._send_pending()

    def _rst_stream(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "RST_STREAM length")
        if not stream:
            raise ProtocolError(PROTOCOL_ERROR, "RST_STREAM on stream 0")
        s = self.streams.pop(stream, None)
        if s is None:
            self._closed_or_idle(stream, "RST_STREAM")
            return
        self.outgoing.pop(stream, None)
        self._release(s)

    # -- calls and replies -------------------------------------------------------------------

    def _end(self, sid: int, s: _Stream, body: bytes | bytearray | None) -> None:
        """The request on `sid` is complete: answer it (the call, or the reply chosen at HEADERS)."""
        if 0 <= s.expect != s.seen:
            raise StreamError(sid, PROTOCOL_ERROR, "content-length differs from the DATA")
        self.consumed += s.held
        s.held = 0
        if s.body is not None:
            self._drop_body(s)
        if s.response is not None:
            self._respond(sid, s, s.response)
        else:
            self._call(sid, s, bytes(body) if body is not None else b"")

    def _call(self, sid: int, s: _Stream, body: bytes) -> None:
        if len(body) < 5 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            self._respond(sid, s, _grpc_status(GRPC_INTERNAL, b"expected exactly one request message"))
            return
        if body[0]:
            self._respond(sid, s, _grpc_status(GRPC_UNIMPLEMENTED, b"message compression is not supported"))
            return
        try:
            request = dns_pb2.DnsPacket.FromString(body[5:])
        except DecodeError:
            self._respond(sid, s, _grpc_status(GRPC_INTERNAL, b"bad DnsPacket"))
            return
        try:
            answer = self.server.handler(request.msg, self.peer)
        except GrpcError as e:
            self._respond(sid, s, _grpc_status(e.status, str(e).encode()))
            return
        except Exception:
            limited_log("handler", logging.ERROR, "DNS handler failed", exc_info=True)
            self._respond(sid, s, _grpc_status(GRPC_INTERNAL, b"handler failed"))
            return
        prefix = _message_prefix(len(answer))
        size = len(prefix) + len(answer)
        if size <= self.send_window and size <= s.window and size <= self.peer_max_frame:
            self.send_window -= size
            pack = _HEAD.pack
            self.out += (pack(_RESPONSE_HEAD, END_HEADERS, sid), RESPONSE_HEADERS,
                         pack(size << 8 | DATA, 0, sid), prefix, answer,
                         pack(_TRAILERS_HEAD, END_HEADERS | END_STREAM, sid), TRAILERS_OK)
            del self.streams[sid]
            return
        data = prefix + answer
        if (self.queued + size > self.limits.max_queued_reply
                or self.server.buffered + size > self.limits.total_buffered):
            self._respond(sid, s, _grpc_status(GRPC_RESOURCE_EXHAUSTED, b"replies held back by flow control"))
        else:
            self.out.append(frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS))
            self._hold(sid, s, data, TRAILERS_OK)

    def _respond(self, sid: int, s: _Stream, response: Response) -> None:
        """Send a reply other than a call's answer (a gRPC status, or HTTP for requests not gRPC)."""
        block, body = response
        if s.head or not body:
            self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, block))
            del self.streams[sid]
            return
        self.out.append(frame(HEADERS, END_HEADERS, sid, block))
        self._hold(sid, s, body, None)

    def _hold(self, sid: int, s: _Stream, data: bytes, trailers: bytes | None) -> None:
        """Send `data` as the windows allow, then `trailers` (or end the stream with the last DATA)."""
        s.reply, s.trailers = data, trailers
        self.queued += len(data)
        self.server.buffered += len(data)
        self.outgoing[sid] = s
        self._send_pending()

    def _send_pending(self) -> None:
        """Send what the client's windows allow, oldest reply first; trailers once the data is out."""
        for sid, s in list(self.outgoing.items()):
            while s.reply:
                size = min(len(s.reply), s.window, self.send_window, self.peer_max_frame)
                if size <= 0:
                    break
                last = size == len(s.reply)
                flags = END_STREAM if last and s.trailers is None else 0
                self.out.append(frame(DATA, flags, sid, s.reply[:size]))
                s.reply = s.reply[size:]
                s.window -= size
                self.send_window -= size
                self.queued -= size
                self.server.buffered -= size
            if s.reply:
                if self.send_window <= 0:
                    return
                continue
            if s.trailers:
                self.out.append(frame(HEADERS, END_HEADERS | END_STREAM, sid, s.trailers))
            del self.outgoing[sid]
            del self.streams[sid]

    def _reset(self, sid: int, code: int) -> None:
        """RST_STREAM: forget the stream and give back what it held."""
        s = self.streams.pop(sid, None)
        if s is not None:
            self.outgoing.pop(sid, None)
            self._release(s)
        self.out.append(frame(RST_STREAM, 0, sid, code.to_bytes(4, "big")))

    def _release(self, s: _Stream) -> None:
        self.consumed += s.held
        s.held = 0
        if s.body is not None:
            self._drop_body(s)
        if s.reply:
            self.queued -= len(s.reply)
            self.server.buffered -= len(s.reply)
            s.reply = b""

    def _drop_body(self, s: _Stream) -> None:
        assert s.body is not None
        self.server.buffered -= len(s.body)
        s.body = None

    # -- closing -----------------------------------------------------------------------------

    def _goaway_frame(self, code: int) -> bytes:
        self.goaway_sent = True
        return frame(GOAWAY, 0, 0, struct.pack(">II", self.last_stream, code))

    def _flush(self) -> None:
        if self.out and self.transport is not None and self.closing is None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _close(self) -> None:
        if self.transport is not None and self.closing is None:
            self.closing = self.server.tick
            self.transport.close()

    def _fail(self, code: int) -> None:
        """A connection error (or a timeout): GOAWAY, then close."""
        self.out.append(self._goaway_frame(code))
        self._flush()
        self._close()

    def goaway(self) -> None:
        """Graceful stop: no new calls; close once the calls already started are answered."""
        if self.transport is None or self.closing is not None:
            return
        self.out.append(self._goaway_frame(NO_ERROR))
        self._flush()
        if not self.streams:
            self._close()

    def sweep(self, now: int, ticks: _Ticks) -> None:
        """Enforce the timeouts; `now` and `ticks` count server sweeps."""
        transport = self.transport
        if transport is None:
            return
        if self.closing is not None or self.paused is not None:
            since = self.closing if self.closing is not None else self.paused
            assert since is not None
            if now - since > ticks.write:
                transport.abort()  # the client stopped reading: drop what it would not take
            return
        if not self.preface:
            if now - self.born > ticks.handshake:
                self._close()
            return
        block = self.continuation
        if (self.partial is not None and now - self.partial > ticks.request) or (
                block is not None and now - block.born > ticks.request):
            limited_log("slow", logging.INFO, "closing a connection from %s: a frame or header block took "
                        "over %.0f s", self.peer, self.limits.request_timeout)
            self._fail(NO_ERROR)
            return
        for sid, s in list(self.streams.items()):
            if now - s.born > ticks.request:
                self._reset(sid, CANCEL)
        if not self.streams and now - self.active > ticks.idle:
            self.goaway()
        self._flush()


def connection_cap(limits: Limits, nofile: int) -> int:
    """max_connections, lowered so that fd_headroom descriptors (at least half) stay for the rest of the
    process: 20,000 connections once left none for /healthz, the API watches and the peers."""
    if nofile == resource.RLIM_INFINITY:
        return limits.max_connections
    return min(limits.max_connections, max(nofile - limits.fd_headroom, nofile // 2))


@dataclass(frozen=True)
class _Ticks:
    """The timeouts in sweeps."""

    handshake: int
    request: int
    idle: int
    write: int


class H2GrpcServer:
    """Listens on host:port; `handler(request, peer) -> reply` runs on the event loop thread."""

    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.connections: set[Connection] = set()
        self.idle = asyncio.Event()
        self.buffered = 0  # request bodies and held replies over all connections
        self.tick = 0  # sweeps so far: the clock of the timeouts
        lim = self.limits
        self.interval = min(1.0, lim.handshake_timeout / 4, lim.request_timeout / 4, lim.idle_timeout / 4,
                            lim.write_timeout / 4)
        self.ticks = _Ticks(*(math.ceil(t / self.interval) for t in (
            lim.handshake_timeout, lim.request_timeout, lim.idle_timeout, lim.write_timeout)))
        self.max_connections = connection_cap(lim, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on host:port (no SO_REUSEPORT: no other process may share the port), or on `sock`, a
        bound listening socket handed over by another process."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: Connection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: Connection(self), host, port)
        self._sweeper = loop.call_later(self.interval, self._sweep)
        return self._server.sockets[0].getsockname()[1]

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _sweep(self) -> None:
        self.tick += 1
        for conn in list(self.connections):
            try:
                conn.sweep(self.tick, self.ticks)
            except Exception:
                limited_log("internal", logging.ERROR, "HTTP/2 sweep failed", exc_info=True)
        self._sweeper = asyncio.get_running_loop().call_later(self.interval, self._sweep)

    async def drain(self, seconds: float) -> None:
        """Keep answering until every client has gone or `seconds` passed (`stop` then says GOAWAY)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.05)

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
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._server = None
