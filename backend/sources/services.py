"""Services -> Endpoints, as ExternalDNS's service source does it.

hostname names get: the target annotation if set; else by type: LoadBalancer -> spec.externalIPs or
status.loadBalancer.ingress (ip -> A/AAAA, hostname -> CNAME); headless ClusterIP -> the ready
addresses of its EndpointSlices (plus `<endpoint hostname>.<name>` per pod that has one);
ExternalName -> spec.externalName; plain ClusterIP -> nothing (ExternalDNS publishes those only with
--publish-internal-services). internal-hostname names get the ClusterIP(s), or pod IPs when headless.
NodePort Services are not published (ExternalDNS would publish node IPs, which kwok-style labs and
most load-balanced clusters do not route).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from backend.model import Endpoint, Obj, object_ref
from backend.sources import annotations as ann
from backend.sources.annotations import Problem


def is_headless(svc: Obj) -> bool:
    spec = svc.get("spec") or {}
    return spec.get("type", "ClusterIP") == "ClusterIP" and spec.get("clusterIP") == "None"


def _ready_addresses(svc: Obj, slices: Iterable[Obj]) -> tuple[list[str], dict[str, list[str]]]:
    """Ready addresses (ready != false, as EndpointSlice's contract says) and addresses per pod hostname."""
    publish_unready = bool((svc.get("spec") or {}).get("publishNotReadyAddresses"))
    addresses: set[str] = set()
    by_host: dict[str, set[str]] = {}
    for slc in slices:
        if slc.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for ep in slc.get("endpoints") or ():
            if not publish_unready and (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in ep.get("addresses") or ():
                addresses.add(addr)
                if ep.get("hostname"):
                    by_host.setdefault(ep["hostname"], set()).add(addr)
    return _ip_sorted(addresses), {h: _ip_sorted(a) for h, a in by_host.items()}


def _ip_sorted(values: Iterable[str]) -> list[str]:
    return sorted(values, key=lambda v: (ipaddress.ip_address(v).version, ipaddress.ip_address(v)))


def _lb_targets(svc: Obj) -> list[str]:
    external = (svc.get("spec") or {}).get("externalIPs") or []
    if external:
        return list(external)
    return ann.load_balancer_targets(svc)


def _cluster_ips(svc: Obj) -> list[str]:
    spec = svc.get("spec") or {}
    ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
    return [ip for ip in ips if ip and ip != "None"]


def endpoints(svc: Obj, slices: Sequence[Obj], zones: Sequence[str]) -> tuple[list[Endpoint], list[Problem]]:
    """The Service's records; `slices` are its EndpointSlices (only read when it is headless)."""
    if ann.other_controller(svc):
        return [], []
    annotations = (svc.get("metadata") or {}).get("annotations") or {}
    ref = object_ref(svc)
    names, problems = ann.hostnames(annotations)
    internal, more = ann.hostnames(annotations, "internal-hostname")
    problems += more
    ttl, more = ann.ttl(annotations)
    problems += more
    override = ann.split_list(ann.annotation(annotations, "target"))
    spec_type = (svc.get("spec") or {}).get("type", "ClusterIP")
    headless = is_headless(svc)
    eps: list[Endpoint] = []

    def publish(names_: Iterable[str], values: Iterable[str], what: str) -> None:
        by_type, bad = ann.typed_targets(values, what)
        made, outside = ann.endpoints_for(names_, by_type, ttl, ref, zones)
        eps.extend(made)
        problems.extend(bad + outside)

    if override:
        publish([*names, *internal], override, "target annotation")
        return ann.merge(eps), problems
    if headless and (names or internal):
        addresses, by_host = _ready_addresses(svc, slices)
        for name in [*names, *internal]:
            publish([name], addresses, "endpoint address")
            for host, addrs in sorted(by_host.items()):
                publish([f"{host}.{name}"], addrs, "endpoint address")
        return ann.merge(eps), problems
    # The API has validated these fields, so with no name to publish them under there is nothing to
    # report either: skip parsing them (most Services have a hostname and no internal-hostname).
    if names and spec_type == "LoadBalancer":
        publish(names, _lb_targets(svc), "load balancer status")
    elif names and spec_type == "ExternalName":
        publish(names, [(svc.get("spec") or {}).get("externalName", "")], "spec.externalName")
    if internal:
        publish(internal, _cluster_ips(svc), "clusterIP")
    return ann.merge(eps), problems

