"""The lab's gateway controller (run by lbpool.py): what a Gateway API implementation writes to status.

For the GatewayClasses whose spec.controllerName is CONTROLLER_NAME (and only for those): the class
gets Accepted; each Gateway of such a class gets an address (its spec.addresses if it asks for some,
else one from the lbpool's Service pool, as MetalLB gives the gateway's data plane) in
status.addresses and Accepted/Programmed; each route's status.parents gets, per parentRef to such a
Gateway, Accepted (a listener allows it and the hostnames intersect, with the rules the gateway
sources read: backend/sources/gateways.py) and ResolvedRefs (every backendRef Service exists).
Entries of other controllers are kept. Any change of any watched kind reconciles everything (lab
scale), and only differences are written, so an idle cluster gets no writes.
"""

from __future__ import annotations

import ipaddress
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from backend.kube import kubeapi
from backend.kube.informer import GATEWAY_GROUP, GATEWAYS, NAMESPACES, ROUTES, SERVICES, Resource
from backend.sources import gateways as gw_rules

CONTROLLER_NAME = "lab.coredns-gslb.io/lbpool"
GATEWAY_CLASSES = Resource(GATEWAY_GROUP, "v1", "gatewayclasses", "GatewayClass", namespaced=False)
KINDS = [GATEWAY_CLASSES, GATEWAYS, *ROUTES.values(), NAMESPACES, SERVICES]

Obj = dict[str, Any]


def _key(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def condition(type_: str, ok: bool, reason: str, message: str, generation: Any, old: list[Obj]) -> Obj:
    """A metav1.Condition; lastTransitionTime kept while the status stays the same."""
    status = "True" if ok else "False"
    prev = next((c for c in old if c.get("type") == type_), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else kubeapi.timestamp()
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "observedGeneration": generation or 0, "lastTransitionTime": since}


def _same(a: list[Obj], b: list[Obj]) -> bool:
    def strip(conds: list[Obj]) -> list[tuple[Any, ...]]:
        return [(c.get("type"), c.get("status"), c.get("reason"), c.get("observedGeneration")) for c in conds]

    return strip(a) == strip(b)


def address_entry(value: str) -> Obj:
    try:
        ipaddress.ip_address(value)
        return {"type": "IPAddress", "value": value}
    except ValueError:
        return {"type": "Hostname", "value": value}


def route_parent(route: Obj, ref: Obj, gw: Obj, services: set[str],
                 namespaces: Callable[[str], Obj | None], old: list[Obj]) -> Obj:
    """The status.parents entry this controller writes for one parentRef to one of its Gateways."""
    meta = route.get("metadata") or {}
    gen = meta.get("generation")
    allowed = [lis for lis in gw_rules.listeners_for(gw, ref, route)
               if gw_rules.allowed_by(gw, lis, route, namespaces)]
    hosts, _ = gw_rules.route_hosts(route)
    matched, tried = gw_rules.matched_hosts(allowed, hosts)
    if not allowed:
        accepted = condition("Accepted", False, "NotAllowedByListeners", "no listener allows this route",
                             gen, old)
    elif tried and not matched:
        accepted = condition("Accepted", False, "NoMatchingListenerHostname",
                             "no listener hostname matches the route's hostnames", gen, old)
    else:
        accepted = condition("Accepted", True, "Accepted", "accepted", gen, old)
    ns = meta.get("namespace", "")
    missing = sorted({f"{b.get('namespace') or ns}/{b.get('name')}"
                      for rule in (route.get("spec") or {}).get("rules") or ()
                      for b in rule.get("backendRefs") or ()
                      if (b.get("kind") or "Service") == "Service"} - services)
    resolved = condition("ResolvedRefs", not missing, "BackendNotFound" if missing else "ResolvedRefs",
                         f"missing Services: {', '.join(missing)}" if missing else "resolved", gen, old)
    return {"parentRef": dict(ref), "controllerName": CONTROLLER_NAME, "conditions": [accepted, resolved]}


class GatewayController:
    def __init__(self, api: Any, address_for: Callable[[str, list[str]], list[str]]) -> None:
        self.api = api
        self.address_for = address_for  # (key, current addresses) -> addresses, from the lbpool's pool
        self._dirty = threading.Event()

    def _list(self, res: Resource) -> list[Obj]:
        try:
            return kubeapi.request(self.api, "GET", res.path(), []).get("items") or []
        except kubeapi.KubeError as e:
            if e.status == 404:  # CRDs not installed (yet)
                return []
            raise

    def _status(self, res: Resource, obj: Obj, status: Obj) -> None:
        meta = obj["metadata"]
        path = res.path(meta.get("namespace"), meta["name"]) + "/status"
        kubeapi.request(self.api, "PATCH", path, body={"status": status},
                        content_type="application/merge-patch+json")

    def reconcile(self) -> None:
        classes = self._list(GATEWAY_CLASSES)
        ours = set()
        for gc in classes:
            if (gc.get("spec") or {}).get("controllerName") != CONTROLLER_NAME:
                continue
            ours.add(gc["metadata"]["name"])
            old = (gc.get("status") or {}).get("conditions") or []
            conds = [condition("Accepted", True, "Accepted", "handled by the lab's lbpool",
                               gc["metadata"].get("generation"), old)]
            if not _same(conds, old):
                self._status(GATEWAY_CLASSES, gc, {"conditions": conds})
        gateways: dict[str, Obj] = {}
        for gw in self._list(GATEWAYS):
            if (gw.get("spec") or {}).get("gatewayClassName") not in ours:
                continue
            gateways[_key(gw)] = gw
            self._gateway(gw)
        if not gateways:
            return
        namespaces = {ns["metadata"]["name"]: ns for ns in self._list(NAMESPACES)}
        services = {_key(s) for s in self._list(SERVICES)}
        for res in ROUTES.values():
            for route in self._list(res):
                self._route(res, route, gateways, services, namespaces)

    def _gateway(self, gw: Obj) -> None:
        status = gw.get("status") or {}
        current = [a.get("value", "") for a in status.get("addresses") or ()]
        wanted = [a.get("value", "") for a in (gw.get("spec") or {}).get("addresses") or () if a.get("value")]
        addresses = wanted or self.address_for(f"gateway:{_key(gw)}", current)
        old = status.get("conditions") or []
        gen = gw["metadata"].get("generation")
        conds = [condition("Accepted", True, "Accepted", "accepted by the lab's lbpool", gen, old),
                 condition("Programmed", bool(addresses), "Programmed" if addresses else "AddressNotAssigned",
                           "address assigned" if addresses else "the pool is exhausted", gen, old)]
        if addresses != current or not _same(conds, old):
            self._status(GATEWAYS, gw, {"addresses": [address_entry(a) for a in addresses],
                                                 "conditions": conds})
            print(f"gateway {_key(gw)} -> {', '.join(addresses)}", flush=True)

    def _route(self, res: Resource, route: Obj, gateways: dict[str, Obj], services: set[str],
               namespaces: dict[str, Obj]) -> None:
        ns = route["metadata"].get("namespace", "")
        old_parents = (route.get("status") or {}).get("parents") or []
        kept = [p for p in old_parents if p.get("controllerName") != CONTROLLER_NAME]
        mine = []
        for ref in (route.get("spec") or {}).get("parentRefs") or ():
            gw = gateways.get(f"{ref.get('namespace') or ns}/{ref.get('name', '')}")
            if gw is None or (ref.get("kind") or "Gateway") != "Gateway":
                continue
            old = next((p.get("conditions") or [] for p in old_parents
                        if p.get("controllerName") == CONTROLLER_NAME and p.get("parentRef") == ref), [])
            mine.append(route_parent(route, ref, gw, services, namespaces.get, old))
        old_mine = [p for p in old_parents if p.get("controllerName") == CONTROLLER_NAME]
        if [p["parentRef"] for p in mine] == [p.get("parentRef") for p in old_mine] and all(
            _same(a["conditions"], b.get("conditions") or []) for a, b in zip(mine, old_mine, strict=True)
        ):
            return
        self._status(res, route, {"parents": kept + mine})
        said = "; ".join(f"{p['parentRef'].get('name')} Accepted={p['conditions'][0]['status']}"
                         for p in mine)
        print(f"{res.kind.lower()} {_key(route)}: {said}", flush=True)

    # -- the loops -------------------------------------------------------------------------------

    def start(self) -> None:
        for res in KINDS:
            threading.Thread(target=self._watch, args=(res,), daemon=True, name=f"gw-{res.plural}").start()
        threading.Thread(target=self._run, daemon=True, name="gateway-controller").start()

    def _run(self) -> None:
        while True:
            self._dirty.wait()
            time.sleep(0.02)  # one pass for a burst of events
            self._dirty.clear()
            try:
                self.reconcile()
            except Exception as e:  # API away or a write conflict: try again shortly
                print(f"gateway controller: {e!r}; retrying", file=sys.stderr, flush=True)
                time.sleep(0.5)
                self._dirty.set()

    def _watch(self, res: Resource) -> None:
        """Any event of the kind marks the world dirty; a missing CRD is asked for again every 2 s."""
        while True:
            try:
                listed = kubeapi.request(self.api, "GET", res.path(), [("limit", 1)])
                self._dirty.set()
                rv = (listed.get("metadata") or {}).get("resourceVersion", "")
                query = [("watch", "true"), ("resourceVersion", rv), ("timeoutSeconds", 300)]
                resp = kubeapi.open_(self.api, "GET", res.path(), query, timeout=(10.0, 400.0))
                try:
                    if resp.status != 200:
                        raise kubeapi.error_of(resp)
                    for _event in kubeapi.json_lines(resp):
                        self._dirty.set()
                finally:
                    resp.release_conn()
            except kubeapi.KubeError as e:
                if e.status != 404:
                    print(f"watch {res}: {e}", file=sys.stderr, flush=True)
                time.sleep(2)
            except Exception as e:
                print(f"watch {res}: {e!r}", file=sys.stderr, flush=True)
                time.sleep(1)
