"""The explain report never disagrees with the served answer: over many generated names (wildcards,
empty non-terminals, CNAMEs, delegations, GSLB names, peers' names, names outside the zones) the
report's rcode, owner and answer equal what the table serves, and its evidence (the owner's records)
holds the served records. Through a real backend and apiserver: tests/test_explain.py."""

from __future__ import annotations

import random
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from backend.config import GslbZone, Settings
from backend.explain import Explainer
from backend.model import Endpoint, ObjectRef, Store, Strategy, Target, zone_of
from backend.zone.build import compile_table
from backend.zone.lookup import Table
from backend.zone.merge import merge

SETTINGS = Settings(zones=("z.test", "other.test"), gslb_zones=(GslbZone("gb.z.test", "z.test"),),
                    cluster_geotag="us-buf", ext_gslb_clusters_geotags=("us-nyc",),
                    nameserver_address="10.2.1.224", negative_ttl=5)
BUF, NYC = "us-buf", "us-nyc"


def _ep(name: str, rtype: str, *values: str, geotag: str = "", strategy: Strategy | None = None,
        source: ObjectRef | None = None) -> Endpoint:
    return Endpoint(name, rtype, tuple(Target(v, geotag) for v in values), 60, source, strategy)


def _store(rnd: random.Random) -> Store:
    """A fixed core of the hard cases and random names around it."""
    store = Store()
    svc = ObjectRef("Service", "demo", "svc")
    store.replace("service/demo/core", [
        _ep("a.b.z.test", "A", "10.0.0.1", source=svc),  # b.z.test: an empty non-terminal
        _ep("*.z.test", "A", "10.0.0.2", source=svc),
        _ep("*.w.z.test", "TXT", "wild text", source=svc),
        _ep("c.z.test", "CNAME", "a.b.z.test", source=svc),
        _ep("d.z.test", "CNAME", "out.example.com", source=svc),
        _ep("e.z.test", "CNAME", "nope.b.z.test", source=svc),  # dangling: NXDOMAIN after the CNAME
        _ep("f.z.test", "CNAME", "x.w.z.test", source=svc),  # into a wildcard
        _ep("g.z.test", "CNAME", "c.z.test", source=svc),  # a chain
        _ep("sub.z.test", "NS", "ns.sub.z.test.", source=svc),  # a delegation with glue
        _ep("ns.sub.z.test", "A", "10.0.0.53", source=svc),
        _ep("p.q.r.z.test", "AAAA", "2001:db8::1", source=svc),
        _ep("*.other.test", "A", "10.9.0.1", source=svc),
        _ep("www.example.com", "A", "10.9.9.9", source=svc),  # outside every zone: dropped
    ])
    strategies = [Strategy("failover", BUF), Strategy("roundRobin"), Strategy("geoip"),
                  Strategy("roundRobin", weights=((BUF, 75), (NYC, 25))), Strategy("failover", NYC)]
    for i, strategy in enumerate(strategies):
        gslb = ObjectRef("Gslb", "demo", f"app{i}", api_version="k8gb.absa.oss/v1beta1")
        ours = () if i == 4 else (f"10.2.1.{160 + i}",)  # app4: no healthy local target
        store.replace(f"gslb/demo/app{i}", [
            _ep(f"app{i}.gb.z.test", "A", *ours, geotag=BUF, strategy=strategy, source=gslb),
            _ep(f"localtargets-app{i}.gb.z.test", "A", *ours, geotag=BUF, source=gslb)])
    store.replace(f"peer/{NYC}", [_ep(f"app{i}.gb.z.test", "A", f"10.3.0.{i}", geotag=NYC) for i in range(4)]
                  + [_ep("theirs.gb.z.test", "A", "10.3.0.99", geotag=NYC)])  # a name only the peer has
    labels = ["a", "b", "c", "x", "*", "www", "q"]
    for k in range(60):
        depth = rnd.choice((1, 2, 2, 3))
        parts = [rnd.choice(labels) for _ in range(depth)]
        parts = [p for j, p in enumerate(parts) if p != "*" or j == 0] or ["m"]  # '*' only leftmost
        name = ".".join(parts) + "." + rnd.choice(("z.test", "w.z.test", "gb.z.test", "other.test"))
        rtype = rnd.choice(("A", "A", "AAAA", "TXT", "CNAME"))
        value = {"A": f"10.1.{k}.1", "AAAA": f"2001:db8::{k + 2:x}", "TXT": f"t{k}",
                 "CNAME": rnd.choice(("a.b.z.test", "x.w.z.test", "app0.gb.z.test", "gone.z.test",
                                      "elsewhere.example.org"))}[rtype]
        source = ObjectRef("DNSEndpoint", "demo", f"r{k}")
        store.replace(f"dnsendpoint/demo/r{k}", [_ep(name, rtype, value, source=source)])
    return store


def _queries(store: Store, rnd: random.Random) -> list[str]:
    names = {ep.name for ep in store.endpoints()}
    out = set(SETTINGS.all_zones) | {"example.com", "test", "z.test.example", "b.z.test", "x.b.z.test"}
    for name in names:
        labels = name.split(".")
        out |= {".".join(labels[i:]) for i in range(len(labels))}  # the name and its ancestors
        concrete = name.replace("*", rnd.choice(("x", "y.x")))
        out |= {concrete, "x." + concrete, "x.y." + concrete, "nope-" + concrete}
    return sorted(out)




def _expected_owner(name: str, held: dict[str, dict[str, Any]]) -> str | None:
    """Whose records answer `name`, by RFC 1034 4.3.2 and RFC 4592 over the names the table holds: a
    second, plain reading of the rules to check the lookup's owner against."""
    zone = zone_of(name, SETTINGS.all_zones)
    if zone is None:
        return None
    labels = name.split(".")
    up = [".".join(labels[i:]) for i in range(len(labels) - zone.count("."))]  # name, ..., the apex
    for cut in reversed(up[:-1]):  # the highest NS RRset below the apex is the delegation
        if "NS" in held.get(cut, {}):
            return cut
    exists = {n.split(".", i)[-1] if i else n for n in held
              for i in range(n.count(".") - (zone_of(n, SETTINGS.all_zones) or "").count(".") + 1)}
    if name in exists:
        return name  # its records, or an empty non-terminal's NODATA
    encloser = next(a for a in up if a in exists)
    return "*." + encloser if "*." + encloser in exists else None


def _served(table: Table, name: str, rtype: str) -> dns.message.Message:
    return dns.message.from_wire(table.answer(dns.message.make_query(name, rtype).to_wire()))


def _answer(reply: dns.message.Message) -> list[str]:
    return [rd.to_text() for rrset in reply.answer for rd in rrset]


def test_the_report_is_the_served_answer_over_generated_names() -> None:
    rnd = random.Random(4592)
    store = _store(rnd)
    table = compile_table(SETTINGS, store.endpoints(), 1)
    explainer = Explainer(SETTINGS, store, lambda: table)
    held = merge(SETTINGS, store.endpoints(), 1)[0]
    seen: set[tuple[str, str]] = set()
    queries = _queries(store, rnd)
    for name in queries:
        report = explainer.report(name)
        reply = _served(table, name, "A")
        rcode = dns.rcode.to_text(reply.rcode())
        assert report["rcode"] == rcode, name
        mine, theirs = sorted(report["served"]["answer"]), sorted(_answer(reply))
        if mine != theirs:  # only a weighted name may differ: each query gets one geotag's targets
            weighted = [sorted(a) for r in report["records"] if len(r["answers"]) > 1 for a in r["answers"]]
            assert mine in weighted and theirs in weighted, name
        assert report["owner"] == _expected_owner(name, held), name
        for rec in report["records"]:  # each record's line says what a query of its type gets
            typed = _served(table, name, rec["type"])
            assert rec["served"]["rcode"] == dns.rcode.to_text(typed.rcode()), name
        if reply.answer:  # the first RRset is the owner's own: the report lists it among its records
            first = reply.answer[0]
            [rec] = [r for r in report["records"] if r["type"] == dns.rdatatype.to_text(first.rdtype)]
            values = {rd.to_text().rstrip(".") for rd in first}
            assert values in [{v.rstrip(".") for v in a} for a in rec["answers"]], name
            assert first.ttl == rec["ttl"], name
            kind = "wildcard" if report["wildcard"] else "name"
        elif rcode in ("NXDOMAIN", "REFUSED"):
            assert report["records"] == [] and report["wildcard"] is None, name
            kind = rcode
        elif not reply.flags & dns.flags.AA:
            assert report["delegation"] == report["owner"], name
            kind = "referral"
        else:
            kind = "nodata" if report["records"] or report["wildcard"] else "empty non-terminal"
        seen.add((rcode, kind))
    assert len(queries) > 300
    assert seen >= {("NOERROR", "name"), ("NOERROR", "wildcard"), ("NXDOMAIN", "NXDOMAIN"),
                    ("NOERROR", "empty non-terminal"), ("NOERROR", "nodata"), ("NOERROR", "referral"),
                    ("REFUSED", "REFUSED")}, seen


def test_rfc_4592_an_empty_non_terminal_stops_the_wildcard() -> None:
    """With a.b.z.test and *.z.test, x.b.z.test is NXDOMAIN: b.z.test exists (an empty non-terminal),
    so it is the closest encloser and there is no *.b.z.test. explain once said NOERROR via *.z.test."""
    store = Store()
    store.replace("service/demo/a", [_ep("a.b.z.test", "A", "10.0.0.1"), _ep("*.z.test", "A", "10.0.0.2")])
    table = compile_table(SETTINGS, store.endpoints(), 1)
    explainer = Explainer(SETTINGS, store, lambda: table)
    assert _served(table, "x.b.z.test", "A").rcode() == dns.rcode.NXDOMAIN
    report = explainer.report("x.b.z.test")
    assert (report["rcode"], report["owner"], report["wildcard"]) == ("NXDOMAIN", None, None)
    assert report["records"] == []
    ent = explainer.report("b.z.test")
    assert (ent["rcode"], ent["owner"], ent["records"]) == ("NOERROR", "b.z.test", [])
    assert "empty non-terminal" in ent["why"]
    covered = explainer.report("x.z.test")
    assert (covered["owner"], covered["wildcard"], covered["served"]["answer"]) == (
        "*.z.test", "*.z.test", ["10.0.0.2"])


def test_before_the_first_sync_the_report_says_servfail() -> None:
    explainer = Explainer(SETTINGS, Store(), lambda: Table.not_ready(SETTINGS))
    report = explainer.report("a.z.test")
    assert (report["rcode"], report["owner"], report["records"]) == ("SERVFAIL", None, [])
