"""docker-compose.yml is not run anywhere we test (no Docker engine), so these checks keep it honest
against what is: the files it mounts, the Corefile and its grpc port, the settings backend/config.py
reads, the images k8s/ pins, and the addresses the clusters publish to each other through the edge.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from deployfiles import COREFILE, ROOT, config_env_names, find, grpc_targets, pinned, settings_from_env

COMPOSE = ROOT / "docker-compose.yml"
CLUSTERS = ("us-buf", "us-nyc")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount (named volumes have no ./ source)."""
    out = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            out.append((source, target))
    return out


def _in_container(service: dict[str, Any], container_path: str) -> Path | None:
    """The repository file behind a path inside the container, through the service's bind mounts."""
    for source, target in _mounts(service):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return (ROOT / source / container_path[len(target):].lstrip("/")).resolve()
    return None


def test_every_bind_mount_exists(services: dict[str, dict[str, Any]]) -> None:
    missing = [(name, source) for name, svc in services.items() for source, _ in _mounts(svc)
               if not (ROOT / source).exists()]
    assert missing == []


def test_files_named_in_commands_exist(services: dict[str, dict[str, Any]]) -> None:
    """Setup manifests, kubeconfigs and the setup script: every absolute path a command names that lies
    under a bind mount must be a file in the repository."""
    missing = []
    for name, svc in services.items():
        words = [*svc.get("entrypoint", []), *svc.get("command", [])]
        words += [v for v in (svc.get("environment") or {}).values() if isinstance(v, str)]
        for word in words:
            for token in str(word).replace("=", " ").split():
                path = _in_container(svc, token) if token.startswith("/") else None
                if path is not None and not path.exists():
                    missing.append((name, token))
    assert missing == []


def test_images_are_pinned_and_match_k8s(services: dict[str, dict[str, Any]]) -> None:
    assert [name for name, svc in services.items() if not pinned(svc["image"])] == []
    pod = find("Deployment", "coredns-gslb")["spec"]["template"]["spec"]
    k8s_images = {c["name"]: c["image"] for c in pod["containers"]}
    for cluster in CLUSTERS:
        assert services[f"{cluster}-coredns"]["image"] == k8s_images["coredns"]
        backend = services[f"{cluster}-backend"]
        assert backend["image"] == k8s_images["backend"]
        assert backend["build"] == "." and (ROOT / "Dockerfile").exists()


def test_coredns_runs_the_corefile_folder_one(services: dict[str, dict[str, Any]]) -> None:
    for cluster in CLUSTERS:
        coredns = services[f"{cluster}-coredns"]
        conf = coredns["command"][coredns["command"].index("-conf") + 1]
        assert _in_container(coredns, conf) == COREFILE.resolve()


def test_backend_shares_the_coredns_network_and_its_grpc_port(services: dict[str, dict[str, Any]]) -> None:
    targets = set(grpc_targets(COREFILE.read_text()))
    for cluster in CLUSTERS:
        backend = services[f"{cluster}-backend"]
        assert backend["network_mode"] == f"service:{cluster}-coredns"
        assert {backend["environment"]["GRPC_LISTEN"]} == targets
        admin_port = backend["environment"]["ADMIN_LISTEN"].rsplit(":", 1)[1]
        published = [p.rsplit(":", 1)[1] for p in services[f"{cluster}-coredns"]["ports"]]
        assert admin_port in published  # explain --http reaches it from the host


def test_backend_environment_uses_settings_names(services: dict[str, dict[str, Any]]) -> None:
    known = config_env_names()
    for cluster in CLUSTERS:
        env = services[f"{cluster}-backend"]["environment"]
        assert set(env) - known == set()
        settings = settings_from_env(env)
        assert settings.cluster_geotag == cluster and settings.gslb_zones and settings.zones
        assert {"DNS_ZONE", "EDGE_DNS_ZONE", "EDGE_DNS_SERVERS", "CLUSTER_GEO_TAG",
                "EXT_GSLB_CLUSTERS_GEO_TAGS"} <= set(env)


def test_clusters_find_each_other_through_the_edge(services: dict[str, dict[str, Any]]) -> None:
    """Peers resolve gslb-ns-<geotag> at the edge and query that address on port 53: each backend must
    publish its own CoreDNS's fixed address, point at the edge's, and name the other cluster's geotag."""
    edge_ip = services["edge"]["networks"]["gslb"]["ipv4_address"]
    for cluster in CLUSTERS:
        env = services[f"{cluster}-backend"]["environment"]
        assert env["CLUSTER_GEO_TAG"] == cluster
        assert env["EXT_GSLB_CLUSTERS_GEO_TAGS"].split(",") == [c for c in CLUSTERS if c != cluster]
        assert env["NAMESERVER_ADDRESS"] == services[f"{cluster}-coredns"]["networks"]["gslb"]["ipv4_address"]
        assert env["EDGE_DNS_SERVERS"] == edge_ip
        kubeconfig = _in_container(services[f"{cluster}-backend"], env["KUBECONFIG"])
        server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
        assert server.split("//")[1].split(":")[0] == f"{cluster}-api"
        assert f"{cluster}-api" in services


def test_edge_accepts_updates_with_the_key_the_backends_read(services: dict[str, dict[str, Any]]) -> None:
    conf = _in_container(services["edge"], "/compose/named.conf").read_text()
    keygen = services["tsig-key"]["command"][0]
    key_name = keygen.split("hmac-sha256 ")[1].split()[0]
    assert f'allow-update {{ key "{key_name}"; }}' in conf
    assert 'include "/keys/tsig.key"' in conf
    for cluster in CLUSTERS:
        assert services[f"{cluster}-backend"]["environment"]["TSIG_KEY_FILE"] == "/keys/tsig.key"


def test_dependencies_name_real_services(services: dict[str, dict[str, Any]]) -> None:
    """And the rules compose enforces or users trip over: a one-shot job that others wait for to finish
    must not restart, and a service in another's network namespace publishes no ports of its own."""
    conditions = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services.items():
        for dependency, spec in svc.get("depends_on", {}).items():
            assert dependency in services and spec["condition"] in conditions, (name, dependency)
            if spec["condition"] == "service_completed_successfully":
                assert "restart" not in services[dependency], dependency
        if "network_mode" in svc:
            assert "ports" not in svc and "networks" not in svc, name


def test_lab_modules_are_mounted_since_the_image_has_no_lab(services: dict[str, dict[str, Any]]) -> None:
    """A service running `python -m lab.X` from the backend's image finds lab/X.py through a bind mount
    under its PYTHONPATH (tests/test_wheel.py: the image holds no lab)."""
    for name, svc in services.items():
        words = svc.get("entrypoint", [])
        if words[1:2] == ["-m"] and words[2].startswith("lab."):
            module = words[2].replace(".", "/") + ".py"
            path = svc["environment"]["PYTHONPATH"].rstrip("/") + "/" + module
            assert _in_container(svc, path) == (ROOT / module).resolve(), name


def test_readme_says_compose_is_not_run_in_ci() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Docker", 1)[1].split("\n## ", 1)[0]
    assert "docker-compose.yml" in section and "not exercised in CI" in section
