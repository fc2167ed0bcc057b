"""Edge delegation against a real BIND9: co-owned NS set, own glue, leave, TSIG from a file or a Secret.

What a person sees is what `dig @edge` answers, so every check reads the edge with dig.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from backend import edge
from backend.config import GslbZone, Settings
from backend.edge import tsig
from backend.model import Endpoint, ObjectRef, Store, Target
from lab.bind9 import Bind9
from lab.dig import dig
from lab.kube import ControlPlane
from lab.lbpool import LbPool
from lab.proc import PYTHON, ROOT, wait_for
from lab.sidecar import Backend, DnsStack

ZONE = GslbZone("gb.foowidgets.k8s", "foowidgets.k8s")
BUF, NYC = "gslb-ns-us-buf-gb.foowidgets.k8s", "gslb-ns-us-nyc-gb.foowidgets.k8s"
DELEGATION = f"delegation {ZONE.edge_zone}"
NGINX_LB = ROOT / "lab" / "manifests" / "nginx-lb.yaml"


def cluster(named: Bind9, geotag: str, address: str, **overrides: object) -> Settings:
    settings = Settings(gslb_zones=(ZONE,), edge_dns_servers=(named.address,), cluster_geotag=geotag,
                        ext_gslb_clusters_geotags=("us-buf", "us-nyc"), nameserver_address=address,
                        tsig_key_file=str(named.key_file))
    return replace(settings, **overrides)  # type: ignore[arg-type]


def sync_once(settings: Settings) -> edge.EdgePublisher:
    publisher = edge.publisher(settings)
    assert publisher is not None
    asyncio.run(publisher.sync_once())
    return publisher


def ns_set(named: Bind9) -> list[str]:
    """The delegation as the edge hands it out (a referral: NS in the authority section)."""
    referral = dig(named.address, ZONE.dns_zone, "NS", "+norecurse")
    return sorted(r.data for r in referral.authority if r.rtype == "NS")


def glue(named: Bind9, name: str, rtype: str = "A") -> list[str]:
    return sorted(dig(named.address, name, rtype, "+norecurse").values(rtype))


def serial(named: Bind9) -> str:
    return dig(named.address, named.zone, "SOA").values("SOA")[0].split()[2]


def leave(settings: Settings, *extra: str) -> subprocess.CompletedProcess[str]:
    """`coredns-gslb edge leave` with the flags `serve` would get."""
    argv = [str(PYTHON), "-m", "backend.cli", "edge", "leave",
            "--dns-zone", ",".join(z.dns_zone for z in settings.gslb_zones),
            "--edge-dns-zone", ",".join(z.edge_zone for z in settings.gslb_zones),
            "--edge-dns-servers", ",".join(settings.edge_dns_servers),
            "--cluster-geo-tag", settings.cluster_geotag, "--nameserver-address", settings.nameserver_address,
            *(["--tsig-key-file", settings.tsig_key_file] if settings.tsig_key_file else []), *extra]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_clusters_co_own_the_ns_set_restart_changes_nothing_and_leave_removes_only_own(bind9: Bind9) -> None:
    buf = cluster(bind9, "us-buf", "127.0.0.11")
    nyc = cluster(bind9, "us-nyc", "127.0.0.12,::12")
    sync_once(buf)
    sync_once(nyc)
    assert ns_set(bind9) == [BUF + ".", NYC + "."]
    assert glue(bind9, BUF) == ["127.0.0.11"]
    assert glue(bind9, NYC) == ["127.0.0.12"] and glue(bind9, NYC, "AAAA") == ["::12"]

    before = serial(bind9)
    for settings in (buf, nyc):
        publisher = sync_once(settings)  # a restarted updater: a new process, same settings
        assert publisher.status[DELEGATION].ok and publisher.status[DELEGATION].changed_total == 0
    assert serial(bind9) == before, "a restart must not touch the edge zone"

    moved = replace(buf, nameserver_address="127.0.0.13")
    sync_once(moved)
    assert glue(bind9, BUF) == ["127.0.0.13"], "our own stale glue is replaced"

    run = leave(moved)
    assert run.returncode == 0, run.stderr
    assert ns_set(bind9) == [NYC + "."]
    assert glue(bind9, BUF) == []
    assert glue(bind9, NYC) == ["127.0.0.12"] and glue(bind9, NYC, "AAAA") == ["::12"]


def test_drift_is_repaired_without_touching_other_records(bind9: Bind9) -> None:
    import dns.query
    import dns.tsig
    import dns.update

    buf = cluster(bind9, "us-buf", "127.0.0.11")
    sync_once(buf)
    vandal = dns.update.UpdateMessage(ZONE.edge_zone, keyring=bind9.keyring(),
                                      keyalgorithm=dns.tsig.HMAC_SHA256)
    vandal.delete(ZONE.dns_zone + ".", "NS", BUF + ".")
    vandal.add("other." + ZONE.edge_zone + ".", 60, "A", "192.0.2.1")
    dns.query.tcp(vandal, bind9.host, port=bind9.port, timeout=5)
    assert ns_set(bind9) == []
    publisher = sync_once(buf)
    assert publisher.status[DELEGATION].changed_total == 1
    assert ns_set(bind9) == [BUF + "."]
    assert glue(bind9, "other." + ZONE.edge_zone) == ["192.0.2.1"]


@pytest.mark.parametrize(("key", "rcode"), [("wrong", "NOTAUTH/BADSIG"), ("none", "REFUSED")])
def test_a_rejected_update_is_reported_with_the_edge_rcode(bind9: Bind9, tmp_path: Path, key: str,
                                                           rcode: str) -> None:
    if key == "wrong":
        bad = tmp_path / "wrong.key"
        other = base64.b64encode(b"0" * 32).decode()
        bad.write_text(f'key "{bind9.key_name}" {{\n\talgorithm hmac-sha256;\n\tsecret "{other}";\n}};\n')
        settings = cluster(bind9, "us-buf", "127.0.0.11", tsig_key_file=str(bad))
    else:
        settings = cluster(bind9, "us-buf", "127.0.0.11", tsig_key_file=None)
    publisher = sync_once(settings)
    status = publisher.status[DELEGATION]
    assert not status.ok and status.rcode == rcode
    assert rcode in publisher.readiness()
    assert ns_set(bind9) == []
    run = leave(settings)
    assert run.returncode == 0, "nothing of ours is there, so leaving has nothing to send"


def test_key_file_forms(tmp_path: Path) -> None:
    secret = base64.b64encode(b"k" * 32).decode()
    key = tsig.parse_key_file(f'# made by tsig-keygen\nkey "edge-key" {{\n algorithm hmac-sha512;\n'
                              f' secret "{secret}";\n}};\n')
    assert (key.name.to_text(), key.algorithm.to_text()) == ("edge-key.", "hmac-sha512.")
    for text in ("", 'key "k" { algorithm hmac-sha256; };', 'key "k" { secret "not base64!"; };'):
        with pytest.raises(tsig.TsigKeyError):
            tsig.parse_key_file(text)
    with pytest.raises(tsig.TsigKeyError, match=r"missing\.key"):
        tsig.load(Settings(tsig_key_file=str(tmp_path / "missing.key")))


def test_key_from_a_kubernetes_secret(control_plane: ControlPlane, namespace: str, bind9: Bind9) -> None:
    control_plane.kubectl("create", "secret", "generic", "edge-tsig", "-n", namespace,
                          f"--from-literal=name={bind9.key_name}", f"--from-literal=secret={bind9.secret}",
                          "--from-literal=algorithm=hmac-sha256")
    settings = cluster(bind9, "us-buf", "127.0.0.11", tsig_key_file=None,
                       kubeconfig=str(control_plane.kubeconfig), tsig_secret=f"{namespace}/edge-tsig")
    publisher = sync_once(settings)
    assert publisher.status[DELEGATION].ok, publisher.readiness()
    assert ns_set(bind9) == [BUF + "."]
    with pytest.raises(tsig.TsigKeyError, match="lacks secret"):
        control_plane.kubectl("create", "secret", "generic", "half", "-n", namespace, "--from-literal=name=x")
        tsig.load(replace(settings, tsig_secret=f"{namespace}/half"))


def names_publisher(named: Bind9, geotag: str, store: Store) -> edge.EdgePublisher:
    publisher = edge.publisher(cluster(named, geotag, "", txt_owner_id=f"{geotag}-dns"), store)
    assert publisher is not None and [j.kind for j in publisher.jobs] == ["names"]
    return publisher


def service(store: Store, name: str, host: str, *targets: str, rtype: str = "A") -> None:
    ref = ObjectRef("Service", "default", name)
    endpoint = Endpoint(host, rtype, tuple(Target(t) for t in targets), 60, ref)
    store.replace(f"service/default/{name}", [endpoint] if targets else [])


def txt(named: Bind9, name: str) -> list[str]:
    return dig(named.address, name, "TXT", "+norecurse").values("TXT")


def test_names_go_to_the_edge_with_externaldns_ownership_and_only_owned_records_change(bind9: Bind9) -> None:
    import dns.query
    import dns.tsig
    import dns.update

    others = dns.update.UpdateMessage(ZONE.edge_zone, keyring=bind9.keyring(),
                                      keyalgorithm=dns.tsig.HMAC_SHA256)
    others.add("manual.foowidgets.k8s.", 60, "A", "192.0.2.7")  # hand-made, no marker
    others.add("taken.foowidgets.k8s.", 60, "A", "192.0.2.8")  # a real ExternalDNS elsewhere owns it
    others.add("a-taken.foowidgets.k8s.", 60, "TXT",
               '"heritage=external-dns,external-dns/owner=other,external-dns/resource=service/x/y"')
    dns.query.tcp(others, bind9.host, port=bind9.port, timeout=5)

    buf_store, nyc_store = Store(), Store()
    service(buf_store, "nginx-ext-dns", "nginx.foowidgets.k8s", "172.18.200.101")
    service(buf_store, "manual", "manual.foowidgets.k8s", "172.18.200.102")
    service(buf_store, "taken", "taken.foowidgets.k8s", "172.18.200.103")
    service(buf_store, "v6", "v6.foowidgets.k8s", "2001:db8::101", rtype="AAAA")
    service(buf_store, "alias", "www.foowidgets.k8s", "nginx.foowidgets.k8s", rtype="CNAME")
    service(buf_store, "gslb-ingress", "fe.gb.foowidgets.k8s", "10.2.1.167")  # delegated: never at the edge
    service(nyc_store, "nginx-ext-dns", "nginx.foowidgets.k8s", "172.18.201.101")
    service(nyc_store, "api", "api.foowidgets.k8s", "172.18.201.102")
    buf, nyc = names_publisher(bind9, "us-buf", buf_store), names_publisher(bind9, "us-nyc", nyc_store)
    assert asyncio.run(buf.sync_once()) and asyncio.run(nyc.sync_once())

    assert glue(bind9, "nginx.foowidgets.k8s") == ["172.18.200.101"], "first owner keeps it"
    assert txt(bind9, "a-nginx.foowidgets.k8s") == [
        '"heritage=external-dns,external-dns/owner=us-buf-dns,external-dns/resource=service/default/nginx-ext-dns"']
    assert glue(bind9, "api.foowidgets.k8s") == ["172.18.201.102"]
    assert glue(bind9, "v6.foowidgets.k8s", "AAAA") == ["2001:db8::101"]
    assert dig(bind9.address, "www.foowidgets.k8s", "CNAME", "+norecurse").values("CNAME") == [
        "nginx.foowidgets.k8s."]
    assert glue(bind9, "manual.foowidgets.k8s") == ["192.0.2.7"]
    assert txt(bind9, "a-manual.foowidgets.k8s") == []
    assert glue(bind9, "taken.foowidgets.k8s") == ["192.0.2.8"]
    assert glue(bind9, "fe.gb.foowidgets.k8s") == []

    service(buf_store, "nginx-ext-dns", "nginx.foowidgets.k8s", "172.18.200.111")
    service(buf_store, "v6", "v6.foowidgets.k8s")
    assert asyncio.run(buf.sync_once(force=False))
    assert glue(bind9, "nginx.foowidgets.k8s") == ["172.18.200.111"]
    assert glue(bind9, "v6.foowidgets.k8s", "AAAA") == [] and txt(bind9, "aaaa-v6.foowidgets.k8s") == []
    assert glue(bind9, "api.foowidgets.k8s") == ["172.18.201.102"], "nyc's name is not buf's to touch"

    service(buf_store, "alias", "www.foowidgets.k8s", "172.18.200.120")  # the CNAME became an address
    assert asyncio.run(buf.sync_once(force=False))
    assert dig(bind9.address, "www.foowidgets.k8s", "CNAME", "+norecurse").values("CNAME") == []
    assert glue(bind9, "www.foowidgets.k8s") == ["172.18.200.120"]
    assert txt(bind9, "cname-www.foowidgets.k8s") == []
    assert "owner=us-buf-dns" in txt(bind9, "a-www.foowidgets.k8s")[0]
    before = serial(bind9)
    assert asyncio.run(buf.sync_once()) and asyncio.run(nyc.sync_once())
    assert serial(bind9) == before, "nothing to do is nothing sent"


def test_names_of_a_serving_cluster_resolve_at_the_edge(
        control_plane_factory: Callable[..., ControlPlane], bind9: Bind9,
        backend_factory: Callable[..., Backend], lbpool_factory: Callable[..., LbPool]) -> None:
    """The chapter's first half through the enterprise DNS: nginx-lb.yaml, MetalLB's address, dig @edge."""
    plane = control_plane_factory("mc-us-buf")
    lbpool_factory(plane, services=["172.18.200.101"], fixed={"default/nginx-ext-dns": "172.18.200.101"})
    plane.apply(NGINX_LB.read_text())
    try:
        backend_factory(plane, "--zones", ZONE.edge_zone, "--dns-zone", ZONE.dns_zone, "--edge-dns-zone",
                        ZONE.edge_zone, "--edge-dns-servers", bind9.address, "--cluster-geo-tag", "us-buf",
                        "--tsig-key-file", str(bind9.key_file))
        wait_for(lambda: glue(bind9, "nginx.foowidgets.k8s") == ["172.18.200.101"],
                 what="nginx.foowidgets.k8s at the edge", timeout=60)
        assert "owner=us-buf" in txt(bind9, "a-nginx.foowidgets.k8s")[0]
    finally:
        plane.kubectl("delete", "-f", "-", input=NGINX_LB.read_text(), check=False)


def test_a_refusing_edge_shows_on_readyz_and_metrics_and_dns_keeps_answering(
        control_plane_factory: Callable[..., ControlPlane], bind9: Bind9,
        dns_stack_factory: Callable[..., DnsStack], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_text(f'key "{bind9.key_name}" {{ algorithm hmac-sha256; secret "{"A" * 44}"; }};\n')
    stack = dns_stack_factory(control_plane_factory("mc-us-buf"), (ZONE.dns_zone,), [
        "--dns-zone", ZONE.dns_zone, "--edge-dns-zone", ZONE.edge_zone, "--edge-dns-servers", bind9.address,
        "--cluster-geo-tag", "us-buf", "--nameserver-address", "127.0.0.11", "--tsig-key-file", str(wrong)])
    wait_for(lambda: "rcode NOTAUTH/BADSIG" in stack.backend.get("/readyz")[1], what="BADSIG on /readyz",
             timeout=30, watch=[stack.backend.process])
    assert stack.backend.get("/readyz")[0] == 200, "a refusing edge never makes the backend unready"
    metrics = stack.backend.get("/metrics")[1]
    assert 'coredns_gslb_edge_syncs_total{kind="delegation",rcode="NOTAUTH/BADSIG",zone="foowidgets.k8s"}' \
        in metrics
    assert stack.dig(ZONE.dns_zone, "SOA").rcode == "NOERROR"
    assert "NOTAUTH/BADSIG" in stack.backend.process.log.read_text()
    assert ns_set(bind9) == []


def test_several_load_balanced_zones_are_delegated_in_one_edge_zone(bind9: Bind9) -> None:
    second = GslbZone("apps.foowidgets.k8s", "foowidgets.k8s")
    settings = cluster(bind9, "us-buf", "127.0.0.11", gslb_zones=(ZONE, second))
    sync_once(settings)
    assert ns_set(bind9) == [BUF + "."]
    apps = dig(bind9.address, second.dns_zone, "NS", "+norecurse")
    assert [r.data for r in apps.authority if r.rtype == "NS"] == ["gslb-ns-us-buf-apps.foowidgets.k8s."]
    assert glue(bind9, "gslb-ns-us-buf-apps.foowidgets.k8s") == ["127.0.0.11"]
    assert leave(settings).returncode == 0
    assert ns_set(bind9) == [] and glue(bind9, "gslb-ns-us-buf-apps.foowidgets.k8s") == []
