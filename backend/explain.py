"""`coredns-gslb explain NAME`: which Kubernetes objects made a name, each target's geotag and health, the
strategy, and why the answer is what it is.

The running backend builds the report from its own model (`Explainer`, served as `GET /explain?name=`),
so it shows exactly what that backend answers, including other clusters' targets learned from peers.
The CLI only fetches the JSON and prints it; `--cluster` finds a lab backend's HTTP address.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.message
import dns.rcode

from backend.config import Settings
from backend.config import parser as settings_parser
from backend.gslb.strategy import answers
from backend.model import ObjectRef, Store, Strategy, Target, normalize_name
from backend.zone.merge import Merged, merge, zone_endpoints, zone_of

if TYPE_CHECKING:
    from backend.gslb.engine import GslbEngine
    from backend.peers.exchange import PeerExchange
    from backend.probes.prober import Prober

ROUTE = "/explain"
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_*.")
LAB = Path(__file__).resolve().parents[1] / ".lab"
Report = dict[str, Any]
Answer = Callable[[bytes], bytes]  # a DNS query in wire format -> the reply the backend serves now


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
    """Builds the explain report from the Store, the GSLB engine's health results and the peers' state,
    and asks the served answer table what a query gets right now (the proof the reasoning matches)."""

    def __init__(self, settings: Settings, store: Store, engine: GslbEngine | None = None,
                 peers: PeerExchange | None = None, answer: Answer | None = None,
                 prober: Prober | None = None) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.peers = peers
        self.answer = answer
        self.prober = prober

    def served(self, name: str, rtype: str) -> dict[str, Any] | None:
        """What a query for (name, rtype) is answered now, from the compiled table."""
        if self.answer is None:
            return None
        reply = dns.message.from_wire(self.answer(dns.message.make_query(name, rtype).to_wire()))
        return {"rcode": dns.rcode.to_text(reply.rcode()),
                "answer": [rd.to_text() for rrset in reply.answer for rd in rrset]}

    def report(self, name: str) -> Report:
        name = normalize_name(name)
        version, by_key = self.store.snapshot()
        zone = zone_of(name, self.settings.all_zones)
        out: Report = {"name": name, "cluster": self.settings.cluster_geotag, "zone": zone,
                       "version": version, "records": [], "wildcard": None}
        out["served"] = self.served(name, "A")
        if zone is None:
            out["rcode"] = "REFUSED"
            out["why"] = f"not in a zone this backend serves ({', '.join(self.settings.all_zones) or 'none'})"
            return out
        # Merge only the owner's records: explaining one name need not cost a merge of the whole model.
        endpoints = [ep for eps in by_key.values() for ep in eps]
        existing = {ep.name for ep in endpoints} | {ep.name for ep in zone_endpoints(self.settings, version)}
        owner = self._owner(name, zone, existing)
        if owner is None:
            out["rcode"] = "NXDOMAIN"
            out["why"] = f"no Kubernetes object publishes {name} -> NXDOMAIN with the SOA of {zone}"
            return out
        held = sorted(((key, ep) for key, eps in by_key.items() for ep in eps if ep.name == owner),
                      key=lambda held_by: held_by[0])
        names, _ = merge(self.settings, [ep for _, ep in held], version)
        out["rcode"] = "NOERROR"
        out["wildcard"] = owner if owner != name else None
        gslb = self._gslb_hosts(owner)
        probes = self.prober.report(owner) if self.prober is not None else []
        for rtype, merged in sorted(names[owner].items()):
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
                "served": self.served(name, rtype),
                "why": why(merged.strategy, merged.targets, self.settings.negative_ttl) if producers
                else "the zone's own record (apex SOA and NS, or this server's glue)",
            })
        out["gslb"] = gslb
        out["probes"] = probes
        out["peers"] = self._peers(zone) if gslb else {}
        return out

    def _owner(self, name: str, zone: str, names: set[str]) -> str | None:
        """The name itself, else the wildcard at its closest existing ancestor (RFC 4592, simplified)."""
        if name in names:
            return name
        parent = name
        while parent != zone:
            parent = parent.split(".", 1)[1]
            if "*." + parent in names:
                return "*." + parent
            if parent in names:
                return None
        return None

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


# --- the CLI ---------------------------------------------------------------------------------------


def _served_line(served: dict[str, Any] | None, indent: str) -> list[str]:
    if served is None:
        return []
    return [f"{indent}a query now gets: {served['rcode']} {', '.join(served['answer'])}".rstrip()]


def render(report: Report) -> str:
    """The report as a person reads it: the answer and the reason first, the evidence under it."""
    head = f"{report['name']}  (cluster {report['cluster'] or '-'}, zone {report['zone'] or '-'})"
    lines = [head]
    if not report["records"]:
        lines.append(f"  {report['rcode']}: {report['why']}")
        lines += _served_line(report["served"], "  ")
        return "\n".join(lines)
    if report["wildcard"]:
        lines.append(f"  matched wildcard {report['wildcard']}")
    for rec in report["records"]:
        answers = " | ".join(", ".join(a) or "(none)" for a in rec["answers"])
        lines.append(f"  {rec['type']} ttl {rec['ttl']}: {answers}")
        lines.append(f"    why: {rec['why']}")
        lines += _served_line(rec["served"], "    ")
        for ref in rec["sources"]:
            lines.append(f"    from {ref['kind']} {ref['namespace']}/{ref['name']} ({ref['apiVersion']})")
        for p in rec["producers"]:
            lines.append(f"    store {p['key']}: {', '.join(p['targets']) or '(no targets)'}")
        for t in rec["targets"] if rec["strategy"] else ():
            health, geotag = t["health"] or "-", t["geotag"] or "-"
            probe = f"  probe {t['probe']}" if t.get("probe") else ""
            row = f"    target {t['value']:<16} geotag {geotag:<8} {health:<9} {t['origin']}{probe}"
            lines.append(row.rstrip())
    for g in report.get("gslb", []):
        error = f"; {g['error']}" if g["error"] else ""
        lines.append(f"  {g['key']}: {g['health']}; Services {', '.join(g['services']) or '(none)'}; "
                     f"local addresses {', '.join(g['targets']) or '(none)'}{error}")
    for p in report.get("probes") or ():
        via = f" via {p['connect']}" if p["connect"] else ""
        last = "not probed yet" if p["last"] is None else f"last {p['last']} {p['last_seconds_ago']}s ago"
        lines.append(f"  probe {p['url']}{via} ({p['geotag']}): {p['verdict']}; {last}, "
                     f"{p['streak']}/{p['failures']} toward a flip, {p['checks']} probes")
    for tag, state in (report.get("peers") or {}).items():
        if state is None:
            continue
        status = "answering" if state.get("ok") else f"unreachable ({state.get('error') or 'not polled yet'})"
        lines.append(f"  peer {tag}: {status}, {state.get('records', 0)} localtargets records")
    return "\n".join(lines)


def lab_addresses(cluster: str | None, lab: Path = LAB) -> dict[str, str]:
    """cluster -> backend HTTP address, from the running lab: its clusters from `state.json` (whose shape
    is fixed), each backend's HTTP address from the side file `<lab>/<cluster>/http` ("IP:PORT")."""
    state_file = lab / "state.json"
    if not state_file.exists():
        return {}
    clusters = list(json.loads(state_file.read_text()).get("clusters", {}))
    if cluster is not None:
        if cluster not in clusters:
            raise SystemExit(f"explain: the lab has no cluster {cluster!r} (it has {', '.join(clusters)})")
        clusters = [cluster]
    out = {}
    for c in clusters:
        side = lab / c / "http"
        if not side.exists():
            raise SystemExit(f"explain: the lab did not record {c}'s backend HTTP address ({side}); "
                             "pass --http HOST:PORT")
        out[c] = side.read_text().strip()
    return out


def fetch(http: str, name: str, timeout: float = 10.0) -> Report:
    url = f"http://{http}{ROUTE}?{urllib.parse.urlencode({'name': name})}"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="coredns-gslb explain",
                                description="Why a name answers what it answers, as a backend sees it.")
    p.add_argument("name")
    p.add_argument("--cluster", help="a lab cluster (default: every cluster of the running lab)")
    p.add_argument("--http", help="the backend's HTTP address HOST:PORT (e.g. through kubectl port-forward)")
    p.add_argument("--json", action="store_true", help="print the raw report")
    p.add_argument("--lab", type=Path, default=LAB, help="the lab's folder, as `lab --dir` (default .lab)")
    a = p.parse_args(argv)
    if a.http:
        targets = {a.cluster or a.http: a.http}
    else:
        local = settings_parser().get_default("admin_listen")  # a `coredns-gslb serve` on this machine
        targets = lab_addresses(a.cluster, a.lab.resolve()) or {"local": local}
    failed = 0
    for cluster, http in targets.items():
        try:
            report = fetch(http, a.name)
        except urllib.error.HTTPError as e:  # it answered, but not with a report (e.g. an older backend)
            body = e.read().decode(errors="replace").strip()
            print(f"explain: the backend of {cluster} at {http} said {e.code}: {body}", file=sys.stderr)
            failed += 1
            continue
        except (urllib.error.URLError, OSError, ValueError) as e:
            print(f"explain: cannot reach the backend of {cluster} at {http}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(json.dumps(report, indent=2) if a.json else render(report))
    return 1 if failed else 0
