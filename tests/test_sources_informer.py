"""The shared Informer against the real apiserver: paging, 410 relist with DELETED for what vanished,
a CRD that appears after start, and stop() waking a blocked watch."""

from __future__ import annotations

import threading

import pytest

from backend.kube.informer import SERVICES, Informer, Resource
from backend.kube.kubeapi import api_client
from lab.kube import ControlPlane

pytestmark = pytest.mark.controlplane


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, type_: str, obj: dict, _old: dict | None) -> None:
        with self.lock:
            self.events.append((type_, obj["metadata"]["name"]))

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


def test_paged_list_then_relist_after_410_reports_what_vanished(
    control_plane: ControlPlane, namespace: str
) -> None:
    control_plane.apply(services(namespace, *(f"s{i}" for i in range(7))))
    inf = Informer(api_client(str(control_plane.kubeconfig)), SERVICES, namespace=namespace, page_size=2)
    rec = Recorder()
    inf.add_handler(rec)
    inf.start()
    try:
        assert inf.synced.wait(30), "the first (paged) list"
        assert sorted(inf.objects) == sorted(f"{namespace}/s{i}" for i in range(7))
        inf.stop()
        control_plane.kubectl("delete", "service", "s0", "-n", namespace)
        control_plane.apply(services(namespace, "late"))
        inf.resource_version = "1"  # as after a long partition: the API has compacted past it
        inf.start()
        control_plane.wait_for(lambda: rec.seen("DELETED", "s0") and rec.seen("ADDED", "late"),
                               what="relist after 410 Gone", timeout=30)
        assert f"{namespace}/s0" not in inf.objects and f"{namespace}/late" in inf.objects
        assert rec.events.count(("ADDED", "s1")) == 1  # unchanged objects are not re-announced
    finally:
        inf.stop()


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
