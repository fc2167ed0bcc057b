"""What tests/test_manifests.py and tests/test_compose.py both read: k8s/ documents, the Corefile
without comments, and the environment variables backend/config.py understands."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import yaml

from backend.config import Settings, from_args

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
CHAPTER = ROOT / "lab" / "manifests"  # the chapter's manifests, as the lab applies them
COREFILE = ROOT / "corefile" / "Corefile"


def manifest_files() -> list[Path]:
    """Every manifest under k8s/ (the kustomization is kustomize's input, not an object)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path: Path) -> Iterator[dict[str, Any]]:
    yield from (doc for doc in yaml.safe_load_all(path.read_text()) if doc)


def find(kind: str, name: str) -> dict[str, Any]:
    for path in manifest_files():
        for doc in documents(path):
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
    raise LookupError(f"no {kind} {name} under k8s/")


def corefile_body(text: str) -> str:
    """A Corefile's directives only: comments and blank lines differ between copies, meaning must not."""
    lines = (line.split("#", 1)[0].rstrip() for line in text.splitlines())
    return "\n".join(line for line in lines if line.strip())


def grpc_targets(text: str) -> list[str]:
    """The upstream of every `grpc .` directive (one per server block of the Corefile)."""
    words = corefile_body(text).split()
    return [words[i + 2] for i, word in enumerate(words) if word == "grpc" and words[i + 1] == "."]


def config_env_names() -> set[str]:
    """Environment variables backend/config.py reads (flag fallbacks and the downward-API POD_NAME)."""
    source = (ROOT / "backend" / "config.py").read_text()
    return set(re.findall(r'(?:_env|os\.environ\.get)\(\s*"([A-Z][A-Z0-9_]*)"', source))


def pinned(image: str) -> bool:
    """A fixed version tag or a digest; `latest` and bare names drift under the user."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and any(c.isdigit() for c in tag)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """What `coredns-gslb serve` makes of a container's environment (and nothing else from ours)."""
    clean = {k: v for k, v in os.environ.items() if k not in config_env_names()}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        return from_args([])
