"""A Gslb object (k8gb's CRD, either API group) read into a checked value, or a reason it is unusable.

Validation lives here rather than in the CRD schema on purpose: k8gb's schema accepts these mistakes,
so manifests written for k8gb carry them, and a rejected apply would tell the user less than a
Ready=False condition with a reason and an Event on the object.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from backend.kube.informer import ROUTES
from backend.model import Obj, ObjectRef, Strategy, normalize_name, object_ref
from backend.probes.config import ProbeConfig, ProbeError
from backend.probes.config import parse as parse_probe

STRATEGIES = ("roundRobin", "failover", "geoip")
POLICIES = ("Any", "All")
EXPOSED_IPS = "k8gb.io/exposed-ip-addresses"
EXPOSED_HOSTNAMES = "k8gb.io/exposed-hostnames"  # k8gb v0.20: resolved to addresses, wins over EXPOSED_IPS
HOSTNAME = "k8gb.io/hostname"
ROUTE_KINDS = tuple(ROUTES)  # Gateway API, as k8gb v0.17+


_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")


class SpecError(ValueError):
    """A Gslb that cannot be served as written; `reason` is the condition's CamelCase reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def check_hostnames(names: Iterable[str], what: str) -> None:
    """SpecError InvalidHostname unless every (normalized) name is an RFC 1123 hostname: only those are
    handed to the resolver."""
    bad = [h for h in names if not _HOSTNAME.match(h)]
    if bad:
        raise SpecError("InvalidHostname", f"{what}: {', '.join(bad)} is not an RFC 1123 hostname")


@dataclass(frozen=True, slots=True)
class ResourceRef:
    kind: str  # "Ingress" | "Service" | one of ROUTE_KINDS
    namespace: str
    name: str = ""
    match_labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class GslbSpec:
    ref: ObjectRef
    strategy: Strategy
    ttl: int
    policy: str  # Any | All
    ingress: Obj | None  # spec.ingress (an IngressSpec); None when resourceRef is used
    resource: ResourceRef | None
    exposed_ips: tuple[str, ...]  # the k8gb.io/exposed-ip-addresses override, unchecked
    probe: ProbeConfig | None = None  # coredns-gslb.io/probe annotations (backend/probes/)
    probe_error: str = ""  # why those annotations are unusable; the Gslb then answers by endpoint health
    exposed_hostnames: tuple[str, ...] = ()  # k8gb.io/exposed-hostnames, normalized DNS names


def _strategy(raw: Any, default_ttl: int) -> tuple[Strategy, int]:
    if not isinstance(raw, dict):
        raise SpecError("InvalidStrategy", "spec.strategy is missing")
    type_ = raw.get("type")
    if type_ not in STRATEGIES:
        raise SpecError("UnknownStrategy",
                        f"spec.strategy.type {type_!r} is not one of {', '.join(STRATEGIES)}")
    primary = raw.get("primaryGeoTag") or ""
    if type_ == "failover" and not primary:
        raise SpecError("MissingPrimaryGeoTag", "strategy failover needs spec.strategy.primaryGeoTag")
    weights = raw.get("weight") or {}
    if not isinstance(weights, dict) or not all(isinstance(w, int) for w in weights.values()):
        raise SpecError("InvalidWeight", "spec.strategy.weight must map geotags to integers")
    negative = sorted(tag for tag, w in weights.items() if w < 0)
    if negative:
        raise SpecError("InvalidWeight", f"negative weight for {', '.join(negative)}")
    if weights and not any(weights.values()):
        raise SpecError("InvalidWeight", "every weight is 0: no geotag would ever be answered")
    ttl = raw.get("dnsTtlSeconds", default_ttl)
    if not isinstance(ttl, int) or ttl < 0:
        raise SpecError("InvalidTTL", f"spec.strategy.dnsTtlSeconds {ttl!r} is not a non-negative integer")
    return Strategy(type_, primary, tuple(sorted(weights.items()))), ttl


def _resource_ref(raw: Any, namespace: str) -> ResourceRef:
    kind = raw.get("kind") or "Ingress"
    if kind not in ("Ingress", "Service", *ROUTE_KINDS):
        raise SpecError("UnsupportedResource",
                        f"spec.resourceRef.kind {kind!r}: only Ingress, Service or {', '.join(ROUTE_KINDS)}")
    labels = raw.get("matchLabels") or {}
    name = raw.get("name") or ""
    if not name and not labels:
        raise SpecError("InvalidResourceRef", "spec.resourceRef needs a name or matchLabels")
    # A Gslb only ever reaches objects in its own namespace, as in k8gb.
    ref_ns = raw.get("namespace") or namespace
    if ref_ns != namespace:
        raise SpecError("InvalidResourceRef",
                        f"spec.resourceRef.namespace {ref_ns!r} is not the Gslb's namespace")
    return ResourceRef(kind, namespace, name, tuple(sorted(labels.items())))


def parse(obj: Obj, default_ttl: int = 30) -> GslbSpec:
    """The usable spec of a Gslb, or SpecError saying why not."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    strategy, ttl = _strategy(spec.get("strategy"), default_ttl)
    policy = spec.get("serviceHealthPolicy") or "Any"
    if policy not in POLICIES:
        raise SpecError("InvalidServiceHealthPolicy",
                        f"spec.serviceHealthPolicy {policy!r} is not Any or All")
    ingress = spec.get("ingress")
    raw_ref = spec.get("resourceRef")
    if ingress and raw_ref:
        raise SpecError("InvalidResourceRef", "spec.ingress and spec.resourceRef are mutually exclusive")
    if not ingress and not raw_ref:
        raise SpecError("MissingResource", "the Gslb needs spec.ingress or spec.resourceRef")
    resource = _resource_ref(raw_ref, meta.get("namespace", "")) if raw_ref else None
    annotations = meta.get("annotations") or {}
    exposed = annotations.get(EXPOSED_IPS, "")
    probe: ProbeConfig | None = None
    probe_error = ""
    try:
        probe = parse_probe(annotations)
    except ProbeError as e:
        probe_error = str(e)
    listed = annotations.get(EXPOSED_HOSTNAMES, "").split(",")
    hostnames = tuple(dict.fromkeys(normalize_name(h) for h in listed if h.strip()))
    check_hostnames(hostnames, f"annotation {EXPOSED_HOSTNAMES}")
    return GslbSpec(
        ref=object_ref(obj),
        strategy=strategy,
        ttl=ttl,
        policy=policy,
        ingress=ingress if isinstance(ingress, dict) else None,
        resource=resource,
        exposed_ips=tuple(ip.strip() for ip in exposed.split(",") if ip.strip()),
        probe=probe,
        probe_error=probe_error,
        exposed_hostnames=hostnames,
    )
