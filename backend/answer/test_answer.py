"""The answer process with a real child and gRPC client, the backend's side in-process: unsynced
UNAVAILABLE, the Store's content and changes answered, NOTIFY and figures relayed, a SIGKILLed child
restarted on the same port with the whole content, a drain and stop. (Through CoreDNS and the
apiserver: tests/test_answer_process.py.)"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading

import dns.message
import dns.opcode
import dns.rcode
import grpc
import pytest

from backend import metrics
from backend.answer.process import AnswerProcess
from backend.config import Settings
from backend.model import Endpoint, Store, Target
from backend.server import DnsServer
from backend.test_server import query
from lab.proc import wait_for_async

SETTINGS = Settings(zones=("foowidgets.k8s",), grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0",
                    admin_listen="", shutdown_drain_seconds=0.5)
NAME = "nginx.foowidgets.k8s"


def a_record(address: str) -> tuple[Endpoint, ...]:
    return (Endpoint(NAME, "A", (Target(address),)),)


async def addresses(port: int) -> list[str] | str:
    """NAME's A addresses from the gRPC server, or the gRPC status code's name."""
    try:
        reply = await query(port, dns.message.make_query(NAME, "A").to_wire())
    except grpc.aio.AioRpcError as e:
        return e.code().name
    return [rd.address for rrset in reply.answer for rd in rrset]


async def answers(port: int, want: list[str]) -> bool:
    return await addresses(port) == want


def queries(text: str) -> float:
    series = 'coredns_gslb_queries_total{qtype="A",rcode="NOERROR",zone="foowidgets.k8s"}'
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def scenario() -> None:
    store, synced = Store(), threading.Event()
    server = DnsServer(SETTINGS)
    notified: list[str] = []
    server.on_notify(lambda zone, _peer: notified.append(zone))
    answer = AnswerProcess(SETTINGS, store, synced, server.notified)
    server.answer_elsewhere(answer)
    await server.start()
    port = server.grpc_port
    try:
        store.replace("service/default/nginx", a_record("1.2.3.4"))
        await wait_for_async(lambda: answer.pid is not None, what="the answer process started", timeout=10)
        assert await addresses(port) == "UNAVAILABLE"  # the Store is not synced: nothing served from it
        synced.set()
        await wait_for_async(lambda: answers(port, ["1.2.3.4"]), what="1.2.3.4 after the first sync",
                             timeout=10)
        store.replace("service/default/nginx", a_record("5.6.7.8"))
        await wait_for_async(lambda: answers(port, ["5.6.7.8"]), what="the change answered", timeout=10)

        notify = dns.message.make_query("foowidgets.k8s", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        assert (await query(port, notify.to_wire())).rcode() == dns.rcode.NOERROR
        await wait_for_async(lambda: notified == ["foowidgets.k8s"], what="the NOTIFY relayed", timeout=5)
        await wait_for_async(lambda: queries(metrics.exposition().decode()) >= 2,
                             what="the child's query counts on /metrics", timeout=5)
        before = queries(metrics.exposition().decode())

        first = answer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await wait_for_async(lambda: answer.pid not in (None, first), what="the answer process restarted",
                             timeout=10)
        store.replace("service/default/nginx", a_record("9.9.9.9"))  # the new child has it all
        await wait_for_async(lambda: answers(port, ["9.9.9.9"]), what="answers from the new child",
                             timeout=10)
        text = metrics.exposition().decode()
        assert "coredns_gslb_answer_process_restarts_total 1.0" in text
        assert queries(text) >= before, "counters never go back across a restart"
        assert "coredns_gslb_loop_lag_seconds_count" in text
        last = answer.pid
    finally:
        await server.stop(1)
    assert last is not None
    with pytest.raises(ProcessLookupError):
        os.kill(last, 0)
    assert await addresses(port) == "UNAVAILABLE"  # nothing listens: the port is closed


def test_the_answer_process_answers_relays_and_restarts(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("_remote", "_base", "_current"):  # this pytest process's own figures afterwards
        monkeypatch.setattr(metrics.ANSWER, name, getattr(metrics.ANSWER, name))
    asyncio.run(scenario())
