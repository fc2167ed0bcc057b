"""The builder: what a compiled table holds (the zones' own records, merges, conflicts, the serial) and
that an incremental compile or a patch answers exactly as a full compile."""

from __future__ import annotations

import dns.edns
import dns.message
import dns.rcode

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy
from backend.zone.build import Recompiler, compile_table, next_serial_in, soa_serial
from backend.zone.lookup import Table
from backend.zone.test_lookup import BASE, SETTINGS, SVC, ask, data, ep


def test_apex_soa_and_ns() -> None:
    table = compile_table(SETTINGS, BASE, 2000000000)
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


def test_incremental_compile_matches_a_fresh_one() -> None:
    table = compile_table(SETTINGS, BASE, 2000000000)
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
    assert fresh.names() == patched.names(), "the same names and empty non-terminals"
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
    peers), the patched table answers exactly as a full compile of the same Store; and a table, once
    handed out, answers the same after later patches (they share its nodes)."""
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
    names = frozenset(n.replace("*", "w") for n in pool)
    earlier: list[tuple[Table, Table]] = []  # (a full compile, the patched table) of earlier steps
    for step in range(150):
        for _ in range(rnd.choice((1, 1, 2, 3))):
            key = f"{rnd.choice(('service', 'gslb', 'peer'))}/{rnd.randrange(8)}"
            by_key[key] = () if rnd.random() < 0.3 else random_eps()
        by_key = {k: v for k, v in by_key.items() if v}
        serial += step % 10 == 0  # the hourly serial: most patches keep it
        full = rc.full
        table = rc.compile(dict(by_key), serial)
        patched += rc.full == full
        fresh = compile_table(SETTINGS, [e for k in sorted(by_key) for e in by_key[k]], serial)
        _same_answers(fresh, table, names, ("A", "TXT", "CNAME", "ANY"))
        earlier.append((fresh, table))
    for fresh, table in earlier[::15]:
        _same_answers(fresh, table, names, ("A", "CNAME"))
    assert patched > 100, "most changes are patched, not fully recompiled"


def test_a_key_changed_after_the_keys_were_taken_is_picked_up_next_time() -> None:
    """The compiler takes the changed keys, then the Store snapshot: a change in between is in the
    snapshot but not in the keys. It must show at the next compile (its key comes again), and the
    name index must follow it (a delete after it failed with a KeyError before)."""
    rc = Recompiler(SETTINGS)
    by_key = {"service/a": (ep("a.foowidgets.k8s", "A", "10.0.0.1"),)}
    assert rc.reads_all
    rc.compile(dict(by_key), 1)
    assert not rc.reads_all  # from now on the compiler snapshots only the changed keys (Store.snapshot)
    by_key["service/b"] = (ep("b.foowidgets.k8s", "A", "10.0.0.2"),)  # changed after the keys were taken
    rc.compile(dict(by_key), 2, keys=set())
    table = rc.compile({"service/b": by_key["service/b"]}, 3, keys={"service/b"})
    assert data(ask(table, "b.foowidgets.k8s").answer) == ["b.foowidgets.k8s. 300 A 10.0.0.2"]
    del by_key["service/b"]
    table = rc.compile({}, 4, keys={"service/b"})
    assert ask(table, "b.foowidgets.k8s").rcode() == dns.rcode.NXDOMAIN
    assert data(ask(table, "a.foowidgets.k8s").answer) == ["a.foowidgets.k8s. 300 A 10.0.0.1"]


def test_an_alias_follows_what_its_chain_reads_when_the_serial_stays() -> None:
    """Within the hour the serial stays, and a patch redoes only the CNAMEs whose chain reads a
    changed name: its target, a wildcard that answers for it, a name created where it pointed."""
    by_key = {"service/w": (ep("*.wild.foowidgets.k8s", "A", "10.0.0.1"),),
              "service/a": (ep("alias.foowidgets.k8s", "CNAME", "q.wild.foowidgets.k8s"),),
              "service/b": (ep("late.foowidgets.k8s", "CNAME", "x.later.foowidgets.k8s"),),
              "service/c": (ep("other.foowidgets.k8s", "A", "10.0.0.9"),)}
    rc = Recompiler(SETTINGS)
    steps = [{"service/c": (ep("other.foowidgets.k8s", "A", "10.0.0.8"),)},  # read by no alias
             {"service/w": (ep("*.wild.foowidgets.k8s", "A", "10.0.0.2"),)},  # the wildcard answering
             {"service/x": (ep("y.later.foowidgets.k8s", "A", "10.0.0.3"),)},  # the target's parent appears
             {"service/x2": (ep("*.later.foowidgets.k8s", "A", "10.0.0.4"),)},  # then a wildcard there
             {"service/q": (ep("q.wild.foowidgets.k8s", "A", "10.0.0.5"),)},  # the target itself
             {"service/q": (), "service/x": ()}]
    rc.compile(dict(by_key), 7)
    for change in steps:
        by_key = {k: v for k, v in {**by_key, **change}.items() if v}
        full = rc.full
        table = rc.compile(dict(by_key), 7, keys=set(change))
        assert rc.full == full, change
        _same_answers(compile_table(SETTINGS, [e for k in sorted(by_key) for e in by_key[k]], 7), table,
                      frozenset({"alias.foowidgets.k8s", "late.foowidgets.k8s", "q.wild.foowidgets.k8s"}))
