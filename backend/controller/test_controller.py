"""Pure pieces of the controller: status and its Events, owned objects, the work queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from backend import metrics
from backend.controller import objects, status
from backend.controller.manager import Controller, WorkQueue
from backend.gslb.engine import GslbResult
from backend.gslb.health import HostState
from backend.gslb.spec import SpecError, parse
from backend.kube import kubeapi
from backend.model import Target

GSLB = {
    "apiVersion": "k8gb.absa.oss/v1beta1",
    "kind": "Gslb",
    "metadata": {"name": "fe", "namespace": "demo", "uid": "u1", "generation": 3},
    "spec": {"ingress": {"rules": [{"host": "fe.gb.example"}]}, "strategy": {"type": "roundRobin"}},
}


def result(health: str = "Healthy", error: SpecError | None = None) -> GslbResult:
    hosts = () if error else (HostState("fe.gb.example", ("demo/nginx",), health, ("10.0.0.1",)),)
    return GslbResult("gslb/demo/fe", GSLB, None, hosts, error)


def test_status_is_stable_and_events_follow_transitions() -> None:
    healthy = status.desired_status(result(), "us-buf")
    assert healthy["serviceHealth"] == {"fe.gb.example": "Healthy"}
    assert healthy["healthyRecords"] == {"fe.gb.example": ["10.0.0.1"]}
    assert healthy["servers"] == [
        {"host": "fe.gb.example", "services": [{"namespace": "demo", "name": "nginx"}]}
    ]
    assert healthy["conditions"][0] | {"lastTransitionTime": ""} == {
        "type": "Ready",
        "status": "True",
        "reason": "Healthy",
        "message": "1 host(s) healthy and served",
        "lastTransitionTime": "",
        "observedGeneration": 3,
    }
    assert status.desired_status(result(), "us-buf", healthy) == healthy  # nothing to write
    assert status.events(None, healthy) == []

    sick = status.desired_status(result("Unhealthy"), "us-buf", healthy)
    assert sick["healthyRecords"] == {} and sick["conditions"][0]["reason"] == "Unhealthy"
    assert status.events(healthy, sick) == [
        ("Warning", "HostUnhealthy", "fe.gb.example is Unhealthy (was Healthy)")
    ]
    assert status.events(sick, status.desired_status(result(), "us-buf", sick)) == [
        ("Normal", "HostHealthy", "fe.gb.example is Healthy (was Unhealthy)")
    ]

    broken = status.desired_status(result(error=SpecError("UnknownStrategy", "nope")), "us-buf", healthy)
    assert broken["conditions"][0]["status"] == "False"
    assert status.events(healthy, broken) == [("Warning", "UnknownStrategy", "nope")]
    assert status.events(broken, broken) == []  # no repeat while the reason stays


def probed(template: str) -> GslbResult:
    obj = {**GSLB, "metadata": {**GSLB["metadata"], "annotations": {"coredns-gslb.io/probe": template}}}
    hosts = (HostState("fe.gb.example", ("demo/nginx",), "Healthy", ("10.0.0.1",)),)
    return GslbResult("gslb/demo/fe", obj, parse(obj), hosts, None)


def test_probe_annotations_show_as_the_probed_condition() -> None:
    plain = status.desired_status(result(), "us-buf")
    assert [c["type"] for c in plain["conditions"]] == ["Ready"], "no annotation, no condition"
    good = status.desired_status(probed("http://{address}:80/healthz"), "us-buf", plain)
    assert good["conditions"][1]["status"] == "True" and good["conditions"][1]["reason"] == "Probing"
    assert good["conditions"][1]["message"].startswith("http://{address}:80/healthz every 2s")
    assert status.events(plain, good) == []
    bad = status.desired_status(probed("http://example.com/"), "us-buf", good)
    assert bad["conditions"][0]["status"] == "True", "the Gslb stays Ready: it answers by endpoint health"
    probe = bad["conditions"][1]
    assert (probe["status"], probe["reason"]) == ("False", "InvalidProbe")
    assert "the host must be {address}" in probe["message"]
    assert status.events(good, bad) == [("Warning", "InvalidProbe", probe["message"])]
    assert status.events(bad, bad) == [], "once per message"
    other = status.desired_status(probed("tcp://{address}"), "us-buf", bad)
    assert [e[1] for e in status.events(bad, other)] == ["InvalidProbe"], "a new mistake is told again"


def test_owned_ingress_merge_keeps_foreign_fields() -> None:
    desired = objects.owned_ingress(GSLB)
    assert desired["metadata"]["ownerReferences"][0]["uid"] == "u1"
    live = {
        "metadata": {
            "name": "fe",
            "labels": {"team": "a"},
            "ownerReferences": desired["metadata"]["ownerReferences"],
        },
        "spec": {"rules": []},
        "status": {"loadBalancer": {"ingress": [{"ip": "10.0.0.1"}]}},
    }
    merged = objects.merge_into(live, desired)
    assert merged is not None and merged["spec"] == GSLB["spec"]["ingress"]
    assert merged["metadata"]["labels"] == {"team": "a", objects.MANAGED_BY: "gslb"}
    assert merged["status"]["loadBalancer"]["ingress"] == [{"ip": "10.0.0.1"}]
    assert objects.merge_into(merged, desired) is None
    assert objects.owned_by(merged, GSLB)
    stale = {"metadata": {"ownerReferences": [{**desired["metadata"]["ownerReferences"][0], "uid": "old"},
                                              {"kind": "Team", "uid": "t1"}]}, "spec": desired["spec"]}
    refs = objects.merge_into(stale, desired)["metadata"]["ownerReferences"]  # type: ignore[index]
    assert [r["uid"] for r in refs] == ["t1", "u1"]  # one controller: the Gslb that exists now


def test_gslb_for_annotated_ingress() -> None:
    ingress = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "shop",
            "namespace": "demo",
            "uid": "i1",
            "annotations": {
                objects.STRATEGY: "failover",
                objects.PRIMARY_GEOTAG: "us-buf",
                objects.DNS_TTL: "soon",
            },
        },
    }
    gslb, problems = objects.gslb_for_ingress(ingress, "k8gb.absa.oss/v1beta1")
    assert gslb["spec"]["strategy"] == {"type": "failover", "primaryGeoTag": "us-buf"}
    assert problems and "dns-ttl-seconds" in problems[0]
    live = {
        "spec": {
            "resourceRef": gslb["spec"]["resourceRef"],
            "strategy": {"type": "failover", "primaryGeoTag": "us-buf", "dnsTtlSeconds": 30},
        }
    }
    assert objects.gslb_needs_update(live, gslb) is None  # the apiserver's default TTL is not a change
    ingress["metadata"]["annotations"][objects.STRATEGY] = "roundRobin"
    updated = objects.gslb_needs_update(live, objects.gslb_for_ingress(ingress, "k8gb.absa.oss/v1beta1")[0])
    assert updated is not None and updated["spec"]["strategy"]["type"] == "roundRobin"


def test_work_queue_dedups_and_retries_with_backoff() -> None:
    q = WorkQueue()
    q.add(("status", "a"))
    q.add(("status", "a"))
    q.add(("gslb", "b"))
    assert [q.get(), q.get()] == [("status", "a"), ("gslb", "b")]
    q.retry(("status", "a"))
    start = time.monotonic()
    assert q.get() == ("status", "a") and time.monotonic() - start >= 0.15
    threading.Timer(0.05, q.close).start()
    assert q.get() is None


def test_healthy_records_span_clusters_and_follow_failover() -> None:
    strategy = {"type": "failover", "primaryGeoTag": "us-nyc"}
    spec = parse({**GSLB, "spec": {**GSLB["spec"], "strategy": strategy}})
    peers = {"fe.gb.example": (Target("10.9.0.1", "us-nyc"),)}
    failover = GslbResult("gslb/demo/fe", GSLB, spec, result().hosts, None)
    assert status.healthy_records(failover, "us-buf", peers) == {"fe.gb.example": ["10.9.0.1"]}
    assert status.healthy_records(failover, "us-buf", {}) == {"fe.gb.example": ["10.0.0.1"]}
    rr = GslbResult("gslb/demo/fe", GSLB, parse(GSLB), result("Unhealthy").hosts, None)
    assert status.healthy_records(rr, "us-buf", peers) == {"fe.gb.example": ["10.9.0.1"]}
    assert status.healthy_records(rr, "us-buf", {}) == {}


def test_healthy_records_follow_the_probe_verdict() -> None:
    """A target this cluster's probes withdraw is not among its healthyRecords, ready endpoints or not;
    failover then falls to the next cluster as the answers do."""
    strategy = {"type": "failover", "primaryGeoTag": "us-buf"}
    spec = parse({**GSLB, "spec": {**GSLB["spec"], "strategy": strategy}})
    two = (HostState("fe.gb.example", ("demo/nginx",), "Healthy", ("10.0.0.1", "10.0.0.2")),)
    failover = GslbResult("gslb/demo/fe", GSLB, spec, two, None)
    peers = {"fe.gb.example": (Target("10.9.0.1", "us-nyc"),)}
    withdrawn = {"10.0.0.1"}

    def serve(_host: str, address: str) -> bool:
        return address not in withdrawn

    assert status.healthy_records(failover, "us-buf", peers, serve) == {"fe.gb.example": ["10.0.0.2"]}
    withdrawn.add("10.0.0.2")
    assert status.healthy_records(failover, "us-buf", peers, serve) == {"fe.gb.example": ["10.9.0.1"]}
    assert status.desired_status(failover, "us-buf", None, {}, serve)["healthyRecords"] == {}


class _Engine:
    """What the Controller reads of the GSLB engine: its results."""

    def __init__(self) -> None:
        self.results: dict[str, GslbResult] = {}
        self.store = SimpleNamespace(subscribe_keys=lambda _fn: None)
        self.serve = None

    def subscribe(self, _fn: object) -> None:
        pass

    def synced(self) -> bool:
        return True


def test_a_write_answered_404_is_dropped_unless_its_object_was_made_anew(
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, key = _Engine(), "gslb/demo/fe"
    settings = SimpleNamespace(namespace="gslb", identity="t", cluster_geotag="us-buf")
    controller = Controller(None, settings, engine, SimpleNamespace(add_handler=lambda _fn: None),  # type: ignore[arg-type]
                            SimpleNamespace(record=lambda *_a: None))  # type: ignore[arg-type]
    delegations: dict[str, dict[str, Any]] = {"gb": {"metadata": {"name": "gb", "uid": "z1"}}}
    controller.write_delegation_status(SimpleNamespace(add_handler=lambda _fn: None,  # type: ignore[arg-type]
                                                       get=delegations.get), lambda _obj: [{"address": "x"}])
    anew: list[Callable[[], None]] = []

    def not_found(*_args: Any, **_kw: Any) -> None:
        while anew:  # deleted and created again while our write to the old one was on its way
            anew.pop()()
        raise kubeapi.KubeError(404, "not found")

    monkeypatch.setattr(kubeapi, "request", not_found)
    engine.results[key] = result()
    for item in (("status", key), ("zd", "gb")):
        gone = metrics.WRITES_DROPPED.labels(item[0], "gone")
        before = gone._value.get()
        assert controller._process(item), "done with: no retry"
        assert gone._value.get() == before + 1
        assert controller.queue._ready == [], "nothing queued again: the object is gone"

    made_anew = {
        "status": lambda: engine.results.update({key: GslbResult(
            key, {**GSLB, "metadata": {**GSLB["metadata"], "uid": "u2"}}, None, result().hosts, None)}),
        "zd": lambda: delegations.update({"gb": {"metadata": {"name": "gb", "uid": "z2"}}}),
    }
    for item in (("status", key), ("zd", "gb")):
        gone = metrics.WRITES_DROPPED.labels(item[0], "gone")
        before = gone._value.get()
        anew.append(made_anew[item[0]])
        assert controller._process(item)
        assert gone._value.get() == before, "not counted as gone"
        assert controller.queue.get() == item, "the new object's write is next"
