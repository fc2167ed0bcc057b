"""The EventRecorder against the real apiserver: repeats patch one Event's count, an API error never
reaches the caller."""

from __future__ import annotations

import pytest

from backend.kube.events import EventRecorder
from backend.kube.kubeapi import api_client
from backend.model import ObjectRef
from lab.kube import ControlPlane

pytestmark = pytest.mark.controlplane


def test_repeats_become_one_event_with_a_count(control_plane: ControlPlane, namespace: str) -> None:
    control_plane.kubectl("create", "service", "clusterip", "web", "--tcp=80:80", "-n", namespace)
    recorder = EventRecorder(api_client(str(control_plane.kubeconfig)))
    ref = ObjectRef("Service", namespace, "web")
    try:
        for _ in range(3):
            recorder.record(ref, "Warning", "InvalidTTL", "ttl 'soon' is not a duration")
        recorder.record(ref, "Normal", "Other", "a different event")
        assert recorder.flush(10)
    finally:
        recorder.stop()
    items = control_plane.request("GET", f"/api/v1/namespaces/{namespace}/events")["items"]
    events = {e["reason"]: e for e in items}
    assert events["InvalidTTL"]["count"] == 3 and events["InvalidTTL"]["type"] == "Warning"
    assert events["InvalidTTL"]["involvedObject"]["name"] == "web"
    assert events["Other"]["count"] == 1


def test_api_errors_stay_inside_the_recorder(control_plane: ControlPlane) -> None:
    recorder = EventRecorder(api_client(str(control_plane.kubeconfig)))
    try:
        recorder.record(ObjectRef("Service", "no-such-namespace-here", "x"), "Warning", "R", "m")
        assert recorder.flush(10)
    finally:
        recorder.stop()
