"""Weighted roundRobin and geoip through real CoreDNS, with the local Gslb from the real apiserver and
another cluster's targets injected into the backend's Store in-process (as the peer exchange would).

The backend runs in this process (`backend.app.serve` on the main thread, the test body on a worker)
so the test can write `peer/us-nyc` into its Store.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from backend import app
from backend.config import GslbZone, Settings
from backend.model import Endpoint, Target, peer_key
from lab import demo
from lab.coredns import CoreDNS
from lab.dig import dig
from lab.kube import ControlPlane
from lab.mmdb import write_db
from lab.proc import free_port, wait_for

pytestmark = pytest.mark.controlplane

ZONE = "gb.foowidgets.k8s"
NO_REWRITE = """${zones} {
    bind ${bind}
    errors
    grpc . ${grpc}
}
"""


@pytest.fixture(scope="module")
def crds(control_plane: ControlPlane) -> ControlPlane:
    demo.install_crds(control_plane)
    return control_plane


def run_backend(
    settings: Settings, body: Callable[[app.App], None]
) -> None:
    """`serve` on this (main) thread until `body(ctx)`, run on a worker once the backend is ready, returns."""
    captured: list[app.App] = []
    failures: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def work() -> None:
            try:
                wait_for(
                    lambda: bool(captured) and captured[0].server.ready, what="backend ready", timeout=60
                )
                body(captured[0])
            except BaseException as e:
                failures.append(e)
            finally:
                loop.call_soon_threadsafe(stop.set)

        worker = threading.Thread(target=work, name="test-body")
        worker.start()
        await app.serve(settings, stop, built=captured.append)
        worker.join()

    asyncio.run(main())
    if failures:
        raise failures[0]


def settings_for(plane: ControlPlane, **extra: Any) -> Settings:
    return Settings(
        gslb_zones=(GslbZone(ZONE, "foowidgets.k8s"),),
        cluster_geotag="us-buf",
        grpc_listen=f"127.0.0.1:{free_port()}",
        http_listen=f"127.0.0.1:{free_port()}",
        kubeconfig=str(plane.kubeconfig),
        **extra,
    )


def gslb_app(plane: ControlPlane, namespace: str, host: str, strategy: dict[str, Any]) -> None:
    """A healthy Deployment + Service behind a Gslb with spec.ingress."""
    plane.apply(demo.app(namespace, "web"))
    plane.apply(demo.gslb(namespace, "web", strategy, host=host, service="web"))


def healthy_records(plane: ControlPlane, namespace: str) -> dict[str, list[str]]:
    obj = json.loads(plane.kubectl("get", "gslbs.k8gb.absa.oss", "web", "-n", namespace, "-o", "json"))
    return (obj.get("status") or {}).get("healthyRecords") or {}


def inject_peer(ctx: app.App, host: str, ip: str, geotag: str = "us-nyc") -> None:
    ctx.store.replace(peer_key(geotag), [Endpoint(host, "A", (Target(ip, geotag),))])


def test_weighted_round_robin_holds_over_10000_queries(
    crds: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    host = f"weighted-{namespace}.{ZONE}"
    gslb_app(crds, namespace, host, {"type": "roundRobin", "weight": {"us-buf": 75, "us-nyc": 25}})
    settings = settings_for(crds)

    def body(ctx: app.App) -> None:
        demo.announce_ingress(crds, namespace, "web", ["10.2.1.167"])
        inject_peer(ctx, host, "10.2.1.98")
        coredns = CoreDNS(tmp_path, zones=(ZONE,), grpc=settings.grpc_listen).start()
        try:
            wait_for(
                lambda: sorted(dig(coredns.address, host).addresses) in (["10.2.1.167"], ["10.2.1.98"]),
                what="the weighted answer",
                timeout=60,
            )
            counts: collections.Counter[tuple[str, ...]] = collections.Counter()
            query = dns.message.make_query(host, "A")
            for _ in range(10_000):
                reply = dns.query.udp(query, coredns.host, port=coredns.port, timeout=2)
                counts[tuple(sorted(rd.address for rrset in reply.answer for rd in rrset))] += 1
        finally:
            coredns.stop()
        assert set(counts) == {("10.2.1.167",), ("10.2.1.98",)}, counts  # one cluster per answer, never mixed
        # kubectl shows where the name can go: both clusters' healthy targets
        records = {host: ["10.2.1.167", "10.2.1.98"]}
        crds.wait_for(lambda: healthy_records(crds, namespace) == records, what="healthyRecords", timeout=30)
        share = counts[("10.2.1.167",)] / 10_000
        assert abs(share - 0.75) <= 0.02, counts

    run_backend(settings, body)


def test_geoip_answers_by_client_subnet(
    crds: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    host = f"geo-{namespace}.{ZONE}"
    gslb_app(crds, namespace, host, {"type": "geoip"})
    db = tmp_path / "geo.mmdb"
    write_db(
        str(db),
        {
            "10.1.0.0/16": {"datacenter": "us-nyc"},
            "10.2.0.0/16": {"datacenter": "us-buf"},
            "127.0.1.0/24": {"datacenter": "us-nyc"},
            "127.0.0.0/24": {"datacenter": "us-buf"},
        },
    )
    settings = settings_for(crds, geoip_db=str(db))

    def body(ctx: app.App) -> None:
        demo.announce_ingress(crds, namespace, "web", ["10.2.1.167"])
        inject_peer(ctx, host, "10.2.1.98")
        plain = CoreDNS(tmp_path, NO_REWRITE, zones=(ZONE,), grpc=settings.grpc_listen, name="plain").start()
        shipped = CoreDNS(tmp_path, zones=(ZONE,), grpc=settings.grpc_listen, name="shipped").start()
        try:
            wait_for(
                lambda: sorted(dig(plain.address, host).addresses) == ["10.2.1.167", "10.2.1.98"],
                what="both clusters' targets without ECS",
                timeout=60,
            )
            # Clients (or resolvers) that send ECS themselves: CoreDNS passes it through, the shipped
            # Corefile (`rewrite edns0 subnet append ... revert`) as well.
            for server in (plain, shipped):
                nyc = dig(server.address, host, "A", "+subnet=10.1.7.0/24")
                assert nyc.addresses == ["10.2.1.98"] and nyc.ecs == "10.1.7.0/24/24", nyc.output
                buf = dig(server.address, host, "A", "+subnet=10.2.9.0/24")
                assert buf.addresses == ["10.2.1.167"], buf.output
                nowhere = dig(server.address, host, "A", "+subnet=192.0.2.0/24")
                assert sorted(nowhere.addresses) == ["10.2.1.167", "10.2.1.98"], nowhere.output
            # EDNS clients without ECS behind the shipped Corefile: the source address decides, and no
            # ECS comes back to them.
            from_nyc = dig(shipped.address, host, "A", "-b", "127.0.1.1")
            assert from_nyc.addresses == ["10.2.1.98"] and from_nyc.ecs is None, from_nyc.output
            assert dig(shipped.address, host, "A", "-b", "127.0.0.1").addresses == ["10.2.1.167"]

            # The DB is reloaded when the file changes, without a restart.
            write_db(str(db), {"10.1.0.0/16": {"datacenter": "us-buf"}})
            wait_for(lambda: dig(plain.address, host, "A", "+subnet=10.1.7.0/24").addresses == ["10.2.1.167"],
                     what="the new mmdb picked up: 10.1.7.0/24 -> 10.2.1.167", timeout=30,
                     watch=[plain.process], interval=0.2)
        finally:
            for server in (plain, shipped):
                server.stop()

    run_backend(settings, body)
