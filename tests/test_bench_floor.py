"""The bench's floor for the grpc hop (bench/floor.py, deps/floor): behind the shipped grpc Corefile, real
CoreDNS answers every A question with the floor's one record, and every other type with no record."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.dataset import GSLB_ZONE, ZONE
from bench.env import Bed
from bench.throughput import backend_stack
from lab.dig import dig


@pytest.fixture
def floored(tmp_path: Path) -> Iterator[str]:
    """CoreDNS -> grpc -> grpc-floor; its DNS address."""
    with Bed(workdir=tmp_path) as bed:
        yield backend_stack(bed, bed.floor().grpc, "coredns-floor").address


def test_the_floor_answers_every_a_question_with_its_one_record(floored: str) -> None:
    for name in (f"s-1.{ZONE}", f"g-7.{GSLB_ZONE}", f"nothing.here.{ZONE}"):
        answer = dig(floored, name, "A")
        assert (answer.rcode, answer.values("A")) == ("NOERROR", ["10.0.0.1"]), name
    other = dig(floored, f"s-1.{ZONE}", "AAAA")
    assert (other.rcode, other.values()) == ("NOERROR", [])
