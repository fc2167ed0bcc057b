"""The last known addresses of our peers, kept in the cluster: a backend restarted while the edge DNS is
away still finds its peers (before, it served only its own targets for the whole edge outage).

Kept as an annotation on the leader-election Lease `coredns-gslb` (the Role already grants get and
patch there: no new rights). Written with a merge patch, so it never conflicts with the elector's
renewals, only after our first full sync, and only ever adds or replaces a (peer, zone) entry with
addresses we resolved at the edge: nothing unsynced, and no failure, removes what is known.
"""

from __future__ import annotations

import json
import logging

from kubernetes import client

from backend.kube import kubeapi

log = logging.getLogger(__name__)

ANNOTATION = "coredns-gslb.io/peer-addresses"
LEASE = "coredns-gslb"
Book = dict[str, dict[str, list[str]]]  # peer geotag -> load-balanced zone -> its CoreDNS addresses


def parse(text: str) -> Book:
    """The annotation's JSON; anything of the wrong shape is left out (it is only a hint)."""
    try:
        raw = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    book: Book = {}
    for tag, zones in raw.items():
        if isinstance(tag, str) and isinstance(zones, dict):
            for zone, addresses in zones.items():
                if isinstance(addresses, list) and addresses and all(isinstance(a, str) for a in addresses):
                    book.setdefault(tag, {})[zone] = addresses
    return book


class PeerBook:
    """Blocking API calls: run them off the event loop (asyncio.to_thread)."""

    def __init__(self, api: client.ApiClient, namespace: str, lease: str = LEASE) -> None:
        self.api = api
        self.path = kubeapi.resource_path(*kubeapi.LEASES, namespace, lease)
        self.known: Book | None = None  # what the Lease said when we last read or wrote it

    def load(self) -> Book:
        """What the Lease holds ({} before a leader created it); raises if the API is away."""
        try:
            lease = kubeapi.request(self.api, "GET", self.path, timeout=5)
        except kubeapi.KubeError as e:
            if e.status != 404:
                raise
            lease = {}
        self.known = parse(((lease.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION, "{}"))
        return self.known

    def remember(self, tag: str, zone: str, addresses: list[str]) -> None:
        """Record a peer's freshly resolved addresses if they differ from what the Lease holds."""
        book = self.load() if self.known is None else self.known
        if book.get(tag, {}).get(zone) == addresses:
            return
        merged: Book = {t: dict(zs) for t, zs in book.items()}
        merged.setdefault(tag, {})[zone] = addresses
        body = {"metadata": {"annotations": {ANNOTATION: json.dumps(merged, sort_keys=True)}}}
        try:
            kubeapi.request(self.api, "PATCH", self.path, body=body,
                            content_type="application/merge-patch+json", timeout=5)
        except kubeapi.KubeError as e:
            if e.status != 404:  # no Lease before the first leader: the next resolve tries again
                raise
            return
        log.info("remembered peer %s in %s at %s (Lease %s)", tag, zone, ", ".join(addresses), self.path)
        self.known = merged
