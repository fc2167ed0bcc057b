"""Our backend as a real process (`coredns-gslb serve`), and the pair every integration test wants:
the backend plus a CoreDNS that forwards its zones to it over gRPC, as in a cluster's DNS pod.
"""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from lab.coredns import GRPC_TEMPLATE, CoreDNS
from lab.dig import DigResult, dig
from lab.proc import (
    DATA_PLANE,
    PYTHON,
    ROOT,
    Process,
    StartupError,
    free_port,
    pid_running,
    read_pidfile,
    wait_for,
)

START_TIMEOUT = 60.0


class Listener:
    """`coredns-gslb listen`: holds a backend's gRPC, HTTP and admin sockets across its restarts."""

    def __init__(self, workdir: Path, *, name: str = "listener", detached: bool = False) -> None:
        self.workdir = workdir
        self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        # a short path: unix socket names have a 108-byte limit, pytest's folders are long
        self.path = Path(tempfile.gettempdir()) / f"coredns-gslb-{self.grpc_port}.sock"
        self.process = Process(
            name,
            [PYTHON, "-m", "backend.cli", "listen", "--listener-socket", str(self.path), "--grpc-listen",
             self.grpc, "--http-listen", f"127.0.0.1:{self.http_port}", "--admin-listen",
             f"127.0.0.1:{self.admin_port}"],
            workdir / f"{name}.log",
            cwd=ROOT,
            env={"PYTHONUNBUFFERED": "1"},
            detached=detached,
            plane=DATA_PLANE,
        )

    def start(self) -> Listener:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        wait_for(self.path.exists, what=f"listener socket {self.path}", timeout=START_TIMEOUT,
                 watch=[self.process], interval=0.1)
        return self

    def stop(self) -> None:
        self.process.stop()


class Backend:
    """`python -m backend.cli serve --kubeconfig K --grpc-listen G --http-listen H FLAGS`; ready: /readyz."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path | str,
        flags: Sequence[str] = (),
        *,
        name: str = "backend",
        detached: bool = False,
        env: dict[str, str] | None = None,
        listener: Listener | None = None,
    ) -> None:
        self.workdir = workdir
        if listener is not None:  # its sockets, handed over; the addresses only name them
            self.grpc_port, self.http_port, self.admin_port = (listener.grpc_port, listener.http_port,
                                                               listener.admin_port)
            flags = ("--listener-socket", str(listener.path), *flags)
        else:
            self.grpc_port, self.http_port, self.admin_port = free_port(), free_port(), free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"  # probes and /metrics
        self.admin = f"http://127.0.0.1:{self.admin_port}"  # those and /explain
        self.process = Process(
            name,
            [
                PYTHON,
                "-m",
                "backend.cli",
                "serve",
                "--kubeconfig",
                str(kubeconfig),
                "--grpc-listen",
                self.grpc,
                "--http-listen",
                f"127.0.0.1:{self.http_port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                *flags,
            ],
            workdir / f"{name}.log",
            cwd=ROOT,
            # a short drain: tests stop backends while their CoreDNS stays (k8s/ uses the default)
            env={"PYTHONUNBUFFERED": "1", "SHUTDOWN_DRAIN_SECONDS": "1", **(env or {})},
            detached=detached,
            plane=DATA_PLANE,
        )

    def get(self, path: str, *, admin: bool = True) -> tuple[int, str]:
        """GET on the backend's admin port (or its HTTP port): (status, body); HTTP errors are returned."""
        try:
            with urllib.request.urlopen((self.admin if admin else self.http) + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def start(self, *, ready: bool = True) -> Backend:
        """Start and wait for /readyz 200 (`ready=False`: only for /healthz, e.g. with the API away)."""
        self.launch()
        return self.wait_started(ready=ready)

    def launch(self) -> Backend:
        """Start the process without waiting (e.g. to attach a profiler before it syncs)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        return self

    def wait_started(self, *, ready: bool = True, timeout: float = START_TIMEOUT) -> Backend:
        """Until /readyz (or /healthz) answers 200."""
        probe = "/readyz" if ready else "/healthz"
        wait_for(
            lambda: self.get(probe)[0] == 200,
            what=f"backend {probe} on {self.admin}",
            timeout=timeout,
            watch=[self.process],
            interval=0.2,
        )
        return self

    def stop(self) -> None:
        self.process.stop()


def roll(pidfile: Path, timeout: float = START_TIMEOUT) -> tuple[int, int]:
    """Roll a detached backend that serves behind a listener, as a rollout does (backend/listener.py):
    the same `serve` command line and environment started beside it; once the new one has synced and
    serves, the listener tells the old one to hand over, and it drains and exits. (old pid, new pid)."""
    recorded = read_pidfile(pidfile)
    if recorded is None or not pid_running(*recorded):
        raise StartupError(f"no backend running ({pidfile})")
    old = recorded[0]
    argv = [a.decode() for a in Path(f"/proc/{old}/cmdline").read_bytes().split(b"\0")[:-1]]
    if "--listener-socket" not in argv:
        raise StartupError(f"backend {old} has no listener: stopping it would lose answers")
    environ = Path(f"/proc/{old}/environ").read_bytes().split(b"\0")
    env = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    new = Process(pidfile.stem, argv, pidfile.with_suffix(".log"), env=env, cwd=ROOT, detached=True,
                  plane=DATA_PLANE).start()
    wait_for(lambda: not pid_running(*recorded), what=f"backend {old} handing over to {new.pid} and exiting",
             timeout=timeout, watch=[new], interval=0.2)
    return old, int(new.pid or 0)


class DnsStack:
    """Backend + CoreDNS (`grpc . backend`) for some zones: `dig()` asks CoreDNS, as a client would.
    With `listener=True` the backend serves behind `coredns-gslb listen`, as in k8s/deployment.yaml."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path | str,
        zones: Sequence[str],
        flags: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        template: str = GRPC_TEMPLATE,
        name: str = "",
        detached: bool = False,
        listener: bool = False,
    ) -> None:
        prefix = f"{name}-" if name else ""
        self.zones = tuple(zones)
        self.listener = Listener(workdir, name=f"{prefix}listener", detached=detached) if listener else None
        self.backend = Backend(workdir, kubeconfig, flags, name=f"{prefix}backend", detached=detached,
                               listener=self.listener)
        self.coredns = CoreDNS(
            workdir,
            template,
            zones=self.zones,
            host=host,
            port=port,
            grpc=self.backend.grpc,
            name=f"{prefix}coredns",
            detached=detached,
        )

    @property
    def address(self) -> str:
        return self.coredns.address

    def start(self) -> DnsStack:
        if self.listener is not None:
            self.listener.start()
        try:
            self.backend.start()
            self.coredns.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.coredns.stop()
        self.backend.stop()
        if self.listener is not None:
            self.listener.stop()

    def dig(self, name: str, rtype: str = "A", *options: str) -> DigResult:
        return dig(self.coredns.address, name, rtype, *options)

    @property
    def processes(self) -> list[Process]:
        listener = [self.listener.process] if self.listener is not None else []
        return [*listener, self.backend.process, self.coredns.process]

    def wait_for(self, check: Callable[[], object], *, what: str, timeout: float = 30.0) -> None:
        """Bounded poll that fails at once, with the log tail, if the backend or CoreDNS died."""
        wait_for(check, what=what, timeout=timeout, watch=self.processes, interval=0.2)

    def wait_answer(self, name: str, want: list[str] | str, rtype: str = "A", *options: str,
                    timeout: float = 45.0) -> DigResult:
        """Until dig via CoreDNS says `want`: the sorted data (a list) or the rcode (a str); the last
        answer goes into the failure message."""
        last: list[DigResult] = []

        def check() -> bool:
            r = self.dig(name, rtype, *options)
            last[:] = [r]
            return r.rcode == want if isinstance(want, str) else (
                r.rcode == "NOERROR" and sorted(r.values(rtype)) == sorted(want))

        try:
            self.wait_for(check, what=f"{name} {rtype} -> {want}", timeout=timeout)
        except Exception as e:
            raise AssertionError(f"{e}\nlast answer:\n{last[0].output if last else None}") from None
        return last[0]
