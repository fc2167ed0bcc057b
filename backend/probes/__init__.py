"""Active probes of GSLB targets (see README.md); `attach` is the seam into `serve`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backend.probes.prober import Prober

if TYPE_CHECKING:
    from backend.app import Context


def attach(ctx: Context) -> None:
    """The prober every replica runs (each replica answers from its own verdicts); listed before the
    GSLB and peers producers in app.PRODUCERS, which read its verdicts and feed it targets."""
    if not ctx.settings.gslb_zones:
        return
    prober = Prober(ctx.settings)
    ctx.prober = prober
    ctx.start_hooks.append(prober.start)
    ctx.stop_hooks.append(prober.stop)
