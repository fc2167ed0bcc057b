"""The bench's real components, from lab: one control plane (etcd, kube-apiserver, controllers,
scheduler, kwok), our backend processes and CoreDNS instances, all on loopback in one work folder and
all stopped on exit (they also die with this process: lab's children have PDEATHSIG set).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from bench.floor import Floor
from lab.coredns import CoreDNS
from lab.demo import install_crds
from lab.kube import ControlPlane, Etcd, Pki
from lab.lbpool import LbPool
from lab.sidecar import Backend


class Stoppable(Protocol):
    def stop(self) -> None: ...


T = TypeVar("T", bound="Stoppable")


class Bed(contextlib.AbstractContextManager["Bed"]):
    """A work folder with a control plane; `backend()` and `coredns()` start more, `stop_all()` ends them."""

    def __init__(self, keep: bool = False, workdir: Path | None = None,
                 backend_flags: Sequence[str] = ()) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="bench-"))
        self.keep = keep
        self.backend_flags = tuple(backend_flags)  # added to every backend's own (--backend-flags)
        self._started: list[Stoppable] = []
        self._plane: ControlPlane | None = None

    @property
    def plane(self) -> ControlPlane:
        """The control plane, started on first use (about 5 s), with the Gslb CRDs installed."""
        if self._plane is None:
            etcd = self._add(Etcd(self.workdir / "etcd"))
            etcd.start()
            plane = ControlPlane("bench", self.workdir / "bench", etcd, Pki.create(self.workdir / "pki"))
            self._add(plane)
            plane.start()
            install_crds(plane)
            self._plane = plane
        return self._plane

    def backend(self, flags: Sequence[str], name: str = "backend", start: bool = True) -> Backend:
        b = self._add(Backend(self.workdir, self.plane.kubeconfig, (*flags, *self.backend_flags), name=name))
        if start:
            b.start()
        return b

    def coredns(self, template: str, name: str, **values: object) -> CoreDNS:
        """CoreDNS from a corefile/ template or a Corefile text (string.Template values as keywords)."""
        c = self._add(CoreDNS(self.workdir, template, name=name, **values))
        c.start()
        return c

    def floor(self) -> Floor:
        """The grpc hop's floor (bench/floor.py), for a CoreDNS to forward to."""
        return self._add(Floor(self.workdir)).start()

    def lbpool(self, services: Sequence[str]) -> LbPool:
        """The lab's MetalLB stand-in and gateway controller (GatewayClasses of lbpool's controllerName)."""
        pool = self._add(LbPool(self.workdir, self.plane.kubeconfig, services=services))
        pool.start()
        return pool

    def pids(self) -> dict[str, int]:
        """The pid of each running process this bed started, by name ("etcd", "kube-apiserver", the
        CoreDNS and backend names): where the two cores go besides the backend."""
        found: dict[str, int] = {}
        for item in self._started:
            many = getattr(item, "processes", None)
            for p in many if many is not None else [getattr(item, "process", None)]:
                if p is not None and p.pid and p.alive():
                    found[p.name.split(" (")[0]] = p.pid
        return found

    def stop(self, item: Stoppable) -> None:
        item.stop()
        self._started.remove(item)

    def _add(self, item: T) -> T:
        self._started.append(item)
        return item

    def __exit__(self, *exc: object) -> None:
        for item in reversed(self._started):
            with contextlib.suppress(Exception):
                item.stop()
        self._started.clear()
        if not self.keep and self.workdir.is_relative_to(tempfile.gettempdir()):
            shutil.rmtree(self.workdir, ignore_errors=True)

