"""Real CoreDNS started from a Corefile template (string.Template placeholders).

The test bed and the lab run the shipped corefile/Corefile itself, made a template by `lab_template`,
so what the tests check is what a cluster runs: nothing to keep in step by hand.
"""

from __future__ import annotations

import string
from pathlib import Path

import dns.message
import dns.query

from lab.proc import DATA_PLANE, ROOT, Process, Server, binary, free_port, wait_for

TEMPLATES = ROOT / "corefile"
SHIPPED = TEMPLATES / "Corefile"
FILE_TEMPLATE = "Corefile.file.tmpl"
START_TIMEOUT = 30.0
# Directives of the shipped Corefile that listen on fixed ports of their own: many CoreDNS run side by
# side in the test bed, so its copy leaves them out (and any block they open, e.g. `health { lameduck }`).
FIXED_PORTS = frozenset({"health", "ready", "prometheus"})
# CoreDNS's Go runtime runs goroutines on one thread at a time, as in k8s/deployment.yaml (GOMAXPROCS
# from the container's CPU limit, 1; Go's own container-aware default never goes below 2). Its grpc
# plugin hands every query between goroutines (the UDP reader, the gRPC stream's sender and receiver):
# on two threads each handoff wakes the other, on one it does not. `python -m bench throughput`, back to
# back on two cores (the second with GOMAXPROCS=1 in the bench's environment, so for every Go process,
# the control plane idle there): CoreDNS's CPU a query of (b) 89-92 -> 69-71 us at 9.6-10.5k q/s, 54-66
# -> 44-48 us at the peak; (b)'s p99 at half of its peak 12.4-15.8 -> 9.0-11.5 ms; (a) alike.
# And it collects garbage at 400 % heap growth, not Go's 100 %: its live heap is ~4 MB and every query
# allocates (the gRPC call, two messages), so at 100 % it collected 16 times a second at 6,000 q/s of (b)
# and 29 at 11,000, each a few ms of marking on its one thread; at 400 % 3.5 and 6.3 (heap goal 24 MB,
# the pod's limit 192Mi with GOMEMLIMIT at it). Interleaved rounds of (b) at fixed rates on one backend
# (21:44, scratch): CoreDNS's CPU a query 113-116 -> 105-114 us at 6,000 q/s, 67-69 -> 64-66 at 11,000;
# p99 ms 5.1-6.1 -> 2.8-5.4 and 10.9-16.6 -> 8.0-13.7.
GO_RUNTIME = {"GOMAXPROCS": "1", "GOGC": "400"}


def lab_template(shipped: str) -> str:
    """The shipped Corefile as a template: every server block serves `${zones}` on `${bind}` and sends
    to `grpc . ${grpc}`; comments and the FIXED_PORTS directives are dropped, the rest is kept as is."""
    out: list[str] = []
    depth = 0
    skip_below: int | None = None  # inside a dropped directive's block: drop until depth falls back
    for raw in shipped.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        words = line.split()
        opened, closed = line.count("{"), line.count("}")
        if skip_below is None and depth == 1 and words[0] in FIXED_PORTS:
            skip_below = depth
        if skip_below is not None:
            depth += opened - closed
            if depth <= skip_below:
                skip_below = None
            continue
        if depth == 0 and opened:
            out += ["${zones} {", "    bind ${bind}"]
        elif depth == 1 and words[:2] == ["grpc", "."]:
            out.append(line[: line.index("grpc")] + "grpc . ${grpc}" + (" {" if opened else ""))
        else:
            out.append(line.replace("$", "$$"))
        depth += opened - closed
    return "\n".join(out) + "\n"


GRPC_TEMPLATE = lab_template(SHIPPED.read_text())


def render(template: str, **values: object) -> str:
    """Render corefile/<template> (or a template text containing a newline); a missing value is an error."""
    text = template if "\n" in template else (TEMPLATES / template).read_text()
    return string.Template(text).substitute({k: str(v) for k, v in values.items()})


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    """True once a DNS server answers anything at all (REFUSED counts: it is listening)."""
    dns.query.udp(dns.message.make_query(".", "SOA"), host, port=port, timeout=timeout)
    return True


class CoreDNS(Server):
    """One CoreDNS process. `zones`, `bind` and `port` are filled in for the template; pass the rest."""

    def __init__(
        self,
        workdir: Path,
        template: str = GRPC_TEMPLATE,
        *,
        zones: tuple[str, ...] | str = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        name: str = "coredns",
        detached: bool = False,
        **values: object,
    ) -> None:
        self.workdir = workdir
        self.host = host
        self.port = port or free_port(host)
        zone_list = zones.split() if isinstance(zones, str) else list(zones)
        self.corefile_text = render(
            template, zones=" ".join(zone_list) or ".", bind=host, port=self.port, **values
        )
        self.corefile = workdir / f"{name}.Corefile"
        self.process = Process(
            name,
            [binary("coredns"), "-conf", self.corefile, "-dns.port", str(self.port)],
            workdir / f"{name}.log",
            env=GO_RUNTIME,
            cwd=workdir,
            detached=detached,
            plane=DATA_PLANE,
        )

    def start(self) -> CoreDNS:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.corefile.write_text(self.corefile_text)
        self.process.start()
        wait_for(
            lambda: answers(self.host, self.port),
            what=f"CoreDNS answering on {self.address}",
            timeout=START_TIMEOUT,
            watch=[self.process],
        )
        return self
