"""What a frozen table is made of: one `Node` per name (its RRsets and precompiled answers), one
`Zone` per apex, and how a reply is put together from them (`recipe`: CNAME chains, referrals, the SOA
of negatives) and written to wire bytes (`precompile`).

The builder (build.py) makes nodes and precompiles their answers; the lookup (lookup.py) only reads
them, except for the answers that depend on the query name's length (wildcards, NXDOMAIN/NODATA,
referrals below a delegation), which it precompiles on first use per length with the same `recipe`
and keeps: at most 255 per node.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.config import Settings
from backend.gslb.strategy import GeoLookup
from backend.zone.encode import Rdata, is_subdomain, name_wire, put_name, put_rdata, seed
from backend.zone.merge import Conflict, Merged
from backend.zone.wire import AA, NOERROR, NXDOMAIN, QR

T_A, T_NS, T_CNAME, T_SOA, T_AAAA = 1, 2, 5, 6, 28
T_OPT, T_IXFR, T_AXFR, T_MAILB, T_MAILA, T_ANY = 41, 251, 252, 253, 254, 255
OTHER = -1  # answer key: any qtype the node has nothing specific for
REFERRAL = -2
MAX_CHAIN = 8  # CNAME hops followed inside our zones
MAX_MESSAGE = 65535
MAX_OPT = 11 + 4 + 4 + 16  # our OPT with an IPv6 client-subnet option
TC = 0x0200

Pick = Callable[[str | None, int], tuple[int, int]]
# One precompiled reply tail: header flags, counts without / with our OPT, the sections' bytes.
Variant = tuple[int, bytes, bytes, bytes]
Owner = bytes | None  # a name in wire form; None is the query name (a pointer to offset 12)


@dataclass(slots=True)
class RRset:
    rdtype: int
    ttl: int
    variants: list[list[Rdata]]
    pick: Pick | None  # set when there is more than one variant


@dataclass(slots=True)
class Recipe:
    """What one reply holds, before it is written to wire bytes."""

    rcode: int = NOERROR
    aa: bool = True
    answer: list[tuple[Owner, RRset]] = field(default_factory=list)
    authority: list[tuple[Owner, RRset]] = field(default_factory=list)
    additional: list[tuple[Owner, RRset]] = field(default_factory=list)


class Answer:
    """One precompiled reply: a tail per `Answers` variant, and the pick that chooses one per query."""

    __slots__ = ("pick", "variants")

    def __init__(self, variants: tuple[Variant, ...], pick: Pick | None) -> None:
        self.variants = variants
        self.pick = pick


class Zone:
    """One served zone of one table: its SOA (the serial is the table's) and its negative answers."""

    __slots__ = ("apex", "name", "negatives", "soa")

    def __init__(self, name: str) -> None:
        self.name = name
        self.apex = name_wire(name)
        self.soa: RRset | None = None
        self.negatives: dict[tuple[int, int], Answer] = {}

    def negative(self, rcode: int, qlen: int) -> Answer:
        """NXDOMAIN or NODATA with our SOA in authority, for a query name `qlen` bytes long."""
        ans = self.negatives.get((rcode, qlen))
        if ans is None:
            recipe = Recipe(rcode, authority=soa(self))
            ans = self.negatives[(rcode, qlen)] = precompile(recipe, self.apex, qlen)
        return ans


def served_zones(settings: Settings) -> dict[bytes, Zone]:
    """A fresh `Zone` per served zone, by apex in wire form."""
    zones = (Zone(name) for name in settings.all_zones)
    return {zone.apex: zone for zone in zones}


class Node:
    """One name: its RRsets and answers. Shared by the tables of successive patches, so it holds its
    zone's apex, not the `Zone` (whose SOA carries one table's serial)."""

    __slots__ = ("answers", "any_type", "apex", "cut", "default", "key", "lazy", "rrsets")

    def __init__(self, key: bytes, apex: bytes) -> None:
        self.key = key  # lowercase wire name
        self.apex = apex
        self.rrsets: dict[int, RRset] = {}
        self.cut: Node | None = None  # the delegation this node is at or below
        self.any_type = 0  # the RRset an ANY query gets (RFC 8482), 0: none
        self.answers: dict[int, Answer] = {}  # by qtype, for exactly this name
        self.default: Answer | None = None  # other qtypes; None: NODATA
        self.lazy: dict[tuple[int, int], Answer] = {}  # (qtype key, qname length) -> answer


class Nodes:
    """A table's names: `base`, a dict shared by successive tables, and `recent`, the changes over it
    (key -> Node; None: the name is gone). Once a table holds them, neither dict is changed again: a
    patch works on `fork()` (the same base, a copy of the small `recent`), so a change costs what it
    changes, not what the table holds. When `recent` has grown past `FOLD` times the square root of
    the base, the fork starts from a new base with `recent` folded in: one dict copy every few
    hundred changed names, about as much as the copies of `recent` it saves.

    Why not a persistent map (a HAMT such as `immutables.Map`): the lookup reads this on every
    query (a miss once per label), and a HAMT lookup costs about 57 ns more than a dict's, the test
    on `recent` about 20 ns. Why not a plain dict per table, copied with `dict.copy()` (a memcpy):
    no cost per query, but ~1 ms and a table-sized young object per patch at 100,000 names."""

    __slots__ = ("base", "recent")

    FOLD = 4

    def __init__(self, base: dict[bytes, Node] | None = None,
                 recent: dict[bytes, Node | None] | None = None) -> None:
        self.base = {} if base is None else base
        self.recent = {} if recent is None else recent

    def get(self, key: bytes) -> Node | None:
        recent = self.recent
        return recent[key] if key in recent else self.base.get(key)

    def __getitem__(self, key: bytes) -> Node:
        node = self.get(key)
        if node is None:
            raise KeyError(key)
        return node

    def put(self, key: bytes, node: Node) -> None:
        self.recent[key] = node

    def drop(self, key: bytes) -> None:
        if key in self.base:
            self.recent[key] = None
        else:
            del self.recent[key]

    def keys(self) -> set[bytes]:
        gone = {key for key, node in self.recent.items() if node is None}
        return (self.base.keys() - gone) | (self.recent.keys() - gone)

    def values(self) -> list[Node]:
        if not self.recent:
            return list(self.base.values())
        found = [node for node in self.recent.values() if node is not None]
        return found + [node for key, node in self.base.items() if key not in self.recent]

    def settled(self) -> Nodes:
        """What a full compile hands to its table: all it made, as the base."""
        return Nodes(self.recent, {}) if not self.base else self

    def fork(self) -> Nodes:
        """The next patch's nodes: writes go to a copy of `recent`, or to a fresh fold of both."""
        if len(self.recent) ** 2 <= self.FOLD ** 2 * len(self.base):
            return Nodes(self.base, self.recent.copy())
        base = self.base.copy()  # a memcpy while at most a third is deleted slots; dict(base) inserts each
        for key, node in self.recent.items():
            if node is None:
                del base[key]
            else:
                base[key] = node
        return Nodes(base, {})


@dataclass(slots=True)
class Index:
    """How the builder made a table's nodes, kept with the table so the next compile reuses the work
    (`compile_table(previous=)`) or patches only the changed names (`Recompiler`), which takes it over
    and changes it in place. The lookup reads only `nodes` (through the table), which no builder
    changes once a table holds them."""

    geo: GeoLookup | None = None
    nodes: Nodes = field(default_factory=Nodes)  # the table's names (the lookup reads them too)
    # name -> (merged input, its node, records, rejections)
    inputs: dict[str, tuple[dict[str, Merged], Node, int, list[Conflict]]] = field(default_factory=dict)
    # by name: merge conflicts (and a bad name's), and records that would not encode
    conflicts: dict[str, list[Conflict]] = field(default_factory=dict)
    rejected: dict[str, list[Conflict]] = field(default_factory=dict)
    held: set[bytes] = field(default_factory=set)  # names with input (other nodes: empty non-terminals)
    children: dict[bytes, int] = field(default_factory=dict)  # node -> how many nodes sit directly below it
    present: set[int] = field(default_factory=lambda: {T_ANY})  # every type a node holds (a patch only adds)
    cnames: set[bytes] = field(default_factory=set)  # CNAME nodes outside delegations: answers read others
    # What those answers read (`chain`): CNAME node -> the targets its chain followed, and the reverse,
    # by each target and by each name above a target, so a patch redoes only the CNAMEs it touches.
    chains: dict[bytes, tuple[bytes, ...]] = field(default_factory=dict)
    read_at: dict[bytes, set[bytes]] = field(default_factory=dict)  # target -> CNAME nodes
    read_below: dict[bytes, set[bytes]] = field(default_factory=dict)  # a target or a name above it -> ...

    def follows(self, key: bytes, targets: tuple[bytes, ...]) -> None:
        """CNAME node `key` now reads `targets` (none: it is no CNAME node any more)."""
        for target in self.chains.pop(key, ()):
            _unlist(self.read_at, target, key)
            for up in ancestors(target):
                _unlist(self.read_below, up, key)
        if targets:
            self.chains[key] = targets
            for target in targets:
                self.read_at.setdefault(target, set()).add(key)
                for up in ancestors(target):
                    self.read_below.setdefault(up, set()).add(key)

    def readers(self, replaced: set[bytes], moved: set[bytes]) -> set[bytes]:
        """The CNAME nodes whose answers may change: a target `replaced` (new records); a target or a
        name above it `moved` (created or gone: the closest encloser changes, RFC 4592); a wildcard
        replaced or moved above a target."""
        found: set[bytes] = set()
        for key in replaced:
            found |= self.read_at.get(key, set())
        for key in moved:
            found |= self.read_below.get(key, set())
        for key in replaced | moved:
            if key.startswith(b"\x01*"):
                found |= self.read_below.get(key[2:], set())
        return found


def _unlist(index: dict[bytes, set[bytes]], at: bytes, key: bytes) -> None:
    keys = index.get(at)
    if keys is not None:
        keys.discard(key)
        if not keys:
            del index[at]


def ancestors(key: bytes) -> list[bytes]:
    """`key` and every name above it, in wire form."""
    out = [key]
    pos = 0
    while key[pos]:
        pos += key[pos] + 1
        out.append(key[pos:])
    return out


def chain(nodes: Nodes, zones: dict[bytes, Zone], node: Node) -> tuple[bytes, ...]:
    """The targets a CNAME node's answers follow (`recipe` for a type no node holds goes furthest)."""
    targets: list[bytes] = []
    cur, seen = node, {id(node)}
    while (cname := cur.rrsets.get(T_CNAME)) is not None and len(targets) < MAX_CHAIN:
        targets.append(names(cname.variants[0][0])[0])
        nxt = _follow(nodes, zones, targets[-1])
        if not isinstance(nxt, Node) or id(nxt) in seen:
            break
        seen.add(id(nxt))
        cur = nxt
    return tuple(targets)


def precompile(recipe: Recipe, anchor: bytes, qlen: int) -> Answer:
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
    return Answer(tuple(variants), pick)


def closest(nodes: Nodes, key: bytes) -> tuple[Node | None, int]:
    """The closest encloser of a name we do not hold, and its offset in `key`."""
    base, recent = nodes.base, nodes.recent  # `Nodes.get` inlined: the lookup's NXDOMAIN path
    pos = 0
    while key[pos]:
        pos += key[pos] + 1
        up = key[pos:]
        node = recent[up] if up in recent else base.get(up)
        if node is not None:
            return node, pos
    return None, 0


def recipe(nodes: Nodes, zones: dict[bytes, Zone], node: Node, qtype: int) -> Recipe:
    """The reply for `qtype` at `node`, following CNAMEs while they stay inside our zones."""
    if node.cut is not None:
        return referral(nodes, node.cut)
    answer: list[tuple[Owner, RRset]] = []
    owner: Owner = None
    cur = node
    seen = {id(node)}
    while True:
        want = cur.any_type if qtype == T_ANY else qtype
        rr = cur.rrsets.get(want)
        if rr is not None:
            answer.append((owner, rr))
            return Recipe(answer=answer)
        cname = cur.rrsets.get(T_CNAME)
        if cname is None:
            return Recipe(answer=answer, authority=soa(zones[cur.apex]))
        answer.append((owner, cname))
        owner = names(cname.variants[0][0])[0]
        nxt = _follow(nodes, zones, owner)
        if isinstance(nxt, Zone):
            return Recipe(NXDOMAIN, answer=answer, authority=soa(nxt))
        if nxt is None or id(nxt) in seen or len(answer) >= MAX_CHAIN:
            return Recipe(answer=answer)
        seen.add(id(nxt))
        cur = nxt


def soa(zone: Zone) -> list[tuple[Owner, RRset]]:
    return [(zone.apex, zone.soa)] if zone.soa is not None else []


def referral(nodes: Nodes, cut: Node) -> Recipe:
    """Below a delegation (an NS RRset under the apex) we are not authoritative: refer."""
    ns = cut.rrsets[T_NS]
    glue: list[tuple[Owner, RRset]] = []
    for rd in ns.variants[0]:
        target = names(rd)[0]
        host = nodes.get(target) if is_subdomain(target, cut.key) else None
        if host is not None:
            glue += [(target, host.rrsets[t]) for t in (T_A, T_AAAA) if t in host.rrsets]
    return Recipe(aa=False, authority=[(cut.key, ns)], additional=glue)


def _follow(nodes: Nodes, zones: dict[bytes, Zone], key: bytes) -> Node | Zone | None:
    """Where a CNAME target leads: a node (exact or wildcard), a zone where it is NXDOMAIN, or
    None when it leaves our zones or enters a delegation."""
    node = nodes.get(key)
    if node is None:
        ce, pos = closest(nodes, key)
        if ce is None:
            return None
        node = None if ce.cut else nodes.get(b"\x01*" + key[pos:])
        if node is None:
            return None if ce.cut else zones[ce.apex]
    return None if node.cut else node


def names(rd: Rdata) -> tuple[bytes, ...]:
    """The names inside a CNAME/NS/MX/SOA rdata."""
    return rd[1] if isinstance(rd, tuple) else ()
