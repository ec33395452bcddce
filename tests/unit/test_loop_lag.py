"""A server whose event loop falls behind sheds inference requests at once with 503 + Retry-After."""

from __future__ import annotations

import asyncio
import time

import httpx

from mmserve.server.http.loop_lag import LoopLagShedder


async def _ok(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def test_requests_are_shed_while_the_loop_lags_and_served_again_after():
    shedder = LoopLagShedder(_ok, max_lag_s=0.2)

    async def scenario():
        transport = httpx.ASGITransport(app=shedder)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            first = await client.post("/v1/echo")  # starts the lag probe
            await asyncio.sleep(0.1)
            time.sleep(0.5)  # one slow callback: the probe's timer fires 0.5 s late, once
            await asyncio.sleep(0.01)
            single = await client.post("/v1/echo")
            time.sleep(0.5)  # ... and again: the loop stays behind
            await asyncio.sleep(0.01)
            shed = await client.post("/v1/echo")
            health = await client.get("/v2/health/live")  # probes and metadata are never shed
            metadata = await client.post("/v2/repository/index")
            await asyncio.sleep(0.2)  # punctual probe ticks
            after = await client.post("/v1/echo")
            return first, single, shed, health, metadata, after

    first, single, shed, health, metadata, after = asyncio.run(scenario())
    assert first.status_code == 200 and single.status_code == 200 and after.status_code == 200
    assert shed.status_code == 503 and shed.headers["retry-after"] == "1" and "overloaded" in shed.json()["error"]
    assert health.status_code == 200 and metadata.status_code == 200
