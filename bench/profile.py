"""Where the backend's time goes under (b)'s load: py-spy samples the backend while dnsperf runs.

`python -m bench profile [--seconds S]` writes a speedscope file and prints the functions with the
most samples (own time and with callees), which is the evidence BENCHMARKS.md cites.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import threading
from pathlib import Path

from bench import dnsperf
from bench.env import Bed
from bench.throughput import setup


def record(pid: int, seconds: float, out: Path, native: bool = False) -> Path:
    """py-spy's collapsed stacks of `pid` for `seconds` (all threads, idle ones left out)."""
    spy = shutil.which("py-spy", path=str(Path(__file__).resolve().parents[1] / ".venv" / "bin")) or "py-spy"
    argv = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
            "--format", "raw", "--output", str(out)]
    argv.append("--native" if native else "--nonblocking")
    subprocess.run(argv, check=True, capture_output=True, timeout=seconds + 60)
    return out


def summary(collapsed: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, own %, total %) by total share of samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    # Frames under nearly every sample (runpy, the event loop's run_forever) say nothing.
    rows = [(f, 100 * own[f] / samples, 100 * t / samples)
            for f, t in total.most_common() if t < 0.95 * samples]
    return rows[:top]


def run(bed: Bed, seconds: float, native: bool = False) -> list[tuple[str, float, float]]:
    s = setup(bed)
    out = bed.workdir / "backend-profile.txt"
    load = threading.Thread(target=dnsperf.run, args=(s.uncached.address, s.mix, seconds + 4))
    load.start()
    record(s.backend_pid, seconds, out, native)
    load.join()
    rows = summary(out)
    for f, own_pct, total_pct in rows:
        print(f"{total_pct:6.1f}% {own_pct:6.1f}%  {f}")
    print(f"collapsed stacks: {out}")
    return rows
