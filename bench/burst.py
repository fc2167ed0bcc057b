"""A burst of changes at once: the namespace holding 10,000 Services + 10,000 Gslbs deleted under load.

The scale part's objects (`scale.load`: Service s-<i> with names s-<i>.foowidgets.k8s and
g-<i>.gb.foowidgets.k8s, EndpointSlice, Gslb g-<i>) in namespace `scale`, and `SURVIVORS` of the same
in namespace `keep` (k-<i>, kg-<i>). dnsperf runs at the churn's rate over names of both, first with
nothing happening (before), then while namespace `scale` is deleted: kube-controller-manager's
namespace controller deletes every object in it, kind by kind (deletecollection; the apiserver deletes
one object after another, ~30-60 s for 10,000 on two shared cores), so the backend gets ~30,000
watch events in a minute or two, and the leader's controller writes what the Gslbs left say.

"Never a half-applied table" is checked on what CoreDNS answers (`Judge`): each answer of a name in the
deleted namespace is its answer from before the burst, or NODATA for a GSLB host (its EndpointSlice may
go before its Gslb and Service: the API's own state then, the host unhealthy), or NXDOMAIN; never
SERVFAIL, another rcode or another record set; and it never goes back (pre -> NODATA -> NXDOMAIN:
answers may lag the API, not undo it). Names in `keep` must answer as before, every time. A sample of
doomed names and every survivor are asked throughout (`Poller`, every name about twice a second); every
other doomed name is asked in turn until it is NXDOMAIN (the sweep), so each name's answers are
judged, and the last one's end is timed.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.metrics import LAG_WINDOW
from backend.zone.wire import NXDOMAIN
from bench import dataset
from bench.churn import PROFILE_RATE, gauge, lines_of, phase
from bench.env import Bed
from bench.lookup import Lookup
from bench.objects import Api, Obj, endpoint_slice, gslb, namespace, pin_cluster_ips, service
from bench.procstat import loadavg, mib, rss_by_process, total_mib
from bench.profile import Sampler
from bench.profile import summary as summary_rows
from bench.scale import NS, Loaded, lb_ip, load, wait_quiet
from lab.proc import wait_for

KEEP_NS = "keep"
SURVIVORS = 100  # Services (each with a Gslb) in KEEP_NS
SAMPLE = 100  # doomed names asked throughout (half Services', half GSLB hosts)
SAMPLE_RATE = 400.0  # queries/s for the sample and the survivors: each name about twice a second
SWEEP_RATE = 600.0  # queries/s for the sweep over the doomed names not yet gone
BEFORE_SECONDS = 30.0
API_TIMEOUT = 900.0  # the namespace controller deleting ~30,000 objects, then the namespace (~2 min seen)
GONE_TIMEOUT = 120.0  # after that: every doomed name NXDOMAIN and the table holding only what is left
AFTER = 5.0  # seconds the sample and the survivors are asked on after the last name went
RECORDS = "coredns_gslb_records"
DROPPED = "coredns_gslb_api_writes_dropped_total"
PRE, NODATA, GONE = 0, 1, 2  # what a doomed name may answer, in the only order it may go


@dataclass(frozen=True, slots=True)
class Expect:
    """What a name answered before the burst; `nodata_ok`: a GSLB host, unhealthy while its
    EndpointSlice is gone and its Gslb and Service are not; `survives`: in a namespace not deleted."""

    pre: tuple[str, ...]
    nodata_ok: bool = False
    survives: bool = False


@dataclass
class Judge:
    """Every answer seen during the burst, judged against `Expect` (thread-safe: several pollers)."""

    expects: dict[str, Expect]
    answered: dict[str, int] = field(default_factory=dict)  # name -> answers judged
    nodata: set[str] = field(default_factory=set)  # GSLB hosts that went through NODATA
    gone_at: dict[str, float] = field(default_factory=dict)  # doomed name -> first NXDOMAIN (monotonic)
    wrong: dict[str, int] = field(default_factory=dict)  # what was wrong -> how many answers
    examples: list[str] = field(default_factory=list)
    _rank: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def see(self, name: str, rcode: int, found: list[str], at: float) -> None:
        expect = self.expects[name]
        if rcode == NXDOMAIN:
            rank = GONE
        elif rcode == 0 and tuple(found) == expect.pre:
            rank = PRE
        elif rcode == 0 and not found:
            rank = NODATA
        else:
            rank = -1
        with self._lock:
            self.answered[name] = self.answered.get(name, 0) + 1
            if expect.survives and rank != PRE:
                self._wrong("survivor", name, rcode, found)
            elif rank < 0 or (rank == NODATA and not expect.nodata_ok):
                self._wrong("SERVFAIL" if rcode == 2 else f"rcode {rcode}" if rcode else
                            "NODATA" if not found else "other records", name, rcode, found)
            elif rank < self._rank.get(name, PRE):
                self._wrong("came back", name, rcode, found)
            else:
                self._rank[name] = rank
                if rank == NODATA:
                    self.nodata.add(name)
                if rank == GONE:
                    self.gone_at.setdefault(name, at)

    def _wrong(self, what: str, name: str, rcode: int, found: list[str]) -> None:
        self.wrong[what] = self.wrong.get(what, 0) + 1
        if len(self.examples) < 10:
            self.examples.append(f"{name}: {what} (rcode {rcode}, {found}; before {self.expects[name].pre})")

    def doomed(self) -> list[str]:
        return [name for name, e in self.expects.items() if not e.survives]

    def all_gone(self) -> bool:
        with self._lock:
            return len(self.gone_at) == len(self.doomed())


class Poller(threading.Thread):
    """Asks `names` in turn, at most `rate` a second, and has `judge` judge every answer; `until_gone`:
    a name is asked until it answers NXDOMAIN (the sweep), else again and again until `stop`."""

    def __init__(self, lookup: Lookup, judge: Judge, names: Iterable[str], rate: float,
                 until_gone: bool = False) -> None:
        super().__init__(daemon=True)
        self.lookup, self.judge, self.rate, self.until_gone = lookup, judge, rate, until_gone
        self.names = list(names)
        self.asked = self.lost = 0
        self.round_seconds = 0.0  # how long the last round over the names took (the sweep's resolution)
        self._finished = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while self.names and not self._finished.is_set():
            began, left = time.monotonic(), []
            for name in self.names:
                next_at = max(next_at + 1 / self.rate, time.monotonic())
                if self._finished.wait(max(0.0, next_at - time.monotonic())):
                    return
                self.asked += 1
                try:
                    rcode, found = self.lookup.answer(name)
                except TimeoutError:  # no reply in 2 s: counted apart, asked again next round
                    self.lost += 1
                    left.append(name)
                    continue
                self.judge.see(name, rcode, found, time.monotonic())
                if not (self.until_gone and rcode == NXDOMAIN):
                    left.append(name)
            self.names, self.round_seconds = left, time.monotonic() - began

    def stop(self) -> None:
        self._finished.set()
        self.join(10)


def expects(n: int, survivors: int) -> dict[str, Expect]:
    """Every name's answer before the burst: a Service's LB address, its GSLB host's the same (the
    Gslb's one healthy target, this cluster's)."""
    found = {}
    for i in range(n):
        found[f"s-{i}.{dataset.ZONE}"] = Expect((lb_ip(i),))
        found[f"g-{i}.{dataset.GSLB_ZONE}"] = Expect((lb_ip(i),), nodata_ok=True)
    return found | expected("k", survivors, survivor_ip, survives=True)


def survivor_ip(i: int) -> str:
    return f"10.5.{i // 250}.{i % 250 + 1}"


def hosted(ns: str, prefix: str, count: int, ip: Callable[[int], str]) -> list[Obj]:
    """`count` Services <prefix>-<i> in `ns` with LB address ip(i), each with an ExternalDNS name
    <prefix>-<i> and a GSLB host <prefix>g-<i>, its Gslb (roundRobin) and a ready EndpointSlice."""
    objs = []
    for i in range(count):
        objs.append(service(ns, f"{prefix}-{i}", [ip(i)], hostname=f"{prefix}-{i}.{dataset.ZONE}",
                            gslb_host=f"{prefix}g-{i}.{dataset.GSLB_ZONE}"))
        objs.append(endpoint_slice(ns, f"{prefix}-{i}", f"10.246.{i // 250}.{i % 250 + 1}"))
        objs.append(gslb(ns, f"{prefix}g-{i}", f"{prefix}-{i}", {"type": "roundRobin"}))
    return objs


def expected(prefix: str, count: int, ip: Callable[[int], str], survives: bool) -> dict[str, Expect]:
    """What `hosted`'s names answer before the burst."""
    return {name: Expect((ip(i),), nodata_ok=gslb_host and not survives, survives=survives)
            for i in range(count)
            for name, gslb_host in ((f"{prefix}-{i}.{dataset.ZONE}", False),
                                    (f"{prefix}g-{i}.{dataset.GSLB_ZONE}", True))}


def _survivors(api: Api) -> None:
    api.create(namespace(KEEP_NS))
    objs = hosted(KEEP_NS, "k", SURVIVORS, survivor_ip)
    pin_cluster_ips(api, objs)
    api.create_all(objs, workers=24)


@dataclass
class ApiWatch:
    """When the API emptied each kind of the namespace and when the namespace itself was gone."""

    api: Api
    kinds: dict[str, Obj]  # kind -> one of its objects in the namespace (for its collection's path)
    since: float = 0.0
    emptied: dict[str, float] = field(default_factory=dict)  # kind -> seconds after `since`
    errors: int = 0

    def check(self) -> bool:
        """Counts each kind not yet emptied, then the namespace: True once it is gone (404)."""
        for kind, obj in self.kinds.items():
            if kind in self.emptied:
                continue
            try:
                if self.api.count(obj) == 0:
                    self.emptied[kind] = round(time.monotonic() - self.since, 1)
            except (OSError, RuntimeError):  # a busy apiserver: asked again next time
                self.errors += 1
        status, _ = self.api.call("GET", f"/api/v1/namespaces/{NS}")
        if status == 404 and "namespace" not in self.emptied:
            self.emptied["namespace"] = round(time.monotonic() - self.since, 1)
        return "namespace" in self.emptied


def _mix(path: Path, n: int, survivors: int) -> None:
    """dnsperf's questions: half names that stay, half names that go, Services' and GSLB hosts'."""
    rnd = random.Random(11)
    lines = []
    for k in range(4000):
        i = rnd.randrange(survivors) if k % 2 else rnd.randrange(n)
        prefix = ("k" if k % 2 else "s") if k % 4 < 2 else ("kg" if k % 2 else "g")
        lines.append(f"{prefix}-{i}.{dataset.GSLB_ZONE if 'g' in prefix else dataset.ZONE} A")
    path.write_text("\n".join(lines) + "\n")


def settled_at(series: list[tuple[float, float]], since: float) -> float | None:
    """Seconds from `since` to the first scrape from which the gauge kept its last value (None if
    nothing was scraped after `since`)."""
    after = [(t, v) for t, v in series if t >= since]
    if not after:
        return None
    final, first = after[-1][1], after[-1][0]
    for t, v in reversed(after):
        if v != final:
            break
        first = t
    return round(first - since, 1)


def log_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def dropped(body: str) -> dict[str, float]:
    """The backend's writes given up, "what/why" -> count (`coredns_gslb_api_writes_dropped_total`)."""
    found = {}
    for line in lines_of(body, DROPPED + "{").splitlines():
        labels, _, value = line.rpartition(" ")
        what = labels.split('what="')[1].split('"')[0]
        why = labels.split('why="')[1].split('"')[0]
        found[f"{what}/{why}"] = float(value)
    return found


def _writes(up: Loaded, log_from: int) -> dict[str, Any]:
    """What the leader did about the dying namespace: writes given up (its metrics), and its log lines
    from the delete on (warnings apart: each refused and retried write used to be one)."""
    lines = log_lines(up.backend.process.log)[log_from:]
    _, body = up.backend.get("/metrics", admin=False)
    return {"writes_dropped": dropped(body), "log_lines": len(lines),
            "log_warnings": sum(" WARNING " in line for line in lines),
            "log_examples": [line[:300] for line in lines if " WARNING " in line][:5]}


def _burst(up: Loaded, judge: Judge, lookup: Lookup, watch: ApiWatch) -> Callable[[], dict[str, Any]]:
    """What runs while dnsperf does: the pollers, the delete, the waits for the API and the answers."""

    def run() -> dict[str, Any]:
        doomed = judge.doomed()
        rnd = random.Random(3)
        sample = rnd.sample(doomed, min(SAMPLE, len(doomed)))
        kept = [name for name, e in judge.expects.items() if e.survives]
        always = Poller(lookup, judge, [*sample, *kept], SAMPLE_RATE)
        sweep = Poller(lookup, judge, [name for name in doomed if name not in set(sample)], SWEEP_RATE,
                       until_gone=True)
        always.start()
        time.sleep(1.0)  # the sample and the survivors answer as before first
        log_from = len(log_lines(up.backend.process.log))
        t0 = watch.since = time.monotonic()
        load_at_delete = loadavg()
        up.api.delete(namespace(NS))
        sweep.start()
        wait_for(watch.check, what=f"the namespace controller deleting namespace {NS} and everything in it",
                 timeout=API_TIMEOUT, watch=[up.backend.process], interval=1.0)
        wait_for(judge.all_gone, what="every name of the deleted namespace answering NXDOMAIN",
                 timeout=GONE_TIMEOUT, watch=[up.backend.process], interval=0.5)
        ended = time.monotonic()
        time.sleep(AFTER)  # gone names must stay gone, survivors keep answering
        always.stop()
        sweep.stop()
        return {"delete_at": t0, "leader": _writes(up, log_from), "burst_seconds": round(ended - t0, 1),
                "loadavg_at_delete": load_at_delete,
                "answers_gone_seconds": round(max(judge.gone_at.values()) - t0, 1),
                "sweep_last_round_seconds": round(sweep.round_seconds, 2),
                "polls": {"sample": len(sample), "survivors": len(kept), "asked": always.asked + sweep.asked,
                          "lost": always.lost + sweep.lost, "sample_rate": SAMPLE_RATE,
                          "sweep_rate": SWEEP_RATE}}

    return run


def run(bed: Bed, n: int = 10_000, qps: float = 5000.0) -> dict[str, Any]:
    up = load(bed, n, n, before_start=_survivors)
    judge = Judge(expects(n, SURVIVORS))
    lookup = Lookup(up.server)
    wait_for(lambda: all(lookup.answer(name) == (0, list(e.pre)) for name, e in judge.expects.items()
                         if e.survives), what="every survivor answering", timeout=120,
             watch=[up.backend.process])
    quiet = wait_quiet(up.pid)
    checked = random.Random(5).sample(judge.doomed(), 200)
    if any(lookup.answer(name) != (0, list(judge.expects[name].pre)) for name in checked):
        raise RuntimeError("a doomed name does not answer what `expects` says it did before the burst")
    mix = bed.workdir / "burst-queries.txt"
    _mix(mix, n, SURVIVORS)
    lab = {name: pid for name, pid in bed.pids().items() if pid != up.pid}
    print(f"  loaded and quiet ({quiet}); dnsperf at {qps:,.0f} q/s for {BEFORE_SECONDS:g} s", flush=True)
    before = phase(up, mix, BEFORE_SECONDS, qps, bed.workdir, "before", lab)
    time.sleep(2 * LAG_WINDOW)  # the backend's max gauges cover 10-20 s: the burst's must not hold these
    rss_before = rss_by_process(up.pid)
    watch = ApiWatch(up.api, {"Service": up.services[0], "EndpointSlice": up.slices[0], "Gslb": up.gslbs[0]})
    records: list[tuple[float, float]] = []

    def scraped(at: float, body: str) -> None:
        value = gauge(body, RECORDS)
        if value is not None:
            records.append((at, value))

    print(f"  deleting namespace {NS} ({n:,} Services, EndpointSlices and Gslbs)", flush=True)
    with Sampler(up.pid, bed.workdir / "backend-profile-burst.txt", rate=PROFILE_RATE) as sampler:
        during = phase(up, mix, API_TIMEOUT + GONE_TIMEOUT + 60, qps, bed.workdir, "burst",
                       {**lab, "py-spy": sampler.spy_pid}, _burst(up, judge, lookup, watch),
                       stop_early=True, scraped=scraped)
    t0 = during.pop("delete_at")
    quiet_after = wait_quiet(up.pid)
    rss_after = rss_by_process(up.pid)
    dp, dp0 = during["dnsperf"], before["dnsperf"]
    result = {
        "services": n, "gslbs": n, "endpointslices": n, "survivors": SURVIVORS,
        "dnsperf_qps_target": round(qps),
        "answers_asked": dp["sent"], "answers_lost": dp["lost"],
        "answers_servfail": dp["rcodes"].get("SERVFAIL", 0),
        "answer_p50_ms_before": dp0["p50_ms"], "answer_p99_ms_before": dp0["p99_ms"],
        "answer_p50_ms": dp["p50_ms"], "answer_p99_ms": dp["p99_ms"],
        "loop_lag_max_ms": during["loop_lag_max_ms"], "loop_lag_max_ms_before": before["loop_lag_max_ms"],
        "loop_held_max_ms": during["loop_held_max_ms"],
        "api_emptied_seconds": watch.emptied, "api_count_errors": watch.errors,
        "answers_gone_seconds": during.pop("answers_gone_seconds"),
        "table_settled_seconds": settled_at(records, t0),
        "burst_seconds": during.pop("burst_seconds"),
        "wrong_answers": sum(judge.wrong.values()), "wrong_by_kind": judge.wrong,
        "wrong_examples": judge.examples, "answers_judged": sum(judge.answered.values()),
        "gslb_hosts_through_nodata": len(judge.nodata),
        "rss_mib_before": total_mib(rss_before), "rss_mib_after": total_mib(rss_after),
        "rss_mib_before_by_process": mib(rss_before), "rss_mib_after_by_process": mib(rss_after),
        "backend_cpu_share": during["backend_cpu_share"],
        "backend_quiet_after": quiet_after, **during.pop("leader"),
        "before": before, "during": during,
        "profile_during_burst": summary_rows(sampler.out, 15),
    }
    print(f"  burst: answers gone {result['answers_gone_seconds']} s after the delete (API: "
          f"{watch.emptied}); answer p50/p99 {dp['p50_ms']}/{dp['p99_ms']} ms (before {dp0['p50_ms']}/"
          f"{dp0['p99_ms']}), lost {dp['lost']}, SERVFAIL {result['answers_servfail']}, loop lag max "
          f"{result['loop_lag_max_ms']} ms, wrong {judge.wrong or 0}, RSS {result['rss_mib_before']} -> "
          f"{result['rss_mib_after']} MiB; writes given up {result['writes_dropped']}, backend log "
          f"{result['log_lines']} lines ({result['log_warnings']} warnings)", flush=True)
    return result
