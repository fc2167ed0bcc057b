"""Raw JSON over the kubernetes client's connection pool and credentials.

The generated client turns every object into model classes, which costs more than the whole rest of a
10k-object sync; every reader and writer in this project works on the API's own JSON dicts instead.
The ApiClient still does what it is good at: kubeconfig / in-cluster auth, TLS, token refresh, pooling.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import urllib3
from kubernetes import client, config

from backend.keyedlog import KeyedLog

Query = Sequence[tuple[str, str | int]]


class KubeError(Exception):
    """A non-2xx answer from the API, with its HTTP status, the API's Status message and the types of
    its `details.causes` (`reason` in the JSON; what client-go's HasStatusCause looks at)."""

    def __init__(self, status: int, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.causes = causes

    @property
    def namespace_terminating(self) -> bool:
        """A create the API refused because the namespace is being deleted (NamespaceLifecycle's 403:
        cause NamespaceTerminating): it will never succeed, so it is not worth a retry or a warning."""
        return self.status == 403 and (NAMESPACE_TERMINATING in self.causes
                                       or "because it is being terminated" in self.message)


NAMESPACE_TERMINATING = "NamespaceTerminating"  # core/v1 NamespaceTerminatingCause


class DroppedWrites:
    """Writes given up because their namespace is being deleted (its deletionTimestamp seen, or the API's
    403 NamespaceTerminating): each one counted, `count(what, why)`, and one `message % namespace` line
    (INFO) per namespace, never one per object: deleting a namespace of 10,000 Gslbs meant thousands.
    Once per namespace, not per name: `on_namespace` re-arms a name whose namespace is gone."""

    def __init__(self, logger: logging.Logger, message: str, count: Callable[[str, str], None]) -> None:
        self._logged = KeyedLog(logger)
        self._message = message
        self._count = count

    def __call__(self, namespace: str, what: str, why: str) -> None:
        self._count(what, why)
        self._logged(namespace, logging.INFO, self._message, namespace)

    def on_namespace(self, type_: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> None:
        """The Namespace informer's handler: a namespace gone, or made anew under its name (another uid;
        a relist tells that as MODIFIED), gets its line again when it is deleted again."""
        meta = obj.get("metadata") or {}
        made_anew = old is not None and (old.get("metadata") or {}).get("uid") != meta.get("uid")
        if type_ == "DELETED" or made_anew:
            self._logged.rearm(meta.get("name", ""))


def api_client(kubeconfig: str | None = None, pool_size: int = 32) -> client.ApiClient:
    """A kubeconfig file if given, else the in-cluster service account, else ~/.kube/config.

    The pool must hold one long-lived watch per informer plus the writers, or urllib3 drops and
    reopens connections on every request.
    """
    cfg = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
    else:
        config.load_kube_config(client_configuration=cfg)
    cfg.connection_pool_maxsize = pool_size
    # One quiet retry for a pooled connection the server closed; the informers back off themselves.
    cfg.retries = urllib3.Retry(total=1, connect=0, backoff_factor=0)
    return client.ApiClient(cfg)


LEASES = ("coordination.k8s.io", "v1", "leases")  # (group, version, plural): leader election, peer book


def resource_path(group: str, version: str, plural: str, namespace: str | None = None, name: str = "") -> str:
    """/api/v1/... for the core group, /apis/<group>/<version>/... otherwise."""
    path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += f"/{plural}"
    return path + (f"/{name}" if name else "")


def timestamp(micro: bool = False) -> str:
    """Now as Kubernetes writes Time (seconds) or MicroTime (Leases need the microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def open_(
    api: client.ApiClient,
    method: str,
    path: str,
    query: Query = (),
    body: Any = None,
    content_type: str = "application/json",
    timeout: float | tuple[float, float] | None = 30.0,
) -> urllib3.BaseHTTPResponse:
    """Send one request; the caller reads (or streams) and releases the urllib3 response."""
    headers: dict[str, str] = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = content_type
    method, url, headers, body, _ = api.param_serialize(
        method, path, query_params=list(query), header_params=headers, body=body,
        auth_settings=["BearerToken"],
    )
    return api.rest_client.request(method, url, headers=headers, body=body, _request_timeout=timeout).response


def error_of(resp: urllib3.BaseHTTPResponse) -> KubeError:
    raw = resp.data
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        return KubeError(resp.status, raw[:200].decode(errors="replace") or (resp.reason or ""))
    body = body if isinstance(body, dict) else {}
    # metav1.StatusCause's Type is "reason" in JSON
    causes = tuple(str(c.get("reason") or "") for c in (body.get("details") or {}).get("causes") or ()
                   if isinstance(c, dict))
    return KubeError(resp.status, body.get("message", "") or (resp.reason or ""), causes)


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    query: Query = (),
    body: Any = None,
    content_type: str = "application/json",
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One request, its JSON answer as a dict; a non-2xx answer raises KubeError."""
    resp = open_(api, method, path, query, body, content_type, timeout)
    try:
        if not 200 <= resp.status < 300:
            raise error_of(resp)
        raw = resp.data
        return json.loads(raw) if raw else {}
    finally:
        resp.release_conn()


BLOCK = 1 << 18  # bytes asked of the socket at a time while a stream is read


def json_lines(resp: urllib3.BaseHTTPResponse) -> Iterator[Mapping[str, Any]]:
    """Decode a watch stream: one JSON object per line, yielded as soon as its line is complete.

    A streaming list sends 100,000s of them: every complete line of a block read is decoded in one
    call (a JSON array of them), which also lets the decoder share one string per key among them.
    """
    rest = b""
    for block in _body(resp):
        lines = (rest + block if rest else block).split(b"\n")
        rest = lines.pop()
        yield from _decoded([line for line in lines if line and not line.isspace()])
    if rest.strip():
        yield json.loads(rest)


def _decoded(lines: list[bytes]) -> Iterator[Any]:
    """The objects of `lines`; on a line that is not JSON, those before it, then the ValueError."""
    if not lines:
        return
    try:
        yield from json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        for line in lines:  # raises at the first bad line, as decoding one line at a time did
            yield json.loads(line)


def _body(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """The body in blocks as they arrive. The API sends each watch event as its own HTTP chunk, and
    urllib3 yields one chunk per step through several calls (a tenth of a 100,000-object sync): an
    uncompressed chunked body is un-chunked here, straight from the connection's buffered reader."""
    raw = getattr(getattr(resp, "_fp", None), "fp", None)  # http.client's reader of the socket
    if not resp.chunked or raw is None or resp.headers.get("Content-Encoding"):
        yield from resp.stream(BLOCK)
        return
    yield from unchunked(raw.read1)
    # http.client did not see the body end, so the connection must not serve another request (the
    # informer closes it anyway; the lab's watch hands it back to the pool).
    resp.close()


def unchunked(read1: Callable[[int], bytes]) -> Iterator[bytes]:
    """HTTP/1.1 chunked transfer coding (RFC 9112 7.1) -> the data, one block per read that brought
    some; ends at the last chunk (trailers are not read: the caller closes the connection). A read
    that returns nothing before it raises ProtocolError, as urllib3 does for a stream cut short."""
    buf, pos = b"", 0
    data_left = 0  # bytes of the current chunk's data still to come
    crlf_left = 0  # bytes of the CRLF after a chunk's data still to skip
    while True:
        more = read1(BLOCK)
        if not more:
            raise urllib3.exceptions.ProtocolError("the stream ended before its last chunk")
        buf, pos = (buf[pos:] + more if pos < len(buf) else more), 0
        out: list[bytes] = []
        while True:
            if data_left:
                end = min(pos + data_left, len(buf))
                out.append(buf[pos:end])
                data_left -= end - pos
                pos = end
                if data_left:
                    break
                crlf_left = 2
            if crlf_left:
                skip = min(crlf_left, len(buf) - pos)
                pos += skip
                crlf_left -= skip
                if crlf_left:
                    break
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 1024:
                    raise urllib3.exceptions.ProtocolError(f"bad chunk size line {buf[pos:pos + 40]!r}")
                break
            size = int(buf[pos:eol].split(b";", 1)[0], 16)  # ValueError for a bad size, as urllib3's
            pos = eol + 2
            if size == 0:
                if out:
                    yield b"".join(out)
                return
            data_left = size
        if out:
            yield b"".join(out)
