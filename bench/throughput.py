"""(a) CoreDNS's file plugin, (b) CoreDNS -> grpc -> backend, (c) the same with `cache`: one run, one mix.

Each target gets a short warm-up, then dnsperf for the same fixed time; the backend's CPU time per query
is its utime+stime over the run divided by the answered queries. Last, (b) again at half of its peak
rate (dnsperf -Q), the latency a user sees on a loaded but not saturated server. (f), CoreDNS -> grpc ->
`grpc-floor` (bench/floor.py), runs beside (b) at the peak and at that rate: the hop's own cost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench import dataset, dnsperf
from bench.env import Bed
from bench.floor import Floor
from bench.objects import Api
from bench.procstat import EXITED, cpu_by_process, loadavg, spent
from lab.coredns import GRPC_TEMPLATE, CoreDNS
from lab.proc import wait_for
from lab.sidecar import Backend

WARMUP = 2.0
SWEEP = (0.1, 0.25)  # shares of (b)'s peak rate for the latency sweep (0.5 is the goal's own run)
# The shipped Corefile with `cache` in front of grpc (the zones here are not geoip).
CACHED_TEMPLATE = GRPC_TEMPLATE.replace("    grpc .", "    cache 30\n    grpc .")
# The ExternalDNS zone straight to grpc (no view, no rewrite); the shipped blocks only for the GSLB zone.
SPLIT_TEMPLATE = """${plain} {
    bind ${bind}
    errors
    grpc . ${grpc}
}
""" + GRPC_TEMPLATE.replace("${zones}", "${gslb}")


def measure(label: str, server: str, mix: Path, seconds: float, pids: dict[str, int], out: Path,
            rate: float | None = None, warmup: float = WARMUP) -> dict[str, object]:
    """dnsperf against `server` with the CPU seconds each of `pids` (with its children) spent per
    answered query; a process tree's split by process beside it."""
    if warmup:
        dnsperf.run(server, mix, warmup, rate=rate)
    before = {name: cpu_by_process(pid) for name, pid in pids.items()}
    load = loadavg()
    run = dnsperf.run(server, mix, seconds, rate=rate, out=out / f"dnsperf-{label}.txt")
    after = {name: cpu_by_process(pid) for name, pid in pids.items()}
    result = run.as_dict()
    result["label"] = label
    result["loadavg_before"] = load
    by_process = {name: spent(before[name], after[name]) for name in pids}
    used = {name: sum(v.values()) for name, v in by_process.items()} | {"dnsperf": run.cpu_seconds}
    scale = 1e6 / max(run.completed, 1)
    result["cpu_us_per_query"] = {name: round(v * scale, 1) for name, v in used.items()}
    result["cpu_us_per_query_by_process"] = {  # only the trees with children ("main" and EXITED always)
        name: {p: round(v * scale, 1) for p, v in tree.items()}
        for name, tree in by_process.items() if set(tree) - {"main", EXITED}}
    result["cpu_share"] = {name: round(v / seconds, 2) for name, v in used.items()}
    print(f"  {label:28} {run.qps:>9,.0f} q/s  lost {run.lost:>5}  p50 {run.p50_ms:.3f} ms  "
          f"p99 {run.p99_ms:.3f} ms  cpu/query {result['cpu_us_per_query']}", flush=True)
    return result


def backend_stack(bed: Bed, upstreams: str, name: str, template: str = GRPC_TEMPLATE) -> CoreDNS:
    """CoreDNS serving the bench's two zones through its grpc plugin to `upstreams` (backends, the floor)."""
    return bed.coredns(template, name, zones=(dataset.ZONE, dataset.GSLB_ZONE), grpc=upstreams)


def load_dataset(bed: Bed) -> None:
    api = Api(bed.plane)
    objs = dataset.objects()
    api.create(objs[0])
    api.create_all(objs[1:])


@dataclass
class Setup:
    """The servers of one run over one backend, the floor behind its own CoreDNS, and dnsperf's input."""

    backend: Backend
    uncached: CoreDNS
    split: CoreDNS
    ceiling: CoreDNS
    cached: CoreDNS
    floor: Floor
    floored: CoreDNS  # CoreDNS -> grpc -> the floor
    mix: Path

    @property
    def backend_pid(self) -> int:
        assert self.backend.process.pid is not None
        return self.backend.process.pid

    def pids(self, coredns: CoreDNS) -> dict[str, int]:
        return {"backend": self.backend_pid, "coredns": coredns.process.pid or 0}

    @property
    def floor_pids(self) -> dict[str, int]:
        return {"floor": self.floor.process.pid or 0, "coredns": self.floored.process.pid or 0}


def setup(bed: Bed) -> Setup:
    """Records into the apiserver, the backend, the three CoreDNS; checks all three answer alike."""
    t0 = time.monotonic()
    load_dataset(bed)
    backend = bed.backend(dataset.BACKEND_FLAGS)
    uncached = backend_stack(bed, backend.grpc, "coredns-grpc")
    wait_for(lambda: dataset.ready(uncached.address), what="every bench name answering through CoreDNS",
             timeout=90, watch=[backend.process, uncached.process])
    mix = bed.workdir / "queries.txt"
    questions = dataset.write_mix(mix)
    files = dataset.write_zone_files(uncached.address, questions, bed.workdir)
    ceiling = bed.coredns(dataset.corefile_file(files), "coredns-file")
    cached = backend_stack(bed, backend.grpc, "coredns-grpc-cache", CACHED_TEMPLATE)
    split = bed.coredns(SPLIT_TEMPLATE, "coredns-grpc-split", plain=dataset.ZONE, gslb=dataset.GSLB_ZONE,
                        grpc=backend.grpc)
    want = dataset.answer_sets(uncached.address, questions)
    for other in (ceiling, cached, split):
        diff = dataset.differences(want, dataset.answer_sets(other.address, questions))
        if diff:
            raise RuntimeError(f"{other.process.name} answers unlike the backend:\n" + "\n".join(diff))
    floor = bed.floor()
    floored = backend_stack(bed, floor.grpc, "coredns-floor")
    print(f"set-up {time.monotonic() - t0:.1f} s; {len(questions)} distinct questions, all three servers "
          f"give the same answers", flush=True)
    return Setup(backend, uncached, split, ceiling, cached, floor, floored, mix)


Target = tuple[str, dict[str, int], float | None]  # server, pids to account, rate limit


def best_of(label: str, runs: list[dict[str, object]]) -> dict[str, object]:
    """The best round (highest q/s; lowest p99 when the rate was fixed), the others' figures beside it.

    Others' tests share this machine's two cores; the best of interleaved rounds is the figure least
    disturbed by them, and every round is kept in results.json.
    """
    limited = "-Q" in str(runs[0]["command"])
    best = dict(min(runs, key=lambda r: float(r["p99_ms"])) if limited  # type: ignore[arg-type]
                else max(runs, key=lambda r: float(r["qps"])))  # type: ignore[arg-type]
    best["label"] = label
    best["rounds"] = [{k: r[k] for k in ("qps", "lost", "p50_ms", "p99_ms", "loadavg_before")} for r in runs]
    return best


def interleaved(targets: dict[str, Target], mix: Path, seconds: float, rounds: int, out: Path,
                ) -> dict[str, dict[str, object]]:
    """Every target once per round, round after round, so a burst of outside load hits all alike."""
    runs: dict[str, list[dict[str, object]]] = {label: [] for label in targets}
    for k in range(rounds):
        for label, (server, pids, rate) in targets.items():
            runs[label].append(measure(f"{label}-{k}", server, mix, seconds, pids, out, rate=rate))
    return {label: best_of(label, r) for label, r in runs.items()}


def run(bed: Bed, seconds: float, rounds: int = 3) -> dict[str, object]:
    """Everything of point 1 of issue 7; returns the raw figures for bench/results.json."""
    s = setup(bed)
    out = bed.workdir
    each = seconds / rounds
    peak = interleaved({
        "a_file": (s.ceiling.address, {"coredns": s.ceiling.process.pid or 0}, None),
        "b_grpc": (s.uncached.address, s.pids(s.uncached), None),
        "b_grpc_split": (s.split.address, s.pids(s.split), None),
        "c_grpc_cache": (s.cached.address, s.pids(s.cached), None),
        "f_floor": (s.floored.address, s.floor_pids, None),
    }, s.mix, each, rounds, out)
    b_peak = float(peak["b_grpc"]["qps"])  # type: ignore[arg-type]
    # (a) at the same fixed rate is the control: the latency tail this machine gives any server then;
    # (f), the tail any upstream of the grpc plugin gets
    half = interleaved({"b_grpc_half_rate": (s.uncached.address, s.pids(s.uncached), b_peak / 2),
                        "a_file_same_rate": (s.ceiling.address, {"coredns": s.ceiling.process.pid or 0},
                                             b_peak / 2),
                        "f_floor_same_rate": (s.floored.address, s.floor_pids, b_peak / 2)},
                       s.mix, each, rounds, out)
    # Where p99 <= 5 ms holds: (b) at lower fixed rates, one round each.
    sweep = [measure(f"b_grpc_at_{share:.0%}", s.uncached.address, s.mix, each, s.pids(s.uncached), out,
                     rate=b_peak * share) for share in SWEEP]
    a, b, c = (float(peak[k]["qps"]) for k in ("a_file", "b_grpc", "c_grpc_cache"))  # type: ignore[arg-type]
    return {
        "mix": [{"what": x.what, "percent": x.percent, "names": len(x.questions)} for x in dataset.shares()],
        **peak,
        **half,
        "b_grpc_rate_sweep": [{k: r[k] for k in ("label", "qps", "p50_ms", "p99_ms", "cpu_us_per_query")}
                              for r in sweep],
        "seconds_per_target": seconds,
        "rounds": rounds,
        "ratio_uncached": round(b / a, 3),
        "ratio_cached": round(c / a, 3),
        "corefiles": {"a": s.ceiling.corefile_text, "b": s.uncached.corefile_text,
                      "b2": s.split.corefile_text, "c": s.cached.corefile_text,
                      "f": s.floored.corefile_text},
    }
