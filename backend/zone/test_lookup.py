"""The lookup: what a query is answered from a compiled table, in-process (authoritative semantics);
through CoreDNS: tests/test_dns_semantics.py. The helpers and BASE here serve test_build and test_notify
too."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target
from backend.zone.build import compile_table
from backend.zone.lookup import Table

SETTINGS = Settings(
    zones=("foowidgets.k8s", "example.org"),
    gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
    cluster_geotag="us-buf",
    ext_gslb_clusters_geotags=("us-nyc",),
    nameserver_address="10.2.1.224",
    negative_ttl=5,
)
SVC = ObjectRef("Service", "default", "nginx")

def ep(
    name: str,
    rtype: str,
    *values: str,
    ttl: int | None = None,
    source: ObjectRef | None = SVC,
    strategy: Strategy | None = None,
    geotag: str = "",
) -> Endpoint:
    return Endpoint(name, rtype, tuple(Target(v, geotag) for v in values), ttl, source, strategy)


BASE = [
    ep("nginx.foowidgets.k8s", "A", "172.18.200.101"),
    ep("v6.foowidgets.k8s", "AAAA", "2001:db8::1", ttl=60),
    ep("alias.foowidgets.k8s", "CNAME", "nginx.foowidgets.k8s", ttl=60),
    ep("out.foowidgets.k8s", "CNAME", "elsewhere.example.com", ttl=60),
    ep("dangling.foowidgets.k8s", "CNAME", "missing.foowidgets.k8s", ttl=60),
    ep("*.wild.foowidgets.k8s", "A", "1.2.3.4", ttl=60),
    ep("deep.ent.foowidgets.k8s", "TXT", "hello world", ttl=60),
    ep("mail.foowidgets.k8s", "MX", "10 mx.foowidgets.k8s."),
    ep("_http._tcp.foowidgets.k8s", "SRV", "0 5 80 nginx.foowidgets.k8s."),
    ep("sub.foowidgets.k8s", "NS", "ns.sub.foowidgets.k8s."),
    ep("ns.sub.foowidgets.k8s", "A", "9.9.9.9"),
    ep(
        "fe.gb.foowidgets.k8s",
        "A",
        "10.2.1.167",
        ttl=30,
        geotag="us-buf",
        source=ObjectRef("Gslb", "demo", "fe"),
        strategy=Strategy("failover", "us-buf"),
    ),
    ep("fe.gb.foowidgets.k8s", "A", "10.2.1.98", ttl=30, geotag="us-nyc", source=None),
    ep("down.gb.foowidgets.k8s", "A", ttl=30, source=ObjectRef("Gslb", "demo", "down")),
    ep("www.example.com", "A", "1.1.1.1"),  # outside every zone: dropped
]


@pytest.fixture(scope="module")
def table() -> Table:
    return compile_table(SETTINGS, BASE, 2000000000)


def ask(table: Table, name: str, rtype: str = "A", **kw) -> dns.message.Message:
    query = dns.message.make_query(name, rtype, **kw)
    reply = dns.message.from_wire(table.answer(query.to_wire()))
    assert reply.id == query.id
    assert reply.flags & dns.flags.QR
    assert [(q.name.to_text(), q.rdtype) for q in reply.question] == [
        (name.rstrip(".") + ".", query.question[0].rdtype)
    ]
    return reply


def raw(table: Table, packet: bytes) -> dns.message.Message:
    return dns.message.from_wire(table.answer(packet), ignore_trailing=True)


def data(section) -> list[str]:
    return sorted(
        f"{rr.name} {rr.ttl} {dns.rdatatype.to_text(rr.rdtype)} {rd}" for rr in section for rd in rr
    )


def test_hit_copies_id_and_letter_case(table: Table) -> None:
    r = ask(table, "NGINX.FooWidgets.K8s")
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and r.flags & dns.flags.RD
    assert data(r.answer) == ["NGINX.FooWidgets.K8s. 300 A 172.18.200.101"]


def test_nodata_and_nxdomain_carry_the_soa(table: Table) -> None:
    nodata = ask(table, "nginx.foowidgets.k8s", "AAAA")
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert [rr.rdtype for rr in nodata.authority] == [dns.rdatatype.SOA]
    nx = ask(table, "nope.foowidgets.k8s")
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.flags & dns.flags.AA
    soa = nx.authority[0]
    assert soa.ttl == 30 and soa[0].minimum == 30 and soa[0].serial == 2000000000
    assert str(soa[0].mname) == "ns.dns.foowidgets.k8s." and str(soa[0].rname) == "hostmaster.foowidgets.k8s."


def test_empty_non_terminal_is_nodata(table: Table) -> None:
    r = ask(table, "ent.foowidgets.k8s")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority


def test_outside_every_zone_is_refused(table: Table) -> None:
    r = ask(table, "www.example.com")
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA
    assert ask(table, "k8s", "SOA").rcode() == dns.rcode.REFUSED


def test_child_zone_wins_over_parent(table: Table) -> None:
    nx = ask(table, "nothing.gb.foowidgets.k8s")
    assert nx.rcode() == dns.rcode.NXDOMAIN and str(nx.authority[0].name) == "gb.foowidgets.k8s."


def test_cname_chased_inside_zone_only(table: Table) -> None:
    assert data(ask(table, "alias.foowidgets.k8s").answer) == [
        "alias.foowidgets.k8s. 60 CNAME nginx.foowidgets.k8s.",
        "nginx.foowidgets.k8s. 300 A 172.18.200.101",
    ]
    out = ask(table, "out.foowidgets.k8s")
    assert out.rcode() == dns.rcode.NOERROR and data(out.answer) == [
        "out.foowidgets.k8s. 60 CNAME elsewhere.example.com."
    ]
    dangling = ask(table, "dangling.foowidgets.k8s")
    assert dangling.rcode() == dns.rcode.NXDOMAIN and len(dangling.answer) == 1 and dangling.authority
    assert data(ask(table, "alias.foowidgets.k8s", "CNAME").answer) == [
        "alias.foowidgets.k8s. 60 CNAME nginx.foowidgets.k8s."
    ]


def test_wildcard(table: Table) -> None:
    assert data(ask(table, "a.b.wild.foowidgets.k8s").answer) == ["a.b.wild.foowidgets.k8s. 60 A 1.2.3.4"]
    assert ask(table, "x.wild.foowidgets.k8s", "AAAA").rcode() == dns.rcode.NOERROR
    assert ask(table, "wild.foowidgets.k8s").answer == []  # the parent is an ENT, not a match


def test_wildcard_does_not_cover_existing_names() -> None:
    t = compile_table(
        SETTINGS, [ep("*.foowidgets.k8s", "A", "1.2.3.4"), ep("a.b.foowidgets.k8s", "A", "5.6.7.8")], 1
    )
    assert data(ask(t, "zzz.foowidgets.k8s").answer) == ["zzz.foowidgets.k8s. 300 A 1.2.3.4"]
    # b.foowidgets.k8s exists (ENT), so x.b.foowidgets.k8s has closest encloser b and no *.b: NXDOMAIN
    assert ask(t, "x.b.foowidgets.k8s").rcode() == dns.rcode.NXDOMAIN
    assert ask(t, "b.foowidgets.k8s").rcode() == dns.rcode.NOERROR
    assert t.lookup("x.b.foowidgets.k8s", 1).owner is None  # what explain reports (RFC 4592 section 2.2.2)
    assert t.lookup("zzz.foowidgets.k8s", 1).owner == "*.foowidgets.k8s"
    assert t.lookup("b.foowidgets.k8s", 1).owner == "b.foowidgets.k8s"


def test_other_record_types(table: Table) -> None:
    assert data(ask(table, "deep.ent.foowidgets.k8s", "TXT").answer) == [
        'deep.ent.foowidgets.k8s. 60 TXT "hello world"'
    ]
    assert data(ask(table, "mail.foowidgets.k8s", "MX").answer) == [
        "mail.foowidgets.k8s. 300 MX 10 mx.foowidgets.k8s."
    ]
    assert data(ask(table, "_http._tcp.foowidgets.k8s", "SRV").answer) == [
        "_http._tcp.foowidgets.k8s. 300 SRV 0 5 80 nginx.foowidgets.k8s."
    ]
    assert data(ask(table, "v6.foowidgets.k8s", "AAAA").answer) == ["v6.foowidgets.k8s. 60 AAAA 2001:db8::1"]


def test_delegation_gets_a_referral(table: Table) -> None:
    for name in ("sub.foowidgets.k8s", "x.y.sub.foowidgets.k8s", "ns.sub.foowidgets.k8s"):
        r = ask(table, name)
        assert r.rcode() == dns.rcode.NOERROR and not r.flags & dns.flags.AA and not r.answer
        assert data(r.authority) == ["sub.foowidgets.k8s. 300 NS ns.sub.foowidgets.k8s."]
        assert data(r.additional) == ["ns.sub.foowidgets.k8s. 300 A 9.9.9.9"]


def test_any_gets_one_rrset(table: Table) -> None:
    r = ask(table, "foowidgets.k8s", "ANY")
    assert len(r.answer) == 1
    assert len(ask(table, "alias.foowidgets.k8s", "ANY").answer) == 1
    assert ask(table, "nope.foowidgets.k8s", "ANY").rcode() == dns.rcode.NXDOMAIN


def test_gslb_failover_and_nodata(table: Table) -> None:
    assert data(ask(table, "fe.gb.foowidgets.k8s").answer) == ["fe.gb.foowidgets.k8s. 30 A 10.2.1.167"]
    down = ask(table, "down.gb.foowidgets.k8s")
    assert down.rcode() == dns.rcode.NOERROR and not down.answer and down.authority[0].ttl == 5


def test_round_robin_rotates() -> None:
    t = compile_table(
        SETTINGS,
        [
            ep(
                "rr.gb.foowidgets.k8s",
                "A",
                "10.0.0.1",
                "10.0.0.2",
                "10.0.0.3",
                strategy=Strategy("roundRobin"),
                geotag="us-buf",
            )
        ],
        1,
    )
    firsts = {ask(t, "rr.gb.foowidgets.k8s").answer[0][0].address for _ in range(6)}
    assert firsts == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}


def test_geoip_uses_ecs_and_echoes_scope() -> None:
    def geo(ip: str) -> str | None:
        return {"192.0.2.1": "us-nyc", "198.51.100.1": "us-buf"}.get(ip)

    eps = [
        ep("geo.gb.foowidgets.k8s", "A", "10.2.1.167", geotag="us-buf", strategy=Strategy("geoip")),
        ep("geo.gb.foowidgets.k8s", "A", "10.2.1.98", geotag="us-nyc", source=None),
    ]
    t = compile_table(SETTINGS, eps, 1, geo)
    for subnet, want in (("192.0.2.1", ["10.2.1.98"]), ("198.51.100.1", ["10.2.1.167"])):
        r = ask(t, "geo.gb.foowidgets.k8s", use_edns=0, options=[dns.edns.ECSOption(subnet, 32)])
        assert [rd.address for rd in r.answer[0]] == want
        (ecs,) = [o for o in r.options if o.otype == dns.edns.ECS]
        assert ecs.srclen == 32 and ecs.scopelen == 32
    plain = ask(t, "nope.gb.foowidgets.k8s", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24)])
    assert [o.scopelen for o in plain.options] == [0]


def test_edns_echo_do_bit_and_badvers(table: Table) -> None:
    r = ask(table, "nginx.foowidgets.k8s", use_edns=0, payload=4096, want_dnssec=True)
    assert r.edns == 0 and r.payload == SETTINGS.edns_payload and r.ednsflags & dns.flags.DO
    bad = ask(table, "nginx.foowidgets.k8s", use_edns=1)
    assert bad.rcode() == dns.rcode.BADVERS and bad.edns == 0 and not bad.answer
    assert ask(table, "nginx.foowidgets.k8s").edns == -1  # no OPT asked, none given


def header(
    qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0
) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x05nginx\x0afoowidgets\x03k8s\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x12",
        header()[:11],
        header(qd=0),
        header(qd=2) + QUESTION + QUESTION,
        header(flags=0x8100) + QUESTION,  # a response
        header() + b"\x05nginx\xc0\x0c\x00\x01\x00\x01",  # pointer in the question
        header() + b"\x05nginx\x0afoowid",  # truncated name
        header() + QUESTION[:-2],  # truncated class
        header() + QUESTION + b"junk",
        header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x05\x00",  # OPT rdata runs over
        header(ar=2) + QUESTION + 2 * b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",  # two OPTs
        header(ar=1)
        + QUESTION
        + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x08\x00\x08\x00\x04\x00\x01\x28\x00",
        header()
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x3f"
        + b"a" * 63
        + b"\x00\x00\x01\x00\x01",
    ],
)
def test_malformed_is_formerr(table: Table, packet: bytes) -> None:
    reply = table.answer(packet)
    assert reply[2] & 0x80 and reply[3] & 0xF == dns.rcode.FORMERR
    if len(packet) >= 2:
        assert reply[:2] == packet[:2]


def test_bad_ecs_keeps_the_question(table: Table) -> None:
    # source prefix 24 but 4 address bytes: RFC 7871 says FORMERR; CoreDNS still accepts the reply
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x0c\x00\x08\x00\x08\x00\x01\x18\x00\xc0\x00\x02\x01"
    r = raw(table, header(ar=1) + QUESTION + opt)
    assert r.rcode() == dns.rcode.FORMERR and str(r.question[0].name) == "nginx.foowidgets.k8s."


def test_other_opcodes_are_notimp(table: Table) -> None:
    for opcode in (dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.UPDATE):
        q = dns.message.make_query("nginx.foowidgets.k8s", "A")
        q.set_opcode(opcode)
        packet = q.to_wire()
        reply = table.answer(packet)
        assert reply[3] & 0xF == dns.rcode.NOTIMP and (reply[2] >> 3) & 0xF == opcode
        assert reply[4:6] == b"\x00\x01" and reply[12:] == packet[12:]


def test_not_ready_is_servfail_inside_zones() -> None:
    t = Table.not_ready(SETTINGS)
    assert ask(t, "nginx.foowidgets.k8s").rcode() == dns.rcode.SERVFAIL
    assert ask(t, "foowidgets.k8s", "SOA").rcode() == dns.rcode.SERVFAIL
    assert ask(t, "www.example.com").rcode() == dns.rcode.REFUSED


def test_zone_transfer_and_odd_classes_refused(table: Table) -> None:
    assert ask(table, "foowidgets.k8s", "AXFR").rcode() == dns.rcode.REFUSED
    assert ask(table, "nginx.foowidgets.k8s", rdclass="CH").rcode() == dns.rcode.REFUSED



def test_lookup_names_the_owner_of_the_served_reply(table: Table) -> None:
    """`Table.lookup` (explain's question) runs the answer path: the same reply, and whose records made it."""
    cases = [
        ("nginx.foowidgets.k8s", "A", "NOERROR", "nginx.foowidgets.k8s"),
        ("nginx.foowidgets.k8s", "AAAA", "NOERROR", "nginx.foowidgets.k8s"),  # NODATA at a name
        ("ent.foowidgets.k8s", "A", "NOERROR", "ent.foowidgets.k8s"),  # an empty non-terminal
        ("a.b.wild.foowidgets.k8s", "A", "NOERROR", "*.wild.foowidgets.k8s"),
        ("x.wild.foowidgets.k8s", "AAAA", "NOERROR", "*.wild.foowidgets.k8s"),  # NODATA at the wildcard
        ("alias.foowidgets.k8s", "A", "NOERROR", "alias.foowidgets.k8s"),  # the chain starts here
        ("x.y.sub.foowidgets.k8s", "A", "NOERROR", "sub.foowidgets.k8s"),  # a referral names the cut
        ("ns.sub.foowidgets.k8s", "A", "NOERROR", "sub.foowidgets.k8s"),
        ("nope.foowidgets.k8s", "A", "NXDOMAIN", None),
        ("www.example.com", "A", "REFUSED", None),
    ]
    for name, rtype, rcode, owner in cases:
        found = table.lookup(name, dns.rdatatype.from_text(rtype))
        query = dns.message.make_query(name, rtype)
        query.id = 0
        assert found.reply == table.answer(query.to_wire()), (name, rtype)
        assert (dns.rcode.to_text(dns.message.from_wire(found.reply).rcode()), found.owner) == (rcode, owner)
    assert Table.not_ready(SETTINGS).lookup("nginx.foowidgets.k8s", 1).owner is None

