"""A Gslb's status (k8gb's fields plus a Ready condition) and the Events a change of it deserves.

Pure functions: the manager compares `desired_status` with what the object already says and writes
only a difference, so an idle cluster causes no API writes at all.
"""

from __future__ import annotations

from typing import Any

from backend.gslb.engine import GslbResult, Serve, served
from backend.gslb.health import HEALTHY
from backend.gslb.strategy import answers
from backend.kube import kubeapi
from backend.model import Obj, Target

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


def probe_condition(result: GslbResult) -> tuple[str, str, str] | None:
    """(status, reason, message) of the Probed condition; None for a Gslb without probe annotations."""
    spec = result.spec
    if spec is None or (spec.probe is None and not spec.probe_error):
        return None
    if spec.probe_error:
        return "False", "InvalidProbe", f"{spec.probe_error}; answering by endpoint health alone"
    p = spec.probe
    assert p is not None
    return ("True", "Probing", f"{p.url('{address}')} every {p.interval:g}s (timeout {p.timeout:g}s); "
            f"{p.failures} consecutive results withdraw or restore a target")


def _condition(type_: str, state: tuple[str, str, str], generation: Any, current: Obj | None) -> Obj:
    """One condition; lastTransitionTime moves only when its status does."""
    status_, reason, message = state
    old = next((c for c in (current or {}).get("conditions") or () if c.get("type") == type_), None)
    since = old["lastTransitionTime"] if old and old.get("status") == status_ else kubeapi.timestamp()
    out = {"type": type_, "status": status_, "reason": reason, "message": message,
           "lastTransitionTime": since}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


Peers = dict[str, tuple[Target, ...]]  # host -> other clusters' healthy targets (Store peer/<geotag>)


def healthy_records(
    result: GslbResult, geotag: str, peers: Peers, serve: Serve | None = None
) -> dict[str, list[str]]:
    """k8gb's healthyRecords: what this cluster answers for the host, across clusters. Its own targets
    count while their endpoints are ready and its probes pass (`serve`); `peers` hold only the other
    clusters' targets its probes let through. Failover narrows it to the primary's targets while it has
    any; the other strategies pick among all of them per query."""
    out: dict[str, list[str]] = {}
    for h in result.hosts:
        targets = (*(Target(ip, geotag) for ip in served(h, serve)), *peers.get(h.host, ()))
        if targets and result.spec is not None and result.spec.strategy.type == "failover":
            targets = answers(result.spec.strategy, targets).variants[0]
        if targets:
            out[h.host] = [t.value for t in targets]
    return out


def desired_status(
    result: GslbResult, geotag: str, current: Obj | None = None, peers: Peers | None = None,
    serve: Serve | None = None,
) -> Obj:
    """k8gb's status fields, then conditions; lastTransitionTime moves only when the status does."""
    hosts = result.hosts
    exposed = sorted({t for h in hosts for t in h.targets})
    status: Obj = {
        "geoTag": geotag,
        "hosts": ", ".join(h.host for h in hosts),
        "serviceHealth": {h.host: h.health for h in hosts},
        "healthyRecords": healthy_records(result, geotag, peers or {}, serve),
        "loadBalancer": {"exposedIps": exposed},
        "servers": [
            {
                "host": h.host,
                "services": [{"namespace": s.split("/")[0], "name": s.split("/")[1]} for s in h.services],
            }
            for h in hosts
        ],
    }
    generation = (result.obj.get("metadata") or {}).get("generation")
    status["conditions"] = [_condition("Ready", ready_condition(result), generation, current)]
    probed = probe_condition(result)
    if probed is not None:
        status["conditions"].append(_condition("Probed", probed, generation, current))
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
    olds = {c.get("type"): c for c in (current or {}).get("conditions") or ()}
    new = desired["conditions"][0]
    if new["status"] == "False" and new["reason"] not in (*TRANSIENT, olds.get("Ready", {}).get("reason")):
        out.append(("Warning", new["reason"], new["message"]))
    for probed in desired["conditions"][1:]:  # a broken probe annotation, each time it changes
        old = olds.get("Probed", {})
        was = (old.get("status"), old.get("message"))
        if probed["status"] == "False" and was != ("False", probed["message"]):
            out.append(("Warning", probed["reason"], probed["message"]))
    return out
