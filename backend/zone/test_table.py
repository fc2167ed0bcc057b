"""Authoritative semantics of the compiled table, in-process; through CoreDNS: test_dns_semantics.py."""

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
from backend.zone.table import Recompiler, Table, compile_table, next_serial_in, soa_serial

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


def test_apex_soa_and_ns(table: Table) -> None:
    assert data(ask(table, "foowidgets.k8s", "NS").answer) == [
        "foowidgets.k8s. 300 NS ns.dns.foowidgets.k8s."
    ]
    assert data(ask(table, "ns.dns.foowidgets.k8s").answer) == ["ns.dns.foowidgets.k8s. 300 A 10.2.1.224"]
    gb = ask(table, "gb.foowidgets.k8s", "NS")
    assert data(gb.answer) == [
        "gb.foowidgets.k8s. 30 NS gslb-ns-us-buf-gb.foowidgets.k8s.",
        "gb.foowidgets.k8s. 30 NS gslb-ns-us-nyc-gb.foowidgets.k8s.",
    ]
    soa = ask(table, "gb.foowidgets.k8s", "SOA").answer[0]
    assert str(soa[0].mname) == "gslb-ns-us-buf-gb.foowidgets.k8s." and soa[0].minimum == 5 and soa.ttl == 5
    # the own gslb-ns glue lands in the served edge zone
    assert data(ask(table, "gslb-ns-us-buf-gb.foowidgets.k8s").answer) == [
        "gslb-ns-us-buf-gb.foowidgets.k8s. 30 A 10.2.1.224"
    ]


def test_every_cluster_presents_the_same_soa() -> None:
    """One zone on several servers has one SOA (Zonemaster: MULTIPLE_SOA_SERIALS, MULTIPLE_SOA_MNAMES)."""
    nyc = Settings(gslb_zones=SETTINGS.gslb_zones, cluster_geotag="us-nyc", ext_gslb_clusters_geotags=(
        "us-buf", "us-nyc"), negative_ttl=5)
    soas = [ask(compile_table(s, [], soa_serial(now=1_796_000_400)), "gb.foowidgets.k8s", "SOA").answer[0]
            for s in (SETTINGS, nyc)]
    assert soas[0] == soas[1] and str(soas[0][0].mname) == "gslb-ns-us-buf-gb.foowidgets.k8s."
    assert soas[0][0].serial == 1_796_000_400 and soas[0][0].expire == 604800


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


def test_notify_calls_back_for_served_zones(table: Table) -> None:
    calls: list[tuple[str, str]] = []
    q = dns.message.make_query("gb.foowidgets.k8s", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    q.flags |= dns.flags.AA
    r = dns.message.from_wire(
        table.answer(q.to_wire(), lambda z, p: calls.append((z, p)), "ipv4:127.0.0.1:5")
    )
    assert r.rcode() == dns.rcode.NOERROR and r.opcode() == dns.opcode.NOTIFY and r.flags & dns.flags.AA
    assert calls == [("gb.foowidgets.k8s", "ipv4:127.0.0.1:5")]
    q = dns.message.make_query("example.com", "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(table.answer(q.to_wire(), lambda z, p: calls.append((z, p)))).rcode() == 5
    assert len(calls) == 1


def test_not_ready_is_servfail_inside_zones() -> None:
    t = Table.not_ready(SETTINGS)
    assert ask(t, "nginx.foowidgets.k8s").rcode() == dns.rcode.SERVFAIL
    assert ask(t, "foowidgets.k8s", "SOA").rcode() == dns.rcode.SERVFAIL
    assert ask(t, "www.example.com").rcode() == dns.rcode.REFUSED


def test_zone_transfer_and_odd_classes_refused(table: Table) -> None:
    assert ask(table, "foowidgets.k8s", "AXFR").rcode() == dns.rcode.REFUSED
    assert ask(table, "nginx.foowidgets.k8s", rdclass="CH").rcode() == dns.rcode.REFUSED


def test_merge_is_stable_deduped_with_min_ttl() -> None:
    a = ep("m.foowidgets.k8s", "A", "10.0.0.2", "10.0.0.1", ttl=120, source=ObjectRef("Service", "ns", "b"))
    b = ep("m.foowidgets.k8s", "A", "10.0.0.1", "10.0.0.3", ttl=60, source=ObjectRef("Service", "ns", "a"))
    for eps in ([a, b], [b, a]):
        r = ask(compile_table(SETTINGS, eps, 1), "m.foowidgets.k8s")
        assert [(rd.address, r.answer[0].ttl) for rd in r.answer[0]] == [
            ("10.0.0.1", 60),
            ("10.0.0.3", 60),
            ("10.0.0.2", 60),
        ]


def test_cname_conflicts_are_reported() -> None:
    a_ref, c1, c2 = (ObjectRef("Service", "ns", n) for n in ("a", "c1", "c2"))
    t = compile_table(
        SETTINGS,
        [
            ep("x.foowidgets.k8s", "CNAME", "y.example.com", source=c1),
            ep("x.foowidgets.k8s", "A", "10.0.0.1", source=a_ref),
            ep("z.foowidgets.k8s", "CNAME", "second.example.com", source=c2),
            ep("z.foowidgets.k8s", "CNAME", "first.example.com", source=c1),
        ],
        1,
    )
    assert data(ask(t, "x.foowidgets.k8s").answer) == ["x.foowidgets.k8s. 300 A 10.0.0.1"]
    assert data(ask(t, "z.foowidgets.k8s").answer) == ["z.foowidgets.k8s. 300 CNAME first.example.com."]
    assert sorted(ref.name for ref, _ in t.conflicts) == ["c1", "c2"]


def test_bad_targets_are_reported_and_the_rest_served() -> None:
    t = compile_table(SETTINGS, [ep("b.foowidgets.k8s", "A", "10.0.0.1", "not-an-ip", "10.0.0.300")], 1)
    assert data(ask(t, "b.foowidgets.k8s").answer) == ["b.foowidgets.k8s. 300 A 10.0.0.1"]
    assert len(t.conflicts) == 2 and all(ref == SVC for ref, _ in t.conflicts)


def test_incremental_compile_matches_a_fresh_one(table: Table) -> None:
    changed = [
        *BASE[1:],
        ep("nginx.foowidgets.k8s", "A", "172.18.200.102"),
        ep("alias.foowidgets.k8s", "A", "10.9.9.9", source=ObjectRef("Service", "a", "a")),
    ]
    fresh = compile_table(SETTINGS, changed, 2000000001)
    again = compile_table(SETTINGS, changed, 2000000001, previous=table)
    for name, rtype in [
        ("nginx.foowidgets.k8s", "A"),
        ("alias.foowidgets.k8s", "A"),
        ("v6.foowidgets.k8s", "AAAA"),
        ("foowidgets.k8s", "SOA"),
        ("nope.foowidgets.k8s", "A"),
        ("x.wild.foowidgets.k8s", "A"),
    ]:
        q = dns.message.make_query(name, rtype).to_wire()
        assert fresh.answer(q) == again.answer(q), name
    assert fresh.records == again.records and fresh.conflicts == again.conflicts


def test_serial_is_the_hour_shared_by_every_server_and_never_goes_back() -> None:
    hour = 1_796_000_400  # a multiple of 3600
    assert soa_serial(0, hour + 0.5) == soa_serial(0, hour + 3599) == hour
    assert soa_serial(0, hour + 3600) == hour + 3600
    assert soa_serial(hour + 3600, hour) == hour + 3600  # the clock stepped back
    assert 1_700_000_000 < soa_serial() < 2**32
    assert next_serial_in(hour + 3599.5) == 0.5 and next_serial_in(hour) == 3600


def test_oversized_rrsets_keep_what_fits_and_set_tc() -> None:
    addresses = [f"2001:db8::{i:x}" for i in range(1, 4001)]
    t = compile_table(SETTINGS, [ep("pods.foowidgets.k8s", "AAAA", *addresses)], 1)
    query = dns.message.make_query(
        "pods.foowidgets.k8s", "AAAA", use_edns=0, options=[dns.edns.ECSOption("2001:db8::", 56)]
    )
    wire = t.answer(query.to_wire())
    assert len(wire) <= 65535
    r = dns.message.from_wire(wire)
    assert r.flags & dns.flags.TC and 2000 < len(r.answer[0]) < 4000


def test_long_txt_and_huge_ttl() -> None:
    t = compile_table(SETTINGS, [ep("t.foowidgets.k8s", "TXT", "x" * 600, ttl=2**40)], 1)
    r = ask(t, "t.foowidgets.k8s", "TXT")
    assert [len(s) for s in r.answer[0][0].strings] == [255, 255, 90] and r.answer[0].ttl == 2**31 - 1


def test_one_apex_per_zone_and_no_foreign_soa() -> None:
    settings = Settings(
        zones=("foowidgets.k8s", "foowidgets.k8s", "gb.foowidgets.k8s"),
        gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
        cluster_geotag="us-buf",
    )
    t = compile_table(settings, [ep("foowidgets.k8s", "SOA", "a. b. 1 2 3 4 5")], 7)
    for zone in ("foowidgets.k8s", "gb.foowidgets.k8s"):
        (soa,) = ask(t, zone, "SOA").answer
        assert len(soa) == 1 and soa[0].serial == 7
    assert [ref for ref, _ in t.conflicts] == [SVC]


ALL_TYPES = ("A", "AAAA", "TXT", "MX", "SRV", "NS", "SOA", "CNAME", "ANY")


def _same_answers(fresh: Table, patched: Table, more: frozenset[str] = frozenset(),
                  types: tuple[str, ...] = ALL_TYPES) -> None:
    names = {"foowidgets.k8s", "gb.foowidgets.k8s", "example.org", "nope.foowidgets.k8s",
             "x.wild.foowidgets.k8s", "ent.foowidgets.k8s", "x.sub.foowidgets.k8s",
             "new.foowidgets.k8s", "app.gb.foowidgets.k8s", *more}
    names |= {e.name.replace("*", "x") for e in BASE}
    assert set(fresh._nodes) == set(patched._nodes), "the same names and empty non-terminals"
    ecs = [dns.edns.ECSOption("192.0.2.0", 24)]
    for name in sorted(names):
        for rtype in types:
            for kw in ({}, {"use_edns": 0, "options": ecs}):
                q = dns.message.make_query(name, rtype, **kw).to_wire()
                assert fresh.answer(q) == patched.answer(q), (name, rtype)
    assert fresh.records == patched.records
    assert sorted(fresh.conflicts, key=str) == sorted(patched.conflicts, key=str)


def test_recompiler_patches_changed_names_and_matches_a_full_compile() -> None:
    nyc = ObjectRef("Gslb", "demo", "app")
    by_key: dict[str, tuple[Endpoint, ...]] = {f"service/k/{i}": (e,) for i, e in enumerate(BASE)}
    by_key["gslb/demo/app"] = (ep("app.gb.foowidgets.k8s", "A", "10.2.1.167", ttl=30, geotag="us-buf",
                                  source=nyc, strategy=Strategy("failover", "us-buf")),)
    by_key["peer/us-nyc"] = (ep("app.gb.foowidgets.k8s", "A", "10.2.1.98", ttl=30, geotag="us-nyc",
                                source=None),)
    by_key["peer/eu"] = (ep("app.gb.foowidgets.k8s", "A", "10.2.1.99", ttl=30, geotag="us-nyc", source=None),)
    other = ObjectRef("Service", "a", "a")
    steps: list[tuple[dict[str, tuple[Endpoint, ...]], bool]] = [  # (change, patched without a full compile)
        ({"service/k/0": (ep("nginx.foowidgets.k8s", "A", "172.18.200.7"),)}, True),  # alias follows it
        ({"peer/us-nyc": (ep("app.gb.foowidgets.k8s", "A", "10.2.1.50", ttl=30, geotag="us-nyc",
                             source=None),)}, True),
        ({"peer/eu": ()}, True),  # a peer leaves; the name stays
        ({"service/k/1": (ep("v6.foowidgets.k8s", "TXT", "now text"),)}, True),
        ({"service/k/1": ()}, True),  # delete: the name goes
        ({"service/x": (ep("nginx.foowidgets.k8s", "CNAME", "v6.foowidgets.k8s", source=other),)}, True),
        ({"service/y": (ep("alias.foowidgets.k8s", "A", "10.9.9.9", source=other),)}, True),  # CNAME loses
        ({"service/x": ()}, True),
        ({"service/k/5": (ep("*.wild.foowidgets.k8s", "A", "4.3.2.1"),)}, True),
        ({"service/k/10": (ep("ns.sub.foowidgets.k8s", "A", "8.8.8.8"),)}, False),  # glue below a delegation
        ({"service/new": (ep("new.foowidgets.k8s", "A", "1.1.1.1"),)}, True),
        ({"service/k/7": (ep("mail.foowidgets.k8s", "MX", "20 mx.foowidgets.k8s."),)}, True),
    ]
    rc = Recompiler(SETTINGS)
    serial = 2000000000
    _same_answers(compile_table(SETTINGS, [e for eps in by_key.values() for e in eps], serial),
                  rc.compile(by_key, serial))
    for change, patched in steps:
        by_key = {**by_key, **change}
        by_key = {k: v for k, v in by_key.items() if v}
        serial += 1
        full = rc.full
        table = rc.compile(by_key, serial)
        assert (rc.full == full) == patched, change
        _same_answers(compile_table(SETTINGS, [e for eps in by_key.values() for e in eps], serial), table)
        reply = ask(table, "nope.foowidgets.k8s")
        assert reply.authority[0][0].serial == serial


def test_patched_tables_equal_full_compiles_over_random_changes() -> None:
    """The invariant of the incremental compile: whatever sequence of changes (names created and
    deleted, CNAMEs, wildcards, conflicts, unparsable targets, GSLB names and their localtargets,
    peers), the patched table answers exactly as a full compile of the same Store."""
    import random

    rnd = random.Random(7)
    pool = ["a.foowidgets.k8s", "b.foowidgets.k8s", "x.y.z.foowidgets.k8s", "y.z.foowidgets.k8s",
            "*.z.foowidgets.k8s", "*.wild.foowidgets.k8s", "q.wild.foowidgets.k8s", "foowidgets.k8s",
            "c.example.org", "d.e.example.org", "app.gb.foowidgets.k8s", "localtargets-app.gb.foowidgets.k8s",
            "deep.ent.foowidgets.k8s", "alias.foowidgets.k8s", "ns.sub.foowidgets.k8s"]
    values = {"A": ["10.0.0.1", "10.0.0.2", "bad-ip"], "AAAA": ["2001:db8::1"], "TXT": ["t1", "t2"],
              "CNAME": [n for n in pool if "*" not in n] + ["out.example.com"], "SOA": ["a. b. 1 2 3 4 5"]}
    sources = [ObjectRef("Service", "ns", f"s{i}") for i in range(4)] + [None]
    strategy = Strategy("failover", "us-buf")

    def random_eps() -> tuple[Endpoint, ...]:
        eps = []
        for _ in range(rnd.choice((1, 1, 2))):
            name, rtype = rnd.choice(pool), rnd.choice(list(values))
            targets = rnd.sample(values[rtype], k=min(len(values[rtype]), rnd.choice((0, 1, 1, 2))))
            gslb = name.endswith("gb.foowidgets.k8s") and rtype == "A"
            eps.append(ep(name, rtype, *targets, ttl=rnd.choice((None, 30, 60)), source=rnd.choice(sources),
                          strategy=strategy if gslb and not name.startswith("local") else None,
                          geotag=rnd.choice(("us-buf", "us-nyc")) if gslb else ""))
        return tuple(eps)

    by_key: dict[str, tuple[Endpoint, ...]] = {f"service/k/{i}": (e,) for i, e in enumerate(BASE)}
    rc = Recompiler(SETTINGS)
    serial = 2000000000
    rc.compile(dict(by_key), serial)
    patched = 0
    for _ in range(150):
        for _ in range(rnd.choice((1, 1, 2, 3))):
            key = f"{rnd.choice(('service', 'gslb', 'peer'))}/{rnd.randrange(8)}"
            by_key[key] = () if rnd.random() < 0.3 else random_eps()
        by_key = {k: v for k, v in by_key.items() if v}
        serial += 1
        full = rc.full
        table = rc.compile(dict(by_key), serial)
        patched += rc.full == full
        fresh = compile_table(SETTINGS, [e for k in sorted(by_key) for e in by_key[k]], serial)
        names = frozenset(n.replace("*", "w") for n in pool)
        _same_answers(fresh, table, names, ("A", "TXT", "CNAME", "ANY"))
    assert patched > 100, "most changes are patched, not fully recompiled"


def test_a_key_changed_after_the_keys_were_taken_is_picked_up_next_time() -> None:
    """The compiler takes the changed keys, then the Store snapshot: a change in between is in the
    snapshot but not in the keys. It must show at the next compile (its key comes again), and the
    name index must follow it (a delete after it failed with a KeyError before)."""
    rc = Recompiler(SETTINGS)
    by_key = {"service/a": (ep("a.foowidgets.k8s", "A", "10.0.0.1"),)}
    rc.compile(dict(by_key), 1)
    by_key["service/b"] = (ep("b.foowidgets.k8s", "A", "10.0.0.2"),)  # changed after the keys were taken
    rc.compile(dict(by_key), 2, keys=set())
    table = rc.compile(dict(by_key), 3, keys={"service/b"})
    assert data(ask(table, "b.foowidgets.k8s").answer) == ["b.foowidgets.k8s. 300 A 10.0.0.2"]
    del by_key["service/b"]
    table = rc.compile(dict(by_key), 4, keys={"service/b"})
    assert ask(table, "b.foowidgets.k8s").rcode() == dns.rcode.NXDOMAIN
