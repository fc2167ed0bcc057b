"""Steady churn on a loaded backend: does the answer path hold while the control work never stops?

The scale part's 10,000 Services + 10,000 Gslbs (`scale.load`) plus what the churn plays with: Deployments
(kwok runs their Pods) behind Gslbs, Services with a GSLB host whose Gslb comes and goes. Then, for the
given time, `rate` changes a second of every kind a user makes (see `KINDS`), a `/metrics` scrape every
second and dnsperf at a fixed rate (25% of (b)'s peak by default); then the same dnsperf with no churn,
the control. Each change is timed from just before its API write to the first answer through CoreDNS
that shows it; at the end every name the churn touched is checked against what the API holds. After
each of the two, the same dnsperf for a fifth of the time against CoreDNS -> grpc -> `grpc-floor`
(bench/floor.py) with the churn going on or not: the tail any upstream of the grpc plugin gets on these
cores under the same control work, beside ours.

The bench's own process shares the two cores it measures, so its polls are cheap (`bench.lookup`) and
spaced by the time already waited (`poll_interval`): a change is seen at most 10 ms or 10 % of its
time late, whichever is more, plus one query's round trip.

The Services the churn creates bring their own ClusterIP (`free_cluster_ips`): kube-apiserver picks
one for a Service under a single lock, whose hold grows with the number of Services, and at 12,000 on
the two shared cores it picks fewer a second than the churn creates, so every Service write (deletes
wait on the same lock) queued for seconds. What a picked ClusterIP costs is timed apart, before the
churn (`service_create_dynamic_cluster_ip`).
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from backend.metrics import LAG_WINDOW
from bench import dataset, dnsperf
from bench.env import Bed
from bench.lookup import Lookup
from bench.objects import (
    Api,
    Obj,
    deployment,
    dns_endpoint,
    endpoint_slice,
    free_cluster_ips,
    gslb,
    pin_cluster_ips,
    service,
)
from bench.procstat import (
    core_shares,
    cpu_by_process,
    cpu_of,
    loadavg,
    machine_busy_seconds,
    mib,
    rss_by_process,
    spent,
    total_mib,
)
from bench.profile import Sampler
from bench.profile import summary as summary_rows
from bench.scale import NS, Loaded, addresses, lb_ip, load, summary, wait_quiet
from bench.throughput import backend_stack
from lab.kube import CONTROL_PLANE
from lab.proc import wait_for

KINDS = {  # kind: share of the changes
    "lb_address": 30,  # a Service's LoadBalancer address patched
    "gslb_health": 20,  # a Gslb's only endpoint unready / ready again (what scaling to 0 does to its slice)
    "deployment": 5,  # a Deployment behind a Gslb scaled to 0 and back (kube controllers + kwok)
    "service": 15,  # an annotated Service created / deleted
    "dnsendpoint": 15,  # a DNSEndpoint created / deleted
    "gslb": 15,  # a Gslb created / deleted
}
DEPLOYMENTS = 20
# py-spy's samples a second: at its default 200 it took 0.68-0.77 of a core in each phase (20:46 run,
# `cpu_share_by_process`), more than the backend and CoreDNS together; 25 still gives ~1,500 a minute
PROFILE_RATE = 25
SPARE = 2000  # names the create/delete kinds cycle through, per kind (at most n / 5)
CHANGE_TIMEOUT = 10.0
POLL = 0.01  # `poll_interval`: the first polls' interval,
POLL_SHARE = 0.1  # then this share of the time waited,
POLL_MAX = 0.2  # at most this (from 2 s on)
SETTLE_TIMEOUT = 60.0
FLOOR_SHARE = 0.2  # the floor's phases: this share of the churn's time each
LOOP_GAUGES = {"lag": "coredns_gslb_loop_lag_max_seconds", "held": "coredns_gslb_loop_held_max_seconds"}
GC = re.compile(r'^coredns_gslb_gc_pause_seconds_(bucket|sum|count)'
                r'\{generation="(\d)"(?:,le="([^"]+)")?\} (\S+)$', re.M)
STALLS = re.compile(r'^coredns_gslb_loop_stall_seconds_total\{cause="(\w+)"\} (\S+)$', re.M)
DNSPERF_FIGURES = ("qps", "sent", "lost", "p50_ms", "p99_ms", "p999_ms", "max_ms", "rcodes", "seconds")
COUNTED = ("coredns_gslb_loop_stall_seconds_total{", "coredns_gslb_gc_pause_seconds_")  # STALLS', GC's lines
DNSENDPOINT_CRD = Path(__file__).resolve().parents[1] / "k8s" / "crds" / "dnsendpoint.yaml"


def poll_interval(waited: float) -> float:
    """Seconds to wait before asking again, `waited` seconds after the write was acknowledged: POLL
    until 10 x POLL, then POLL_SHARE of the time waited, at most POLL_MAX. The answer that shows a
    change is seen at most max(10 ms, 10 % of the time it took) late (plus a query's round trip), and
    a change that takes seconds (a Deployment through kube's controllers and kwok) costs ~40 queries
    to CoreDNS and the backend, not the ~300 a fixed 10 ms would (queries the control phase has not)."""
    return min(POLL_MAX, max(POLL, POLL_SHARE * waited))


@dataclass
class Want:
    """What one name must answer once the churn has settled: addresses, or None for NXDOMAIN."""

    name: str
    addresses: list[str] | None
    healthy_only: bool = False  # a GSLB host: only "has addresses" counts (the strategy picks which)

    def holds(self, lookup: Lookup) -> bool:
        got = lookup.addresses(self.name)
        if self.addresses is None:
            return got is None
        got = got or []  # NXDOMAIN has no addresses either
        return bool(got) == bool(self.addresses) if self.healthy_only else got == self.addresses


@dataclass
class Churn:
    """The churn's own record of the API state it made: one writer, so what it wrote is what holds."""

    api: Api
    lookup: Lookup  # CoreDNS's answers, asked cheaply
    up: Loaded
    spare: int
    cluster_ips: list[str]  # the created Services' own (`free_cluster_ips`), by k
    rnd: random.Random = field(default_factory=lambda: random.Random(12))
    generation: int = 0
    healthy: dict[int, bool] = field(default_factory=dict)
    replicas: dict[int, int] = field(default_factory=dict)
    exists: dict[tuple[str, int], bool] = field(default_factory=dict)  # (kind, k) -> created
    wants: dict[str, Want] = field(default_factory=dict)  # name -> its final answer
    api_errors: list[str] = field(default_factory=list)
    poll_timeouts: int = 0  # the churn's own queries that got no reply within 2 s (`_sees`)
    polls: int = 0  # the churn's own queries timing its changes (CoreDNS answers them; the control has none)
    api_seconds: dict[str, list[float]] = field(default_factory=dict)  # kind -> each write's round trip
    after_write: dict[str, list[float]] = field(default_factory=dict)  # kind -> write acknowledged -> answer
    _busy: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _claim(self, pick: Callable[[], str]) -> str:
        """An object no change in flight touches (a change is only timed against its own answer)."""
        while True:
            with self._lock:
                name = pick()
                if name not in self._busy:
                    self._busy.add(name)
                    return name

    def step(self) -> tuple[str, float | None]:
        """One change of a random kind: (kind, seconds to the answer; None if not seen in time)."""
        kind = self.rnd.choices(list(KINDS), weights=list(KINDS.values()))[0]
        try:
            return kind, self._step(kind)
        except (OSError, RuntimeError) as e:  # the apiserver, on two busy cores, may time out
            with self._lock:
                self.api_errors.append(f"{kind}: {type(e).__name__}: {e}"[:200])
            return "api_error", None

    def _step(self, kind: str) -> float | None:
        n = len(self.up.gslbs)
        if kind == "lb_address":
            i = int(self._claim(lambda: str(self.rnd.randrange(len(self.up.services)))))
            with self._lock:
                self.generation += 1
                new = lb_ip(i, 1 + self.generation % 50)
            name = f"s-{i}.{dataset.ZONE}"
            result = self._time(kind, lambda: self.api.patch_status(self.up.services[i], {
                "loadBalancer": {"ingress": [{"ip": new}]}}), lambda: self.lookup.addresses(name) == [new])
            self._done(str(i), Want(name, [new]))
        elif kind == "gslb_health":
            i = int(self._claim(lambda: str(self.rnd.randrange(n))))
            ready = not self.healthy.get(i, True)
            slc, host = self.up.slices[i], f"g-{i}.{dataset.GSLB_ZONE}"
            result = self._time(kind, lambda: self.api.patch(slc, {"endpoints": [{
                "addresses": slc["endpoints"][0]["addresses"], "conditions": {"ready": ready}}]}),
                lambda: bool(self.lookup.addresses(host)) == ready)
            self.healthy[i] = ready
            self._done(str(i), Want(host, ["x"] if ready else [], healthy_only=True))
        elif kind == "deployment":
            k = int(self._claim(lambda: f"{self.rnd.randrange(DEPLOYMENTS)}"))
            replicas = 0 if self.replicas.get(k, 1) else 1
            host = f"d-{k}.{dataset.GSLB_ZONE}"
            result = self._time(
                kind, lambda: self.api.patch(deployment(NS, f"d-{k}", {}), {"spec": {"replicas": replicas}}),
                lambda: bool(self.lookup.addresses(host)) == bool(replicas))
            self.replicas[k] = replicas
            self._done(str(k), Want(host, ["x"] if replicas else [], healthy_only=True))
        else:
            k = int(self._claim(lambda: f"{kind}-{self.rnd.randrange(self.spare)}").rsplit("-", 1)[1])
            try:
                result, want = self._create_or_delete(kind, k)
            except BaseException:
                self._done(f"{kind}-{k}", None)
                raise
            self._done(f"{kind}-{k}", want)
        return result

    def _create_or_delete(self, kind: str, k: int) -> tuple[float | None, Want]:
        create = not self.exists.get((kind, k), False)
        address = f"192.0.{2 + k // 250 % 4}.{k % 250 + 1}"
        obj: Obj
        if kind == "service":
            name = f"c-{k}.{dataset.ZONE}"
            obj = service(NS, f"c-{k}", [address], hostname=name, cluster_ip=self.cluster_ips[k])
        elif kind == "dnsendpoint":
            name = f"e-{k}.{dataset.ZONE}"
            obj = dns_endpoint(NS, f"e-{k}", name, address)
        else:
            name = f"gx-{k}.{dataset.GSLB_ZONE}"
            obj = gslb(NS, f"gx-{k}", f"gs-{k}", {"type": "roundRobin"})
        change = (lambda: self.api.create(obj)) if create else (lambda: self.api.delete(obj))
        if create:
            want = Want(name, ["x"], healthy_only=True) if kind == "gslb" else Want(name, [address])
        else:
            want = Want(name, None)
        result = self._time(kind, change, lambda: want.holds(self.lookup))
        self.exists[(kind, k)] = create
        return result, want

    def _time(self, kind: str, change: Callable[[], None], done: Callable[[], bool]) -> float | None:
        """Seconds from just before the API write to the answer that shows it. The write's own round
        trip (`api_seconds`) and the time from its acknowledgment to the answer (`after_write`, what
        the backend controls; the timeout counts from there) are kept apart, so a slow apiserver is
        told from a slow backend. Polled at `poll_interval`: both are at most max(10 ms, 10 %) late."""
        t0 = time.perf_counter()
        change()
        t1 = time.perf_counter()
        polls, t2 = 1, None
        while not self._sees(done):
            waited = time.perf_counter() - t1
            if waited > CHANGE_TIMEOUT:
                break
            time.sleep(poll_interval(waited))
            polls += 1
        else:
            t2 = time.perf_counter()
        with self._lock:
            self.polls += polls
            if t2 is None:
                return None
            self.api_seconds.setdefault(kind, []).append(t1 - t0)
            self.after_write.setdefault(kind, []).append(t2 - t1)
        return t2 - t0

    def _sees(self, check: Callable[[], bool]) -> bool:
        """`check`, with a query that got no reply in time (lost, or later than dnsperf's own timeout
        on two busy cores) counted in `poll_timeouts` and taken as not seen yet: one lost poll must not
        end the run."""
        try:
            return check()
        except TimeoutError:
            with self._lock:
                self.poll_timeouts += 1
            return False

    def _done(self, busy: str, want: Want | None) -> None:
        with self._lock:
            self._busy.discard(busy)
            if want is not None:
                self.wants[want.name] = want

    def wrong_answers(self, timeout: float = SETTLE_TIMEOUT) -> list[str]:
        """Names whose answer still differs from the API's state once `timeout` has passed."""
        deadline = time.monotonic() + timeout
        pending = list(self.wants.values())
        while pending and time.monotonic() < deadline:
            pending = [w for w in pending if not self._sees(partial(w.holds, self.lookup))]
            if pending:
                time.sleep(1)
        return [f"{w.name}: want {w.addresses}" for w in pending]


def extras(api: Api, spare: int) -> None:
    """The churn's own objects: Deployments behind Gslbs, Services whose Gslb it creates."""
    api_objs: list[Obj] = []
    for k in range(DEPLOYMENTS):
        labels = {"app": f"d-{k}"}
        api_objs.append(deployment(NS, f"d-{k}", labels))
        api_objs.append(service(NS, f"d-{k}", [f"10.3.0.{k + 1}"], gslb_host=f"d-{k}.{dataset.GSLB_ZONE}",
                                selector=labels))
        api_objs.append(gslb(NS, f"d-{k}", f"d-{k}", {"type": "roundRobin"}))
    for k in range(spare):
        api_objs.append(service(NS, f"gs-{k}", [f"10.4.{k // 250}.{k % 250 + 1}"],
                                gslb_host=f"gx-{k}.{dataset.GSLB_ZONE}"))
        api_objs.append(endpoint_slice(NS, f"gs-{k}", f"10.245.{k // 250}.{k % 250 + 1}"))
    pin_cluster_ips(api, api_objs)
    api.create_all(api_objs, workers=24)


def dynamic_cluster_ip_creates(api: Api, trials: int = 10) -> dict[str, float]:
    """What the churn's Services skip by bringing their own ClusterIP: Service creates (with their
    status, as the churn writes them) whose ClusterIP the apiserver picks, one at a time with
    everything loaded and before the churn, each deleted again."""
    seconds = []
    for k in range(trials):
        obj = service(NS, f"dyn-{k}", ["192.0.2.1"])
        t0 = time.perf_counter()
        api.create(obj)
        seconds.append(time.perf_counter() - t0)
        api.delete(obj)
    return summary(seconds)


def lines_of(body: str, prefix: str) -> str:
    """The run of lines that start with `prefix`, from the first one (a metric family's samples are
    contiguous in the text format), found by a string search: a regex over every line took ~50 ms of
    the bench's CPU a scrape, the exposition holding a few lines per Gslb (~4 MiB at 10,000)."""
    start = body.find(f"\n{prefix}") + 1
    if start == 0:
        return ""
    end = start
    while body.startswith(prefix, end):
        newline = body.find("\n", end)
        if newline < 0:
            return body[start:]
        end = newline + 1
    return body[start:end]


def gauge(body: str, name: str) -> float | None:
    """The value of the unlabelled series `name` in an exposition, None if absent."""
    line = lines_of(body, f"{name} ")
    return float(line.split()[1]) if line else None


class Scraper(threading.Thread):
    """GET /metrics every second; keeps the largest loop lag the backend reported and scrape times."""

    def __init__(self, get: Callable[[str], tuple[int, str]],
                 scraped: Callable[[float, str], None] | None = None) -> None:
        super().__init__(daemon=True)
        self.get = get
        self.scraped = scraped  # (time.monotonic() of the scrape, its body) for every good scrape
        self.lag_max = {"lag": 0.0, "held": 0.0}
        self.seconds: list[float] = []
        self.failed = 0
        self.first = self.last = ""  # the COUNTED families at the phase's first and last scrape
        self._finished = threading.Event()

    def run(self) -> None:
        while not self._finished.wait(1.0):
            self.scrape()

    def scrape(self) -> None:
        t0 = time.perf_counter()
        try:
            status, body = self.get("/metrics")
        except OSError:  # counted as a failed scrape, not the end of the run
            self.failed += 1
            return
        self.seconds.append(time.perf_counter() - t0)
        if status == 200 and self.scraped is not None:
            self.scraped(time.monotonic(), body)
        found = {key: gauge(body, name) for key, name in LOOP_GAUGES.items()} if status == 200 else {}
        for key, value in found.items():
            if value is not None:
                self.lag_max[key] = max(self.lag_max[key], value)
        if any(v is not None for v in found.values()):
            counted = "".join(lines_of(body, prefix) for prefix in COUNTED)
            self.first, self.last = self.first or counted, counted

    def stop(self) -> None:
        self._finished.set()
        self.join(10)

    def figures(self) -> dict[str, Any]:
        ms = sorted(s * 1000 for s in self.seconds)
        return {"scrapes": len(ms), "scrapes_failed": self.failed,
                "scrape_p50_ms": round(dnsperf.percentile(ms, 50), 1),
                "scrape_max_ms": round(ms[-1], 1) if ms else None,
                "loop_lag_max_ms": round(self.lag_max["lag"] * 1000, 1),
                "loop_held_max_ms": round(self.lag_max["held"] * 1000, 1),
                "loop_stall_seconds": self._stalls(), **self._gc()}

    def _stalls(self) -> dict[str, float]:
        """Loop lag of 10 ms or more during the phase, by what the loop waited for (the backend's
        coredns_gslb_loop_stall_seconds): cpu and holder are the machine, blocked and loop are ours."""
        first = dict(STALLS.findall(self.first))
        return {cause: round(float(v) - float(first.get(cause, 0.0)), 3)
                for cause, v in STALLS.findall(self.last)}

    def _gc(self) -> dict[str, Any]:
        """The garbage collector's pauses during the phase, by generation: how many, their total and
        how many held the process 50 ms or more (from the backend's coredns_gslb_gc_pause_seconds)."""
        first = {(kind, gen, le): float(v) for kind, gen, le, v in GC.findall(self.first)}
        delta = {(kind, gen, le): float(v) - first.get((kind, gen, le), 0.0)
                 for kind, gen, le, v in GC.findall(self.last)}
        out = {}
        for g in ("0", "1", "2"):
            count = int(delta.get(("count", g, ""), 0))
            out[f"gc_gen{g}"] = {"collections": count, "seconds": round(delta.get(("sum", g, ""), 0.0), 3),
                                 "over_50ms": count - int(delta.get(("bucket", g, "0.05"), 0))}
        return out


def _mix(path: Path, n_services: int, n_gslbs: int) -> None:
    rnd = random.Random(5)
    lines = [f"s-{rnd.randrange(n_services)}.{dataset.ZONE} A" if k % 2 else
             f"g-{rnd.randrange(n_gslbs)}.{dataset.GSLB_ZONE} A" for k in range(4000)]
    path.write_text("\n".join(lines) + "\n")


def phase(up: Loaded, mix: Path, seconds: float, qps: float, out: Path, label: str, others: dict[str, int],
          during: Callable[[], dict[str, Any]] | None = None, *, stop_early: bool = False,
          scraped: Callable[[float, str], None] | None = None, server: str | None = None) -> dict[str, Any]:
    """dnsperf at `qps` for `seconds` against `server` (else up's CoreDNS) with the backend's /metrics
    scraped every second (each body also to `scraped`), while `during()` runs if given (the churn; its
    figures are added). `stop_early`: dnsperf ends when
    `during` returns and `seconds` is only its bound (the burst, whose length is known at its end). Where
    the two cores went is kept beside (`cpu_share_by_process`): the backend's tree, each of `others`
    (the lab's processes by name), dnsperf, this bench process (the churn's workers, the scraper) and
    `other`, what the machine spent busy beyond all these (other sessions, the kernel's threads)."""
    scraper = Scraper(lambda path: up.backend.get(path, admin=False), scraped)  # where Prometheus scrapes
    cpu0, load, began = cpu_by_process(up.pid), loadavg(), time.monotonic()
    named = {**others, "bench": os.getpid()}  # this process: the churn's workers, the scraper
    named0, machine0 = cpu_of(named), machine_busy_seconds()
    scraper.start()
    perf = dnsperf.Background(server or up.server, mix, seconds, rate=qps, out=out / f"dnsperf-{label}.txt")
    try:
        extra = during() if during is not None else {}
        result = perf.finish(interrupt=stop_early)
    except BaseException:
        perf.kill()  # not left running past a failed burst
        raise
    finally:
        scraper.stop()
    cpu = spent(cpu0, cpu_by_process(up.pid))
    machine, wall = machine_busy_seconds() - machine0, time.monotonic() - began  # past `seconds` while
    # the last changes wait for their answers
    cores = {"backend": sum(cpu.values()), **spent(named0, cpu_of(named)), "dnsperf": result.cpu_seconds}
    ran = result.seconds
    return {"dnsperf": {k: getattr(result, k) for k in DNSPERF_FIGURES},
            "backend_cpu_share": round(sum(cpu.values()) / ran, 2),  # the process tree's
            "backend_cpu_share_by_process": {name: round(v / ran, 3) for name, v in cpu.items()},
            "machine_busy_cores": round(machine / wall, 2),
            "cpu_share_by_process": core_shares(cores, machine, wall),
            "loadavg": load, **scraper.figures(), **extra}


def _changes(churn: Churn, seconds: float, rate: float) -> dict[str, Any]:
    """`rate` changes a second for `seconds`, each on a worker of its own; their kinds and times."""
    with ThreadPoolExecutor(48) as pool:
        futures = []
        t0 = next_at = time.monotonic()
        while next_at < t0 + seconds:
            futures.append(pool.submit(churn.step))
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        return {"changes": [f.result() for f in futures]}


def run(bed: Bed, n: int = 10_000, seconds: float = 600.0, rate: float = 20.0,
        qps: float = 5000.0) -> dict[str, Any]:
    bed.plane.apply(DNSENDPOINT_CRD.read_text(), "--server-side")
    bed.plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                      "crd/dnsendpoints.externaldns.k8s.io")
    spare = min(SPARE, max(50, n // 5))
    up = load(bed, n, n, before_start=lambda api: extras(api, spare))
    wait_for(lambda: all(addresses(up.server, f"d-{k}.{dataset.GSLB_ZONE}") for k in range(DEPLOYMENTS)),
             what="every Deployment-backed GSLB host answering", timeout=180, watch=[up.backend.process])
    quiet = wait_quiet(up.pid)
    rss_start = rss_by_process(up.pid)
    print(f"  loaded and quiet ({quiet}); RSS {total_mib(rss_start):.0f} MiB {mib(rss_start)}; "
          f"churn {rate:g}/s for {seconds:g} s with dnsperf at {qps:,.0f} q/s", flush=True)
    dynamic = {**dynamic_cluster_ip_creates(up.api), "loadavg": loadavg()}
    print(f"  Service create with a ClusterIP the apiserver picks: p50 {dynamic['p50_ms']} ms, max "
          f"{dynamic['max_ms']} ms (the churn's bring their own)", flush=True)
    mix = bed.workdir / "churn-queries.txt"
    _mix(mix, n, n)
    churn = Churn(up.api, Lookup(up.server), up, spare, free_cluster_ips(up.api, spare))
    floored = backend_stack(bed, bed.floor().grpc, "coredns-floor").address
    lab = {name: pid for name, pid in bed.pids().items() if pid != up.pid}
    floor_seconds = round(FLOOR_SHARE * seconds, 1)

    def profiled(label: str, length: float, during: Callable[[], dict[str, Any]] | None = None,
                 server: str | None = None) -> tuple[dict[str, Any], Path]:
        """A phase with py-spy on the backend (its CPU must weigh on every phase alike, or the churn's
        answer p99 is set against a control that had that CPU to spare), and the profile's path."""
        with Sampler(up.pid, bed.workdir / f"backend-profile-{label}.txt", rate=PROFILE_RATE) as spy:
            return phase(up, mix, length, qps, bed.workdir, label, {**lab, "py-spy": spy.spy_pid}, during,
                         server=server), spy.out

    busy, busy_profile = profiled("churn", seconds, partial(_changes, churn, seconds, rate))
    busy_floor, _ = profiled("churn-floor", floor_seconds, partial(_changes, churn, floor_seconds, rate),
                             floored)
    wrong = churn.wrong_answers()
    rss_end = rss_by_process(up.pid)
    # the backend's max gauges cover the last 10-20 s: the control must not start with the churn's
    time.sleep(2 * LAG_WINDOW)
    quiet_phase, quiet_profile = profiled("quiet", seconds)
    quiet_floor, _ = profiled("quiet-floor", floor_seconds, server=floored)
    changes = busy.pop("changes") + busy_floor.pop("changes")
    by_kind: dict[str, Any] = {}
    for kind in KINDS:
        times = [t for k, t in changes if k == kind and t is not None]
        by_kind[kind] = {**(summary(times) if times else {"trials": 0}),
                         "timed_out": sum(1 for k, t in changes if k == kind and t is None),
                         "api_write": summary(churn.api_seconds.get(kind) or [0.0]),
                         "after_write": summary(churn.after_write.get(kind) or [0.0])}
    timed = [t for _, t in changes if t is not None]
    all_ms = summary(timed) if timed else {"p50_ms": None, "p99_ms": None}
    after = summary([t for times in churn.after_write.values() for t in times] or [0.0])
    result = {
        "services": n,
        "gslbs": n,
        "seconds": seconds,
        "changes_per_second": rate,
        "floor_seconds": floor_seconds,
        "changes": len(changes),
        "changes_timed_out": sum(1 for k, t in changes if t is None and k != "api_error"),
        "dnsperf_qps_target": round(qps),
        # the lab's control plane's CPU weight (autogroup nice): it decides who waits on two shared cores,
        # the API's writes (change -> answer) or CoreDNS and the backend (answer p99, loop lag)
        "control_plane_nice": CONTROL_PLANE.nice,
        "answer_p99_ms": busy["dnsperf"]["p99_ms"],
        "answer_p99_ms_quiet": quiet_phase["dnsperf"]["p99_ms"],
        # CoreDNS -> grpc -> grpc-floor at the same rate, with the churn going on and not
        "answer_p99_ms_floor": busy_floor["dnsperf"]["p99_ms"],
        "answer_p99_ms_floor_quiet": quiet_floor["dnsperf"]["p99_ms"],
        "loop_lag_max_ms": busy["loop_lag_max_ms"],
        "loop_lag_max_ms_quiet": quiet_phase["loop_lag_max_ms"],
        "loop_held_max_ms": busy["loop_held_max_ms"],
        "loop_held_max_ms_quiet": quiet_phase["loop_held_max_ms"],
        "change_to_answer_p50_ms": all_ms["p50_ms"],
        "change_to_answer_p99_ms": all_ms["p99_ms"],
        "write_to_answer_p50_ms": after["p50_ms"],
        "write_to_answer_p99_ms": after["p99_ms"],
        "change_to_answer_by_kind": by_kind,
        "service_create_dynamic_cluster_ip": dynamic,
        "rss_mib_start": total_mib(rss_start),  # the process tree's, summed
        "rss_mib_end": total_mib(rss_end),
        "rss_mib_start_by_process": mib(rss_start),
        "rss_mib_end_by_process": mib(rss_end),
        "api_errors": len(churn.api_errors),
        "api_error_examples": churn.api_errors[:5],
        "poll_timeouts": churn.poll_timeouts,
        "poll": {"first_ms": POLL * 1000, "share": POLL_SHARE, "max_ms": POLL_MAX * 1000,
                 "queries": churn.polls},
        "wrong_answers": len(wrong),
        "wrong_examples": wrong[:10],
        "during_churn": busy,
        "control": quiet_phase,
        "during_churn_floor": busy_floor,
        "control_floor": quiet_floor,
        "profile_during_churn": summary_rows(busy_profile, 15),
        "profile_control": summary_rows(quiet_profile, 15),
    }
    print(f"  churn: answer p99 {result['answer_p99_ms']} ms (quiet {result['answer_p99_ms_quiet']} ms; the "
          f"floor {result['answer_p99_ms_floor']} ms, quiet {result['answer_p99_ms_floor_quiet']} ms), "
          f"loop lag max {result['loop_lag_max_ms']} ms, change -> answer p50 {all_ms['p50_ms']} ms "
          f"p99 {all_ms['p99_ms']} ms (from the API's acknowledgment: p50 {after['p50_ms']} ms, p99 "
          f"{after['p99_ms']} ms), RSS {result['rss_mib_start']} -> {result['rss_mib_end']} MiB, "
          f"wrong answers {len(wrong)}", flush=True)
    return result
