"""Regenerate the Python stubs for proto/dns.proto with grpcio-tools (`make proto`).

protoc writes `import dns_pb2` into the gRPC stub, which only works with backend/proto on sys.path;
the import is rewritten to the package path so the stubs import like any other module.
`generate()` is also what tests/test_proto.py compares with the committed files.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto" / "dns.proto"
OUT = Path(__file__).resolve().parent
FILES = ("dns_pb2.py", "dns_pb2_grpc.py")


def generate() -> dict[str, str]:
    """The stub files' text as protoc would write them today, keyed by file name."""
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        rc = protoc.main(
            ["protoc", f"-I{PROTO.parent}", f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO.name]
        )
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        texts = {name: (Path(tmp) / name).read_text() for name in FILES}
    texts["dns_pb2_grpc.py"] = texts["dns_pb2_grpc.py"].replace(
        "import dns_pb2 as dns__pb2", "from backend.proto import dns_pb2 as dns__pb2"
    )
    return texts


def main() -> int:
    for name, text in generate().items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
