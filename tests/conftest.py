"""Test-bed fixtures: real etcd, Kubernetes control planes with kwok, CoreDNS, our backend, BIND9.

The API is documented in tests/README.md; the process management lives in lab/ (the lab reuses it).
Control planes are session-scoped (they are the slow part); everything else is started per test and
stopped when the test ends. Every child dies with the pytest process, even on SIGKILL.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from lab.bind9 import Bind9, LoopbackAddress
from lab.coredns import GRPC_TEMPLATE, CoreDNS
from lab.kube import ControlPlane, Etcd, Pki
from lab.lbpool import LbPool
from lab.proc import free_loopback_ip
from lab.sidecar import Backend, DnsStack, Listener

ControlPlaneFactory = Callable[..., ControlPlane]
T = TypeVar("T", CoreDNS, Backend, DnsStack, Bind9, LbPool, LoopbackAddress)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab: runs `coredns-gslb lab` end to end (alone: pytest -m lab)")


@pytest.fixture(scope="session")
def testbed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testbed")


@pytest.fixture(scope="session")
def control_plane_factory(testbed_dir: Path) -> Iterator[ControlPlaneFactory]:
    """`control_plane_factory(name, nodes=1)`: one plane per name per session, all sharing one etcd."""
    planes: dict[str, ControlPlane] = {}
    shared: dict[str, object] = {}

    def make(name: str = "main", nodes: int = 1) -> ControlPlane:
        if name not in planes:
            if "etcd" not in shared:
                shared["pki"] = Pki.create(testbed_dir / "pki")
                shared["etcd"] = Etcd(testbed_dir / "etcd").start()
            etcd, pki = shared["etcd"], shared["pki"]
            assert isinstance(etcd, Etcd) and isinstance(pki, Pki)
            planes[name] = ControlPlane(name, testbed_dir / name, etcd, pki, nodes=nodes).start()
        return planes[name]

    yield make
    for plane in planes.values():
        plane.stop()
    if "etcd" in shared:
        etcd = shared["etcd"]
        assert isinstance(etcd, Etcd)
        etcd.stop()


@pytest.fixture(scope="session")
def control_plane(control_plane_factory: ControlPlaneFactory) -> ControlPlane:
    return control_plane_factory("main")


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace on `control_plane` for one test, deleted (without waiting) afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{slug}-{secrets.token_hex(3)}"
    control_plane.kubectl("create", "namespace", name)
    control_plane.wait_for(
        lambda: bool(
            control_plane.kubectl("get", "serviceaccount", "default", "-n", name, "--ignore-not-found")
        ),
        what=f"ServiceAccount default in {name}",
    )
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


class _Started:
    """Stops what a function-scoped factory started, newest first, when the test ends."""

    def __init__(self) -> None:
        self.items: list[CoreDNS | Backend | DnsStack | Bind9 | LbPool | LoopbackAddress] = []

    def add(self, item: T) -> T:
        self.items.append(item)
        item.start()
        return item

    def stop(self) -> None:
        for item in reversed(self.items):
            item.stop()


@pytest.fixture
def _started() -> Iterator[_Started]:
    started = _Started()
    yield started
    started.stop()


@pytest.fixture
def started() -> Iterator[list[Backend | Listener | CoreDNS]]:
    """Processes a test starts and restarts itself; stopped newest first."""
    items: list[Backend | Listener | CoreDNS] = []
    yield items
    for item in reversed(items):
        item.stop()


def _kubeconfig(target: ControlPlane | Path | str) -> Path | str:
    return target.kubeconfig if isinstance(target, ControlPlane) else target


@pytest.fixture
def coredns_factory(tmp_path: Path, _started: _Started) -> Callable[..., CoreDNS]:
    """`coredns_factory(template=GRPC_TEMPLATE, *, zones=(), host="127.0.0.1", port=None, **values)`."""

    def make(
        template: str = GRPC_TEMPLATE,
        *,
        zones: Sequence[str] | str = (),
        host: str = "127.0.0.1",
        port: int | None = None,
        **values: object,
    ) -> CoreDNS:
        name = f"coredns{len(_started.items)}"
        return _started.add(
            CoreDNS(
                tmp_path,
                template,
                zones=tuple(zones) if not isinstance(zones, str) else zones,
                host=host,
                port=port,
                name=name,
                **values,
            )
        )

    return make


@pytest.fixture
def backend_factory(tmp_path: Path, _started: _Started) -> Callable[..., Backend]:
    """`backend_factory(plane_or_kubeconfig, *flags, env=None)`: our `serve`, ready on /readyz."""

    def make(target: ControlPlane | Path | str, *flags: str, env: dict[str, str] | None = None) -> Backend:
        name = f"backend{len(_started.items)}"
        return _started.add(Backend(tmp_path, _kubeconfig(target), flags, name=name, env=env))

    return make


@pytest.fixture
def dns_stack_factory(tmp_path: Path, _started: _Started) -> Callable[..., DnsStack]:
    """`dns_stack_factory(plane_or_kubeconfig, zones=("foowidgets.k8s",), flags=(), *, host, port, template)`.

    Without --zones or --dns-zone in flags the backend gets `--zones <zones>` (ExternalDNS-style names).
    """

    def make(
        target: ControlPlane | Path | str,
        zones: Sequence[str] = ("foowidgets.k8s",),
        flags: Sequence[str] = (),
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        template: str = GRPC_TEMPLATE,
    ) -> DnsStack:
        flags = list(flags)
        if not {"--zones", "--dns-zone"} & {f.split("=")[0] for f in flags}:
            flags = ["--zones", ",".join(zones), *flags]
        return _started.add(
            DnsStack(
                tmp_path,
                _kubeconfig(target),
                zones,
                flags,
                host=host,
                port=port,
                template=template,
                name=f"stack{len(_started.items)}",
            )
        )

    return make


@pytest.fixture
def dns_stack(dns_stack_factory: Callable[..., DnsStack], control_plane: ControlPlane) -> DnsStack:
    """Backend + CoreDNS for foowidgets.k8s on the shared control plane."""
    return dns_stack_factory(control_plane)


@pytest.fixture
def bind9_factory(tmp_path: Path, _started: _Started) -> Callable[..., Bind9]:
    """`bind9_factory(zone="foowidgets.k8s", *, host="127.0.0.1", port=None, recursive=False,
    zone_text=None)`.

    For port 53 (a root server, an edge reached through glue) take `host` from `loopback_address_factory`.
    """

    def make(
        zone: str = "foowidgets.k8s",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        recursive: bool = False,
        zone_text: str | None = None,
    ) -> Bind9:
        name = f"named{len(_started.items)}"
        return _started.add(
            Bind9(tmp_path / name, zone, host=host, port=port, recursive=recursive, zone_text=zone_text,
                  name=name)
        )

    return make


@pytest.fixture
def loopback_address_factory(_started: _Started) -> Callable[[], str]:
    """`loopback_address_factory()`: a free 127.x.y.z (port 53 free) added to `lo` until the test ends,
    so BIND9 can listen there (named only binds interface addresses). Needs root."""

    def make() -> str:
        return _started.add(LoopbackAddress(free_loopback_ip())).host

    return make


@pytest.fixture
def bind9(bind9_factory: Callable[..., Bind9]) -> Bind9:
    return bind9_factory()


@pytest.fixture
def lbpool_factory(tmp_path: Path, _started: _Started) -> Callable[..., LbPool]:
    """`lbpool_factory(plane, ingress=(), services=(), fixed=None)`: MetalLB + ingress-controller stand-in."""

    def make(
        plane: ControlPlane,
        ingress: Sequence[str] = (),
        services: Sequence[str] = (),
        fixed: dict[str, str] | None = None,
    ) -> LbPool:
        name = f"lbpool{len(_started.items)}"
        pool = LbPool(tmp_path, plane.kubeconfig, ingress=ingress, services=services, fixed=fixed, name=name)
        return _started.add(pool)

    return make
