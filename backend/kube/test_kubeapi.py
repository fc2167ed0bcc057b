"""Reading watch streams: HTTP/1.1 chunked framing and JSON lines, through a real loopback HTTP server."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import urllib3

from backend.kube.kubeapi import DroppedWrites, KubeError, error_of, json_lines, unchunked

EVENTS = [{"type": "ADDED", "object": {"metadata": {"name": f"s-{i}"}, "data": "x" * (i * 37 % 3000)}}
          for i in range(200)]


def chunked(payloads: list[bytes], ext: bytes = b"") -> bytes:
    return b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in payloads) + b"0\r\n\r\n"


def reads(data: bytes, sizes: Iterator[int]) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        n = next(sizes)
        out.append(data[pos : pos + n])
        pos += n
    return out


def reader(parts: list[bytes]) -> Callable[[int], bytes]:
    """A read1 that returns `parts` one by one, then end of stream."""
    it = iter(parts)
    return lambda _n: next(it, b"")


def lines_of(events: list[dict]) -> list[bytes]:
    return [json.dumps(e).encode() + b"\n" for e in events]


@pytest.mark.parametrize("split", [1, 2, 3, 7, 100, 4096, 1 << 20])
def test_unchunked_gives_the_data_back_whatever_the_reads_cut(split: int) -> None:
    payloads = lines_of(EVENTS)
    parts = reads(chunked(payloads, b";ext=1" if split == 7 else b""), iter(lambda: split, None))
    assert b"".join(unchunked(reader(parts))) == b"".join(payloads)


def test_unchunked_with_random_cuts() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.randrange(1, 5000)) for _ in range(300)]
    parts = reads(chunked(payloads), iter(lambda: rng.randrange(1, 9000), None))
    assert b"".join(unchunked(reader(parts))) == b"".join(payloads)


def test_a_stream_cut_short_is_an_error_not_an_end() -> None:
    data = chunked(lines_of(EVENTS[:3]))[:-5]  # without the last chunk
    with pytest.raises(urllib3.exceptions.ProtocolError):
        b"".join(unchunked(reader([data])))


def test_a_bad_chunk_size_is_an_error() -> None:
    with pytest.raises(ValueError):
        list(unchunked(reader([b"zz\r\n{}\r\n0\r\n\r\n"])))


class Server:
    """A loopback HTTP/1.1 server answering every request with `body` (chunked unless told otherwise),
    keeping connections open between requests."""

    def __init__(self, body: bytes, headers: bytes) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.body, self.headers = body, headers
        self.release = threading.Event()  # set to send the rest of the body
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    more = conn.recv(4096)
                    if not more:
                        return
                    buf += more
                buf = buf.partition(b"\r\n\r\n")[2]
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s\r\n" % self.headers)
                head, _, tail = self.body.partition(b"HOLD")
                conn.sendall(head)
                self.release.wait(10)
                conn.sendall(tail)


def get(server: Server, pool: urllib3.PoolManager | None = None) -> urllib3.BaseHTTPResponse:
    return (pool or urllib3.PoolManager()).request("GET", f"http://127.0.0.1:{server.port}/",
                                                    preload_content=False)


def test_json_lines_from_a_chunked_stream_yields_each_event_once_its_line_is_in() -> None:
    first, rest = lines_of(EVENTS[:5]), lines_of(EVENTS[5:])
    # One event split across two chunks, blank keep-alive lines, and a hold: what came before the
    # hold must be yielded without waiting for more.
    payloads = [*first[:4], first[4][:10], first[4][10:], b"\n", b"  \n"]
    body = chunked(payloads)[: -len(b"0\r\n\r\n")] + b"HOLD" + chunked(rest)
    server = Server(body, b"Transfer-Encoding: chunked\r\n")
    resp = get(server)
    events = json_lines(resp)
    got = [next(events) for _ in range(5)]
    assert got == EVENTS[:5]
    server.release.set()
    assert list(events) == EVENTS[5:]


def test_a_pooled_connection_serves_the_next_request_after_a_stream_ended() -> None:
    """As the lab's watches use it: read a whole chunked stream, hand the connection back, ask again."""
    server = Server(chunked(lines_of(EVENTS)), b"Transfer-Encoding: chunked\r\n")
    server.release.set()
    pool = urllib3.PoolManager()
    for _ in range(2):
        resp = get(server, pool)
        assert list(json_lines(resp)) == EVENTS
        resp.release_conn()


def test_json_lines_from_a_plain_body() -> None:
    body = b"".join(lines_of(EVENTS)).rstrip(b"\n")  # the last line without its newline
    server = Server(body + b"HOLD", b"Content-Length: %d\r\n" % len(body))
    server.release.set()
    assert list(json_lines(get(server))) == EVENTS


def test_a_bad_line_comes_after_the_good_ones_before_it() -> None:
    body = chunked([b"".join(lines_of(EVENTS[:3])) + b"{not json\n" + b"".join(lines_of(EVENTS[3:6]))])
    server = Server(body, b"Transfer-Encoding: chunked\r\n")
    server.release.set()
    events = json_lines(get(server))
    assert [next(events) for _ in range(3)] == EVENTS[:3]
    with pytest.raises(ValueError):
        next(events)


def _status_reply(code: int, status: dict[str, object]) -> urllib3.HTTPResponse:
    return urllib3.HTTPResponse(body=json.dumps(status).encode(), status=code, preload_content=True)


def test_a_create_refused_in_a_terminating_namespace_is_told_apart_from_other_403s() -> None:
    """NamespaceLifecycle's Status body (the cause type is `reason` in JSON) against RBAC's 403."""
    terminating = error_of(_status_reply(403, {
        "kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
        "message": 'events "fe.1" is forbidden: unable to create new content in namespace demo because it '
                   "is being terminated",
        "details": {"name": "fe.1", "kind": "events", "causes": [
            {"reason": "NamespaceTerminating", "message": "namespace demo is being terminated",
             "field": "metadata.namespace"}]}}))
    assert terminating.causes == ("NamespaceTerminating",) and terminating.namespace_terminating
    rbac = error_of(_status_reply(403, {"kind": "Status", "code": 403, "reason": "Forbidden",
                                        "message": 'events is forbidden: User "x" cannot create resource'}))
    assert rbac.causes == () and not rbac.namespace_terminating
    assert KubeError(403, "unable to create new content in namespace demo because it is being terminated"
                     ).namespace_terminating, "an older API without the cause: its message"
    assert not error_of(_status_reply(404, {"code": 404, "message": "not found"})).namespace_terminating


def test_writes_into_a_dying_namespace_are_each_counted_and_logged_once_per_namespace(
        caplog: pytest.LogCaptureFixture) -> None:
    counted: list[tuple[str, str]] = []
    log = logging.getLogger("test.dropped")
    dropped = DroppedWrites(log, "namespace %s is being deleted",
                            lambda what, why: counted.append((what, why)))
    with caplog.at_level(logging.INFO, logger=log.name):
        dropped("doomed", "status", "namespace_deleting")
        dropped("doomed", "event", "namespace_terminating")
        dropped("other", "status", "namespace_deleting")
    assert counted == [("status", "namespace_deleting"), ("event", "namespace_terminating"),
                       ("status", "namespace_deleting")]
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == [
        "namespace doomed is being deleted", "namespace other is being deleted"]


def namespace(uid: str, deleting: bool = False) -> dict[str, Any]:
    meta = {"name": "doomed", "uid": uid}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T04:00:00Z"
    return {"kind": "Namespace", "metadata": meta}


def test_a_namespace_deleted_again_under_its_name_gets_its_line_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """Deleted, made anew (a new uid), deleted again: a line for each deletion, still one per namespace."""
    log = logging.getLogger("test.dropped")
    dropped = DroppedWrites(log, "namespace %s is being deleted", lambda _what, _why: None)
    with caplog.at_level(logging.INFO, logger=log.name):
        dropped.on_namespace("ADDED", namespace("u1"), None)
        dropped.on_namespace("MODIFIED", namespace("u1", deleting=True), namespace("u1"))
        dropped("doomed", "status", "namespace_deleting")
        dropped.on_namespace("MODIFIED", namespace("u1", deleting=True), namespace("u1", deleting=True))
        dropped("doomed", "status", "namespace_deleting")  # the same namespace: no second line
        dropped.on_namespace("DELETED", namespace("u1", deleting=True), None)
        dropped.on_namespace("ADDED", namespace("u2"), None)
        dropped.on_namespace("MODIFIED", namespace("u2", deleting=True), namespace("u2"))
        dropped("doomed", "event", "namespace_terminating")
        dropped("doomed", "status", "namespace_deleting")
        # deleted and made anew while the watch was down: the relist tells it as MODIFIED, another uid
        dropped.on_namespace("MODIFIED", namespace("u3", deleting=True), namespace("u2", deleting=True))
        dropped("doomed", "status", "namespace_deleting")
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == [
        "namespace doomed is being deleted"] * 3
