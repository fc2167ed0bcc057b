"""Child processes for the test bed and the lab: one log file each, bounded waits, a log tail on failure.

Test-bed children die with the Python process that started them (PR_SET_PDEATHSIG), so a killed test run
leaves nothing behind; lab children are started detached instead, so they outlive `make lab`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
DEPS_BIN = ROOT / ".deps" / "bin"
PYTHON = ROOT / ".venv" / "bin" / "python"

_PR_SET_PDEATHSIG = 1
T = TypeVar("T")


def cpu_list(text: str) -> frozenset[int]:
    """The cores of a cpuset list as the kernel writes it ("0", "0-1", "0,2-3"); "" is none."""
    cpus: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


@dataclass(frozen=True)
class Plane:
    """How one plane's processes share the cores, set in each child before exec so that every thread
    it makes has it: the cores it may use (empty: all) and its CPU weight as an autogroup nice value."""

    cpus: frozenset[int] = frozenset()
    nice: int = 0

    @classmethod
    def from_env(cls, prefix: str, default: Plane) -> Plane:
        """`default` as changed by `<prefix>_CPUS` (a cpuset list, "0") and `<prefix>_NICE`."""
        env = os.environ
        return cls(cpu_list(env[f"{prefix}_CPUS"]) if env.get(f"{prefix}_CPUS") else default.cpus,
                   int(env.get(f"{prefix}_NICE", default.nice)))

    def differences(self, default: Plane, plane: str, what: str) -> dict[str, str]:
        """What differs from `default`, by a short name: {"data_plane_nice_-5": "with CoreDNS and the
        backend at autogroup nice -5"} (the bench files a variant's results under the names)."""
        out = {}
        if self.nice != default.nice:
            out[f"{plane}_nice_{self.nice}"] = f"with {what} at autogroup nice {self.nice}"
        if self.cpus != default.cpus:
            cores = ",".join(map(str, sorted(self.cpus)))
            out[f"{plane}_cpus_{cores.replace(',', '_')}"] = f"with {what} on core {cores} only"
        return out


# CoreDNS, the backend and its listener: by default all cores, the default weight (below the control
# plane's: lab/kube.py CONTROL_PLANE). LAB_DATA_PLANE_CPUS ("1") and LAB_DATA_PLANE_NICE make the bench's
# variants: how much of the answers' tail under churn is their waiting for a core.
DEFAULT_DATA_PLANE = Plane()
DATA_PLANE = Plane.from_env("LAB_DATA_PLANE", DEFAULT_DATA_PLANE)


class StartupError(RuntimeError):
    """A component did not come up; the message names it and carries its log tail."""


def binary(name: str) -> str:
    """A pinned binary from .deps/bin, else the system one (named, dig, tsig-keygen come from Debian)."""
    pinned = DEPS_BIN / name
    if pinned.exists():
        return str(pinned)
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        if os.access(f"{folder}/{name}", os.X_OK):
            return f"{folder}/{name}"
    raise StartupError(f"{name} is not installed: run `make deps`")


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    """One child process with its log file; stop() is bounded (SIGTERM, then SIGKILL)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        detached: bool = False,
        plane: Plane = Plane(),
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log = log
        self.env = env
        self.cwd = cwd
        self.detached = detached
        self.plane = plane
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def pidfile(self) -> Path:
        """Detached children leave `<log>.pid` ("PID ARGV0") so `lab down` finds them from another process."""
        return self.log.with_suffix(".pid")

    def start(self) -> Process:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(self.argv)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(self.env or {})},
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=self._in_child,
            )
        if self.detached:
            self.pidfile.write_text(f"{self.popen.pid} {self.argv[0]}\n")
        return self

    def _in_child(self) -> None:
        """Before exec: die with the test run (unless detached), and take on the plane's cores and
        weight from the first thread on (set after start they would miss threads the runtime had
        made by then). The weight is the new session's scheduling group's (its autogroup). Best effort:
        without autogroup or the right to raise a weight (CAP_SYS_NICE) it runs at the default weight."""
        if not self.detached:
            _die_with_parent()
        plane = self.plane
        if plane.cpus:
            os.sched_setaffinity(0, plane.cpus)
        if plane.nice:
            with contextlib.suppress(OSError):
                Path("/proc/self/autogroup").write_text(f"{plane.nice}\n")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.popen.kill()
                self.popen.wait(5)
        self.popen = None
        if self.detached:
            self.pidfile.unlink(missing_ok=True)

    def tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines)

    def failure(self, why: str) -> StartupError:
        return StartupError(f"{self.name} {why}; log {self.log}:\n{self.tail()}")


class Server:
    """A DNS server process (CoreDNS, named); `address` is "host:port" as dig and state.json take it."""

    host: str
    port: int
    process: Process

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        self.process.stop()


def read_pidfile(pidfile: Path) -> tuple[int, str] | None:
    try:
        pid_text, argv0 = pidfile.read_text().split(maxsplit=1)
        return int(pid_text), argv0.strip()
    except (OSError, ValueError):
        return None


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces): [0] is the state,
    [1] the parent's pid, [11]/[12] user/system CPU ticks, [13]/[14] those of its reaped children."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def pid_running(pid: int, argv0: str) -> bool:
    """Alive (not a zombie: the lab's processes are orphans, reaped by init in its own time) and still
    running the recorded program, so a recycled pid is never taken for ours."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = stat_fields(pid)[0]
    except OSError:
        return False
    return cmdline[0].decode(errors="replace") == argv0 and state != "Z"


def kill_pidfile(pidfile: Path, timeout: float = 10.0) -> str | None:
    """Stop a detached child recorded in a pid file (its whole session); returns its argv0 if it ran."""
    recorded = read_pidfile(pidfile)
    was_running = recorded is not None and pid_running(*recorded)
    if recorded is not None:
        pid = recorded[0]
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            if not pid_running(*recorded):
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + wait
            while pid_running(*recorded) and time.monotonic() < deadline:
                time.sleep(0.1)
    pidfile.unlink(missing_ok=True)
    return recorded[1] if recorded and was_running else None


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _Deadline:
    """One bounded poll's bookkeeping: the deadline, the last error, the processes whose death ends it."""

    def __init__(self, what: str, timeout: float, watch: Iterable[Process]) -> None:
        self.what, self.timeout, self.watched = what, timeout, list(watch)
        self.end = time.monotonic() + timeout
        self.last: Exception | None = None

    def check_alive(self) -> None:
        for p in self.watched:
            if not p.alive():
                raise p.failure(f"exited while waiting for {self.what}")

    def check_time(self) -> None:
        if time.monotonic() > self.end:
            tails = "\n".join(f"--- {p.name} ({p.log}):\n{p.tail()}" for p in self.watched)
            raise StartupError(f"timed out after {self.timeout:.0f}s waiting for {self.what} "
                               f"(last error: {self.last})\n{tails}")


def wait_for(
    check: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    watch: Iterable[Process] = (),
    interval: float = 0.1,
) -> None:
    """Poll `check` until true; fail with the log tail of a watched process that died (all on timeout)."""
    deadline = _Deadline(what, timeout, watch)
    while True:
        deadline.check_alive()
        try:
            if check():
                return
        except Exception as e:  # the check probes a component that is still starting
            deadline.last = e
        deadline.check_time()
        time.sleep(interval)


def sample(look: Callable[[], T], seconds: float, interval: float) -> list[T]:
    """What `look` returned at each look for `seconds`, `interval` apart: for tests that something
    holds for a while (answers through an outage), where `wait_for` waits until it first does."""
    seen: list[T] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(look())
        time.sleep(interval)
    return seen


async def wait_for_async(
    check: Callable[[], object],
    *,
    what: str,
    timeout: float,
    watch: Iterable[Process] = (),
    interval: float = 0.05,
) -> None:
    """`wait_for` for code on an event loop: `check` may be a coroutine function; the loop runs between."""
    deadline = _Deadline(what, timeout, watch)
    while True:
        deadline.check_alive()
        try:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
        except Exception as e:  # the check probes a component that is still starting
            deadline.last = e
        deadline.check_time()
        await asyncio.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP on host (DNS servers need both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port_free(host, port):
            return port
    raise StartupError(f"no free port on {host}")


def accepting(address: str) -> bool:
    """True when a TCP connection to "host:port" is accepted (raises while nothing listens)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=1):
        return True


def port_free(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                if kind == socket.SOCK_STREAM:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_loopback_ip(port: int = 53) -> str:
    """A random 127.x.y.z whose `port` is free, for servers that must sit on port 53 (glue has no port)."""
    rnd = int.from_bytes(os.urandom(3), "big")
    for i in range(200):
        n = (rnd + i * 7919) % (1 << 24)
        ip = f"127.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"
        last = n & 255
        if ip.startswith("127.0.0.") or last in (0, 255):
            continue
        if port_free(ip, port):
            return ip
    raise StartupError(f"no loopback address with port {port} free")
