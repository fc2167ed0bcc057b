"""Kubernetes label selectors in their text form (`a=b,c!=d,e in (x,y),!f,g`), as kubectl and
ExternalDNS's `--*-label-filter` flags take them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_TERM = re.compile(
    r"^\s*(?:(?P<not>!)\s*(?P<nkey>[^\s=!(),<>]+)"
    r"|(?P<key>[^\s=!(),<>]+)\s*(?:(?P<op>==|=|!=)\s*(?P<value>[^\s=!(),<>]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.key)
        if self.op == "exists":
            return have is not None
        if self.op == "!exists":
            return have is None
        if self.op in ("=", "in"):
            return have is not None and have in self.values
        return have is None or have not in self.values  # != and notin match an absent key


@dataclass(frozen=True, slots=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        return all(r.matches(labels or {}) for r in self.requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t for t in terms if t.strip()]


def parse(text: str) -> Selector:
    """A Selector, or ValueError naming the term that is not one."""
    reqs = []
    for term in _split_terms(text or ""):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"label selector term {term.strip()!r} is not key, !key, key=v, key!=v, "
                             "key in (v,...) or key notin (v,...)")
        if m["nkey"]:
            reqs.append(Requirement(m["nkey"], "!exists"))
        elif m["op"]:
            reqs.append(Requirement(m["key"], "!=" if m["op"] == "!=" else "=", frozenset([m["value"]])))
        elif m["setop"]:
            values = frozenset(v.strip() for v in m["values"].split(",") if v.strip())
            reqs.append(Requirement(m["key"], m["setop"], values))
        else:
            reqs.append(Requirement(m["key"], "exists"))
    return Selector(tuple(reqs))


def from_label_selector(obj: Mapping[str, object] | None) -> Selector:
    """A metav1.LabelSelector (matchLabels + matchExpressions) as a Selector; ValueError if malformed."""
    obj = obj or {}
    labels = dict(obj.get("matchLabels") or {})  # type: ignore[call-overload]
    reqs = [Requirement(str(k), "=", frozenset([str(v)])) for k, v in labels.items()]
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
    for expr in obj.get("matchExpressions") or ():  # type: ignore[union-attr]
        op = ops.get(expr.get("operator"))
        if op is None or not expr.get("key"):
            raise ValueError(f"matchExpressions entry {expr!r} is not valid")
        reqs.append(Requirement(expr["key"], op, frozenset(expr.get("values") or ())))
    return Selector(tuple(reqs))
