"""ExternalDNS's source filters as pure functions: which objects a source reads, which names it keeps.

- `parse_selector(text)`: Kubernetes label-selector syntax (`k=v`, `k==v`, `k!=v`, `k in (a,b)`,
  `k notin (a)`, `k`, `!k`, `k>1`, `k<1`, comma = AND), as `--label-filter` (over labels) and
  `--annotation-filter` (over annotations) take it. `!=` and `notin` match an object without the key.
- `ingress_class_matches(ing, classes)`: `--ingress-class` (ExternalDNS v0.22: a non-empty
  spec.ingressClassName must be in the list, else the legacy `kubernetes.io/ingress.class` annotation).
- `DomainFilter`: `--domain-filter`/`--exclude-domains` (plain: the domain and its subdomains; a
  leading dot means subdomains only) or, when either regex is set, `--regex-domain-filter` /
  `--regex-domain-exclusion` (exclusion checked first; exclusion alone accepts everything else; the
  plain lists are then ignored), on the lowercase name without the trailing dot.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backend.config import Settings

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"

_KEY = r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^({_KEY})\s+(in|notin)\s*\(([^()]*)\)$")
_EQ = re.compile(rf"^({_KEY})\s*(==|=|!=)\s*({_VALUE})$")
_CMP = re.compile(rf"^({_KEY})\s*([<>])\s*(-?\d+)$")
_EXISTS = re.compile(rf"^(!?)\s*({_KEY})$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """A selector that Kubernetes would refuse too; the message says which part."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # in notin exists !exists gt lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "in":
            return has and value in self.values
        if self.op == "notin":
            return not has or value not in self.values
        if self.op == "exists":
            return has
        if self.op == "!exists":
            return not has
        if not has or not re.fullmatch(r"-?\d+", value):
            return False
        return int(value) > int(self.values[0]) if self.op == "gt" else int(value) < int(self.values[0])


Selector = tuple[Requirement, ...]


def _parts(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_selector(text: str) -> Selector:
    """A selector; the empty string selects everything."""
    if not text.strip():
        return ()
    reqs: list[Requirement] = []
    for part in _parts(text):
        if m := _SET.match(part):
            values = tuple(v.strip() for v in m.group(3).split(","))
            if not all(_VALUE_ONLY.match(v) for v in values):
                raise SelectorError(f"{part!r}: a value is not a valid label value")
            reqs.append(Requirement(m.group(1), m.group(2), values))
        elif m := _EQ.match(part):
            reqs.append(Requirement(m.group(1), "notin" if m.group(2) == "!=" else "in", (m.group(3),)))
        elif m := _CMP.match(part):
            reqs.append(Requirement(m.group(1), "gt" if m.group(2) == ">" else "lt", (m.group(3),)))
        elif m := _EXISTS.match(part):
            reqs.append(Requirement(m.group(2), "!exists" if m.group(1) else "exists"))
        else:
            raise SelectorError(f"{part!r} is not a label-selector requirement")
    return tuple(reqs)


def selector_matches(selector: Selector, labels: Mapping[str, str]) -> bool:
    return all(r.matches(labels) for r in selector)


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
        elif name == f or name.endswith("." + f):
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

    labels: Selector = ()
    annotations: Selector = ()
    ingress_classes: tuple[str, ...] = ()

    def admits(self, obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        if not selector_matches(self.labels, meta.get("labels") or {}):
            return False
        if not selector_matches(self.annotations, meta.get("annotations") or {}):
            return False
        return obj.get("kind") != "Ingress" or ingress_class_matches(obj, self.ingress_classes)


def from_settings(settings: Settings) -> tuple[ObjectFilter, DomainFilter]:
    """The filters `settings` asks for (config.py has already checked that they parse)."""
    objects = ObjectFilter(parse_selector(settings.label_filter), parse_selector(settings.annotation_filter),
                           settings.ingress_class)
    domains = DomainFilter.of(settings.domain_filter, settings.exclude_domains, settings.regex_domain_filter,
                              settings.regex_domain_exclusion)
    return objects, domains
