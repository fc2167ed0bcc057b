"""Wire-format pieces of the answer path: the request's tail (EDNS0, ECS) and bare replies.

Everything here works on raw bytes with explicit bounds checks, because a request that fails to
parse must become FORMERR, never an exception, and the common request must not pay for a full
message parse.
"""

from __future__ import annotations

import socket
import struct

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
QR, AA, RD_CD = 0x8000, 0x0400, 0x0110
OPCODE_QUERY, OPCODE_NOTIFY = 0, 4
T_OPT, T_ECS = 41, 8
MAX_NAME = 255

_HHIH = struct.Struct(">HHIH")
_HH = struct.Struct(">HH")
_HHBB = struct.Struct(">HBB")


class Malformed(Exception):
    """The request cannot be parsed: the caller answers FORMERR."""


class Edns:
    """The request's OPT record: what the reply's OPT must echo."""

    __slots__ = ("do", "ecs", "version")

    def __init__(self, version: int, do: bool, ecs: tuple[int, int, bytes] | None) -> None:
        self.version = version
        self.do = do
        self.ecs = ecs  # (family, source prefix, address bytes as sent)

    def client(self) -> tuple[str | None, int]:
        """The ECS client address and source prefix, for `Answers.pick`; (None, 0) without ECS."""
        if self.ecs is None or self.ecs[1] == 0:
            return None, 0
        family, source, addr = self.ecs
        if family == 1:
            return socket.inet_ntop(socket.AF_INET, addr.ljust(4, b"\0")), source
        return socket.inet_ntop(socket.AF_INET6, addr.ljust(16, b"\0")), source


def skip_name(req: bytes, pos: int, n: int) -> int:
    """Position after a (possibly compressed) name in a non-question section."""
    start = pos
    while True:
        if pos >= n:
            raise Malformed("name runs past the end")
        ln = req[pos]
        if ln == 0:
            return pos + 1
        if ln >= 0xC0:
            if pos + 2 > n:
                raise Malformed("truncated pointer")
            return pos + 2
        if ln > 63:
            raise Malformed("bad label type")
        pos += ln + 1
        if pos - start > MAX_NAME:
            raise Malformed("name too long")


def parse_tail(req: bytes, pos: int, n: int) -> Edns | None:
    """Walk the answer, authority and additional sections after the question; return the OPT.

    Only the OPT matters to us, but every record is bounds-checked and trailing bytes are refused,
    so a packet either parses completely or is FORMERR.
    """
    an, ns, ar = struct.unpack_from(">HHH", req, 6)
    edns: Edns | None = None
    for idx in range(an + ns + ar):
        owner = pos
        pos = skip_name(req, pos, n)
        if pos + 10 > n:
            raise Malformed("truncated record")
        rtype, _rclass, ttl, rdlen = _HHIH.unpack_from(req, pos)
        rdata = pos + 10
        pos = rdata + rdlen
        if pos > n:
            raise Malformed("truncated rdata")
        if rtype == T_OPT:
            if idx < an + ns or edns is not None or req[owner] != 0:
                raise Malformed("misplaced or repeated OPT")
            edns = _parse_opt(req, ttl, rdata, pos)
    if pos != n:
        raise Malformed("trailing bytes")
    return edns


def _parse_opt(req: bytes, ttl: int, pos: int, end: int) -> Edns:
    ecs: tuple[int, int, bytes] | None = None
    while pos < end:
        if pos + 4 > end:
            raise Malformed("truncated EDNS option")
        code, olen = _HH.unpack_from(req, pos)
        pos += 4
        if pos + olen > end:
            raise Malformed("EDNS option runs past OPT")
        if code == T_ECS:
            if ecs is not None:
                raise Malformed("repeated client-subnet option")
            ecs = _parse_ecs(req[pos:pos + olen])
        pos += olen
    return Edns((ttl >> 16) & 0xFF, bool(ttl & 0x8000), ecs)


def _parse_ecs(opt: bytes) -> tuple[int, int, bytes]:
    """RFC 7871 section 7.1.1: a malformed client-subnet option is FORMERR."""
    if len(opt) < 4:
        raise Malformed("short client-subnet option")
    family, source, _scope = _HHBB.unpack_from(opt)
    addr = opt[4:]
    bits = {1: 32, 2: 128}.get(family)
    if bits is None or source > bits or len(addr) != (source + 7) // 8:
        raise Malformed("bad client-subnet family, prefix or address length")
    if source % 8 and addr[-1] & (0xFF >> (source % 8)):
        raise Malformed("client-subnet address bits beyond the source prefix")
    return family, source, addr


def opt_record(payload: int, edns: Edns, ext_rcode: int = 0, scope: int = 0) -> bytes:
    """Our OPT: our payload size, version 0, DO copied (RFC 3225), ECS echoed with `scope`."""
    options = b""
    if edns.ecs is not None:
        family, source, addr = edns.ecs
        body = _HHBB.pack(family, source, scope) + addr
        options = _HH.pack(T_ECS, len(body)) + body
    ttl = (ext_rcode << 24) | (0x8000 if edns.do else 0)
    return b"\x00" + _HHIH.pack(T_OPT, payload, ttl, len(options)) + options


def bare_reply(req: bytes, q_end: int, rcode: int, aa: bool = False, opt: bytes = b"") -> bytes:
    """A reply without records: the request's ID, opcode, RD and CD, and its question if `q_end`."""
    if len(req) >= 4:
        flags = QR | (req[2] << 8 | req[3]) & (0x7800 | RD_CD) | (AA if aa else 0) | (rcode & 0xF)
    else:
        flags = QR | (rcode & 0xF)
    head = req[:2].ljust(2, b"\0") + flags.to_bytes(2, "big")
    counts = struct.pack(">HHHH", 1 if q_end else 0, 0, 0, 1 if opt else 0)
    return head + counts + (req[12:q_end] if q_end else b"") + opt
