"""ASGI middleware that sheds load when the event loop itself falls behind.

The engines shed a request (503 + Retry-After) when their queue is full, but only once the
event loop gets to it. Under overload on a small machine the loop is the scarcer resource:
every connection must be accepted and its headers parsed before anything can refuse it, and
the engine and preprocessing threads take the GIL from it. Then requests wait unseen in the
kernel's accept queue until their clients time out: lost, not shed. This middleware measures
how late the loop runs a timer (its lag) and, while that stays over `max_lag_s` (two probe
ticks in a row), answers new
inference requests (POST /v1/..., /v2/models/...; they document 503) at once with 503 +
Retry-After, before any routing or body reading, so the backlog drains at the cost of a
header parse per request. Health, metadata and metrics always pass.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Receive, Scope, Send

PROBE_INTERVAL_S = 0.05
# A loop this far behind has a backlog no client will wait for; healthy loops lag milliseconds.
MAX_LOOP_LAG_S = 1.0
LATE_TICKS = 2  # consecutive late probe ticks that mean the loop stays behind
SHED_PREFIXES = ("/v1/", "/v2/models/")


class LoopLagShedder:
    def __init__(self, app: ASGIApp, max_lag_s: float = MAX_LOOP_LAG_S):
        self.app = app
        self.max_lag_s = max_lag_s
        self.lag_s = 0.0
        self._late_ticks = 0
        self._probe: asyncio.Task | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_lag_s <= 0:
            await self.app(scope, receive, send)
            return
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._measure())
        inference = scope.get("method") == "POST" and scope.get("path", "").startswith(SHED_PREFIXES)
        if inference and self.overloaded:
            await self._shed(send)
            return
        await self.app(scope, receive, send)

    async def _measure(self) -> None:
        # The lag of one short sleep: how long ready work kept the loop from a due timer.
        while True:
            start = time.monotonic()
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.lag_s = max(0.0, time.monotonic() - start - PROBE_INTERVAL_S)
            # Overload is a loop that stays behind: one slow callback (a long synchronous
            # postprocess, say) makes a single late tick and sheds nothing.
            self._late_ticks = self._late_ticks + 1 if self.lag_s > self.max_lag_s else 0

    @property
    def overloaded(self) -> bool:
        return self._late_ticks >= LATE_TICKS

    async def _shed(self, send: Send) -> None:
        body = json.dumps({"error": f"the server is overloaded (its event loop is {self.lag_s:.1f} s behind); "
                                    "retry later"}).encode()  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", b"1")]  # fmt: skip
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})
