"""A-record lookups cheap enough to poll with: what the churn asks CoreDNS hundreds of times a second.

The churn polls every change's name until its answer shows the change (`churn.Churn._time`), from
dozens of threads at once, in the same process that measures where the machine's two cores go: a
poll through dnspython (`dns.message.make_query`, a new socket, `dns.query.udp`, a full message
parse) took about 450 us of CPU, a quarter of a core at the churn's rate. Here each thread keeps one
connected UDP socket, a name's query wire is built once, and the reply is read for the two things the
checks use: the rcode and the A records of the answer section (the question echoed, ID matched).
The burst (`bench.burst`) asks the same way and keeps the rcode (`Lookup.answer`).
"""

from __future__ import annotations

import socket
import struct
import threading

import dns.message

from backend.zone.wire import NXDOMAIN, Malformed, skip_name

TIMEOUT = 2.0  # as `dataset.ask`: a poll with no reply by then is counted apart, not an answer
A, IN = 1, 1
_HEADER = struct.Struct(">HHHHHH")
_RR = struct.Struct(">HHIH")  # type, class, TTL, RDLENGTH


class Lookup:
    """A questions to one server ("ip:port"), one socket per calling thread."""

    def __init__(self, server: str) -> None:
        host, _, port = server.rpartition(":")
        self.address = (host, int(port))
        self._local = threading.local()
        self._wires: dict[str, bytes] = {}  # name -> the query's wire after its ID

    def addresses(self, name: str) -> list[str] | None:
        """The A records CoreDNS answers for `name`, sorted; None for NXDOMAIN (any other rcode with no
        A records, SERVFAIL say, is []). Raises TimeoutError with no reply in TIMEOUT seconds."""
        rcode, found = self.answer(name)
        return None if rcode == NXDOMAIN else found

    def answer(self, name: str) -> tuple[int, list[str]]:
        """The rcode and the sorted A records CoreDNS answers for `name` (the burst tells NODATA and
        SERVFAIL apart). Raises TimeoutError with no reply in TIMEOUT seconds."""
        rest = self._wires.get(name)
        if rest is None:
            rest = self._wires[name] = dns.message.make_query(name, "A").to_wire()[2:]
        sock = self._socket()
        self._local.id = (self._local.id + 1) & 0xFFFF
        qid = self._local.id.to_bytes(2, "big")
        sock.send(qid + rest)
        end = len(rest) + 2  # the header's 12 bytes and the question
        while True:  # a late reply to an earlier poll that timed out is not this one's
            reply = sock.recv(4096)
            if reply[:2] == qid and reply[12:end] == rest[10:]:
                return parse(reply, end)

    def _socket(self) -> socket.socket:
        sock: socket.socket | None = getattr(self._local, "sock", None)
        if sock is None:
            sock = self._local.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(TIMEOUT)
            sock.connect(self.address)
            self._local.id = 0
        return sock


def parse(reply: bytes, answer_at: int) -> tuple[int, list[str]]:
    """The reply's rcode and the A records in its answer section (sorted, as text); `answer_at`: where
    the question it echoes ends. Raises Malformed on bytes that do not parse."""
    if len(reply) < _HEADER.size:
        raise Malformed("short header")
    _qid, flags, _qd, ancount, _ns, _ar = _HEADER.unpack_from(reply)
    rcode = flags & 0xF
    if rcode == NXDOMAIN:
        return rcode, []
    found, pos, n = [], answer_at, len(reply)
    for _ in range(ancount):
        pos = skip_name(reply, pos, n)
        if pos + _RR.size > n:
            raise Malformed("truncated record")
        rtype, rclass, _ttl, length = _RR.unpack_from(reply, pos)
        pos += _RR.size
        if pos + length > n:
            raise Malformed("truncated rdata")
        if rtype == A and rclass == IN and length == 4:
            found.append(socket.inet_ntoa(reply[pos:pos + 4]))
        pos += length
    return rcode, sorted(found)
