"""The engine over real Informer objects fed with watch events in-process (no API server)."""

from __future__ import annotations

import copy
import dataclasses
import gc
import socket
import types
from typing import Any

import pytest

from backend.config import GslbZone, Settings
from backend.gslb.engine import GslbEngine, GslbResult
from backend.gslb.health import combine
from backend.gslb.spec import SpecError, parse
from backend.kube.informer import (
    ENDPOINTSLICES,
    GATEWAY_GROUP,
    GATEWAYS,
    GSLBS,
    GSLBS_IO,
    INGRESSES,
    ROUTES,
    SERVICES,
    Informer,
)
from backend.model import Obj, Store, Strategy, Target
from backend.probes.prober import Prober
from lab.proc import wait_for

SETTINGS = Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),), cluster_geotag="us-buf")
HOST = "fe.gb.foowidgets.k8s"


def gslb(name: str = "gslb-failover-buf", ns: str = "demo", strategy: Obj | None = None, **spec: Any) -> Obj:
    if "ingress" not in spec and "resourceRef" not in spec:
        spec["ingress"] = {"ingressClassName": "nginx", "rules": [{"host": HOST, "http": {"paths": [
            {"backend": {"service": {"name": "nginx", "port": {"number": 80}}},
             "path": "/", "pathType": "Prefix"}]}}]}
    return {"apiVersion": "k8gb.absa.oss/v1beta1", "kind": "Gslb",
            "metadata": {"name": name, "namespace": ns, "uid": "u-" + name, "resourceVersion": "1"},
            "spec": {"strategy": strategy or {"type": "failover", "primaryGeoTag": "us-buf"}, **spec}}


def service(name: str = "nginx", ns: str = "demo", lb: tuple[str, ...] = (),
            annotations: Obj | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1",
                         "annotations": annotations or {}},
            "spec": {"type": "LoadBalancer" if lb else "ClusterIP"},
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]}}}


def ingress(name: str, ns: str = "demo", ips: tuple[str, ...] = ("10.2.1.167",), labels: Obj | None = None,
            host: str = HOST, backend: str = "nginx") -> Obj:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1", "labels": labels or {}},
            "spec": {"rules": [{"host": host, "http": {"paths": [
                {"backend": {"service": {"name": backend}}}]}}]},
            "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips]}}}


def endpoint_slice(service_name: str = "nginx", ns: str = "demo", ready: tuple[bool, ...] = (True,)) -> Obj:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-abc", "namespace": ns, "resourceVersion": "1",
                         "labels": {"kubernetes.io/service-name": service_name}},
            "endpoints": [{"addresses": [f"10.244.0.{i}"], "conditions": {"ready": r}}
                          for i, r in enumerate(ready)]}


class Cluster:
    """Real informers (never started) fed with watch events, the engine attached as the app does it."""

    def __init__(self, settings: Settings = SETTINGS, prober: Prober | None = None) -> None:
        self.informers = {r.plural + r.group: Informer(None, r)  # type: ignore[arg-type]
                          for r in (GSLBS, GSLBS_IO, INGRESSES, SERVICES, ENDPOINTSLICES, GATEWAYS,
                                    ROUTES["HTTPRoute"])}
        self.store = Store()
        i = self.informers
        gateway_api = {"Gateway": i["gateways" + GATEWAY_GROUP], "HTTPRoute": i["httproutes" + GATEWAY_GROUP]}
        self.engine = GslbEngine(self.store, settings, [i["gslbsk8gb.absa.oss"], i["gslbsk8gb.io"]],
                                 i["ingressesnetworking.k8s.io"], i["services"],
                                 i["endpointslicesdiscovery.k8s.io"], gateway_api=gateway_api, prober=prober)
        self.evaluated: list[str] = []
        self.engine.subscribe(lambda key, _r: self.evaluated.append(key))
        self._rv = 1

    def apply(self, obj: Obj, type_: str = "MODIFIED") -> None:
        obj = copy.deepcopy(obj)
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        kind = obj["kind"].lower()
        plural = kind + ("es" if kind.endswith("s") else "s")  # gslbs, ingresses, httproutes ...
        self.informers[plural + group]._apply({"type": type_, "object": obj})

    def delete(self, obj: Obj) -> None:
        self.apply(obj, "DELETED")

    def answers(self, name: str, rtype: str = "A") -> tuple[Target, ...] | None:
        found = [ep for ep in self.store.endpoints() if ep.name == name and ep.rtype == rtype]
        return None if not found else tuple(t for ep in found for t in ep.targets)

    def result(self, name: str = "gslb-failover-buf", ns: str = "demo") -> GslbResult:
        return self.engine.results[f"gslb/{ns}/{name}"]


@pytest.fixture
def cluster() -> Cluster:
    return Cluster()


def chapter(c: Cluster, ready: tuple[bool, ...] = (True,)) -> None:
    c.apply(service())
    c.apply(endpoint_slice(ready=ready))
    c.apply(gslb())
    c.apply(ingress("gslb-failover-buf"))


def test_chapter_failover_healthy_then_scaled_to_zero_then_back(cluster: Cluster) -> None:
    chapter(cluster)
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)
    assert cluster.answers("localtargets-" + HOST) == (Target("10.2.1.167", "us-buf"),)
    ep = next(e for e in cluster.store.endpoints() if e.name == HOST)
    assert ep.strategy == Strategy("failover", "us-buf") and ep.ttl == 30
    assert ep.source is not None and ep.source.name == "gslb-failover-buf"
    assert cluster.result().hosts[0].health == "Healthy"

    cluster.apply(endpoint_slice(ready=()))
    assert cluster.answers(HOST) == ()  # the name stays: NODATA, not NXDOMAIN
    assert cluster.answers("localtargets-" + HOST) is None
    assert cluster.result().hosts[0].health == "Unhealthy"

    cluster.apply(endpoint_slice(ready=(False, True)))
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)


def test_a_target_failing_its_probes_leaves_the_answer_but_not_localtargets() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    settings = dataclasses.replace(SETTINGS, probe_address_map=(("10.2.1.167", *closed.getsockname()),))
    prober = Prober(settings)
    c = Cluster(settings, prober)
    prober.start()
    try:
        chapter(c)
        assert c.answers(HOST) == (Target("10.2.1.167", "us-buf"),)
        probed = gslb()
        probed["metadata"]["annotations"] = {"coredns-gslb.io/probe": "tcp://{address}:443",
                                             "coredns-gslb.io/probe-interval-seconds": "0.2",
                                             "coredns-gslb.io/probe-failures": "1"}
        c.apply(probed)

        def soon(want: tuple[Target, ...], what: str) -> None:
            wait_for(lambda: c.answers(HOST) == want, what=f"{what}: {HOST} -> {want}", timeout=20,
                     interval=0.02)

        soon((), "withdrawn from the answer by the probe verdict")
        assert c.answers("localtargets-" + HOST) == (Target("10.2.1.167", "us-buf"),), "kept for peers"
        assert c.result().hosts[0].health == "Healthy"
        c.apply(gslb())
        soon((Target("10.2.1.167", "us-buf"),), "annotation removed: endpoint health alone again")
    finally:
        prober.stop()
        closed.close()


def test_hosts_are_served_before_the_owned_ingress_exists(cluster: Cluster) -> None:
    cluster.apply(service())
    cluster.apply(endpoint_slice())
    cluster.apply(gslb())
    assert cluster.answers(HOST) == ()
    assert cluster.result().hosts[0].health == "Healthy"


def test_missing_service_is_not_found_and_its_arrival_heals(cluster: Cluster) -> None:
    cluster.apply(gslb())
    cluster.apply(ingress("gslb-failover-buf"))
    assert cluster.result().hosts[0].health == "NotFound"
    cluster.apply(service())
    cluster.apply(endpoint_slice())
    assert cluster.result().hosts[0].health == "Healthy"
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)


def test_a_failed_evaluation_leaves_no_reference_cycle(cluster: Cluster) -> None:
    """The error a result keeps holds no frames: a cycle through them that dies after the collector
    froze it (server.YoungCollector) is never freed, and it holds the informer's callers' frames too."""
    ref = {"apiVersion": "v1", "kind": "Service", "name": "s-0"}
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        cluster.apply(gslb(resourceRef=ref))
        assert cluster.result().error is not None and cluster.result().error.reason == "ResourceNotFound"
        cluster.apply(service("s-0", lb=("10.2.1.167",), annotations={"k8gb.io/hostname": HOST}))
        assert cluster.result().error is None  # the failed result is gone: was it freed?
        gc.collect()
        leaked = [type(o).__name__ for o in gc.garbage if isinstance(o, (SpecError, types.FrameType))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert leaked == []


def test_a_slice_event_reevaluates_only_the_gslbs_behind_that_service(cluster: Cluster) -> None:
    chapter(cluster)
    other = gslb("other", ingress={"rules": [{"host": "x.gb.foowidgets.k8s", "http": {"paths": [
        {"backend": {"service": {"name": "api"}}}]}}]})
    cluster.apply(other)
    cluster.evaluated.clear()
    cluster.apply(endpoint_slice("api"))
    assert cluster.evaluated == ["gslb/demo/other"]
    cluster.evaluated.clear()
    cluster.apply(endpoint_slice("unrelated"))
    cluster.apply(service("unrelated"))
    assert cluster.evaluated == []


def test_deleting_a_gslb_removes_its_names_and_dependencies(cluster: Cluster) -> None:
    chapter(cluster)
    cluster.delete(gslb())
    assert cluster.answers(HOST) is None
    cluster.evaluated.clear()
    cluster.apply(endpoint_slice())
    assert cluster.evaluated == []


def test_loadbalancer_service_with_hostname_annotation_and_ipv6(cluster: Cluster) -> None:
    cluster.apply(service("web", lb=("172.18.200.10", "fd00::10"),
                          annotations={"k8gb.io/hostname": "web.gb.foowidgets.k8s"}))
    cluster.apply(endpoint_slice("web"))
    cluster.apply(gslb("web", strategy={"type": "roundRobin"},
                       resourceRef={"apiVersion": "v1", "kind": "Service", "name": "web"}))
    assert cluster.answers("web.gb.foowidgets.k8s") == (Target("172.18.200.10", "us-buf"),)
    assert cluster.answers("web.gb.foowidgets.k8s", "AAAA") == (Target("fd00::10", "us-buf"),)
    assert cluster.answers("localtargets-web.gb.foowidgets.k8s", "AAAA") == (Target("fd00::10", "us-buf"),)
    cluster.apply(endpoint_slice("web", ready=(False,)))
    assert cluster.answers("web.gb.foowidgets.k8s", "AAAA") == ()


def test_resource_ref_to_nothing_then_the_ingress_appears(cluster: Cluster) -> None:
    cluster.apply(service())
    cluster.apply(endpoint_slice())
    cluster.apply(gslb("ref", resourceRef={"kind": "Ingress", "name": "fe"}))
    result = cluster.result("ref")
    assert result.error is not None and result.error.reason == "ResourceNotFound"
    cluster.apply(ingress("fe", ips=("10.2.1.98",)))
    assert cluster.result("ref").error is None
    assert cluster.answers(HOST) == (Target("10.2.1.98", "us-buf"),)


def test_match_labels_selects_ingresses_that_appear_later(cluster: Cluster) -> None:
    cluster.apply(service())
    cluster.apply(endpoint_slice())
    cluster.apply(gslb("sel", resourceRef={"kind": "Ingress", "matchLabels": {"app": "fe"}}))
    assert cluster.result("sel").error.reason == "ResourceNotFound"
    cluster.apply(ingress("one", labels={"app": "fe"}, ips=("10.0.0.1",)))
    cluster.apply(ingress("two", labels={"app": "fe"}, ips=("10.0.0.2",), host="two.gb.foowidgets.k8s"))
    cluster.apply(ingress("three", labels={"app": "x"}, ips=("10.0.0.3",), host="three.gb.foowidgets.k8s"))
    assert cluster.answers(HOST) == (Target("10.0.0.1", "us-buf"),)
    assert cluster.answers("two.gb.foowidgets.k8s") == (Target("10.0.0.2", "us-buf"),)
    assert cluster.answers("three.gb.foowidgets.k8s") is None


def test_exposed_ip_annotation_overrides_the_load_balancer_status(cluster: Cluster) -> None:
    chapter(cluster)
    g = gslb()
    g["metadata"]["annotations"] = {"k8gb.io/exposed-ip-addresses": "10.9.9.9, 2001:db8::9"}
    cluster.apply(g)
    assert cluster.answers(HOST) == (Target("10.9.9.9", "us-buf"),)
    assert cluster.answers(HOST, "AAAA") == (Target("2001:db8::9", "us-buf"),)


@pytest.mark.parametrize(("strategy", "reason"), [
    ({"type": "weighted"}, "UnknownStrategy"),
    ({"type": "failover"}, "MissingPrimaryGeoTag"),
    ({"type": "roundRobin", "weight": {"us-buf": -1, "us-nyc": 5}}, "InvalidWeight"),
    ({"type": "roundRobin", "weight": {"us-buf": 0, "us-nyc": 0}}, "InvalidWeight"),
])
def test_bad_gslb_gets_a_reason_and_the_others_are_unaffected(cluster: Cluster, strategy: Obj,
                                                              reason: str) -> None:
    chapter(cluster)
    cluster.apply(gslb("bad", strategy=strategy, ingress={"rules": [{"host": "bad.gb.foowidgets.k8s"}]}))
    assert cluster.result("bad").error.reason == reason
    assert cluster.answers("bad.gb.foowidgets.k8s") is None
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)


def test_a_broken_edit_keeps_the_last_good_answers(cluster: Cluster) -> None:
    chapter(cluster)
    cluster.apply(gslb(strategy={"type": "failover"}))
    assert cluster.result().error.reason == "MissingPrimaryGeoTag"
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)


def test_both_api_groups_and_hosts_outside_the_zones() -> None:
    c = Cluster()
    c.apply(service())
    c.apply(endpoint_slice())
    g = gslb(ingress={"rules": [{"host": "a.example.org", "http": {"paths": [
        {"backend": {"service": {"name": "nginx"}}}]}}]})
    g["apiVersion"] = "k8gb.io/v1beta1"
    c.apply(g)
    result = c.engine.results["gslb/demo/gslb-failover-buf@k8gb.io"]
    assert result.outside == ("a.example.org",)
    assert c.answers("a.example.org") is None


def test_spec_defaults_and_weights() -> None:
    spec = parse(gslb(strategy={"type": "roundRobin", "weight": {"us-nyc": 25, "us-buf": 75}}))
    assert spec.ttl == 30 and spec.policy == "Any"
    assert spec.strategy == Strategy("roundRobin", "", (("us-buf", 75), ("us-nyc", 25)))
    with pytest.raises(SpecError, match="mutually exclusive"):
        parse(gslb(resourceRef={"name": "x"}, ingress={"rules": []}))


@pytest.mark.parametrize(("states", "policy", "want"), [
    ([], "Any", "NotFound"),
    (["Unhealthy", "Healthy"], "Any", "Healthy"),
    (["NotFound", "Unhealthy"], "Any", "Unhealthy"),
    (["Healthy", "Unhealthy"], "All", "Unhealthy"),
    (["Healthy", "NotFound", "Unhealthy"], "All", "NotFound"),
    (["Healthy", "Healthy"], "All", "Healthy"),
])
def test_service_health_policy(states: list[str], policy: str, want: str) -> None:
    assert combine(states, policy) == want


def test_exposed_hostnames_win_over_exposed_ips_and_follow_their_resolution(cluster: Cluster) -> None:
    chapter(cluster)
    g = gslb()
    g["metadata"]["annotations"] = {"k8gb.io/exposed-ip-addresses": "10.9.9.9",
                                    "k8gb.io/exposed-hostnames": "Node1.DDNS.example.net."}
    wanted: list[str] = []
    cluster.engine.on_hostnames = lambda: wanted.append("wake")
    cluster.apply(g)
    assert wanted and cluster.engine.hostnames() == ["node1.ddns.example.net"]
    assert cluster.answers(HOST) == ()  # not resolved yet: no address, never the others
    cluster.engine.set_resolved("node1.ddns.example.net", ("10.7.0.1", "2001:db8::7"))
    assert cluster.answers(HOST) == (Target("10.7.0.1", "us-buf"),)
    assert cluster.answers(HOST, "AAAA") == (Target("2001:db8::7", "us-buf"),)
    del g["metadata"]["annotations"]["k8gb.io/exposed-hostnames"]
    cluster.apply(g)
    assert cluster.engine.hostnames() == [] and cluster.answers(HOST) == (Target("10.9.9.9", "us-buf"),)
    g["metadata"]["annotations"]["k8gb.io/exposed-hostnames"] = "not a name!"
    cluster.apply(g)
    assert cluster.result().error.reason == "InvalidHostname"


def test_a_malformed_annotation_leaves_the_gslb_usable() -> None:
    obj = {"apiVersion": "k8gb.absa.oss/v1beta1", "kind": "Gslb",
           "metadata": {"name": "fe", "namespace": "demo",
                        "annotations": {"coredns-gslb.io/probe": "http://x/"}},
           "spec": {"ingress": {"rules": []}, "strategy": {"type": "roundRobin"}}}
    spec = parse(obj)
    assert spec.probe is None and "the host must be {address}" in spec.probe_error


def test_a_load_balancer_hostname_stands_for_what_it_resolves_to(cluster: Cluster) -> None:
    """k8gb digs status.loadBalancer.ingress[].hostname (an AWS ELB) through the edge DNS servers; the
    Gateway API's `Hostname` address is the same case (tests/test_gateway.py runs it end to end)."""
    chapter(cluster)
    elb = ingress("gslb-failover-buf", ips=("10.2.1.167",))
    elb["status"]["loadBalancer"]["ingress"].append({"hostname": "ELB-1.eu-west-1.elb.example.net"})
    cluster.apply(elb)
    assert cluster.engine.hostnames() == ["elb-1.eu-west-1.elb.example.net"]
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"),)  # the hostname: nothing yet
    cluster.engine.set_resolved("elb-1.eu-west-1.elb.example.net", ("10.2.1.200",))
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"), Target("10.2.1.200", "us-buf"))
    elb["status"]["loadBalancer"]["ingress"][1]["hostname"] = "not a name!"
    cluster.apply(elb)
    assert cluster.result().error.reason == "InvalidHostname"
    assert cluster.answers(HOST) == (Target("10.2.1.167", "us-buf"), Target("10.2.1.200", "us-buf")), "kept"


def test_a_gateways_hostname_address_is_resolved_and_an_unknown_type_refused(cluster: Cluster) -> None:
    cluster.apply(service())
    cluster.apply(endpoint_slice())
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
          "metadata": {"name": "shop", "namespace": "demo"}, "spec": {},
          "status": {"addresses": [{"type": "IPAddress", "value": "10.2.3.1"},
                                   {"type": "Hostname", "value": "lb.eu-west-1.elb.example.net"}]}}
    cluster.apply(gw)
    cluster.apply({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                   "metadata": {"name": "shop", "namespace": "demo"},
                   "spec": {"parentRefs": [{"name": "shop"}], "hostnames": [HOST],
                            "rules": [{"backendRefs": [{"name": "nginx", "port": 80}]}]}})
    cluster.apply(gslb(resourceRef={"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                                    "name": "shop"}))
    assert cluster.engine.hostnames() == ["lb.eu-west-1.elb.example.net"]
    assert cluster.answers(HOST) == (Target("10.2.3.1", "us-buf"),)
    cluster.engine.set_resolved("lb.eu-west-1.elb.example.net", ("10.2.3.2",))
    assert cluster.answers(HOST) == (Target("10.2.3.1", "us-buf"), Target("10.2.3.2", "us-buf"))
    gw["status"]["addresses"][1] = {"type": "example.com/vip", "value": "vip-1"}
    cluster.apply(gw)
    assert cluster.result().error.reason == "InvalidAddress"  # as k8gb: neither IPAddress nor Hostname
    assert cluster.engine.hostnames() == []


def test_serving_finds_the_gslbs_of_a_host_as_their_hosts_come_and_go(cluster: Cluster) -> None:
    """What a probe verdict or a peer's change of a host touches (`serving`), kept as results change."""
    chapter(cluster)
    g = gslb()
    cluster.apply(g)
    assert cluster.engine.serving([HOST, "nowhere.example"]) == ["gslb/demo/gslb-failover-buf"]
    other = "moved." + HOST
    g["spec"]["ingress"]["rules"][0]["host"] = other
    cluster.apply(g)
    assert cluster.engine.serving([HOST]) == []
    assert cluster.engine.serving([other]) == ["gslb/demo/gslb-failover-buf"]
    cluster.delete(g)
    assert cluster.engine.serving([other]) == []
