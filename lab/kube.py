"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler, kwok.

kwok stands in for kubelets: Pods scheduled onto its fake Nodes turn Running and Ready and get IPs, so the
endpointslice controller produces the same health signal as in a real cluster. Several planes share one
etcd (each apiserver under its own --etcd-prefix) and one set of keys, which makes an extra plane cost
one apiserver, one controller-manager, one scheduler and one kwok.
"""

from __future__ import annotations

import json
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lab.proc import (
    DATA_PLANE,
    DEFAULT_DATA_PLANE,
    ROOT,
    Plane,
    Process,
    StartupError,
    binary,
    free_port,
    wait_for,
)

if TYPE_CHECKING:
    import kubernetes.client

CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "endpointslice-controller",
    "endpointslice-mirroring-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
)
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
GATEWAY_API_CRDS = ROOT / ".deps" / "crds" / "gateway-api"  # pinned by deps/install.sh (gateway_api)
START_TIMEOUT = 90.0
SERVICE_CIDR = "10.96.0.0/12"  # the largest the apiserver takes: ~1M ClusterIPs, for 100k Services
# The CPU weight of each control-plane component, as an autogroup nice value (-5: ~3x a default group's
# weight). The lab runs etcd, kube-apiserver and the controllers on the cores CoreDNS, the backend and
# dnsperf use, each in its own session and so (kernel autogroup) its own scheduling group of equal
# weight. In the churn bench (2 cores, CPU pressure ~97 %) their threads waited 4.5-8.7 s on a runqueue
# per second of CPU they got; etcd served each request in 0.1 ms, the apiserver saw 0.7-1.1 s. The
# churn's writes on the loaded lab: p50 9 ms alone, 1.4 s beside four busy processes, 9.5 ms beside them
# at this weight. A real cluster gives its control plane cores of its own, or on a shared node a CPU
# weight from its requests (kubelet sets cpu.weight; kubeadm asks 250m for kube-apiserver, 100m for
# CoreDNS): a component is served when it has work, and uses no more CPU for it. LAB_CONTROL_PLANE_NICE
# sets another (0: the default weight), for the bench's comparison.
# LAB_CONTROL_PLANE_CPUS (e.g. "0"; unset: all) keeps it to those cores, as a real cluster's control plane
# runs on nodes of its own (lab/proc.py Plane).
DEFAULT_CONTROL_PLANE = Plane(nice=-5)
CONTROL_PLANE = Plane.from_env("LAB_CONTROL_PLANE", DEFAULT_CONTROL_PLANE)


def lab_variant() -> dict[str, str]:
    """What this process's lab does otherwise than its default (the LAB_CONTROL_PLANE_* and
    LAB_DATA_PLANE_* settings), by a short name: {"control_plane_nice_0": "with the control plane at
    autogroup nice 0"}."""
    return (CONTROL_PLANE.differences(DEFAULT_CONTROL_PLANE, "control_plane", "the control plane")
            | DATA_PLANE.differences(DEFAULT_DATA_PLANE, "data_plane", "CoreDNS and the backend"))


def _openssl(*args: str, cwd: Path) -> None:
    run = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if run.returncode:
        raise StartupError(f"openssl {' '.join(args)} failed:\n{run.stderr}")


def kubectl(
    kubeconfig: Path | str, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
) -> str:
    """The pinned kubectl with a kubeconfig; returns stdout, raises with stderr when check and it fails."""
    run = subprocess.run(
        [binary("kubectl"), "--kubeconfig", str(kubeconfig), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and run.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)} failed ({run.returncode}):\n{run.stderr}{run.stdout}")
    return run.stdout


@dataclass(frozen=True)
class Pki:
    """The serving cert (self-signed, its own CA), the service-account signing key and the admin token."""

    dir: Path
    token: str

    @property
    def cert(self) -> Path:
        return self.dir / "server.crt"

    @property
    def key(self) -> Path:
        return self.dir / "server.key"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    @property
    def token_file(self) -> Path:
        return self.dir / "tokens.csv"

    @classmethod
    def create(cls, folder: Path) -> Pki:
        """Reuse the keys in `folder` if a previous run made them (the lab restarts on the same files)."""
        folder.mkdir(parents=True, exist_ok=True)
        token_path = folder / "admin.token"
        pki = cls(folder, token_path.read_text().strip() if token_path.exists() else secrets.token_hex(24))
        if not (pki.cert.exists() and pki.sa_pub.exists() and pki.token_file.exists()):
            _openssl(
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.crt",
                "-days",
                "3650",
                "-subj",
                "/CN=kube-apiserver",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                cwd=folder,
            )
            _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.ec", cwd=folder)
            _openssl("pkcs8", "-topk8", "-nocrypt", "-in", "sa.ec", "-out", "sa.key", cwd=folder)
            _openssl("ec", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=folder)
            token_path.write_text(pki.token + "\n")
            pki.token_file.write_text(f'{pki.token},admin,admin,"system:masters"\n')
        return pki


class Etcd:
    """One etcd for every control plane of a session (or of the lab)."""

    def __init__(self, workdir: Path, *, detached: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        peer = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = Process(
            "etcd",
            [
                binary("etcd"),
                "--name",
                "testbed",
                "--data-dir",
                workdir / "data",
                "--listen-client-urls",
                self.url,
                "--advertise-client-urls",
                self.url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{peer}",
                "--initial-cluster",
                f"testbed=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes",
                str(8 * 2**30),  # the 2 GiB default is too small for the bench's 100k Services
                "--log-level",
                "warn",
            ],
            workdir / "etcd.log",
            detached=detached,
            plane=CONTROL_PLANE,
        )

    def start(self) -> Etcd:
        self.process.start()

        def healthy() -> bool:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return json.load(r).get("health") == "true"

        wait_for(healthy, what="etcd /health", timeout=START_TIMEOUT, watch=[self.process])
        return self

    def stop(self) -> None:
        self.process.stop()


@dataclass
class NodeSpec:
    name: str
    cpu: str = "32"
    memory: str = "256Gi"
    pods: str = "110"
    labels: dict[str, str] = field(default_factory=dict)


class ControlPlane:
    """kube-apiserver + kube-controller-manager + kube-scheduler + kwok, with fake Nodes.

    Tests get it from the `control_plane` fixtures; the lab starts one per cluster. Auth is a static
    admin token (group system:masters) with RBAC on, so ServiceAccount tokens from `token_for` are
    checked against real RBAC rules.
    """

    def __init__(
        self, name: str, workdir: Path, etcd: Etcd, pki: Pki, *, nodes: int = 1, detached: bool = False
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.etcd = etcd
        self.pki = pki
        self.detached = detached
        self.nodes = [NodeSpec(f"kwok-{name}-{i}") for i in range(nodes)]
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        workdir.mkdir(parents=True, exist_ok=True)
        self._write_kubeconfig(self.kubeconfig, "admin", pki.token)
        self._ssl = ssl.create_default_context(cafile=str(pki.cert))
        kc = str(self.kubeconfig)
        self.apiserver = self._process(
            "kube-apiserver",
            [
                "--etcd-servers",
                etcd.url,
                "--etcd-prefix",
                f"/{name}",
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.port),
                "--tls-cert-file",
                pki.cert,
                "--tls-private-key-file",
                pki.key,
                "--cert-dir",
                workdir / "certs",
                "--token-auth-file",
                pki.token_file,
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                f"https://{name}.kubernetes.default.svc",
                "--service-account-key-file",
                pki.sa_pub,
                "--service-account-signing-key-file",
                pki.sa_key,
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                "--endpoint-reconciler-type",
                "none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--allow-privileged=true",
            ],
        )
        self.controller_manager = self._process(
            "kube-controller-manager",
            [
                "--kubeconfig",
                kc,
                "--controllers",
                ",".join(CONTROLLERS),
                "--leader-elect=false",
                "--secure-port",
                "0",
                "--service-account-private-key-file",
                pki.sa_key,
                "--root-ca-file",
                pki.cert,
                "--use-service-account-credentials=false",
                "--cluster-name",
                name,
                "--concurrent-deployment-syncs",
                "10",
                "--concurrent-replicaset-syncs",
                "10",
                "--concurrent-service-endpoint-syncs",
                "10",
                "--endpointslice-updates-batch-period",
                "0s",
            ],
        )
        self.scheduler = self._process(
            "kube-scheduler",
            [
                "--kubeconfig",
                kc,
                "--leader-elect=false",
                "--secure-port",
                "0",
            ],
        )
        self.kwok = self._process(
            "kwok",
            [
                "--kubeconfig",
                kc,
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector",
                f"{KWOK_ANNOTATION}=fake",
                "--cidr",
                "10.244.0.1/16",
                "--node-ip",
                "127.0.0.1",
                "--server-address",
                f"127.0.0.1:{free_port()}",
            ],
        )

    def _process(self, binary_name: str, args: list[Any]) -> Process:
        return Process(
            f"{binary_name} ({self.name})",
            [binary(binary_name), *args],
            self.workdir / f"{binary_name}.log",
            detached=self.detached,
            plane=CONTROL_PLANE,
        )

    @property
    def processes(self) -> list[Process]:
        return [self.apiserver, self.controller_manager, self.scheduler, self.kwok]

    # lifecycle

    def start(self) -> ControlPlane:
        try:
            self.start_apiserver()
            for p in (self.controller_manager, self.scheduler, self.kwok):
                p.start()
            for node in self.nodes:
                self._create_node(node)
            wait_for(
                lambda: self._exists("/api/v1/namespaces/default/serviceaccounts/default"),
                what=f"ServiceAccount default/default in {self.name} (controller-manager)",
                timeout=START_TIMEOUT,
                watch=self.processes,
            )
            wait_for(
                self._nodes_ready,
                what=f"kwok Nodes Ready in {self.name}",
                timeout=START_TIMEOUT,
                watch=self.processes,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in reversed(self.processes):
            p.stop()

    def start_apiserver(self) -> None:
        """(Re)start kube-apiserver on the same port and wait for /readyz; outage tests stop it in between."""
        self.apiserver.start()
        wait_for(
            lambda: self.request("GET", "/readyz", raw=True) == b"ok",
            what=f"kube-apiserver /readyz ({self.name})",
            timeout=START_TIMEOUT,
            watch=[self.apiserver],
        )

    def stop_apiserver(self) -> None:
        self.apiserver.stop()

    # access

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bool = False,
        content_type: str = "application/json",
    ) -> Any:
        """One authenticated HTTPS call to the apiserver; JSON in and out unless raw."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.pki.token}",
                "Content-Type": content_type,
                "Accept": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=10, context=self._ssl) as r:
            payload = r.read()
        return payload if raw else json.loads(payload or b"null")

    def _exists(self, path: str) -> bool:
        try:
            self.request("GET", path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        return True

    def _create_node(self, node: NodeSpec) -> None:
        if self._exists(f"/api/v1/nodes/{node.name}"):
            return
        resources = {"cpu": node.cpu, "memory": node.memory, "pods": node.pods}
        self.request(
            "POST",
            "/api/v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": node.name,
                    "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": node.name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "topology.kubernetes.io/zone": self.name,
                        **node.labels,
                    },
                },
                "spec": {},
                "status": {"capacity": resources, "allocatable": resources},
            },
        )
        # Admission taints a new Node not-ready; the node-lifecycle controller (not run: kwok owns Node
        # health) would lift it once kwok reports Ready.
        self.request(
            "PATCH",
            f"/api/v1/nodes/{node.name}",
            {"spec": {"taints": None}},
            content_type="application/merge-patch+json",
        )

    def _nodes_ready(self) -> bool:
        for node in self.nodes:
            conditions = (
                self.request("GET", f"/api/v1/nodes/{node.name}").get("status", {}).get("conditions") or []
            )
            if not any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return False
        return True

    def api_client(self) -> kubernetes.client.ApiClient:
        """A fresh kubernetes.client.ApiClient for this plane (close it, or use it in a `with`)."""
        import kubernetes.config

        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> str:
        """Run the pinned kubectl against this plane; a failure raises with kubectl's stderr."""
        return kubectl(self.kubeconfig, *args, input=input, check=check, timeout=timeout)

    def apply(self, yaml_text: str, *args: str) -> str:
        return self.kubectl("apply", "-f", "-", *args, input=yaml_text)

    def ready_addresses(self, namespace: str, service: str) -> list[str]:
        """The ready endpoints' addresses in a Service's EndpointSlices: what the controller-manager made
        of its pods, which tests wait for before they look at what DNS made of it."""
        selector = f"kubernetes.io/service-name={service}"
        out = self.kubectl("get", "endpointslices", "-n", namespace, "-l", selector, "-o", "json")
        slices = json.loads(out)
        return [
            addr
            for s in slices["items"]
            for ep in s.get("endpoints") or []
            if ep.get("conditions", {}).get("ready")
            for addr in ep["addresses"]
        ]

    def install_gateway_api(self) -> None:
        """The pinned Gateway API CRDs (standard channel), as a cluster with a gateway implementation
        has them; server-side, as the CRDs are too large for the last-applied annotation."""
        files = sorted(GATEWAY_API_CRDS.glob("gateway.networking.k8s.io_*.yaml"))
        if not files:
            raise StartupError(f"no Gateway API CRDs in {GATEWAY_API_CRDS}: run make deps")
        args = [a for f in files for a in ("-f", str(f))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *args)
        # gateway.networking.k8s.io_httproutes.yaml -> crd/httproutes.gateway.networking.k8s.io
        names = [f.stem.split("_", 1) for f in files if "_vap_" not in f.name]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *(f"crd/{plural}.{group}" for group, plural in names))

    def token_for(self, service_account: str, namespace: str = "default", duration: str = "24h") -> str:
        """A TokenRequest token for a ServiceAccount (created if missing): RBAC applies to it."""
        if not self._exists(f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}"):
            self.kubectl("create", "serviceaccount", service_account, "-n", namespace)
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration", duration
        ).strip()

    def kubeconfig_for(
        self,
        service_account: str,
        namespace: str = "default",
        path: Path | None = None,
        duration: str = "24h",
    ) -> Path:
        """A kubeconfig that authenticates as a ServiceAccount, for running the backend least-privileged."""
        path = path or self.workdir / f"kubeconfig-{namespace}-{service_account}"
        token = self.token_for(service_account, namespace, duration)
        self._write_kubeconfig(path, f"{namespace}-{service_account}", token)
        return path

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": self.name,
            "clusters": [
                {
                    "name": self.name,
                    "cluster": {"server": self.url, "certificate-authority": str(self.pki.cert)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": user}}],
        }
        path.write_text(json.dumps(config, indent=2) + "\n")
        path.chmod(0o600)

    def wait_for(self, check: Any, *, what: str, timeout: float = 60.0) -> None:
        """Bounded poll that also fails fast (with the log tail) if a component of this plane died."""
        wait_for(check, what=what, timeout=timeout, watch=self.processes, interval=0.2)

    def rss_bytes(self) -> int:
        return sum(_rss(p.pid) for p in self.processes if p.pid)


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
