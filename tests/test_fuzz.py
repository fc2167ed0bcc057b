"""Malformed packets of any shape through `Table.answer` in-process: never an exception, never a hang,
and the reply is always either FORMERR/REFUSED/NOTIMP or a well-formed reply to the question asked.

Over 100,000 packets: random bytes of every awkward length, mutations of valid queries (bit flips,
truncation, spliced bytes, forged counts), compression loops and 64 KiB packets, plus a hypothesis
search over structured headers. Seeded, so a failure reproduces.
"""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.exception
import dns.message
import dns.opcode
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target
from backend.zone.table import Table, compile_table

SETTINGS = Settings(
    zones=("foowidgets.k8s",),
    gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
    cluster_geotag="us-buf",
    ext_gslb_clusters_geotags=("us-nyc",),
)
REF = ObjectRef("Service", "fuzz", "svc")
ENDPOINTS = [
    Endpoint("nginx.foowidgets.k8s", "A", (Target("172.18.200.101"),), None, REF),
    Endpoint("alias.foowidgets.k8s", "CNAME", (Target("nginx.foowidgets.k8s"),), 60, REF),
    Endpoint("*.wild.foowidgets.k8s", "AAAA", (Target("2001:db8::1"),), 60, REF),
    Endpoint("sub.foowidgets.k8s", "NS", (Target("ns.sub.foowidgets.k8s."),), 60, REF),
    Endpoint("t.foowidgets.k8s", "TXT", (Target("x" * 200),), 60, REF),
    Endpoint(
        "fe.gb.foowidgets.k8s",
        "A",
        (Target("10.2.1.167", "us-buf"), Target("10.2.1.98", "us-nyc")),
        30,
        ObjectRef("Gslb", "demo", "fe"),
        Strategy("geoip"),
    ),
]
ERRORS = {dns.rcode.FORMERR, dns.rcode.REFUSED, dns.rcode.NOTIMP}
RANDOM_PACKETS = 40_000
MUTATED_PACKETS = 60_000


def _table() -> Table:
    return compile_table(SETTINGS, ENDPOINTS, 1, lambda ip: "us-nyc" if ip.startswith("192.") else None)


def corpus() -> list[bytes]:
    names = [
        "nginx.foowidgets.k8s",
        "NGINX.FooWidgets.k8s",
        "alias.foowidgets.k8s",
        "a.b.wild.foowidgets.k8s",
        "x.sub.foowidgets.k8s",
        "t.foowidgets.k8s",
        "fe.gb.foowidgets.k8s",
        "nope.foowidgets.k8s",
        "foowidgets.k8s",
        "example.com",
        ".",
    ]
    out = []
    for i, name in enumerate(names):
        for rtype in ("A", "AAAA", "ANY", "SOA", "TXT", "CNAME", "NS"):
            out.append(dns.message.make_query(name, rtype).to_wire())
            opts = [dns.edns.ECSOption("192.0.2.0", 24), dns.edns.GenericOption(10, b"\x01" * 8)][: i % 3]
            out.append(
                dns.message.make_query(
                    name, rtype, use_edns=0, options=opts, want_dnssec=bool(i % 2)
                ).to_wire()
            )
        notify = dns.message.make_query(name, "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        out.append(notify.to_wire())
    return out


def check(table: Table, packet: bytes) -> None:
    """The property: a reply always, with our ID, QR set, and either an error rcode or a parsable
    reply that echoes the single question (what CoreDNS's reply check needs)."""
    reply = table.answer(packet)
    assert len(reply) >= 12, packet
    assert reply[2] & 0x80, packet
    if len(packet) >= 2:
        assert reply[:2] == packet[:2], packet
    rcode = reply[3] & 0xF
    assert rcode != dns.rcode.SERVFAIL, f"answer path failed on {packet!r}"
    if rcode in ERRORS:
        return
    try:
        msg = dns.message.from_wire(reply)
    except dns.exception.DNSException as e:
        raise AssertionError(f"unparsable reply {reply!r} to {packet!r}: {e}") from e
    assert len(msg.question) == 1, packet
    pos = 12
    while packet[pos]:
        pos += packet[pos] + 1
    assert reply[12 : pos + 5] == packet[12 : pos + 5], packet


def mutate(rng: random.Random, packet: bytes) -> bytes:
    b = bytearray(packet)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:
            b[pos % len(b)] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[pos % len(b)] = rng.choice(
                (0, 0x3F, 0x40, 0x80, 0xC0, 0xC0 | rng.randrange(64), 0xFF, rng.randrange(256))
            )
        elif op == 2:
            del b[pos:]
        elif op == 3:
            b[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 4 and len(b) >= 12:
            field = rng.choice((4, 6, 8, 10))
            b[field : field + 2] = struct.pack(">H", rng.choice((0, 1, 2, 3, 0xFFFF, rng.randrange(65536))))
        elif op == 5 and len(b) >= 4:
            b[2:4] = struct.pack(">H", rng.randrange(65536))
        elif op == 6 and b:
            end = rng.randrange(len(b) + 1)
            b[pos:pos] = b[min(pos, end) : max(pos, end)]
        else:
            del b[pos : pos + rng.randint(1, 3)]
    return bytes(b)


def test_random_packets_of_every_awkward_length() -> None:
    table = _table()
    rng = random.Random(20251127)
    for length in (0, 1, 2, 11, 12, 13, 16, 17, 255, 256, 512, 4096, 65535):
        for _ in range(20):
            check(table, rng.randbytes(length))
    for _ in range(RANDOM_PACKETS):
        header = struct.pack(
            ">HHHHHH",
            rng.randrange(65536),
            rng.randrange(65536) & 0x7FFF,
            rng.choice((1, 1, 1, 0, 2)),
            rng.randrange(3),
            rng.randrange(3),
            rng.randrange(3),
        )
        check(table, header + rng.randbytes(rng.randrange(300)))


def test_mutated_valid_queries() -> None:
    table = _table()
    rng = random.Random(4592)
    seeds = corpus()
    for packet in seeds:
        reply = table.answer(packet)
        assert reply[3] & 0xF != dns.rcode.FORMERR, packet  # the unmutated corpus is valid
        check(table, packet)
    for _ in range(MUTATED_PACKETS):
        check(table, mutate(rng, rng.choice(seeds)))


def test_compression_loops_and_huge_packets() -> None:
    table = _table()
    question = b"\x05nginx\x0afoowidgets\x03k8s\x00\x00\x01\x00\x01"
    head = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 1)
    self_loop = b"\xc0\x1d"  # the additional record's owner points at itself
    check(table, head + question + self_loop + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00")
    check(
        table, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    )  # loop in question
    check(table, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a" * 200 + b"\x00\x00\x01\x00\x01")
    big_opt = (
        b"\x00\x00\x29\x10\x00\x00\x00\x00\x00"
        + struct.pack(">H", 65000)
        + b"\x00\x0a"
        + struct.pack(">H", 64996)
        + b"\x00" * 64996
    )
    packet = head + question + big_opt
    check(table, packet[:65535])
    check(table, packet[: 65535 - 1])
    check(table, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 65000)
    many = (
        struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 65535)
        + question
        + b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00\x00" * 5000
    )
    check(table, many)


@settings(max_examples=3000, deadline=None, derandomize=True)
@given(
    flags=st.integers(0, 0xFFFF),
    counts=st.tuples(*[st.integers(0, 4)] * 4),
    labels=st.lists(st.binary(min_size=0, max_size=70), max_size=6),
    qtype=st.integers(0, 0xFFFF),
    qclass=st.sampled_from([1, 3, 255, 254, 0]),
    tail=st.binary(max_size=64),
)
def test_structured_headers(
    flags: int, counts: tuple[int, int, int, int], labels: list[bytes], qtype: int, qclass: int, tail: bytes
) -> None:
    name = b"".join(bytes([len(lb) & 0xFF]) + lb for lb in labels) + b"\x00"
    packet = struct.pack(">HHHHHH", 99, flags, *counts) + name + struct.pack(">HH", qtype, qclass) + tail
    check(TABLE, packet)


TABLE = _table()
