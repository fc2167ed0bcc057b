"""A namespace being deleted while its Gslbs outlive their endpoints (issue 12, "bad input and failure").

The namespace controller deletes the Services and EndpointSlices; the Gslbs stay (held here by a
finalizer, as they are for a while when the controller deletes them last), so every GSLB host turns
unhealthy and the leader has new statuses and HostUnhealthy Events for them. Nothing of that may be
written into the dying namespace: no storm of refused writes, retries or warning lines in the backend's
log, while Gslbs in other namespaces still get their statuses.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

import pytest

from backend.kube import kubeapi
from backend.kube.events import EventRecorder
from backend.model import ObjectRef
from bench import dataset
from bench.burst import hosted
from bench.objects import Api, Obj, collection, pin_cluster_ips
from bench.objects import namespace as namespace_object
from lab import demo
from lab.kube import ControlPlane
from lab.proc import wait_for
from lab.sidecar import DnsStack

pytestmark = pytest.mark.controlplane
DOOMED, KEPT = 40, 3  # Services, each with an EndpointSlice and a Gslb
HOLD = "coredns-gslb.test/hold"  # a finalizer that keeps the doomed Gslbs until the test lets go
DROPPED = "coredns_gslb_api_writes_dropped_total"


def health(api: Api, gslb: Obj) -> dict[str, str]:
    status, reply = api.call("GET", f"{collection(gslb)}/{gslb['metadata']['name']}")
    return ((reply.get("status") or {}).get("serviceHealth") or {}) if status == 200 else {}


def dropped(stack: DnsStack) -> dict[tuple[str, str], float]:
    """The backend's writes given up, by (what, why), from /metrics as Prometheus scrapes it."""
    _, body = stack.backend.get("/metrics", admin=False)
    return {(m[1], m[2]): float(m[3]) for m in re.finditer(
        rf'^{DROPPED}{{what="([^"]+)",why="([^"]+)"}} (\S+)$', body, re.M)}


def test_nothing_is_written_into_a_namespace_being_deleted(
        control_plane: ControlPlane, dns_stack_factory: Callable[..., DnsStack], namespace: str) -> None:
    demo.install_crds(control_plane)
    api, tag = Api(control_plane), secrets.token_hex(3)
    doomed_ns = f"dying-{tag}"
    api.create(namespace_object(doomed_ns))
    doomed = hosted(doomed_ns, f"d{tag}", DOOMED, lambda i: f"10.9.0.{i + 1}")
    kept = hosted(namespace, f"k{tag}", KEPT, lambda i: f"10.9.1.{i + 1}")
    for obj in doomed:
        if obj["kind"] == "Gslb":
            obj["metadata"]["finalizers"] = [HOLD]
    pin_cluster_ips(api, doomed + kept)
    api.create_all(doomed + kept, workers=8)
    doomed_gslbs = [o for o in doomed if o["kind"] == "Gslb"]
    kept_gslbs = [o for o in kept if o["kind"] == "Gslb"]
    stack = dns_stack_factory(control_plane, zones=(dataset.ZONE, dataset.GSLB_ZONE),
                              flags=dataset.BACKEND_FLAGS)
    try:
        wait_for(lambda: all(set(health(api, g).values()) == {"Healthy"} for g in doomed_gslbs + kept_gslbs),
                 what="the leader writing every Gslb's status Healthy", timeout=120,
                 watch=[stack.backend.process])
        log_before = len(stack.backend.process.log.read_text().splitlines())

        control_plane.kubectl("delete", "namespace", doomed_ns, "--wait=false")
        slices = next(o for o in doomed if o["kind"] == "EndpointSlice")
        services = next(o for o in doomed if o["kind"] == "Service")
        wait_for(lambda: api.count(slices) == 0 and api.count(services) == 0,
                 what=f"the namespace controller deleting {doomed_ns}'s EndpointSlices and Services",
                 timeout=180, watch=[stack.backend.process])
        wait_for(lambda: sum(n for (what, _), n in dropped(stack).items() if what == "status") >= DOOMED,
                 what="the leader giving up a status write for each doomed Gslb", timeout=60,
                 watch=[stack.backend.process])

        # another namespace's Gslbs still get their statuses while this one is dying
        kept_slice = next(o for o in kept if o["kind"] == "EndpointSlice")
        api.patch(kept_slice, {"endpoints": [{**kept_slice["endpoints"][0], "conditions": {"ready": False}}]})
        first = kept_gslbs[0]
        host = next(iter(health(api, first)))
        wait_for(lambda: health(api, first) == {host: "Unhealthy"}, timeout=60, watch=[stack.backend.process],
                 what=f"Gslb {first['metadata']['name']} in {namespace} written Unhealthy")

        # a Gslb deleted and made again under its name gets its status: a 404 for the old one drops
        # only the old one's write
        again = kept_gslbs[1]
        again_name = again["metadata"]["name"]
        api.delete(again)
        wait_for(lambda: api.call("GET", f"{collection(again)}/{again_name}")[0] == 404,
                 what=f"Gslb {again_name} deleted", timeout=30)
        api.create(again)
        wait_for(lambda: set(health(api, again).values()) == {"Healthy"}, timeout=60,
                 watch=[stack.backend.process], what=f"Gslb {again_name} made again written Healthy")

        # the API's own refusal of an Event in the dying namespace: classified, dropped, not logged
        name = doomed_gslbs[0]["metadata"]["name"]
        ref = ObjectRef("Gslb", doomed_ns, name, api_version=doomed_gslbs[0]["apiVersion"])
        client = kubeapi.api_client(str(control_plane.kubeconfig))
        event = {"metadata": {"name": f"probe.{tag}", "namespace": doomed_ns}, "reason": "Probe",
                 "involvedObject": {"kind": "Gslb", "namespace": doomed_ns, "name": name},
                 "message": "probe", "type": "Normal"}
        with pytest.raises(kubeapi.KubeError) as refused:
            kubeapi.request(client, "POST", kubeapi.resource_path("", "v1", "events", doomed_ns), body=event)
        assert refused.value.status == 403 and kubeapi.NAMESPACE_TERMINATING in refused.value.causes
        assert refused.value.namespace_terminating
        whys: list[tuple[str, str]] = []
        recorder = EventRecorder(client, on_dropped=lambda what, why: whys.append((what, why)))
        recorder.record(ref, "Warning", "HostUnhealthy", "probe")
        assert recorder.flush(10), "the recorder writing (or dropping) one Event within 10 s"
        recorder.stop()
        assert whys == [("event", "namespace_terminating")]

        log = stack.backend.process.log.read_text().splitlines()[log_before:]
        about_doomed = [line for line in log if doomed_ns in line]
        assert len(about_doomed) <= 2, about_doomed  # the controller's and the recorder's one line
        assert not [line for line in about_doomed if "WARNING" in line or "ERROR" in line], about_doomed
    finally:
        for gslb in doomed_gslbs:  # let the namespace go
            api.call("PATCH", f"{collection(gslb)}/{gslb['metadata']['name']}",
                     {"metadata": {"finalizers": None}}, "application/merge-patch+json")
