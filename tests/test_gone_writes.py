"""The leader's write to an object that is gone (the API answers 404) is dropped: no retry, no warning
line, counted; what comes back under the name gets its write from its own watch event.

The controller runs in this process against the real apiserver, on the backend's own informers, GSLB
engine and EventRecorder. A watch that lags behind the API is what makes such a write: here one of
the informers is stopped (it keeps what it held, as while the API is away) while the object is
deleted and a change asks for a write to it; started again, it resumes its watch and sees what
happened meanwhile.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backend import metrics
from backend.config import GslbZone, Settings
from backend.controller import objects
from backend.controller.manager import Controller
from backend.gslb.engine import GslbEngine
from backend.kube.events import EventRecorder
from backend.kube.informer import (
    ENDPOINTSLICES,
    GSLBS,
    GSLBS_IO,
    INGRESSES,
    SERVICES,
    ZONEDELEGATIONS,
    Informer,
    Resource,
)
from backend.model import Endpoint, Store, Target, peer_key
from lab import demo
from lab.kube import ControlPlane
from tests.test_k8gb_objects import zone_delegation

pytestmark = pytest.mark.controlplane
ZONE = "gb.foowidgets.k8s"
NAMESERVERS = [{"address": "10.9.53.1", "name": "gslb-ns-us-buf-gb.foowidgets.k8s"}]
MOVED = [{"address": "10.9.53.2", "name": "gslb-ns-us-buf-gb.foowidgets.k8s"}]
LABEL = "coredns-gslb.test/gone-writes"


class Leader:
    """A Controller on real informers, leading (its Lease in the test's namespace)."""

    def __init__(self, plane: ControlPlane, namespace: str) -> None:
        self.api = plane.api_client()
        self.label = f"{LABEL}={namespace}"  # the ZoneDelegations it writes (they are cluster-wide)
        settings = Settings(gslb_zones=(GslbZone(ZONE, "foowidgets.k8s"),), cluster_geotag="us-buf",
                            namespace=namespace, identity=f"test-{secrets.token_hex(3)}")
        self.informers = {r: Informer(self.api, r, namespace=namespace if r.namespaced else None,
                                      label_selector="" if r.namespaced else self.label)
                          for r in (GSLBS, GSLBS_IO, INGRESSES, SERVICES, ENDPOINTSLICES, ZONEDELEGATIONS)}
        self.store = Store()
        held = self.informers
        engine = GslbEngine(self.store, settings, [held[GSLBS], held[GSLBS_IO]], held[INGRESSES],
                            held[SERVICES], held[ENDPOINTSLICES])
        self.recorder = EventRecorder(self.api, on_dropped=metrics.write_dropped)
        self.controller = Controller(self.api, settings, engine, held[INGRESSES], self.recorder)
        self.nameservers = NAMESERVERS  # what the ZoneDelegations' dnsServers should be
        self.controller.write_delegation_status(held[ZONEDELEGATIONS], lambda _obj: self.nameservers)
        for informer in self.informers.values():
            informer.start()
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.recorder.stop()
        for informer in self.informers.values():
            informer.stop()
        self.api.close()


@pytest.fixture
def leader(control_plane: ControlPlane, namespace: str) -> Iterator[Leader]:
    demo.install_crds(control_plane)
    running = Leader(control_plane, namespace)
    try:
        yield running
    finally:
        running.stop()


def gone(what: str) -> float:
    return metrics.WRITES_DROPPED.labels(what, "gone")._value.get()


def get(plane: ControlPlane, *args: str) -> dict[str, Any] | None:
    out = plane.kubectl("get", *args, "-o", "json", "--ignore-not-found")
    return json.loads(out) if out.strip() else None


def dns_servers(plane: ControlPlane, name: str) -> list[dict[str, str]] | None:
    return ((get(plane, "zonedelegation", name) or {}).get("status") or {}).get("dnsServers")


def warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and name in r.getMessage()]


def write_to_deleted(plane: ControlPlane, leader: Leader, lagging: Resource, what: str,
                     delete: tuple[str, ...], change: Callable[[], None]) -> None:
    """With `lagging`'s informer stopped, delete an object and make a change that asks for `what` to be
    written to it; wait until the leader has given that write up as gone (each further change asks
    again: the Gslb's own status write does, so the count may grow by more than one)."""
    before = gone(what)
    leader.informers[lagging].stop()
    plane.kubectl("delete", *delete, "--wait=true")
    change()
    plane.wait_for(lambda: gone(what) > before, timeout=30,
                   what=f"the leader giving up its {what} write to the deleted {' '.join(delete)} as gone")
    leader.informers[lagging].start()


def test_a_write_to_a_gone_object_is_dropped_and_its_return_written(
        control_plane: ControlPlane, namespace: str, leader: Leader,
        caplog: pytest.LogCaptureFixture) -> None:
    plane, tag = control_plane, secrets.token_hex(3)
    caplog.set_level(logging.DEBUG, logger="backend")

    # a ZoneDelegation's status: the nameservers move (a peer's targets change) while it is deleted
    zd = f"gone-{tag}"
    delegation = json.loads(zone_delegation(zd, f"{tag}.{ZONE}"))
    delegation["metadata"]["labels"] = {LABEL: namespace}
    plane.apply(json.dumps(delegation))
    try:
        plane.wait_for(lambda: dns_servers(plane, zd) == NAMESERVERS, timeout=30,
                       what=f"the leader writing ZoneDelegation {zd}'s dnsServers")

        def move() -> None:
            leader.nameservers = MOVED
            peer = [Endpoint(f"x.{ZONE}", "A", (Target("10.9.0.2", "us-nyc"),))]
            leader.store.replace(peer_key("us-nyc"), peer)

        write_to_deleted(plane, leader, ZONEDELEGATIONS, "zd", ("zonedelegation", zd), move)
        assert get(plane, "zonedelegation", zd) is None
        plane.apply(json.dumps(delegation))
        plane.wait_for(lambda: dns_servers(plane, zd) == MOVED, timeout=30,
                       what=f"ZoneDelegation {zd} made again written")
    finally:
        plane.kubectl("delete", "zonedelegation", zd, "--ignore-not-found")

    # the Ingress a Gslb owns: its host changes while the Ingress is deleted
    owner = f"owner-{tag}"
    rr = {"type": "roundRobin"}
    plane.apply(demo.gslb(namespace, owner, rr, host=f"a-{tag}.{ZONE}", service="web"))
    plane.wait_for(lambda: leader.informers[INGRESSES].get(f"{namespace}/{owner}") is not None,
                   what=f"the leader creating Gslb {owner}'s Ingress", timeout=30)
    write_to_deleted(plane, leader, INGRESSES, "ingress", ("ingress", owner, "-n", namespace),
                     lambda: plane.apply(demo.gslb(namespace, owner, rr, host=f"b-{tag}.{ZONE}",
                                                   service="web")))

    def hosts() -> list[str]:
        ingress = get(plane, "ingress", owner, "-n", namespace) or {"spec": {"rules": []}}
        return [rule["host"] for rule in ingress["spec"]["rules"]]

    # the Ingress's deletion, seen once its watch resumes, is what makes it again, with the new host
    plane.wait_for(lambda: hosts() == [f"b-{tag}.{ZONE}"], timeout=30,
                   what=f"Gslb {owner}'s Ingress made again with host b-{tag}.{ZONE}")

    # the Gslb an annotated Ingress asks for: the annotation changes while the Gslb is deleted
    annotated = f"annotated-{tag}"
    made = ("gslbs.k8gb.absa.oss", annotated, "-n", namespace)
    plane.apply(demo.ingress(namespace, annotated, f"c-{tag}.{ZONE}", "web",
                             {objects.STRATEGY: "roundRobin"}))
    plane.wait_for(lambda: leader.informers[GSLBS].get(f"{namespace}/{annotated}") is not None,
                   what=f"the leader creating the Gslb for Ingress {annotated}", timeout=30)

    def annotate(*notes: str) -> None:
        plane.kubectl("annotate", "ingress", annotated, "-n", namespace, "--overwrite", *notes)

    write_to_deleted(plane, leader, GSLBS, "gslb", made,
                     lambda: annotate(f"{objects.STRATEGY}=failover", f"{objects.PRIMARY_GEOTAG}=us-buf"))
    assert get(plane, *made) is None, "no retry put it back"
    annotate(f"{objects.DNS_TTL}=60")
    plane.wait_for(lambda: (get(plane, *made) or {"spec": {}})["spec"].get("strategy", {})
                   .get("dnsTtlSeconds") == 60, timeout=30,
                   what=f"the Gslb for Ingress {annotated} made again on its next change")

    for name in (zd, owner, annotated):
        assert not warnings(caplog, name), warnings(caplog, name)
