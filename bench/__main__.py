"""`python -m bench [all|PART] [--seconds S] [--skip-scale] ...`, PART one of PARTS (below)

`all` (the default, `make bench`) runs every part: about 15 minutes on two cores, most of it the
scale part's 30,000 objects.

Each part measures on real components started here (lab) and merges its figures into
bench/results.json; BENCHMARKS.md is rewritten from results.json after every part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.env import Bed
from bench.procstat import loadavg
from lab.kube import lab_variant
from lab.proc import binary

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
PARTS = ("throughput", "workers", "scale", "churn", "burst", "profile", "slow_metrics")
CHURN_SHARE = 0.25  # the churn's and the burst's dnsperf rate: this share of (b)'s peak (throughput part)


def _version(argv: list[str], prefix: str = "") -> str:
    """The first output line of a `--version`-like command that starts with `prefix`."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    lines = (out.stdout + out.stderr).splitlines()
    return next((line.strip() for line in lines if line.strip() and line.startswith(prefix)), "?")


def machine() -> dict[str, Any]:
    import grpc

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "coredns": _version([binary("coredns"), "-version"]),
        "dnsperf": _version(["dnsperf", "-h"], "Version"),
        "grpcio": grpc.__version__,
        "revision": _version(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"]),
    }


def load() -> dict[str, Any]:
    try:
        return json.loads(RESULTS.read_text())
    except (OSError, ValueError):
        return {}


def save(results: dict[str, Any]) -> None:
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    report.write(results, HERE.parent / "BENCHMARKS.md")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", nargs="?", default="all", choices=("all", *PARTS))
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="dnsperf time per target, split over the rounds (default 30)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds per target; the best is reported (default 3)")
    ap.add_argument("--skip-scale", action="store_true", help="leave out the slow 10k+10k scale part")
    ap.add_argument("--scale-n", type=int, default=10_000, help="Services and Gslbs each (default 10000; "
                    "burst: in the namespace deleted)")
    ap.add_argument("--services", type=int, help="scale: Services (default --scale-n); results go under "
                    "scale_<N>k unless both counts are 10000")
    ap.add_argument("--gslbs", type=int, help="scale: Gslbs, the first of the Services (default --scale-n)")
    ap.add_argument("--minutes", type=float, default=10.0, help="churn: minutes of churn, and as long "
                    "again for the control (default 10)")
    ap.add_argument("--churn-rate", type=float, default=20.0, help="churn: changes per second (default 20)")
    ap.add_argument("--qps", type=float,
                    help="churn, burst: dnsperf rate (default 25%% of (b)'s peak in results.json)")
    ap.add_argument("--trials", type=int, default=20, help="change -> answer trials (default 20)")
    ap.add_argument("--workers", default="1,2,3", help="backend process counts to compare (default 1,2,3)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, dnsperf output)")
    ap.add_argument("--backend-flags", default="", help="more flags for every backend started (e.g. "
                    "--answer-process); results go under <part>_<flags> (e.g. churn_answer_process)")
    args = ap.parse_args(argv)
    parts = list(PARTS) if args.part == "all" else [args.part]
    if args.skip_scale and "scale" in parts:
        parts.remove("scale")
    results = load()
    results["command"] = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    results["machine"] = machine()
    for part in parts:
        print(f"== {part} (load average {loadavg()})", flush=True)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        load_before = loadavg()
        with Bed(keep=args.keep, backend_flags=shlex.split(args.backend_flags)) as bed:
            figures = run_part(part, bed, args)
            if args.keep:
                print(f"   work folder kept: {bed.workdir}")
        figures["date"] = started
        figures["loadavg_at_start"] = load_before
        if variant := lab_variant():  # the lab's LAB_*_PLANE_* settings
            figures["variant"] = "; ".join(variant.values())
        results[result_key(part, args)] = figures
        if part == "throughput":
            results["ratio_uncached"] = figures["ratio_uncached"]
            results["ratio_cached"] = figures["ratio_cached"]
        save(results)
    print(f"wrote {RESULTS.relative_to(HERE.parent)} and BENCHMARKS.md")
    return 0


def result_key(part: str, args: argparse.Namespace) -> str:
    """`scale` for the 10k + 10k goal run, `scale_100k` and the like for other sizes; with
    --backend-flags, their names after it (`churn_answer_process`), and after them a lab variant's
    (`churn_control_plane_cpus_0`)."""
    key = part
    if part == "scale":
        services, gslbs = args.services or args.scale_n, args.gslbs or args.scale_n
        key = "scale" if (services, gslbs) == (10_000, 10_000) else f"scale_{services // 1000}k"
    flags = [f.lstrip("-").replace("-", "_") for f in shlex.split(args.backend_flags)]
    return "_".join([key, *flags, *lab_variant()])


def churn_qps(args: argparse.Namespace) -> float:
    """--qps, else CHURN_SHARE of (b)'s peak in results.json."""
    peak = (load().get("throughput") or {}).get("b_grpc", {}).get("qps")
    return float(args.qps or (float(peak) * CHURN_SHARE if peak else 5000.0))


def run_part(part: str, bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    if part == "throughput":
        from bench import throughput

        return throughput.run(bed, args.seconds, args.rounds)
    if part == "workers":
        from bench import workers

        return workers.run(bed, args.seconds, [int(n) for n in args.workers.split(",")], args.rounds)
    if part == "scale":
        from bench import scale

        return scale.run(bed, args.services or args.scale_n, args.trials, args.gslbs or args.scale_n)
    if part == "churn":
        from bench import churn

        return churn.run(bed, args.scale_n, args.minutes * 60, args.churn_rate, churn_qps(args))
    if part == "burst":
        from bench import burst

        return burst.run(bed, args.scale_n, churn_qps(args))
    if part == "slow_metrics":
        from bench import hostile

        return hostile.slow_metrics(args.seconds, bed.workdir)
    from bench import profile

    return {"top": profile.run(bed, args.seconds)}


if __name__ == "__main__":
    sys.exit(main())
