"""Run Debian's dnsperf against one server and read back its figures.

dnsperf 2.10 has no latency histogram option, but `-v` prints one line per answered query with its
latency ("> NOERROR name A 0.000123"), so p50/p99 come from every answered query, not a sample. The
verbose output costs dnsperf nothing measurable (80.9k vs 80.8k q/s against CoreDNS's file plugin).
"""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

_FIELDS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency": r"Average Latency \(s\):\s+([\d.]+)",
    "stddev_latency": r"Latency StdDev \(s\):\s+([\d.]+)",
}


@dataclass
class Run:
    """One dnsperf run: dnsperf's own totals plus percentiles over every answered query (in ms)."""

    command: str
    seconds: float
    sent: int
    completed: int
    lost: int
    qps: float
    avg_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    rcodes: dict[str, int]
    cpu_seconds: float = 0.0  # dnsperf's own CPU time: the load generator shares the cores too

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def command(server: str, queries: Path, seconds: float, *, rate: float | None = None,
            outstanding: int = 100, clients: int = 1) -> list[str]:
    host, _, port = server.rpartition(":")
    argv = [shutil.which("dnsperf") or "dnsperf", "-s", host, "-p", port, "-d", str(queries),
            "-l", f"{seconds:g}", "-q", str(outstanding), "-c", str(clients), "-t", "2", "-v"]
    if rate:
        argv += ["-Q", str(int(rate))]
    return argv


def run(server: str, queries: Path, seconds: float, *, rate: float | None = None, outstanding: int = 100,
        clients: int = 1, out: Path | None = None) -> Run:
    """dnsperf for `seconds` against `server` ("ip:port"); raises with dnsperf's output if it fails."""
    return Background(server, queries, seconds, rate=rate, outstanding=outstanding, clients=clients,
                      out=out).finish(interrupt=False)


class Background:
    """dnsperf started and left running while the caller does something else, for at most `seconds`;
    `finish()` ends it early with SIGINT (dnsperf stops at once, marks the queries still outstanding
    `> I` and counts them as interrupted, not lost, and prints its figures as at the end of -l): the
    burst measures answers over a time it only knows once the burst is over. Its output goes to a
    file (`out`, else a temporary one): a line per query, more than a pipe holds while nobody reads."""

    def __init__(self, server: str, queries: Path, seconds: float, *, rate: float | None = None,
                 outstanding: int = 100, clients: int = 1, out: Path | None = None) -> None:
        self.argv = command(server, queries, seconds, rate=rate, outstanding=outstanding, clients=clients)
        self.seconds = seconds
        self._file = open(out, "w+") if out is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115
        self._before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._began = time.monotonic()
        self.proc = subprocess.Popen(self.argv, stdout=self._file, stderr=subprocess.STDOUT, text=True)

    def kill(self) -> None:
        """Ended without its figures (the caller failed)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._file.close()

    def finish(self, interrupt: bool = True) -> Run:
        """dnsperf's figures: at once (`interrupt`) or once its -l has run out."""
        interrupted = interrupt and self.proc.poll() is None
        if interrupted:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        ran = round(time.monotonic() - self._began, 1) if interrupted else self.seconds
        with self._file:
            self._file.seek(0)
            text = self._file.read()
        if self.proc.returncode:
            raise RuntimeError(f"dnsperf failed ({self.proc.returncode}):\n{text[-2000:]}")
        result = parse(text, " ".join(["dnsperf", *self.argv[1:]]), ran)
        result.cpu_seconds = round(after.ru_utime + after.ru_stime - self._before.ru_utime
                                   - self._before.ru_stime, 3)
        return result


def parse(text: str, cmd: str, seconds: float) -> Run:
    totals: dict[str, float] = {}
    for key, pattern in _FIELDS.items():
        m = re.search(pattern, text)
        totals[key] = float(m.group(1)) if m else 0.0
    latencies: list[float] = []
    rcodes: dict[str, int] = {}
    for line in text.splitlines():
        # "> NOERROR name A 0.000123"; a lost query "> T name A", one outstanding at an interrupt "> I name A"
        if line.startswith("> "):
            parts = line.split()
            if parts[1] in ("T", "I"):
                continue
            rcodes[parts[1]] = rcodes.get(parts[1], 0) + 1
            latencies.append(float(parts[-1]) * 1000)
    latencies.sort()
    return Run(
        command=cmd,
        seconds=seconds,
        sent=int(totals["sent"]),
        completed=int(totals["completed"]),
        lost=int(totals["lost"]),
        qps=round(totals["qps"], 1),
        avg_ms=round(totals["avg_latency"] * 1000, 3),
        p50_ms=round(percentile(latencies, 50), 3),
        p90_ms=round(percentile(latencies, 90), 3),
        p99_ms=round(percentile(latencies, 99), 3),
        p999_ms=round(percentile(latencies, 99.9), 3),
        max_ms=round(latencies[-1], 3) if latencies else 0.0,
        rcodes=dict(sorted(rcodes.items())),
    )
