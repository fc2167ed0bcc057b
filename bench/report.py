"""BENCHMARKS.md from bench/results.json: the table, the goals, the machine and the exact command."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.metrics import STALL_CAUSES

SIDE_SCRIPTS = Path(__file__).resolve().parent / "side-scripts.md"

TARGETS = (
    ("a_file", "(a) CoreDNS `file` plugin (ceiling)"),
    ("b_grpc", "(b) CoreDNS -> grpc -> backend"),
    ("b_grpc_split", "(b2) as (b), the EDNS view and ECS rewrite only on the GSLB zone"),
    ("c_grpc_cache", "(c) (b) with CoreDNS `cache`"),
    ("b_grpc_half_rate", "(b) at half its peak rate (`-Q`)"),
    ("a_file_same_rate", "(a) at that same rate (control)"),
    ("f_floor", "(f) CoreDNS -> grpc -> `grpc-floor` (the hop's floor: one A record, no policy)"),
    ("f_floor_same_rate", "(f) at (b)'s half-peak rate (the hop's floor)"),
)

GRPCIO_HISTORY = (
    "Before `backend/h2grpc.py` (commit 69fe8f5) the backend used grpcio's asyncio server: in this harness "
    "it cost 170-270 µs of backend CPU per query and py-spy put over 90% of the backend's samples in "
    "cygrpc and asyncio hand-offs, 4% in the DnsService handler; (b) was 3,500 q/s on a busy machine."
)


ISSUE12_HISTORY = (
    "Before issue 12 (3b51836, 10k + 10k): `/metrics` was formatted on the answer loop (0.52 s; 1.75 s "
    "measured here with prometheus_client, 19 ms now from kept per-Gslb lines on a worker thread); the "
    "edge publisher recomputed `names.wanted()` over the whole Store and transferred the zone on every "
    "change (18-37% of the samples under churn); the peers' local refresh sorted and hashed every host "
    "twice per change (90 ms; now about 3 ms per changed Gslb, on a worker thread); every new or deleted "
    "name was a full compile (34% of the samples; now a 15-20 ms patch); a full garbage collection over "
    "the 10k + 10k heap held the GIL for 0.6 s (now the long-lived heap is frozen after each full "
    "compile). Memory: a Service object decoded from a watch event held 10.8 KB, 2.9 KB now "
    "(managedFields dropped, strings interned)."
)


def _share(rows: list[list[Any]], prefix: str) -> float | None:
    return next((tot for fn, _own, tot in rows if fn.startswith(prefix)), None)


def _busy(r: dict[str, Any], cores: int) -> float:
    """Share of the machine the whole chain (load generator included) used during a run."""
    return sum((r.get("cpu_us_per_query") or {}).values()) * float(r["qps"]) / 1e6 / cores


def _notes(res: dict[str, Any]) -> list[str]:
    """Where the time goes, computed from this run's figures (so it never disagrees with the tables)."""
    out = ["## Where the time goes", ""]
    t, w, s, p = (res.get(k) or {} for k in ("throughput", "workers", "scale", "profile"))
    if t:
        a, b = t["a_file"]["cpu_us_per_query"], t["b_grpc"]["cpu_us_per_query"]
        top = p.get("top") or []
        handled = _share(top, "DnsServer.handle")
        waiting = next((own for fn, own, _tot in top if fn.startswith("EpollSelector.select")), 0.0)
        where = ""
        if handled is not None:
            busy = 100 - waiting
            where = (f"; of the samples where py-spy finds it busy (not waiting in epoll, {busy:.0f}%), "
                     f"{100 * handled / busy:.0f}% are `DnsServer.handle` (table lookup and metrics), "
                     "the rest HTTP/2 framing and asyncio socket I/O (`backend/h2grpc.py`)")
        out.append(f"- (b) costs {b['backend']:.0f} µs of backend CPU per query{where}. {GRPCIO_HISTORY}")
        out.append(
            f"- CoreDNS is now the larger cost of (b): {b['coredns']:.0f} µs per query against "
            f"{a['coredns']:.0f} µs when it answers from its `file` plugin in (a). The grpc plugin's "
            "Go client (a stream per query, protobuf, HTTP/2, unpacking our reply) runs on the same "
            "two cores as dnsperf and the backend, so it caps (b) whatever the backend does.")
        b2 = t.get("b_grpc_split")
        if b2:
            c2 = b2["cpu_us_per_query"]
            gain = float(b2["qps"]) / float(t["b_grpc"]["qps"])
            out.append(
                f"- The EDNS `view` and `rewrite edns0 subnet` cost CoreDNS "
                f"{b['coredns'] - c2['coredns']:.0f} µs and the backend "
                f"{b['backend'] - c2['backend']:.0f} µs per query ((b) vs (b2)); only geoip needs them, "
                f"so a Corefile that keeps them off ExternalDNS-only zones gains {gain:.1f}x here.")
        half, ctl = t.get("b_grpc_half_rate"), t.get("a_file_same_rate")
        if half and ctl:
            cores = (res.get("machine") or {}).get("cores") or 2
            busy = {k: _busy(r, cores) for k, r in (("b", half), ("a", ctl))}
            out.append(
                f"- At half of (b)'s peak, (b)'s p99 is {half['p99_ms']:.2f} ms; CoreDNS's `file` plugin at "
                f"the same rate has p99 {ctl['p99_ms']:.2f} ms. The tail follows the load (the sweep): at a "
                "fixed rate each query costs more than at the peak (fewer replies share a wake-up and a "
                f"write), so dnsperf + CoreDNS + backend keep the {cores} cores {busy['b']:.0%} busy for (b) "
                f"against {busy['a']:.0%} for (a), and queueing grows the tail.")
        floor = t.get("f_floor_same_rate")
        if floor:
            out.append(
                f"- The hop's floor: CoreDNS -> grpc -> `grpc-floor` (grpc-go answering one A record with no "
                f"policy) at the same rate has p99 {floor['p99_ms']:.2f} ms (others: {_others(floor)}), "
                f"and peaks at {float(t['f_floor']['qps']):,.0f} q/s against (b)'s "
                f"{float(t['b_grpc']['qps']):,.0f}. What (b)'s tail has beyond (a)'s is the grpc hop on "
                "these two cores, paid by any upstream; what it has beyond (f)'s is ours.")
        cached = t["c_grpc_cache"]["cpu_us_per_query"]["backend"]
        out.append(
            f"- (c): with `cache` the backend is asked about once per TTL per name ({cached:.1f} µs "
            "backend CPU per query); CoreDNS's cache answers more cheaply than its file plugin, "
            "which is why (c) can beat (a).")
    if w and w.get("best"):
        rates = {k: float(r["qps"]) for k, r in w.items() if isinstance(r, dict) and "qps" in r}
        spread = max(rates.values()) / min(rates.values())
        verdict = (f"all within {spread - 1:.0%} of each other, so one backend process is enough here"
                   if spread < 1.1 else f"best here is `{w['best']}`")
        out.append(
            f"- Several backend processes: {verdict}. On two cores a second backend only takes CPU "
            "from CoreDNS and dnsperf, and CoreDNS pays for each extra upstream connection; with "
            "SO_REUSEPORT one CoreDNS keeps one HTTP/2 connection, so the kernel hands all of it to one "
            "process (see `backends busy`). More processes pay off only with idle cores, and then by "
            "listing several backends in the grpc plugin (`policy round_robin`), not by SO_REUSEPORT.")
    if s:
        rows = s.get("profile_during_trials") or []
        compiling, writing = _share(rows, "Compiler._compile"), _share(rows, "Controller._write_status")
        c = s["change_to_answer_all"]
        if compiling is not None:
            also = f", {writing:.0f}% the leader writing Gslb statuses" if writing and writing >= 1 else ""
            out.append(
                f"- Change -> answer with {s['services']:,} + {s['gslbs']:,} objects (p50 "
                f"{c['p50_ms']} ms): {compiling:.0f}% of the backend's samples during the trials are "
                f"recompiling the answer table (`Compiler._compile`){also}. Since issue 12 the "
                "incremental `Recompiler` also patches new and deleted names (a GSLB health flip adds or "
                "removes `localtargets-<host>`), CNAMEs, wildcards and conflicts; only a change touching a "
                "delegation takes the full compile (0.3-0.45 s CPU with this many names, 3 s on a busy "
                f"machine). RSS went from {s['rss_mib_at_ready']} MiB at sync to "
                f"{s['rss_mib_after_trials']} MiB after the trials in this run.")
    c = res.get("churn")
    if c:
        rows = c.get("profile_during_churn") or []
        top = ", ".join(f"`{fn}` {tot:.0f}%" for fn, _own, tot in rows[:4])
        out.append(
            f"- Under churn ({c['changes_per_second']:g} changes/s, {c['services']:,} + {c['gslbs']:,} "
            f"objects) the backend's samples went to {top}. {ISSUE12_HISTORY}")
    return [*out, ""]


def _ms(v: Any) -> str:
    return f"{float(v):.2f}"


def _cpu(r: dict[str, Any], who: str) -> str:
    v = (r.get("cpu_us_per_query") or {}).get(who)
    split = (r.get("cpu_us_per_query_by_process") or {}).get(who)
    return "-" if v is None else f"{v:.0f}" + (f" ({_split(split, '{:.0f}')})" if split else "")


def _split(by_process: dict[str, float] | None, fmt: str = "{}") -> str:
    """A process tree's figure by process ("main 290, answer 35"), leaving out what is 0."""
    return ", ".join(f"{name} {fmt.format(v)}" for name, v in (by_process or {}).items() if v)


def _upstream(r: dict[str, Any]) -> str:
    """The grpc upstream's CPU per query: the backend's, or the floor's in (f)."""
    return _cpu(r, "floor" if "floor" in (r.get("cpu_us_per_query") or {}) else "backend")


def _servers_cpu(r: dict[str, Any]) -> float:
    """CPU µs per query of everything but the load generator."""
    return sum(v for k, v in (r.get("cpu_us_per_query") or {}).items() if k != "dnsperf")


def _others(r: dict[str, Any]) -> str:
    """The other rounds: their q/s, or their p99 when the rate was fixed (the best is the lowest p99)."""
    rounds = list(r.get("rounds") or ())
    if "-Q" in str(r.get("command")):
        rest = [x for x in rounds if x["p99_ms"] != r["p99_ms"]]
        return ", ".join(f"p99 {float(x['p99_ms']):.2f} ms" for x in rest) or "-"
    return ", ".join(f"{float(x['qps']):,.0f}" for x in rounds if x["qps"] != r["qps"]) or "-"


def _throughput(t: dict[str, Any]) -> list[str]:
    a = float(t["a_file"]["qps"])
    lines = [
        "| target | queries/s (best round) | other rounds | vs (a) | lost | p50 ms | p99 ms "
        "| CPU µs/query: backend (floor in (f)) | CoreDNS | dnsperf |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in TARGETS:
        r = t.get(key)
        if not r:
            continue
        lines.append(f"| {label} | {float(r['qps']):,.0f} | {_others(r)} | {float(r['qps']) / a:.2f} | "
                     f"{r['lost']} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_upstream(r)} | "
                     f"{_cpu(r, 'coredns')} | {_cpu(r, 'dnsperf')} |")
    return lines


def _sweep(t: dict[str, Any]) -> list[str]:
    rows = t.get("b_grpc_rate_sweep") or []
    half = t.get("b_grpc_half_rate")
    if not rows or not half:
        return []
    rows = [*rows, half]
    return ["(b)'s latency at fixed rates below its peak (one round each; 50% is the goal's run):", "",
            "| rate q/s | p50 ms | p99 ms | CPU µs/query: backend | CoreDNS |", "|---:|---:|---:|---:|---:|",
            *(f"| {float(r['qps']):,.0f} | {_ms(r['p50_ms'])} | {_ms(r['p99_ms'])} | {_cpu(r, 'backend')} | "
              f"{_cpu(r, 'coredns')} |" for r in rows), ""]


def _cost(t: dict[str, Any]) -> str:
    """The qps ratio that CPU cost alone predicts: robust to other load, unlike queries/s."""
    a, b, c = (_servers_cpu(t[k]) for k in ("a_file", "b_grpc", "c_grpc_cache"))
    floor = (f", (f) {_servers_cpu(t['f_floor']):.0f} µs (CoreDNS + the floor)" if "f_floor" in t else "")
    return (f"Server CPU per query (CoreDNS + backend, the part that does not depend on who else uses the "
            f"machine): (a) {a:.0f} µs, (b) {b:.0f} µs, (c) {c:.0f} µs{floor}, so by cost alone (b)/(a) = "
            f"{a / b:.2f} and (c)/(a) = {a / c:.2f}.")


def _round_ratios(t: dict[str, Any]) -> str:
    """The ratios within each round, whose targets ran back to back: the spread the machine gives."""
    def per_round(server: str) -> str:
        pairs = zip(t["a_file"]["rounds"], t[server]["rounds"], strict=True)
        return ", ".join(f"{b['qps'] / a['qps']:.3f}" for a, b in pairs)

    return (f"Round by round, (b)/(a) {per_round('b_grpc')}; (c)/(a) {per_round('c_grpc_cache')}."
            if "rounds" in t["a_file"] else "")


def _goals(res: dict[str, Any]) -> list[str]:
    t, s = res.get("throughput") or {}, res.get("scale") or {}
    rows = []

    def row(goal: str, want: str, value: Any, ok: bool | None) -> None:
        verdict = "not measured" if ok is None else ("met" if ok else "**missed**")
        rows.append(f"| {goal} | {want} | {value} | {verdict} |")

    if t:
        row("(b)/(a) queries/s", ">= 0.25", f"{t['ratio_uncached']:.3f}", t["ratio_uncached"] >= 0.25)
        row("(c)/(a) queries/s", ">= 0.90", f"{t['ratio_cached']:.3f}", t["ratio_cached"] >= 0.90)
        half, floor = t["b_grpc_half_rate"], t.get("f_floor_same_rate")
        beside = (f"; the hop's floor (f) at that rate: {floor['p99_ms']:.2f} ms (others: {_others(floor)})"
                  if floor else "")
        row("p99 at half of (b)'s peak rate", "<= 5 ms",
            f"{half['p99_ms']:.2f} ms at {half['qps']:,.0f} q/s (best round; others: {_others(half)})"
            + beside,
            half["p99_ms"] <= 5)
    if s:
        row(f"first full sync, {s['services']:,} Services + {s['gslbs']:,} Gslbs", "< 20 s",
            f"{s['sync_seconds']} s", s["sync_seconds"] < 20)
        row("backend RSS at that full sync", "< 500 MB", f"{s['rss_mib_at_ready']} MiB",
            s["rss_mib_at_ready"] * 2**20 < 500e6)
        row("backend RSS after the change -> answer trials", "< 500 MB", f"{s['rss_mib_after_trials']} MiB",
            s["rss_mib_after_trials"] * 2**20 < 500e6)
        c = s["change_to_answer_all"]
        row("change -> answer p99, everything loaded (backend idle)", "< 1 s",
            f"{c['p99_ms']} ms ({c['trials']} trials)", c["p99_ms"] < 1000)
    def at_most(goal: str, value: float | None, limit: float, unit: str = "MiB") -> None:
        row(goal, f"<= {limit:g} {unit}", f"{value} {unit}", value is not None and value <= limit)

    if s:
        at_most("scale RSS at ready (issue 12)", s["rss_mib_at_ready"], 300)
        at_most("scale RSS after the trials (issue 12)", s["rss_mib_after_trials"], 330)
    big = res.get("scale_100k") or {}
    if big:
        at_most(f"first full sync, {big['services']:,} Services + {big['gslbs']:,} Gslbs",
                big["sync_seconds"], 60, "s")
        at_most("RSS at that sync", big["rss_mib_at_ready"], 1024)
        at_most("change -> answer p99 at that size (idle)", big["change_to_answer_p99_ms"], 1000, "ms")
    c = res.get("churn") or {}
    if c:
        p99, quiet = c["answer_p99_ms"], c["answer_p99_ms_quiet"]
        floor = (f"; the hop's floor (f) under the same churn: {c['answer_p99_ms_floor']} ms (quiet "
                 f"{c['answer_p99_ms_floor_quiet']} ms)" if "answer_p99_ms_floor" in c else "")
        row("answer p99 under churn", "<= 2 x quiet and <= 5 ms", f"{p99} ms (quiet {quiet} ms){floor}",
            p99 <= 2 * quiet and p99 <= 5)
        at_most("loop lag max under churn", c["loop_lag_max_ms"], 20, "ms")
        if "loop_held_max_ms" in c:
            at_most("... the part of one lag this process caused (not waiting for a core)",
                    c["loop_held_max_ms"], 20, "ms")
        for q, limit in (("p50", 200), ("p99", 1000)):
            at_most(f"change -> answer {q} under churn", c[f"change_to_answer_{q}_ms"], limit, "ms")
            if f"write_to_answer_{q}_ms" in c:
                at_most(f"... from the API's acknowledgment of the write, {q}", c[f"write_to_answer_{q}_ms"],
                        limit, "ms")
        row("RSS flat under churn", "end <= 1.05 x start", f"{c['rss_mib_start']} -> {c['rss_mib_end']} MiB",
            c["rss_mib_end"] <= 1.05 * c["rss_mib_start"])
        row("wrong answers after churn", "0", str(c["wrong_answers"]), c["wrong_answers"] == 0)
    b = res.get("burst") or {}
    if b:
        at_most(f"loop lag max while a namespace of {b['services']:,} Services + {b['gslbs']:,} Gslbs is "
                "deleted", b["loop_lag_max_ms"], 20, "ms")
        at_most("... the part of one lag this process caused", b["loop_held_max_ms"], 20, "ms")
        row("half-applied or undone answers during that burst (bench/burst.py `Judge`)", "0",
            f"{b['wrong_answers']} of {b['answers_judged']:,}", b["wrong_answers"] == 0)
        row("SERVFAIL during that burst", "0", f"{b['answers_servfail']} of {b['answers_asked']:,}",
            b["answers_servfail"] == 0)
    return ["| goal | target | measured | |", "|---|---|---|---|", *rows] if rows else []


def _gc(phase: dict[str, Any]) -> str:
    return ", ".join(f"{g['collections']} / {g['seconds']} / {g['over_50ms']}"
                     for g in (phase[f"gc_gen{n}"] for n in range(3)))


def _stalls(phase: dict[str, Any]) -> str:
    stalls = phase["loop_stall_seconds"]
    return " / ".join(str(stalls.get(cause, "-")) for cause in STALL_CAUSES)  # "-": not split then


def _cores(phase: dict[str, Any]) -> str:
    return f"{phase['machine_busy_cores']}: {_by_share(phase['cpu_share_by_process'])}"


def _by_share(shares: dict[str, float]) -> str:
    """Cores by process, the busiest first, those that used none left out."""
    return ", ".join(f"{name} {v}" for name, v in sorted(shares.items(), key=lambda kv: -kv[1]) if v)


def _p50_p99(t: dict[str, Any] | None) -> str:
    return f"{t['p50_ms']} / {t['p99_ms']}" if t else "-"


def _rss_split(r: dict[str, Any], *when: str) -> str:
    """The process tree's RSS by process at each moment, when measured so (the sums are all processes')."""
    splits = [r.get(f"rss_mib_{w}_by_process") for w in when]
    return f" (MiB by process: {' / '.join(_split(x) for x in splits)})" if all(splits) else ""


def _churn(c: dict[str, Any]) -> list[str]:
    busy, quiet = c["during_churn"], c["control"]
    lost_polls = (f"; the churn's own queries with no reply within 2 s: {c['poll_timeouts']}"
                  if "poll_timeouts" in c else "")
    lines = [
        f"{c['services']:,} Services + {c['gslbs']:,} Gslbs loaded; {c['changes_per_second']:g} changes/s "
        f"for {c['seconds']:g} s ({c['changes']} changes, {c['changes_timed_out']} not seen within 10 s), a "
        f"`/metrics` scrape every second, dnsperf at {c['dnsperf_qps_target']:,} q/s; then the same dnsperf "
        "without churn (control)." + (f" The lab's control plane ran at autogroup nice "
                                      f"{c['control_plane_nice']} (lab/kube.py CONTROL_PLANE)."
                                      if "control_plane_nice" in c else ""),
        "",
        "| | churn | control |", "|---|---:|---:|",
        f"| answers/s | {busy['dnsperf']['qps']:,.0f} | {quiet['dnsperf']['qps']:,.0f} |",
        f"| answer p50 / p99 / max ms | {busy['dnsperf']['p50_ms']} / {busy['dnsperf']['p99_ms']} / "
        f"{busy['dnsperf']['max_ms']} | {quiet['dnsperf']['p50_ms']} / {quiet['dnsperf']['p99_ms']} / "
        f"{quiet['dnsperf']['max_ms']} |",
        f"| loop lag max ms | {busy['loop_lag_max_ms']} | {quiet['loop_lag_max_ms']} |",
        *([f"| ... the part of one lag this process caused, max ms | {busy['loop_held_max_ms']} | "
           f"{quiet['loop_held_max_ms']} |"] if "loop_held_max_ms" in busy else []),
        f"| /metrics scrape p50 / max ms | {busy['scrape_p50_ms']} / {busy['scrape_max_ms']} | "
        f"{quiet['scrape_p50_ms']} / {quiet['scrape_max_ms']} |",
        f"| backend CPU (share of one core; all its processes) | {busy['backend_cpu_share']} | "
        f"{quiet['backend_cpu_share']} |",
        *([f"| ... by process | {_split(busy['backend_cpu_share_by_process'])} | "
           f"{_split(quiet['backend_cpu_share_by_process'])} |"]
          if "backend_cpu_share_by_process" in busy else []),
        *([f"| garbage collections (young, middle, full): count / seconds / >= 50 ms | {_gc(busy)} | "
           f"{_gc(quiet)} |"] if "gc_gen0" in busy else []),
        *([f"| loop stalls >= 10 ms, seconds waiting for a core (the machine) / asleep while a thread of "
           f"ours waited for a core (the GIL's holder preempted: the machine) / blocked (the GIL, ours) / "
           f"running the loop's own work | {_stalls(busy)} | {_stalls(quiet)} |"]
          if "loop_stall_seconds" in busy else []),
        *([f"| the two cores: busy, of which by process (cores) | {_cores(busy)} | {_cores(quiet)} |"]
          if "cpu_share_by_process" in busy else []),
        f"| load average | {busy['loadavg']} | {quiet['loadavg']} |",
        "",
        f"RSS {c['rss_mib_start']} MiB before the churn, {c['rss_mib_end']} MiB after it"
        f"{_rss_split(c, 'start', 'end')}; wrong answers at the end: {c['wrong_answers']}{lost_polls}.",
        "",
        "Change -> answer is timed from just before the API write; the write's own round trip (the "
        "apiserver, on the same two cores) and the time from its acknowledgment to the answer (what the "
        "backend controls; 'not seen' counts 10 s from there) are shown apart. " + _polled(c),
        "",
        "| change -> answer | trials | p50 ms | p99 ms | max ms | API write p50 / p99 ms "
        "| acknowledged -> answer p50 / p99 ms | not seen in 10 s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {kind} | {k['trials']} | {k.get('p50_ms', '-')} | {k.get('p99_ms', '-')} | "
          f"{k.get('max_ms', '-')} | {_p50_p99(k.get('api_write'))} | {_p50_p99(k.get('after_write'))} | "
          f"{k['timed_out']} |"
          for kind, k in c["change_to_answer_by_kind"].items()),
    ]
    if "during_churn_floor" in c:
        lines += ["", *_churn_floor(c)]
    if dyn := c.get("service_create_dynamic_cluster_ip"):
        lines += ["", "The churn's Services bring their own ClusterIP: kube-apiserver picks one under a "
                  "single lock, held for an IPAddress write and two counts of every IPAddress. Before the "
                  f"churn, {dyn['trials']} Service creates whose ClusterIP it picked took p50 "
                  f"{dyn['p50_ms']} ms, max {dyn['max_ms']} ms, one at a time (load {dyn['loadavg']})."]
    if c.get("profile_during_churn"):
        lines += ["", "The backend's time during the churn (py-spy, all threads):", "",
                  *_profile_table(c["profile_during_churn"][:12])]
    return lines


def _churn_floor(c: dict[str, Any]) -> list[str]:
    """The same dnsperf against CoreDNS -> grpc -> `grpc-floor`, each after (b)'s phase of the same kind."""
    phases = {"(b), churn": c["during_churn"], "(f) floor, churn": c["during_churn_floor"],
              "(b), control": c["control"], "(f) floor, control": c["control_floor"]}
    return [
        f"The hop's floor: after each phase above, the same dnsperf for {c['floor_seconds']:g} s against "
        "CoreDNS -> grpc -> `grpc-floor` (bench/floor.py: grpc-go, one A record for every query, no "
        "policy), the churn going on (its changes counted above) or not, and the backend doing its "
        "control work alike. The floor's tail is what any upstream of the grpc plugin gets on these cores.",
        "",
        "| | answers/s | p50 / p99 / max ms | the two cores: busy, of which by process (cores) "
        "| load average |",
        "|---|---:|---:|---|---|",
        *(f"| {name} | {p['dnsperf']['qps']:,.0f} | {p['dnsperf']['p50_ms']} / {p['dnsperf']['p99_ms']} / "
          f"{p['dnsperf']['max_ms']} | {_cores(p)} | {p['loadavg']} |" for name, p in phases.items()),
    ]


def _burst(b: dict[str, Any]) -> list[str]:
    before, during, polls = b["before"], b["during"], b["during"]["polls"]
    api = ", ".join(f"{kind} {t} s" for kind, t in b["api_emptied_seconds"].items())
    return [
        f"{b['services']:,} Services + {b['endpointslices']:,} EndpointSlices + {b['gslbs']:,} Gslbs in "
        f"namespace `scale`, {b['survivors']} of each in namespace `keep`; dnsperf at "
        f"{b['dnsperf_qps_target']:,} q/s over names of both, {before['dnsperf']['seconds']:g} s before, "
        "then from just before `scale` is deleted (kube-controller-manager's namespace controller deletes "
        "what it holds) until it is gone from the API and every one of its names answers NXDOMAIN "
        f"({b['burst_seconds']} s). Load average at the delete {during['loadavg_at_delete']}.",
        "",
        "| | before | during the burst |", "|---|---:|---:|",
        f"| answers asked / lost / SERVFAIL | {before['dnsperf']['sent']:,} / {before['dnsperf']['lost']} / "
        f"{before['dnsperf']['rcodes'].get('SERVFAIL', 0)} | {b['answers_asked']:,} / {b['answers_lost']} / "
        f"{b['answers_servfail']} |",
        f"| answer p50 / p99 / max ms | {before['dnsperf']['p50_ms']} / {before['dnsperf']['p99_ms']} / "
        f"{before['dnsperf']['max_ms']} | {during['dnsperf']['p50_ms']} / {during['dnsperf']['p99_ms']} / "
        f"{during['dnsperf']['max_ms']} |",
        f"| loop lag max ms | {before['loop_lag_max_ms']} | {during['loop_lag_max_ms']} |",
        f"| ... the part of one lag this process caused, max ms | {before['loop_held_max_ms']} | "
        f"{during['loop_held_max_ms']} |",
        f"| loop stalls >= 10 ms, seconds waiting for a core / behind a preempted thread of ours / blocked / "
        f"running the loop's own work | "
        f"{_stalls(before)} | {_stalls(during)} |",
        f"| garbage collections (young, middle, full): count / seconds / >= 50 ms | {_gc(before)} | "
        f"{_gc(during)} |",
        f"| backend CPU (share of one core; all its processes) | {before['backend_cpu_share']} | "
        f"{during['backend_cpu_share']} |",
        f"| the two cores: busy, of which by process (cores) | {_cores(before)} | {_cores(during)} |",
        f"| load average | {before['loadavg']} | {during['loadavg']} |",
        "",
        f"From the delete: the API emptied {api}; the answer table held only what is left after "
        f"{b['table_settled_seconds']} s (`coredns_gslb_records`, scraped every second) and the last name "
        f"answered NXDOMAIN after {b['answers_gone_seconds']} s (the sweep's last round over the names "
        f"left took {during['sweep_last_round_seconds']} s). RSS {b['rss_mib_before']} MiB before, "
        f"{b['rss_mib_after']} MiB after{_rss_split(b, 'before', 'after')}.",
        *_leader_writes(b),
        "",
        f"Half-applied or undone answers: **{b['wrong_answers']}** of {b['answers_judged']:,} judged "
        f"({polls['asked']:,} polls, {polls['lost']} without a reply in 2 s){_wrong(b)}. Each answer of a "
        "name in `scale` must be its answer from before, NODATA for a GSLB host (its EndpointSlice gone "
        "before its Gslb and Service, as the API then says), or NXDOMAIN, in that order only (never back); "
        f"each of `keep`'s must be as before. {polls['sample']} names of `scale` and all "
        f"{polls['survivors']} of `keep` were asked throughout ({polls['sample_rate']:g} q/s), every "
        f"other name of `scale` in turn until NXDOMAIN ({polls['sweep_rate']:g} q/s); "
        f"{b['gslb_hosts_through_nodata']:,} GSLB hosts went through NODATA.",
        *(["", "The backend's time during the burst (py-spy, all threads):", "",
           *_profile_table(b["profile_during_burst"][:12])] if b.get("profile_during_burst") else []),
    ]


def _leader_writes(b: dict[str, Any]) -> list[str]:
    """What the leader wrote into the dying namespace (runs from before these figures were kept: none)."""
    if "log_lines" not in b:
        return []
    given_up = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(b["writes_dropped"].items())) or "none"
    return ["", f"The leader's writes into the dying namespace: given up without a retry: {given_up} "
            "(`coredns_gslb_api_writes_dropped_total`, what/why: gone = the API answered 404, "
            "namespace_deleting = not tried, its Namespace had a deletionTimestamp, namespace_terminating = "
            f"refused with 403 NamespaceTerminating). The backend's log from the delete on: "
            f"{b['log_lines']:,} lines, {b['log_warnings']:,} of them warnings."]


def _wrong(b: dict[str, Any]) -> str:
    if not b["wrong_answers"]:
        return ""
    kinds = ", ".join(f"{kind} {n}" for kind, n in b["wrong_by_kind"].items())
    return f" ({kinds}; e.g. {'; '.join(b['wrong_examples'][:3])})"


def _polled(c: dict[str, Any]) -> str:
    """How the churn asked for each change's answer, hence how late a time can be."""
    poll = c.get("poll")
    if poll is None:  # before the spaced polls
        return "Each answer was polled every 10 ms (a time is at most 10 ms late)."
    return (f"Each answer is polled every {poll['first_ms']:g} ms until {poll['first_ms'] / poll['share']:g} "
            f"ms after the acknowledgment, then every {poll['share']:.0%} of the time waited (at most "
            f"{poll['max_ms']:g} ms): a time is at most {poll['first_ms']:g} ms or {poll['share']:.0%} of it "
            f"late, plus one query's round trip. These polls were {poll['queries']:,} queries "
            f"({poll['queries'] / c['seconds']:,.0f}/s) that CoreDNS answered during the churn and not in "
            "the control.")


def _workers(w: dict[str, Any]) -> list[str]:
    lines = ["| backends | how | queries/s (best round) | other rounds | p50 ms | p99 ms | backends busy "
             "| CPU µs/query (each backend) | CoreDNS |",
             "|---:|---|---:|---:|---:|---:|---:|---|---:|"]
    for key, r in w.items():
        if not isinstance(r, dict) or "qps" not in r:
            continue
        mode, n = key.rsplit("_", 1)
        cpu = ", ".join(f"{v:.0f}" for k, v in r["cpu_us_per_query"].items() if k.startswith("backend"))
        lines.append(f"| {n} | {mode} | {float(r['qps']):,.0f} | {_others(r)} | {_ms(r['p50_ms'])} | "
                     f"{_ms(r['p99_ms'])} | {r.get('busy_backends', '?')} | {cpu} | {_cpu(r, 'coredns')} |")
    return lines


def _patch(p: dict[str, Any]) -> list[str]:
    cases = ("address", "new_name", "deleted_name")
    lines = ["The backend's compiler step (Store snapshot, patch, `set_table`) after one Store change, "
             "CPU ms p50 (max) of each case:", "",
             "| names | address changed | new name | name deleted |", "|---:|---:|---:|---:|"]
    for names, row in p["cost"].items():
        cells = " | ".join(f"{row[c]['p50_ms']} ({row[c]['max_ms']})" for c in cases)
        lines.append(f"| {int(names):,} | {cells} |")
    g = p["gc"]
    lines += ["", f"Collections while {g['changes']} changes were compiled in {g['seconds']} s at "
              f"{g['names']:,} names: " + "; ".join(
                  f"generation {n}: {g[f'gen{n}']['collections']}, max {g[f'gen{n}']['max_ms']} ms, "
                  f"{g[f'gen{n}']['total_ms']} ms in all" for n in range(3)) + "."]
    return lines


def _hostile(h: dict[str, Any]) -> list[str]:
    lines = ["| attack | server RSS before / peak / 5 s after (MiB) | queries lost (1 s timeout) "
             "| slowest answer |",
             "|---|---|---:|---:|"]
    for key, r in h.items():
        if isinstance(r, dict):
            lines.append(f"| {key.replace('_', ' ')} | {r['rss_mib_before']} / {r['rss_mib_peak']} / "
                         f"{r['rss_mib_after']} | {r['lost']} of {r['queries']} | "
                         f"{_ms(r['slowest_answer_ms'])} ms |")
    return lines


def _slow_metrics(h: dict[str, Any]) -> list[str]:
    """The /metrics scenarios: what the clients that read slowly or not at all made the server hold,
    and what the well-behaved clients beside them saw; `before` (if kept): the same on older code."""
    lines = ["| scenario (load average at its start) | clients: never read + a byte/s, from addresses "
             "| their connections (closed by the server) | server RSS "
             "before / peak / 5 s after (MiB) | server's socket buffers in the kernel, peak (MiB) | loop "
             "lag max (held) | /metrics scrapes failed | /healthz failed | gRPC queries lost, slowest |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    before = h.get("before") or {}
    rows = [(key, r) for key, r in h.items() if isinstance(r, dict) and key != "before"]
    rows += [(f"before ({before['revision']}, {before['date']}): {key}", r) for key, r in before.items()
             if isinstance(r, dict)]
    lag = lambda v: f"{_ms(v)} ms" if v is not None else "-"  # noqa: E731
    for key, r in rows:
        a = r["attackers"]
        lines.append(f"| {key.replace('_', ' ')} (load {r['loadavg_at_start']}) | "
                     f"{a['never_readers']} + {a['slow_readers']}, {a['addresses']} | "
                     f"{a['connections']:,} ({a['cut']:,}) | {r['rss_mib_before']} / "
                     f"{r['rss_mib_peak']} / {r['rss_mib_after']} | {r['socket_mib_peak']} | "
                     f"{lag(r['loop_lag_max_ms'])} ({lag(r['loop_held_max_ms'])}) | {r['scrapes_failed']} of "
                     f"{r['scrapes'] + r['scrapes_failed']} | {r['healthz_failed']} of {r['healthz']} | "
                     f"{r['lost']} of {r['queries']}, {_ms(r['slowest_answer_ms'])} ms |")
    return lines


def _scale(s: dict[str, Any]) -> list[str]:
    bulk = ", written into etcd" if s.get("created_via", "api") != "api" else ""
    load = f" (load average then {s['loadavg_at_ready']})" if "loadavg_at_ready" in s else ""
    rows = [
        ("objects in the apiserver", f"{s['services']:,} Services, {s['endpointslices']:,} EndpointSlices, "
                                     f"{s['gslbs']:,} Gslbs (created in {s['create_seconds']} s{bulk})"),
        ("start -> /readyz 200 (first full sync)", f"{s['sync_seconds']} s{load}"),
        ("the control plane settling before the backend starts (objects in, controllers quiet)",
         f"{s['lab_quiet_wait_seconds']} s" if s.get("lab_quiet_wait_seconds") is not None else "-"),
        ("the API alone listing every Service in the backend's pages of 500",
         f"{s['api_list_services_seconds']} s" if "api_list_services_seconds" in s else "-"),
        ("the API alone streaming them (a watch with sendInitialEvents: how the backend lists)",
         f"{s['api_stream_list_services_seconds']} s" if "api_stream_list_services_seconds" in s else "-"),
        ("every name answering at that moment", "yes" if s.get("complete_at_ready") else "no"),
        ("backend CPU until ready", f"{s['backend_cpu_seconds_to_ready']} s"),
        ("the two cores until ready, busy (by process)", (
            f"{round(sum(s['cpu_share_during_sync'].values()), 2)}: {_by_share(s['cpu_share_during_sync'])}")
         if "cpu_share_during_sync" in s else "-"),
        ("backend RSS at ready / after the trials",
         f"{s['rss_mib_at_ready']} / {s['rss_mib_after_trials']} MiB"
         f"{_rss_split(s, 'at_ready', 'after_trials')}"),
        ("change -> answer once idle, Service LB IP patched", _trials(s["change_to_answer_service"])),
        ("change -> answer once idle, GSLB host health flipped (EndpointSlice ready)",
         _trials(s["change_to_answer_gslb_health"])),
        ("change -> answer once idle, all trials", _trials(s["change_to_answer_all"])),
        ("start-up work done (backend idle) after", f"{s.get('backend_idle_after_seconds')} s"),
        ("change -> answer right after /readyz, during that start-up work",
         _trials(s["startup_change_to_answer_all"]) if s.get("startup_change_to_answer_all") else "-"),
        ("kube-apiserver RSS", f"{s['apiserver_rss_mib']} MiB"),
    ]
    lines = ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
    if s.get("profile_during_sync"):
        lines += ["", "The backend from start to /readyz (py-spy, all threads; waits it cannot tell from "
                  "work, like `select` and `Condition.wait`, count too):", "",
                  *_profile_table(s["profile_during_sync"][:12])]
    if s.get("profile_during_trials"):
        lines += ["", "The backend's time during the trials once idle (py-spy, all threads):", "",
                  *_profile_table(s["profile_during_trials"][:12])]
    return lines


def _profile_table(rows: list[list[Any]]) -> list[str]:
    return ["| total % | own % | function |", "|---:|---:|---|",
            *(f"| {tot:.1f} | {own:.1f} | `{fn}` |" for fn, own, tot in rows)]


def _trials(t: dict[str, Any]) -> str:
    return f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, max {t['max_ms']} ms ({t['trials']} trials)"


def render(res: dict[str, Any]) -> str:
    m = res.get("machine") or {}
    out = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`) from `bench/results.json`; do not edit by hand.",
        "",
        f"- Command: `{res.get('command', 'python -m bench')}`",
        f"- Machine: {m.get('cores', '?')} cores ({m.get('cpu', '?')}); Python {m.get('python', '?')}, "
        f"grpcio {m.get('grpcio', '?')}, {m.get('coredns', '?')}, dnsperf {m.get('dnsperf', '?')}; "
        f"code at `{m.get('revision', '?')}`",
        "- Everything runs on this one machine at once (dnsperf, CoreDNS, the backend, the control plane), "
        "over loopback; other people's tests may share the cores: see each part's load average.",
        "",
    ]
    goals = _goals(res)
    if goals:
        out += ["## Goals (issues 7 and 12)", "", *goals, ""]
    t = res.get("throughput")
    if t:
        out += [
            f"## Throughput and latency ({t['date']}, load average at start {t['loadavg_at_start']})",
            "",
            f"dnsperf, {t['seconds_per_target']:g} s per target as {t['rounds']} interleaved rounds of "
            f"{t['a_file']['seconds']:g} s (each after a 2 s warm-up; the best round is shown, the others "
            "beside it), up to 100 queries outstanding, UDP, no EDNS. Latency percentiles are over every "
            "answered query of the round (`dnsperf -v`). CPU per query = the process's utime+stime during "
            "the round / answered queries; the backend's counts its children (the prober's worker, the "
            "answer process), split by process in brackets when there are any.",
            "",
            *_throughput(t),
            "",
            f"Ratios: **(b)/(a) = {t['ratio_uncached']:.3f}** (`ratio_uncached`), "
            f"**(c)/(a) = {t['ratio_cached']:.3f}** (`ratio_cached`), best round over best round. "
            f"{_round_ratios(t)}",
            "",
            _cost(t),
            "",
            *_sweep(t),
            "Query mix (dnsperf input, shuffled, fixed seed; (a), (b) and (c) are checked to give the same "
            "rcode and record set for every question before measuring):",
            "",
            *(f"- {x['percent']}% {x['what']} ({x['names']} names)" for x in t["mix"]),
            "",
            f"Exact dnsperf command for (b): `{t['b_grpc']['command']}`",
            "",
            "Corefiles:",
            "",
            *(f"```\n# ({k})\n{v.strip()}\n```" for k, v in t["corefiles"].items()),
            "",
        ]
    w = res.get("workers")
    if w:
        out += [f"## Several backend processes ({w['date']}, load average at start "
                f"{w['loadavg_at_start']})", "",
                *_workers(w), "", f"Best: `{w['best']}`.", ""]
    s = res.get("scale")
    if s:
        out += [f"## Scale ({s['date']}, load average at start {s['loadavg_at_start']})", "", *_scale(s), ""]
    for key in sorted(k for k in res if k.startswith("scale_")):
        big = res[key]
        out += [f"## Scale, {big['services']:,} Services + {big['gslbs']:,} Gslbs ({big['date']}, load "
                f"average at start {big['loadavg_at_start']})", "", *_scale(big), ""]
    for key in sorted(k for k in res if k == "churn" or k.startswith("churn_")):
        c, flags = res[key], key.removeprefix("churn").lstrip("_").replace("_", "-")
        # a variant not made by a backend flag says what it was
        what = c.get("variant") or (f"with --{flags}" if flags else "")
        out += [f"## Churn{f' {what}' if what else ''} ({c['date']}, load average at start "
                f"{c['loadavg_at_start']})", "", *_churn(c), ""]
    b = res.get("burst")
    if b:
        out += [f"## Burst: a namespace deleted ({b['date']}, load average at start {b['loadavg_at_start']})",
                "", *_burst(b), ""]
    pa = res.get("patch")
    if pa:
        out += [f"## One change, in-process (`python -m bench.patch`, {pa['date']}, load average "
                f"{pa['loadavg_at_start']})", "", *_patch(pa), ""]
    h = res.get("hostile")
    if h:
        out += [f"## Hostile HTTP/2 clients (`python -m bench.hostile`, {h['date']}, "
                f"{h['seconds']:.0f} s each, load average {h['loadavg_at_start']})", "", *_hostile(h), ""]
    m = res.get("slow_metrics")
    if m:
        out += [f"## /metrics clients that read slowly or never read (`python -m bench slow_metrics`, "
                f"{m['date']}, {m['seconds']:.0f} s each)", "",
                "Clients ask for /metrics (k8gb's series of 10,000 Gslbs, ~4 MiB) and never read, or read a "
                "byte a second, each connecting again as soon as it is closed; a scraper (/metrics every "
                "second) and a probe (/healthz every 0.5 s) from another address, and a gRPC query every "
                "20 ms, beside them. Loop lag: the largest the server reported.", "", *_slow_metrics(m), ""]
    p = res.get("profile")
    if p:
        out += [f"## Profile of the backend under (b)'s load ({p['date']})", "",
                "py-spy, 200 samples/s, Python frames; total = with callees, own = in the function itself.",
                "",
                *_profile_table(p["top"]), ""]
    out += _notes(res)
    # figures of the side scripts that print rather than write results.json, recorded by hand
    out += ["", SIDE_SCRIPTS.read_text().rstrip()]
    return "\n".join(out)


def write(results: dict[str, Any], path: Path) -> None:
    path.write_text(render(results))
