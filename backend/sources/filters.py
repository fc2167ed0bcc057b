"""ExternalDNS's source filters as pure functions: which objects a source reads, which names it keeps.

- `ObjectFilter`: `--label-filter` (over labels) and `--annotation-filter` (over annotations), both
  Kubernetes label selectors (`selectors.py`), and `--ingress-class` for Ingresses.
- `ingress_class_matches(ing, classes)`: `--ingress-class` (ExternalDNS v0.22: a non-empty
  spec.ingressClassName must be in the list, else the legacy `kubernetes.io/ingress.class` annotation).
- `DomainFilter`: `--domain-filter`/`--exclude-domains` (plain: the domain and its subdomains; a
  leading dot means subdomains only) or, when either regex is set, `--regex-domain-filter` /
  `--regex-domain-exclusion` (exclusion checked first; exclusion alone accepts everything else; the
  plain lists are then ignored), on the lowercase name without the trailing dot.
- `SourceFilter.apply(derive, obj)`: all of them around a source's pure derive function
  (`from_settings(settings)` builds it); every ExternalDNS-style source, the gateway routes included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backend.config import INGRESS_CLASS_ANNOTATION, Settings
from backend.kube.selectors import Selector, parse
from backend.model import Endpoint, in_zone
from backend.sources.annotations import Problem


def ingress_class_matches(ing: Mapping[str, Any], classes: Sequence[str]) -> bool:
    """ExternalDNS's --ingress-class: no list admits every Ingress."""
    if not classes:
        return True
    name = (ing.get("spec") or {}).get("ingressClassName")
    if name:
        return name in classes
    annotations = (ing.get("metadata") or {}).get("annotations") or {}
    return annotations.get(INGRESS_CLASS_ANNOTATION) in classes


def _domains(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(d for d in (v.strip().rstrip(".").lower() for v in values) if d)


def _plain_match(filters: Sequence[str], name: str) -> bool:
    """ExternalDNS's matchFilter: ".x" = strictly below x; "x" = x itself or below it."""
    for f in filters:
        if f.startswith("."):
            if name.endswith(f):
                return True
        elif in_zone(name, f):
            return True
    return False


@dataclass(frozen=True, slots=True)
class DomainFilter:
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    regex: re.Pattern[str] | None = None
    regex_exclusion: re.Pattern[str] | None = None

    @classmethod
    def of(cls, include: Sequence[str] = (), exclude: Sequence[str] = (), regex: str = "",
           regex_exclusion: str = "") -> DomainFilter:
        """re.error for a bad expression (config.py turns it into a usage error)."""
        return cls(_domains(include), _domains(exclude), re.compile(regex) if regex else None,
                   re.compile(regex_exclusion) if regex_exclusion else None)

    @property
    def configured(self) -> bool:
        return bool(self.include or self.exclude or self.regex or self.regex_exclusion)

    def match(self, name: str) -> bool:
        name = name.rstrip(".").lower()
        if self.regex is not None or self.regex_exclusion is not None:
            if self.regex_exclusion is not None and self.regex_exclusion.search(name):
                return False
            return self.regex is None or bool(self.regex.search(name))
        return (not self.include or _plain_match(self.include, name)) and not _plain_match(self.exclude, name)


@dataclass(frozen=True, slots=True)
class ObjectFilter:
    """--label-filter, --annotation-filter and (for Ingresses) --ingress-class over one object."""

    labels: Selector = field(default_factory=Selector)
    annotations: Selector = field(default_factory=Selector)
    ingress_classes: tuple[str, ...] = ()

    def admits(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return (self.labels.matches(meta.get("labels")) and self.annotations.matches(meta.get("annotations"))
                and (obj.get("kind") != "Ingress" or ingress_class_matches(obj, self.ingress_classes)))


Derived = tuple[list[Endpoint], list[Problem]]


@dataclass(frozen=True, slots=True)
class SourceFilter:
    """Every ExternalDNS filter a source applies, as one step around its pure derive function."""

    objects: ObjectFilter = field(default_factory=ObjectFilter)
    domains: DomainFilter = field(default_factory=DomainFilter)

    def apply(self, derive: Callable[[Any], Derived], obj: Mapping[str, Any]) -> Derived:
        """Nothing for an object the filters leave out; else only the names the domain filter keeps
        (problems about the names it drops are muted too)."""
        if not self.objects.admits(obj):
            return [], []
        eps, problems = derive(obj)
        if not self.domains.configured:
            return eps, problems
        return ([ep for ep in eps if self.domains.match(ep.name)],
                [p for p in problems if not p.name or self.domains.match(p.name)])


def from_settings(settings: Settings) -> SourceFilter:
    """The filters `settings` asks for (config.py has already checked that they parse)."""
    objects = ObjectFilter(parse(settings.label_filter), parse(settings.annotation_filter),
                           settings.ingress_class)
    domains = DomainFilter.of(settings.domain_filter, settings.exclude_domains, settings.regex_domain_filter,
                              settings.regex_domain_exclusion)
    return SourceFilter(objects, domains)
