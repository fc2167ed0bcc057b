"""10,000 GSLB hosts and 10,000 annotated Services in the real apiserver: first full sync, RSS, and
change -> answer latency with everything loaded.

Service s-<i> carries ExternalDNS's hostname (s-<i>.foowidgets.k8s) and k8gb's (g-<i>.gb.foowidgets.k8s);
Gslb g-<i> references it, and EndpointSlice s-<i>-bench (one ready endpoint) makes the host Healthy.
The backend is started only once everything is in the API, so the sync time is a cold start. Change ->
answer is measured twice: right after /readyz (while the leader still writes 10,000 Gslb statuses)
and once the backend has gone idle, the steady state the goal is about.
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import dns.rdatatype

from backend.kube.informer import INITIAL_EVENTS_END, STREAMING_LIST
from bench import dataset
from bench.dnsperf import percentile
from bench.env import Bed
from bench.objects import (
    Api,
    Obj,
    bulk_create,
    collection,
    endpoint_slice,
    gslb,
    namespace,
    pin_cluster_ips,
    service,
)
from bench.procstat import (
    core_shares,
    cpu_of,
    loadavg,
    machine_busy_seconds,
    mib,
    rss_by_process,
    rss_bytes,
    spent,
    total_mib,
    tree_cpu_seconds,
)
from bench.profile import Sampler
from bench.profile import summary as summary_rows
from bench.throughput import backend_stack
from lab.proc import wait_for
from lab.sidecar import Backend

NS = "scale"
POLL = 0.002
TRIAL_TIMEOUT = 10.0
QUIET_TIMEOUT = 300.0
LAB_QUIET_TIMEOUT = 600.0  # the control plane settling before the backend starts (bulk copies: minutes)
# Past this many Services the objects are written into etcd (bench.objects.bulk_create): through the API
# 100,000 take most of an hour on two shared cores.
BULK_ABOVE = 20_000
SYNC_TIMEOUT = 600.0  # first /readyz; 100,000 Services take far longer than the lab's 60 s
PAGE = 500  # the informer's page size where the API refuses streaming lists (backend/kube/informer.py)
SYNC_PROFILE_RATE = 50  # py-spy samples a second during the sync (at 200 it takes ~40% of a core)


def lb_ip(i: int, generation: int = 0) -> str:
    """Service i's LB address in `generation`: 250 per /24 and 250 /24s per second octet, the first
    octet counting on past 62,500 Services (data only: nothing is ever sent to these)."""
    block, rest = divmod(i, 62_500)
    return f"{172 + block}.{20 + generation}.{rest // 250}.{rest % 250 + 1}"


def objects(n: int, n_gslbs: int | None = None) -> tuple[list[Obj], list[Obj], list[Obj]]:
    """`n` Services; the first `n_gslbs` (default all) also carry a GSLB host, a Gslb and a slice."""
    n_gslbs = n if n_gslbs is None else n_gslbs
    services, slices, gslbs = [], [], []
    for i in range(n):
        services.append(service(NS, f"s-{i}", [lb_ip(i)], hostname=f"s-{i}.{dataset.ZONE}",
                                gslb_host=f"g-{i}.{dataset.GSLB_ZONE}" if i < n_gslbs else ""))
    for i in range(n_gslbs):
        slices.append(endpoint_slice(NS, f"s-{i}", f"10.244.{i // 250 % 250}.{i % 250 + 1}"))
        strategy = {"type": "roundRobin"} if i % 2 else {"type": "failover", "primaryGeoTag": dataset.GEOTAG}
        gslbs.append(gslb(NS, f"g-{i}", f"s-{i}", strategy))
    return services, slices, gslbs


@dataclass
class Loaded:
    """The scale objects in the apiserver, and the backend + CoreDNS started on them (a cold start)."""

    api: Api
    services: list[Obj]
    slices: list[Obj]
    gslbs: list[Obj]
    create_seconds: float
    backend: Backend
    server: str  # CoreDNS, "ip:port"
    sync_seconds: float
    rss_ready: dict[str, int]  # by process: the backend's and its children's
    cpu_ready: float
    complete: bool
    started: float  # time.monotonic() at the backend's start
    all_served: float
    sync_profile: list[tuple[str, float, float]]  # py-spy from start to /readyz: (function, own %, total %)
    loadavg_ready: str  # the machine's load average at /readyz
    list_seconds: float  # the API's paginated list of every Service, timed before the backend starts
    stream_seconds: float  # the API's streaming list of them (how the backend lists), timed likewise
    # where the two cores went from the backend's start to /readyz: the backend's tree, each of the lab's
    # other processes, and "other" (what the machine spent beyond them), in cores
    sync_cpu_share: dict[str, float]
    lab_quiet_wait: float  # seconds the control plane took to settle after the objects were in (see load)
    lab_quiet: bool

    @property
    def pid(self) -> int:
        assert self.backend.process.pid is not None
        return self.backend.process.pid


def load(bed: Bed, n: int, n_gslbs: int, before_start: Callable[[Api], None] = lambda _api: None) -> Loaded:
    """Create the objects, then start the backend and CoreDNS and wait until the last of them answers."""
    api = Api(bed.plane)
    api.create(namespace(NS))
    services, slices, gslbs = objects(n, n_gslbs)
    t0 = time.monotonic()
    bulk = n > BULK_ABOVE
    revision = 0
    if not bulk:
        pin_cluster_ips(api, services)
    for batch in (services, slices, gslbs):
        if bulk:
            revision = max(revision, bulk_create(api, bed.plane, batch))
        else:
            api.create_all(batch, workers=24)
    for batch in (services, slices, gslbs):
        if batch:  # the backend's first list must not wait for the apiserver's cache to catch up
            wait_for(lambda b=batch: api.count(b[0], revision) >= len(b),
                     what=f"{len(batch)} {batch[0]['kind']}s listed", timeout=600)
    created = time.monotonic() - t0
    list_seconds = paginated_list_seconds(api, services[0])
    stream_seconds = streamed_list_seconds(api, services[0])
    print(f"  the API lists the {n} Services in pages of {PAGE} in {list_seconds:.1f} s, streams them "
          f"in {stream_seconds:.1f} s", flush=True)
    print(f"  created {n} Services (+ status), {n_gslbs} EndpointSlices, {n_gslbs} Gslbs in {created:.1f} s"
          f"{' (copies written into etcd)' if bulk else ''}", flush=True)
    before_start(api)
    # The backend starts against a settled control plane, as a backend (re)started in a cluster that
    # has held these objects for a while: objects copied into etcd reach kube-controller-manager all at
    # once, and its start-up pass over them took 1.24 of the two cores during a 100k sync (2026-12-02 07:37).
    t_lab = time.monotonic()
    lab_quiet = quiet_within(lambda: sum(cpu_of(bed.pids()).values()), LAB_QUIET_TIMEOUT)
    lab_wait = time.monotonic() - t_lab
    print(f"  the lab's control plane quiet after {lab_wait:.0f} s more ({lab_quiet})", flush=True)
    backend = bed.backend(dataset.BACKEND_FLAGS, name="backend-scale", start=False)
    coredns = backend_stack(bed, backend.grpc, "coredns-scale")
    server = coredns.address
    lab = bed.pids()
    lab0, machine0 = cpu_of(lab), machine_busy_seconds()
    t0 = time.monotonic()
    backend.launch()
    pid = backend.process.pid
    assert pid is not None
    with Sampler(pid, bed.workdir / "backend-profile-sync.txt", rate=SYNC_PROFILE_RATE) as sync_profile:
        backend.wait_started(timeout=SYNC_TIMEOUT)
        sync = time.monotonic() - t0
        cpu_ready = tree_cpu_seconds(pid)
        cores = {"backend": cpu_ready, **spent(lab0, cpu_of(lab)), **cpu_of({"py-spy": sync_profile.spy_pid})}
        sync_share = core_shares(cores, machine_busy_seconds() - machine0, sync)
    rss_ready = rss_by_process(pid)
    load_ready = loadavg()
    last, last_gslb = n - 1, n_gslbs - 1

    def complete() -> bool:
        return (addresses(server, f"s-{last}.{dataset.ZONE}") == [lb_ip(last)]
                and (last_gslb < 0 or bool(addresses(server, f"g-{last_gslb}.{dataset.GSLB_ZONE}"))))

    at_ready = complete()
    print(f"  backend ready (/readyz 200) {sync:.1f} s after start, RSS {mib(rss_ready)} MiB, "
          f"CPU {cpu_ready:.1f} s; the last Service and Gslb answer at once: {at_ready}; cores meanwhile "
          f"{sync_share}", flush=True)
    wait_for(complete, what="the last Service and Gslb answering", timeout=300, watch=[backend.process])
    return Loaded(api, services, slices, gslbs, created, backend, server, sync, rss_ready, cpu_ready,
                  at_ready, t0, time.monotonic() - t0, summary_rows(sync_profile.out, 15), load_ready,
                  list_seconds, stream_seconds, sync_share, round(lab_wait, 1), lab_quiet)


def paginated_list_seconds(api: Api, obj: Obj) -> float:
    """How long the apiserver takes to list `obj`'s collection in the backend informer's pages: the part
    of the sync the backend only waits for."""
    t0 = time.monotonic()
    cont = ""
    while True:
        query = f"?limit={PAGE}" + (f"&continue={cont}" if cont else "")
        status, page = api.call("GET", collection(obj) + query)
        if status != 200:
            raise RuntimeError(f"listing {collection(obj)}: {status}")
        cont = page["metadata"].get("continue") or ""
        if not cont:
            return time.monotonic() - t0


def streamed_list_seconds(api: Api, obj: Obj) -> float:
    """How long the apiserver takes to stream `obj`'s collection as the backend's informer lists it: a
    watch that first sends every object (each line decoded, as the informer does) and then a bookmark
    marking the end of that initial state."""
    conn = http.client.HTTPSConnection(api.host, api.port, context=api.ssl, timeout=600)
    t0 = time.monotonic()
    try:
        query = urllib.parse.urlencode([("watch", "true"), ("allowWatchBookmarks", "true"), *STREAMING_LIST,
                                        ("timeoutSeconds", 600)])
        conn.request("GET", f"{collection(obj)}?{query}",
                     headers={"Authorization": f"Bearer {api.token}", "Accept": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"streaming {collection(obj)}: {resp.status} {resp.read()[:200]!r}")
        for line in resp:
            event = json.loads(line)
            annotations = event["object"]["metadata"].get("annotations") or {}
            if event["type"] == "BOOKMARK" and annotations.get(INITIAL_EVENTS_END) == "true":
                return time.monotonic() - t0
        raise RuntimeError(f"streaming {collection(obj)}: ended before the initial state did")
    finally:
        conn.close()


def addresses(server: str, name: str, rtype: str = "A") -> list[str]:
    want = dns.rdatatype.from_text(rtype)
    reply = dataset.ask(server, name, rtype)
    return sorted(rd.to_text() for rr in reply.answer if rr.rdtype == want for rd in rr)


def trial(change: Callable[[], None], done: Callable[[], bool]) -> float:
    """Seconds from just before the API write to the first answer through CoreDNS that shows it (given
    up after TRIAL_TIMEOUT: that time is what the trial counts, so a slow change shows in the figures)."""
    t0 = time.perf_counter()
    change()
    deadline = t0 + TRIAL_TIMEOUT
    while not done():
        if time.perf_counter() > deadline:
            print(f"  a change did not show in the answer within {TRIAL_TIMEOUT:.0f} s", flush=True)
            break
        time.sleep(POLL)
    return time.perf_counter() - t0


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    return {"trials": len(ms), "p50_ms": round(percentile(ms, 50), 1), "p99_ms": round(percentile(ms, 99), 1),
            "max_ms": round(ms[-1], 1), "mean_ms": round(statistics.fmean(ms), 1)}


def trials_phase(api: Api, server: str, services: list[Obj], slices: list[Obj], trials: int,
                 first: int) -> dict[str, dict[str, float]]:
    """`trials` rounds of: a Service's LB IP changed, then a GSLB host's only endpoint unready and ready."""
    service_trials, gslb_trials = [], []
    n = len(services)
    for k in range(first, first + trials):
        i = (k * 7919) % n
        svc, slc, new = services[i], slices[i], lb_ip(i, 1 + k)
        service_trials.append(trial(
            lambda svc=svc, new=new: api.patch_status(svc, {"loadBalancer": {"ingress": [{"ip": new}]}}),
            lambda i=i, new=new: addresses(server, f"s-{i}.{dataset.ZONE}") == [new]))
        host = f"g-{i}.{dataset.GSLB_ZONE}"
        for ready in (False, True):
            gslb_trials.append(trial(
                lambda slc=slc, ready=ready: api.patch(
                    slc, {"endpoints": [{"addresses": slc["endpoints"][0]["addresses"],
                                         "conditions": {"ready": ready}}]}),
                lambda host=host, ready=ready: bool(addresses(server, host)) == ready))
    return {"service": summary(service_trials), "gslb": summary(gslb_trials),
            "all": summary(service_trials + gslb_trials)}


def wait_quiet(pid: int, timeout: float = QUIET_TIMEOUT) -> bool:
    """Until the backend's start-up work (the leader writing every Gslb's status) is done: under 10%
    of a core for 3 s. False if that did not happen within `timeout`."""
    return quiet_within(lambda: tree_cpu_seconds(pid), timeout)


def quiet_within(cpu_seconds: Callable[[], float], timeout: float) -> bool:
    """Until `cpu_seconds()` grows by under 10% of a core over 3 s; False if not within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = cpu_seconds()
        time.sleep(3)
        if cpu_seconds() - before < 0.3:
            return True
    return False


def run(bed: Bed, n: int = 10_000, trials: int = 20, n_gslbs: int | None = None) -> dict[str, object]:
    n_gslbs = n if n_gslbs is None else n_gslbs
    up = load(bed, n, n_gslbs)
    api, server, services, slices, pid = up.api, up.server, up.services, up.slices, up.pid
    startup = trials_phase(api, server, services[:n_gslbs], slices, trials, 0)
    print(f"  change -> answer right after ready: {startup['all']}", flush=True)
    t_quiet = time.monotonic()
    quiet = wait_quiet(pid)
    start_up_work = time.monotonic() - up.started
    print(f"  backend idle {start_up_work:.0f} s after start (quiet: {quiet})", flush=True)
    load_avg = loadavg()
    with Sampler(pid, bed.workdir / "backend-profile-trials.txt") as sampler:
        steady = trials_phase(api, server, services[:n_gslbs], slices, trials, trials)
    after = rss_by_process(pid)
    result = {
        "services": n,
        "gslbs": n_gslbs,
        "endpointslices": n_gslbs,
        "create_seconds": round(up.create_seconds, 1),
        "created_via": "etcd (bulk_create)" if n > BULK_ABOVE else "api",
        "sync_seconds": round(up.sync_seconds, 2),
        "api_list_services_seconds": round(up.list_seconds, 2),
        "api_stream_list_services_seconds": round(up.stream_seconds, 2),
        "complete_at_ready": up.complete,
        "all_answering_seconds": round(up.all_served, 2),
        "rss_mib_at_ready": total_mib(up.rss_ready),  # the process tree's, summed
        "rss_mib_after_trials": total_mib(after),
        "rss_mib_at_ready_by_process": mib(up.rss_ready),
        "rss_mib_after_trials_by_process": mib(after),
        "backend_cpu_seconds_to_ready": round(up.cpu_ready, 1),
        "cpu_share_during_sync": up.sync_cpu_share,
        "lab_quiet_wait_seconds": up.lab_quiet_wait if up.lab_quiet else None,
        "loadavg_at_ready": up.loadavg_ready,
        "loadavg_trials": load_avg,
        "backend_idle_after_seconds": round(start_up_work, 1) if quiet else None,
        "quiet_wait_seconds": round(time.monotonic() - t_quiet, 1),
        "change_to_answer_service": steady["service"],
        "change_to_answer_gslb_health": steady["gslb"],
        "change_to_answer_all": steady["all"],
        "change_to_answer_p99_ms": steady["all"]["p99_ms"],
        "startup_change_to_answer_all": startup["all"],
        "apiserver_rss_mib": round(rss_bytes(bed.plane.apiserver.pid or 0) / 2**20, 1),
        "profile_during_sync": up.sync_profile,
        "profile_during_trials": summary_rows(sampler.out, 15),
    }
    print(f"  change -> answer once idle: Service LB IP {result['change_to_answer_service']}, "
          f"GSLB health {result['change_to_answer_gslb_health']}", flush=True)
    return result
