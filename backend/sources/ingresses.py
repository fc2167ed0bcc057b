"""Ingresses -> Endpoints, as ExternalDNS's ingress source does it.

Names: spec.rules[].host, spec.tls[].hosts and the hostname annotation (the annotation
`ingress-hostname-source: annotation-only | defined-hosts-only` narrows that, as in ExternalDNS).
Targets: the target annotation, else status.loadBalancer.ingress (ip -> A/AAAA, hostname -> CNAME).

Names inside a GSLB zone (--dns-zone) are left to the GSLB engine, which publishes them with a
strategy and health (k8gb's own zone holds only Gslb names too); publishing them here as well would
put two producers, with different answers, on one name.
"""

from __future__ import annotations

from collections.abc import Sequence

from backend.model import Endpoint, Obj, check_name, object_ref, zone_of
from backend.sources import annotations as ann
from backend.sources.annotations import Problem


def hosts(ing: Obj) -> list[str]:
    """The hosts the Ingress's spec defines (rules, then TLS), in order, without duplicates."""
    spec = ing.get("spec") or {}
    raw = [r.get("host") for r in spec.get("rules") or ()]
    raw += [h for t in spec.get("tls") or () for h in t.get("hosts") or ()]
    out: list[str] = []
    for host in raw:
        name = check_name(host) if host else None
        if name and name not in out:
            out.append(name)
    return out


def endpoints(
    ing: Obj, zones: Sequence[str], gslb_zones: Sequence[str] = ()
) -> tuple[list[Endpoint], list[Problem]]:
    if ann.other_controller(ing):
        return [], []
    annotations = (ing.get("metadata") or {}).get("annotations") or {}
    ref = object_ref(ing)
    from_annotation, problems = ann.hostnames(annotations)
    source = ann.annotation(annotations, "ingress-hostname-source") or ""
    names = [] if source == "annotation-only" else hosts(ing)
    if source != "defined-hosts-only":
        names += [n for n in from_annotation if n not in names]
    names = [n for n in names if zone_of(n, gslb_zones) is None]
    ttl, more = ann.ttl(annotations)
    problems += more
    values = ann.split_list(ann.annotation(annotations, "target"))
    what = "target annotation"
    if not values:
        values = ann.load_balancer_targets(ing)
        what = "load balancer status"
    by_type, more = ann.typed_targets(values, what)
    problems += more
    eps, more = ann.endpoints_for(names, by_type, ttl, ref, zones)
    return ann.merge(eps), problems + more
