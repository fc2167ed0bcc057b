"""DNS packets through the gRPC handler (`DnsServer.handle`): `python -m fuzz dns [--packets N] [--seed S]`.

Random headers with random bodies, structured queries with random labels, types, classes and tails,
and mutations of valid queries (bit flips, truncation, spliced bytes, forged counts), a million by
default. The property for every packet: a reply, with the request's ID and QR set, that is either an
error rcode or a parsable reply echoing the one question (what CoreDNS's reply check needs); never an
exception, never the answer path's SERVFAIL safety net. The generators and the property are shared
with tests/test_fuzz.py, the short seeded run inside `make test`.
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import struct
import time
from collections import Counter
from collections.abc import Callable

import dns.edns
import dns.exception
import dns.message
import dns.opcode
import dns.rcode

from backend.config import GslbZone, Settings
from backend.model import Endpoint, ObjectRef, Strategy, Target
from backend.server import DnsServer
from backend.zone.build import compile_table
from backend.zone.lookup import Table

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
PACKETS = 1_000_000
RSS_GROWTH_LIMIT = 64 << 20  # after the first tenth: lazy per-length answers are filled by then
Handler = Callable[[bytes], bytes]


def table() -> Table:
    return compile_table(SETTINGS, ENDPOINTS, 1, lambda ip: "us-nyc" if ip.startswith("192.") else None)


def corpus() -> list[bytes]:
    """Valid queries (and NOTIFYs) for names of every kind the table holds, with and without EDNS."""
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


def problem(packet: bytes, reply: bytes) -> str | None:
    """What is wrong with `reply` as the answer to `packet`, or None: it must carry our ID and QR, and
    be an error rcode or a parsable reply that echoes the single question (CoreDNS's reply check)."""
    if len(reply) < 12 or not reply[2] & 0x80:
        return "reply shorter than a header or without QR"
    if len(packet) >= 2 and reply[:2] != packet[:2]:
        return "reply ID differs from the request's"
    rcode = reply[3] & 0xF
    if rcode == dns.rcode.SERVFAIL:
        return "answer path failed (SERVFAIL)"
    if rcode in ERRORS:
        return None
    try:
        msg = dns.message.from_wire(reply)
    except dns.exception.DNSException as e:
        return f"unparsable reply {reply!r}: {e}"
    if len(msg.question) != 1:
        return "reply does not hold exactly one question"
    pos = 12
    while packet[pos]:
        pos += packet[pos] + 1
    if reply[12 : pos + 5] != packet[12 : pos + 5]:
        return "reply question differs from the request's"
    return None


def mutate(rng: random.Random, packet: bytes) -> bytes:
    """One to four edits: bit flips, special bytes, truncation, random or repeated splices, forged counts."""
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


def random_packet(rng: random.Random) -> bytes:
    """A query-shaped header (QR clear, mostly one question, small counts) and up to 300 random bytes."""
    header = struct.pack(
        ">HHHHHH",
        rng.randrange(65536),
        rng.randrange(65536) & 0x7FFF,
        rng.choice((1, 1, 1, 0, 2)),
        rng.randrange(3),
        rng.randrange(3),
        rng.randrange(3),
    )
    return header + rng.randbytes(rng.randrange(300))


def structured(
    flags: int, counts: tuple[int, int, int, int], labels: list[bytes], qtype: int, qclass: int, tail: bytes
) -> bytes:
    """A header, a question built from `labels` (lengths as given, so over-long labels stay wrong), a tail."""
    name = b"".join(bytes([len(lb) & 0xFF]) + lb for lb in labels) + b"\x00"
    return struct.pack(">HHHHHH", 99, flags, *counts) + name + struct.pack(">HH", qtype, qclass) + tail


def random_structured(rng: random.Random) -> bytes:
    labels = [rng.randbytes(rng.choice((0, 1, 3, 5, 63, 64, 70))) for _ in range(rng.randrange(7))]
    return structured(
        rng.randrange(65536),
        (rng.randrange(5), rng.randrange(5), rng.randrange(5), rng.randrange(5)),
        labels,
        rng.choice((1, 28, 255, 41, 251, 252, 253, 6, rng.randrange(65536))),
        rng.choice((1, 3, 255, 254, 0)),
        rng.randbytes(rng.randrange(65)),
    )


class _Errors(logging.Handler):
    """Counts ERROR records: `Table.resolve` logs every exception it turns into SERVFAIL."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.first: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.first) < 3:
            self.first.append(self.format(record))


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / (1 << 20)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz.dns", description=__doc__)
    ap.add_argument("--packets", type=int, default=PACKETS)
    ap.add_argument("--seed", type=int, default=20261201)
    args = ap.parse_args(argv)
    server = DnsServer(SETTINGS)
    server.set_table(table())
    errors = _Errors()
    logging.getLogger("backend").addHandler(errors)
    rng = random.Random(args.seed)
    seeds = corpus()
    kinds: Counter[str] = Counter()
    rcodes: Counter[int] = Counter()
    wrong: list[str] = []
    unhandled: list[str] = []
    def mutated(r: random.Random) -> bytes:
        return mutate(r, r.choice(seeds))

    generators = (("random", random_packet), ("structured", random_structured), ("mutated", mutated),
                  ("mutated", mutated))
    started, cpu = time.monotonic(), time.process_time()
    baseline = 0.0
    for i in range(args.packets):
        if i == args.packets // 10:
            baseline = _rss_mib()
        kind, make = generators[i % len(generators)]
        kinds[kind] += 1
        packet = make(rng)
        try:
            reply = server.handle(packet)
        except Exception as e:  # the property under test: handle never raises
            unhandled.append(f"{type(e).__name__}: {e} on {packet!r}")
            continue
        rcodes[reply[3] & 0xF] += 1
        why = problem(packet, reply)
        if why is not None:
            wrong.append(f"{why} for {packet!r}")
        if (i + 1) % 100_000 == 0:
            elapsed = time.monotonic() - started
            print(f"  {i + 1:>9,} packets  {elapsed:6.1f} s  RSS {_rss_mib():.0f} MiB", flush=True)
    seconds, cpu = time.monotonic() - started, time.process_time() - cpu
    logging.getLogger("backend").removeHandler(errors)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth = _rss_mib() - baseline
    bounded = growth * (1 << 20) <= RSS_GROWTH_LIMIT
    print(f"dns: {args.packets:,} packets in {seconds:.1f} s ({cpu:.1f} s CPU, {args.packets / cpu:,.0f} per "
          f"CPU second), seed {args.seed}: " + ", ".join(f"{n:,} {k}" for k, n in sorted(kinds.items())))
    print("  rcodes: " + ", ".join(f"{dns.rcode.to_text(r)} {n:,}" for r, n in sorted(rcodes.items())))
    print(f"  wrong replies: {len(wrong)}, unhandled exceptions: {len(unhandled)}, "
          f"exceptions caught by the answer path: {errors.count}")
    print(f"  peak RSS {peak:.0f} MiB; RSS growth after the first tenth {growth:+.1f} MiB "
          f"({'bounded' if bounded else 'NOT bounded'}: limit {RSS_GROWTH_LIMIT >> 20} MiB)")
    for line in (wrong[:5] + unhandled[:5] + errors.first):
        print(f"  ! {line[:300]}")
    return 0 if not wrong and not unhandled and not errors.count and bounded else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
