"""Kubernetes objects for the benchmarks, and a fast way to create many of them in the real apiserver.

Every GSLB host is a Gslb (k8gb.absa.oss/v1beta1) whose spec.resourceRef names a LoadBalancer Service
carrying `k8gb.io/hostname`; its health comes from an EndpointSlice with one ready endpoint, written
as the endpointslice controller would (selector-less Services, so no Deployment or Pod is needed for
10,000 of them). The same Service may also carry ExternalDNS's hostname annotation.

`Api.create_all` writes through the API (kube-apiserver 1.34 also writes an IPAddress for each ClusterIP
and counts all of them after each one; a ClusterIP it picks itself is picked one Service at a time, so
the bench gives its Services free ones, `pin_cluster_ips`). `bulk_create` writes 100,000 in seconds:
the first object goes through the API, the rest are copies of what the apiserver stored for it, written
into its etcd (what the backend under test reads is still the real apiserver's list and watch).
"""

from __future__ import annotations

import base64
import copy
import http.client
import ipaddress
import itertools
import json
import ssl
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from lab.kube import SERVICE_CIDR, ControlPlane
from lab.lbpool import lb_ingress

Obj = dict[str, Any]
EXTERNAL_DNS_HOSTNAME = "external-dns.alpha.kubernetes.io/hostname"
GSLB_HOSTNAME = "k8gb.io/hostname"
GSLB_API = "k8gb.absa.oss/v1beta1"


def namespace(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}


def service(ns: str, name: str, lb_ips: Sequence[str], *, hostname: str = "", gslb_host: str = "",
            selector: dict[str, str] | None = None, cluster_ip: str = "") -> Obj:
    """A LoadBalancer Service (selector-less unless given one) whose status (set apart) holds `lb_ips`;
    its ClusterIP is `cluster_ip` if given (see `free_cluster_ips`), else one the apiserver picks."""
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
            **({"clusterIP": cluster_ip} if cluster_ip else {}),
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
              "Gslb": "gslbs", "DNSEndpoint": "dnsendpoints", "Deployment": "deployments",
              "IPAddress": "ipaddresses"}[kind]
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

    def count(self, obj: Obj, not_older_than: int = 0) -> int:
        """How many objects the API lists in `obj`'s collection (`not_older_than`: an etcd revision the
        apiserver's watch cache must have reached; until then the API answers 504 and this raises)."""
        query = (f"&resourceVersion={not_older_than}&resourceVersionMatch=NotOlderThan"
                 if not_older_than else "")
        status, reply = self.call("GET", collection(obj) + "?limit=1" + query)
        if status != 200:
            raise RuntimeError(f"listing {collection(obj)}: {status} {reply}")
        return len(reply.get("items") or ()) + int(reply["metadata"].get("remainingItemCount") or 0)

    def create_all(self, objs: Iterable[Obj], workers: int = 16) -> int:
        """Create objects concurrently (in the given order per kind); returns how many."""
        objs = list(objs)
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(self.create, objs):
                pass
        return len(objs)


def free_cluster_ips(api: Api, count: int) -> list[str]:
    """`count` ClusterIPs no Service holds (no IPAddress object names them), from the top of the lab's
    service range down. A Service created with one skips the apiserver's dynamic allocation, which
    kube-apiserver 1.34 runs one at a time under a single lock, each holding it for its own IPAddress
    write and two counts of every IPAddress (ipallocator.MetaAllocator.AllocateNextService): with
    12,000 Services on the two shared cores that is 100s of ms each, and Service deletes wait on the
    same lock. Valid while nothing else allocates dynamically from the top of the range."""
    taken: set[str] = set()
    page = "/apis/networking.k8s.io/v1/ipaddresses?limit=500"
    token = ""
    while True:
        status, reply = api.call("GET", page + (f"&continue={urllib.parse.quote(token)}" if token else ""))
        if status != 200:
            raise RuntimeError(f"listing IPAddresses: {status} {reply}")
        taken.update(item["metadata"]["name"] for item in reply.get("items") or ())
        token = reply["metadata"].get("continue") or ""
        if not token:
            break
    network = ipaddress.ip_network(SERVICE_CIDR)
    candidates = (str(network.broadcast_address - k) for k in range(1, network.num_addresses - 1))
    free = list(itertools.islice((ip for ip in candidates if ip not in taken), count))
    if len(free) < count:
        raise RuntimeError(f"only {len(free)} free ClusterIPs in {SERVICE_CIDR}, {count} wanted")
    return free


def pin_cluster_ips(api: Api, objs: Sequence[Obj]) -> None:
    """Give every Service in `objs` a free ClusterIP (`free_cluster_ips`), so creating them
    concurrently is concurrent in the apiserver too."""
    services = [obj for obj in objs if obj["kind"] == "Service"]
    for svc, ip in zip(services, free_cluster_ips(api, len(services)), strict=True):
        svc["spec"]["clusterIP"] = ip


# Where kube-apiserver keeps each kind under its --etcd-prefix ("ns/name" appended; CRDs under their group).
_STORAGE = {"Service": "services/specs", "EndpointSlice": "endpointslices",
            "Gslb": f"{GSLB_API.split('/')[0]}/gslbs", "IPAddress": "ipaddresses"}
_CLUSTER_IPS = ipaddress.IPv4Address("10.100.0.0")  # bulk ClusterIPs, inside the lab's 10.96.0.0/12
_TXN_OPS = 64  # puts per etcd transaction (etcd allows 128)


def bulk_create(api: Api, plane: ControlPlane, objs: Sequence[Obj], workers: int = 4) -> int:
    """Create objs[0] through the API, then the rest as copies of what the apiserver stored for it with
    each one's own fields merged in, written straight into the apiserver's etcd (with an IPAddress per
    Service's ClusterIP, as the apiserver keeps them). All of one kind; returns etcd's revision after
    the last write (the apiserver's watch cache, which serves lists, takes a while to get there)."""
    if not objs:
        return 0
    first = objs[0]
    api.create(first)
    stored = _stored(api, first)
    url, root = plane.etcd.url, f"/{plane.name}/"
    ip_template = None
    if first["kind"] == "Service":
        ip_path = f"/apis/networking.k8s.io/v1/ipaddresses/{stored['spec']['clusterIP']}"
        status, ip_template = api.call("GET", ip_path)
        if status != 200:
            raise RuntimeError(f"IPAddress of {path(first)}: {status} {ip_template}")
        ip_template = _strip(ip_template)
    taken = stored.get("spec", {}).get("clusterIP")
    _check_key(url, root, first)
    ips = (str(_CLUSTER_IPS + k) for k in range(1, 2 * len(objs)) if str(_CLUSTER_IPS + k) != taken)
    copies: list[Obj] = []  # each Service's IPAddress beside it: alone, the IP repair loop deletes it
    for obj in objs[1:]:
        copied = _merged(copy.deepcopy(stored), {k: v for k, v in obj.items() if k != "apiVersion"})
        copied["metadata"]["uid"] = str(uuid.uuid4())
        if ip_template is not None:
            ip = next(ips)
            copied["spec"]["clusterIP"], copied["spec"]["clusterIPs"] = ip, [ip]
            address = copy.deepcopy(ip_template)
            address["metadata"].update(name=ip, uid=str(uuid.uuid4()))
            address["spec"]["parentRef"]["name"] = copied["metadata"]["name"]
            copies.append(address)
        copies.append(copied)
    return _etcd_put_all(url, root, copies, workers)


def _etcd_put_all(url: str, root: str, objs: Sequence[Obj], workers: int) -> int:
    """Every object written in transactions of _TXN_OPS; etcd's revision after the last."""
    batches = [objs[i : i + _TXN_OPS] for i in range(0, len(objs), _TXN_OPS)]
    with ThreadPoolExecutor(workers) as pool:
        revisions = list(pool.map(lambda batch: _etcd_put(url, root, batch), batches))
    return max(revisions, default=0)


def _stored(api: Api, obj: Obj) -> Obj:
    status, got = api.call("GET", path(obj))
    if status != 200:
        raise RuntimeError(f"reading back {path(obj)}: {status} {got}")
    return _strip(got)


def _strip(obj: Obj) -> Obj:
    """The object as etcd holds it: the apiserver adds resourceVersion from the etcd revision."""
    obj["metadata"].pop("resourceVersion", None)
    return obj


def _merged(base: Obj, own: Obj) -> Obj:
    """`own` over `base`: dicts merged key by key, lists of dicts of equal length element by element
    (so the API's defaults in `base`, like a port's targetPort, stay), anything else replaced."""
    for k, v in own.items():
        b = base.get(k)
        if isinstance(v, dict) and isinstance(b, dict):
            _merged(b, v)
        elif (isinstance(v, list) and isinstance(b, list) and len(v) == len(b)
              and all(isinstance(x, dict) for x in (*v, *b))):
            for bx, vx in zip(b, v, strict=True):
                _merged(bx, vx)
        else:
            base[k] = copy.deepcopy(v)
    return base


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    ns = meta.get("namespace")
    return f"{_STORAGE[obj['kind']]}/{ns + '/' if ns else ''}{meta['name']}"


def _check_key(url: str, root: str, obj: Obj) -> None:
    """The object the API created is where bulk copies go, or the layout assumed here is wrong."""
    key = root + _key(obj)
    reply = _etcd(url, "/v3/kv/range", {"key": _b64(key), "keys_only": True})
    if not reply.get("kvs"):
        raise RuntimeError(f"{path(obj)} is not at etcd key {key}: kube-apiserver's storage layout changed")


def _etcd_put(url: str, root: str, batch: Sequence[Obj]) -> int:
    """One transaction; etcd's revision after it."""
    ops = [{"requestPut": {"key": _b64(root + _key(obj)), "value": _b64(json.dumps(obj))}} for obj in batch]
    reply = _etcd(url, "/v3/kv/txn", {"success": ops})
    if "header" not in reply:
        raise RuntimeError(f"etcd txn failed: {reply}")
    return int(reply["header"]["revision"])


def _etcd(url: str, route: str, body: Obj) -> Obj:
    req = urllib.request.Request(url + route, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        reply: Obj = json.load(r)
    return reply


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
