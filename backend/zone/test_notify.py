"""NOTIFY through the table: acknowledged and called back for served zones only."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode

from backend.zone.build import compile_table
from backend.zone.test_lookup import BASE, SETTINGS


def test_notify_calls_back_for_served_zones() -> None:
    table = compile_table(SETTINGS, BASE, 2000000000)
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

