"""The grpc hop's floor: CoreDNS -> grpc -> `grpc-floor` (deps/floor), beside CoreDNS -> grpc -> backend.

`grpc-floor` answers every query with one A record and no policy, in grpc-go on CoreDNS's own `pb`
service, with CoreDNS's Go runtime settings (one P, GOGC 400). Behind the same shipped Corefile, it
shows what the hop itself costs on this machine (CoreDNS's grpc client, HTTP/2 over loopback, a third
process on the two cores): the latency and CPU no upstream of the grpc plugin can go under, so a
reader can tell how much of (b)'s tail is ours.
"""

from __future__ import annotations

from pathlib import Path

from lab.coredns import GO_RUNTIME
from lab.proc import DATA_PLANE, Process, accepting, binary, free_port, wait_for

START_TIMEOUT = 10.0


class Floor:
    """One `grpc-floor` process; `grpc` is the "host:port" a grpc plugin forwards to."""

    def __init__(self, workdir: Path, name: str = "grpc-floor") -> None:
        self.grpc = f"127.0.0.1:{free_port()}"
        self.process = Process(name, [binary("grpc-floor"), self.grpc], workdir / f"{name}.log",
                               env=GO_RUNTIME, plane=DATA_PLANE)

    def start(self) -> Floor:
        self.process.start()
        wait_for(lambda: accepting(self.grpc), what=f"grpc-floor accepting on {self.grpc}",
                 timeout=START_TIMEOUT, watch=[self.process], interval=0.05)
        return self

    def stop(self) -> None:
        self.process.stop()
