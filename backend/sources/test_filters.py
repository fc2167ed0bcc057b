"""ExternalDNS's filter semantics as pure functions (the integration tests are tests/test_filters.py)."""

from __future__ import annotations

import pytest

from backend.config import from_args
from backend.sources.filters import (
    DomainFilter,
    ObjectFilter,
)


@pytest.mark.parametrize(("include", "exclude", "name", "want"), [
    (["example.com"], [], "example.com", True),
    (["example.com"], [], "a.b.example.com.", True),
    (["example.com"], [], "badexample.com", False),
    ([".example.com"], [], "example.com", False),  # leading dot: subdomains only
    ([".example.com"], [], "a.example.com", True),
    (["example.com"], ["staging.example.com"], "x.staging.example.com", False),
    ([], ["staging.example.com"], "prod.example.com", True),
    ([], [], "anything.org", True),
])
def test_plain_domain_filter(include: list[str], exclude: list[str], name: str, want: bool) -> None:
    assert DomainFilter.of(include, exclude).match(name) is want


def test_regex_modes_follow_externaldns_docs() -> None:
    both = DomainFilter.of(["ignored.org"], regex=r"(?:foo|bar)\.org$",
                           regex_exclusion=r"^example\.(?:foo|bar)\.org$")
    assert [both.match(n) for n in ("foo.org", "a.example.foo.org", "example.foo.org", "x.com")] == [
        True, True, False, False]
    alone = DomainFilter.of(regex_exclusion="^temp-")
    assert alone.match("prod.example.com") and not alone.match("temp-1.example.com")


def test_ingress_class_name_wins_over_the_annotation() -> None:
    f = ObjectFilter(ingress_classes=("public",))
    ann = {"kubernetes.io/ingress.class": "public"}
    assert f.admits({"kind": "Ingress", "metadata": {"annotations": ann}})
    named = {"kind": "Ingress", "metadata": {"annotations": ann}, "spec": {"ingressClassName": "x"}}
    assert not f.admits(named)
    assert not f.admits({"kind": "Ingress", "metadata": {}})
    assert f.admits({"kind": "Service", "metadata": {}})  # the class only narrows Ingresses


def test_flags_resolve_and_bad_ones_stop_start_up(capsys: pytest.CaptureFixture[str]) -> None:
    s = from_args(["--domain-filter", "a.com,b.com", "--domain-filter=c.com", "--source", "ingress",
                   "--label-filter", "x=y"])
    assert s.domain_filter == ("a.com", "b.com", "c.com") and s.sources == ("ingress",)
    for bad in (["--source", "pods"], ["--regex-domain-filter", "("], ["--label-filter", "a in b"],
                ["--ingress-class", "x", "--annotation-filter", "kubernetes.io/ingress.class=x"]):
        with pytest.raises(SystemExit):
            from_args(bad)
    assert "mutually exclusive" in capsys.readouterr().err
