"""Pure unit tests of the ExternalDNS-style sources (no API); the real path is in tests/test_sources_*.py."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.sources import annotations as ann
from backend.sources import dnsendpoints, ingresses, services

ZONES = ("foowidgets.k8s",)
ALPHA = "external-dns.alpha.kubernetes.io/"
NEW = "external-dns.kubernetes.io/"


def svc(
    annotations: dict[str, str],
    type_: str = "LoadBalancer",
    lb: list[dict[str, str]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "web", "namespace": "default", "uid": "u1", "annotations": annotations},
        "spec": {"type": type_, **spec},
        "status": {"loadBalancer": {"ingress": lb or []}},
    }


def records(eps: list) -> dict[tuple[str, str], tuple[list[str], int | None]]:
    return {(e.name, e.rtype): ([t.value for t in e.targets], e.ttl) for e in eps}


def test_chapter_service_answers_its_lb_ip() -> None:
    eps, problems = services.endpoints(
        svc({ALPHA + "hostname": "nginx.foowidgets.k8s"}, lb=[{"ip": "172.18.200.101"}]), [], ZONES
    )
    assert records(eps) == {("nginx.foowidgets.k8s", "A"): (["172.18.200.101"], None)}
    assert not problems
    assert eps[0].source is not None and str(eps[0].source) == "service/default/web"


def test_both_prefixes_trailing_dots_wildcards_ipv6_and_hostname_status() -> None:
    s = svc(
        {
            ALPHA + "hostname": "a.foowidgets.k8s., *.b.foowidgets.k8s",
            NEW + "hostname": "C.foowidgets.k8s",
            NEW + "ttl": "1m30s",
        },
        lb=[{"ip": "2001:db8::1"}, {"ip": "10.0.0.1"}],
    )
    got = records(services.endpoints(s, [], ZONES)[0])
    for name in ("a.foowidgets.k8s", "*.b.foowidgets.k8s", "c.foowidgets.k8s"):
        assert got[(name, "AAAA")] == (["2001:db8::1"], 90)
        assert got[(name, "A")] == (["10.0.0.1"], 90)
    s = svc({ALPHA + "hostname": "h.foowidgets.k8s"}, lb=[{"hostname": "lb.example.com"}])
    assert records(services.endpoints(s, [], ZONES)[0]) == {
        ("h.foowidgets.k8s", "CNAME"): (["lb.example.com."], None)
    }


def test_external_ips_win_and_target_override() -> None:
    s = svc({ALPHA + "hostname": "x.foowidgets.k8s"}, lb=[{"ip": "10.0.0.1"}], externalIPs=["192.0.2.7"])
    assert records(services.endpoints(s, [], ZONES)[0]) == {("x.foowidgets.k8s", "A"): (["192.0.2.7"], None)}
    s["metadata"]["annotations"][ALPHA + "target"] = "192.0.2.9,2001:db8::9"
    assert records(services.endpoints(s, [], ZONES)[0]) == {
        ("x.foowidgets.k8s", "A"): (["192.0.2.9"], None),
        ("x.foowidgets.k8s", "AAAA"): (["2001:db8::9"], None),
    }


def test_external_name_internal_hostname_and_plain_clusterip() -> None:
    s = svc({ALPHA + "hostname": "e.foowidgets.k8s"}, "ExternalName", externalName="db.example.org")
    assert records(services.endpoints(s, [], ZONES)[0]) == {
        ("e.foowidgets.k8s", "CNAME"): (["db.example.org."], None)
    }
    s = svc(
        {ALPHA + "hostname": "pub.foowidgets.k8s", ALPHA + "internal-hostname": "int.foowidgets.k8s"},
        "ClusterIP",
        clusterIP="10.96.0.10",
        clusterIPs=["10.96.0.10"],
    )
    assert records(services.endpoints(s, [], ZONES)[0]) == {
        ("int.foowidgets.k8s", "A"): (["10.96.0.10"], None)
    }


def slice_(*endpoints: tuple[str, bool | None, str]) -> dict[str, Any]:
    return {
        "addressType": "IPv4",
        "endpoints": [
            {
                "addresses": [a],
                "conditions": {} if ready is None else {"ready": ready},
                **({"hostname": h} if h else {}),
            }
            for a, ready, h in endpoints
        ],
    }


def test_headless_ready_addresses_and_pod_hostnames() -> None:
    s = svc({ALPHA + "hostname": "hl.foowidgets.k8s"}, "ClusterIP", clusterIP="None")
    slices = [slice_(("10.244.0.2", True, "web-0"), ("10.244.0.3", None, ""), ("10.244.0.4", False, "web-2"))]
    got = records(services.endpoints(s, slices, ZONES)[0])
    assert got == {
        ("hl.foowidgets.k8s", "A"): (["10.244.0.2", "10.244.0.3"], None),
        ("web-0.hl.foowidgets.k8s", "A"): (["10.244.0.2"], None),
    }
    s["spec"]["publishNotReadyAddresses"] = True
    assert records(services.endpoints(s, slices, ZONES)[0])[("hl.foowidgets.k8s", "A")][0] == [
        "10.244.0.2",
        "10.244.0.3",
        "10.244.0.4",
    ]


def test_bad_pieces_are_skipped_and_reported_rest_served() -> None:
    s = svc(
        {
            ALPHA + "hostname": "ok.foowidgets.k8s,evil.example.com,bad_name!.foowidgets.k8s",
            ALPHA + "ttl": "soon",
            ALPHA + "target": "10.0.0.1,10.0.0.256",
        },
        lb=[],
    )
    eps, problems = services.endpoints(s, [], ZONES)
    assert records(eps) == {("ok.foowidgets.k8s", "A"): (["10.0.0.1"], None)}
    assert sorted(p.reason for p in problems) == [
        "InvalidHostname",
        "InvalidTTL",
        "InvalidTarget",
        "OutsideZones",
    ]


@pytest.mark.parametrize(
    ("raw", "want"),
    [("300", 300), ("0", None), ("1m30s", 90), ("1.5h", 5400), ("2h45m", 9900), ("500ms", None)],
)
def test_ttl_forms(raw: str, want: int | None) -> None:
    assert ann.ttl({NEW + "ttl": raw}) == (want, [])


@pytest.mark.parametrize("raw", ["-5", "abc", "1x", "", "99999999999"])
def test_ttl_rejects(raw: str) -> None:
    value, problems = ann.ttl({ALPHA + "ttl": raw})
    assert value is None and problems[0].reason == "InvalidTTL"


def test_ingress_rules_tls_annotation_and_gslb_zone_left_to_the_engine() -> None:
    ing = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": "i",
            "namespace": "demo",
            "annotations": {ALPHA + "hostname": "ann.foowidgets.k8s"},
        },
        "spec": {
            "rules": [{"host": "r.foowidgets.k8s"}, {"host": "fe.gb.foowidgets.k8s"}, {}],
            "tls": [{"hosts": ["t.foowidgets.k8s", "r.foowidgets.k8s"]}],
        },
        "status": {"loadBalancer": {"ingress": [{"ip": "10.2.1.167"}]}},
    }
    eps, problems = ingresses.endpoints(ing, ("foowidgets.k8s", "gb.foowidgets.k8s"), ("gb.foowidgets.k8s",))
    assert sorted(records(eps)) == [
        (n, "A") for n in ("ann.foowidgets.k8s", "r.foowidgets.k8s", "t.foowidgets.k8s")
    ]
    assert not problems
    ing["metadata"]["annotations"][ALPHA + "ingress-hostname-source"] = "annotation-only"
    assert sorted(records(ingresses.endpoints(ing, ZONES)[0])) == [("ann.foowidgets.k8s", "A")]


def test_dnsendpoint_every_type_and_bad_entries() -> None:
    obj = {
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {
            "endpoints": [
                {
                    "dnsName": "a.foowidgets.k8s",
                    "recordType": "A",
                    "targets": ["192.0.2.1", "2001:db8::1"],
                    "recordTTL": 60,
                },
                {"dnsName": "a.foowidgets.k8s", "recordType": "AAAA", "targets": ["2001:db8::1"]},
                {"dnsName": "c.foowidgets.k8s", "recordType": "CNAME", "targets": ["a.foowidgets.k8s"]},
                {"dnsName": "t.foowidgets.k8s", "recordType": "TXT", "targets": ['"quoted"', 'say "hi"']},
                {
                    "dnsName": "_http._tcp.foowidgets.k8s",
                    "recordType": "SRV",
                    "targets": ["10 5 80 a.foowidgets.k8s"],
                },
                {"dnsName": "foowidgets.k8s", "recordType": "MX", "targets": ["10 mail.foowidgets.k8s."]},
                {"dnsName": "sub.foowidgets.k8s", "recordType": "NS", "targets": ["ns1.example.net"]},
                {"dnsName": "x.foowidgets.k8s", "recordType": "PTR", "targets": ["a"]},
                {"dnsName": "out.example.com", "recordType": "A", "targets": ["192.0.2.2"]},
            ]
        },
    }
    eps, problems = dnsendpoints.endpoints(obj, ZONES)
    assert records(eps) == {
        ("a.foowidgets.k8s", "A"): (["192.0.2.1"], 60),
        ("a.foowidgets.k8s", "AAAA"): (["2001:db8::1"], None),
        ("c.foowidgets.k8s", "CNAME"): (["a.foowidgets.k8s."], None),
        ("t.foowidgets.k8s", "TXT"): (['"quoted"', '"say \\"hi\\""'], None),
        ("_http._tcp.foowidgets.k8s", "SRV"): (["10 5 80 a.foowidgets.k8s."], None),
        ("foowidgets.k8s", "MX"): (["10 mail.foowidgets.k8s."], None),
        ("sub.foowidgets.k8s", "NS"): (["ns1.example.net."], None),
    }
    assert sorted(p.reason for p in problems) == ["InvalidTarget", "OutsideZones", "UnsupportedRecordType"]


def test_controller_annotation_hands_the_object_to_another_controller() -> None:
    s = svc({ALPHA + "hostname": "x.foowidgets.k8s", ALPHA + "controller": "other"}, lb=[{"ip": "10.0.0.1"}])
    assert services.endpoints(s, [], ZONES) == ([], [])
    s["metadata"]["annotations"][ALPHA + "controller"] = "dns-controller"
    assert len(services.endpoints(s, [], ZONES)[0]) == 1


def _typed_by_ipaddress(value: str) -> tuple[str, str] | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    return ("AAAA" if ip.version == 6 else "A"), str(ip)


# Leading zeros, hex, signs, blanks and a non-ASCII digit (ARABIC-INDIC ONE): none of them an IPv4 octet.
_OCTET = st.one_of(st.integers(0, 300).map(str),
                   st.sampled_from(["00", "01", "010", "0x1", " 1", "1 ", "", "-1", "\u0661"]))


@given(st.one_of(
    st.lists(_OCTET, min_size=1, max_size=5).map(".".join),
    st.text(alphabet="0123456789abcdef.:%x ", max_size=20),
    st.ip_addresses().map(str),
))
def test_a_target_is_typed_as_ipaddress_types_it(value: str) -> None:
    """The IPv4 fast path of typed_targets (model.typed_address) agrees with ipaddress on what is an
    address and its text."""
    by_type, problems = ann.typed_targets([value], "test")
    want = _typed_by_ipaddress(value.strip())
    if want is not None:
        assert by_type == {want[0]: [want[1]]} and not problems
    else:
        assert "A" not in by_type and "AAAA" not in by_type
