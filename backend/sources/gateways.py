"""Gateway API routes -> Endpoints, as ExternalDNS v0.22's gateway-*route sources make them.

Hostnames: the route's spec.hostnames plus the hostname annotation; a route without spec.hostnames
also takes each attached listener's hostname. Parents: only entries of status.parents that match a
spec.parentRefs entry (group, kind, namespace, name, sectionName, port), name a Gateway and say
Accepted=True for the route's current generation. Listeners: the parent's sectionName (or all), its
port if given, a protocol the route speaks (HTTPS counts as HTTP, a TCPRoute may use a TLS listener),
and allowedRoutes (namespaces Same/All/Selector, kinds). Each route hostname is narrowed by the
listener's hostname (a `*.` listener matches by suffix; the more specific name wins). Targets: the
Gateway's `target` annotation, else its status.addresses (IPAddress -> A/AAAA, Hostname -> CNAME).
Only `target` is read from the Gateway; TTL and `controller` come from the route.

Unlike ExternalDNS (which logs at debug level), what keeps a name from being published becomes a
Problem (Warning Event + log line): a parentRef to a Gateway that does not exist, a listener that
does not allow the route, a listener hostname that matches none of the route's, a Gateway without
addresses yet, a malformed address. A parent not accepted (yet) by its controller is silent unless
the controller says Accepted=False. Gateways outside --gateway-name/-namespace/-label-filter are
skipped silently, as in ExternalDNS.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.kube.informer import GATEWAY_GROUP, gateway_key, is_gateway_ref, parent_keys
from backend.kube.selectors import Selector, from_label_selector
from backend.model import Endpoint, Obj, check_name, object_ref, zone_of
from backend.sources import annotations as ann
from backend.sources.annotations import Problem

PROTOCOL = {"HTTPRoute": "HTTP", "GRPCRoute": "HTTP", "TLSRoute": "TLS", "TCPRoute": "TCP", "UDPRoute": "UDP"}


@dataclass(frozen=True, slots=True)
class GatewayFilter:
    """ExternalDNS's --gateway-name, --gateway-namespace and --gateway-label-filter."""

    name: str = ""
    namespace: str = ""
    labels: Selector = field(default_factory=Selector)

    def selects(self, gw: Obj) -> bool:
        meta = gw.get("metadata") or {}
        return ((not self.name or meta.get("name") == self.name)
                and (not self.namespace or meta.get("namespace") == self.namespace)
                and self.labels.matches(meta.get("labels")))


def _meta(obj: Obj) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _same_ref(a: Obj, b: Obj, route_ns: str) -> bool:
    return (is_gateway_ref(a) == is_gateway_ref(b) and gateway_key(a, route_ns) == gateway_key(b, route_ns)
            and (a.get("sectionName") or "") == (b.get("sectionName") or "")
            and a.get("port") == b.get("port"))


def _accepted(parent: Obj, generation: Any) -> tuple[bool | None, str]:
    """True/False as the controller says for this generation (None: it has not said yet), and why."""
    for cond in parent.get("conditions") or ():
        if cond.get("type") == "Accepted":
            why = f"{cond.get('reason', '')}: {cond.get('message', '')}"
            if cond.get("status") == "True":
                return (cond.get("observedGeneration") == generation or None), why
            return (False if cond.get("status") == "False" else None), why
    return None, ""


def protocol_matches(route: str, listener: str) -> bool:
    route = "HTTP" if route == "HTTPS" else route
    listener = "HTTP" if listener == "HTTPS" else listener
    return route == listener or (route == "TCP" and listener == "TLS")


def allowed_by(gw: Obj, listener: Obj, route: Obj, namespaces: Callable[[str], Obj | None]) -> bool:
    allowed = listener.get("allowedRoutes") or {}
    from_ = (allowed.get("namespaces") or {}).get("from") or "Same"
    route_ns = _meta(route).get("namespace")
    if from_ == "Same" and route_ns != _meta(gw).get("namespace"):
        return False
    if from_ == "Selector":
        try:
            selector = from_label_selector((allowed.get("namespaces") or {}).get("selector"))
        except ValueError:
            return False
        ns = namespaces(route_ns or "")
        if ns is None or not selector.matches(_meta(ns).get("labels")):
            return False
    elif from_ not in ("Same", "All"):
        return False
    kinds = allowed.get("kinds") or ()
    return not kinds or any((k.get("group") or GATEWAY_GROUP) == GATEWAY_GROUP
                            and k.get("kind") == route.get("kind") for k in kinds)


def _host(name: str) -> str | None:
    """A listener or route hostname in canonical form ("" = any); None if it is not a DNS name."""
    if not name:
        return ""
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        return check_name(name)


def matching_host(a: str, b: str) -> str | None:
    """The more specific of two overlapping hostnames ("" matches anything, `*.x` matches below x)."""
    if a == "":
        return b
    if b == "" or a == b:
        return a
    if len(b) < len(a) or (len(a) == len(b) and b.startswith("*.")):
        a, b = b, a
    return b if a.startswith("*.") and b.endswith(a[1:]) else None


def listeners_for(gw: Obj, ref: Obj, route: Obj) -> list[Obj]:
    """The Gateway's listeners a parentRef can attach to: its sectionName (or all), its port if
    given, and a protocol the route's kind speaks."""
    section = ref.get("sectionName") or ""
    protocol = PROTOCOL.get(route.get("kind", ""), "")
    return [lis for lis in (gw.get("spec") or {}).get("listeners") or ()
            if (not section or lis.get("name") == section)
            and protocol_matches(protocol, lis.get("protocol", ""))
            and ref.get("port") in (None, lis.get("port"))]


def matched_hosts(listeners: Sequence[Obj], hosts: Sequence[str]) -> tuple[list[str], bool]:
    """The names the route gets through these listeners, and whether any pair named a host at all
    (neither side naming one, as a TCPRoute without annotation, is no mistake)."""
    matched: list[str] = []
    tried = False
    for lis in listeners:
        gw_host = _host(lis.get("hostname") or "")
        for rt_host in hosts:
            if gw_host is None or (gw_host == "" and rt_host == ""):
                continue
            tried = True
            host = matching_host(gw_host, rt_host)
            if host and host not in matched:
                matched.append(host)
    return matched, tried


def route_hosts(route: Obj) -> tuple[list[str], list[Problem]]:
    """spec.hostnames then the hostname annotation; "" (take the listener's) when spec has none.
    The `gateway-hostname-source` annotation (annotation-only | defined-hosts-only) narrows that."""
    annotations = _meta(route).get("annotations") or {}
    source = ann.annotation(annotations, "gateway-hostname-source") or ""
    names: list[str] = []
    problems: list[Problem] = []
    spec_names = [] if source == "annotation-only" else (route.get("spec") or {}).get("hostnames") or []
    for raw in spec_names:
        name = _host(raw)
        if not name:
            problems.append(Problem("InvalidHostname", f"spec.hostnames: {raw!r} is not a DNS name"))
        elif name not in names:
            names.append(name)
    if source != "defined-hosts-only":
        more, bad = ann.hostnames(annotations)
        names += [n for n in more if n not in names]
        problems += bad
    if not (route.get("spec") or {}).get("hostnames"):
        names.append("")
    return names, problems


def gateway_addresses(gw: Obj) -> tuple[list[str], list[Problem]]:
    """The target annotation, else status.addresses (IPAddress values must be IPs; Hostname -> CNAME)."""
    override = ann.split_list(ann.annotation(_meta(gw).get("annotations") or {}, "target"))
    if override:
        return override, []
    key = f"Gateway {_meta(gw).get('namespace')}/{_meta(gw).get('name')}"
    values: list[str] = []
    problems: list[Problem] = []
    for entry in (gw.get("status") or {}).get("addresses") or ():
        if not isinstance(entry, Mapping):
            problems.append(Problem("InvalidAddress", f"{key}: "
                                    f"status.addresses entry {entry!r} is malformed"))
            continue
        type_, value = entry.get("type") or "IPAddress", str(entry.get("value") or "")
        if type_ == "IPAddress":
            try:
                values.append(str(ipaddress.ip_address(value)))
            except ValueError:
                problems.append(Problem("InvalidAddress", f"{key}: IPAddress {value!r} is not an IP address"))
        elif type_ == "Hostname" and check_name(value) and not value.startswith("*"):
            values.append(value)
        else:
            why = f"{key}: {type_} address {value!r} cannot be a DNS target"
            problems.append(Problem("InvalidAddress", why))
    return values, problems


def host_targets(
    route: Obj,
    gateways: Callable[[str], Obj | None],
    namespaces: Callable[[str], Obj | None],
    filt: GatewayFilter | None = None,
) -> tuple[dict[str, list[str]], list[Problem]]:
    """hostname -> target values (untyped, in order) for every accepted, allowed parent listener."""
    meta = _meta(route)
    route_ns = meta.get("namespace", "")
    spec = route.get("spec") or {}
    refs = [r for r in spec.get("parentRefs") or () if isinstance(r, Mapping)]
    hosts, problems = route_hosts(route)
    out: dict[str, list[str]] = {}
    for key in parent_keys(route):
        if gateways(key) is None:
            problems.append(Problem("GatewayNotFound", f"parentRef Gateway {key} does not exist"))
    for parent in (route.get("status") or {}).get("parents") or ():
        ref = parent.get("parentRef") or {}
        if not is_gateway_ref(ref) or not any(_same_ref(ref, r, route_ns) for r in refs):
            continue
        gw_key = gateway_key(ref, route_ns)
        gw = gateways(gw_key)
        if gw is None or (filt is not None and not filt.selects(gw)):
            continue
        accepted, why = _accepted(parent, meta.get("generation"))
        if accepted is False:
            problems.append(Problem("RouteNotAccepted", f"Gateway {gw_key} did not accept the route ({why})"))
        if not accepted:
            continue
        section = ref.get("sectionName") or ""
        allowed = [lis for lis in listeners_for(gw, ref, route) if allowed_by(gw, lis, route, namespaces)]
        where = f"Gateway {gw_key}" + (f" listener {section}" if section else "")
        if not allowed:
            why = f"{where}: no listener allows a {route.get('kind')} from namespace {route_ns}"
            problems.append(Problem("NotAllowedByListeners", why))
            continue
        matched, tried = matched_hosts(allowed, hosts)
        if not matched and tried:
            names = ", ".join(h for h in hosts if h) or "(none)"
            problems.append(Problem("NoMatchingListenerHostname",
                                    f"{where}: no listener hostname matches the route's hostnames {names}"))
        if not matched:
            continue
        targets, more = gateway_addresses(gw)
        problems += more
        if not targets:
            problems.append(Problem("GatewayNoAddress", f"Gateway {gw_key} has no usable address yet"))
            continue
        for host in matched:
            out.setdefault(host, []).extend(t for t in targets if t not in out.get(host, ()))
    return out, problems


def endpoints(
    route: Obj,
    gateways: Callable[[str], Obj | None],
    namespaces: Callable[[str], Obj | None],
    zones: Sequence[str],
    gslb_zones: Sequence[str] = (),
    filt: GatewayFilter | None = None,
) -> tuple[list[Endpoint], list[Problem]]:
    """The route's records; names inside a GSLB zone are left to the GSLB engine (as for Ingresses)."""
    if ann.other_controller(route):
        return [], []
    by_host, problems = host_targets(route, gateways, namespaces, filt)
    ttl, more = ann.ttl(_meta(route).get("annotations") or {})
    problems += more
    ref = object_ref(route)
    eps: list[Endpoint] = []
    for host, values in by_host.items():
        if zone_of(host, gslb_zones) is not None:
            continue
        by_type, bad = ann.typed_targets(values, "Gateway address")
        made, outside = ann.endpoints_for([host], by_type, ttl, ref, zones)
        eps += made
        problems += bad + outside
    return ann.merge(eps), problems
