"""What the edge is asked to hold when a ZoneDelegation goes (no edge server)."""

from __future__ import annotations

from backend import edge
from backend.config import GslbZone, Settings

SETTINGS = Settings(gslb_zones=(GslbZone("gb.foowidgets.k8s", "foowidgets.k8s"),), cluster_geotag="us-buf",
                    ext_gslb_clusters_geotags=("us-nyc",), nameserver_address="10.2.1.224",
                    edge_dns_servers=("127.0.0.1:1053",))


def test_edge_jobs_withdraw_zones_that_went() -> None:
    eu = GslbZone("eu.foowidgets.k8s", "foowidgets.k8s", 7)
    jobs = edge.jobs(SETTINGS, None, None, withdrawn=(eu,))
    assert [j.label for j in jobs] == ["delegation foowidgets.k8s", "withdraw foowidgets.k8s"]
    withdraw = jobs[1].wanted()
    assert {(r.name, r.rtype) for r in withdraw.records} == {  # type: ignore[attr-defined]
        ("eu.foowidgets.k8s", "NS"), ("gslb-ns-us-buf-eu.foowidgets.k8s", "A")}
