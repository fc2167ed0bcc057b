"""The builder: Endpoints -> a frozen `Table`, from scratch (`compile_table`) or by patching only the
names that changed keys touch (`Recompiler`).

A `Builder` owns the nodes it makes until it hands them out in a `Table` (`Builder.table()`); after
that nobody writes them. A patch takes the last table's `Index` over (its bookkeeping changed in place,
its nodes forked: `Nodes`), replaces the nodes it changes, never edits them, and so costs what the
change costs, not what the table holds.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterable
from dataclasses import replace

import dns.exception
import dns.rdatatype

from backend.config import Settings
from backend.gslb.strategy import GeoLookup, answers
from backend.model import Endpoint, normalize_name, zone_of
from backend.zone.encode import BadData, Rdata, name_wire, parent, rdata
from backend.zone.lookup import Table
from backend.zone.merge import Conflict, Merged, merge, merge_named
from backend.zone.nodes import (
    T_ANY,
    T_CNAME,
    T_NS,
    T_SOA,
    Answer,
    Index,
    Node,
    RRset,
    Zone,
    chain,
    closest,
    precompile,
    recipe,
    referral,
    served_zones,
)

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


class Builder:
    """Makes one table's nodes: every name anew (`add`, then `finish`), or the last table's with some
    names redone (`patch`, on `base`: the last table's index, taken over)."""

    def __init__(self, settings: Settings, serial: int, geo: GeoLookup | None,
                 base: Index | None = None) -> None:
        self.settings = settings
        self.serial = serial
        self.zones = served_zones(settings)
        self.records = 0
        self.conflicts: tuple[Conflict, ...] | None = None  # None: list them anew in `table()`
        self.moved: set[bytes] | None = None  # a patch's names created or gone (empty non-terminals too)
        # The bookkeeping is changed in place (only the builder chain reads it); the nodes, which the
        # last table's lookup reads, are forked.
        self.index = Index(geo) if base is None else replace(base, geo=geo, nodes=base.nodes.fork())

    def table(self) -> Table:
        """The frozen table of what was built; this builder is done with it."""
        index = self.index
        index.nodes = index.nodes.settled()
        if self.conflicts is None:
            found = (index.conflicts, index.rejected)
            self.conflicts = tuple(c for by_name in found for cs in by_name.values() for c in cs)
        return Table(self.settings, self.serial, self.zones, index.nodes, conflicts=self.conflicts,
                     records=self.records, index=index)

    # -- a full compile ----------------------------------------------------------------------

    def add(self, name: str, zone: Zone, types: dict[str, Merged], previous: Index | None,
            conflicts: list[Conflict]) -> None:
        index = self.index
        old = previous.inputs.get(name) if previous is not None else None
        if old is not None and old[0] == types:
            _, old_node, records, rejects = old
            node = self._node(old_node.key, zone)
            node.rrsets = old_node.rrsets
            if old_node.cut is None and T_CNAME not in old_node.rrsets:
                node.answers = old_node.answers  # kept only if finish() finds the node still plain
        else:
            try:
                node = self._node(name_wire(name), zone)
            except BadData as e:
                index.conflicts[name] = conflicts + _rejects(types, str(e))
                return
            records, rejects = self._parse(node, name, types)
        self.records += records
        index.held.add(node.key)
        if conflicts:
            index.conflicts[name] = conflicts
        if rejects:
            index.rejected[name] = rejects
        index.inputs[name] = (types, node, records, rejects)

    def finish(self) -> None:
        """Delegations, the types present and every node's answers, once all names are in."""
        nodes = self.index.nodes
        for zone in self.zones.values():
            zone.soa = self._node(zone.apex, zone).rrsets.get(T_SOA)
        for node in nodes.values():
            types = sorted(node.rrsets)
            node.any_type = T_CNAME if T_CNAME in node.rrsets else (types[0] if types else 0)
            cur: Node | None = node
            while cur is not None and cur.key != cur.apex:
                if T_NS in cur.rrsets:
                    node.cut = cur
                cur = nodes.get(parent(cur.key))
        self.index.present = {t for node in nodes.values() for t in node.rrsets} | {T_ANY}
        for node in nodes.values():
            if node.cut is not None:
                node.answers = {}
                node.default = precompile(referral(nodes, node.cut), node.key, len(node.key))
            elif T_CNAME in node.rrsets:
                self.index.cnames.add(node.key)
                self._plain(node)
                self.index.follows(node.key, chain(nodes, self.zones, node))
            elif node.rrsets and not node.answers:
                self._plain(node)

    # -- a patch -----------------------------------------------------------------------------

    def patch(self, changed: dict[str, tuple[dict[str, Merged], list[Conflict]]], last: Table) -> bool:
        """Redo the names in `changed` (merged records, merge conflicts) on the index of `last`. New
        and deleted names, CNAMEs, wildcards and conflicts are patched; False, with nothing changed
        yet, when a change touches a delegation (an NS below an apex, or a name at or below one:
        referrals and glue read many nodes), which the caller answers with a full compile."""
        index = self.index
        apexes = {zone.name for zone in self.zones.values()}
        keys: dict[str, bytes | str] = {}  # name -> its wire form, or why it has none
        for name, (types, _) in changed.items():
            old = index.inputs.get(name)
            if name not in apexes and ("NS" in types or (old is not None and "NS" in old[0])):
                return False
            try:
                key = keys[name] = name_wire(name)
            except BadData as e:
                keys[name] = str(e)
                continue
            node = index.nodes.get(key)
            if node is None:
                node, _ = closest(index.nodes, key)
            if node is not None and node.cut is not None:
                return False
        self.records = last.records
        self.conflicts = last.conflicts  # unless a changed name had or has some
        self.moved = set()
        replaced = {key for key in keys.values() if isinstance(key, bytes)}
        zone_records, _ = merge(self.settings, (), self.serial)
        changed = dict(changed)
        for zone in self.zones.values():  # every apex: its SOA carries the new serial
            kept = (index.inputs[zone.name][0], index.conflicts.get(zone.name, []))
            types, conflicts = changed.get(zone.name, kept)
            changed[zone.name] = ({**types, "SOA": zone_records[zone.name]["SOA"]}, conflicts)
            keys[zone.name] = zone.apex
        zones = {z.name: z for z in self.zones.values()}
        for name, (types, conflicts) in changed.items():
            before = (index.conflicts.pop(name, None), index.rejected.pop(name, None))
            self._redo(name, keys[name], types, conflicts, zones)
            if before != (index.conflicts.get(name), index.rejected.get(name)):
                self.conflicts = None
        for zone in self.zones.values():
            zone.soa = index.nodes[zone.apex].rrsets.get(T_SOA)
        # CNAME answers read other names, and negatives the SOA: redo those whose chain reads a change
        # (all of them when the serial moved, once an hour)
        redo = index.cnames if self.serial != last.serial else (
            index.readers(replaced, self.moved) | replaced) & index.cnames
        for key in redo:
            old_node = index.nodes[key]
            node = Node(key, old_node.apex)
            index.nodes.put(key, node)
            node.rrsets, node.cut = old_node.rrsets, old_node.cut
            self._plain(node)
            index.follows(key, chain(index.nodes, self.zones, node))
        return True

    def _redo(self, name: str, key: bytes | str, types: dict[str, Merged], conflicts: list[Conflict],
              zones: dict[str, Zone]) -> None:
        """One changed name of a patch: its node anew (or gone), its records, conflicts, rejections."""
        index = self.index
        old = index.inputs.pop(name, None)
        if old is not None:
            self.records -= old[2]
        if isinstance(key, str):  # a name that cannot be written: only its rejection is kept
            index.conflicts[name] = conflicts + _rejects(types, key)
            return
        if key in index.cnames:
            index.cnames.discard(key)
            index.follows(key, ())
        if not types:
            if old is not None:
                self._drop(key)
            if conflicts:
                index.conflicts[name] = conflicts
            return
        zone = zones[zone_of(name, zones) or ""]
        self._node(key, zone)
        node = Node(key, zone.apex)
        index.nodes.put(key, node)
        index.held.add(key)
        records, rejects = self._parse(node, name, types)
        self.records += records
        index.inputs[name] = (types, node, records, rejects)
        if conflicts:
            index.conflicts[name] = conflicts
        if rejects:
            index.rejected[name] = rejects
        index.present.update(node.rrsets)
        if T_CNAME in node.rrsets:
            index.cnames.add(key)
        else:
            self._plain(node)

    # -- nodes -------------------------------------------------------------------------------

    def _parse(self, node: Node, name: str, types: dict[str, Merged]) -> tuple[int, list[Conflict]]:
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
            p = answers(merged.strategy, targets, self.index.geo)
            variants = [[parsed[t.value] for t in v] for v in p.variants if v]
            node.rrsets[rdtype] = RRset(rdtype, merged.ttl, variants, p.pick if len(variants) > 1 else None)
            records += len(targets)
        return records, rejects

    def _node(self, key: bytes, zone: Zone) -> Node:
        """The node for `key`, creating it and its empty ancestors up to the apex (RFC 4592 ENTs)."""
        nodes, children = self.index.nodes, self.index.children
        node = nodes.get(key)
        if node is None:
            node = Node(key, zone.apex)
            nodes.put(key, node)
            if self.moved is not None:
                self.moved.add(key)
            if key != zone.apex:
                up = parent(key)
                self._node(up, zone)
                children[up] = children.get(up, 0) + 1
        return node

    def _drop(self, key: bytes) -> None:
        """A name lost its input: it stays as an empty non-terminal while names sit below it, else it
        goes, and so do the empty non-terminals above it that it alone kept."""
        nodes, children, held = self.index.nodes, self.index.children, self.index.held
        held.discard(key)
        apex = nodes[key].apex
        if key == apex or children.get(key):
            nodes.put(key, Node(key, apex))
            return
        while key != apex and not children.get(key) and key not in held:
            nodes.drop(key)
            if self.moved is not None:
                self.moved.add(key)
            children.pop(key, None)
            key = parent(key)
            children[key] -= 1

    def _plain(self, node: Node) -> None:
        """any_type and the precompiled answers of a node that is not below a delegation."""
        types = sorted(node.rrsets)
        node.any_type = T_CNAME if T_CNAME in node.rrsets else (types[0] if types else 0)

        def answer(qtype: int) -> Answer:
            return precompile(recipe(self.index.nodes, self.zones, node, qtype), node.key, len(node.key))

        if T_CNAME in node.rrsets:
            node.answers = {t: answer(t) for t in self.index.present}
            node.default = answer(0)
        elif node.rrsets:
            node.answers = {t: answer(t) for t in node.rrsets}
            node.answers[T_ANY] = node.answers[node.any_type]


def _rejects(types: dict[str, Merged], why: str) -> list[Conflict]:
    return [(ref, why) for merged in types.values() for ref in merged.sources]


def compile_table(settings: Settings, endpoints: Iterable[Endpoint], serial: int,
                  geo: GeoLookup | None = None, previous: Table | None = None) -> Table:
    """Compile the model into a Table. Names outside the served zones are dropped silently (the
    sources report them); conflicts and unparsable targets are listed in `Table.conflicts`.

    With `previous` (the table this one replaces), names whose merged records did not change reuse
    its encoded RRsets, answer variants, so a change costs little more than the merge.
    """
    builder = Builder(settings, serial, geo)
    last = previous.index if previous is not None else None
    if last is not None and (last.geo is not geo or previous.payload != settings.edns_payload):
        last = None
    # Compiling allocates many long-lived objects; the collector's full passes over a big heap
    # would double the time, and there is no garbage to find until the old table is dropped.
    collecting = gc.isenabled()
    gc.disable()
    try:
        names, conflicts = merge_named(settings, endpoints, serial)
        zones = {z.name: z for z in builder.zones.values()}
        for name, types in names.items():
            builder.add(name, zones[zone_of(name, zones) or ""], types, last, conflicts.pop(name, []))
        builder.index.conflicts.update(conflicts)  # names with nothing left to serve (a source's SOA)
        builder.finish()
        table = builder.table()
        # Out of the collector's sight before it is back: its first pass would walk the whole new
        # table (0.1-0.6 s at 10k + 10k, holding the GIL and so the answer loop), and it is all
        # long-lived. Only the old table's cycles (delegation nodes' `cut`) are never collected.
        gc.freeze()
    finally:
        if collecting:
            gc.enable()
    return table


def patch_table(last: Table, serial: int, changed: dict[str, tuple[dict[str, Merged], list[Conflict]]],
                settings: Settings) -> Table | None:
    """`last` with the names in `changed` redone and a new serial, sharing every other node; None when
    only a full compile can do it (see `Builder.patch`)."""
    if not last.ready or last.index is None:
        return None
    # The index is handed over: its bookkeeping changes in place from here on, so `last` no longer
    # holds it (a compile with `previous=last` then reuses nothing rather than the wrong thing).
    index, last.index = last.index, None
    builder = Builder(settings, serial, index.geo, index)
    if builder.patch(changed, last):
        return builder.table()
    last.index = index  # untouched: the caller's full compile reuses it
    return None


class Recompiler:
    """Compiles Store snapshots one after another, re-merging and re-encoding only the names the
    changed keys touch; the new table shares every other node with the last one. Anything the
    patch cannot do alone (see `Builder.patch`) and big changes (a relist) take a full compile."""

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

    @property
    def reads_all(self) -> bool:
        """The next compile reads every key of `by_key` (the first one); later ones only `keys`."""
        return not self._by_key

    def compile(self, by_key: dict[str, tuple[Endpoint, ...]], serial: int,
                keys: Iterable[str] | None = None) -> Table:
        """The table for `by_key`. `keys`, if given, holds every key changed since the last call
        (the Store's key listener): without it every key is compared, ~35 ms at 20,000 keys.

        Only the keys looked at are taken from `by_key`: a key that changed after the caller took
        `keys` but before its snapshot is left as it was, and is looked at next time (its key
        comes again), so the table, the index and the view never disagree."""
        view, last = self._by_key, self._table
        self._table = None  # until this compile succeeds, the index may not match a table
        touched: set[str] = set()
        if not view and last is None:
            # The first compile: every key is new and, with no last table, nothing to patch needs
            # the names touched (the generic bookkeeping below took ~1 s of it at 100,000 keys).
            holders_of = self._keys
            for key, eps in by_key.items():
                for ep in eps:
                    holders_of.setdefault(normalize_name(ep.name), set()).add(key)
            view.update(by_key)
            changed: Iterable[str] = ()
        else:
            candidates = view.keys() | by_key.keys() if keys is None or not view else keys
            changed = [k for k in candidates
                       if view.get(k) is not by_key.get(k) and view.get(k) != by_key.get(k)]
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
        return patch_table(last, serial, changed, self.settings)
