"""Stand-in for MetalLB and an ingress controller: fills status.loadBalancer.ingress from address pools.

Services of type LoadBalancer get the next free address of the service pool (a fixed one by name if
configured, as the chapter's 172.18.200.101 for nginx-ext-dns); every Ingress gets the ingress
controller's address. It is also the gateway controller of its own GatewayClass (gatewayctl.py).
The addresses are answer data only; nothing ever connects to them. Run it as
`python -m lab.lbpool --kubeconfig K ...`, or call `set_load_balancer` once from a test.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lab.gatewayctl import GatewayController
from lab.proc import PYTHON, ROOT, Process, wait_for

START_TIMEOUT = 30.0


def lb_ingress(addresses: Sequence[str]) -> list[dict[str, str]]:
    """status.loadBalancer.ingress entries: IPs as `ip`, anything else as `hostname`."""
    entries = []
    for a in addresses:
        try:
            ipaddress.ip_address(a)
            entries.append({"ip": a})
        except ValueError:
            entries.append({"hostname": a})
    return entries


def set_load_balancer(api: Any, kind: str, namespace: str, name: str, addresses: Sequence[str]) -> None:
    """Write an object's load-balancer status as MetalLB or an ingress controller would.

    `api` is a kubernetes.client.ApiClient (e.g. `plane.api_client()`); kind is Service or Ingress.
    """
    import kubernetes.client

    body = {"status": {"loadBalancer": {"ingress": lb_ingress(addresses)}}}
    if kind == "Service":
        kubernetes.client.CoreV1Api(api).patch_namespaced_service_status(name, namespace, body)
    elif kind == "Ingress":
        kubernetes.client.NetworkingV1Api(api).patch_namespaced_ingress_status(name, namespace, body)
    else:
        raise ValueError(f"no load-balancer status on {kind}")


class Pools:
    """Which address each object gets; assignment survives restarts because it is read back from status."""

    def __init__(self, ingress: Sequence[str], services: Sequence[str], fixed: dict[str, str]) -> None:
        self.ingress = list(ingress)
        self.services = list(services)
        self.fixed = fixed  # "namespace/name" -> address
        self.assigned: dict[str, str] = {}

    def for_service(self, key: str, current: list[str]) -> list[str]:
        if key in self.fixed:
            return [self.fixed[key]]
        if key not in self.assigned:
            taken = set(self.assigned.values()) | set(self.fixed.values())
            kept = [a for a in current if a in self.services and a not in taken]
            free = kept or [a for a in self.services if a not in taken]
            if not free:
                return current
            self.assigned[key] = free[0]
        return [self.assigned[key]]

    def release(self, key: str) -> None:
        self.assigned.pop(key, None)


def _addresses(obj: Any) -> list[str]:
    ingress = (obj.status.load_balancer.ingress if obj.status and obj.status.load_balancer else None) or []
    return [i.ip or i.hostname for i in ingress]


def _key(obj: Any) -> str:
    return f"{obj.metadata.namespace}/{obj.metadata.name}"


def run(kubeconfig: str, pools: Pools, *, ready: Callable[[], None] = lambda: None) -> None:
    """List + watch Services and Ingresses forever, patching status where it differs from the pools."""
    import kubernetes.client
    import kubernetes.config
    import kubernetes.watch

    api = kubernetes.config.new_client_from_config(config_file=kubeconfig)
    core, net = kubernetes.client.CoreV1Api(api), kubernetes.client.NetworkingV1Api(api)

    def service(event: str, svc: Any) -> None:
        key = _key(svc)
        if event == "DELETED" or svc.spec.type != "LoadBalancer":
            pools.release(key)
            return
        want = pools.for_service(key, _addresses(svc))
        if want != _addresses(svc):
            set_load_balancer(api, "Service", svc.metadata.namespace, svc.metadata.name, want)
            print(f"service {key} -> {', '.join(want)}", flush=True)

    def ingress(event: str, ing: Any) -> None:
        if event != "DELETED" and pools.ingress and _addresses(ing) != pools.ingress:
            set_load_balancer(api, "Ingress", ing.metadata.namespace, ing.metadata.name, pools.ingress)
            print(f"ingress {_key(ing)} -> {', '.join(pools.ingress)}", flush=True)

    kinds = [(core.list_service_for_all_namespaces, service), (net.list_ingress_for_all_namespaces, ingress)]
    synced = threading.Barrier(len(kinds) + 1)

    def loop(lister: Callable[..., Any], handle: Callable[[str, Any], None]) -> None:
        first = True
        while True:
            try:
                listed = lister()
                for obj in listed.items:
                    handle("ADDED", obj)
                if first:
                    first = False
                    synced.wait()
                for ev in kubernetes.watch.Watch().stream(
                    lister, resource_version=listed.metadata.resource_version, timeout_seconds=300
                ):
                    handle(ev["type"], ev["object"])
            except Exception as e:  # API away or watch expired: relist after a pause, keep the pool running
                print(f"{lister.__name__}: {e!r}; relisting", file=sys.stderr, flush=True)
                time.sleep(1)

    for lister, handle in kinds:
        threading.Thread(target=loop, args=(lister, handle), daemon=True).start()
    GatewayController(api, pools.for_service).start()  # Gateways take addresses from the Service pool
    synced.wait()
    ready()
    threading.Event().wait()


def _fixed(values: Sequence[str]) -> dict[str, str]:
    pairs = (v.split("=", 1) for v in values)
    return {k if "/" in k else f"default/{k}": a for k, a in pairs}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.lbpool", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--ingress", default="", help="ingress controller address(es), comma-separated")
    p.add_argument("--services", default="", help="LoadBalancer Service pool, comma-separated")
    p.add_argument("--fixed", action="append", default=[], help="[namespace/]name=address for one Service")
    a = p.parse_args(argv)
    split = [x for x in a.ingress.split(",") if x], [x for x in a.services.split(",") if x]
    run(a.kubeconfig, Pools(split[0], split[1], _fixed(a.fixed)), ready=lambda: print("ready", flush=True))
    return 0


class LbPool:
    """The pool as a child process (tests and the lab); ready once both kinds are listed."""

    def __init__(
        self,
        workdir: Path,
        kubeconfig: Path | str,
        *,
        ingress: Sequence[str] = (),
        services: Sequence[str] = (),
        fixed: dict[str, str] | None = None,
        name: str = "lbpool",
        detached: bool = False,
    ) -> None:
        argv: list[object] = [PYTHON, "-m", "lab.lbpool", "--kubeconfig", kubeconfig]
        argv += ["--ingress", ",".join(ingress), "--services", ",".join(services)]
        for key, address in (fixed or {}).items():
            argv += ["--fixed", f"{key}={address}"]
        self.process = Process(
            name, argv, workdir / f"{name}.log", cwd=ROOT, env={"PYTHONUNBUFFERED": "1"}, detached=detached
        )

    def start(self) -> LbPool:
        self.process.start()
        wait_for(
            lambda: "\nready\n" in self.process.log.read_text(),
            what="lbpool listing Services and Ingresses",
            timeout=START_TIMEOUT,
            watch=[self.process],
        )
        return self

    def stop(self) -> None:
        self.process.stop()


if __name__ == "__main__":
    sys.exit(main())
