"""The throughput benchmark's records and query mix, and the zone files CoreDNS's `file` plugin serves.

The records live in the real apiserver (annotated Services, Gslbs); the zone files for the ceiling are
written from what the backend answers for every (name, type) of the mix, and both servers are then
checked to give the same rcode and the same record sets, so (a) and (b) serve the same data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from bench.objects import Obj, endpoint_slice, gslb, namespace, service

ZONE = "foowidgets.k8s"
GSLB_ZONE = "gb.foowidgets.k8s"
NS = "bench"
GEOTAG = "us-buf"
BACKEND_FLAGS = (
    "--zones", ZONE, "--dns-zone", GSLB_ZONE, "--edge-dns-zone", ZONE, "--cluster-geo-tag", GEOTAG,
)
SERVICES = 40  # ExternalDNS names; every 4th is dual-stack
GSLBS = 10  # GSLB hosts: roundRobin and failover (not geoip: the mix must be cacheable, see corefile/)
MIX_LINES = 2000


def svc_ips(i: int) -> list[str]:
    v4 = f"172.18.{200 + i // 250}.{i % 250 + 1}"
    return [v4, f"fd00:18::{i + 1:x}"] if i % 4 == 0 else [v4]


def objects() -> list[Obj]:
    objs = [namespace(NS)]
    for i in range(SERVICES):
        objs.append(service(NS, f"svc-{i}", svc_ips(i), hostname=f"svc-{i}.{ZONE}"))
    for i in range(GSLBS):
        objs.append(service(NS, f"app-{i}", [f"10.2.1.{100 + i}", f"10.2.2.{100 + i}"],
                            gslb_host=f"app-{i}.{GSLB_ZONE}"))
        objs.append(endpoint_slice(NS, f"app-{i}", f"10.244.1.{i + 1}"))
        strategy = {"type": "roundRobin"} if i % 2 else {"type": "failover", "primaryGeoTag": GEOTAG}
        objs.append(gslb(NS, f"app-{i}", f"app-{i}", strategy))
    return objs


@dataclass(frozen=True)
class Share:
    what: str
    percent: int
    questions: tuple[tuple[str, str], ...]


def shares() -> list[Share]:
    """The query mix: hits, NODATA, NXDOMAIN in both zones, A and AAAA, GSLB names."""
    dual = [i for i in range(SERVICES) if i % 4 == 0]
    single = [i for i in range(SERVICES) if i % 4]
    return [
        Share("A hit (ExternalDNS name)", 40, tuple((f"svc-{i}.{ZONE}", "A") for i in range(SERVICES))),
        Share("AAAA hit", 10, tuple((f"svc-{i}.{ZONE}", "AAAA") for i in dual)),
        Share("AAAA NODATA", 10, tuple((f"svc-{i}.{ZONE}", "AAAA") for i in single)),
        Share("NXDOMAIN", 15, tuple((f"missing-{i}.{ZONE}", "A") for i in range(20))),
        Share("GSLB A (roundRobin, failover)", 20,
              tuple((f"app-{i}.{GSLB_ZONE}", "A") for i in range(GSLBS))),
        Share("GSLB NXDOMAIN", 5, tuple((f"missing-{i}.{GSLB_ZONE}", "A") for i in range(10))),
    ]


def write_mix(path: Path) -> list[tuple[str, str]]:
    """dnsperf's input file (shuffled with a fixed seed); returns the distinct questions."""
    rng = random.Random(7)
    lines: list[tuple[str, str]] = []
    for share in shares():
        n = MIX_LINES * share.percent // 100
        lines += [share.questions[k % len(share.questions)] for k in range(n)]
    rng.shuffle(lines)
    path.write_text("".join(f"{name} {rtype}\n" for name, rtype in lines))
    return sorted(set(lines))


Answers = dict[tuple[str, str], tuple[str, frozenset[str]]]


def ask(server: str, name: str, rtype: str) -> dns.message.Message:
    host, _, port = server.rpartition(":")
    return dns.query.udp(dns.message.make_query(name, rtype), host, port=int(port), timeout=2)


def answer_sets(server: str, questions: list[tuple[str, str]]) -> Answers:
    """(name, type) -> (rcode, the answer records as text, as a set: rotation does not count)."""
    out = {}
    for name, rtype in questions:
        m = ask(server, name, rtype)
        records = frozenset(f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {rd}"
                            for rr in m.answer for rd in rr)
        out[(name, rtype)] = (dns.rcode.to_text(m.rcode()), records)
    return out


def ready(server: str) -> bool:
    """Every ExternalDNS name and every GSLB host answers with addresses through CoreDNS."""
    names = [(f"svc-{i}.{ZONE}", "A") for i in range(SERVICES)] + [(f"app-{i}.{GSLB_ZONE}", "A")
                                                                    for i in range(GSLBS)]
    return all(ask(server, n, t).answer for n, t in names)


def _records(server: str, questions: list[tuple[str, str]], zone: str) -> Iterator[str]:
    for name, rtype in [(zone, "SOA"), (zone, "NS"), *questions]:
        m = ask(server, name, rtype)
        for rrset in m.answer:
            yield rrset.to_text()
        for rrset in m.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                yield rrset.to_text()


def write_zone_files(server: str, questions: list[tuple[str, str]], folder: Path) -> dict[str, Path]:
    """One zone file per zone, holding exactly what the backend answers (apex SOA and NS included)."""
    files = {}
    for zone in (ZONE, GSLB_ZONE):
        inside = [q for q in questions if _zone_of(q[0]) == zone]
        lines = sorted(set(_records(server, inside, zone)), key=lambda r: (" SOA " not in r, r))
        path = folder / f"db.{zone}"
        path.write_text(f"$ORIGIN {zone}.\n" + "\n".join(lines) + "\n")
        files[zone] = path
    return files


def _zone_of(name: str) -> str:
    return GSLB_ZONE if name.endswith("." + GSLB_ZONE) or name == GSLB_ZONE else ZONE


def corefile_file(files: dict[str, Path]) -> str:
    lines = "\n".join(f"    file {path} {zone}" for zone, path in files.items())
    return f"{ZONE} {GSLB_ZONE} {{\n    bind ${{bind}}\n    errors\n{lines}\n}}\n"


def _without_ttl(records: frozenset[str]) -> set[str]:
    return {" ".join(r.split()[:1] + r.split()[2:]) for r in records}


def differences(a: Answers, b: Answers) -> list[str]:
    """Questions whose rcode or record set differ between two servers (a cached copy's TTL aside)."""
    return [f"{q}: {a[q][0]} {sorted(a[q][1])} != {b[q][0]} {sorted(b[q][1])}"
            for q in sorted(a) if a[q][0] != b[q][0] or _without_ttl(a[q][1]) != _without_ttl(b[q][1])]
