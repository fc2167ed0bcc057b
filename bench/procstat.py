"""CPU time and memory of a process from /proc: the backend's cost per query.

The backend is a process tree (the prober's worker, and with --answer-process the answer process, are
its children), so its figures are the tree's: `tree_cpu_seconds`/`tree_rss_bytes` sum it, and
`cpu_by_process`/`rss_by_process` split it by process for the reports ("main" is the backend itself,
a child is named for the module it runs: "answer", "probes").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from lab.proc import stat_fields as _stat

N = TypeVar("N", int, float)
_TICK = os.sysconf("SC_CLK_TCK")
EXITED = "exited"  # `cpu_by_process`: what the tree's ended and reaped children used (a restarted child's)


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (all its threads, not its children) so far."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK


def core_shares(cpu: dict[str, float], machine: float, seconds: float) -> dict[str, float]:
    """The cores each process used over `seconds` (`cpu`: its CPU seconds in them), and `other`: what
    the machine spent busy in them (`machine`, from machine_busy_seconds) beyond all these."""
    other = max(0.0, machine - sum(cpu.values()))
    return {name: round(v / seconds, 2) for name, v in {**cpu, "other": other}.items()}


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process: /proc/stat's first line,
    all but idle and iowait), so a phase can say how much of the cores went to processes it did not name."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(
        int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _name(pid: int) -> str:
    """What a child runs: the module of `python -m backend.answer ...` without its package ("answer"),
    else its command's file name."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    words = [a.decode(errors="replace") for a in argv if a]
    if "-m" in words[:-1]:
        return words[words.index("-m") + 1].rsplit(".", 1)[-1]
    return Path(words[0]).name if words else str(pid)


def processes(pid: int) -> dict[str, int]:
    """`pid` as "main" and its living descendants by name (one read of /proc's parent links)."""
    parent: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int(_stat(int(entry.name))[1])
            except (OSError, IndexError, ValueError):  # ended meanwhile
                continue
    tree, found = {pid}, True
    while found:
        found = False
        for child, ppid in parent.items():
            if ppid in tree and child not in tree:
                tree.add(child)
                found = True
    named = {"main": pid}
    for child in sorted(tree - {pid}):
        try:
            name = _name(child)
        except OSError:
            continue
        named[name if name not in named else f"{name}-{child}"] = child
    return named


def _each(named: dict[str, int], read: Callable[[int], N]) -> dict[str, N]:
    out: dict[str, N] = {}
    for name, p in named.items():
        try:
            out[name] = read(p)
        except OSError:  # ended between the listing and the read
            continue
    return out


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds so far of `pid`'s tree by process, and under EXITED what its ended children used
    (the kernel adds a child's time to its parent's once the parent has reaped it)."""
    fields = _stat(pid)
    return {**_each(processes(pid), cpu_seconds), EXITED: (int(fields[13]) + int(fields[14])) / _TICK}


def cpu_of(named: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process (its own threads, not its children); one gone is left out."""
    return _each(named, cpu_seconds)


def rss_by_process(pid: int) -> dict[str, int]:
    """RSS bytes of `pid`'s tree by process. Their sum counts the pages shared by processes (the
    Python binary, shared libraries) once per process, as `ps` does."""
    return _each(processes(pid), rss_bytes)


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds by process between two `cpu_by_process` readings. A child started in between counts
    from 0; one restarted in between has its old self's time under EXITED (its name's figure is the
    new one's minus the old one's at `before`; the sum stays right)."""
    return {name: round(v - before.get(name, 0.0), 3) for name, v in after.items()}


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds so far of `pid` and all its descendants, living and ended."""
    return sum(cpu_by_process(pid).values())


def tree_rss_bytes(pid: int) -> int:
    """The RSS of `pid` and its living descendants, summed."""
    return sum(rss_by_process(pid).values())


def mib(by_process: dict[str, int]) -> dict[str, float]:
    return {name: round(v / 2**20, 1) for name, v in by_process.items()}


def total_mib(by_process: dict[str, int]) -> float:
    """The tree's RSS (an `rss_by_process` reading) in MiB, summed."""
    return round(sum(by_process.values()) / 2**20, 1)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
