"""Malformed packets of any shape through `Table.answer` in-process: never an exception, never a hang,
and the reply is always either FORMERR/REFUSED/NOTIMP or a well-formed reply to the question asked.

Over 100,000 packets: random bytes of every awkward length, mutations of valid queries (bit flips,
truncation, spliced bytes, forged counts), compression loops and 64 KiB packets, plus a hypothesis
search over structured headers. Seeded, so a failure reproduces. The generators and the property live
in fuzz/dns.py, whose `make fuzz` run sends a million such packets through the gRPC handler.
"""

from __future__ import annotations

import random
import struct

import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.zone.lookup import Table
from fuzz.dns import corpus, mutate, problem, random_packet, structured, table

RANDOM_PACKETS = 40_000
MUTATED_PACKETS = 60_000


def check(answers: Table, packet: bytes) -> None:
    why = problem(packet, answers.answer(packet))
    assert why is None, f"{why} for {packet!r}"


def test_random_packets_of_every_awkward_length() -> None:
    answers = table()
    rng = random.Random(20251127)
    for length in (0, 1, 2, 11, 12, 13, 16, 17, 255, 256, 512, 4096, 65535):
        for _ in range(20):
            check(answers, rng.randbytes(length))
    for _ in range(RANDOM_PACKETS):
        check(answers, random_packet(rng))


def test_mutated_valid_queries() -> None:
    answers = table()
    rng = random.Random(4592)
    seeds = corpus()
    for packet in seeds:
        reply = answers.answer(packet)
        assert reply[3] & 0xF != dns.rcode.FORMERR, packet  # the unmutated corpus is valid
        check(answers, packet)
    for _ in range(MUTATED_PACKETS):
        check(answers, mutate(rng, rng.choice(seeds)))


def test_compression_loops_and_huge_packets() -> None:
    answers = table()
    question = b"\x05nginx\x0afoowidgets\x03k8s\x00\x00\x01\x00\x01"
    head = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 1)
    self_loop = b"\xc0\x1d"  # the additional record's owner points at itself
    check(answers, head + question + self_loop + b"\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00")
    check(
        answers, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    )  # loop in question
    check(answers, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x01a" * 200 + b"\x00\x00\x01\x00\x01")
    big_opt = (
        b"\x00\x00\x29\x10\x00\x00\x00\x00\x00"
        + struct.pack(">H", 65000)
        + b"\x00\x0a"
        + struct.pack(">H", 64996)
        + b"\x00" * 64996
    )
    packet = head + question + big_opt
    check(answers, packet[:65535])
    check(answers, packet[: 65535 - 1])
    check(answers, struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x3f" + b"a" * 65000)
    many = (
        struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 65535)
        + question
        + b"\xc0\x0c\x00\x10\x00\x01\x00\x00\x00\x00\x00\x00" * 5000
    )
    check(answers, many)


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
    check(TABLE, structured(flags, counts, labels, qtype, qclass, tail))


TABLE = table()
