"""ExternalDNS's filter flags, one test each, through the real apiserver, our backend and real CoreDNS:
each shows a name the flag lets through (it answers) and one it keeps out (NXDOMAIN), as ExternalDNS's
documentation (docs/flags.md, docs/advanced/domain-filter.md, the ingress source) describes them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import pytest

from lab.kube import ControlPlane
from lab.lbpool import set_load_balancer
from lab.sidecar import DnsStack
from tests.test_sources_services import ALPHA

pytestmark = pytest.mark.controlplane
StackFactory = Callable[..., DnsStack]
ZONE = "foowidgets.k8s"


def _meta(name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> str:
    return (f"metadata:\n  name: {name}\n  namespace: {namespace}\n"
            f"  labels: {json.dumps(dict(labels))}\n  annotations: {json.dumps(dict(annotations))}\n")


def service(plane: ControlPlane, namespace: str, name: str, hostname: str, ip: str,
            labels: Mapping[str, str] = {}, annotations: Mapping[str, str] = {}) -> None:
    """A LoadBalancer Service with ExternalDNS's hostname annotation and a load balancer address."""
    meta = _meta(name, namespace, labels, {f"{ALPHA}hostname": hostname, **annotations})
    plane.apply(f"apiVersion: v1\nkind: Service\n{meta}"
                "spec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n")
    set_load_balancer(plane.api_client(), "Service", namespace, name, [ip])


def services(plane: ControlPlane, namespace: str, names: Mapping[str, str]) -> None:
    """One annotated LoadBalancer Service per name -> address."""
    for i, (name, ip) in enumerate(names.items()):
        service(plane, namespace, f"s{i}", name, ip)


def ingress(plane: ControlPlane, namespace: str, name: str, host: str, ip: str, class_name: str = "",
            annotations: Mapping[str, str] = {}) -> None:
    klass = f"  ingressClassName: {class_name}\n" if class_name else ""
    plane.apply(f"apiVersion: networking.k8s.io/v1\nkind: Ingress\n{_meta(name, namespace, {}, annotations)}"
                f"spec:\n{klass}  rules: [{{host: {host}}}]\n"
                "  defaultBackend: {service: {name: web, port: {number: 80}}}\n")
    set_load_balancer(plane.api_client(), "Ingress", namespace, name, [ip])


def check(plane: ControlPlane, stack: DnsStack, answers: Mapping[str, str], absent: list[str]) -> None:
    """Each name of `answers` answers its address; then (the backend has seen the objects) each
    `absent` name has none: NXDOMAIN, or NODATA where a kept name below it makes it exist."""
    for name, ip in answers.items():
        stack.wait_answer(name, [ip])
    for name in absent:
        r = stack.dig(name, "A")
        assert r.rcode in ("NXDOMAIN", "NOERROR") and not r.answer, f"{name} is not filtered out:\n{r.output}"


def test_domain_filter_keeps_the_domain_and_below_a_leading_dot_only_below(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    team, lead, other = (f"{p}-{namespace}.{ZONE}" for p in ("team", "lead", "other"))
    names = {f"app.{team}": "172.18.201.1", team: "172.18.201.2", f"app.{lead}": "172.18.201.3",
             lead: "172.18.201.4", f"app.{other}": "172.18.201.5"}
    services(control_plane, namespace, names)
    stack = dns_stack_factory(control_plane, flags=["--domain-filter", team, "--domain-filter", "." + lead])
    check(control_plane, stack, {n: names[n] for n in (f"app.{team}", team, f"app.{lead}")},
          absent=[lead, f"app.{other}"])


def test_exclude_domains_removes_a_domain_and_below_from_the_rest(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    staging, keep = f"staging-{namespace}.{ZONE}", f"keep-{namespace}.{ZONE}"
    services(control_plane, namespace, {staging: "172.18.202.1", f"app.{staging}": "172.18.202.2",
                                        keep: "172.18.202.3"})
    flags = [f"--domain-filter={ZONE}", f"--exclude-domains={staging}"]
    stack = dns_stack_factory(control_plane, flags=flags)
    check(control_plane, stack, {keep: "172.18.202.3"}, absent=[staging, f"app.{staging}"])


def test_regex_domain_filter_keeps_matching_names_and_overrides_domain_filter(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    api, web = f"api-{namespace}.{ZONE}", f"web-{namespace}.{ZONE}"
    services(control_plane, namespace, {api: "172.18.203.1", web: "172.18.203.2"})
    # --domain-filter names another domain: the regex mode ignores it (ExternalDNS: "overrides")
    stack = dns_stack_factory(control_plane, flags=[
        "--regex-domain-filter", rf"^api-{namespace}\.foowidgets\.k8s$", "--domain-filter", "example.org"])
    check(control_plane, stack, {api: "172.18.203.1"}, absent=[web])


def test_regex_domain_exclusion_wins_over_the_regex_filter_and_works_alone(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    temp, prod = f"temp-{namespace}.{ZONE}", f"prod-{namespace}.{ZONE}"
    services(control_plane, namespace, {temp: "172.18.204.1", prod: "172.18.204.2"})
    exclusion = ["--regex-domain-exclusion", "^temp-"]
    for flags in ([rf"--regex-domain-filter=-{namespace}\.foowidgets\.k8s$", *exclusion], exclusion):
        stack = dns_stack_factory(control_plane, flags=flags)
        check(control_plane, stack, {prod: "172.18.204.2"}, absent=[temp])


def test_annotation_filter_is_a_label_selector_over_annotations(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    blue, red, none = (f"{c}-{namespace}.{ZONE}" for c in ("blue", "red", "none"))
    service(control_plane, namespace, "blue", blue, "172.18.205.1", annotations={"example.com/team": "blue"})
    service(control_plane, namespace, "red", red, "172.18.205.2", annotations={"example.com/team": "red"})
    service(control_plane, namespace, "none", none, "172.18.205.3")
    flags = ["--annotation-filter", "example.com/team in (blue, green)"]
    stack = dns_stack_factory(control_plane, flags=flags)
    check(control_plane, stack, {blue: "172.18.205.1"}, absent=[red, none])


def test_label_filter_selects_by_labels_and_follows_a_label_edit(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    public, private = f"public-{namespace}.{ZONE}", f"private-{namespace}.{ZONE}"
    service(control_plane, namespace, "public", public, "172.18.206.1", labels={"dns": "public"})
    service(control_plane, namespace, "private", private, "172.18.206.2", labels={"dns": "private"})
    stack = dns_stack_factory(control_plane, flags=["--label-filter", "dns=public"])
    check(control_plane, stack, {public: "172.18.206.1"}, absent=[private])
    control_plane.kubectl("-n", namespace, "label", "service", "public", "dns=private", "--overwrite")
    control_plane.kubectl("-n", namespace, "label", "service", "private", "dns=public", "--overwrite")
    stack.wait_answer(private, ["172.18.206.2"])
    stack.wait_answer(public, "NXDOMAIN")


def test_ingress_class_matches_class_name_or_the_legacy_annotation(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    by_name, by_annotation, internal, unclassed = (
        f"{p}-{namespace}.{ZONE}" for p in ("byname", "byannotation", "internal", "unclassed"))
    ingress(control_plane, namespace, "byname", by_name, "172.18.207.1", class_name="public")
    ingress(control_plane, namespace, "byannotation", by_annotation, "172.18.207.2",
            annotations={"kubernetes.io/ingress.class": "public"})
    ingress(control_plane, namespace, "internal", internal, "172.18.207.3", class_name="internal")
    ingress(control_plane, namespace, "unclassed", unclassed, "172.18.207.4")
    stack = dns_stack_factory(control_plane, flags=["--ingress-class", "public", "--ingress-class", "other"])
    check(control_plane, stack, {by_name: "172.18.207.1", by_annotation: "172.18.207.2"},
          absent=[internal, unclassed])


def test_source_reads_only_the_named_sources(
    control_plane: ControlPlane, dns_stack_factory: StackFactory, namespace: str
) -> None:
    from_ingress, from_service = f"ing-{namespace}.{ZONE}", f"svc-{namespace}.{ZONE}"
    ingress(control_plane, namespace, "web", from_ingress, "172.18.208.1")
    service(control_plane, namespace, "web", from_service, "172.18.208.2")
    only_ingress = dns_stack_factory(control_plane, flags=["--source", "ingress"])
    check(control_plane, only_ingress, {from_ingress: "172.18.208.1"}, absent=[from_service])
    both = dns_stack_factory(control_plane, flags=["--source", "ingress,service"])
    check(control_plane, both, {from_ingress: "172.18.208.1", from_service: "172.18.208.2"}, absent=[])
