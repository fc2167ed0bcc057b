"""The product as a cluster gets it: the wheel built from exactly what the Dockerfile COPYs (so also the
image's files) holds the backend and nothing of the lab, the tests, bench or fuzz; its runtime
dependencies are exactly the third-party distributions its modules import.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from importlib.metadata import packages_distributions
from pathlib import PurePosixPath

import pytest

from lab.proc import ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """`pip wheel` (offline: no dependencies, no build isolation) of the Dockerfile's build context."""
    src = tmp_path_factory.mktemp("context")
    ignored = [line.removeprefix("**/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("**/")]  # the build context leaves these out
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not words[1].startswith("--from"):
            for source in words[1:-1]:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, src / source, ignore=shutil.ignore_patterns(*ignored))
                else:
                    shutil.copy(ROOT / source, src / source)
    dist = tmp_path_factory.mktemp("dist")
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dist)]
    run = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    [built] = dist.glob("coredns_gslb-*.whl")
    return zipfile.ZipFile(built)


def product_modules(wheel: zipfile.ZipFile) -> dict[str, str]:
    return {n: wheel.read(n).decode() for n in wheel.namelist() if n.endswith(".py")}


def test_the_wheel_holds_what_a_cluster_runs_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {PurePosixPath(n).parts[0] for n in names}
    assert tops == {"backend", "coredns_gslb-0.1.0.dist-info"}, "no lab/, tests/, bench/ or fuzz/"
    assert [n for n in names if PurePosixPath(n).name.startswith("test_")] == [], "unit tests stay behind"
    assert "backend/proto/dns_pb2_grpc.py" not in names, "the tests' gRPC stub (grpcio) is not the product's"
    assert {"backend/app.py", "backend/cli.py", "backend/h2grpc.py", "backend/listener.py",
            "backend/proto/dns_pb2.py"} <= set(names)
    assert not any("lab" in PurePosixPath(n).parts for n in names)
    entry_points = next(wheel.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "coredns-gslb = backend.cli:main" in entry_points
    assert "coredns_gslb.commands" not in entry_points, "the `lab` verb comes from the lab's distribution"


def imported_top_levels(source: str) -> set[str]:
    """Top-level names of every absolute import, also those inside functions (lazy imports)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_dependencies_are_exactly_what_the_product_imports(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(next(wheel.read(n).decode() for n in wheel.namelist()
                                      if n.endswith(".dist-info/METADATA")))
    required = {canonical(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0])
                for r in metadata.get_all("Requires-Dist") or [] if "extra ==" not in r}
    imported = set().union(*map(imported_top_levels, product_modules(wheel).values()))
    third_party = imported - set(sys.stdlib_module_names) - {"backend", "__future__"}
    providers = packages_distributions()  # import name -> installed distributions that provide it
    missing = {name: providers.get(name) for name in third_party
               if not required & {canonical(d) for d in providers.get(name, [])}}
    assert missing == {}, "imported by product code (the lab too?) but not a runtime dependency"
    used = {canonical(d) for name in third_party for d in providers.get(name, [])}
    assert required - used == set(), "runtime dependencies no product module imports: move them to dev"
