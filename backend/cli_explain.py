"""`coredns-gslb explain NAME [--cluster C | --http HOST:PORT]`: fetches a backend's explain report
(backend/explain.py builds it, `GET /explain?name=` on the admin listener) and prints it for a person.

Without `--http` it asks every cluster of the running lab (or `--cluster`), whose backends' admin
addresses the lab writes into `.lab/state.json`; without a lab, a `coredns-gslb serve` on this machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.config import parser as settings_parser
from backend.explain import ROUTE, Report

LAB = Path(".lab")


def _served_line(served: dict[str, Any] | None, indent: str) -> list[str]:
    if served is None:
        return []
    return [f"{indent}a query now gets: {served['rcode']} {', '.join(served['answer'])}".rstrip()]


def render(report: Report) -> str:
    """The report as a person reads it: the answer and the reason first, the evidence under it."""
    head = f"{report['name']}  (cluster {report['cluster'] or '-'}, zone {report['zone'] or '-'})"
    lines = [head]
    if report["wildcard"]:
        lines.append(f"  matched wildcard {report['wildcard']}")
    if report.get("delegation"):
        lines.append(f"  below the delegation {report['delegation']}: a referral, not an answer")
    if not report["records"]:
        lines.append(f"  {report['rcode']}: {report['why']}")
        lines += _served_line(report["served"], "  ")
        return "\n".join(lines)
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
    """cluster -> backend admin HTTP address ("IP:PORT"), from the running lab's `state.json`; {} when
    no lab runs there."""
    state_file = lab / "state.json"
    if not state_file.exists():
        return {}
    clusters: dict[str, dict[str, Any]] = json.loads(state_file.read_text()).get("clusters", {})
    if cluster is not None:
        if cluster not in clusters:
            raise SystemExit(f"explain: the lab has no cluster {cluster!r} (it has {', '.join(clusters)})")
        clusters = {cluster: clusters[cluster]}
    missing = [c for c, state in clusters.items() if not state.get("admin")]
    if missing:
        raise SystemExit(f"explain: {state_file} has no backend admin address for {', '.join(missing)} "
                         "(a lab started by an older version?); pass --http HOST:PORT")
    return {c: state["admin"] for c, state in clusters.items()}


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
    p.add_argument("--lab", type=Path, default=LAB,
                   help="the lab's folder, as `lab --dir` (default .lab in the current folder)")
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
