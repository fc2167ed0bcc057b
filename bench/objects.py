"""Kubernetes objects for the benchmarks, and a fast way to create many of them in the real apiserver.

Every GSLB host is a Gslb (k8gb.absa.oss/v1beta1) whose spec.resourceRef names a LoadBalancer Service
carrying `k8gb.io/hostname`; its health comes from an EndpointSlice with one ready endpoint, written
as the endpointslice controller would (selector-less Services, so no Deployment or Pod is needed for
10,000 of them). The same Service may also carry ExternalDNS's hostname annotation.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab.kube import ControlPlane
from lab.lbpool import lb_ingress

Obj = dict[str, Any]
EXTERNAL_DNS_HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"
GSLB_HOSTNAME = "k8gb.io/hostname"
GSLB_API = "k8gb.absa.oss/v1beta1"


def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(ns: str, name: str, lb_ips: Sequence[str], *, hostname: str = "", gslb_host: str = "",
            selector: dict[str, str] | None = None) -> Obj:
    """A LoadBalancer Service (selector-less unless given one) whose status (set apart) holds `lb_ips`."""
    annotations = {}
    if hostname:
        annotations[EXTERNAL_DNS_HOSTNAME] = hostname
    if gslb_host:
        annotations[GSLB_HOSTNAME] = gslb_host
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            # 10,000 LoadBalancer Services would exhaust the NodePort range (2768 ports).
            "allocateLoadBalancerNodePorts": False,
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
            "ipFamilyPolicy": "SingleStack",
            "ipFamilies": ["IPv4"],
            **({"selector": selector} if selector else {}),
        },
        "status": {"loadBalancer": {"ingress": lb_ingress(lb_ips)}},
    }


def endpoint_slice(ns: str, svc: str, address: str, *, ready: bool = True) -> Obj:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-bench",
            "namespace": ns,
            "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "bench"},
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    }


def gslb(ns: str, name: str, svc: str, strategy: Obj) -> Obj:
    return {
        "apiVersion": GSLB_API,
        "kind": "Gslb",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"resourceRef": {"apiVersion": "v1", "kind": "Service", "name": svc}, "strategy": strategy},
    }


def dns_endpoint(ns: str, name: str, host: str, address: str) -> Obj:
    """ExternalDNS's DNSEndpoint with one A record."""
    return {
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"endpoints": [{"dnsName": host, "recordType": "A", "targets": [address]}]},
    }


def deployment(ns: str, name: str, labels: dict[str, str], replicas: int = 1) -> Obj:
    """A Deployment kwok runs (its Pods become Ready on the fake node)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": name, "image": "nginx",
                                                       "ports": [{"containerPort": 80}]}]}}},
    }


def collection(obj: Obj) -> str:
    """The API path that creates `obj`."""
    kind, ns = obj["kind"], obj["metadata"].get("namespace", "")
    group_version = obj["apiVersion"]
    plural = {"Namespace": "namespaces", "Service": "services", "EndpointSlice": "endpointslices",
              "Gslb": "gslbs", "DNSEndpoint": "dnsendpoints", "Deployment": "deployments"}[kind]
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    return f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"


def path(obj: Obj) -> str:
    return f"{collection(obj)}/{obj['metadata']['name']}"


class Api:
    """Keep-alive HTTPS to the apiserver, one connection per thread: 10,000s of small writes, quickly."""

    def __init__(self, plane: ControlPlane) -> None:
        self.host, _, port = plane.url.removeprefix("https://").rpartition(":")
        self.port = int(port)
        self.token = plane.pki.token
        self.ssl = ssl.create_default_context(cafile=str(plane.pki.cert))
        self._local = threading.local()

    def call(self, method: str, path: str, body: Obj | None = None,
             content_type: str = "application/json") -> tuple[int, Obj]:
        """One request on this thread's connection; a connection the server closed is reopened once."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": content_type,
                   "Accept": "application/json"}
        for attempt in (1, 2):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ssl,
                                                                      timeout=30)
            try:
                conn.request(method, path, data, headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException):
                self._local.conn = None
                conn.close()
                if attempt == 2:
                    raise
                continue
            return resp.status, json.loads(payload or b"null")
        raise AssertionError("unreachable")

    def create(self, obj: Obj) -> None:
        """POST `obj`, then its status if it has one (the API ignores status on create); 409 is fine."""
        body = {k: v for k, v in obj.items() if k != "status"}
        status, reply = self.call("POST", collection(obj), body)
        if status not in (201, 409):
            raise RuntimeError(f"creating {path(obj)}: {status} {reply}")
        if "status" in obj:
            self.patch_status(obj, obj["status"])

    def patch_status(self, obj: Obj, status_body: Obj) -> None:
        status, reply = self.call("PATCH", path(obj) + "/status", {"status": status_body},
                                  "application/merge-patch+json")
        if status != 200:
            raise RuntimeError(f"status of {path(obj)}: {status} {reply}")

    def patch(self, obj: Obj, body: Obj) -> None:
        status, reply = self.call("PATCH", path(obj), body, "application/merge-patch+json")
        if status != 200:
            raise RuntimeError(f"patching {path(obj)}: {status} {reply}")

    def delete(self, obj: Obj) -> None:
        status, reply = self.call("DELETE", path(obj))
        if status not in (200, 202, 404):
            raise RuntimeError(f"deleting {path(obj)}: {status} {reply}")

    def create_all(self, objs: Iterable[Obj], workers: int = 16) -> int:
        """Create objects concurrently (in the given order per kind); returns how many."""
        objs = list(objs)
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(self.create, objs):
                pass
        return len(objs)
