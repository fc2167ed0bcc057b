"""kube-apiserver away for 30 s: DNS keeps answering the last good state, and the backend picks up
changes after the API returns without a restart. Uses a control plane of its own (its apiserver is
stopped), so the shared plane's other tests are not affected."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.proc import sample
from lab.sidecar import DnsStack
from tests.test_sources_services import ALPHA

pytestmark = pytest.mark.controlplane
OUTAGE_SECONDS = 30


def test_answers_survive_an_apiserver_outage_and_changes_after_it_show_up(
    control_plane_factory: Callable[..., ControlPlane], dns_stack_factory: Callable[..., DnsStack]
) -> None:
    plane = control_plane_factory("outage")
    stack = dns_stack_factory(plane)
    plane.apply(f"""
apiVersion: v1
kind: Service
metadata:
  name: steady
  namespace: default
  annotations: {{{ALPHA}hostname: steady.foowidgets.k8s}}
spec: {{type: LoadBalancer, ports: [{{port: 80}}]}}
""")
    set_load_balancer(plane.api_client(), "Service", "default", "steady", ["172.18.200.101"])
    stack.wait_answer("steady.foowidgets.k8s", ["172.18.200.101"])
    pid = stack.backend.process.pid

    plane.stop_apiserver()
    try:
        seen = sample(lambda: (stack.dig("steady.foowidgets.k8s").addresses, stack.backend.get("/readyz")[0]),
                      OUTAGE_SECONDS, 1)
    finally:
        plane.start_apiserver()
    assert len(seen) >= 10
    assert all(a == ["172.18.200.101"] for a, _ in seen), seen
    # still ready: pulling the pod would turn stale answers into none
    assert {r for _, r in seen} == {200}, seen
    assert stack.dig("missing.foowidgets.k8s").rcode == "NXDOMAIN"

    set_load_balancer(plane.api_client(), "Service", "default", "steady", ["172.18.200.102"])
    stack.wait_answer("steady.foowidgets.k8s", ["172.18.200.102"], timeout=60)
    assert stack.backend.process.pid == pid and stack.backend.process.alive()
    plane.kubectl("delete", "service", "steady")
    stack.wait_answer("steady.foowidgets.k8s", "NXDOMAIN")
