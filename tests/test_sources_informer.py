"""The shared Informer against the real apiserver: the streaming list (and the paged one where the API
refuses it), 410 relist with DELETED for what vanished, a CRD that appears after start, and stop()
waking a blocked watch."""

from __future__ import annotations

import secrets
import threading

import pytest

from backend.kube.informer import SERVICES, Informer, Resource
from backend.kube.kubeapi import api_client
from lab.kube import ControlPlane
from tests.conftest import ControlPlaneFactory

pytestmark = pytest.mark.controlplane


class Recorder:
    def __init__(self, inf: Informer | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.inf = inf
        self.while_unsynced = 0  # events delivered before the informer called itself synced

    def __call__(self, type_: str, obj: dict, _old: dict | None) -> None:
        with self.lock:
            self.events.append((type_, obj["metadata"]["name"]))
            if self.inf is not None and not self.inf.synced.is_set():
                self.while_unsynced += 1

    def seen(self, type_: str, name: str) -> bool:
        with self.lock:
            return (type_, name) in self.events


def services(namespace: str, *names: str) -> str:
    return "".join(f"""
---
apiVersion: v1
kind: Service
metadata: {{name: {n}, namespace: {namespace}}}
spec: {{ports: [{{port: 80}}]}}""" for n in names)


@pytest.fixture(scope="module")
def no_streaming_plane(control_plane_factory: ControlPlaneFactory) -> ControlPlane:
    """An apiserver that refuses streaming lists, as one with the WatchList feature off (or before 1.27)."""
    plane = control_plane_factory("no-watchlist")
    if "--feature-gates=WatchList=false" not in plane.apiserver.argv:
        plane.stop_apiserver()
        plane.apiserver.argv.append("--feature-gates=WatchList=false")
        plane.start_apiserver()
    return plane


@pytest.mark.parametrize("streaming", [True, False], ids=["streaming-list", "refused-so-paged"])
def test_list_then_relist_after_410_reports_what_vanished(
    streaming: bool, control_plane_factory: ControlPlaneFactory, request: pytest.FixtureRequest
) -> None:
    # planes whose apiserver may restart (the shared one's may not)
    plane = control_plane_factory("outage") if streaming else request.getfixturevalue("no_streaming_plane")
    namespace = f"relist-{secrets.token_hex(3)}"
    plane.kubectl("create", "namespace", namespace)
    plane.apply(services(namespace, *(f"s{i}" for i in range(7))))
    restarts: list[str] = []
    inf = Informer(api_client(str(plane.kubeconfig)), SERVICES, namespace=namespace, page_size=2,
                   on_restart=lambda _res, why: restarts.append(why))
    rec = Recorder(inf)
    inf.add_handler(rec)
    inf.start()
    try:
        assert inf.synced.wait(30), "the first list"
        assert sorted(inf.objects) == sorted(f"{namespace}/s{i}" for i in range(7))
        assert rec.while_unsynced == 7, "each object handed on as it arrived, before the list was whole"
        assert inf.stream_list is streaming, "streamed where the API serves it, paged where it refuses"
        inf.stop()
        plane.kubectl("delete", "service", "s0", "-n", namespace)
        plane.apply(services(namespace, "late"))
        # as after a long partition: the apiserver's watch cache starts anew, after the resourceVersion held
        plane.stop_apiserver()
        plane.start_apiserver()
        inf.start()  # resumes the watch from there: 410 Gone
        plane.wait_for(lambda: rec.seen("DELETED", "s0") and rec.seen("ADDED", "late"),
                       what="relist after 410 Gone", timeout=30)
        assert restarts == ["gone"], "the watch from the compacted resourceVersion got 410 Gone"
        assert f"{namespace}/s0" not in inf.objects and f"{namespace}/late" in inf.objects
        # unchanged objects not announced again; nothing applied before the relist was whole, then
        # what vanished first (applied as listed, "late" would come first: s0 would seem to outlive it)
        assert rec.events[7:] == [("DELETED", "s0"), ("ADDED", "late")]
        plane.apply(services(namespace, "after"))
        plane.wait_for(lambda: rec.seen("ADDED", "after"), what="the watch after the relist", timeout=30)
    finally:
        inf.stop()
        plane.kubectl("delete", "namespace", namespace, "--wait=false")


def test_a_crd_installed_after_start_counts_as_synced_empty_then_is_watched(
    control_plane: ControlPlane, namespace: str
) -> None:
    group = f"{namespace}.informer.test"
    res = Resource(group, "v1", "widgets", "Widget")
    inf = Informer(api_client(str(control_plane.kubeconfig)), res, backoff_cap=1.0)
    rec = Recorder()
    inf.add_handler(rec)
    inf.start()
    try:
        assert inf.synced.wait(30), "the first list (of a kind not installed yet)"
        assert not inf.objects
        control_plane.apply(f"""
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema: {{openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}}}
""")
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=30s")
        control_plane.apply(f"apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w1}}", "-n", namespace)
        control_plane.wait_for(lambda: rec.seen("ADDED", "w1"), what="the new kind watched", timeout=60)
        assert inf.get(f"{namespace}/w1")["kind"] == "Widget"
    finally:
        inf.stop()
        control_plane.kubectl("delete", "crd", f"widgets.{group}", "--ignore-not-found")


def test_stop_wakes_a_blocked_watch(control_plane: ControlPlane, namespace: str) -> None:
    inf = Informer(api_client(str(control_plane.kubeconfig)), SERVICES, namespace=namespace)
    rec = Recorder()
    inf.add_handler(rec)
    before = set(threading.enumerate())
    inf.start()
    ours = [t for t in threading.enumerate() if t not in before and t.name == "informer-services"]
    assert len(ours) == 1, "start() runs one watch thread"
    assert inf.synced.wait(30), "the first list"
    control_plane.apply(services(namespace, "blocked"))
    # an event delivered through the watch: the thread is back in the watch read, waiting for the next
    control_plane.wait_for(lambda: rec.seen("ADDED", "blocked"), what="the watch delivering ADDED blocked",
                           timeout=30)
    inf.stop(timeout=5)
    assert not ours[0].is_alive(), "stop() returned with the watch thread still blocked in its read"
