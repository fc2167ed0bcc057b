"""A Gslb's status (k8gb's fields plus a Ready condition) and the Events a change of it deserves.

Pure functions: the manager compares `desired_status` with what the object already says and writes
only a difference, so an idle cluster causes no API writes at all.
"""

from __future__ import annotations

from typing import Any

from backend.gslb.engine import GslbResult
from backend.gslb.health import HEALTHY
from backend.gslb.strategy import plan
from backend.model import Target
from backend.sources import kubeapi

Obj = dict[str, Any]
Event = tuple[str, str, str]  # (Normal|Warning, reason, message)
TRANSIENT = ("Unhealthy", "NoAddress")  # Ready=False states of a correct Gslb: no Warning of their own


def ready_condition(result: GslbResult) -> tuple[str, str, str]:
    """(status, reason, message) of the Ready condition."""
    if result.error is not None:
        return "False", result.error.reason, result.error.message
    if not result.hosts:
        return "False", "NoHosts", "no host names found in the Gslb's Ingress rules"
    if result.outside:
        return "False", "HostOutsideZones", f"not in any served GSLB zone: {', '.join(result.outside)}"
    sick = [f"{h.host} is {h.health}" for h in result.hosts if not h.healthy]
    if sick:
        return "False", "Unhealthy", "; ".join(sick)
    if not all(h.targets for h in result.hosts):
        # e.g. the ingress controller has not announced an address yet, or announced only a hostname
        return "False", "NoAddress", ("no load-balancer IP address (status.loadBalancer.ingress[].ip, or the "
                                      "Gateway's status.addresses) yet")
    return "True", "Healthy", f"{len(result.hosts)} host(s) healthy and served"


Peers = dict[str, tuple[Target, ...]]  # host -> other clusters' healthy targets (Store keys peer/<geotag>)


def healthy_records(result: GslbResult, geotag: str, peers: Peers) -> dict[str, list[str]]:
    """k8gb's healthyRecords: what the host resolves to across clusters. Failover narrows it to the
    primary's targets while it has any; the other strategies pick among all of them per query."""
    out: dict[str, list[str]] = {}
    for h in result.hosts:
        targets = (*(Target(ip, geotag) for ip in h.targets if h.healthy), *peers.get(h.host, ()))
        if targets and result.spec is not None and result.spec.strategy.type == "failover":
            targets = plan(result.spec.strategy, targets).variants[0]
        if targets:
            out[h.host] = [t.value for t in targets]
    return out


def desired_status(
    result: GslbResult, geotag: str, current: Obj | None = None, peers: Peers | None = None
) -> Obj:
    """k8gb's status fields, then conditions; lastTransitionTime moves only when the status does."""
    hosts = result.hosts
    exposed = sorted({t for h in hosts for t in h.targets})
    status: Obj = {
        "geoTag": geotag,
        "hosts": ", ".join(h.host for h in hosts),
        "serviceHealth": {h.host: h.health for h in hosts},
        "healthyRecords": healthy_records(result, geotag, peers or {}),
        "loadBalancer": {"exposedIps": exposed},
        "servers": [
            {
                "host": h.host,
                "services": [{"namespace": s.split("/")[0], "name": s.split("/")[1]} for s in h.services],
            }
            for h in hosts
        ],
    }
    state, reason, message = ready_condition(result)
    generation = (result.obj.get("metadata") or {}).get("generation")
    old = next((c for c in (current or {}).get("conditions") or () if c.get("type") == "Ready"), None)
    since = old["lastTransitionTime"] if old and old.get("status") == state else kubeapi.timestamp()
    ready = {
        "type": "Ready",
        "status": state,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    }
    if generation is not None:
        ready["observedGeneration"] = generation
    status["conditions"] = [ready]
    return status


def events(current: Obj | None, desired: Obj) -> list[Event]:
    """Health transitions per host, and a Warning each time the Gslb turns unusable for a new reason."""
    out: list[Event] = []
    before = (current or {}).get("serviceHealth") or {}
    for host, health in desired["serviceHealth"].items():
        was = before.get(host)
        if was == health or (was is None and health == HEALTHY):
            continue
        kind = "Normal" if health == HEALTHY else "Warning"
        out.append((kind, f"Host{health}", f"{host} is {health}" + (f" (was {was})" if was else "")))
    old = next((c for c in (current or {}).get("conditions") or () if c.get("type") == "Ready"), {})
    new = desired["conditions"][0]
    if new["status"] == "False" and new["reason"] not in (*TRANSIENT, old.get("reason")):
        out.append(("Warning", new["reason"], new["message"]))
    return out
