"""Our backend as a real process (`coredns-gslb serve`), and the pair every integration test wants:
the backend plus a CoreDNS that forwards its zones to it over gRPC, as in a cluster's DNS pod.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from backend.lab.coredns import GRPC_TEMPLATE, CoreDNS
from backend.lab.dig import DigResult, dig
from backend.lab.proc import PYTHON, ROOT, Process, free_port, wait_for

START_TIMEOUT = 60.0


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
    ) -> None:
        self.workdir = workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.grpc = f"127.0.0.1:{self.grpc_port}"
        self.http = f"http://127.0.0.1:{self.http_port}"
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
                *flags,
            ],
            workdir / f"{name}.log",
            cwd=ROOT,
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
            detached=detached,
        )

    def get(self, path: str) -> tuple[int, str]:
        """GET on the backend's HTTP port: (status, body); HTTP errors are returned, not raised."""
        try:
            with urllib.request.urlopen(self.http + path, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def start(self) -> Backend:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        wait_for(
            lambda: self.get("/readyz")[0] == 200,
            what=f"backend /readyz on {self.http}",
            timeout=START_TIMEOUT,
            watch=[self.process],
            interval=0.2,
        )
        return self

    def stop(self) -> None:
        self.process.stop()


class DnsStack:
    """Backend + CoreDNS (`grpc . backend`) for some zones: `dig()` asks CoreDNS, as a client would."""

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
    ) -> None:
        prefix = f"{name}-" if name else ""
        self.zones = tuple(zones)
        self.backend = Backend(workdir, kubeconfig, flags, name=f"{prefix}backend", detached=detached)
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
        self.backend.start()
        try:
            self.coredns.start()
        except BaseException:
            self.backend.stop()
            raise
        return self

    def stop(self) -> None:
        self.coredns.stop()
        self.backend.stop()

    def dig(self, name: str, rtype: str = "A", *options: str) -> DigResult:
        return dig(self.coredns.address, name, rtype, *options)
