"""The wheel (and so the image) holds only what a cluster runs: pyproject.toml says what, this says what
not. Setuptools builds every module of a package; these stay in the checkout for development:
the unit tests beside the code (`test_*.py`), the stub generator (`backend/proto/build.py`, grpcio-tools)
and the gRPC stub (`dns_pb2_grpc.py`, grpcio: the tests' client; the server is backend/h2grpc.py).
tests/test_wheel.py builds the wheel and lists its files.
"""

from __future__ import annotations

from pathlib import PurePath

from setuptools import setup
from setuptools.command.build_py import build_py

DEVELOPMENT_ONLY = ("test_*.py", "backend/proto/build.py", "backend/proto/dns_pb2_grpc.py")


class ProductModules(build_py):
    """build_py without the development-only modules (editable installs still see the whole folder)."""

    def find_package_modules(self, package: str, package_dir: str) -> list[tuple[str, str, str]]:
        return [m for m in super().find_package_modules(package, package_dir)
                if not any(PurePath(m[2]).match(p) for p in DEVELOPMENT_ONLY)]


setup(cmdclass={"build_py": ProductModules})
