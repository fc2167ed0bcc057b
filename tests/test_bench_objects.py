"""bench/objects.py against the real apiserver: a Service created with a ClusterIP from
`free_cluster_ips` gets that address (no dynamic allocation), and one the apiserver picked is never
offered as free."""

from __future__ import annotations

import json

from bench.objects import Api, free_cluster_ips, pin_cluster_ips, service
from lab.kube import ControlPlane


def _cluster_ip(plane: ControlPlane, namespace: str, name: str) -> str:
    shown = json.loads(plane.kubectl("get", "service", name, "-n", namespace, "-o", "json"))
    return str(shown["spec"]["clusterIP"])


def test_a_service_keeps_the_free_cluster_ip_it_was_given(control_plane: ControlPlane,
                                                          namespace: str) -> None:
    api = Api(control_plane)
    api.create(service(namespace, "picked", ["192.0.2.1"]))
    picked = _cluster_ip(control_plane, namespace, "picked")

    free = free_cluster_ips(api, 3)
    assert len(set(free)) == 3 and picked not in free
    assert all(ip.startswith("10.111.255.") for ip in free)  # the top of the lab's 10.96.0.0/12
    api.create(service(namespace, "own", ["192.0.2.2"], cluster_ip=free[0]))
    assert _cluster_ip(control_plane, namespace, "own") == free[0]
    assert free[0] not in free_cluster_ips(api, 3)  # now an IPAddress names it

    api.delete(service(namespace, "own", []))
    control_plane.wait_for(lambda: free[0] in free_cluster_ips(api, 3),
                           what=f"ClusterIP {free[0]} released by the deleted Service")


def test_pinned_services_are_created_concurrently_with_the_addresses_given(control_plane: ControlPlane,
                                                                           namespace: str) -> None:
    api = Api(control_plane)
    services = [service(namespace, f"s-{k}", [f"192.0.2.{k + 1}"]) for k in range(6)]
    pin_cluster_ips(api, services)
    given = [svc["spec"]["clusterIP"] for svc in services]
    assert len(set(given)) == 6
    api.create_all(services, workers=6)
    assert [_cluster_ip(control_plane, namespace, f"s-{k}") for k in range(6)] == given
