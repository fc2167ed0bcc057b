"""HTTP/2 frame sequences against the gRPC server on loopback (`python -m fuzz h2 [--seconds S]`).

The server runs in its own process (DnsServer with a compiled table, as in the backend), so a crash is
seen as a crash. Each sequence is a connection: the client preface and SETTINGS, then 1-40 frames
drawn from templates of every frame type (gRPC calls HPACK-encoded, split into CONTINUATIONs, padded,
with priority; DATA, SETTINGS, PING, WINDOW_UPDATE, RST_STREAM, PRIORITY, GOAWAY, unknown types) and
mutated (bytes flipped, lengths, flags and stream ids changed, frames cut, repeated or replaced by
garbage). Seeded, so a run reproduces; 64 connections at a time.

Counted: sequences and frames sent; crashes (the server process died, or stopped answering a
well-formed call, checked every 500 sequences and at the end); unhandled exceptions (tracebacks in
the server's log); the server's peak RSS. Exit status 1 on any crash or exception, or RSS over
RSS_LIMIT.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import hpack

from backend.h2grpc import PREFACE, _hpack_int, frame
from backend.proto import dns_pb2, dns_pb2_grpc

CONCURRENCY = 64
CHECK_EVERY = 500
RSS_LIMIT = 256 << 20  # the server idles at ~60 MB; the limits bound what clients add

SERVER = """
import asyncio, logging, sys
from backend import metrics
from backend.config import Settings
from backend.model import Endpoint, ObjectRef, Target
from backend.server import DnsServer, run_loop
from backend.zone.build import compile_table

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
settings = Settings(zones=("foowidgets.k8s",), grpc_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
ref = ObjectRef("Service", "fuzz", "svc")
gslbs, use_uvloop = int(sys.argv[1]), sys.argv[2] == "uvloop"
for i in range(gslbs):  # k8gb's series as the GSLB engine keeps them for the scale bench's Gslbs
    labels = ("scale", f"g-{i}")
    metrics.GSLB_RECONCILIATION_LOOPS.inc(labels)
    metrics.GSLB_HEALTHY_RECORDS.set(labels, 1)
    for status, n in (("Healthy", 1), ("Unhealthy", 0), ("NotFound", 0)):
        metrics.GSLB_SERVICE_STATUS.set((*labels, status), n)

async def main() -> None:
    server = DnsServer(settings)
    server.set_table(compile_table(settings, [
        Endpoint("nginx.foowidgets.k8s", "A", (Target("172.18.200.101"),), None, ref)], 1))
    server.set_ready(True)
    await server.start()
    print(server.grpc_port, server.http_port, flush=True)
    await asyncio.Event().wait()

run_loop(main(), use_uvloop)
"""

QUERY = bytes.fromhex("abcd01000001000000000000056e67696e780a666f6f77696467657473036b38730000010001")
CALL_HEADERS = [(":method", "POST"), (":scheme", "http"), (":path", "/coredns.dns.DnsService/Query"),
                (":authority", "127.0.0.1"), ("content-type", "application/grpc"), ("te", "trailers"),
                ("user-agent", "grpc-go/1.83.0"), ("grpc-timeout", "4999870u")]
OTHER_HEADERS = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "x"),
                 ("x-a", "b" * 100), ("te", "gzip"), ("content-length", "3"), (":status", "200"),
                 ("Upper", "x"), ("connection", "close"), ("content-type", "text/plain")]


PACKET = dns_pb2.DnsPacket(msg=QUERY).SerializeToString()
BODY = b"\0" + len(PACKET).to_bytes(4, "big") + PACKET


def huffman_field(rng: random.Random, symbols: int) -> bytes:
    """A literal field `x-junk` without indexing whose value is `symbols` random Huffman-coded
    characters of the 5-bit codes (RFC 7541 appendix B: 0-2, a, c, e, i, o, s, t), built directly
    because hpack's encoder takes seconds for megabytes."""
    codes = [0b00000, 0b00001, 0b00010, 0b00011, 0b00100, 0b00101, 0b00110, 0b00111, 0b01000, 0b01001]
    bits = "".join(format(rng.choice(codes), "05b") for _ in range(symbols))
    bits += "1" * (-len(bits) % 8)  # padding: the most significant bits of EOS
    value = int(bits, 2).to_bytes(len(bits) // 8, "big")
    name = b"x-junk"
    return b"\x00" + bytes((len(name),)) + name + _hpack_int(len(value), 7, 0x80) + value


class Generator:
    """Frame sequences: templates of every type, then mutations."""

    def __init__(self, rng: random.Random, histories: int = 200) -> None:
        self.rng = rng
        # hpack's encoder is slow (ms per block): header blocks come from 200 encoder histories made
        # up front, each the blocks one fresh encoder (dynamic table and all) gives for 40 requests
        self.histories = [self.history() for _ in range(histories)]

    def history(self) -> list[tuple[bool, bytes]]:
        rng, encoder, out = self.rng, hpack.Encoder(), []
        for _ in range(40):
            call = rng.random() < 0.6
            fields = CALL_HEADERS if call else rng.sample(OTHER_HEADERS, rng.randrange(1, 8))
            out.append((call, encoder.encode(fields, huffman=rng.random() < 0.5)))
        return out

    def sequence(self) -> tuple[bytes, int]:
        rng = self.rng
        blocks = iter(rng.choice(self.histories))
        settings = b"".join(rng.choice((1, 2, 3, 4, 5, 6, 9)).to_bytes(2, "big")
                            + rng.choice((0, 1, 100, 16384, 65535, 1 << 20, 1 << 31, rng.randrange(1 << 32)))
                            .to_bytes(4, "big") for _ in range(rng.randrange(4)))
        out = [PREFACE, frame(4, 0, 0, settings)]
        stream, frames = 1, rng.randrange(1, 41)
        for _ in range(frames):
            made = self.template(blocks, stream)
            if made[0] == 1:
                stream += 2
            out.append(self.mutate(made[1]) if rng.random() < 0.3 else made[1])
        data = b"".join(out)
        if rng.random() < 0.05:  # damage the preface or the SETTINGS itself
            pos = rng.randrange(len(data))
            data = data[:pos] + bytes((rng.randrange(256),)) + data[pos + 1:]
        return data, frames

    def template(self, blocks: Iterator[tuple[bool, bytes]], stream: int) -> tuple[int, bytes]:
        rng = self.rng
        kind = rng.choice(("headers", "headers", "headers", "headers", "data", "settings", "ping", "window",
                           "rst", "priority", "goaway", "continuation", "unknown", "push"))
        old = rng.choice((stream - 2, stream - 4, stream, 0)) if stream > 3 else stream
        if kind in ("headers", "continuation"):
            call, block = next(blocks)
            end = 1 if rng.random() < 0.2 else 0
            if kind == "continuation" and len(block) > 1:
                cut = rng.randrange(1, len(block))
                return 1, frame(1, end, stream, block[:cut]) + frame(9, 4, stream, block[cut:])
            flags, payload = 4 | end, block
            if rng.random() < 0.2:
                flags |= 0x20
                payload = rng.choice((0, stream, max(stream - 2, 0))).to_bytes(4, "big") + b"\x10" + payload
            if rng.random() < 0.2:
                pad = rng.randrange(20)
                flags |= 0x8
                payload = bytes((pad,)) + payload + b"\0" * pad
            body = frame(0, 1, stream, BODY) if call and not end else b""
            return 1, frame(1, flags, stream, payload) + body
        if kind == "data":
            payload = rng.choice((BODY, rng.randbytes(rng.randrange(100)), b"x" * 16384))
            return 0, frame(0, rng.choice((0, 1, 8, 9)), old, payload)
        if kind == "settings":
            return 0, frame(4, rng.choice((0, 0, 1)), 0, rng.randbytes(rng.choice((0, 6, 12, 5))))
        if kind == "ping":
            return 0, frame(6, rng.choice((0, 1)), 0, rng.randbytes(8))
        if kind == "window":
            increment = rng.choice((0, 1, 65535, (1 << 31) - 1))
            return 0, frame(8, 0, rng.choice((0, old)), increment.to_bytes(4, "big"))
        if kind == "rst":
            return 0, frame(3, 0, old, rng.randrange(14).to_bytes(4, "big"))
        if kind == "priority":
            return 0, frame(2, 0, rng.choice((old, stream + 2)), rng.randbytes(5))
        if kind == "goaway":
            return 0, frame(7, 0, 0, rng.randbytes(8))
        if kind == "push":
            return 0, frame(5, 4, old, rng.randbytes(10))
        return 0, frame(rng.randrange(10, 256), rng.randrange(256), old, rng.randbytes(rng.randrange(20)))

    def mutate(self, data: bytes) -> bytes:
        rng = self.rng
        b = bytearray(data)
        how = rng.randrange(7)
        if how == 0:  # flip bytes
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif how == 1:  # another length
            b[0:3] = rng.choice((0, 1, len(b), 16384, 16385, rng.randrange(1 << 24))).to_bytes(3, "big")
        elif how == 2:  # other flags
            b[4] = rng.randrange(256)
        elif how == 3:  # another stream id
            b[5:9] = rng.choice((0, 1, 2, 0x7FFFFFFF, rng.randrange(1 << 32))).to_bytes(4, "big")
        elif how == 4:  # cut
            del b[rng.randrange(len(b)):]
        elif how == 5:  # repeat
            b = b * rng.randrange(2, 5)
        else:  # garbage
            b = bytearray(rng.randbytes(rng.randrange(1, 64)))
        return bytes(b)


async def send_sequence(port: int, data: bytes) -> None:
    """One connection: send, then read until the server closes or is quiet for 20 ms."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    try:
        writer.write(data)
        await writer.drain()
        while await asyncio.wait_for(reader.read(65536), 0.02):
            pass
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


def healthy(port: int) -> bool:
    """A well-formed gRPC call is answered."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = dns_pb2_grpc.DnsServiceStub(channel).Query(dns_pb2.DnsPacket(msg=QUERY), timeout=10)
        return reply.msg[:2] == QUERY[:2]
    except grpc.RpcError:
        return False


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


class Server:
    """The server process; restarted after a crash. `gslbs`: k8gb's per-Gslb series for that many Gslbs
    on its /metrics (~4 MiB at 10,000, as in the scale bench); `uvloop`: its loop, as in the backend
    (False: asyncio's own, as `--no-uvloop`)."""

    def __init__(self, log: Path, gslbs: int = 0, uvloop: bool = False) -> None:
        self.log = log
        self.args = [str(gslbs), "uvloop" if uvloop else "asyncio"]
        self.process: subprocess.Popen[str] | None = None
        self.port = 0  # gRPC
        self.http_port = 0  # /healthz, /readyz, /metrics
        self.peak = 0

    def start(self) -> None:
        logfile = self.log.open("a")
        self.process = subprocess.Popen([sys.executable, "-c", SERVER, *self.args], stdout=subprocess.PIPE,
                                        stderr=logfile, text=True, cwd=Path(__file__).resolve().parents[1])
        assert self.process.stdout is not None
        self.port, self.http_port = map(int, self.process.stdout.readline().split())

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample(self) -> None:
        if self.alive():
            assert self.process is not None
            self.peak = max(self.peak, rss(self.process.pid, "VmHWM"))

    def stop(self) -> None:
        if self.alive():
            assert self.process is not None
            self.sample()
            self.process.terminate()
            self.process.wait(10)


async def fuzz(server: Server, seconds: float, seed: int, keep: Path) -> dict[str, int]:
    gen = Generator(random.Random(seed))
    counts = {"sequences": 0, "frames": 0, "bytes": 0, "crashes": 0, "checks": 0}
    deadline = time.monotonic() + seconds
    recent: list[bytes] = []
    while time.monotonic() < deadline:
        batch = [gen.sequence() for _ in range(CHECK_EVERY)]
        for i in range(0, len(batch), CONCURRENCY):
            chunk = batch[i:i + CONCURRENCY]
            await asyncio.gather(*(send_sequence(server.port, data) for data, _ in chunk))
        for data, frames in batch:
            counts["sequences"] += 1
            counts["frames"] += frames
            counts["bytes"] += len(data)
        recent = [data for data, _ in batch]
        server.sample()
        counts["checks"] += 1
        if not server.alive() or not await asyncio.to_thread(healthy, server.port):
            counts["crashes"] += 1
            (keep / f"crash-{counts['crashes']}.bin").write_bytes(b"".join(recent))
            print(f"[fuzz h2] server {'died' if not server.alive() else 'stopped answering'}; the last "
                  f"{len(recent)} sequences are in {keep}", flush=True)
            server.stop()
            server.start()
    return counts


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz h2", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to fuzz (default 180)")
    ap.add_argument("--seed", type=int, default=9113)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="fuzz-h2-"))
    server = Server(work / "server.log")
    server.start()
    try:
        counts = asyncio.run(fuzz(server, args.seconds, args.seed, work))
        if server.alive() and not healthy(server.port):
            counts["crashes"] += 1
    finally:
        server.stop()
    log = server.log.read_text(errors="replace")
    exceptions = log.count("Traceback")
    ok = not counts["crashes"] and not exceptions and server.peak <= RSS_LIMIT
    print(f"[fuzz h2] {counts['sequences']:,} sequences, {counts['frames']:,} frames, "
          f"{counts['bytes'] / 1e6:.1f} MB sent in {args.seconds:.0f} s (seed {args.seed}); "
          f"{counts['checks']} health checks; crashes {counts['crashes']}; unhandled exceptions "
          f"{exceptions}; server peak RSS {server.peak / 2**20:.1f} MiB (limit {RSS_LIMIT >> 20}); "
          f"log {server.log}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
