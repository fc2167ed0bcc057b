"""bench/procstat.py reads a process tree: the backend's children (answer process, prober) count too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from bench.procstat import (
    EXITED,
    cpu_by_process,
    cpu_of,
    machine_busy_seconds,
    processes,
    rss_by_process,
    spent,
    tree_rss_bytes,
)
from lab.proc import wait_for

# a parent that burns some CPU, starts `python -m timeit` (sleeping) as its child, and a second
# child that ends at once and is reaped
PARENT = """
import subprocess, sys, time
sum(range(3_000_000))
subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"])
subprocess.Popen([sys.executable, "-m", "timeit", "-n", "1", "-r", "1", "import time; time.sleep(30)"])
time.sleep(30)
"""


def test_a_tree_is_read_by_process_and_summed() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT])
    try:
        wait_for(lambda: "timeit" in processes(parent.pid), what="the parent's child `python -m timeit`",
                 timeout=20)
        named = processes(parent.pid)
        assert named["main"] == parent.pid and set(named) == {"main", "timeit"}
        rss = rss_by_process(parent.pid)
        assert set(rss) == {"main", "timeit"} and all(v > 0 for v in rss.values())
        assert tree_rss_bytes(parent.pid) >= sum(rss.values()) * 0.9  # read again a moment later
        cpu = cpu_by_process(parent.pid)
        assert cpu[EXITED] > 0  # the reaped child's time, added to its parent's by the kernel
        assert cpu["main"] > 0
        time.sleep(0.1)
        later = spent(cpu, cpu_by_process(parent.pid))
        assert set(later) == {"main", "timeit", EXITED} and all(v >= 0 for v in later.values())
    finally:
        for pid in processes(parent.pid).values():
            os.kill(pid, signal.SIGKILL)
        parent.wait(10)



def test_named_processes_and_the_whole_machine_are_read_for_a_phase() -> None:
    """The churn's split of the two cores: each named lab process's own CPU (one gone is left out),
    and the machine's busy time, which holds every process's."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    machine0 = machine_busy_seconds()
    subprocess.run([sys.executable, "-c", "sum(range(10_000_000))"], check=True)
    assert machine_busy_seconds() - machine0 > 0.05  # at least the child's sum (~0.2 s of CPU)
    mine = cpu_of({"me": os.getpid(), "gone": gone.pid})
    assert set(mine) == {"me"} and mine["me"] > 0
