"""k8gb's strategies as precomputed answers: every possible answer is fixed when the model changes, and a
query only picks one of them.

Precomputing the variants lets the zone layer compile each one to wire bytes once; `Answers.pick` is then
the whole per-query cost of a strategy.
"""

from __future__ import annotations

import ipaddress
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from backend.model import Strategy, Target

GeoLookup = Callable[[str], str | None]  # client IP -> the geotag its mmdb record names, if any


@dataclass
class Answers:
    """The answers a name can give and how a query chooses among them.

    `variants[i]` is one complete answer. `pick(client_ip)` returns an index into it and the ECS scope
    prefix length to echo (RFC 7871: how far the answer depends on the client's address).
    """

    variants: list[tuple[Target, ...]]
    _pick: Callable[[str | None, int], tuple[int, int]] = field(repr=False)

    def pick(self, client_ip: str | None = None, source_prefix: int = 0) -> tuple[int, int]:
        return self._pick(client_ip, source_prefix)


def _fixed(_ip: str | None, _prefix: int) -> tuple[int, int]:
    return 0, 0


def _by_geotag(targets: tuple[Target, ...]) -> dict[str, tuple[Target, ...]]:
    groups: dict[str, list[Target]] = {}
    for t in targets:
        groups.setdefault(t.geotag, []).append(t)
    return {tag: tuple(ts) for tag, ts in sorted(groups.items())}


def _rotations(targets: tuple[Target, ...]) -> Answers:
    """roundRobin without weights: every rotation of the full set, taken in turn."""
    if len(targets) <= 1:
        return Answers([targets], _fixed)
    variants = [targets[i:] + targets[:i] for i in range(len(targets))]
    counter = itertools.count()
    n = len(variants)
    return Answers(variants, lambda _ip, _p: (next(counter) % n, 0))


def _weighted(groups: dict[str, tuple[Target, ...]], weights: dict[str, int]) -> Answers:
    """Each answer holds one geotag's targets, chosen at random by weight, so a resolver that reorders
    records cannot undo the weights. Weight 0 (or no weight) is a last resort, used only when no
    weighted geotag has a healthy target."""
    weighted = [(tag, weights[tag]) for tag in groups if weights.get(tag, 0) > 0]
    if not weighted:
        return _rotations(tuple(t for ts in groups.values() for t in ts))
    variants = [groups[tag] for tag, _ in weighted]
    cum = list(itertools.accumulate(w for _, w in weighted))
    total = cum[-1]
    rng = random.Random()

    def pick(_ip: str | None, _p: int) -> tuple[int, int]:
        r = rng.random() * total
        for i, c in enumerate(cum):
            if r < c:
                return i, 0
        return len(cum) - 1, 0

    return Answers(variants, pick)


def _failover(groups: dict[str, tuple[Target, ...]], primary: str) -> Answers:
    """The primary's targets while it has any healthy, else every other cluster's."""
    if primary in groups:
        return Answers([groups[primary]], _fixed)
    return _rotations(tuple(t for tag, ts in groups.items() if tag != primary for t in ts))


def _geoip(groups: dict[str, tuple[Target, ...]], geo: GeoLookup | None) -> Answers:
    """The targets of the geotag the client's address maps to; all targets when it maps to none."""
    everything = tuple(t for ts in groups.values() for t in ts)
    tags = list(groups)
    variants = [everything, *(groups[t] for t in tags)]
    index = {tag: i + 1 for i, tag in enumerate(tags)}

    def pick(ip: str | None, prefix: int) -> tuple[int, int]:
        if ip is None or geo is None:
            return 0, 0
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            return 0, 0
        tag = geo(ip)
        return index.get(tag or "", 0), prefix

    return Answers(variants, pick)


def answers(strategy: Strategy | None, targets: tuple[Target, ...], geo: GeoLookup | None = None) -> Answers:
    """The possible answers of one name's healthy targets (local and peers', each with its geotag)."""
    if strategy is None or not targets:
        return Answers([targets], _fixed)
    groups = _by_geotag(targets)
    if strategy.type == "failover":
        return _failover(groups, strategy.primary_geotag)
    if strategy.type == "geoip":
        return _geoip(groups, geo)
    if strategy.weights:
        return _weighted(groups, dict(strategy.weights))
    return _rotations(targets)
