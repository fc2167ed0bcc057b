"""Where the backend's time goes under (b)'s load: py-spy samples the backend while dnsperf runs.

`python -m bench profile [--seconds S]` writes py-spy's collapsed stacks and prints the functions with
the most samples (own time and with callees), which is the evidence BENCHMARKS.md cites. `Sampler`
also profiles the backend during the scale part's change -> answer trials.
"""

from __future__ import annotations

import collections
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench import dnsperf
from bench.env import Bed
from bench.throughput import setup

_WRAPPERS = ("(threading.py)", "(<frozen runpy>)", "(asyncio/runners.py)")


class Sampler:
    """py-spy recording a process (collapsed stacks, idle threads left out) until the `with` ends."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate  # samples a second; py-spy costs about 40% of a core at 200 on a 100k-object backend
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sampler:
        venv = str(Path(__file__).resolve().parents[1] / ".venv" / "bin")
        spy = shutil.which("py-spy", path=venv) or "py-spy"
        self._proc = subprocess.Popen(
            [spy, "record", "--pid", str(self.pid), "--duration", "900", "--rate", str(self.rate),
             "--format", "raw", "--output", str(self.out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attached before the measured work starts
        return self

    @property
    def spy_pid(self) -> int:
        """py-spy's own (`pid` is the sampled process's): it takes a share of the cores too."""
        assert self._proc is not None
        return self._proc.pid

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)


def summary(collapsed: Path, top: int = 25) -> list[tuple[str, float, float]]:
    """(function, own %, total %) by total share of samples."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():  # the tail of a frame name that held a newline (a string's repr)
            continue
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")]
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    # Frames under nearly every sample (runpy, the event loop's run_forever) and thread start-up say nothing.
    rows = [(f, round(100 * own[f] / samples, 1), round(100 * t / samples, 1))
            for f, t in total.most_common() if t < 0.95 * samples and not f.endswith(_WRAPPERS)]
    return rows[:top]


def run(bed: Bed, seconds: float) -> list[tuple[str, float, float]]:
    s = setup(bed)
    out = bed.workdir / "backend-profile.txt"
    with Sampler(s.backend_pid, out):
        dnsperf.run(s.uncached.address, s.mix, seconds)
    rows = summary(out)
    for f, own_pct, total_pct in rows:
        print(f"{total_pct:6.1f}% {own_pct:6.1f}%  {f}")
    print(f"collapsed stacks: {out}")
    return rows
