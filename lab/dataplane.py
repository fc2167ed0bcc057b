"""The lab's stand-in data plane: what an ingress controller or load balancer serves for one cluster.

The chapter's addresses (10.2.1.167, 10.2.1.98) are answer data and are never contacted, so each
cluster's data plane listens on a loopback address of the lab (`<cluster IP>:8080`) and the backends
are told, with the lab-only `--probe-address-map 10.2.1.167=IP:8080,...`, where probes of an exposed
address really go. It answers every HTTP GET with 200 (and so also accepts plain TCP).
`coredns-gslb lab dataplane CLUSTER down|up` stops and starts it while the cluster's pods stay Ready.

    python -m lab.dataplane --listen IP:PORT [--name us-buf]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.proc import PYTHON, ROOT, Process, accepting, kill_pidfile, wait_for

if TYPE_CHECKING:
    from lab.run import ClusterSpec

PORT = 8080
PROBE = "http://{address}:80/healthz"  # the annotation the lab adds to the chapter's Gslbs
START_TIMEOUT = 30.0
HOLD = 15.0  # how long the demo shows a peer keeping us-buf's answer with its DNS down (grace 10 s)


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    with contextlib.suppress(Exception):
        async with asyncio.timeout(5):
            request = await reader.readuntil(b"\r\n\r\n")
            path = request.split(b" ", 2)[1].decode(errors="replace") if b" " in request else "/"
            body = f"ok {name} {path}\n".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    writer.close()


async def serve(host: str, port: int, name: str) -> None:
    server = await asyncio.start_server(lambda r, w: _serve_one(r, w, name), host, port, reuse_address=True)
    print(f"serving {name} on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


class DataPlane:
    """One cluster's stand-in data plane as a child process; `address` is "IP:PORT"."""

    def __init__(self, workdir: Path, address: str, name: str, *, detached: bool = False) -> None:
        self.address = address
        self.process = Process(f"{name}-dataplane",
                               [PYTHON, "-m", "lab.dataplane", "--listen", address, "--name", name],
                               workdir / f"{name}-dataplane.log", cwd=ROOT, detached=detached)

    def start(self) -> DataPlane:
        self.process.start()
        wait_for(lambda: accepting(self.address), what=f"data plane on {self.address}",
                 timeout=START_TIMEOUT, watch=[self.process])
        return self

    def stop(self) -> None:
        self.process.stop()


# --- the lab's use of it (lab/run.py calls these) --------------------------------------------


def address(spec: ClusterSpec) -> str:
    return f"{spec.ip}:{PORT}"


def backend_flags(specs: Sequence[ClusterSpec]) -> list[str]:
    """LAB ONLY: probes of each cluster's ingress address go to its stand-in data plane."""
    return ["--probe-address-map", ",".join(f"{s.ingress}={address(s)}" for s in specs)]


def annotate_gslb(plane: Any, spec: ClusterSpec) -> None:
    """The chapter's Gslb of this cluster (gslb-failover-buf / -nyc), probed: the one annotation the lab
    adds to the manifests. Only that one: the lab's other addresses have no data plane to probe."""
    name = f"gslb-failover-{spec.geotag.removeprefix('us-')}"
    plane.kubectl("annotate", "--overwrite", "gslb", name, "-n", "demo", f"coredns-gslb.io/probe={PROBE}")


def _folder(lab: Path, cluster: str) -> Path:
    state = json.loads((lab / "state.json").read_text())
    if cluster not in state.get("clusters", {}):
        have = ", ".join(state.get("clusters", {}))
        raise SystemExit(f"lab dataplane: no cluster {cluster!r} (the lab has {have})")
    return lab / cluster


def switch(lab: Path, cluster: str, want: str) -> int:
    """`coredns-gslb lab dataplane CLUSTER down|up`."""
    folder = _folder(lab, cluster)
    listen = json.loads((lab / "state.json").read_text())["clusters"][cluster]["dataplane"]
    plane = DataPlane(folder, listen, cluster, detached=True)
    if want == "down":
        stopped = kill_pidfile(plane.process.pidfile)
        print(f"[lab] {cluster} data plane {listen}: {'stopped' if stopped else 'was not running'}",
              flush=True)
        return 0
    with contextlib.suppress(OSError):
        accepting(listen)
        print(f"[lab] {cluster} data plane {listen}: already serving", flush=True)
        return 0
    plane.start()
    print(f"[lab] {cluster} data plane {listen}: serving", flush=True)
    return 0


def demo(lab: Path, state: dict[str, Any]) -> bool:
    """After the chapter: failover that follows the data plane, and no false failover."""
    from lab.coredns import CoreDNS
    from lab.run import HOST, Observer, say, watch

    clusters = state["clusters"]
    at_clusters = [Observer(f"{tag} CoreDNS {c['dns']}", c["dns"], ("+norecurse",))
                   for tag, c in clusters.items()]
    say("== failover that follows the data plane (coredns-gslb.io/probe: " + PROBE + ") ==")
    ok = True
    for want, answer, why in (("down", "10.2.1.98", "Buffalo's ingress dies; its pods stay Ready"),
                              ("up", "10.2.1.167", "Buffalo's ingress serves again")):
        say(f"$ coredns-gslb lab dataplane us-buf {want}   # {why}")
        t0 = time.monotonic()
        switch(lab, "us-buf", want)
        ok &= watch(HOST, [answer], at_clusters, t0)
    buf, nyc = clusters["us-buf"], at_clusters[1]
    host = buf["dns"].rsplit(":", 1)[0]
    corefile = lab / "us-buf" / "us-buf-coredns.Corefile"
    say("$ kill us-buf's CoreDNS   # Buffalo's DNS is unreachable, its data plane still serves")
    kill_pidfile(lab / "us-buf" / "us-buf-coredns.pid")
    t0 = time.monotonic()
    held = True
    while held and time.monotonic() - t0 < HOLD:
        held = _answers(nyc.server) == ["10.2.1.167"]
        time.sleep(0.5)
    say(f"  {nyc.label:<30} {HOST} -> {'10.2.1.167' if held else 'changed'} for {time.monotonic() - t0:.1f}s "
        "(peer grace 10s): " + ("no false failover" if held else "FAILED OVER"))
    ok &= held
    text = corefile.read_text().replace("$", "$$")  # already rendered: nothing left to substitute
    CoreDNS(lab / "us-buf", text, host=host, port=53, name="us-buf-coredns", detached=True).start()
    say("  us-buf's CoreDNS is back")
    return ok


def _answers(server: str) -> list[str]:
    from lab.dig import dig

    return sorted(dig(server, "fe.gb.foowidgets.k8s", "A", "+norecurse", timeout=1).addresses)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.dataplane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="IP:PORT")
    p.add_argument("--name", default="dataplane")
    a = p.parse_args(argv)
    host, port = a.listen.rsplit(":", 1)
    asyncio.run(serve(host, int(port), a.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
