"""DNS NOTIFY (RFC 1996) for a served zone: acknowledged, and handed to a callback (a peer's change).

The lookup parses the request and finds the zone; this module only decides the reply and calls back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from backend.zone import wire
from backend.zone.wire import NOERROR, REFUSED

log = logging.getLogger(__name__)

NotifyCallback = Callable[[str, str], None]  # (zone, gRPC peer)


def acknowledge(req: bytes, q_end: int, zone: str | None, opt: bytes, on_notify: NotifyCallback | None,
                peer: str) -> bytes:
    """NOERROR + AA with the question for a served `zone` (after the callback), REFUSED for others.
    A failing callback is logged: the sender still gets its acknowledgement."""
    if zone is None:
        return wire.bare_reply(req, q_end, REFUSED, False, opt)
    if on_notify is not None:
        try:
            on_notify(zone, peer)
        except Exception:
            log.exception("NOTIFY callback failed for %s", zone)
    return wire.bare_reply(req, q_end, NOERROR, True, opt)
