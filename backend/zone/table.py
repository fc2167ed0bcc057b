"""The answer table: every reply precompiled to wire bytes when the model changes.

A query costs a header and question parse, one dict lookup on the lowercased wire name, the ID and
question copied from the request and a precompiled tail appended. Names in the tail point at the
question (offset 12) with compression pointers, so the same bytes fit every letter case of the
query. GSLB names hold one tail per `Answers` variant and `Answers.pick` chooses per query.

Answers that depend on the query's name length (wildcards, NXDOMAIN under a zone, referrals for
names below a delegation) are compiled on first use per length and kept: at most 255 per node.
"""

from __future__ import annotations

import gc
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import dns.exception
import dns.rdatatype

from backend.config import Settings
from backend.gslb.strategy import GeoLookup, answers
from backend.model import Endpoint, ObjectRef, normalize_name
from backend.zone import wire
from backend.zone.encode import (
    BadData,
    Rdata,
    is_subdomain,
    name_wire,
    parent,
    put_name,
    put_rdata,
    rdata,
    seed,
)
from backend.zone.merge import Conflict, Merged, merge, merge_named, zone_of
from backend.zone.wire import (
    AA,
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

T_A, T_NS, T_CNAME, T_SOA, T_AAAA = 1, 2, 5, 6, 28
T_OPT, T_IXFR, T_AXFR, T_MAILB, T_MAILA, T_ANY = 41, 251, 252, 253, 254, 255
_OTHER = -1  # answer key: any qtype the node has nothing specific for
_REFERRAL = -2
MAX_CHAIN = 8  # CNAME hops followed inside our zones
MAX_MESSAGE = 65535
MAX_OPT = 11 + 4 + 4 + 16  # our OPT with an IPv6 client-subnet option
TC = 0x0200

NotifyCallback = Callable[[str, str], None]
Pick = Callable[[str | None, int], tuple[int, int]]
# One precompiled reply tail: header flags, counts without / with our OPT, the sections' bytes.
Variant = tuple[int, bytes, bytes, bytes]


SERIAL_PERIOD = 3600  # the SOA serial moves once an hour


def soa_serial(previous: int = 0, now: float | None = None) -> int:
    """The SOA serial: the start of the current hour in unix seconds, as k8gb's coredns-crd-plugin
    computes it. Every cluster and replica serving a zone then presents one serial (clocks in sync),
    which is what RFC 1035 and checkers (Zonemaster) expect of one zone on several servers; each
    cluster's answers differ by design and nothing transfers the zone (AXFR is refused), so the
    serial versions nothing. Never below `previous`: a clock stepping back does not go back."""
    now = time.time() if now is None else now
    return max(previous, int(now) // SERIAL_PERIOD * SERIAL_PERIOD)


def next_serial_in(now: float | None = None) -> float:
    """Seconds until `soa_serial` moves (a compile is due then, even without a change)."""
    now = time.time() if now is None else now
    return SERIAL_PERIOD - now % SERIAL_PERIOD


@dataclass(slots=True)
class _RRset:
    rdtype: int
    ttl: int
    variants: list[list[Rdata]]
    pick: Pick | None  # set when there is more than one variant


Owner = bytes | None  # a name in wire form; None is the query name (a pointer to offset 12)


@dataclass(slots=True)
class _Recipe:
    """What one reply holds, before it is written to wire bytes."""

    rcode: int = NOERROR
    aa: bool = True
    answer: list[tuple[Owner, _RRset]] = field(default_factory=list)
    authority: list[tuple[Owner, _RRset]] = field(default_factory=list)
    additional: list[tuple[Owner, _RRset]] = field(default_factory=list)


class _Answer:
    __slots__ = ("pick", "variants")

    def __init__(self, variants: tuple[Variant, ...], pick: Pick | None) -> None:
        self.variants = variants
        self.pick = pick


class _Zone:
    __slots__ = ("apex", "name", "negatives", "soa")

    def __init__(self, name: str) -> None:
        self.name = name
        self.apex = name_wire(name)
        self.soa: _RRset | None = None
        self.negatives: dict[tuple[int, int], _Answer] = {}

    def negative(self, rcode: int, qlen: int) -> _Answer:
        """NXDOMAIN or NODATA with our SOA in authority, for a query name `qlen` bytes long."""
        ans = self.negatives.get((rcode, qlen))
        if ans is None:
            authority: list[tuple[Owner, _RRset]] = [(self.apex, self.soa)] if self.soa is not None else []
            recipe = _Recipe(rcode, authority=authority)
            ans = self.negatives[(rcode, qlen)] = _compile(recipe, self.apex, qlen)
        return ans


class _Node:
    __slots__ = ("answers", "any_type", "apex", "cut", "default", "key", "lazy", "rrsets")

    def __init__(self, key: bytes, zone: _Zone) -> None:
        self.key = key  # lowercase wire name
        self.apex = zone.apex  # not the _Zone: a node outlives its table's zones (and their SOA serial)
        self.rrsets: dict[int, _RRset] = {}
        self.cut: _Node | None = None  # the delegation this node is at or below
        self.any_type = 0  # the RRset an ANY query gets (RFC 8482), 0: none
        self.answers: dict[int, _Answer] = {}  # by qtype, for exactly this name
        self.default: _Answer | None = None  # other qtypes; None: NODATA
        self.lazy: dict[tuple[int, int], _Answer] = {}  # (qtype key, qname length) -> answer


def _compile(recipe: _Recipe, anchor: bytes, qlen: int) -> _Answer:
    """Write a recipe for a query name of `qlen` bytes that ends in `anchor`.

    A reply that would not fit a DNS message (thousands of pod IPs) keeps the records that fit
    and sets TC, so it is still a valid message.
    """
    pick = next((rr.pick for _, rr in recipe.answer if rr.pick is not None), None)
    count = max(len(rr.variants) for _, rr in recipe.answer if rr.pick is pick) if pick else 1
    base = 16 + qlen
    limit = MAX_MESSAGE - base - MAX_OPT
    variants: list[Variant] = []
    for v in range(count):
        flags = QR | (AA if recipe.aa else 0) | recipe.rcode
        out = bytearray()
        compress = seed(anchor, qlen)
        counts = [0, 0, 0]
        records = [(i, owner, rr, rd)
                   for i, section in enumerate((recipe.answer, recipe.authority, recipe.additional))
                   for owner, rr in section
                   for rd in (rr.variants[v] if pick is not None and rr.pick is pick else rr.variants[0])]
        for i, owner, rr, rd in records:
            mark = len(out)
            if owner is None:
                out += b"\xc0\x0c"
            else:
                put_name(out, base, compress, owner)
            out += struct.pack(">HHI", rr.rdtype, 1, rr.ttl)
            put_rdata(out, base, compress, rd)
            if len(out) > limit:
                del out[mark:]
                flags |= TC
                break
            counts[i] += 1
        an, ns, ar = counts
        variants.append((flags, struct.pack(">HHHH", 1, an, ns, ar), struct.pack(">HHHH", 1, an, ns, ar + 1),
                         bytes(out)))
    return _Answer(tuple(variants), pick)


class Table:
    """One immutable compiled model. `answer()` is the per-query path; it never raises."""

    def __init__(self, settings: Settings, serial: int, ready: bool = True) -> None:
        self.serial = serial
        self.ready = ready
        self.conflicts: list[tuple[ObjectRef, str]] = []
        self.records = 0  # resource records held, for the gauge
        self._payload = settings.edns_payload
        self._opt = wire.opt_record(self._payload, wire.Edns(0, False, None))
        self._opt_do = wire.opt_record(self._payload, wire.Edns(0, True, None))
        self._zones: dict[bytes, _Zone] = {}
        for name in settings.all_zones:
            zone = _Zone(name)
            self._zones[zone.apex] = zone
        self._nodes: dict[bytes, _Node] = {}
        self._geo: GeoLookup | None = None
        # name -> (merged input, its node, records, rejections): lets the next compile reuse the work
        self._inputs: dict[str, tuple[dict[str, Merged], _Node, int, list[Conflict]]] = {}
        self._conflicts: dict[str, list[Conflict]] = {}  # by name: merge conflicts (and a bad name's)
        self._rejected: dict[str, list[Conflict]] = {}  # by name: records that would not encode
        self._held: set[bytes] = set()  # nodes of names with input (the others are empty non-terminals)
        self._children: dict[bytes, int] = {}  # node -> how many nodes sit directly below it
        self._present: set[int] = {T_ANY}  # every type some node holds (a patch only ever adds)
        self._cnames: set[bytes] = set()  # CNAME nodes outside delegations: their answers read other nodes

    @classmethod
    def not_ready(cls, settings: Settings) -> Table:
        """Before the first full sync: SERVFAIL for every name in the zones, so resolvers retry
        instead of caching an NXDOMAIN that is only our ignorance."""
        return cls(settings, 0, ready=False)

    @property
    def zones(self) -> list[str]:
        return [z.name for z in self._zones.values()]

    # -- per query ---------------------------------------------------------------------------

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

    def _resolve(self, req: bytes, on_notify: NotifyCallback | None, peer: str) -> tuple[bytes, str, int]:
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
            return self._notify(req, q_end, edns, on_notify, peer), "", qtype
        qclass = req[qend + 2] << 8 | req[qend + 3]
        if qtype in (T_OPT, T_MAILA, T_MAILB) or qclass not in (1, 255):
            rcode = FORMERR if qtype == T_OPT else NOTIMP if qtype in (T_MAILA, T_MAILB) else REFUSED
            return self._bare(req, q_end, rcode, edns), "", qtype

        key = req[12:qend].lower()
        qlen = qend - 12
        node = self._nodes.get(key)
        if node is not None:
            zone = self._zones[node.apex]
            ans = node.answers.get(qtype) or node.default or zone.negative(NOERROR, qlen)
        else:
            ce, pos = self._closest(key)
            if ce is None:
                if not self.ready and (zone := self._zone_for(key)) is not None:
                    return self._bare(req, q_end, SERVFAIL, edns), zone.name, qtype
                return self._bare(req, q_end, REFUSED, edns), "", qtype
            zone = self._zones[ce.apex]
            ans = self._miss(ce, key, pos, qtype, qlen)
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

    def _notify(self, req: bytes, q_end: int, edns: wire.Edns | None, on_notify: NotifyCallback | None,
                peer: str) -> bytes:
        """NOTIFY for a served zone is acknowledged and handed to the callback (a peer's change)."""
        zone = self._zone_for(req[12:q_end - 4].lower())
        if zone is None:
            return self._bare(req, q_end, REFUSED, edns)
        if on_notify is not None:
            try:
                on_notify(zone.name, peer)
            except Exception:
                log.exception("NOTIFY callback failed for %s", zone.name)
        return self._bare(req, q_end, NOERROR, edns, aa=True)

    def _zone_for(self, key: bytes) -> _Zone | None:
        pos = 0
        while key[pos]:
            zone = self._zones.get(key[pos:])
            if zone is not None:
                return zone
            pos += key[pos] + 1
        return None

    def _closest(self, key: bytes) -> tuple[_Node | None, int]:
        """The closest encloser of a name we do not hold, and its offset in `key`."""
        pos = 0
        nodes = self._nodes
        while key[pos]:
            pos += key[pos] + 1
            node = nodes.get(key[pos:])
            if node is not None:
                return node, pos
        return None, 0

    def _miss(self, ce: _Node, key: bytes, pos: int, qtype: int, qlen: int) -> _Answer:
        """A name we do not hold: a referral below a delegation, a wildcard (RFC 4592), or NXDOMAIN."""
        if ce.cut is not None:
            return self._lazy(ce, _REFERRAL, qlen, ce.key)
        wild = self._nodes.get(b"\x01*" + key[pos:])
        if wild is None:
            return self._zones[ce.apex].negative(NXDOMAIN, qlen)
        kind = qtype if qtype in wild.answers else _OTHER
        if kind == _OTHER and wild.default is None:
            return self._zones[ce.apex].negative(NOERROR, qlen)
        return self._lazy(wild, kind, qlen, ce.key)

    def _lazy(self, node: _Node, kind: int, qlen: int, anchor: bytes) -> _Answer:
        ans = node.lazy.get((kind, qlen))
        if ans is None:
            recipe = self._referral(node.cut) if kind == _REFERRAL and node.cut else self._recipe(node, kind)
            ans = node.lazy[(kind, qlen)] = _compile(recipe, anchor, qlen)
        return ans

    # -- compile time ------------------------------------------------------------------------

    def _recipe(self, node: _Node, qtype: int) -> _Recipe:
        """The reply for `qtype` at `node`, following CNAMEs while they stay inside our zones."""
        if node.cut is not None:
            return self._referral(node.cut)
        answer: list[tuple[Owner, _RRset]] = []
        owner: Owner = None
        cur = node
        seen = {id(node)}
        while True:
            want = cur.any_type if qtype == T_ANY else qtype
            rr = cur.rrsets.get(want)
            if rr is not None:
                answer.append((owner, rr))
                return _Recipe(answer=answer)
            cname = cur.rrsets.get(T_CNAME)
            if cname is None:
                return _Recipe(answer=answer, authority=self._soa(self._zones[cur.apex]))
            answer.append((owner, cname))
            owner = _names(cname.variants[0][0])[0]
            nxt = self._find(owner)
            if isinstance(nxt, _Zone):
                return _Recipe(NXDOMAIN, answer=answer, authority=self._soa(nxt))
            if nxt is None or id(nxt) in seen or len(answer) >= MAX_CHAIN:
                return _Recipe(answer=answer)
            seen.add(id(nxt))
            cur = nxt

    @staticmethod
    def _soa(zone: _Zone) -> list[tuple[Owner, _RRset]]:
        return [(zone.apex, zone.soa)] if zone.soa is not None else []

    def _referral(self, cut: _Node) -> _Recipe:
        """Below a delegation (an NS RRset under the apex) we are not authoritative: refer."""
        ns = cut.rrsets[T_NS]
        glue: list[tuple[Owner, _RRset]] = []
        for rd in ns.variants[0]:
            target = _names(rd)[0]
            host = self._nodes.get(target) if is_subdomain(target, cut.key) else None
            if host is not None:
                glue += [(target, host.rrsets[t]) for t in (T_A, T_AAAA) if t in host.rrsets]
        return _Recipe(aa=False, authority=[(cut.key, ns)], additional=glue)

    def _find(self, key: bytes) -> _Node | _Zone | None:
        """Where a CNAME target leads: a node (exact or wildcard), a zone where it is NXDOMAIN, or
        None when it leaves our zones or enters a delegation."""
        node = self._nodes.get(key)
        if node is None:
            ce, pos = self._closest(key)
            if ce is None:
                return None
            node = None if ce.cut else self._nodes.get(b"\x01*" + key[pos:])
            if node is None:
                return None if ce.cut else self._zones[ce.apex]
        return None if node.cut else node

    def _add(self, name: str, zone: _Zone, types: dict[str, Merged], previous: Table | None,
             conflicts: list[Conflict]) -> None:
        old = previous._inputs.get(name) if previous is not None else None
        if old is not None and old[0] == types:
            _, old_node, records, rejects = old
            node = self._node(old_node.key, zone)
            node.rrsets = old_node.rrsets
            if old_node.cut is None and T_CNAME not in old_node.rrsets:
                node.answers = old_node.answers  # kept only if _finish finds the node still plain
        else:
            try:
                node = self._node(name_wire(name), zone)
            except BadData as e:
                self._conflicts[name] = conflicts + _rejects(types, str(e))
                return
            records, rejects = self._parse(node, name, types)
        self.records += records
        self._held.add(node.key)
        if conflicts:
            self._conflicts[name] = conflicts
        if rejects:
            self._rejected[name] = rejects
        self._inputs[name] = (types, node, records, rejects)

    def _parse(self, node: _Node, name: str, types: dict[str, Merged]) -> tuple[int, list[Conflict]]:
        """Encode each RRset of `node`: the number of records kept, and what was rejected."""
        records = 0
        rejects: list[Conflict] = []
        for rtype, merged in types.items():
            try:
                rdtype = dns.rdatatype.from_text(rtype)
            except dns.exception.DNSException:
                rejects += _rejects({rtype: merged}, f"{name}: unknown record type {rtype}")
                continue
            parsed: dict[str, Rdata] = {}
            for t in merged.targets:
                try:
                    parsed[t.value] = rdata(rdtype, t.value)
                except BadData as e:
                    rejects += _rejects({rtype: merged}, f"{name} {rtype}: {e}; skipped")
            targets = tuple(t for t in merged.targets if t.value in parsed)
            if not targets:
                continue
            p = answers(merged.strategy, targets, self._geo)
            variants = [[parsed[t.value] for t in v] for v in p.variants if v]
            node.rrsets[rdtype] = _RRset(rdtype, merged.ttl, variants, p.pick if len(variants) > 1 else None)
            records += len(targets)
        return records, rejects

    def _node(self, key: bytes, zone: _Zone) -> _Node:
        """The node for `key`, creating it and its empty ancestors up to the apex (RFC 4592 ENTs)."""
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = _Node(key, zone)
            if key != zone.apex:
                up = parent(key)
                self._node(up, zone)
                self._children[up] = self._children.get(up, 0) + 1
        return node

    def _drop(self, key: bytes) -> None:
        """A name lost its input: it stays as an empty non-terminal while names sit below it, else it
        goes, and so do the empty non-terminals above it that it alone kept."""
        self._held.discard(key)
        apex = self._nodes[key].apex
        if key == apex or self._children.get(key):
            self._nodes[key] = _Node(key, self._zones[apex])
            return
        while key != apex and not self._children.get(key) and key not in self._held:
            del self._nodes[key]
            self._children.pop(key, None)
            key = parent(key)
            self._children[key] -= 1

    def _finish(self) -> None:
        for zone in self._zones.values():
            zone.soa = self._node(zone.apex, zone).rrsets.get(T_SOA)
        for node in self._nodes.values():
            types = sorted(node.rrsets)
            node.any_type = T_CNAME if T_CNAME in node.rrsets else (types[0] if types else 0)
            cur: _Node | None = node
            while cur is not None and cur.key != cur.apex:
                if T_NS in cur.rrsets:
                    node.cut = cur
                cur = self._nodes.get(parent(cur.key))
        self._present = {t for node in self._nodes.values() for t in node.rrsets} | {T_ANY}
        for node in self._nodes.values():
            if node.cut is not None:
                node.answers = {}
                node.default = _compile(self._referral(node.cut), node.key, len(node.key))
            elif T_CNAME in node.rrsets:
                self._cnames.add(node.key)
                self._plain(node)
            elif node.rrsets and not node.answers:
                self._plain(node)
        self._list_conflicts()

    def _list_conflicts(self) -> None:
        found = (self._conflicts, self._rejected)
        self.conflicts = [c for by_name in found for cs in by_name.values() for c in cs]

    def _patched(self, serial: int, changed: dict[str, tuple[dict[str, Merged], list[Conflict]]],
                 settings: Settings) -> Table | None:
        """This table with the names in `changed` (merged records, merge conflicts) redone and a new
        serial, sharing every other node. New and deleted names, CNAMEs, wildcards and conflicts
        are patched; None when a change touches a delegation (an NS below an apex, or a name at or
        below one: referrals and glue read many nodes), which the caller answers with a full compile."""
        if not self.ready:
            return None
        apexes = {zone.name for zone in self._zones.values()}
        keys: dict[str, bytes | str] = {}  # name -> its wire form, or why it has none
        for name, (types, _) in changed.items():
            old = self._inputs.get(name)
            if name not in apexes and ("NS" in types or (old is not None and "NS" in old[0])):
                return None
            try:
                key = keys[name] = name_wire(name)
            except BadData as e:
                keys[name] = str(e)
                continue
            node = self._nodes.get(key)
            if node is None:
                node, _ = self._closest(key)
            if node is not None and node.cut is not None:
                return None
        table = Table(settings, serial)
        table._geo = self._geo
        table._nodes = dict(self._nodes)
        table._inputs = dict(self._inputs)
        table._conflicts = dict(self._conflicts)
        table._rejected = dict(self._rejected)
        table._held = set(self._held)
        table._children = dict(self._children)
        table._present = set(self._present)
        table._cnames = set(self._cnames)
        table.records = self.records
        zone_records, _ = merge(settings, (), serial)
        changed = dict(changed)
        for zone in table._zones.values():  # every apex: its SOA carries the new serial
            kept = (self._inputs[zone.name][0], self._conflicts.get(zone.name, []))
            types, conflicts = changed.get(zone.name, kept)
            changed[zone.name] = ({**types, "SOA": zone_records[zone.name]["SOA"]}, conflicts)
            keys[zone.name] = zone.apex
        zones = {z.name: z for z in table._zones.values()}
        for name, (types, conflicts) in changed.items():
            old = table._inputs.pop(name, None)
            if old is not None:
                table.records -= old[2]
            table._conflicts.pop(name, None)
            table._rejected.pop(name, None)
            key = keys[name]
            if isinstance(key, str):  # a name that cannot be written: only its rejection is kept
                table._conflicts[name] = conflicts + _rejects(types, key)
                continue
            table._cnames.discard(key)
            if not types:
                if old is not None:
                    table._drop(key)
                if conflicts:
                    table._conflicts[name] = conflicts
                continue
            zone = zones[zone_of(name, zones) or ""]
            table._node(key, zone)
            node = table._nodes[key] = _Node(key, zone)
            table._held.add(key)
            records, rejects = table._parse(node, name, types)
            table.records += records
            table._inputs[name] = (types, node, records, rejects)
            if conflicts:
                table._conflicts[name] = conflicts
            if rejects:
                table._rejected[name] = rejects
            table._present.update(node.rrsets)
            if T_CNAME in node.rrsets:
                table._cnames.add(key)
            else:
                table._plain(node)
        for zone in table._zones.values():
            zone.soa = table._nodes[zone.apex].rrsets.get(T_SOA)
        for key in table._cnames:  # their chains may end in a changed name or a negative with our SOA
            old_node = table._nodes[key]
            node = table._nodes[key] = _Node(key, table._zones[old_node.apex])
            node.rrsets, node.cut = old_node.rrsets, old_node.cut
            table._plain(node)
        table._list_conflicts()
        return table

    def _plain(self, node: _Node) -> None:
        """any_type and the precompiled answers of a node that is not below a delegation."""
        types = sorted(node.rrsets)
        node.any_type = T_CNAME if T_CNAME in node.rrsets else (types[0] if types else 0)
        qlen = len(node.key)
        if T_CNAME in node.rrsets:
            node.answers = {t: _compile(self._recipe(node, t), node.key, qlen) for t in self._present}
            node.default = _compile(self._recipe(node, 0), node.key, qlen)
        elif node.rrsets:
            node.answers = {t: _compile(self._recipe(node, t), node.key, qlen) for t in node.rrsets}
            node.answers[T_ANY] = node.answers[node.any_type]


def _rejects(types: dict[str, Merged], why: str) -> list[Conflict]:
    return [(ref, why) for merged in types.values() for ref in merged.sources]


def _names(rd: Rdata) -> tuple[bytes, ...]:
    """The names inside a CNAME/NS/MX/SOA rdata."""
    return rd[1] if isinstance(rd, tuple) else ()


def compile_table(settings: Settings, endpoints: Iterable[Endpoint], serial: int,
                  geo: GeoLookup | None = None, previous: Table | None = None) -> Table:
    """Compile the model into a Table. Names outside the served zones are dropped silently (the
    sources report them); conflicts and unparsable targets are listed in `Table.conflicts`.

    With `previous` (the table this one replaces), names whose merged records did not change reuse
    its encoded RRsets, answer variants, so a change costs little more than the merge.
    """
    table = Table(settings, serial)
    table._geo = geo
    if previous is not None and (previous._geo is not geo or previous._payload != table._payload):
        previous = None
    # Compiling allocates many long-lived objects; the collector's full passes over a big heap
    # would double the time, and there is no garbage to find until the old table is dropped.
    collecting = gc.isenabled()
    gc.disable()
    try:
        names, conflicts = merge_named(settings, endpoints, serial)
        zones = {z.name: z for z in table._zones.values()}
        for name, types in names.items():
            table._add(name, zones[zone_of(name, zones) or ""], types, previous, conflicts.pop(name, []))
        table._conflicts.update(conflicts)  # names with nothing left to serve (a source's SOA)
        table._finish()
    finally:
        if collecting:
            gc.enable()
    return table


class Recompiler:
    """Compiles Store snapshots one after another, re-merging and re-encoding only the names the
    changed keys touch; the new table shares every other node with the last one. Anything the
    patch cannot do alone (see `Table._patched`) and big changes (a relist) take a full compile."""

    FULL_ABOVE = 1000  # touched names beyond which a full compile is cheaper than per-name merges

    def __init__(self, settings: Settings, geo: GeoLookup | None = None) -> None:
        self.settings = settings
        self.geo = geo
        self.full = 0  # full compiles done, for the bench and tests
        self._by_key: dict[str, tuple[Endpoint, ...]] = {}
        self._keys: dict[str, set[str]] = {}  # name -> the Store keys with an Endpoint there
        self._table: Table | None = None  # the table `_by_key` compiled to

    def reconfigure(self, settings: Settings) -> None:
        """Other zones: the next compile is a full one (the last table's zones no longer hold)."""
        self.settings = settings
        self._table = None

    def compile(self, by_key: dict[str, tuple[Endpoint, ...]], serial: int,
                keys: Iterable[str] | None = None) -> Table:
        """The table for `by_key`. `keys`, if given, holds every key changed since the last call
        (the Store's key listener): without it every key is compared, ~35 ms at 20,000 keys.

        Only the keys looked at are taken from `by_key`: a key that changed after the caller took
        `keys` but before its snapshot is left as it was, and is looked at next time (its key
        comes again), so the table, the index and the view never disagree."""
        view, last = self._by_key, self._table
        self._table = None  # until this compile succeeds, the index may not match a table
        candidates = view.keys() | by_key.keys() if keys is None or not view else keys
        changed = [k for k in candidates if view.get(k) is not by_key.get(k) and view.get(k) != by_key.get(k)]
        touched: set[str] = set()
        for key in changed:
            before = {normalize_name(ep.name) for ep in view.get(key, ())}
            after = {normalize_name(ep.name) for ep in by_key.get(key, ())}
            for name in before - after:
                holders = self._keys[name]
                holders.discard(key)
                if not holders:
                    del self._keys[name]
            for name in after:
                self._keys.setdefault(name, set()).add(key)
            touched |= before | after
            if key in by_key:
                view[key] = by_key[key]
            else:
                del view[key]
        table = self._patch(last, touched, serial) if last is not None else None
        if table is None:
            # Store keys in order, so ties in the merge (sources without an object) do not depend on
            # the order the watches delivered things in; the patch merges in the same order.
            table = compile_table(self.settings, [ep for key in sorted(view) for ep in view[key]], serial,
                                  self.geo, previous=last)
            self.full += 1
        self._table = table
        return table

    def _patch(self, last: Table, touched: set[str], serial: int) -> Table | None:
        if len(touched) > self.FULL_ABOVE:
            return None
        zones = self.settings.all_zones
        changed: dict[str, tuple[dict[str, Merged], list[Conflict]]] = {}
        for name in touched:
            if zone_of(name, zones) is None:
                continue
            eps = [ep for key in sorted(self._keys.get(name, ())) for ep in self._by_key[key]
                   if normalize_name(ep.name) == name]
            names, conflicts = merge_named(self.settings, eps, serial)
            changed[name] = (names.get(name, {}), conflicts.get(name, []))
        return last._patched(serial, changed, self.settings)
