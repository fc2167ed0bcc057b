"""The frozen table and the per-query path: a DNS query in wire form -> the precompiled reply.

A query costs a header and question parse, one dict lookup on the lowercased wire name, the ID and
question copied from the request and a precompiled tail appended. Names in the tail point at the
question (offset 12) with compression pointers, so the same bytes fit every letter case of the
query. GSLB names hold one tail per `Answers` variant and `Answers.pick` chooses per query.

`Table.lookup` runs the same path for `explain`, and also says which name's records made the reply.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from backend.config import Settings
from backend.model import ObjectRef
from backend.zone import notify, wire
from backend.zone.encode import name_text, name_wire
from backend.zone.nodes import (
    OTHER,
    REFERRAL,
    T_AXFR,
    T_IXFR,
    T_MAILA,
    T_MAILB,
    T_OPT,
    Answer,
    Index,
    Node,
    Nodes,
    Zone,
    closest,
    precompile,
    recipe,
    referral,
    served_zones,
)
from backend.zone.notify import NotifyCallback
from backend.zone.wire import (
    BADVERS,
    FORMERR,
    MAX_NAME,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPCODE_NOTIFY,
    OPCODE_QUERY,
    QR,
    RD_CD,
    REFUSED,
    SERVFAIL,
    Malformed,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What `Table.lookup` found: the reply served to that query, and the name whose records made it."""

    reply: bytes
    # The query name (also when it is an alias or an empty non-terminal), the wildcard that matched
    # (RFC 4592), the delegation that refers; None when no name answers (NXDOMAIN, REFUSED, SERVFAIL).
    owner: str | None


class Table:
    """One compiled model, never changed once built (backend.zone.build makes it; what it answers from
    is never written again, only its `index` is handed to the next patch). `answer()` is the per-query
    path; it never raises."""

    __slots__ = ("_base", "_nodes", "_opt", "_opt_do", "_payload", "_recent", "_zones", "conflicts", "index",
                 "ready", "records", "serial")

    def __init__(self, settings: Settings, serial: int, zones: dict[bytes, Zone] | None = None,
                 nodes: Nodes | None = None, *, ready: bool = True,
                 conflicts: tuple[tuple[ObjectRef, str], ...] = (), records: int = 0,
                 index: Index | None = None) -> None:
        self.serial = serial
        self.ready = ready
        self.conflicts = conflicts  # merge losers and unparsable targets, for Kubernetes Events
        self.records = records  # resource records held, for the gauge
        self.index = index  # the builder's, for the next compile (which takes it: see patch_table)
        self._payload = settings.edns_payload
        self._opt = wire.opt_record(self._payload, wire.Edns(0, False, None))
        self._opt_do = wire.opt_record(self._payload, wire.Edns(0, True, None))
        self._zones = served_zones(settings) if zones is None else zones
        self._nodes = Nodes() if nodes is None else nodes
        self._base, self._recent = self._nodes.base, self._nodes.recent  # the per-query path reads these

    @classmethod
    def not_ready(cls, settings: Settings) -> Table:
        """Before the first full sync: SERVFAIL for every name in the zones, so resolvers retry
        instead of caching an NXDOMAIN that is only our ignorance."""
        return cls(settings, 0, ready=False)

    @property
    def zones(self) -> list[str]:
        return [z.name for z in self._zones.values()]

    @property
    def payload(self) -> int:
        return self._payload

    def names(self) -> set[bytes]:
        """Every name held, empty non-terminals included, in wire form (tests compare tables by it)."""
        return self._nodes.keys()

    def answer(self, request: bytes, on_notify: NotifyCallback | None = None, peer: str = "") -> bytes:
        return self.resolve(request, on_notify, peer)[0]

    def resolve(self, request: bytes, on_notify: NotifyCallback | None = None,
                peer: str = "") -> tuple[bytes, str, int]:
        """The reply, the zone it came from ("" if none) and the qtype, for metrics."""
        try:
            return self._resolve(request, on_notify, peer)
        except Exception:  # a bug must cost one reply, not the server
            log.exception("answer path failed on %r", request[:64])
            return wire.bare_reply(request, 0, SERVFAIL), "", 0

    def lookup(self, name: str, qtype: int) -> Lookup:
        """What a query for (`name`, `qtype`) is served, by the path `answer` runs, and the name whose
        records made the reply: for `explain`, which must never disagree with the answer."""
        owner: list[bytes] = []
        header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)  # ID 0, RD, one question
        request = header + name_wire(name) + struct.pack(">HH", qtype, 1)
        reply = self._resolve(request, None, "", owner)[0]
        return Lookup(reply, name_text(owner[0]) if owner else None)

    def _resolve(self, req: bytes, on_notify: NotifyCallback | None, peer: str,
                 owner: list[bytes] | None = None) -> tuple[bytes, str, int]:
        n = len(req)
        if n < 12:
            return wire.bare_reply(req, 0, FORMERR), "", 0
        flags = req[2] << 8 | req[3]
        if flags & QR or req[4] or req[5] != 1:
            return wire.bare_reply(req, 0, FORMERR), "", 0
        i = 12
        while True:
            if i >= n:
                return wire.bare_reply(req, 0, FORMERR), "", 0
            ln = req[i]
            if ln == 0:
                break
            if ln > 63:  # compression pointers and extended labels have no place in a question
                return wire.bare_reply(req, 0, FORMERR), "", 0
            i += ln + 1
            if i - 12 >= MAX_NAME:
                return wire.bare_reply(req, 0, FORMERR), "", 0
        qend = i + 1
        q_end = qend + 4
        if q_end > n:
            return wire.bare_reply(req, 0, FORMERR), "", 0
        qtype = req[qend] << 8 | req[qend + 1]
        if q_end == n and not any(req[6:12]):
            edns = None
        else:
            try:
                edns = wire.parse_tail(req, q_end, n)
            except Malformed:
                return wire.bare_reply(req, q_end, FORMERR), "", qtype
        opcode = (flags >> 11) & 0xF
        if opcode != OPCODE_QUERY and opcode != OPCODE_NOTIFY:
            return self._bare(req, q_end, NOTIMP, edns), "", qtype
        if edns is not None and edns.version != 0:
            opt = wire.opt_record(self._payload, edns, BADVERS >> 4)
            return wire.bare_reply(req, q_end, BADVERS & 0xF, opt=opt), "", qtype
        if opcode == OPCODE_NOTIFY:
            zone = self._zone_for(req[12:qend].lower())
            opt = wire.opt_record(self._payload, edns) if edns is not None else b""
            return notify.acknowledge(req, q_end, zone and zone.name, opt, on_notify, peer), "", qtype
        qclass = req[qend + 2] << 8 | req[qend + 3]
        if qtype in (T_OPT, T_MAILA, T_MAILB) or qclass not in (1, 255):
            rcode = FORMERR if qtype == T_OPT else NOTIMP if qtype in (T_MAILA, T_MAILB) else REFUSED
            return self._bare(req, q_end, rcode, edns), "", qtype

        key = req[12:qend].lower()
        qlen = qend - 12
        recent = self._recent  # `Nodes.get` inlined: one dict test more than a plain dict, no call
        node = recent[key] if key in recent else self._base.get(key)
        if node is not None:
            zone = self._zones[node.apex]
            ans = node.answers.get(qtype) or node.default or zone.negative(NOERROR, qlen)
            if owner is not None:
                owner.append(node.cut.key if node.cut is not None else key)
        else:
            ce, pos = closest(self._nodes, key)
            if ce is None:
                if not self.ready and (zone := self._zone_for(key)) is not None:
                    return self._bare(req, q_end, SERVFAIL, edns), zone.name, qtype
                return self._bare(req, q_end, REFUSED, edns), "", qtype
            zone = self._zones[ce.apex]
            ans = self._miss(ce, key, pos, qtype, qlen, owner)
        if qtype in (T_AXFR, T_IXFR):
            return self._bare(req, q_end, REFUSED, edns, aa=False), zone.name, qtype

        variants = ans.variants
        scope = 0
        if ans.pick is None:
            variant = variants[0]
        else:
            ip, prefix = edns.client() if edns is not None else (None, 0)
            index, scope = ans.pick(ip, prefix)
            variant = variants[index]
        vflags, counts, counts_opt, body = variant
        head = req[:2] + (vflags | flags & RD_CD).to_bytes(2, "big")
        if edns is None:
            return head + counts + req[12:q_end] + body, zone.name, qtype
        if edns.ecs is None:
            opt = self._opt_do if edns.do else self._opt
        else:
            opt = wire.opt_record(self._payload, edns, 0, scope)
        return head + counts_opt + req[12:q_end] + body + opt, zone.name, qtype

    def _bare(self, req: bytes, q_end: int, rcode: int, edns: wire.Edns | None, aa: bool = False) -> bytes:
        opt = wire.opt_record(self._payload, edns) if edns is not None else b""
        return wire.bare_reply(req, q_end, rcode, aa, opt)

    def _zone_for(self, key: bytes) -> Zone | None:
        pos = 0
        while key[pos]:
            zone = self._zones.get(key[pos:])
            if zone is not None:
                return zone
            pos += key[pos] + 1
        return None

    def _miss(self, ce: Node, key: bytes, pos: int, qtype: int, qlen: int,
              owner: list[bytes] | None) -> Answer:
        """A name we do not hold: a referral below a delegation, a wildcard (RFC 4592), or NXDOMAIN.
        `owner`, when given, gets the name whose records answer (not for NXDOMAIN)."""
        if ce.cut is not None:
            if owner is not None:
                owner.append(ce.cut.key)
            return self._lazy(ce, REFERRAL, qlen, ce.key)
        wkey = b"\x01*" + key[pos:]
        recent = self._recent
        wild = recent[wkey] if wkey in recent else self._base.get(wkey)
        if wild is None:
            return self._zones[ce.apex].negative(NXDOMAIN, qlen)
        if owner is not None:
            owner.append(wild.key)
        kind = qtype if qtype in wild.answers else OTHER
        if kind == OTHER and wild.default is None:
            return self._zones[ce.apex].negative(NOERROR, qlen)
        return self._lazy(wild, kind, qlen, ce.key)

    def _lazy(self, node: Node, kind: int, qlen: int, anchor: bytes) -> Answer:
        ans = node.lazy.get((kind, qlen))
        if ans is None:
            if kind == REFERRAL and node.cut:
                how = referral(self._nodes, node.cut)
            else:
                how = recipe(self._nodes, self._zones, node, kind)
            ans = node.lazy[(kind, qlen)] = precompile(how, anchor, qlen)
        return ans

