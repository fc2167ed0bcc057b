"""The report behind `coredns-gslb explain NAME`: which Kubernetes objects made a name, each target's
geotag and health, the strategy, and why the answer is what it is.

The running backend builds the report from its own model (`Explainer`, served as `GET /explain?name=`),
so it shows exactly what that backend answers, including other clusters' targets learned from peers.
The rcode, the owner name (the name itself, the wildcard that matched, the delegation that refers) and
the answer come from the served table's own lookup (`Table.lookup`), so the report cannot disagree with
the answer; the Store adds the evidence: the owner's records and who produced them. The command that
fetches and prints the report is backend/cli_explain.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dns.message
import dns.rcode
import dns.rdatatype

from backend.config import Settings
from backend.gslb.strategy import answers
from backend.model import ObjectRef, Store, Strategy, Target, normalize_name, zone_of
from backend.zone.lookup import Table
from backend.zone.merge import Merged, merge

if TYPE_CHECKING:
    from backend.gslb.engine import GslbEngine
    from backend.peers.exchange import PeerExchange
    from backend.probes.prober import Prober

ROUTE = "/explain"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_*.")
Report = dict[str, Any]


def _ref(ref: ObjectRef) -> dict[str, str]:
    return {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name, "apiVersion": ref.api_version}


def _strategy(s: Strategy | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {"type": s.type, "primaryGeoTag": s.primary_geotag, "weight": dict(s.weights)}


def _by_geotag(targets: Sequence[Target]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for t in targets:
        groups.setdefault(t.geotag, []).append(t.value)
    return groups


def _their(groups: Mapping[str, list[str]]) -> str:
    """"us-nyc's 10.2.1.98 and us-lon's 10.3.0.7", or the bare addresses of untagged targets."""
    return " and ".join(f"{tag}'s {', '.join(ips)}" if tag else ", ".join(ips) for tag, ips in groups.items())


def why(strategy: Strategy | None, targets: tuple[Target, ...], negative_ttl: int) -> str:
    """One line a person reads first: the rule that picked the answer from the healthy targets."""
    groups = _by_geotag(targets)
    if not targets:
        if strategy is None:
            return "the name exists but has no record of this type -> NODATA"
        return (f"{strategy.type}: no healthy target in any cluster -> NODATA "
                f"(SOA, negative TTL {negative_ttl}s)")
    if strategy is None:
        return f"ExternalDNS-style record: every target as published -> answering {_their(groups)}"
    if strategy.type == "failover":
        primary = strategy.primary_geotag
        if primary in groups:
            return f"failover: primary {primary} is healthy -> answering {_their({primary: groups[primary]})}"
        return f"failover: primary {primary} has no healthy target -> answering {_their(groups)}"
    if strategy.type == "geoip":
        return ("geoip: the client's EDNS0 client-subnet is looked up in the GeoIP DB; clients of "
                + "; ".join(f"{tag} get {', '.join(ips)}" for tag, ips in groups.items())
                + f"; unknown clients get all {len(targets)}")
    weights = {tag: w for tag, w in strategy.weights if w > 0 and tag in groups}
    if weights:
        total = sum(weights.values())
        shares = ", ".join(f"{tag} {100 * w / total:.0f}% ({', '.join(groups[tag])})"
                           for tag, w in weights.items())
        return f"roundRobin weighted: each answer holds one geotag's targets, picked by weight: {shares}"
    if strategy.weights:
        return f"roundRobin weighted: no weighted geotag is healthy -> rotating {_their(groups)}"
    return f"roundRobin: all {len(targets)} healthy targets, rotated between queries ({_their(groups)})"


def _answers(merged: Merged) -> list[list[str]]:
    """The distinct answers the strategy can give (one for failover, one per geotag for weights/geoip)."""
    seen: dict[frozenset[str], list[str]] = {}
    for variant in answers(merged.strategy, merged.targets).variants:
        values = [t.value for t in variant]
        seen.setdefault(frozenset(values), values)
    return list(seen.values())


class Explainer:
    """Builds the explain report: the served table's lookup gives the rcode, the owner name and the answer;
    the Store, the GSLB engine's health results and the peers' state give the evidence."""

    def __init__(self, settings: Settings, store: Store, table: Callable[[], Table],
                 engine: GslbEngine | None = None, peers: PeerExchange | None = None,
                 prober: Prober | None = None) -> None:
        self.settings = settings
        self.store = store
        self.table = table  # the table served now
        self.engine = engine
        self.peers = peers
        self.prober = prober

    def served(self, name: str, rtype: str) -> tuple[str | None, dict[str, Any]]:
        """What a query for (name, rtype) is answered now, and the name whose records made the answer
        (the name, a wildcard, a delegation; None when no name did), by the table's own lookup."""
        found = self.table().lookup(name, dns.rdatatype.from_text(rtype))
        reply = dns.message.from_wire(found.reply)
        return found.owner, {"rcode": dns.rcode.to_text(reply.rcode()),
                             "answer": [rd.to_text() for rrset in reply.answer for rd in rrset]}

    def report(self, name: str) -> Report:
        name = normalize_name(name)
        version, by_key = self.store.snapshot()
        zone = zone_of(name, self.settings.all_zones)
        owner, served = self.served(name, "A")
        out: Report = {"name": name, "cluster": self.settings.cluster_geotag, "zone": zone,
                       "version": version, "records": [], "rcode": served["rcode"], "owner": owner,
                       "wildcard": None, "served": served}
        if served["rcode"] == "REFUSED":
            out["why"] = f"not in a zone this backend serves ({', '.join(self.settings.all_zones) or 'none'})"
            return out
        if served["rcode"] == "SERVFAIL":
            out["why"] = "the backend has not finished its first sync with the Kubernetes API -> SERVFAIL"
            return out
        if owner is None:
            out["why"] = f"no Kubernetes object publishes {name} -> NXDOMAIN with the SOA of {zone}"
            return out
        # Merge only the owner's records: explaining one name need not cost a merge of the whole model.
        held = sorted(((key, ep) for key, eps in by_key.items() for ep in eps
                       if normalize_name(ep.name) == owner), key=lambda held_by: held_by[0])
        types = merge(self.settings, [ep for _, ep in held], version)[0].get(owner, {})
        if owner != name and owner.startswith("*."):
            out["wildcard"] = owner
        if "NS" in types and owner != zone:  # an NS RRset below the apex: the table refers (RFC 1034 4.3.2)
            out["delegation"] = owner
        if not types:
            out["why"] = f"{name} holds no records but names below it do (an empty non-terminal) -> NODATA"
            return out
        gslb = self._gslb_hosts(owner)
        probes = self.prober.report(owner) if self.prober is not None else []
        for rtype, merged in sorted(types.items()):
            producers = [{"key": key, "targets": [t.value for t in ep.targets]}
                         for key, ep in held if ep.rtype.upper() == rtype]
            out["records"].append({
                "type": rtype,
                "ttl": merged.ttl,
                "strategy": _strategy(merged.strategy),
                "sources": [_ref(r) for r in merged.sources],
                "producers": producers,
                "targets": self._targets(merged, gslb, rtype, probes),
                "answers": _answers(merged),
                "served": self.served(name, rtype)[1],
                "why": why(merged.strategy, merged.targets, self.settings.negative_ttl) if producers
                else "the zone's own record (apex SOA and NS, or this server's glue)",
            })
        out["gslb"] = gslb
        out["probes"] = probes
        out["peers"] = self._peers(zone) if gslb and zone else {}
        return out

    def _gslb_hosts(self, host: str) -> list[dict[str, Any]]:
        """This cluster's view of every Gslb naming `host`: health, backing Services, local addresses."""
        if self.engine is None:
            return []
        out = []
        for key, result in sorted(dict(self.engine.results).items()):
            for state in result.hosts:
                if state.host != host:
                    continue
                error = result.error
                out.append({
                    "key": key, "gslb": _ref(result.spec.ref) if result.spec else None,
                    "health": state.health, "services": list(state.services), "targets": list(state.targets),
                    "error": None if error is None else f"{error.reason}: {error.message}",
                })
        return out

    def _targets(self, merged: Merged, gslb: list[dict[str, Any]], rtype: str,
                 probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Answer-pool targets, plus the addresses held back: this cluster's unhealthy ones and any
        target (own or a peer's) whose probes from here fail."""
        local = self.settings.cluster_geotag
        verdicts = {p["address"]: p["verdict"] for p in probes}
        pool = {t.value for t in merged.targets}
        def probe(ip: str) -> dict[str, str]:  # only for probed targets: "pass" | "fail"
            return {"probe": verdicts[ip]} if ip in verdicts else {}

        rows = [{"value": t.value, "geotag": t.geotag,
                 "health": "Healthy" if merged.strategy else None,
                 "origin": "" if not t.geotag else "local" if t.geotag == local else "peer", **probe(t.value)}
                for t in merged.targets]
        family = 6 if rtype == "AAAA" else 4
        held = [(ip, local, g["health"]) for g in gslb for ip in g["targets"]]
        held += [(p["address"], p["geotag"], "Healthy") for p in probes]
        for ip, geotag, health in held:
            if ip not in pool and (":" in ip) == (family == 6):
                failed = verdicts.get(ip) == "fail"
                rows.append({"value": ip, "geotag": geotag, "health": "ProbeFailed" if failed else health,
                             "origin": "local" if geotag == local else "peer", **probe(ip)})
                pool.add(ip)
        return rows

    def _peers(self, zone: str) -> dict[str, Any]:
        if self.peers is None:
            return {}
        return {tag: zones.get(zone) for tag, zones in self.peers.state().items()}

    async def handle(self, query: Mapping[str, Sequence[str]]) -> tuple[int, str, bytes]:
        """The `DnsServer.add_route(ROUTE, ...)` handler: 200 with the JSON report, 400 without a name.

        The report is built on a worker thread: over a large model it takes tens of milliseconds, which
        must not stall the DNS answers on the serving loop."""
        names = query.get("name") or []
        if len(names) != 1 or not names[0].strip():
            return 400, "text/plain", b"usage: /explain?name=NAME\n"
        problem = name_problem(names[0])
        if problem is not None:
            return 400, "text/plain", f"bad name: {problem}\n".encode()
        report = await asyncio.to_thread(self.report, names[0])
        return 200, "application/json", json.dumps(report).encode()


def name_problem(name: str) -> str | None:
    """Why `name` is no DNS name we could hold (one line), None if it is fine."""
    name = normalize_name(name)
    bad = sorted(set(name) - NAME_CHARS)
    if bad:
        return f"character {bad[0]!r} not allowed (letters, digits, '-', '_', '*', '.')"
    if len(name) > 253:
        return f"{len(name)} characters, at most 253"
    labels = name.split(".")
    if "" in labels:
        return "empty label"
    longest = max(labels, key=len)
    if len(longest) > 63:
        return f"label of {len(longest)} characters, at most 63"
    return None
