"""ZoneDelegations -> the GSLB zone set, and what status makes of it (no API server)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.config import GslbZone, Settings
from backend.gslb.delegations import ZoneDelegations, dns_servers, parse
from backend.kube.informer import ZONEDELEGATIONS, Informer

FLAGS = GslbZone("gb.foowidgets.k8s", "foowidgets.k8s")
SETTINGS = Settings(gslb_zones=(FLAGS,), cluster_geotag="us-buf", ext_gslb_clusters_geotags=("us-nyc",),
                    nameserver_address="10.2.1.224", edge_dns_servers=("127.0.0.1:1053",))


def zd(name: str, zone: str, parent: str = "foowidgets.k8s", ttl: Any = 7) -> dict[str, Any]:
    return {"apiVersion": "k8gb.io/v1beta1", "kind": "ZoneDelegation",
            "metadata": {"name": name, "resourceVersion": "1"},
            "spec": {"loadBalancedZone": zone, "parentZone": parent, "dnsZoneNegTTL": ttl}}


def test_parse() -> None:
    assert parse(zd("a", "EU.foowidgets.k8s.")) == GslbZone("eu.foowidgets.k8s", "foowidgets.k8s", 7)
    for bad in (zd("a", "eu.example.org"), zd("a", "foowidgets.k8s"), zd("a", "eu.foowidgets.k8s", ttl="7"),
                zd("a", "bad name.foowidgets.k8s")):
        with pytest.raises(ValueError):
            parse(bad)


def test_zone_set_is_flags_then_usable_delegations_and_follows_deletes() -> None:
    informer = Informer(None, ZONEDELEGATIONS)  # type: ignore[arg-type]
    seen: list[tuple[GslbZone, ...]] = []
    zds = ZoneDelegations(SETTINGS, informer, None, seen.append)
    informer._apply({"type": "ADDED", "object": zd("b-eu", "eu.foowidgets.k8s")})
    informer._apply({"type": "ADDED", "object": zd("a-dup", "gb.foowidgets.k8s")})  # the flags' zone
    informer._apply({"type": "ADDED", "object": zd("c-bad", "x.example.org")})
    informer._apply({"type": "ADDED", "object": zd("d-long", "a" * 50 + ".foowidgets.k8s")})  # NS label > 63
    assert zds.zones == (FLAGS, GslbZone("eu.foowidgets.k8s", "foowidgets.k8s", 7)) and len(seen) == 1
    informer._apply({"type": "DELETED", "object": zd("b-eu", "eu.foowidgets.k8s")})
    assert seen[-1] == (FLAGS,)


def test_status_lists_every_cluster() -> None:
    servers = dns_servers(SETTINGS, zd("b-eu", "eu.foowidgets.k8s"), lambda _z, _tag: ["10.2.1.221"])
    assert servers == [{"name": "gslb-ns-us-buf-eu.foowidgets.k8s", "address": "10.2.1.224"},
                       {"name": "gslb-ns-us-nyc-eu.foowidgets.k8s", "address": "10.2.1.221"}]
