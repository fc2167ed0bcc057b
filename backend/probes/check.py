"""One probe: connect to an address (TCP), optionally over TLS and with an HTTP GET, within a timeout.

HTTP(S) sends `Host: <the Gslb's host>` (and TLS SNI = that host), so an ingress controller or Gateway
routes the probe to the application as it routes clients; certificates are not verified (a probe asks
"does it serve?", as a Kubernetes httpGet probe does). 200-399 is a pass, like a Kubernetes probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

from backend.probes.config import ProbeConfig

MAX_STATUS_LINE = 4096
USER_AGENT = "coredns-gslb-probe"


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


TLS = _tls()


async def check(config: ProbeConfig, host: str, connect: tuple[str, int]) -> str:
    """"" if the probe passes, else why not (a short reason for logs, metrics and explain).

    `host` is the Gslb's host (Host header and SNI); `connect` is where the connection goes: the exposed
    address and the probe's port, or the lab's mapped loopback address."""
    name = host.removeprefix("*.")
    try:
        async with asyncio.timeout(config.timeout):
            reader, writer = await asyncio.open_connection(
                *connect, ssl=TLS if config.scheme == "https" else None,
                server_hostname=name if config.scheme == "https" else None)
            try:
                if config.scheme == "tcp":
                    return ""
                writer.write(f"GET {config.path} HTTP/1.1\r\nHost: {name}\r\nUser-Agent: {USER_AGENT}\r\n"
                             "Accept: */*\r\nConnection: close\r\n\r\n".encode())
                line = await reader.readuntil(b"\n")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except TimeoutError:
        return f"timeout after {config.timeout:g}s"
    except asyncio.LimitOverrunError:
        return "no HTTP status line"
    except asyncio.IncompleteReadError:
        return "connection closed before an HTTP status line"
    except ssl.SSLError as e:
        return f"TLS: {e.reason or e}"
    except OSError as e:
        return os.strerror(e.errno) if e.errno else str(e) or type(e).__name__
    parts = line[:MAX_STATUS_LINE].decode("latin-1").split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return "no HTTP status line"
    status = int(parts[1])
    return "" if 200 <= status < 400 else f"HTTP {status}"
