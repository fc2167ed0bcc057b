"""Probe annotations, one probe against real sockets, and the Prober's verdicts from its own process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from backend import metrics
from backend.config import GslbZone, Settings, parse_address_map
from backend.probes.check import check
from backend.probes.config import ProbeConfig, ProbeError, parse
from backend.probes.prober import Prober, ProbeTargets
from lab.proc import wait_for

HOST = "fe.gb.foowidgets.k8s"


def config(**kw: float) -> ProbeConfig:
    return ProbeConfig("http", 80, "/healthz", kw.get("interval", 0.2), int(kw.get("failures", 2)),
                       kw.get("timeout", 0.3))


def test_annotations_parse_into_a_config_or_a_clear_error() -> None:
    assert parse({}) is None
    c = parse({"coredns-gslb.io/probe": "http://{address}:80/healthz"})
    assert c == ProbeConfig("http", 80, "/healthz", 2.0, 2, 1.0)
    https = parse({"coredns-gslb.io/probe": "https://{address}/ready"})
    assert https == ProbeConfig("https", 443, "/ready", 2, 2, 1)
    tcp = parse({"coredns-gslb.io/probe": "tcp://{address}:443",
                 "coredns-gslb.io/probe-interval-seconds": "0.5", "coredns-gslb.io/probe-failures": "3"})
    assert tcp == ProbeConfig("tcp", 443, "/", 0.5, 3, 0.5)
    assert tcp.url("10.2.1.167") == "tcp://10.2.1.167:443"
    assert c is not None and c.url("fd00::1") == "http://[fd00::1]:80/healthz"
    bad = {
        "http://example.com/healthz": "the host must be {address}",
        "http://{address}.evil.example/": "the host must be {address}",
        "ftp://{address}/": "scheme 'ftp'",
        "tcp://{address}": "tcp probes are tcp://{address}:port",
        "http://{address}:99999/": "out of range",
        "{address}": "is not http://",
    }
    for template, why in bad.items():
        with pytest.raises(ProbeError, match=re.escape(why)):
            parse({"coredns-gslb.io/probe": template})
    for key, value in (("interval-seconds", "0"), ("interval-seconds", "x"), ("failures", "1.5"),
                       ("failures", "0"), ("timeout-seconds", "5")):
        with pytest.raises(ProbeError, match=re.escape(f"coredns-gslb.io/probe-{key}")):
            parse({"coredns-gslb.io/probe": "http://{address}/", f"coredns-gslb.io/probe-{key}": value})
    with pytest.raises(ProbeError, match=re.escape("without coredns-gslb.io/probe")):
        parse({"coredns-gslb.io/probe-failures": "3"})


def test_address_map_entries() -> None:
    assert parse_address_map(["10.2.1.167=127.0.8.67:8080", "10.2.1.98=127.0.8.68", "fd00::1=[::1]:81"]) == (
        ("10.2.1.167", "127.0.8.67", 8080), ("10.2.1.98", "127.0.8.68", None), ("fd00::1", "::1", 81))
    for bad in ("10.2.1.167", "host=127.0.0.1", "10.2.1.167=name:80", "10.2.1.167=127.0.0.1:0"):
        with pytest.raises(ValueError):
            parse_address_map([bad])


class Listener:
    """A loopback TCP listener on its own thread: `mode` answer (HTTP status), hang (accept, say
    nothing) or off (closed: connection refused). `seen` records Host headers."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.mode = "answer"
        self.seen: list[str] = []
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(512)
        self._held: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.mode == "hang":
                self._held.append(conn)
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            host = next((line.split(b":", 1)[1].strip().decode() for line in data.split(b"\r\n")
                         if line.lower().startswith(b"host:")), "")
            self.seen.append(host)
            conn.sendall(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.status)

    def close(self) -> None:
        self.sock.close()
        for c in self._held:
            c.close()


@pytest.fixture
def listener() -> Iterator[Callable[..., Listener]]:
    made: list[Listener] = []

    def make(status: int = 200) -> Listener:
        made.append(Listener(status))
        return made[-1]

    yield make
    for one in made:
        one.close()


def test_one_probe_passes_fails_and_times_out(listener: Callable[..., Listener]) -> None:
    ok, sick, hang = listener(200), listener(503), listener()
    hang.mode = "hang"
    c = config(timeout=0.3)
    assert asyncio.run(check(c, HOST, ("127.0.0.1", ok.port))) == ""
    assert ok.seen == [HOST], "the Gslb's host is the Host header"
    assert asyncio.run(check(c, HOST, ("127.0.0.1", sick.port))) == "HTTP 503"
    t0 = time.monotonic()
    assert asyncio.run(check(c, HOST, ("127.0.0.1", hang.port))) == "timeout after 0.3s"
    assert time.monotonic() - t0 < 2
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    assert "refused" in asyncio.run(check(c, HOST, ("127.0.0.1", port))).lower()
    tcp = ProbeConfig("tcp", 0, "/", 1, 1, 0.3)
    assert asyncio.run(check(tcp, HOST, ("127.0.0.1", hang.port))) == "", "tcp: a connection is a pass"


def targets(addresses: tuple[str, ...], c: ProbeConfig | None) -> ProbeTargets:
    """One Gslb's probe input as the GSLB engine gives it: nothing without a probe config."""
    return {HOST: (c, addresses)} if c is not None else {}


def until(check_: Callable[[], bool], what: str, timeout: float = 20) -> float:
    """Seconds until `check_()` holds (bounded, with what it waited for on failure)."""
    t0 = time.monotonic()
    wait_for(check_, what=what, timeout=timeout, interval=0.02)
    return time.monotonic() - t0


def test_prober_withdraws_after_failures_restores_after_successes_and_a_hang_delays_nothing_else(
        listener: Callable[..., Listener]) -> None:
    a, b, hang = listener(), listener(), listener()
    hang.mode = "hang"
    mapping = (("10.2.1.167", "127.0.0.1", a.port), ("10.2.1.98", "127.0.0.1", b.port),
               ("10.2.1.50", "127.0.0.1", hang.port))
    settings = Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
                        cluster_geotag="us-buf", probe_address_map=mapping)
    prober = Prober(settings)
    flips: list[frozenset[str]] = []
    prober.subscribe(flips.append)
    prober.start()
    try:
        c = config(interval=0.2, failures=2, timeout=0.5)
        prober.on_gslb("gslb/demo/fe", targets(("10.2.1.167", "10.2.1.50", "10.7.7.7"), c))
        prober.set_peer("us-nyc", {HOST: ["10.2.1.98"], "other.gb.foowidgets.k8s": ["10.9.9.9"]})
        until(lambda: prober.verdict(HOST, "10.2.1.98") is not None, "the targets taken up")
        assert prober.verdict(HOST, "10.2.1.167") is True, "a new target starts as served"
        assert prober.verdict("other.gb.foowidgets.k8s", "10.9.9.9") is None, "a host without a config"
        assert prober.verdict(HOST, "10.7.7.7") is None, "with an address map, unmapped means never contacted"
        until(lambda: prober.verdict(HOST, "10.2.1.50") is False, "the hanging target withdrawn")
        state = next(p for p in prober.report(HOST) if p["address"] == "10.2.1.50")
        assert state["last"] == "timeout after 0.5s" and state["verdict"] == "fail"
        # the hang held its slots, yet the other targets kept their cadence (0.2 s, not 0.5 s)
        checks = {p["address"]: p["checks"] for p in prober.report(HOST)}
        assert checks["10.2.1.167"] > 1.5 * checks["10.2.1.50"], checks
        assert prober.verdict(HOST, "10.2.1.167") is True and prober.verdict(HOST, "10.2.1.98") is True
        assert {p["connect"] for p in prober.report(HOST)} >= {f"127.0.0.1:{a.port}"}
        assert set(a.seen) == {HOST}

        a.status = 503
        until(lambda: prober.verdict(HOST, "10.2.1.167") is False, "HTTP 503 withdraws the target")
        a.status = 200
        until(lambda: prober.verdict(HOST, "10.2.1.167") is True, "two passes bring it back")

        b.mode = "off"
        b.close()
        took = until(lambda: prober.verdict(HOST, "10.2.1.98") is False, "the peer's target withdrawn")
        assert took < 5, took
        assert frozenset({HOST}) in flips
        prober.set_peer("us-nyc", {})
        until(lambda: prober.verdict(HOST, "10.2.1.98") is None, "a target nobody reports is forgotten")
        hang.mode = "answer"
        hang.close()
        again = listener()
        prober.on_gslb("gslb/demo/fe", targets(("10.2.1.167",), c))
        assert until(lambda: prober.verdict(HOST, "10.2.1.50") is None, "a local address gone: forgotten") < 5
        prober.on_gslb("gslb/demo/fe", targets(("10.2.1.167",), None))
        until(lambda: prober.verdict(HOST, "10.2.1.167") is None, "the annotation removed: nothing probed")
        assert again.seen == []
    finally:
        prober.stop()


def test_a_dead_prober_process_is_restarted_and_verdicts_stay_as_last_known_meanwhile(
        listener: Callable[..., Listener]) -> None:
    a = listener()
    a.status = 503
    settings = Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),),
                        cluster_geotag="us-buf", probe_address_map=(("10.2.1.167", "127.0.0.1", a.port),))
    prober = Prober(settings)
    prober.on_gslb("gslb/demo/fe", targets(("10.2.1.167",), config(interval=0.2, failures=2, timeout=0.5)))
    prober.start()
    try:
        until(lambda: prober.verdict(HOST, "10.2.1.167") is False, "HTTP 503 withdraws the target")
        first = prober.pid
        assert first is not None and first != os.getpid(), "the probes run in a process of their own"
        restarts = metrics.PROBE_RESTARTS._value.get()
        os.kill(first, signal.SIGKILL)
        until(lambda: prober.pid not in (None, first), "the prober process started again")
        assert metrics.PROBE_RESTARTS._value.get() == restarts + 1
        assert prober.verdict(HOST, "10.2.1.167") is False
        report = prober.report(HOST)  # a process that started from "pass" would say so for two probes
        assert [p["verdict"] for p in report] == ["fail"], "the new process resumes the last known verdict"
        a.status = 200
        until(lambda: prober.verdict(HOST, "10.2.1.167") is True, "two passes from the new process")
        assert next(p for p in prober.report(HOST))["last"] == "ok"
        pid = prober.pid
    finally:
        prober.stop()
    assert pid is not None and not os.path.exists(f"/proc/{pid}"), "stop() ends the prober process"
    assert prober.verdict(HOST, "10.2.1.167") is True
    [known] = prober.report(HOST)  # no process to ask: explain still gets the known verdict
    assert known["verdict"] == "pass" and known["last"] == "unknown: the prober process is restarting", known
