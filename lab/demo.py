"""GSLB objects for the integration tests and bench/failover.py: the Gslb CRDs, the chapter's
manifests as the lab keeps them (lab/manifests/: namespace demo with Deployment and Service
nginx, Gslb gslb-failover-buf, unchanged) and small Deployment + Service pairs of any name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from lab.lbpool import set_load_balancer

ROOT = Path(__file__).resolve().parents[1]
CRDS = (ROOT / "k8s" / "crds" / "gslb.k8gb.absa.oss.yaml", ROOT / "k8s" / "crds" / "gslb.k8gb.io.yaml",
        ROOT / "k8s" / "crds" / "zonedelegation.k8gb.io.yaml")
CHAPTER_APP = ROOT / "lab" / "manifests" / "demo.yaml"
CHAPTER_GSLB = ROOT / "lab" / "manifests" / "gslb-failover-buf.yaml"
HOST = "fe.gb.foowidgets.k8s"


class Plane(Protocol):
    """What is needed of lab.kube.ControlPlane."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> str: ...

    def apply(self, yaml_text: str, *args: str) -> str: ...

    def wait_for(self, check: Any, *, what: str, timeout: float = 60.0) -> None: ...

    def api_client(self) -> Any: ...


def install_crds(plane: Plane) -> None:
    """Apply both Gslb CRDs and k8gb's ZoneDelegation and wait until the API serves them. Server-side,
    as tests/test_manifests.py dry-runs the same files on the shared plane: a client-side apply would
    leave a last-applied-configuration annotation its server-side apply then trips over."""
    for crd in CRDS:
        plane.apply(crd.read_text(), "--server-side")
    plane.kubectl(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/gslbs.k8gb.absa.oss",
        "crd/gslbs.k8gb.io", "crd/zonedelegations.k8gb.io",
    )


def app(namespace: str, name: str, replicas: int = 1) -> str:
    """A Deployment and a ClusterIP Service of one name (kwok makes its Pods Ready)."""
    labels = {"app": name}
    objs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [{"name": name, "image": "nginx", "ports": [{"containerPort": 80}]}]
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 80, "protocol": "TCP"}]},
        },
    ]
    return "\n---\n".join(json.dumps(o) for o in objs)


def backend_flags(geotag: str = "us-buf", *extra: str) -> list[str]:
    """`serve` flags for the chapter's load-balanced zone as seen from one cluster."""
    return [
        "--dns-zone",
        "gb.foowidgets.k8s",
        "--edge-dns-zone",
        "foowidgets.k8s",
        "--cluster-geo-tag",
        geotag,
        *extra,
    ]


def rules(host: str, service: str) -> list[dict[str, Any]]:
    """Ingress rules: `host` / -> `service`:80."""
    backend = {"service": {"name": service, "port": {"number": 80}}}
    return [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]


def gslb(namespace: str, name: str, strategy: dict[str, Any], *, host: str = "", service: str = "",
         resource_ref: dict[str, Any] | None = None, group: str = "k8gb.absa.oss") -> str:
    """A Gslb manifest: spec.ingress routing `host` to `service`, or spec.resourceRef."""
    spec: dict[str, Any] = {"strategy": strategy}
    if resource_ref is not None:
        spec["resourceRef"] = resource_ref
    else:
        spec["ingress"] = {"rules": rules(host, service)}
    return json.dumps({"apiVersion": f"{group}/v1beta1", "kind": "Gslb",
                       "metadata": {"name": name, "namespace": namespace}, "spec": spec})


def ingress(namespace: str, name: str, host: str, service: str, annotations: dict[str, str]) -> str:
    return json.dumps({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                       "metadata": {"name": name, "namespace": namespace, "annotations": annotations},
                       "spec": {"rules": rules(host, service)}})


def announce_ingress(plane: Plane, namespace: str, name: str, ips: list[str], timeout: float = 60) -> None:
    """Once the backend has created a Gslb's Ingress, fill its load-balancer status as an ingress
    controller would."""
    plane.wait_for(lambda: plane.kubectl("get", "ingress", name, "-n", namespace, "--ignore-not-found"),
                   what=f"Ingress {namespace}/{name}", timeout=timeout)
    with plane.api_client() as api:
        set_load_balancer(api, "Ingress", namespace, name, ips)
