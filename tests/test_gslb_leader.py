"""Two replicas on one cluster: both answer DNS, one holds the Lease and writes; when it stops, the
other takes over the writes (status follows health again) without a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from lab import demo
from lab.kube import ControlPlane
from lab.proc import sample
from lab.sidecar import Backend, DnsStack

pytestmark = pytest.mark.controlplane

ZONE = "gb.foowidgets.k8s"


def holder(plane: ControlPlane, namespace: str) -> str:
    out = plane.kubectl("get", "lease", "coredns-gslb", "-n", namespace, "-o", "json", check=False)
    return (json.loads(out).get("spec") or {}).get("holderIdentity", "") if out else ""


def leads(stack: DnsStack, identity: str) -> bool:
    return f"leader: {identity} now holds" in stack.backend.process.log.read_text()


def health(plane: ControlPlane, namespace: str, name: str = "web") -> dict[str, str]:
    obj = json.loads(plane.kubectl("get", "gslbs.k8gb.absa.oss", name, "-n", namespace, "-o", "json"))
    return (obj.get("status") or {}).get("serviceHealth") or {}


def test_one_replica_writes_and_the_other_takes_over(
    control_plane: ControlPlane, namespace: str, dns_stack_factory: Callable[..., DnsStack]
) -> None:
    plane = control_plane
    demo.install_crds(plane)
    host = f"web-{namespace}.{ZONE}"
    plane.apply(demo.app(namespace, "web"))
    plane.apply(demo.gslb(namespace, "web", {"type": "roundRobin"}, host=host, service="web"))
    flags = demo.backend_flags("us-buf", "--namespace", namespace)  # the Lease lives in the test's namespace
    stacks = [dns_stack_factory(plane, zones=(ZONE,), flags=flags) for _ in range(2)]

    plane.wait_for(lambda: holder(plane, namespace), what="a Lease holder", timeout=60)
    first = holder(plane, namespace)
    leader, follower = sorted(stacks, key=lambda s: not leads(s, first))
    assert leads(leader, first) and not leads(follower, first)

    demo.announce_ingress(plane, namespace, "web", ["10.4.0.1"])
    for stack in stacks:  # every replica serves DNS
        plane.wait_for(lambda s=stack: s.dig(host).values("A") == ["10.4.0.1"], what="answer", timeout=60)
    plane.wait_for(lambda: health(plane, namespace) == {host: "Healthy"}, what="status Healthy", timeout=60)

    leader.stop()  # a graceful stop releases the Lease: no waiting for it to expire
    plane.wait_for(lambda: holder(plane, namespace) not in ("", first), what="a new Lease holder", timeout=60)
    assert leads(follower, holder(plane, namespace))

    plane.kubectl("scale", "deploy", "web", "-n", namespace, "--replicas=0")
    plane.wait_for(
        lambda: health(plane, namespace) == {host: "Unhealthy"}, what="status from the new leader", timeout=60
    )
    assert follower.dig(host).values("A") == []


def test_a_crashed_leaders_lease_is_taken_over_once_it_expires(
    control_plane: ControlPlane, namespace: str, backend_factory: Callable[..., Backend]
) -> None:
    """A holder that died without releasing: its Lease is taken only after it stops being renewed."""
    plane = control_plane
    demo.install_crds(plane)
    plane.apply(
        json.dumps(
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "coredns-gslb", "namespace": namespace},
                "spec": {
                    "holderIdentity": "crashed-replica",
                    "leaseDurationSeconds": 3,
                    "leaseTransitions": 4,
                    "renewTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                },
            }
        )
    )
    backend = backend_factory(plane, *demo.backend_flags("us-buf", "--namespace", namespace))
    plane.wait_for(lambda: holder(plane, namespace) != "crashed-replica", what="the takeover", timeout=60)
    lease = json.loads(plane.kubectl("get", "lease", "coredns-gslb", "-n", namespace, "-o", "json"))
    assert lease["spec"]["leaseTransitions"] == 5
    assert f"leader: {holder(plane, namespace)} now holds" in backend.process.log.read_text()


def test_gslb_survives_an_apiserver_outage_and_the_writes_resume(
    control_plane_factory: Callable[..., ControlPlane], dns_stack_factory: Callable[..., DnsStack]
) -> None:
    """During the outage the last answers keep coming and the leader steps down (it cannot renew);
    afterwards it leads again and health changes reach DNS and the status. Uses test_outage's plane."""
    plane = control_plane_factory("outage")
    demo.install_crds(plane)
    namespace, host = "gslb-outage", f"steady.{ZONE}"
    plane.apply(demo.app(namespace, "steady"))
    plane.apply(demo.gslb(namespace, "steady", {"type": "roundRobin"}, host=host, service="steady"))
    flags = demo.backend_flags("us-buf", "--namespace", namespace)
    stack = dns_stack_factory(plane, zones=(ZONE,), flags=flags)
    try:
        demo.announce_ingress(plane, namespace, "steady", ["10.6.0.1"])
        plane.wait_for(lambda: stack.dig(host).values("A") == ["10.6.0.1"], what="answer", timeout=60)

        plane.stop_apiserver()
        try:
            # 14 s: longer than the 10 s renew deadline
            answers = sample(lambda: stack.dig(host).values("A"), 14, 1)
        finally:
            plane.start_apiserver()
        assert answers and all(a == ["10.6.0.1"] for a in answers), answers
        assert "stepping down" in stack.backend.process.log.read_text()

        plane.kubectl("scale", "deploy", "steady", "-n", namespace, "--replicas=0")
        # the controller-manager's watches come back with client-go's backoff (up to 30 s between
        # tries), so its part gets a bound of its own: in one CI run it wrote the ReplicaSet 27 s after
        # the scale, and NODATA had not come 60 s after it
        plane.wait_for(lambda: not plane.ready_addresses(namespace, "steady"),
                       what="the controller-manager emptying steady's EndpointSlice after the outage",
                       timeout=120)
        plane.wait_for(lambda: stack.dig(host).rcode == "NOERROR" and not stack.dig(host).answer,
                       what="NODATA once the EndpointSlice has no ready endpoint", timeout=30)
        plane.wait_for(lambda: health(plane, namespace, "steady") == {host: "Unhealthy"},
                       what="status written by the re-elected leader", timeout=60)
        assert stack.backend.process.log.read_text().count("now holds") >= 2
    finally:
        plane.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")
