"""k8gb's health rules: which hosts a Gslb names, which Services back each host, whether they are up,
and which load-balancer addresses this cluster offers for them.

Everything is read through a `View`, so the engine can record what an evaluation looked at (its
dependencies) and unit tests can hand in plain dicts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from backend.gslb.spec import HOSTNAME, ROUTE_KINDS, GslbSpec, SpecError, check_hostnames
from backend.kube.informer import parent_keys
from backend.model import Obj, key_of, normalize_name

HEALTHY, UNHEALTHY, NOT_FOUND = "Healthy", "Unhealthy", "NotFound"


class View(Protocol):
    """The cluster as the engine sees it: objects by kind ("Ingress", "Service") and "ns/name"."""

    def get(self, kind: str, key: str) -> Obj | None: ...

    def select(self, kind: str, namespace: str, labels: dict[str, str]) -> list[Obj]: ...

    def slices(self, service_key: str) -> list[Obj]:
        """The EndpointSlices of a Service (label kubernetes.io/service-name)."""
        ...

    def resolved(self, hostname: str) -> tuple[str, ...]:
        """The addresses `hostname` resolved to last (empty until it has resolved once)."""
        ...


@dataclass(frozen=True, slots=True)
class HostState:
    host: str
    services: tuple[str, ...]  # "ns/name" of the backend Services, sorted
    health: str  # Healthy | Unhealthy | NotFound
    targets: tuple[str, ...]  # this cluster's addresses for the host, healthy or not

    @property
    def healthy(self) -> bool:
        return self.health == HEALTHY


def service_health(view: View, key: str) -> str:
    """Healthy if any EndpointSlice endpoint has an address and is not explicitly unready."""
    if view.get("Service", key) is None:
        return NOT_FOUND
    for eps in view.slices(key):
        for ep in eps.get("endpoints") or ():
            if ep.get("addresses") and (ep.get("conditions") or {}).get("ready") is not False:
                return HEALTHY
    return UNHEALTHY


def combine(states: Iterable[str], policy: str) -> str:
    """Any: one Healthy Service is enough. All: every Service must be Healthy (NotFound beats Unhealthy).
    No Service at all is NotFound either way."""
    states = list(states)
    if not states:
        return NOT_FOUND
    if policy == "All":
        if all(s == HEALTHY for s in states):
            return HEALTHY
        return NOT_FOUND if NOT_FOUND in states else UNHEALTHY
    if HEALTHY in states:
        return HEALTHY
    return UNHEALTHY if UNHEALTHY in states else NOT_FOUND


def lb_addresses(view: View, obj: Obj | None) -> list[str]:
    """What the load balancer announced: status.loadBalancer.ingress[] of a Service or Ingress, a
    Gateway's status.addresses. A hostname there (AWS ELBs, a Gateway's `Hostname` address) stands for
    the addresses it resolves to, as in k8gb, which digs it through the edge DNS servers: here
    backend/gslb/hostnames.py resolves it off the answer path and keeps it fresh; none until then."""
    if obj is None:
        return []
    if obj.get("kind") == "Gateway":
        out: list[str] = []
        for a in (obj.get("status") or {}).get("addresses") or ():
            if not isinstance(a, dict) or not a.get("value"):
                continue
            kind = a.get("type") or "IPAddress"
            if kind == "IPAddress":
                out.append(str(a["value"]))
            elif kind == "Hostname":
                out.extend(_resolved(view, str(a["value"]), f"Gateway {key_of(obj)} status.addresses"))
            else:  # k8gb refuses these too: only IPAddress and Hostname say where the Gateway listens
                raise SpecError("InvalidAddress", f"Gateway {key_of(obj)}: status.addresses type {kind!r} "
                                "is not supported (IPAddress, Hostname)")
        return out
    out = []
    for entry in ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ():
        if isinstance(entry, dict) and entry.get("ip"):
            out.append(str(entry["ip"]))
        if isinstance(entry, dict) and entry.get("hostname"):
            out.extend(_resolved(view, str(entry["hostname"]), f"{key_of(obj)} status.loadBalancer"))
    return out


def _resolved(view: View, hostname: str, what: str) -> tuple[str, ...]:
    name = normalize_name(hostname)
    check_hostnames([name], what)
    return view.resolved(name)


def _checked_ips(values: Iterable[str], what: str) -> tuple[str, ...]:
    out: list[str] = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except ValueError:
            raise SpecError("InvalidAddress", f"{what}: {value!r} is not an IP address") from None
    return tuple(dict.fromkeys(out))


def _ingress_hosts(ingress_spec: Obj, namespace: str) -> dict[str, set[str]]:
    """host -> backend Service keys from the rules' paths (rules without a host name no host)."""
    hosts: dict[str, set[str]] = {}
    for rule in ingress_spec.get("rules") or ():
        host = normalize_name(rule.get("host") or "")
        if not host:
            continue
        services = hosts.setdefault(host, set())
        for path in (rule.get("http") or {}).get("paths") or ():
            name = ((path.get("backend") or {}).get("service") or {}).get("name")
            if name:
                services.add(f"{namespace}/{name}")
    return hosts


def _sources(spec: GslbSpec, view: View) -> list[tuple[Obj | None, dict[str, set[str]]]]:
    """(the object whose load-balancer status gives the addresses, host -> backend Services)."""
    ns = spec.ref.namespace
    if spec.ingress is not None:
        # Hosts come from the spec itself, so they are served (NODATA) before the owned Ingress exists.
        return [(view.get("Ingress", f"{ns}/{spec.ref.name}"), _ingress_hosts(spec.ingress, ns))]
    ref = spec.resource
    assert ref is not None
    if ref.name:
        found = view.get(ref.kind, f"{ns}/{ref.name}")
        objs = [found] if found is not None else []
        wanted = f"{ref.kind} {ns}/{ref.name}"
    else:
        objs = sorted(view.select(ref.kind, ns, dict(ref.match_labels)), key=key_of)
        wanted = f"{ref.kind} in {ns} matching {dict(ref.match_labels)}"
    if not objs:
        raise SpecError("ResourceNotFound", f"spec.resourceRef: no {wanted}")
    if ref.kind == "Ingress":
        return [(obj, _ingress_hosts(obj.get("spec") or {}, ns)) for obj in objs]
    if ref.kind in ROUTE_KINDS:
        return [_route_source(view, obj) for obj in objs]
    out = []
    for obj in objs:
        names = ((obj.get("metadata") or {}).get("annotations") or {}).get(HOSTNAME, "")
        hosts = {normalize_name(h) for h in names.split(",") if h.strip()}
        if not hosts:
            raise SpecError("MissingHostname", f"Service {key_of(obj)} has no {HOSTNAME} annotation")
        out.append((obj, {h: {key_of(obj)} for h in hosts}))
    return out


def _route_source(view: View, route: Obj) -> tuple[Obj | None, dict[str, set[str]]]:
    """k8gb's rules for a Gateway API route: exactly one Gateway parent, whose status.addresses are
    the targets; hosts from spec.hostnames (TCPRoute/UDPRoute: the k8gb.io/hostname annotation);
    backend Services from the rules' backendRefs."""
    meta = route.get("metadata") or {}
    ns, kind = meta.get("namespace", ""), route.get("kind", "")
    spec = route.get("spec") or {}
    parents = parent_keys(route)
    if len(parents) != 1:
        raise SpecError("InvalidParentRefs", f"{kind} {key_of(route)} has {len(parents)} Gateway parents "
                        f"({', '.join(parents) or 'none'}); exactly one is needed to know its addresses")
    if kind in ("TCPRoute", "UDPRoute"):
        names = [h for h in ((meta.get("annotations") or {}).get(HOSTNAME) or "").split(",") if h.strip()]
        if not names:
            raise SpecError("MissingHostname", f"{kind} {key_of(route)} has no {HOSTNAME} annotation")
    else:
        names = [h for h in spec.get("hostnames") or () if h]
        if not names:
            raise SpecError("MissingHostname", f"{kind} {key_of(route)} has no spec.hostnames")
    services = {f"{ref.get('namespace') or ns}/{ref['name']}"
                for rule in spec.get("rules") or () for ref in rule.get("backendRefs") or ()
                if ref.get("name") and not ref.get("group") and (ref.get("kind") or "Service") == "Service"}
    return view.get("Gateway", parents[0]), {normalize_name(h): set(services) for h in names}


def evaluate(spec: GslbSpec, view: View) -> tuple[HostState, ...]:
    """Every host of the Gslb with its health and this cluster's addresses, sorted by host.

    Addresses, in k8gb's order of precedence: the exposed-hostnames annotation (resolved), the
    exposed-ip-addresses annotation, the load-balancer status. Hostnames that have not resolved yet
    give no address (NODATA), never the status's."""
    if spec.exposed_hostnames:
        exposed = tuple(dict.fromkeys(ip for h in spec.exposed_hostnames for ip in view.resolved(h)))
    else:
        exposed = _checked_ips(spec.exposed_ips, "annotation k8gb.io/exposed-ip-addresses")
    services: dict[str, set[str]] = {}
    targets: dict[str, list[str]] = {}
    for obj, hosts in _sources(spec, view):
        addresses = exposed if exposed or spec.exposed_hostnames else _checked_ips(lb_addresses(view, obj),
                                                                                   "status.loadBalancer")
        for host, svcs in hosts.items():
            services.setdefault(host, set()).update(svcs)
            targets.setdefault(host, []).extend(addresses)
    health = {key: service_health(view, key) for svcs in services.values() for key in svcs}
    return tuple(
        HostState(host, tuple(sorted(svcs)), combine((health[k] for k in sorted(svcs)), spec.policy),
                  tuple(dict.fromkeys(targets[host])))
        for host, svcs in sorted(services.items())
    )
