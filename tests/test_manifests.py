"""k8s/ against the real apiserver: every manifest passes a server-side dry-run apply, and the
ServiceAccount's RBAC grants what the backend needs and nothing else, checked with a real TokenRequest token.

The static checks (Corefile, env names, images, hardening) keep the manifests in step with corefile/ and
backend/config.py, which they copy values from.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import (
    CHAPTER,
    COREFILE,
    K8S,
    ROOT,
    config_env_names,
    corefile_body,
    documents,
    find,
    grpc_targets,
    manifest_files,
    pinned,
    settings_from_env,
)

from lab.coredns import FIXED_PORTS, GO_RUNTIME, GRPC_TEMPLATE, lab_template, render
from lab.kube import ControlPlane
from lab.proc import binary
from lab.run import prepare_cluster

NAMESPACE = "coredns-gslb"
ACCOUNT = "coredns-gslb"
TSIG_SECRET = "coredns-gslb-tsig"
COREDNS_IMAGE = "coredns/coredns:1.14.7"


def kubectl(plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    """kubectl with stderr kept: the apiserver's admission warnings (PodSecurity) arrive there."""
    return subprocess.run([binary("kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60)


# k8s/ and the chapter's own manifests: these must apply unchanged against our CRDs.
DRY_RUN = [*manifest_files(), *sorted(CHAPTER.glob("*.yaml"))]


@pytest.fixture(scope="module")
def cluster(control_plane_factory: Callable[..., ControlPlane]) -> ControlPlane:
    """CRDs applied for real (so objects of their kinds validate) and every namespace the manifests use.

    A plane of its own: other tests client-side-apply some of these files to the shared plane, and a
    server-side apply over that warns about the last-applied annotation.
    """
    control_plane = control_plane_factory("manifests")
    control_plane.kubectl("apply", "--server-side", "-f", str(K8S / "crds"))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(K8S / "crds"))
    control_plane.install_gateway_api()  # the lab's shop.yaml uses Gateway API kinds
    control_plane.kubectl("apply", "--server-side", "-f", str(K8S / "namespace.yaml"))
    namespaces = {doc["metadata"].get("namespace") for p in DRY_RUN for doc in documents(p)} - {None}
    for ns in sorted(namespaces):
        if not control_plane.kubectl("get", "namespace", ns, "--ignore-not-found"):
            control_plane.kubectl("create", "namespace", ns)
    return control_plane


@pytest.mark.controlplane
@pytest.mark.parametrize("path", DRY_RUN, ids=lambda p: str(p.relative_to(ROOT)))
def test_manifest_passes_server_side_dry_run(cluster: ControlPlane, path: Path) -> None:
    run = kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-f", str(path))
    assert run.returncode == 0, run.stderr
    assert "(server dry run)" in run.stdout
    assert "Warning" not in run.stderr, run.stderr  # e.g. a PodSecurity "restricted" violation


@pytest.mark.controlplane
def test_kustomization_lists_every_deployment_manifest_and_dry_runs(cluster: ControlPlane) -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    deployment = {str(p.relative_to(K8S)) for p in manifest_files() if p.parent.name != "examples"}
    assert set(kustomization["resources"]) == deployment
    run = kubectl(cluster, "apply", "--server-side", "--dry-run=server", "-k", str(K8S))
    assert run.returncode == 0, run.stderr
    assert "Warning" not in run.stderr, run.stderr


WRITES = ("create", "update", "patch", "delete")
K8GB = ("k8gb.absa.oss", "k8gb.io")


def _reads(group: str, resource: str) -> list[tuple[str, str, str, str, str]]:
    return [(verb, group, resource, "", "") for verb in ("get", "list", "watch")]


# What the backend does with the API, as (verb, group, resource, namespace, name): reads everywhere, its
# few writes, and its own namespace's Lease and TSIG Secret.
ALLOWED = [
    *_reads("", "services"),
    *_reads("networking.k8s.io", "ingresses"),
    *_reads("discovery.k8s.io", "endpointslices"),
    *_reads("externaldns.k8s.io", "dnsendpoints"),
    *_reads("k8gb.absa.oss", "gslbs"),
    *_reads("k8gb.io", "gslbs"),
    *[r for kind in ("gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes", "udproutes")
      for r in _reads("gateway.networking.k8s.io", kind)],
    *_reads("", "namespaces"),
    *_reads("k8gb.io", "zonedelegations"),
    ("patch", "k8gb.io", "zonedelegations/status", "", ""),
    *[(verb, "networking.k8s.io", "ingresses", "demo", "") for verb in WRITES],
    *[(verb, group, "gslbs", "demo", "") for group in K8GB for verb in ("create", "update")],
    *[(verb, group, "gslbs/status", "demo", "") for group in K8GB
      for verb in ("update", "patch")],
    *[("update", group, "gslbs/finalizers", "demo", "") for group in K8GB],
    ("create", "", "events", "demo", ""),
    ("patch", "", "events", "demo", ""),
    *[(verb, "coordination.k8s.io", "leases", NAMESPACE, "") for verb in ("get", *WRITES[:3])],
    ("get", "", "secrets", NAMESPACE, TSIG_SECRET),
]

FORBIDDEN = [
    ("get", "", "secrets", NAMESPACE, "other"),
    ("list", "", "secrets", NAMESPACE, ""),
    ("watch", "", "secrets", NAMESPACE, ""),
    ("get", "", "secrets", "demo", TSIG_SECRET),
    ("update", "", "secrets", NAMESPACE, TSIG_SECRET),
    *[(verb, "", "services", "demo", "") for verb in WRITES],
    ("patch", "", "services/status", "demo", ""),
    ("update", "networking.k8s.io", "ingresses/status", "demo", ""),
    *[(verb, group, "gslbs", "demo", "") for group in K8GB
      for verb in ("patch", "delete")],
    ("create", "discovery.k8s.io", "endpointslices", "demo", ""),
    *[(verb, "k8gb.io", "zonedelegations", "", "") for verb in ("create", "update", "patch", "delete")],
    ("update", "k8gb.io", "zonedelegations/status", "", ""),
    ("create", "externaldns.k8s.io", "dnsendpoints", "demo", ""),
    ("delete", "", "events", "demo", ""),
    ("create", "events.k8s.io", "events", "demo", ""),
    *[(verb, "coordination.k8s.io", "leases", "kube-system", "") for verb in ("get", "create", "update")],
    ("delete", "coordination.k8s.io", "leases", NAMESPACE, ""),
    ("list", "", "pods", "", ""),
    ("list", "", "nodes", "", ""),
    ("get", "", "configmaps", NAMESPACE, ""),
    ("create", "", "namespaces", "", ""),
    ("patch", "gateway.networking.k8s.io", "gateways/status", "demo", ""),
    ("update", "gateway.networking.k8s.io", "httproutes", "demo", ""),
    ("list", "gateway.networking.k8s.io", "gatewayclasses", "", ""),
    ("create", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("create", "", "serviceaccounts/token", NAMESPACE, ACCOUNT),
]


@pytest.fixture(scope="module")
def backend_api(cluster: ControlPlane) -> Iterator[Any]:
    """An API client authenticated as the backend's ServiceAccount (a TokenRequest token, as the lab uses)."""
    import kubernetes.config

    path = prepare_cluster(cluster)
    with kubernetes.config.new_client_from_config(config_file=str(path)) as api_client:
        yield api_client


def _allowed(api_client: Any, verb: str, group: str, resource: str, namespace: str, name: str) -> bool:
    from kubernetes import client

    resource, _, subresource = resource.partition("/")
    review = client.V1SelfSubjectAccessReview(spec=client.V1SelfSubjectAccessReviewSpec(
        resource_attributes=client.V1ResourceAttributes(
            verb=verb, group=group, resource=resource, subresource=subresource or None,
            namespace=namespace or None, name=name or None)))
    status = client.AuthorizationV1Api(api_client).create_self_subject_access_review(review).status
    return bool(status.allowed)


@pytest.mark.controlplane
def test_service_account_may_do_what_the_backend_needs(backend_api: Any) -> None:
    denied = [check for check in ALLOWED if not _allowed(backend_api, *check)]
    assert denied == []


@pytest.mark.controlplane
def test_service_account_may_do_nothing_else(backend_api: Any) -> None:
    granted = [check for check in FORBIDDEN if _allowed(backend_api, *check)]
    assert granted == []


@pytest.mark.controlplane
@pytest.mark.parametrize("namespace", ["demo", NAMESPACE])
def test_service_account_rules_are_exactly_the_needed_ones(backend_api: Any, namespace: str) -> None:
    """The whole rule set the apiserver resolves for the account in a namespace, beyond what every
    authenticated user has: a widened role fails here even if no FORBIDDEN line names it. In its own
    namespace the Role adds the Lease and the one Secret, by name."""
    from kubernetes import client

    review = client.V1SelfSubjectRulesReview(spec=client.V1SelfSubjectRulesReviewSpec(namespace=namespace))
    status = client.AuthorizationV1Api(backend_api).create_self_subject_rules_review(review).status
    everyone = {"authorization.k8s.io", "authentication.k8s.io"}
    granted = {(verb, group, resource, name) for rule in status.resource_rules
               for group in rule.api_groups if group not in everyone
               for resource in rule.resources for verb in rule.verbs for name in rule.resource_names or [""]}
    scopes = {"", "demo", namespace}  # ALLOWED's "demo" lines stand for every namespace
    expected = {(verb, group, resource, name) for verb, group, resource, ns, name in ALLOWED if ns in scopes}
    assert granted == expected


# Static checks: the manifests copy values from corefile/ and backend/config.py.

def test_corefile_configmap_is_the_corefile_folder_one() -> None:
    configmap = find("ConfigMap", "coredns-gslb-corefile")
    assert corefile_body(configmap["data"]["Corefile"]) == corefile_body(COREFILE.read_text())


def test_the_test_bed_and_the_lab_run_the_shipped_corefile() -> None:
    """lab/coredns.py derives their Corefile from corefile/Corefile: rendered for the shipped
    zones and upstream it is the shipped one, in order, plus `bind` and less the fixed-port endpoints."""
    shipped = corefile_body(COREFILE.read_text()).splitlines()
    zones = shipped[0].removesuffix("{").strip()
    upstream = grpc_targets(COREFILE.read_text())[0]
    rendered = render(GRPC_TEMPLATE, zones=zones, bind="127.0.0.1", grpc=upstream)
    kept = [line for line in rendered.splitlines() if line != "    bind 127.0.0.1"]
    dropped: list[str] = []
    at = 0
    for line in kept:  # `kept` is a subsequence of `shipped` (index raises if not); collect the rest
        found = shipped.index(line, at)
        dropped += shipped[at:found]
        at = found + 1
    dropped += shipped[at:]
    nested = ("        ", "    }")  # inside the block a dropped directive opened
    assert all(line.split()[0] in FIXED_PORTS or line.startswith(nested) for line in dropped), dropped
    assert [line.split()[0] for line in dropped if line.split()[0] in FIXED_PORTS] == [
        line.split()[0] for line in shipped if line.split()[0] in FIXED_PORTS
    ]


def test_lab_template_drops_fixed_port_directives_with_their_blocks() -> None:
    shipped = """# comment $HOME
a.test b.test {
    view v {
        expr size() > 1  # $x
    }
    health :8091 {
        lameduck 5s
    }
    prometheus :9153
    grpc . 127.0.0.1:8053 {
        tls_servername x
    }
}
"""
    assert lab_template(shipped) == """${zones} {
    bind ${bind}
    view v {
        expr size() > 1
    }
    grpc . ${grpc} {
        tls_servername x
    }
}
"""


def _containers() -> dict[str, dict[str, Any]]:
    spec = find("Deployment", "coredns-gslb")["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def test_backend_environment_uses_settings_names() -> None:
    backend = _containers()["backend"]
    names = {e["name"] for e in backend["env"]} | set(find("ConfigMap", "coredns-gslb-config")["data"])
    assert {e["configMapRef"]["name"] for e in backend["envFrom"]} == {"coredns-gslb-config"}
    assert names - config_env_names() == set()
    k8gb = {"DNS_ZONE", "EDGE_DNS_ZONE", "EDGE_DNS_SERVERS", "CLUSTER_GEO_TAG", "EXT_GSLB_CLUSTERS_GEO_TAGS"}
    assert k8gb <= names


def test_backend_accepts_the_configmap_settings() -> None:
    backend = _containers()["backend"]
    env = {**find("ConfigMap", "coredns-gslb-config")["data"],
           **{e["name"]: e["value"] for e in backend["env"] if "value" in e}}
    settings = settings_from_env(env)
    zones = [(z.dns_zone, z.edge_zone) for z in settings.gslb_zones]
    assert zones == [("gb.foowidgets.k8s", "foowidgets.k8s")]
    assert settings.cluster_geotag == "us-buf" and settings.ext_gslb_clusters_geotags == ("us-nyc",)
    assert settings.tsig_secret == f"{NAMESPACE}/{TSIG_SECRET}"


def test_corefile_grpc_and_probe_ports_match_the_pod() -> None:
    corefile = corefile_body(COREFILE.read_text()).split()
    containers = _containers()
    env = {e["name"]: e.get("value") for e in containers["backend"]["env"]}
    assert set(grpc_targets(COREFILE.read_text())) == {env["GRPC_LISTEN"]} == {"127.0.0.1:8053"}
    coredns = containers["coredns"]
    assert f":{coredns['livenessProbe']['httpGet']['port']}" == corefile[corefile.index("health") + 1]
    assert f":{coredns['readinessProbe']['httpGet']['port']}" == corefile[corefile.index("ready") + 1]
    http_port = {p["name"]: p["containerPort"] for p in containers["backend"]["ports"]}["http"]
    assert env["HTTP_LISTEN"] == f"0.0.0.0:{http_port}"
    assert containers["backend"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert containers["backend"]["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_listener_holds_the_backend_sockets_and_shutdown_drains() -> None:
    """The listener container binds what the backend serves on and shares the hand-off socket; the
    backend keeps answering through preStop while CoreDNS's lameduck runs; /explain stays on loopback."""
    containers = _containers()
    env = {name: {e["name"]: e.get("value") for e in c.get("env", [])} for name, c in containers.items()}
    for key in ("GRPC_LISTEN", "HTTP_LISTEN", "ADMIN_LISTEN", "LISTENER_SOCKET"):
        assert env["listener"][key] == env["backend"][key], key
    assert env["backend"]["ADMIN_LISTEN"].startswith("127.0.0.1:")
    assert containers["listener"]["args"] == ["listen"]
    mounts = {n: {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
              for n, c in containers.items()}
    folder = env["backend"]["LISTENER_SOCKET"].rsplit("/", 1)[0]
    assert mounts["listener"]["run"] == mounts["backend"]["run"] == folder
    assert containers["backend"]["lifecycle"]["preStop"]["sleep"]["seconds"] >= 5
    body = corefile_body(COREFILE.read_text())
    assert "lameduck 5s" in body
    spec = find("Deployment", "coredns-gslb")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] >= 5 + float(env["backend"]["SHUTDOWN_DRAIN_SECONDS"]) + 5


def test_pod_is_hardened_and_pinned() -> None:
    spec = find("Deployment", "coredns-gslb")["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] == ACCOUNT
    for c in spec["containers"]:
        assert pinned(c["image"]), c["image"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}  # CoreDNS on :53
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][bound]), (c["name"], bound)
    assert _containers()["coredns"]["image"] == COREDNS_IMAGE


def test_dns_service_and_disruption_budget() -> None:
    service = find("Service", "coredns-gslb")["spec"]
    assert service["type"] == "LoadBalancer"
    assert {(p["port"], p["protocol"]) for p in service["ports"]} == {(53, "UDP"), (53, "TCP")}
    pdb = find("PodDisruptionBudget", "coredns-gslb")["spec"]
    labels = find("Deployment", "coredns-gslb")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert service["selector"].items() <= labels.items()


def test_dockerfile_builds_the_backend_as_non_root() -> None:
    lines = [line.split() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()]
    images = [words[1] for words in lines if words[0] == "FROM"]
    assert images and all(pinned(i) and i.startswith("python:3.11") for i in images)
    user = [words[1] for words in lines if words[0] == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    assert any(words[:2] == ["ENTRYPOINT", '["coredns-gslb"]'] for words in lines)
    assert any(words[:2] == ["CMD", '["serve"]'] for words in lines)


def test_readme_overlay_builds_a_second_cluster(tmp_path: Path) -> None:
    """The per-cluster overlay k8s/README.md shows, built by kubectl's kustomize against a copy of k8s/."""
    readme = (K8S / "README.md").read_text()
    overlay = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    shutil.copytree(K8S, tmp_path / "k8s")
    (tmp_path / "clusters" / "us-nyc").mkdir(parents=True)
    (tmp_path / "clusters" / "us-nyc" / "kustomization.yaml").write_text(overlay)
    run = subprocess.run([binary("kubectl"), "kustomize", str(tmp_path / "clusters" / "us-nyc")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    [config] = [d for d in yaml.safe_load_all(run.stdout) if d["metadata"]["name"] == "coredns-gslb-config"]
    settings = settings_from_env(config["data"])
    assert (settings.cluster_geotag, settings.ext_gslb_clusters_geotags) == ("us-nyc", ("us-buf",))
    assert settings.nameserver_address == "10.2.1.221"


def test_coredns_runs_its_go_runtime_alike_in_the_pod_compose_and_the_lab() -> None:
    """The pod's CoreDNS takes GOMAXPROCS from its CPU limit (Go's default never goes below 2) and its
    soft memory limit from its memory limit, and collects at the same GOGC as the lab's CoreDNS, which
    the bench measures, and compose's."""
    coredns = _containers()["coredns"]
    env = {e["name"]: e for e in coredns["env"]}
    assert env["GOMAXPROCS"]["valueFrom"]["resourceFieldRef"] == {"resource": "limits.cpu", "divisor": "1"}
    assert str(coredns["resources"]["limits"]["cpu"]) == GO_RUNTIME["GOMAXPROCS"]
    assert env["GOGC"]["value"] == GO_RUNTIME["GOGC"]
    assert env["GOMEMLIMIT"]["valueFrom"]["resourceFieldRef"] == {"resource": "limits.memory", "divisor": "1"}
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["x-coredns"]["environment"] == GO_RUNTIME
