"""Lease-based leader election (coordination.k8s.io/v1), as client-go's leaderelection does it.

Every replica serves DNS; only the holder of the Lease writes to the API, so two replicas never
fight over a Gslb's status or create the same Ingress twice. Expiry is judged by this replica's
own clock from when it last saw the Lease change, not by the holder's timestamps, so clock skew
between nodes cannot make two leaders.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable

from kubernetes import client

from backend.kube import kubeapi

log = logging.getLogger(__name__)



class LeaderElector:
    """Runs on its own thread; `is_leader` is an Event; `on_started` runs on that thread, must be quick."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str = "coredns-gslb",
        identity: str = "",
        lease_seconds: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started: Callable[[], None] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        # hostname + random suffix as client-go recommends: two processes on one host stay distinct
        self.identity = f"{identity or 'coredns-gslb'}_{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started = on_started
        self.is_leader = threading.Event()
        self._stop = threading.Event()
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Step down and release the Lease so another replica takes over at once, not after expiry."""
        self._stop.set()
        self._thread.join(self.retry_period + 10)
        if self.is_leader.is_set():
            self._set_leader(False)
            try:
                self._release()
            except (kubeapi.KubeError, OSError) as e:
                log.info("leader: could not release the Lease: %s", e)

    def _path(self, name: str = "") -> str:
        return kubeapi.resource_path(*kubeapi.LEASES, self.namespace, name)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                acquired = self._try()
            except Exception as e:  # the API being away is normal; never let the thread die
                log.info("leader: lease %s/%s: %s", self.namespace, self.name, e)
                acquired = False
            if acquired:
                self._last_renew = time.monotonic()
                self._set_leader(True)
            elif self.is_leader.is_set() and time.monotonic() - self._last_renew > self.renew_deadline:
                log.warning("leader: could not renew the Lease for %.0fs; stepping down", self.renew_deadline)
                self._set_leader(False)
            self._stop.wait(self.retry_period)

    def _set_leader(self, leader: bool) -> None:
        if leader == self.is_leader.is_set():
            return
        if not leader:
            log.info("leader: %s stopped leading", self.identity)
            self.is_leader.clear()
            return
        log.info("leader: %s now holds %s/%s", self.identity, self.namespace, self.name)
        self.is_leader.set()
        if self.on_started is not None:
            self.on_started()

    def _try(self) -> bool:
        """One acquire-or-renew round; True if we hold the Lease afterwards."""
        now = kubeapi.timestamp(micro=True)
        try:
            lease = kubeapi.request(self.api, "GET", self._path(self.name), timeout=self.renew_deadline)
        except kubeapi.KubeError as e:
            if e.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": int(self.lease_seconds),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
            return self._write("POST", self._path(), body)
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity") or ""
        observed = (holder, spec.get("renewTime") or "")
        if observed != self._observed:
            self._observed, self._observed_at = observed, time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        if holder and holder != self.identity and time.monotonic() - self._observed_at < duration:
            return False  # someone else holds a live Lease
        if holder != self.identity:
            spec["acquireTime"] = now
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=self.identity, leaseDurationSeconds=int(self.lease_seconds), renewTime=now)
        return self._write("PUT", self._path(self.name), lease)

    def _write(self, method: str, path: str, body: dict) -> bool:
        try:
            kubeapi.request(self.api, method, path, body=body, timeout=self.renew_deadline)
        except kubeapi.KubeError as e:
            if e.status == 409:  # another replica wrote first
                return False
            raise
        return True

    def _release(self) -> None:
        lease = kubeapi.request(self.api, "GET", self._path(self.name), timeout=5)
        spec = lease.setdefault("spec", {})
        if spec.get("holderIdentity") != self.identity:
            return
        spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=kubeapi.timestamp(micro=True))
        kubeapi.request(self.api, "PUT", self._path(self.name), body=lease, timeout=5)
