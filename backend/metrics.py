"""Every Prometheus metric of the backend, in one place.

The two per-query metrics are plain dict/list increments exported by a custom collector at scrape
time: prometheus_client's labelled Counter and Histogram take a lock and a label lookup per call,
which would be a visible share of a query that otherwise costs a few microseconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import gc
import os
import threading
import time
from collections.abc import Iterator

import dns.rdatatype
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 9: "NOTAUTH"}
# qtypes get their own label value; any other is "other", so random qtypes cannot grow the series
QTYPES = frozenset({1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 48, 64, 65, 99, 251, 252, 255, 257})
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class QueryMetrics(Collector):
    """Queries by zone/qtype/rcode and the answer latency, counted without locks on the hot path
    (the gRPC handlers all run on one event loop thread)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int, int], int] = {}
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self._sum = 0.0

    def observe(self, zone: str, qtype: int, rcode: int, seconds: float) -> None:
        key = (zone, qtype if qtype in QTYPES else -1, rcode)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        self._buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._sum += seconds

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        queries = CounterMetricFamily("coredns_gslb_queries", "DNS queries answered by zone, qtype, rcode",
                                      labels=["zone", "qtype", "rcode"])
        for (zone, qtype, rcode), n in list(self.counts.items()):
            queries.add_metric([zone, _qtype_name(qtype), RCODES.get(rcode, str(rcode))], n)
        yield queries
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, LATENCY_BUCKETS), "+Inf"], list(self._buckets), strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily("coredns_gslb_query_duration_seconds",
                                    "Time from gRPC request to reply inside the backend",
                                    buckets=buckets, sum_value=self._sum)


def _qtype_name(qtype: int) -> str:
    if qtype == -1:
        return "other"
    try:
        return dns.rdatatype.to_text(qtype)
    except ValueError:
        return str(qtype)


QUERIES = QueryMetrics()
# The answer path's metrics (this block, the loop lag and the GC pauses below) are registered as one
# collector, `ANSWER`: they are counted where CoreDNS is answered, which with --answer-process is
# another process.
UNSYNCED_CALLS = Counter("coredns_gslb_unsynced_calls_total",
                         "Queries refused with gRPC UNAVAILABLE before the first full sync", registry=None)
RECORDS = Gauge("coredns_gslb_records", "Resource records held in the answer table")
TABLE_SERIAL = Gauge("coredns_gslb_table_serial", "SOA serial of the answer table in use")
CONFLICTS = Gauge("coredns_gslb_conflicts", "Records dropped by the conflict rule in the answer table")
WATCH_EVENTS = Counter("coredns_gslb_watch_events_total", "Kubernetes watch events received",
                       ["kind", "type"])
WATCH_RESTARTS = Counter("coredns_gslb_watch_restarts_total",
                         "Kubernetes watches restarted (relist or reconnect)", ["kind", "reason"])
WRITES_DROPPED = Counter("coredns_gslb_api_writes_dropped_total",
                         "Writes to the Kubernetes API given up without a retry, by what (status, event, "
                         "ingress, gslb, zd) and why (gone: the API answered 404; namespace_deleting: not "
                         "tried, its Namespace has a deletionTimestamp; namespace_terminating: the API "
                         "refused it as the namespace is being deleted)", ["what", "why"])
HTTP_PREEMPTED = Counter("coredns_gslb_http_scrapes_preempted_total", "/metrics replies that gave their slot "
                         "to a newer scrape while waiting for their client to read (sent on, uncounted)")


def write_dropped(what: str, why: str) -> None:
    """Count one write given up (`WRITES_DROPPED`): the controller's and the EventRecorder's `on_dropped`."""
    WRITES_DROPPED.labels(what, why).inc()


class SeriesText:
    """One metric family with a series per object (k8gb's per-Gslb metrics), kept as ready exposition
    lines and updated one series at a time. prometheus_client formats every sample at each scrape:
    about 0.5 s at 10,000 Gslbs; joining kept lines costs a few ms. Thread-safe (watch threads write).
    """

    def __init__(self, name: str, doc: str, kind: str, labels: tuple[str, ...]) -> None:
        self.name = name + ("_total" if kind == "counter" else "")
        self._header = f"# HELP {self.name} {doc}\n# TYPE {self.name} {kind}\n".encode()
        self._order = sorted(range(len(labels)), key=labels.__getitem__)  # the text format's label order
        self._labels = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lines: dict[tuple[str, ...], bytes] = {}
        self._lock = threading.Lock()

    def set(self, labels: tuple[str, ...], value: float) -> None:
        with self._lock:
            if self._values.get(labels) == value:
                return
            self._values[labels] = value
            pairs = ",".join(f'{self._labels[i]}="{_escape(labels[i])}"' for i in self._order)
            self._lines[labels] = f"{self.name}{{{pairs}}} {float(value)!r}\n".encode()

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        with self._lock:
            value = self._values.get(labels, 0.0) + amount
        self.set(labels, value)

    def remove(self, labels: tuple[str, ...]) -> None:
        with self._lock:
            self._values.pop(labels, None)
            self._lines.pop(labels, None)

    def value(self, labels: tuple[str, ...]) -> float | None:
        return self._values.get(labels)

    def text(self) -> bytes:
        with self._lock:
            lines = list(self._lines.values())
        return self._header + b"".join(lines) if lines else b""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


# k8gb's own metric names and labels, so existing dashboards keep working; one series per Gslb
GSLB_LABELS = ("namespace", "name")
GSLB_HEALTHY_RECORDS = SeriesText("k8gb_gslb_healthy_records", "Number of healthy records observed by k8gb.",
                                  "gauge", GSLB_LABELS)
GSLB_SERVICE_STATUS = SeriesText("k8gb_gslb_service_status_num", "Number of services per status (Healthy, "
                                 "Unhealthy, NotFound) of a Gslb.", "gauge", (*GSLB_LABELS, "status"))
GSLB_RECONCILIATION_LOOPS = SeriesText("k8gb_gslb_reconciliation_loops", "Number of successful "
                                       "reconciliation loops.", "counter", GSLB_LABELS)
GSLB_ERRORS = SeriesText("k8gb_gslb_errors", "Number of errors", "counter", GSLB_LABELS)
PER_OBJECT = (GSLB_HEALTHY_RECORDS, GSLB_SERVICE_STATUS, GSLB_RECONCILIATION_LOOPS, GSLB_ERRORS)


def exposition() -> bytes:
    """The /metrics body: prometheus_client's few dozen series, then the per-object ones."""
    return generate_latest(REGISTRY) + b"".join(s.text() for s in PER_OBJECT)


# the localtargets exchange with other clusters (backend/peers/) and the edge updates (backend/edge/)
PEER_QUERIES = Counter("coredns_gslb_peer_queries_total", "DNS queries sent for the peer exchange, by peer, "
                       "kind (resolve, soa, localtargets, notify) and result (ok, error)",
                       ["peer", "kind", "result"])
PEER_FETCH = Histogram("coredns_gslb_peer_fetch_seconds", "Time to refetch a peer's localtargets (all hosts)",
                       ["peer"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
PEER_UP = Gauge("coredns_gslb_peer_up", "1 while the peer answers its SOA polls in every zone", ["peer"])
PEER_RECORDS = Gauge("coredns_gslb_peer_records", "Records (host, type) currently learned from the peer",
                     ["peer"])
EDGE_SYNCS = Counter("coredns_gslb_edge_syncs_total", "Edge record checks and updates, by edge zone, kind "
                     "(delegation, names) and the edge's rcode (NOERROR, REFUSED, NOTAUTH/BADSIG, ...)",
                     ["zone", "kind", "rcode"])
EDGE_CHANGES = Counter("coredns_gslb_edge_changes_total", "Records added or removed at the edge",
                       ["zone", "kind"])
EDGE_IN_SYNC = Gauge("coredns_gslb_edge_in_sync", "1 while the edge holds our records as wanted",
                     ["zone", "kind"])

# how late the answer loop runs a periodic timer: the longest any one step held it (issue 12)
LOOP_LAG = Histogram("coredns_gslb_loop_lag_seconds", "Delay of a periodic timer on the event loop that "
                     "answers DNS: how long other work held the loop",
                     buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1), registry=None)
LOOP_LAG_MAX = Gauge("coredns_gslb_loop_lag_max_seconds",
                     "The largest loop lag seen in the last 10 to 20 seconds", registry=None)
LOOP_HELD_MAX = Gauge("coredns_gslb_loop_held_max_seconds",
                      "The largest part of one loop lag in the last 10 to 20 s that this process caused "
                      "(blocked or loop in coredns_gslb_loop_stall_seconds, not cpu or holder)",
                      registry=None)
LOOP_STALL = Counter("coredns_gslb_loop_stall_seconds", "Loop lag of 10 ms or more, by what the answer loop "
                     "waited for: cpu (the machine gave its thread no core), holder (asleep while another "
                     "thread of this process waited for a core: the GIL's holder, an estimate), blocked "
                     "(another thread of this process held the GIL, or a blocking call on the loop), loop "
                     "(the loop's own work ran long)", ["cause"], registry=None)
LAG_INTERVAL = 0.05
LAG_WINDOW = 10.0
STALL = 0.01
STALL_CAUSES = ("cpu", "holder", "blocked", "loop")
THREADS_EVERY = 20  # ticks between listings of the process's threads (OtherThreads)


def schedstat(fd: int) -> tuple[float, float]:
    """(on a CPU, waiting for a CPU) in seconds since the thread began, from its open schedstat file."""
    ran, waited, _ = map(int, os.pread(fd, 64, 0).split())
    return ran / 1e9, waited / 1e9


class ThreadClock:
    """The calling thread's time on a CPU and waiting for one (Linux schedstat): enough to tell a
    stalled loop's own work from the machine's and other threads'. Zeros where
    /proc/thread-self/schedstat is missing."""

    def __init__(self) -> None:
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self) -> tuple[float, float]:
        """(on a CPU, waiting for a CPU) in seconds since the thread began."""
        return schedstat(self._fd) if self._fd is not None else (0.0, 0.0)


class OtherThreads:
    """How long each other thread of this process has waited for a core (its schedstat), for a loop
    blocked on the GIL: a holder preempted while it holds the GIL stalls the loop for as long as the
    machine keeps it from a core (seen under churn and a namespace's deletion, with kube-apiserver on
    the same two cores). Read on the loop's tick (~1 us a thread); the threads are listed every
    THREADS_EVERY ticks, so one started since counts from its first listing."""

    def __init__(self) -> None:
        self._own = threading.get_native_id()
        self._fds: dict[int, int] = {}
        self._ticks = 0

    def _list(self) -> None:
        try:
            tids = {int(t) for t in os.listdir("/proc/self/task")} - {self._own}
        except OSError:
            tids = set()
        for tid in set(self._fds) - tids:
            os.close(self._fds.pop(tid))
        for tid in tids - set(self._fds):
            with contextlib.suppress(OSError):  # gone meanwhile
                self._fds[tid] = os.open(f"/proc/self/task/{tid}/schedstat", os.O_RDONLY)

    def waited(self) -> dict[int, float]:
        """Seconds each thread has waited for a core since it began, by thread id."""
        if self._ticks % THREADS_EVERY == 0:
            self._list()
        self._ticks += 1
        out = {}
        for tid, fd in self._fds.items():
            with contextlib.suppress(OSError, ValueError):  # ended since the listing
                out[tid] = schedstat(fd)[1]
        return out


def most_waited(before: dict[int, float], after: dict[int, float]) -> float:
    """The longest any one thread waited for a core between two `OtherThreads.waited` readings."""
    return max((after[tid] - before[tid] for tid in after.keys() & before.keys()), default=0.0)


def stall_causes(lag: float, interval: float, window: float, ran: float, waited: float,
                 others_waited: float = 0.0) -> dict[str, float]:
    """Split `lag` (a timer due `interval` after the window began fired `lag` late) by what the loop
    thread did in the `window`: `ran` on a CPU and `waited` for one. Whatever it neither ran nor waited
    beyond the planned sleep it was asleep: past its due time a loop's poll returns at once, so that is
    the GIL held by another thread, or a blocking call on the loop (a lower bound). As much of that as
    another thread of ours waited for a core (`others_waited`, the longest such wait) is put to that
    thread having held the GIL meanwhile (holder: the machine, an upper bound, since the thread may
    have waited without it); the rest is blocked. The rest of the lag is the loop's own work."""
    cpu = min(waited, lag)
    asleep = min(max(0.0, window - ran - waited - interval), lag - cpu)
    holder = min(asleep, others_waited)
    return {"cpu": cpu, "holder": holder, "blocked": asleep - holder, "loop": lag - cpu - asleep}


class WindowMax:
    """The largest value added in this window of LAG_WINDOW seconds or the last, so a scraper polling
    more often than LAG_WINDOW sees every peak once at least."""

    def __init__(self) -> None:
        self._current = 0.0
        self._previous = 0.0
        self._window_end = 0.0

    def add(self, value: float, now: float) -> None:
        if now >= self._window_end:
            self._previous, self._current = self._current, 0.0
            self._window_end = now + LAG_WINDOW
        self._current = max(self._current, value)

    def value(self) -> float:
        return max(self._current, self._previous)


class LoopLag:
    """Wakes every LAG_INTERVAL on the answer loop and records how late it woke, and for stalls of
    STALL or more what the loop waited for (`stall_causes`); the largest lag and the largest part of
    one that was this process's own (blocked or loop, not the machine's cpu or holder) are kept
    (`WindowMax`)."""

    def __init__(self) -> None:
        self._lag = WindowMax()
        self._held = WindowMax()
        LOOP_LAG_MAX.set_function(self._lag.value)
        LOOP_HELD_MAX.set_function(self._held.value)
        for cause in STALL_CAUSES:
            LOOP_STALL.labels(cause)

    def record(self, lag: float, now: float) -> None:
        self._lag.add(lag, now)
        LOOP_LAG.observe(lag)

    async def run(self, interval: float = LAG_INTERVAL) -> None:
        clock, others = ThreadClock(), OtherThreads()  # opened here, on the loop's thread
        start, (ran, waited), others_then = time.monotonic(), clock.read(), others.waited()
        while True:
            due = start + interval
            await asyncio.sleep(interval)
            now = time.monotonic()
            lag = max(0.0, now - due)
            self.record(lag, now)
            (ran_now, waited_now), others_now = clock.read(), others.waited()
            held = 0.0
            if lag >= STALL:
                causes = stall_causes(lag, interval, now - start, ran_now - ran, waited_now - waited,
                                      most_waited(others_then, others_now))
                for cause, seconds in causes.items():
                    LOOP_STALL.labels(cause).inc(seconds)
                held = causes["blocked"] + causes["loop"]
            self._held.add(held, now)
            start, ran, waited, others_then = now, ran_now, waited_now, others_now


LAG = LoopLag()

# Python's garbage collector stops every thread, the answer loop too, for as long as a collection runs
# (a full one walks every unfrozen container: 0.6 s at 10k + 10k before gc.freeze, issue 12)
GC_PAUSE = Histogram("coredns_gslb_gc_pause_seconds",
                     "Time each garbage collection held the process, by generation", ["generation"],
                     buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1), registry=None)


class GcPauses:
    """Times every collection through `gc.callbacks` (start and stop run on the collecting thread)."""

    def __init__(self) -> None:
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)


GC = GcPauses()

# one metric family as plain tuples, to send: name, doc, type, [(sample name, labels, value)]
Family = tuple[str, str, str, list[tuple[str, tuple[tuple[str, str], ...], float]]]


class AnswerMetrics(Collector):
    """The answer path's metrics: this process's own, or once `update` is called the totals the answer
    process (backend/answer/) sends each second; `retire()` when that process ends keeps its counters'
    totals, so they never go back across a restart (gauges keep their last value until the next)."""

    def __init__(self, local: tuple[Collector, ...]) -> None:
        self._local = local
        self._lock = threading.Lock()
        self._remote = False
        self._base: list[Family] = []
        self._current: list[Family] = []

    def local(self) -> list[Family]:
        """This process's own families, as plain tuples (to send); `_created` samples left out."""
        return [(f.name, f.documentation, f.type,
                 [(s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples
                  if not s.name.endswith("_created")])
                for collector in self._local for f in collector.collect()]

    def update(self, families: list[Family]) -> None:
        with self._lock:
            self._remote, self._current = True, families

    def retire(self) -> None:
        with self._lock:
            self._base, self._current = self._totals(), []

    def _totals(self) -> list[Family]:
        merged: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
        for families, add in ((self._base, False), (self._current, True)):
            for name, doc, kind, samples in families:
                values = merged.setdefault(name, (doc, kind, {}))[2]
                for sample, labels, value in samples:
                    summed = add and kind != "gauge"
                    values[sample, labels] = value + (values.get((sample, labels), 0.0) if summed else 0.0)
        return [(name, doc, kind, [(sample, labels, v) for (sample, labels), v in values.items()])
                for name, (doc, kind, values) in merged.items()]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            families = self._totals() if self._remote else None
        if families is None:
            for collector in self._local:
                yield from collector.collect()
            return
        for name, doc, kind, samples in families:
            family = Metric(name, doc, kind)
            for sample, labels, value in samples:
                family.add_sample(sample, dict(labels), value)
            yield family


ANSWER = AnswerMetrics((QUERIES, UNSYNCED_CALLS, LOOP_LAG, LOOP_LAG_MAX, LOOP_HELD_MAX, LOOP_STALL, GC_PAUSE))
REGISTRY.register(ANSWER)
ANSWER_RESTARTS = Counter("coredns_gslb_answer_process_restarts_total",
                          "Times the answer process (--answer-process) ended unasked and was started again")

# active probes of GSLB targets (backend/probes/)
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
ProbeChecks = dict[tuple[str, str], int]  # (geotag, ok|failed|timeout) -> probes
ProbeDurations = dict[str, tuple[list[int], float]]  # geotag -> (count per PROBE_BUCKETS and +Inf, sum)


class ProbeStats(Collector):
    """Probe counts and durations, counted in the prober's own process and sent here as totals each
    second; `retire()` when that process ends keeps its totals, so the counters never go back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._base: tuple[ProbeChecks, ProbeDurations] = ({}, {})
        self._current: tuple[ProbeChecks, ProbeDurations] = ({}, {})

    def update(self, checks: ProbeChecks, durations: ProbeDurations) -> None:
        with self._lock:
            self._current = (checks, durations)

    def retire(self) -> None:
        with self._lock:
            self._base, self._current = self._totals(), ({}, {})

    def _totals(self) -> tuple[ProbeChecks, ProbeDurations]:
        checks = dict(self._base[0])
        durations = {g: (list(b), s) for g, (b, s) in self._base[1].items()}
        for key, n in self._current[0].items():
            checks[key] = checks.get(key, 0) + n
        for geotag, (buckets, total) in self._current[1].items():
            have, have_sum = durations.get(geotag) or ([0] * len(buckets), 0.0)
            durations[geotag] = ([a + b for a, b in zip(have, buckets, strict=True)], have_sum + total)
        return checks, durations

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        with self._lock:
            checks, durations = self._totals()
        family = CounterMetricFamily("coredns_gslb_probe_checks", "Probes of GSLB targets by the targets' "
                                     "geotag and result (ok, failed, timeout)", labels=["geotag", "result"])
        for (geotag, result), n in sorted(checks.items()):
            family.add_metric([geotag, result], n)
        yield family
        histogram = HistogramMetricFamily("coredns_gslb_probe_duration_seconds",
                                          "Time one probe took, by the target's geotag", labels=["geotag"])
        for geotag, (buckets, total) in sorted(durations.items()):
            cumulative, points = 0, []
            for bound, n in zip([*map(str, PROBE_BUCKETS), "+Inf"], buckets, strict=True):
                cumulative += n
                points.append((bound, cumulative))
            histogram.add_metric([geotag], points, total)
        yield histogram


PROBE_STATS = ProbeStats()
REGISTRY.register(PROBE_STATS)
PROBE_RESTARTS = Counter("coredns_gslb_probe_process_restarts_total",
                         "Times the prober's own process ended unasked and was started again")
PROBE_UP = Gauge("coredns_gslb_probe_up", "1 while a probed target is served, 0 while its probes withdraw it",
                 ["host", "address", "geotag"])
PROBE_TRANSITIONS = Counter("coredns_gslb_probe_transitions_total", "Probe verdicts that flipped, by the "
                            "target's geotag and new verdict (pass, fail)", ["geotag", "to"])
