"""ExternalDNS-style Service names through the real apiserver, our backend and real CoreDNS."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.sidecar import DnsStack

ROOT = Path(__file__).resolve().parent.parent
ALPHA = "external-dns.alpha.kubernetes.io/"
pytestmark = pytest.mark.controlplane


def test_chapter_nginx_lb_answers_the_metallb_ip_follows_changes_and_goes_on_delete(
    control_plane: ControlPlane, dns_stack: DnsStack
) -> None:
    manifest = (ROOT / "tests/manifests/nginx-lb.yaml").read_text()
    control_plane.apply(manifest)
    try:
        api = control_plane.api_client()
        set_load_balancer(api, "Service", "default", "nginx-ext-dns", ["172.18.200.101"])
        dns_stack.wait_answer("nginx.foowidgets.k8s", ["172.18.200.101"])
        r = dns_stack.dig("nginx.foowidgets.k8s", "A")
        assert "aa" in r.flags and r.answer[0].ttl == 300, r.output  # no ttl annotation: the default
        control_plane.kubectl("annotate", "service", "nginx-ext-dns", f"{ALPHA}ttl=1m")
        control_plane.wait_for(lambda: dns_stack.dig("nginx.foowidgets.k8s").answer[0].ttl == 60,
                               what="the ttl annotation's 60 s", timeout=30)
        set_load_balancer(api, "Service", "default", "nginx-ext-dns", ["172.18.200.102"])
        dns_stack.wait_answer("nginx.foowidgets.k8s", ["172.18.200.102"])
        control_plane.kubectl("delete", "service", "nginx-ext-dns")
        dns_stack.wait_answer("nginx.foowidgets.k8s", "NXDOMAIN")
        metrics = dns_stack.backend.get("/metrics")[1]
        assert 'coredns_gslb_watch_events_total{kind="services",type="DELETED"}' in metrics
    finally:
        control_plane.kubectl("delete", "-f", "-", "--ignore-not-found", input=manifest)
