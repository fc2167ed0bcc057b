"""`coredns-gslb lab up | down | status | dataplane | roll`: the chapter's two clusters and enterprise DNS
on one machine.

Each cluster (us-buf, us-nyc) gets a control plane with a kwok node, the lbpool stand-in for MetalLB and
the ingress controller, and CoreDNS with our backend on its own loopback address, port 53 (glue records
carry no port). The backend serves behind `coredns-gslb listen`, as in k8s/deployment.yaml, so
`lab roll CLUSTER` restarts it as a rollout does: a new backend beside the old, no answer lost. BIND9
on 127.0.0.1:1053 is the edge DNS for foowidgets.k8s. All processes are detached with pid files under
the lab folder, so they outlive `make lab`; `lab down` stops them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lab import dataplane
from lab.bind9 import Bind9
from lab.dig import dig, split_server
from lab.kube import ControlPlane, Etcd, Pki, kubectl
from lab.lbpool import LbPool
from lab.proc import ROOT, StartupError, kill_pidfile, pid_running, port_free, read_pidfile
from lab.sidecar import DnsStack, roll

MANIFESTS = Path(__file__).parent / "manifests"
K8S = ROOT / "k8s"
EDGE_ZONE = "foowidgets.k8s"
GSLB_ZONE = "gb.foowidgets.k8s"
HOST = "fe.gb.foowidgets.k8s"
SHOP = "shop.gb.foowidgets.k8s"  # the same failover over a Gateway API HTTPRoute (manifests/shop.yaml)
SHOP_GATEWAY = {"us-buf": "172.18.200.102", "us-nyc": "172.18.201.102"}  # the Gateways' addresses
SA_NAMESPACE = SA_NAME = "coredns-gslb"
WAIT = 60.0  # bound for each step of the demo; the edge's cache alone may take the TTL (30 s)


@dataclass(frozen=True)
class ClusterSpec:
    geotag: str
    ip: str
    ingress: str  # the ingress controller's address (answer data only)
    services: tuple[str, ...]  # the MetalLB pool (answer data only)
    fixed: dict[str, str]
    manifests: tuple[str, ...]


def clusters(buf_ip: str, nyc_ip: str) -> list[ClusterSpec]:
    return [
        ClusterSpec(
            "us-buf",
            buf_ip,
            "10.2.1.167",
            tuple(f"172.18.200.{i}" for i in range(101, 111)),
            {"default/nginx-ext-dns": "172.18.200.101", "gateway:demo/shop": SHOP_GATEWAY["us-buf"]},
            ("nginx-lb.yaml", "demo.yaml", "gslb-failover-buf.yaml", "shop.yaml"),
        ),
        ClusterSpec(
            "us-nyc",
            nyc_ip,
            "10.2.1.98",
            tuple(f"172.18.201.{i}" for i in range(101, 111)),
            {"gateway:demo/shop": SHOP_GATEWAY["us-nyc"]},
            ("demo.yaml", "gslb-failover-nyc.yaml", "shop.yaml"),
        ),
    ]


class Stoppable(Protocol):
    def stop(self) -> None: ...


def say(message: str) -> None:
    print(f"[lab] {message}", flush=True)


def rel(path: Path) -> str:
    return os.path.relpath(path, ROOT)


def pidfiles(lab: Path) -> list[Path]:
    return sorted(lab.rglob("*.pid")) if lab.exists() else []


def down(lab: Path) -> int:
    stopped = [name for f in pidfiles(lab) if (name := kill_pidfile(f))]
    (lab / "state.json").unlink(missing_ok=True)
    say(f"stopped {len(stopped)} processes" if stopped else "nothing was running")
    return 0


def running(lab: Path) -> bool:
    """Every recorded process still alive (a state.json exists only once the lab came up completely)."""
    files = pidfiles(lab)
    if not files or not (lab / "state.json").exists():
        return False
    return all((recorded := read_pidfile(f)) and pid_running(*recorded) for f in files)


@dataclass
class Lab:
    """The running lab: what `state.json` describes and what the demo talks to."""

    dir: Path
    edge: Bind9
    planes: dict[str, ControlPlane]
    stacks: dict[str, DnsStack]
    dataplanes: dict[str, str] = field(default_factory=dict)  # cluster -> its stand-in data plane "IP:PORT"

    def state(self) -> dict[str, object]:
        return {
            "edge": {"dns": self.edge.address},
            "clusters": {
                geotag: {
                    "kubeconfig": rel(self.planes[geotag].kubeconfig),
                    "dns": stack.address,
                    "backend": stack.backend.grpc,
                    "admin": stack.backend.admin.removeprefix("http://"),  # /explain (`coredns-gslb explain`)
                    "geotag": geotag,
                    "dataplane": self.dataplanes[geotag],
                }
                for geotag, stack in self.stacks.items()
            },
        }


def start_all(
    lab: Path, edge_address: str, specs: list[ClusterSpec], backend_args: Sequence[str] = ()
) -> Lab:
    """Start every component; on any failure stop what was started and re-raise (the message names it)."""
    started: list[Stoppable] = []

    def start(what: str, item: Stoppable, starter: Callable[[], object]) -> None:
        t0 = time.monotonic()
        started.append(item)
        starter()
        say(f"{what} up ({time.monotonic() - t0:.1f}s)")

    try:
        pki = Pki.create(lab / "pki")
        etcd = Etcd(lab / "etcd", detached=True)
        start("etcd", etcd, etcd.start)
        edge_ip, edge_port = split_server(edge_address)
        edge = Bind9(lab / "edge", EDGE_ZONE, host=edge_ip, port=edge_port, recursive=True, detached=True)
        start(f"edge DNS (BIND9 for {EDGE_ZONE}) on {edge.address}", edge, edge.start)
        result = Lab(lab, edge, {}, {})
        geotags = [s.geotag for s in specs]
        for spec in specs:
            folder = lab / spec.geotag
            plane = ControlPlane(spec.geotag, folder, etcd, pki, detached=True)
            start(f"{spec.geotag} control plane on {plane.url} with a kwok node", plane, plane.start)
            kubeconfig = prepare_cluster(plane)
            pool = LbPool(
                folder,
                plane.kubeconfig,
                ingress=[spec.ingress],
                services=spec.services,
                fixed=spec.fixed,
                detached=True,
            )
            start(f"{spec.geotag} lbpool (ingress {spec.ingress})", pool, pool.start)
            data = dataplane.DataPlane(folder, dataplane.address(spec), spec.geotag, detached=True)
            start(f"{spec.geotag} data plane for {spec.ingress} on {data.address}", data, data.start)
            result.dataplanes[spec.geotag] = data.address
            flags = [
                "--zones",
                EDGE_ZONE,
                "--dns-zone",
                GSLB_ZONE,
                "--edge-dns-zone",
                EDGE_ZONE,
                "--edge-dns-servers",
                edge.address,
                "--cluster-geo-tag",
                spec.geotag,
                "--ext-gslb-clusters-geo-tags",
                ",".join(g for g in geotags if g != spec.geotag),
                "--nameserver-address",
                spec.ip,
                "--tsig-key-file",
                str(edge.key_file),
                "--namespace",
                SA_NAMESPACE,
                *dataplane.backend_flags(specs),
                *backend_args,
            ]
            zones = (EDGE_ZONE, GSLB_ZONE)
            stack = DnsStack(
                folder, kubeconfig, zones, flags, host=spec.ip, port=53, name=spec.geotag, detached=True,
                listener=True,
            )
            start(
                f"{spec.geotag} CoreDNS on {stack.address} + backend (gRPC {stack.backend.grpc})",
                stack,
                stack.start,
            )
            result.planes[spec.geotag] = plane
            result.stacks[spec.geotag] = stack
        return result
    except BaseException:
        for item in reversed(started):
            item.stop()
        for f in pidfiles(lab):
            kill_pidfile(f)
        raise


def prepare_cluster(plane: ControlPlane) -> Path:
    """CRDs and the backend's ServiceAccount + RBAC from k8s/; returns a kubeconfig with the SA's token."""
    crds = sorted((K8S / "crds").glob("*.yaml")) if (K8S / "crds").is_dir() else []
    for crd in crds:
        plane.kubectl("apply", "-f", str(crd))
    if crds:
        plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
    plane.install_gateway_api()
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        if (K8S / name).exists():
            plane.kubectl("apply", "-f", str(K8S / name))
    if not (K8S / "rbac.yaml").exists():  # until k8s/ has it, the backend runs as admin
        return plane.kubeconfig
    # A year: the lab may run for long; TokenRequest tokens are not refreshed in a kubeconfig file.
    return plane.kubeconfig_for(SA_NAME, SA_NAMESPACE, plane.workdir / "kubeconfig-backend", "8760h")


def apply_manifests(plane: ControlPlane, spec: ClusterSpec) -> None:
    for name in spec.manifests:
        plane.kubectl("apply", "-f", str(MANIFESTS / name))
    dataplane.annotate_gslb(plane, spec)
    say(f"{spec.geotag}: applied {', '.join(spec.manifests)}; Gslbs annotated {dataplane.PROBE}")


@dataclass
class Observer:
    """One DNS server the demo watches: `dig @server name` until it answers `want`."""

    label: str
    server: str
    options: tuple[str, ...] = ()


def watch(name: str, want: list[str], observers: list[Observer], since: float,
          more: dict[str, list[str]] | None = None) -> bool:
    """Poll every observer until each answers `want` (and each name of `more` its answer); print when
    each switched, counted from `since`."""
    pending = [(obs, n, w) for n, w in {name: want, **(more or {})}.items() for obs in observers]
    last: dict[tuple[str, str], str] = {}
    deadline = time.monotonic() + WAIT
    while pending and time.monotonic() < deadline:
        for obs, n, w in list(pending):
            answer = dig(obs.server, n, "A", *obs.options, timeout=1)
            got = answer.values("A")
            last[(obs.label, n)] = " ".join(got) if got else (answer.rcode or "no reply")
            if got == w:
                pending.remove((obs, n, w))
                say(f"  {obs.label:<30} {n} -> {' '.join(got)}   ({time.monotonic() - since:.1f}s)")
        if pending:
            time.sleep(0.2)
    for obs, n, w in pending:
        say(f"  {obs.label:<30} {n}: {last.get((obs.label, n))!r} after {WAIT:.0f}s, want {' '.join(w)}")
    return not pending


def dig_args(server: str) -> str:
    host, port = split_server(server)
    return f"@{host}" if port == 53 else f"@{host} -p {port}"


def demo(state: dict) -> bool:
    """The chapter's demo: names, the edge delegation, failover from Buffalo to NYC and back, timed.

    Each cluster's CoreDNS is asked with +norecurse (what that cluster itself answers); the edge is asked
    as a workstation would, so it switches only when its cached answer's TTL runs out.
    """
    edge = Observer(f"edge {state['edge']['dns']}", state["edge"]["dns"])
    at_clusters = [
        Observer(f"{geotag} CoreDNS {c['dns']}", c["dns"], ("+norecurse",))
        for geotag, c in state["clusters"].items()
    ]
    buf = state["clusters"]["us-buf"]
    say("== the chapter, replayed ==")
    say(f"$ dig {dig_args(buf['dns'])} nginx.foowidgets.k8s")
    ok = watch("nginx.foowidgets.k8s", ["172.18.200.101"], at_clusters[:1], time.monotonic())
    say(f"$ dig {dig_args(state['edge']['dns'])} {HOST}")
    ok &= watch(HOST, ["10.2.1.167"], [edge, *at_clusters], time.monotonic(),
                {SHOP: [SHOP_GATEWAY["us-buf"]]})
    for geotag, c in state["clusters"].items():
        kinds = "gslb,ingress,gateway,httproute"
        say(f"$ kubectl --kubeconfig {c['kubeconfig']} get {kinds} -n demo   # {geotag}")
        for line in kubectl(
            ROOT / c["kubeconfig"], "get", kinds, "-n", "demo", check=False
        ).splitlines():
            say(f"  {line}".rstrip())
    steps = (
        (0, "10.2.1.98", "us-nyc", "Buffalo's nginx is down: failover to NYC"),
        (1, "10.2.1.167", "us-buf", "Buffalo is back: the primary again"),
    )
    for replicas, want, shop_at, why in steps:
        say(
            f"$ kubectl --kubeconfig {buf['kubeconfig']} -n demo scale deployment nginx --replicas={replicas}"
            f"   # {why}"
        )
        t0 = time.monotonic()
        kubectl(
            ROOT / buf["kubeconfig"], "-n", "demo", "scale", "deployment", "nginx", f"--replicas={replicas}"
        )
        ok &= watch(HOST, [want], [*at_clusters, edge], t0, {SHOP: [SHOP_GATEWAY[shop_at]]})
    return ok


def replay_all(lab: Path, state: dict) -> bool:
    """The chapter, then the data-plane chapter (lab/dataplane.py)."""
    ok = demo(state)
    return dataplane.demo(lab, state) and ok


def up(
    lab: Path, edge_address: str, specs: list[ClusterSpec], replay: bool, backend_args: Sequence[str]
) -> int:
    state_file = lab / "state.json"
    if running(lab):
        say(f"already running (state: {rel(state_file)}); `make lab-down` stops it")
        return 0 if not replay or replay_all(lab, json.loads(state_file.read_text())) else 1
    if pidfiles(lab):
        say("stopping the remains of an earlier lab")
        down(lab)
    shutil.rmtree(lab, ignore_errors=True)
    addresses = [split_server(edge_address), *((s.ip, 53) for s in specs),
                 *(split_server(dataplane.address(s)) for s in specs)]
    taken = [f"{ip}:{port}" for ip, port in addresses if not port_free(ip, port)]
    if taken:
        print(
            f"[lab] FAILED: {', '.join(taken)} already taken (another lab? `make lab-down`; "
            "or choose addresses with --edge/--buf-ip/--nyc-ip)",
            file=sys.stderr,
        )
        return 1
    t0 = time.monotonic()
    try:
        started = start_all(lab, edge_address, specs, backend_args)
        for spec in specs:
            apply_manifests(started.planes[spec.geotag], spec)
    except (StartupError, RuntimeError) as e:
        print(f"[lab] FAILED: {e}", file=sys.stderr)
        for f in pidfiles(lab):
            kill_pidfile(f)
        say("stopped everything the lab had started")
        return 1
    state = started.state()
    state_file.write_text(json.dumps(state, indent=2) + "\n")
    say(f"up in {time.monotonic() - t0:.1f}s; {rel(state_file)}:\n{json.dumps(state, indent=2)}")
    ok = replay_all(lab, state) if replay else True
    kubeconfig = state["clusters"]["us-buf"]["kubeconfig"]
    say(f"the lab keeps running: dig {dig_args(state['edge']['dns'])} {HOST}")
    say(f"                       kubectl --kubeconfig {kubeconfig} get gslb -A; make lab-down")
    if not ok:
        say("some answers did not match the chapter (see above); logs are under " + rel(lab))
    return 0 if ok else 1


def roll_backend(lab: Path, cluster: str) -> int:
    """`lab roll CLUSTER`: that cluster's backend replaced behind its listener while CoreDNS answers."""
    if not running(lab):
        print("[lab] FAILED: the lab is not running (`make lab`)", file=sys.stderr)
        return 1
    clusters = json.loads((lab / "state.json").read_text())["clusters"]
    if cluster not in clusters:
        print(f"[lab] FAILED: no cluster {cluster!r} (the lab has {', '.join(clusters)})", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    try:
        old, new = roll(lab / cluster / f"{cluster}-backend.pid")
    except StartupError as e:
        print(f"[lab] FAILED: {e}", file=sys.stderr)
        return 1
    say(f"{cluster} backend rolled behind its listener: pid {old} -> {new} ({time.monotonic() - t0:.1f}s)")
    return 0


def status(lab: Path) -> int:
    state_file = lab / "state.json"
    if state_file.exists():
        print(state_file.read_text(), end="")
    for f in pidfiles(lab):
        recorded = read_pidfile(f)
        pid, alive = (recorded[0], pid_running(*recorded)) if recorded else ("?", False)
        print(f"{'running' if alive else 'DEAD   '} {pid:>7} {rel(f.with_suffix('.log'))}")
    return 0 if running(lab) else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="coredns-gslb lab", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("action", choices=["up", "down", "status", "dataplane", "roll"])
    p.add_argument("args", nargs="*", metavar="CLUSTER [down|up]", help="dataplane CLUSTER down|up: stop or "
                   "start a cluster's stand-in data plane (its pods stay Ready); roll CLUSTER: replace its "
                   "backend behind its listener, as a rollout does")
    p.add_argument("--dir", type=Path, default=ROOT / ".lab", help="state, logs and pid files (default .lab)")
    p.add_argument("--edge", default="127.0.0.1:1053", help="edge DNS address (an interface's, for BIND9)")
    p.add_argument("--buf-ip", default="127.0.0.21", help="us-buf CoreDNS's loopback address (port 53)")
    p.add_argument("--nyc-ip", default="127.0.0.22", help="us-nyc CoreDNS's loopback address (port 53)")
    p.add_argument("--no-demo", action="store_true", help="start the lab without replaying the chapter")
    p.add_argument(
        "--backend-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more flag for every backend, e.g. --backend-arg=--negative-ttl=10 (repeatable)",
    )
    a = p.parse_args(argv)
    lab = a.dir.resolve()
    if a.action == "down":
        return down(lab)
    if a.action == "status":
        return status(lab)
    if a.action == "dataplane":
        if len(a.args) != 2 or a.args[1] not in ("down", "up"):
            p.error("usage: lab dataplane CLUSTER down|up")
        return dataplane.switch(lab, a.args[0], a.args[1])
    if a.action == "roll":
        if len(a.args) != 1:
            p.error("usage: lab roll CLUSTER")
        return roll_backend(lab, a.args[0])
    return up(lab, a.edge, clusters(a.buf_ip, a.nyc_ip), not a.no_demo, a.backend_arg)
